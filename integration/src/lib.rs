//! # napalm-integration — the whole grid, for real
//!
//! Owns: the end-to-end test harness — [`netns`] (test hosts in network namespaces on a
//! private bridge), [`proc`] (daemons started by tests and killed by PID on drop) — and the
//! tests in `tests/`, which also check the host setup the README describes. Other crates'
//! tests use the harness as a dev-dependency.
//!
//! Must not touch: the machine's real network interface, or processes and namespaces it did
//! not create; everything it starts it stops, even when a test fails.
//!
//! Status: host-setup checks and the harness are here; the grid tests arrive with issue #7.

pub mod bins;
pub mod grid;
pub mod netns;
pub mod proc;
pub mod rootfs;
