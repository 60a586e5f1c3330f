//! The coordinator's one integration test binary.

mod cli;
mod common;
mod crash;
mod ctl;
mod deploy;
mod etcd_harness;
mod mdns;
mod registry;
mod scheduler;
mod store;
