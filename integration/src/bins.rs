//! The workspace's binaries for tests that run them as real processes: found beside the
//! test executable (`target/<profile>/`), built with `cargo build` once if missing (a
//! `cargo test -p napalm-integration` run does not build other packages' binaries).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// Errors locating or building a binary.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant's #[error] message documents it; the fields are named for what they hold"
)]
pub enum BinError {
    /// cargo could not be run at all.
    #[error("cannot run cargo to build {bin} (package {package})")]
    Cargo {
        bin: String,
        package: String,
        #[source]
        source: std::io::Error,
    },
    /// `cargo build` ran and failed, or did not produce the binary.
    #[error("building {bin} (package {package}) failed: {stderr}")]
    Build {
        bin: String,
        package: String,
        stderr: String,
    },
}

static BUILD: Mutex<()> = Mutex::new(());

/// The profile directory (`target/debug` or `target/release`) the running test lives in.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // A test: target/<profile>/deps/<exe>; a binary: target/<profile>/<exe>.
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    match dir.file_name() {
        Some(n) if n == "deps" => dir.parent().map(PathBuf::from).unwrap_or(dir),
        Some(_) => dir,
        None => PathBuf::from("target/debug"),
    }
}

/// Path of binary `bin` from `package`, building it if it is not there yet.
/// `NAPALM_BIN_DIR` points at prebuilt binaries instead (e.g. `target/release`).
pub fn binary(package: &str, bin: &str) -> Result<PathBuf, BinError> {
    let dir = std::env::var_os("NAPALM_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(profile_dir);
    let path = dir.join(bin);
    let _g = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    if path.exists() {
        return Ok(path);
    }
    let release = dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-p", package, "--bin", bin]);
    if release {
        cmd.arg("--release");
    }
    if let Some(target) = dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let out = cmd.output().map_err(|source| BinError::Cargo {
        bin: bin.into(),
        package: package.into(),
        source,
    })?;
    if !out.status.success() || !path.exists() {
        return Err(BinError::Build {
            bin: bin.into(),
            package: package.into(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(path)
}

/// The per-host agent, `napalm-agent`.
pub fn agent() -> Result<PathBuf, BinError> {
    binary("napalm-agent", "napalm-agent")
}

/// The control plane daemon, `napalm-coordinator`.
pub fn coordinator() -> Result<PathBuf, BinError> {
    binary("napalm-coordinator", "napalm-coordinator")
}

/// The operator's CLI, `napalmctl` (package napalm-ctl).
pub fn napalmctl() -> Result<PathBuf, BinError> {
    binary("napalm-ctl", "napalmctl")
}
