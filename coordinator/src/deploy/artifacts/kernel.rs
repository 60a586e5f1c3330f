//! The kernel a clone boots, per hypervisor: QEMU/KVM clones boot the uncompressed ELF
//! taken out of the configured bzImage (artifact `vmlinux`) through its PVH entry, when it
//! has one; Xen PV clones and libvirt's test driver get the bzImage as given (artifact
//! `vmlinuz`). Under TCG the PVH entry skips the bzImage's real-mode setup and the
//! decompression of its payload on every boot (`napalm_initramfs::kernel` says how).
//!
//! Extracted once per coordinator, the first time a deploy needs it (or at start, so that
//! `--kernel-entry pvh` refuses a kernel without the note before serving).

use std::path::Path;
use std::sync::Arc;

use napalm_initramfs::kernel::{extract_elf, pvh_entry};
use napalm_proto::v1::Hypervisor;

use super::super::ship::Blob;
use super::DeployError;

/// Artifact name of the bzImage as given (`<kernel>vmlinuz</kernel>`).
pub const BZIMAGE: &str = "vmlinuz";
/// Artifact name of the ELF booted through its PVH entry (`<kernel>vmlinux</kernel>`).
pub const VMLINUX: &str = "vmlinux";

/// Which entry QEMU/KVM clones boot the kernel through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KernelEntry {
    /// The PVH entry when the kernel has one (its ELF is extracted from the bzImage), the
    /// bzImage otherwise.
    #[default]
    Auto,
    /// Always the PVH entry: a kernel without it is refused.
    Pvh,
    /// Always the bzImage (real-mode setup and decompression on each boot).
    Bzimage,
}

/// The kernel in the forms clones boot it.
#[derive(Debug, Clone)]
pub struct Kernels {
    /// The configured kernel file as it is (Xen PV, the test driver, and QEMU/KVM when
    /// there is no PVH entry or `--kernel-entry bzimage`).
    pub bzimage: Blob,
    /// Its uncompressed ELF, when QEMU/KVM clones boot it through PVH.
    pub pvh: Option<Blob>,
    /// The firmware QEMU TCG clones start with instead of libvirt's default
    /// (`super::firmware`).
    pub firmware: Option<Blob>,
}

impl Kernels {
    /// Reads `path` and, unless `entry` is [`KernelEntry::Bzimage`], extracts its ELF.
    /// With [`KernelEntry::Auto`] a kernel that cannot be booted through PVH falls back to
    /// the bzImage (logged with the reason); with [`KernelEntry::Pvh`] it is an error.
    pub fn load(path: &Path, entry: KernelEntry) -> Result<Self, DeployError> {
        let bytes = std::fs::read(path).map_err(|e| DeployError::Input {
            what: "kernel",
            path: path.to_owned(),
            source: Arc::new(e),
        })?;
        let pvh = match entry {
            KernelEntry::Bzimage => None,
            KernelEntry::Auto | KernelEntry::Pvh => match Self::pvh_elf(path, &bytes) {
                Ok(elf) => {
                    tracing::info!(
                        kernel = %path.display(),
                        bzimage_bytes = bytes.len(),
                        vmlinux_bytes = elf.len(),
                        "QEMU/KVM clones boot the kernel's ELF through its PVH entry"
                    );
                    Some(Blob::new(VMLINUX, elf))
                }
                Err(e) if entry == KernelEntry::Pvh => return Err(e),
                Err(e) => {
                    tracing::warn!(
                        kernel = %path.display(),
                        error = %crate::deploy::chain(&e),
                        "booting the bzImage: the kernel has no usable PVH entry"
                    );
                    None
                }
            },
        };
        Ok(Self {
            bzimage: Blob::new(BZIMAGE, bytes),
            pvh,
            firmware: None,
        })
    }

