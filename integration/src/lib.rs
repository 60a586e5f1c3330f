//! # napalm-integration — the whole grid, for real
//!
//! Owns: the end-to-end test harness (network namespaces, a private bridge, nfs-ganesha,
//! etcd, dnsmasq, agents and coordinator as real processes, QEMU clones) and the tests in
//! `tests/`, which also check the host setup the README describes.
//!
//! Must not touch: the machine's real network interface, or processes and namespaces it did
//! not create; everything it starts it stops, even when a test fails.
//!
//! Status: the host-setup checks are here; the grid harness arrives with issue #7.
