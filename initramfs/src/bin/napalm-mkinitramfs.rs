//! `napalm-mkinitramfs`: builds a reproducible initramfs for napalm-init, with kernel
//! modules and clone layers, or a layer segment alone to append to a base image.

use anyhow::Context;
use clap::{Parser, Subcommand};
use napalm_initramfs::image::{build, default_modules, layer_segment, Compression, ImageSpec};
use napalm_initramfs::modsig::ModuleSignatures;
use std::path::PathBuf;

/// Builds a reproducible initramfs for napalm-init, with kernel modules and clone layers.
#[derive(Parser)]
#[command(
    name = "napalm-mkinitramfs",
    version,
    about = "Builds a reproducible initramfs for napalm-init, with kernel modules and clone layers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a whole image: /init, modules (with dependencies), optional busybox and layers.
    Build {
        /// The STATIC napalm-init binary.
        #[arg(long)]
        init: PathBuf,
        /// Kernel version (default: the running kernel's).
        #[arg(long)]
        kernel_version: Option<String>,
        /// Where module trees live.
        #[arg(long, default_value = "/lib/modules")]
        modules_root: PathBuf,
        /// Extra required module (repeatable), e.g. --module e1000.
        #[arg(long = "module")]
        modules: Vec<String>,
        /// Take only the --module list, not the default virtio/nfs/overlay/squashfs/erofs/loop set.
        #[arg(long)]
        no_default_modules: bool,
        /// Also take the Xen front-end drivers (xen-netfront, xen-blkfront) when present.
        #[arg(long)]
        xen: bool,
        /// busybox (static) for napalm.onfail=shell.
        #[arg(long)]
        busybox: Option<PathBuf>,
        /// A clone's layer DIR[:NAME] appended as its own segment (repeatable; NAME defaults to the dir name).
        #[arg(long = "append-layer", value_name = "DIR[:NAME]")]
        layers: Vec<String>,
        /// none, gzip or zstd. none by default: the kernel copies an uncompressed image
        /// (about 10 MB, shipped once per host) instead of decompressing it at every boot
        /// (0.2-0.3 s of CPU for zstd under QEMU TCG, 0.84x the boot's CPU to the kernel's
        /// root mount); layers appended after it may be compressed or not.
        #[arg(long, default_value = "none")]
        compress: Compression,
        /// keep or strip the modules' appended signatures. strip by default: the kernel
        /// then loads them without hashing and verifying each (the module phase of a
        /// clone's boot 1.22 -> 0.85 s under QEMU TCG) and marks itself
        /// tainted (E); the image's own digest is what the hosts check. keep for a kernel
        /// that enforces signatures (module.sig_enforce=1, lockdown).
        #[arg(long, default_value = "strip")]
        module_signatures: ModuleSignatures,
        /// mtime of every entry (default: SOURCE_DATE_EPOCH or 0).
        #[arg(long)]
        mtime: Option<u32>,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Write one layer as a segment to append to a base image (`cat base layer > clone.img`).
    ///
    /// After a compressed base, append compressed segments: the kernel takes an uncompressed
    /// cpio there only at a 4-byte-aligned header offset it does not promise.
    Layer {
        /// The layer directory (portable whiteouts: .wh.NAME, .wh..wh..opq).
        dir: PathBuf,
        /// Its name in root= (`layer:<name>`).
        #[arg(long)]
        name: String,
        /// none, gzip or zstd.
        #[arg(long, default_value = "zstd")]
        compress: Compression,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
}

fn mtime(m: Option<u32>) -> u32 {
    m.or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok()?.parse().ok())
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Build {
            init,
            kernel_version,
            modules_root,
            modules,
            no_default_modules,
            xen,
            busybox,
            layers,
            compress,
            module_signatures,
            mtime: m,
            output,
        } => {
            let kernel_version = match kernel_version {
                Some(v) => v,
                None => rustix::system::uname()
                    .release()
                    .to_string_lossy()
                    .into_owned(),
            };
            let (mut req, opt) = if no_default_modules {
                (Vec::new(), Vec::new())
            } else {
                default_modules(xen)
            };
            req.extend(modules);
            let layers = layers
                .iter()
                .map(|l| {
                    let (dir, name) = match l.split_once(':') {
                        Some((d, n)) => (PathBuf::from(d), n.to_string()),
                        None => {
                            let d = PathBuf::from(l);
                            let n = d
                                .file_name()
                                .map(|n| n.to_string_lossy().into_owned())
                                .unwrap_or_default();
                            (d, n)
                        }
                    };
                    (name, dir)
                })
                .collect();
            let spec = ImageSpec {
                init,
                kernel_config: Some(PathBuf::from(format!("/boot/config-{kernel_version}"))),
                kernel_version,
                modules_root,
                modules: req,
                optional_modules: opt,
                busybox,
                layers,
                compression: compress,
                module_signatures,
                mtime: mtime(m),
            };
            let built = build(&spec)?;
            std::fs::write(&output, &built.bytes)
                .with_context(|| format!("writing {}", output.display()))?;
            for m in &built.missing {
                eprintln!(
                    "note: module {m} is not available for {} (skipped)",
                    spec.kernel_version
                );
            }
            println!(
                "{}: {} bytes ({} uncompressed base), {} modules, sha256 {}",
                output.display(),
                built.bytes.len(),
                built.uncompressed,
                built.modules.len(),
                built.sha256
            );
        }
        Cmd::Layer {
            dir,
            name,
            compress,
            output,
        } => {
            let seg = layer_segment(&name, &dir, compress, mtime(None))?;
            std::fs::write(&output, &seg)
                .with_context(|| format!("writing {}", output.display()))?;
            use sha2::Digest;
            println!(
                "{}: {} bytes, sha256 {}",
                output.display(),
                seg.len(),
                hex::encode(sha2::Sha256::digest(&seg))
            );
        }
    }
    Ok(())
}
