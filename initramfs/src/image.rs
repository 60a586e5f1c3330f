//! The image napalm-mkinitramfs writes: a reproducible newc cpio (sorted, fixed mtime)
//! holding the static napalm-init as `/init`, `/dev/console`, the kernel modules the
//! fsloaders and virtual hardware need (with their dependencies, in load order), optional
//! busybox for the rescue shell, then one appended segment per differentiation layer.

use crate::cpio::{Archive, Entry};
use crate::modsig::{self, ModuleSignatures, SignatureError};
use crate::modules::{ModDep, ModuleError, ORDER_FILE};
use sha2::{Digest, Sha256};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// How each cpio segment of the image is compressed (the kernel accepts a mix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain cpio.
    None,
    /// gzip (deterministic header: mtime 0).
    Gzip,
    /// zstd level 19.
    Zstd,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "gzip" | "gz" => Ok(Self::Gzip),
            "zstd" | "zst" => Ok(Self::Zstd),
            _ => Err(format!("unknown compression {s:?} (none|gzip|zstd)")),
        }
    }
}

/// Why the image could not be built.
#[derive(Debug, Error)]
pub enum ImageError {
    /// An input (init, module, busybox, layer directory) could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The input that could not be read.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// modules.dep could not be read, or a required module is missing.
    #[error(transparent)]
    Modules(#[from] ModuleError),
    /// The init binary is dynamically linked.
    #[error("{0}: dynamically linked (it has an ELF interpreter); build napalm-init with RUSTFLAGS=\"-C target-feature=+crt-static\" --target x86_64-unknown-linux-gnu")]
    Dynamic(PathBuf),
    /// A layer name is unusable.
    #[error("layer name {0:?} must be non-empty and contain no `/`")]
    LayerName(String),
    /// A module's signature could not be cut off.
    #[error("module {path}: {source}")]
    Signature {
        /// The module file.
        path: PathBuf,
        /// What is wrong with its trailer.
        source: SignatureError,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What goes into the image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The static napalm-init binary.
    pub init: PathBuf,
    /// Kernel version (`/lib/modules/<ver>`).
    pub kernel_version: String,
    /// Where `<kernel_version>/modules.dep` is looked up (`/lib/modules` on a host).
    pub modules_root: PathBuf,
    /// Modules that must be present (or built in).
    pub modules: Vec<String>,
    /// Modules taken when the kernel has them.
    pub optional_modules: Vec<String>,
    /// The kernel config (`/boot/config-<ver>`) to see if it decompresses modules itself.
    pub kernel_config: Option<PathBuf>,
    /// busybox for the rescue shell.
    pub busybox: Option<PathBuf>,
    /// Layers to append: (name, directory).
    pub layers: Vec<(String, PathBuf)>,
    /// Compression of every segment.
    pub compression: Compression,
    /// Whether modules keep their appended signatures (see [`crate::modsig`]).
    pub module_signatures: ModuleSignatures,
    /// The fixed mtime of every entry.
    pub mtime: u32,
}

/// The drivers and filesystems the fsloaders need on QEMU/KVM (and Xen with `xen`).
pub fn default_modules(xen: bool) -> (Vec<String>, Vec<String>) {
    let req = [
        "virtio_pci",
        "virtio_net",
        "virtio_blk",
        "overlay",
        "nfsv4",
        "squashfs",
        "erofs",
        "loop",
    ];
    let mut opt = vec!["9p", "9pnet_virtio", "virtiofs"];
    if xen {
        opt.extend(["xen_netfront", "xen_blkfront"]);
    }
    (
        req.iter().map(|s| s.to_string()).collect(),
        opt.iter().map(|s| s.to_string()).collect(),
    )
}

/// A built image and what went into it.
#[derive(Debug, Clone)]
pub struct Built {
    /// The image bytes (base segment then layer segments).
    pub bytes: Vec<u8>,
    /// Module files included, in load order.
    pub modules: Vec<String>,
    /// Optional modules this kernel does not have.
    pub missing: Vec<String>,
    /// Hex SHA-256 of `bytes`.
    pub sha256: String,
    /// Size of the base segment before compression.
    pub uncompressed: usize,
}

/// Compresses one segment.
pub fn compress(data: &[u8], c: Compression) -> io::Result<Vec<u8>> {
    match c {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            // Level 6: per-clone layer segments are compressed by the thousand at deploy
            // time; `best` costs ~3x the CPU for a few percent on such small text.
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data)?;
            e.finish()
        }
        Compression::Zstd => zstd::encode_all(data, 19),
    }
}

