//! The coordinator's one integration test binary.

mod etcd_harness;
mod scheduler;
mod store;
