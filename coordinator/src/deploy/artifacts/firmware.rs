//! The firmware QEMU TCG clones start with: qboot, a BIOS that only loads the kernel
//! QEMU hands it over fw_cfg (its PVH entry included) and jumps to it, rather than
//! SeaBIOS, libvirt's default, which first sets up devices, option ROMs and a boot menu.
//! Under TCG that firmware time is emulated instruction by instruction, on every boot:
//! `bench_boot_variants` in the initramfs tests measured 0.86x QEMU's CPU to /sbin/init
//! with qboot (medians of 10 interleaved boots), the guest's ACPI tables, SMBIOS and
//! interrupts unchanged.
//!
//! Shipped to agents as an artifact like the kernel (`<loader type='rom'>`), so an agent's
//! host needs only QEMU. KVM and Xen clones keep their hypervisor's default firmware: qboot
//! was not measured there, and firmware costs a fraction as much under KVM.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::super::ship::Blob;
use super::DeployError;

/// Artifact name of the firmware (`<loader type='rom'>firmware.rom</loader>`).
pub const FIRMWARE: &str = "firmware.rom";

/// Where Debian's (and Ubuntu's) `qemu-system-data` installs qboot.
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// Which firmware QEMU TCG clones boot (`--guest-firmware`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GuestFirmware {
    /// qboot from [`QBOOT`] when this host has it (and the kernel boots through PVH), else
    /// libvirt's default.
    #[default]
    Auto,
    /// libvirt's default (SeaBIOS).
    Default,
    /// This ROM file.
    Rom(PathBuf),
}

impl std::str::FromStr for GuestFirmware {
    type Err = std::convert::Infallible;

    /// `auto`, `default`, or the path of a ROM.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => Self::Auto,
            "default" | "seabios" => Self::Default,
            path => Self::Rom(PathBuf::from(path)),
        })
    }
}

impl std::fmt::Display for GuestFirmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Default => f.write_str("default"),
            Self::Rom(p) => write!(f, "{}", p.display()),
        }
    }
}

impl GuestFirmware {
    /// The ROM to ship, if any: `Auto` looks for qboot at `qboot` (a missing file means
    /// libvirt's default, logged); a `Rom` that cannot be read is an error naming it.
    pub fn load(&self, qboot: &Path) -> Result<Option<Blob>, DeployError> {
        let path = match self {
            Self::Default => return Ok(None),
            Self::Auto if !qboot.exists() => {
                tracing::info!(
                    qboot = %qboot.display(),
                    "no qboot on this host: QEMU clones start with libvirt's default firmware"
                );
                return Ok(None);
            }
            Self::Auto => qboot,
            Self::Rom(p) => p,
        };
        let bytes = std::fs::read(path).map_err(|e| DeployError::Firmware {
            path: path.to_owned(),
            source: Arc::new(e),
        })?;
        tracing::info!(firmware = %path.display(), bytes = bytes.len(), "QEMU TCG clones start with this firmware");
        Ok(Some(Blob::new(FIRMWARE, bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_qboot_when_present_and_a_named_rom_must_exist() {
        let t = tempfile::tempdir().expect("tmp");
        let rom = t.path().join("qboot.rom");
        assert!(GuestFirmware::Auto
            .load(&rom)
            .expect("absent: default")
            .is_none());
        std::fs::write(&rom, b"rom").expect("write");
        let b = GuestFirmware::Auto
            .load(&rom)
            .expect("loads")
            .expect("qboot");
        assert_eq!(b.name, FIRMWARE);
        assert!(GuestFirmware::Default
            .load(&rom)
            .expect("default")
            .is_none());
        let missing = t.path().join("nope.rom");
        let e = GuestFirmware::Rom(missing.clone())
            .load(&rom)
            .expect_err("missing ROM");
        let m = crate::deploy::chain(&e);
        assert!(m.contains(&missing.display().to_string()), "{m}");
        assert!(m.contains("--guest-firmware"), "{m}");
    }

    #[test]
    fn parses_its_words_and_paths() {
        for (s, f) in [
            ("auto", GuestFirmware::Auto),
            ("default", GuestFirmware::Default),
            ("seabios", GuestFirmware::Default),
            ("/x/qboot.rom", GuestFirmware::Rom("/x/qboot.rom".into())),
        ] {
            assert_eq!(s.parse::<GuestFirmware>(), Ok(f));
        }
    }
}
