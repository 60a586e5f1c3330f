//! # napalm-integration — the whole grid, for real
//!
//! Owns: the end-to-end test harness — [`grid`] (coordinator, nfs-ganesha and agents in
//! their own namespaces, QEMU clones or libvirt's test driver), [`netns`] (test hosts in
//! network namespaces on a private bridge), [`proc`] (daemons started by tests and killed
//! by PID on drop), [`rootfs`] (the cached reference roots clones boot), [`bins`] (the
//! workspace's binaries), [`ganglia`] (Debian's gmetad and ganglia-webfrontend over a grid),
//! [`ganesha`] (nfs-ganesha on a private D-Bus, and its NFS counters) — and the tests in `tests/`: the grid, a Debian systemd root, real
//! clients of every interface, and the host setup the README describes. Other crates'
//! tests use the harness as a dev-dependency.
//!
//! Must not touch: the machine's real network interface, or processes and namespaces it did
//! not create; everything it starts it stops, even when a test fails.
//!
//! Errors are typed per module; a message says what the harness was doing and its cause is
//! the `#[source]`, so [`error_chain`] prints each cause once.

pub mod bins;
pub mod ganesha;
pub mod ganglia;
pub mod grid;
pub mod netns;
pub mod proc;
pub mod rootfs;

/// `e` and its causes on one line, `outer: cause: root cause`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s += &format!(": {c}");
        cause = c.source();
    }
    s
}
