//! What a QEMU grid's clones boot: the host's newest guest kernel and the base initramfs
//! (static napalm-init + default modules) the coordinator ships to every agent.

use std::path::{Path, PathBuf};

use super::error::{Ctx, GridError};

/// The guest kernel (`/boot/vmlinuz-*`, the newest) and its version.
pub fn guest_kernel() -> Result<(PathBuf, String), GridError> {
    let k = napalm_initramfs::kernel::installed_guest_kernel().ok_or(GridError::NoKernel)?;
    let ver = k
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_owned();
    Ok((k, ver))
}

/// Writes the base initramfs for `kernel_version`: the static napalm-init (built once by
/// `napalm_initramfs::testing`) and the default modules, their signatures kept or not.
pub fn base_image(
    out: &Path,
    kernel_version: &str,
    module_signatures: napalm_initramfs::modsig::ModuleSignatures,
) -> Result<(), GridError> {
    use napalm_initramfs::image::{build, default_modules, Compression, ImageSpec};
    let (modules, optional) = default_modules(false);
    let spec = ImageSpec {
        init: napalm_initramfs::testing::static_init().map_err(GridError::StaticInit)?,
        kernel_config: Some(PathBuf::from(format!("/boot/config-{kernel_version}"))),
        kernel_version: kernel_version.to_owned(),
        modules_root: PathBuf::from("/lib/modules"),
        modules,
        optional_modules: optional,
        busybox: None,
        layers: Vec::new(),
        // Uncompressed: a TCG guest spends 0.2-0.3 s of CPU decompressing 10 MB of zstd
        // (and building it at level 19 cost every grid seconds); shipped once per agent.
        compression: Compression::None,
        module_signatures,
        mtime: 0,
    };
    let img = build(&spec).map_err(GridError::Image)?;
    std::fs::write(out, img.bytes).ctx("writing the base initramfs")
}
