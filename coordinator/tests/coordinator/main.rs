//! The coordinator's one integration test binary.

mod boot_slots;
mod cluster_files;
mod cluster_watcher;
mod common;
mod converge;
mod crash;
mod deploy;
mod died;
mod etcd_harness;
mod lifecycle;
mod mdns;
mod observe;
mod register;
mod registry;
mod roles;
mod scheduler;
mod stale;
mod store;
mod traces;
