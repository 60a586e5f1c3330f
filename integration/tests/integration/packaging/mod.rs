//! Installing Napalm (`packaging/`, `charts/napalm`), checked with the tools operators and
//! distributions use, on the workspace's own binaries:
//!
//! - systemd units: `systemd-analyze security --offline` (exposure at most
//!   [`MAX_EXPOSURE`]), the sysusers.d/tmpfiles.d entries applied to a scratch root, and
//!   `systemd-analyze verify` of the installed units;
//! - Debian packages built by `packaging/build-debs`: fields and contents read back with
//!   `dpkg-deb`, installed with `dpkg -i` on this machine, `napalm-agent --version` and
//!   `napalmctl --help` run from `/usr/bin`, users, tokens and boot-time enablement checked,
//!   then purged (also when an assertion fails) and nothing left behind;
//! - OCI images built by `packaging/build-images` without a daemon: `umoci stat` and
//!   `skopeo inspect`, unpacked, the coordinator run from its image as the image's user and
//!   the agent from its image against this host's libvirtd (its socket bind-mounted as the
//!   chart mounts it), until the agent has registered with the coordinator;
//! - the Helm chart: `charts/validate.py` (strict lint, schema, render and
//!   `kubernetes-validate --strict` for the default values and every `ci/*-values.yaml`),
//!   whose default images are the tags the image build produced.

mod chart;
mod debs;
mod images;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use napalm_integration::bins;
use serde_json::Value;

use crate::repo_root;

/// Highest `systemd-analyze security` exposure (0 = locked down, 10 = unprotected) a unit
/// may have.
pub(crate) const MAX_EXPOSURE: f64 = 2.0;

pub(crate) const PACKAGES: [&str; 3] = ["napalm-agent", "napalm-coordinator", "napalmctl"];
pub(crate) const USERS: [&str; 2] = ["napalm-agent", "napalm"];

/// The workspace version, what packages and image tags carry.
pub(crate) fn version() -> String {
    let toml = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    let section = toml
        .split("[workspace.package]")
        .nth(1)
        .expect("[workspace.package]");
    section
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("a workspace version")
}

/// The directory holding napalm-agent, napalm-coordinator and napalmctl (built if missing).
pub(crate) fn bin_dir() -> PathBuf {
    let agent = bins::agent().unwrap_or_else(|e| panic!("{}", napalm_integration::error_chain(&e)));
    bins::coordinator().unwrap_or_else(|e| panic!("{}", napalm_integration::error_chain(&e)));
    bins::napalmctl().unwrap_or_else(|e| panic!("{}", napalm_integration::error_chain(&e)));
    agent.parent().expect("binary in a directory").to_path_buf()
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd`, which must succeed; its output.
pub(crate) fn run(cmd: &mut Command) -> Output {
    let what = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    assert!(
        out.status.success(),
        "`{what}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(crate) fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

pub(crate) fn json(cmd: &mut Command) -> Value {
    let what = describe(cmd);
    let text = stdout(cmd);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("`{what}` printed no JSON ({e}):\n{text}"))
}

pub(crate) fn user_exists(name: &str) -> bool {
    Command::new("getent")
        .args(["passwd", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub(crate) fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", name])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// A free loopback port (bound, read, released).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}
