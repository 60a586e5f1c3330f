//! Test support shared by this crate's QEMU tests and the integration grid (feature
//! `testing`): the static `napalm-init` a real initramfs needs.
//!
//! The build runs `cargo build --release` for `x86_64-unknown-linux-gnu` with
//! `-C target-feature=+crt-static -C strip=symbols` into `<target dir>/napalm-static`, a
//! target dir of its own so the outer cargo's lock is not contended and the host build's
//! artifacts are not thrown away by the different `RUSTFLAGS`. `NAPALM_STATIC_INIT=/path`
//! skips the build and uses a prebuilt binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The target triple of the static build (the clones are x86_64).
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";
/// `RUSTFLAGS` of the static build.
pub const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static -C strip=symbols";

/// Why the static `napalm-init` could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StaticInitError {
    /// The running executable is not inside a cargo target directory.
    #[error(
        "cannot find the cargo target directory from the running executable {exe}; \
         set NAPALM_STATIC_INIT to a prebuilt static napalm-init"
    )]
    NoTargetDir {
        /// The running executable (empty when unknown).
        exe: PathBuf,
    },
    /// cargo could not be started.
    #[error(
        "could not run `{command}`; is cargo on PATH (or CARGO set)? \
         Or set NAPALM_STATIC_INIT to a prebuilt static napalm-init"
    )]
    Spawn {
        /// The command line, as a shell would take it.
        command: String,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// cargo ran and failed.
    #[error(
        "`{command}` failed ({status}); install the target's static glibc \
         (`rustup target add {STATIC_TARGET}`, libc6-dev) and retry, \
         or set NAPALM_STATIC_INIT. cargo said:\n{stderr}"
    )]
    Failed {
        /// The command line, as a shell would take it.
        command: String,
        /// cargo's exit status.
        status: std::process::ExitStatus,
        /// The end of cargo's stderr.
        stderr: String,
    },
    /// cargo succeeded but the binary is not where it should be.
    #[error(
        "`{command}` succeeded but {} is missing; remove {} and retry",
        path.display(),
        target_dir.display()
    )]
    Missing {
        /// The command line, as a shell would take it.
        command: String,
        /// Where the binary was expected.
        path: PathBuf,
        /// The static build's target directory.
        target_dir: PathBuf,
    },
}

/// The cargo target directory of the running test or binary: `target/<profile>/deps/<exe>`
/// (a test) or `target/<profile>/<exe>` (a binary) → `target`.
fn target_dir() -> Result<PathBuf, StaticInitError> {
    let exe = std::env::current_exe().unwrap_or_default();
    let no_target = || StaticInitError::NoTargetDir { exe: exe.clone() };
    let dir = exe.parent().ok_or_else(no_target)?;
    let profile = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().ok_or_else(no_target)?
    } else {
        dir
    };
    profile
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(no_target)
}

/// The static `napalm-init` for x86_64 guests: `NAPALM_STATIC_INIT` if set, else built
/// (release, crt-static, stripped) into `<target dir>/napalm-static` once per process;
/// later calls return the same path. Concurrent callers wait for the one build.
pub fn static_init() -> Result<PathBuf, StaticInitError> {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    if let Some(p) = std::env::var_os("NAPALM_STATIC_INIT") {
        return Ok(PathBuf::from(p));
    }
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = built.as_ref() {
        return Ok(p.clone());
    }
    let target_dir = target_dir()?.join("napalm-static");
    let bin = target_dir.join(STATIC_TARGET).join("release/napalm-init");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let args = [
        "build",
        "--release",
        "--offline",
        "-p",
        "napalm-initramfs",
        "--bin",
        "napalm-init",
        "--target",
        STATIC_TARGET,
    ];
    let command = format!(
        "CARGO_TARGET_DIR={} RUSTFLAGS=\"{STATIC_RUSTFLAGS}\" {cargo} {}",
        target_dir.display(),
        args.join(" ")
    );
    tracing::info!(%command, "building the static napalm-init");
    let out = Command::new(&cargo)
        .args(args)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", STATIC_RUSTFLAGS)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map_err(|source| StaticInitError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        return Err(StaticInitError::Failed {
            command,
            status: out.status,
            stderr: tail,
        });
    }
    if !bin.exists() {
        return Err(StaticInitError::Missing {
            command,
            path: bin,
            target_dir,
        });
    }
    *built = Some(bin.clone());
    Ok(bin)
}
