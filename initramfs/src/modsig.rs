//! A kernel module's appended signature, and cutting it off for the image.
//!
//! A signed module is `ELF | PKCS#7 signature | struct module_signature (12 bytes) |
//! "~Module signature appended~\n"` (`include/linux/module_signature.h`). At every load the
//! kernel hashes the whole module (SHA-256 on Debian's) and checks the signature against
//! its built-in keys. Under QEMU TCG that is most of a module's load time: for the NFS
//! client's chain (about 5 MB) napalm-init's module phase took 1.22 s of guest time with
//! the signatures and 0.85 s without (medians of 10 interleaved boots).
//!
//! Cutting them guards nothing in a clone: the kernel, napalm-init (PID 1) and the modules
//! reach the host in one image under one SHA-256 the coordinator chose and the agent
//! checks, so whoever could alter a module there could alter PID 1. The kernel then loads
//! the module unverified and marks itself tainted (`E`, 8192 in
//! `/proc/sys/kernel/tainted`). A kernel that enforces signatures (`module.sig_enforce=1`,
//! a lockdown) refuses such modules: build its image with signatures kept.

use thiserror::Error;

/// The marker that ends a signed module.
pub const MARKER: &[u8] = b"~Module signature appended~\n";
/// `struct module_signature`: algo, hash, id_type, signer_len, key_id_len, 3 pad, be32 sig_len.
const INFO_LEN: usize = 12;
/// `PKEY_ID_PKCS7`, the only id type the kernel accepts.
const PKEY_ID_PKCS7: u8 = 2;

/// What the image builder does with modules' appended signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleSignatures {
    /// Copy modules as they are: each load verifies its signature.
    Keep,
    /// Cut each module's signature off: loads skip the verification (and taint the kernel).
    Strip,
}

impl std::str::FromStr for ModuleSignatures {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keep" => Ok(Self::Keep),
            "strip" => Ok(Self::Strip),
            _ => Err(format!(
                "unknown module signature handling {s:?}: use keep (for kernels that \
                 enforce signatures) or strip"
            )),
        }
    }
}

/// Why a module's signature trailer could not be cut off.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The marker is there but the trailer before it is not a PKCS#7 module signature.
    #[error(
        "ends with the module signature marker but its trailer is malformed ({0}); \
         copy the module unchanged with --module-signatures keep"
    )]
    Malformed(&'static str),
}

/// The length of `module` without its appended signature, or `None` when it has none.
pub fn unsigned_len(module: &[u8]) -> Result<Option<usize>, SignatureError> {
    let Some(end) = module.len().checked_sub(MARKER.len()) else {
        return Ok(None);
    };
    if &module[end..] != MARKER {
        return Ok(None);
    }
    let info_at = end.checked_sub(INFO_LEN).ok_or(SignatureError::Malformed(
        "shorter than the signature's header",
    ))?;
    let info = &module[info_at..end];
    if info[2] != PKEY_ID_PKCS7 {
        return Err(SignatureError::Malformed("not a PKCS#7 signature"));
    }
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    let elf_len = info_at
        .checked_sub(sig_len)
        .ok_or(SignatureError::Malformed("signature longer than the file"))?;
    if !module[..elf_len].starts_with(b"\x7fELF") {
        return Err(SignatureError::Malformed(
            "no ELF module before the signature",
        ));
    }
    Ok(Some(elf_len))
}

/// Cuts `module`'s appended signature off; true when it had one.
pub fn strip(module: &mut Vec<u8>) -> Result<bool, SignatureError> {
    match unsigned_len(module)? {
        Some(n) => {
            module.truncate(n);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// `body` with a signature trailer as sign-file appends it: `sig_len` bytes of signature,
/// then `struct module_signature` of `id_type`, then the marker.
#[cfg(test)]
pub(crate) fn signed(body: &[u8], sig_len: usize, id_type: u8) -> Vec<u8> {
    let mut m = body.to_vec();
    m.extend(std::iter::repeat_n(0x30, sig_len));
    m.extend_from_slice(&[0, 0, id_type, 0, 0, 0, 0, 0]);
    m.extend_from_slice(&(sig_len as u32).to_be_bytes());
    m.extend_from_slice(MARKER);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_the_signature_and_its_trailer_off() {
        let elf = b"\x7fELF module body";
        let mut m = signed(elf, 700, PKEY_ID_PKCS7);
        assert_eq!(strip(&mut m), Ok(true));
        assert_eq!(m, elf);
        // Nothing left to cut: unchanged.
        assert_eq!(strip(&mut m), Ok(false));
        assert_eq!(m, elf);
    }

    #[test]
    fn a_module_without_a_signature_is_left_alone() {
        let mut m = b"\x7fELF".to_vec();
        assert_eq!(strip(&mut m), Ok(false));
        let mut tiny = b"~".to_vec();
        assert_eq!(strip(&mut tiny), Ok(false));
    }

    #[test]
    fn a_malformed_trailer_is_an_error_and_leaves_the_module_whole() {
        let elf = b"\x7fELF module body";
        let mut lying = signed(elf, 10, PKEY_ID_PKCS7);
        let n = lying.len();
        // sig_len claims more than the file holds.
        lying[n - MARKER.len() - 4..n - MARKER.len()].copy_from_slice(&9999u32.to_be_bytes());
        let before = lying.clone();
        assert!(strip(&mut lying).is_err());
        assert_eq!(lying, before);
        let mut x509 = signed(elf, 10, 1);
        assert_eq!(
            strip(&mut x509),
            Err(SignatureError::Malformed("not a PKCS#7 signature"))
        );
        let mut short = MARKER.to_vec();
        assert!(strip(&mut short).is_err());
        let mut not_elf = signed(b"garbage", 10, PKEY_ID_PKCS7);
        assert!(strip(&mut not_elf).is_err());
    }

    #[test]
    fn the_hosts_signed_modules_lose_exactly_their_signature() {
        // The real thing: Debian signs its modules (scripts/setup installs the guest
        // kernel the clones boot, and its modules).
        let k = crate::kernel::installed_guest_kernel().expect("a guest kernel in /boot");
        let ver = k.file_name().unwrap().to_str().unwrap();
        let ver = ver.trim_start_matches("vmlinuz-");
        let path = std::path::Path::new("/lib/modules")
            .join(ver)
            .join("kernel/fs/overlayfs/overlay.ko");
        let mut m = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let before = m.len();
        assert_eq!(strip(&mut m), Ok(true), "{} is signed", path.display());
        assert!(m.starts_with(b"\x7fELF"));
        // Debian's PKCS#7 signatures (RSA 4096) take under a kilobyte.
        assert!(before - m.len() > MARKER.len() + INFO_LEN && before - m.len() < 2048);
        assert!(!m.windows(MARKER.len()).any(|w| w == MARKER));
    }
}
