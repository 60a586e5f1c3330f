//! What a QEMU grid's clones boot: the host's newest guest kernel and the base initramfs
//! (static napalm-init + default modules) the coordinator ships to every agent.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{Ctx, GridError};
use crate::bins;

/// The guest kernel (`/boot/vmlinuz-*`, the newest) and its version.
pub fn guest_kernel() -> Result<(PathBuf, String), GridError> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ctx("reading /boot")?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    let k = found.pop().ok_or(GridError::NoKernel)?;
    let ver = k
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_owned();
    Ok((k, ver))
}

/// The static napalm-init, built once into `target/napalm-static` (shared with the
/// initramfs crate's tests).
pub fn static_init() -> Result<PathBuf, GridError> {
    if let Ok(p) = std::env::var("NAPALM_STATIC_INIT") {
        return Ok(PathBuf::from(p));
    }
    let profile = bins::profile_dir();
    let target = profile
        .parent()
        .map(|t| t.join("napalm-static"))
        .unwrap_or_else(|| profile.join("napalm-static"));
    let bin = target.join("x86_64-unknown-linux-gnu/release/napalm-init");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "--offline", "-p", "napalm-initramfs"])
        .args([
            "--bin",
            "napalm-init",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=symbols",
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ctx("running cargo for the static napalm-init")?;
    if !out.status.success() || !bin.exists() {
        return Err(GridError::CommandFailed {
            command: "cargo build --release -p napalm-initramfs --bin napalm-init (static)".into(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(bin)
}

/// Writes the base initramfs (static init + default modules) for `kernel_version`.
pub fn base_image(out: &Path, kernel_version: &str) -> Result<(), GridError> {
    use napalm_initramfs::image::{build, default_modules, Compression, ImageSpec};
    let (modules, optional) = default_modules(false);
    let spec = ImageSpec {
        init: static_init()?,
        kernel_config: Some(PathBuf::from(format!("/boot/config-{kernel_version}"))),
        kernel_version: kernel_version.to_owned(),
        modules_root: PathBuf::from("/lib/modules"),
        modules,
        optional_modules: optional,
        busybox: None,
        layers: Vec::new(),
        compression: Compression::Zstd,
        mtime: 0,
    };
    let img = build(&spec).map_err(GridError::Image)?;
    std::fs::write(out, img.bytes).ctx("writing the base initramfs")
}