/// True when the ELF file has a PT_INTERP program header (needs a dynamic loader).
pub fn is_dynamic_elf(bytes: &[u8]) -> bool {
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if bytes.get(..4) != Some(b"\x7fELF") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum).any(|i| {
        let o = phoff as usize + i * phentsize;
        bytes.get(o..o + 4) == Some(&3u32.to_le_bytes())
    })
}

fn decompress_module(path: &Path) -> Result<Vec<u8>, ImageError> {
    let raw = std::fs::read(path).map_err(io_at(path))?;
    let name = path.to_string_lossy();
    if name.ends_with(".zst") {
        zstd::decode_all(&raw[..]).map_err(io_at(path))
    } else if name.ends_with(".gz") {
        let mut out = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut out)
            .map_err(io_at(path))?;
        Ok(out)
    } else if name.ends_with(".xz") {
        let out = std::process::Command::new("xz")
            .args(["-dc"])
            .arg(path)
            .output()
            .map_err(io_at(path))?;
        if !out.status.success() {
            return Err(ImageError::Io {
                path: path.into(),
                source: io::Error::other("xz -dc failed"),
            });
        }
        Ok(out.stdout)
    } else {
        Ok(raw)
    }
}

/// A layer as its own cpio segment, under `napalm/layers/<name>`.
pub fn layer_segment(
    name: &str,
    dir: &Path,
    c: Compression,
    mtime: u32,
) -> Result<Vec<u8>, ImageError> {
    if name.is_empty() || name.contains('/') {
        return Err(ImageError::LayerName(name.to_string()));
    }
    let mut a = Archive::new();
    a.add_tree(dir, &format!("napalm/layers/{name}"))
        .map_err(io_at(dir))?;
    compress(&a.write(mtime), c).map_err(io_at(dir))
}