    /// The ELF of the bzImage `bytes` read from `path`, if it has a PVH entry.
    fn pvh_elf(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, DeployError> {
        let kernel = |e| DeployError::Kernel(Arc::new(e));
        let elf = extract_elf(path, bytes).map_err(kernel)?;
        match pvh_entry(path, &elf).map_err(kernel)? {
            Some(_) => Ok(elf),
            None => Err(DeployError::NoPvhEntry {
                path: path.to_owned(),
            }),
        }
    }

    /// The kernel a clone on `hv` boots; its `name` is the artifact name the domain XML
    /// gives as `<kernel>`.
    pub fn for_hypervisor(&self, hv: Hypervisor) -> &Blob {
        match (hv, &self.pvh) {
            (Hypervisor::Qemu | Hypervisor::Kvm | Hypervisor::Unspecified, Some(elf)) => elf,
            _ => &self.bzimage,
        }
    }

    /// The firmware a clone on `hv` starts with, when not libvirt's default: QEMU TCG
    /// clones that boot the kernel's ELF through PVH (what qboot was measured with).
    pub fn firmware_for(&self, hv: Hypervisor) -> Option<&Blob> {
        match (hv, &self.pvh) {
            (Hypervisor::Qemu | Hypervisor::Unspecified, Some(_)) => self.firmware.as_ref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_that_is_no_bzimage_falls_back_under_auto_and_is_refused_under_pvh() {
        let t = tempfile::tempdir().expect("tmp");
        let k = t.path().join("vmlinuz");
        std::fs::write(&k, vec![7u8; 64]).expect("write");
        let auto = Kernels::load(&k, KernelEntry::Auto).expect("auto");
        assert!(auto.pvh.is_none());
        assert_eq!(auto.for_hypervisor(Hypervisor::Qemu).name, BZIMAGE);
        let e = Kernels::load(&k, KernelEntry::Pvh).expect_err("pvh");
        let m = crate::deploy::chain(&e);
        assert!(m.contains(&k.display().to_string()), "{m}");
        assert!(m.contains("not an x86 bzImage"), "{m}");
    }

    #[test]
    fn qemu_boots_the_elf_and_xen_the_bzimage() {
        let Some(path) = napalm_initramfs::kernel::installed_guest_kernel() else {
            eprintln!("no /boot/vmlinuz-*: skipped");
            return;
        };
        let k = Kernels::load(&path, KernelEntry::Auto).expect("loads");
        for hv in [Hypervisor::Qemu, Hypervisor::Kvm] {
            assert_eq!(k.for_hypervisor(hv).name, VMLINUX);
        }
        for hv in [Hypervisor::Xen, Hypervisor::Test] {
            assert_eq!(k.for_hypervisor(hv).name, BZIMAGE);
        }
        let bz = Kernels::load(&path, KernelEntry::Bzimage).expect("loads");
        assert_eq!(bz.for_hypervisor(Hypervisor::Qemu).name, BZIMAGE);
        assert_eq!(bz.bzimage.r, k.bzimage.r);
    }

    #[test]
    fn only_qemu_tcg_clones_booting_through_pvh_get_the_firmware() {
        let rom = Some(Blob::new(super::super::FIRMWARE, b"rom".to_vec()));
        let elf = Blob::new(VMLINUX, b"elf".to_vec());
        let pvh = Kernels {
            bzimage: Blob::new(BZIMAGE, b"bz".to_vec()),
            pvh: Some(elf),
            firmware: rom.clone(),
        };
        for hv in [Hypervisor::Qemu, Hypervisor::Unspecified] {
            assert!(pvh.firmware_for(hv).is_some(), "{hv:?}");
        }
        for hv in [Hypervisor::Kvm, Hypervisor::Xen, Hypervisor::Test] {
            assert!(pvh.firmware_for(hv).is_none(), "{hv:?}");
        }
        let bz = Kernels { pvh: None, ..pvh };
        assert!(bz.firmware_for(Hypervisor::Qemu).is_none());
    }
}
