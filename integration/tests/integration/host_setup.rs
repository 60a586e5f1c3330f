//! The README's setup (`scripts/setup`, `scripts/services`) is idempotent: run twice in a
//! row, the second run changes nothing and exits 0; daemons started twice are started once.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

fn run(script: &str, args: &[&str]) -> Output {
    let path = repo_root().join("scripts").join(script);
    let out = Command::new(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every installed package with its version and status: what apt could change.
fn dpkg_state() -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Version} ${Status}\n"])
        .output()
        .expect("dpkg-query runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("dpkg-query prints UTF-8")
}

#[test]
fn setup_twice_in_a_row_changes_nothing_the_second_time() {
    // The packaging test installs and purges packages: not in the middle of this.
    let _dpkg = crate::DPKG.lock().unwrap_or_else(|p| p.into_inner());
    run("setup", &[]);
    let before = dpkg_state();
    let second = run("setup", &[]);
    let after = dpkg_state();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        stdout.contains("nothing to do"),
        "second run did something:\n{stdout}"
    );
    assert_eq!(before, after, "second setup run changed installed packages");
    // And --check agrees that nothing is missing.
    run("setup", &["--check"]);
}

#[test]
fn services_start_is_idempotent_and_libvirt_answers() {
    run("services", &["start"]);
    let pidfile = Path::new("/run/napalm-services/libvirtd.pid");
    let first = std::fs::read_to_string(pidfile).expect("libvirtd pid file");
    run("services", &["start"]);
    let second = std::fs::read_to_string(pidfile).expect("libvirtd pid file");
    assert_eq!(first, second, "a second start restarted libvirtd");
    run("services", &["status"]);
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "capabilities"])
        .output()
        .expect("virsh runs");
    assert!(out.status.success(), "virsh capabilities failed");
    let caps = String::from_utf8_lossy(&out.stdout);
    assert!(
        caps.contains("<domain type='qemu'"),
        "libvirt cannot run qemu (TCG) domains:\n{caps}"
    );
}
