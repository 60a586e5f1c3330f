//! The coordinator's one integration test binary.

mod deploy;
mod etcd_harness;
mod registry;
mod scheduler;
mod store;
