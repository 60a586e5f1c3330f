//! The coordinator's one integration test binary.

mod cli;
mod crash;
mod deploy;
mod etcd_harness;
mod mdns;
mod registry;
mod scheduler;
mod store;
