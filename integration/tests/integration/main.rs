//! The one integration test binary of the workspace (one binary links faster than many).
//! Each module is one capability checked end to end against the real machine.

mod bench;
mod boot_slots;
mod clients;
mod clone_machine;
mod dashboards;
mod debian;
mod grid;
mod host_setup;
mod hugepages;
mod lifecycle;
mod nfs_stats;
mod packaging;
mod scale;
mod scratch;
mod spoofing;
mod storm;
mod template;
mod traces;
mod trust;

/// Held by tests that install Debian packages or compare the machine's installed packages,
/// so that one never sees the other's changes half-way.
static DPKG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The repository's root (the workspace), whose `packaging/`, `charts/` and `proto/` the
/// tests use.
fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}