/// Builds the whole image.
pub fn build(spec: &ImageSpec) -> Result<Built, ImageError> {
    let mut a = Archive::new();
    let init = std::fs::read(&spec.init).map_err(io_at(&spec.init))?;
    if is_dynamic_elf(&init) {
        return Err(ImageError::Dynamic(spec.init.clone()));
    }
    a.add("init", Entry::File(0o755, init));
    a.add("dev/console", Entry::CharDev(0o600, 5, 1));
    for d in [
        "proc",
        "sys",
        "run",
        "tmp",
        "mnt",
        "rootfs",
        "napalm/layers",
    ] {
        a.add(d, Entry::Dir(0o755));
    }
    let kdir = spec.modules_root.join(&spec.kernel_version);
    let read =
        |name: &str| std::fs::read_to_string(kdir.join(name)).map_err(io_at(&kdir.join(name)));
    let dep = ModDep::parse(
        &read("modules.dep")?,
        &read("modules.builtin").unwrap_or_default(),
    )?;
    let req: Vec<&str> = spec.modules.iter().map(String::as_str).collect();
    let opt: Vec<&str> = spec.optional_modules.iter().map(String::as_str).collect();
    let (order, missing) = dep.resolve(&req, &opt)?;
    let kernel_decompresses = spec
        .kernel_config
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .is_some_and(|c| c.lines().any(|l| l == "CONFIG_MODULE_DECOMPRESS=y"));
    let strip = spec.module_signatures == ModuleSignatures::Strip;
    let mut stored = Vec::new();
    for rel in &order {
        let src = kdir.join(rel);
        let compressed = [".ko.zst", ".ko.xz", ".ko.gz"]
            .iter()
            .any(|s| rel.ends_with(s));
        // A signature is inside the compressed file: cutting it off means storing the
        // module decompressed.
        let (dest, mut data) = if compressed && (!kernel_decompresses || strip) {
            let plain = rel
                .rsplit_once(".ko")
                .map(|(b, _)| format!("{b}.ko"))
                .unwrap_or_else(|| rel.clone());
            (plain, decompress_module(&src)?)
        } else {
            (rel.clone(), std::fs::read(&src).map_err(io_at(&src))?)
        };
        if strip {
            modsig::strip(&mut data).map_err(|source| ImageError::Signature {
                path: src.clone(),
                source,
            })?;
        }
        a.add(
            &format!("lib/modules/{}/{dest}", spec.kernel_version),
            Entry::File(0o644, data),
        );
        stored.push(dest);
    }
    let order_text: String = stored.iter().map(|s| format!("{s}\n")).collect();
    // The image's own modules.dep (stored names), for napalm-init's on-demand loading.
    let stored_of = |rel: &str| {
        order
            .iter()
            .position(|o| o == rel)
            .map(|i| stored[i].clone())
    };
    let mut dep_text = String::new();
    for (i, rel) in order.iter().enumerate() {
        let deps = dep
            .entries
            .get(&crate::modules::module_name(rel))
            .map(|e| e.1.clone())
            .unwrap_or_default();
        let deps: Vec<String> = deps.iter().filter_map(|d| stored_of(d)).collect();
        dep_text.push_str(&format!("{}: {}\n", stored[i], deps.join(" ")));
    }
    a.add(
        &format!("lib/modules/{}/modules.dep", spec.kernel_version),
        Entry::File(0o644, dep_text.into_bytes()),
    );
    a.add(
        &format!("lib/modules/{}/{ORDER_FILE}", spec.kernel_version),
        Entry::File(0o644, order_text.into_bytes()),
    );
    if let Some(bb) = &spec.busybox {
        a.add(
            "bin/busybox",
            Entry::File(0o755, std::fs::read(bb).map_err(io_at(bb))?),
        );
        a.add("bin/sh", Entry::Symlink("busybox".into()));
    }
    let base = a.write(spec.mtime);
    let uncompressed = base.len();
    let mut bytes = compress(&base, spec.compression).map_err(io_at(&spec.init))?;
    for (name, dir) in &spec.layers {
        bytes.extend(layer_segment(name, dir, spec.compression, spec.mtime)?);
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok(Built {
        bytes,
        modules: stored,
        missing,
        sha256,
        uncompressed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_kernel(t: &Path) -> PathBuf {
        let k = t.join("lib/modules/6.1.0-test");
        std::fs::create_dir_all(k.join("kernel/fs")).unwrap();
        std::fs::write(k.join("modules.dep"), "kernel/fs/overlay.ko:\nkernel/fs/nfsv4.ko.zst: kernel/fs/sunrpc.ko\nkernel/fs/sunrpc.ko:\n").unwrap();
        std::fs::write(k.join("modules.builtin"), "kernel/fs/ext4.ko\n").unwrap();
        std::fs::write(k.join("kernel/fs/overlay.ko"), b"overlay-module").unwrap();
        std::fs::write(k.join("kernel/fs/sunrpc.ko"), b"sunrpc-module").unwrap();
        std::fs::write(
            k.join("kernel/fs/nfsv4.ko.zst"),
            zstd::encode_all(&b"nfsv4-module"[..], 3).unwrap(),
        )
        .unwrap();
        t.join("lib/modules")
    }

    fn spec(t: &Path, c: Compression) -> ImageSpec {
        let init = t.join("init-bin");
        std::fs::write(&init, b"#!/bin/sh\necho not an ELF\n").unwrap();
        let layer = t.join("layer");
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        std::fs::write(layer.join("etc/hostname"), "clone01\n").unwrap();
        ImageSpec {
            init,
            kernel_version: "6.1.0-test".into(),
            modules_root: fake_kernel(t),
            modules: vec!["nfsv4".into(), "overlay".into(), "ext4".into()],
            optional_modules: vec!["9p".into()],
            kernel_config: None,
            busybox: None,
            layers: vec![("clone01".into(), layer)],
            compression: c,
            module_signatures: ModuleSignatures::Keep,
            mtime: 0,
        }
    }

    /// `body` with a PKCS#7 signature trailer of `sig` bytes.
    fn signed(body: &[u8], sig: usize) -> Vec<u8> {
        modsig::signed(body, sig, 2)
    }

    fn unpacked(bytes: &[u8], file: &str) -> Vec<u8> {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-i", "-d", "--quiet"])
            .current_dir(&out)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        assert!(child.wait().unwrap().success());
        std::fs::read(out.join(file)).unwrap()
    }

    #[test]
    fn strips_module_signatures_when_told_and_keeps_them_otherwise() {
        let t = tempfile::tempdir().unwrap();
        let mut s = spec(t.path(), Compression::None);
        s.layers.clear();
        let k = t.path().join("lib/modules/6.1.0-test/kernel/fs");
        std::fs::write(k.join("sunrpc.ko"), signed(b"\x7fELF sunrpc", 600)).unwrap();
        std::fs::write(
            k.join("nfsv4.ko.zst"),
            zstd::encode_all(&signed(b"\x7fELF nfsv4", 500)[..], 3).unwrap(),
        )
        .unwrap();
        let at = |m: &str| format!("lib/modules/6.1.0-test/kernel/fs/{m}");
        let kept = build(&s).unwrap();
        assert_eq!(
            unpacked(&kept.bytes, &at("sunrpc.ko")),
            signed(b"\x7fELF sunrpc", 600)
        );
        s.module_signatures = ModuleSignatures::Strip;
        let stripped = build(&s).unwrap();
        assert_eq!(
            unpacked(&stripped.bytes, &at("sunrpc.ko")),
            b"\x7fELF sunrpc"
        );
        assert_eq!(unpacked(&stripped.bytes, &at("nfsv4.ko")), b"\x7fELF nfsv4");
        // An unsigned module goes in as it is.
        assert_eq!(
            unpacked(&stripped.bytes, &at("overlay.ko")),
            b"overlay-module"
        );
        // Where the kernel decompresses modules itself, stripping stores them decompressed.
        let cfg = t.path().join("config");
        std::fs::write(&cfg, "CONFIG_MODULE_DECOMPRESS=y\n").unwrap();
        s.kernel_config = Some(cfg);
        let b = build(&s).unwrap();
        assert!(b.modules.contains(&"kernel/fs/nfsv4.ko".to_string()));
        assert_eq!(unpacked(&b.bytes, &at("nfsv4.ko")), b"\x7fELF nfsv4");
        // A trailer that lies is an error naming the module, not a truncated module.
        let mut lying = signed(b"\x7fELF sunrpc", 10);
        let n = lying.len() - modsig::MARKER.len();
        lying[n - 4..n].copy_from_slice(&u32::MAX.to_be_bytes());
        std::fs::write(k.join("sunrpc.ko"), lying).unwrap();
        let e = build(&s).unwrap_err().to_string();
        assert!(
            e.contains("sunrpc.ko") && e.contains("--module-signatures keep"),
            "{e}"
        );
    }

    #[test]
    fn reproducible_and_decompresses_modules() {
        let t = tempfile::tempdir().unwrap();
        let s = spec(t.path(), Compression::Gzip);
        let a = build(&s).unwrap();
        let b = build(&s).unwrap();
        assert_eq!(a.sha256, b.sha256);
        assert_eq!(
            a.modules,
            vec![
                "kernel/fs/sunrpc.ko",
                "kernel/fs/nfsv4.ko",
                "kernel/fs/overlay.ko"
            ]
        );
        assert_eq!(a.missing, vec!["9p"]);
        // Unpack both segments with the system tools like the kernel would.
        let img = t.path().join("img");
        std::fs::write(&img, &a.bytes).unwrap();
        let out = t.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let sh = format!("zcat {} | cpio -i -d --quiet", img.display());
        let st = std::process::Command::new("sh")
            .args(["-c", &sh])
            .current_dir(&out)
            .status()
            .unwrap();
        assert!(st.success());
        let k = out.join("lib/modules/6.1.0-test");
        assert_eq!(
            std::fs::read(k.join("kernel/fs/nfsv4.ko")).unwrap(),
            b"nfsv4-module"
        );
        assert_eq!(
            std::fs::read_to_string(k.join(ORDER_FILE)).unwrap(),
            "kernel/fs/sunrpc.ko\nkernel/fs/nfsv4.ko\nkernel/fs/overlay.ko\n"
        );
        assert!(out.join("rootfs").is_dir());
        // The layer is its own segment after the base (cpio(1) stops at the first trailer;
        // the kernel reads on): base + segment == whole, and the segment unpacks alone.
        let mut no_layer = s.clone();
        no_layer.layers.clear();
        let seg = layer_segment("clone01", &t.path().join("layer"), Compression::Gzip, 0).unwrap();
        assert_eq!(
            [build(&no_layer).unwrap().bytes, seg.clone()].concat(),
            a.bytes
        );
        std::fs::write(&img, &seg).unwrap();
        let st = std::process::Command::new("sh")
            .args(["-c", &sh])
            .current_dir(&out)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(
            std::fs::read_to_string(out.join("napalm/layers/clone01/etc/hostname")).unwrap(),
            "clone01\n"
        );
        // When the kernel decompresses modules itself, they stay compressed.
        let mut s2 = s.clone();
        let cfg = t.path().join("config");
        std::fs::write(&cfg, "CONFIG_MODULE_DECOMPRESS=y\n").unwrap();
        s2.kernel_config = Some(cfg);
        assert!(build(&s2)
            .unwrap()
            .modules
            .contains(&"kernel/fs/nfsv4.ko.zst".to_string()));
        let z = build(&spec(t.path(), Compression::Zstd)).unwrap();
        assert_eq!(&z.bytes[..4], &[0x28, 0xB5, 0x2F, 0xFD]);
    }

    #[test]
    fn refuses_dynamic_init_and_bad_layer_names() {
        let t = tempfile::tempdir().unwrap();
        let mut s = spec(t.path(), Compression::None);
        s.init = PathBuf::from("/bin/sh"); // Debian's dash is dynamically linked.
        assert!(matches!(build(&s), Err(ImageError::Dynamic(_))));
        assert!(layer_segment("a/b", t.path(), Compression::None, 0).is_err());
        let mut s = spec(t.path(), Compression::None);
        s.modules.push("nosuchmod".into());
        assert!(build(&s).unwrap_err().to_string().contains("nosuchmod"));
    }
}
