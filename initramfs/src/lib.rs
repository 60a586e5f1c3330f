//! # napalm-initramfs — the clone's early userspace (thesis 2.2.2, 3.2, annex II)
//!
//! Owns: `napalm-init`, the static PID 1 of a clone's initramfs (kernel command line,
//! modules, network, the `root=` grammar and its fsloaders, union assembly with overlayfs,
//! switch_root, boot timings) and `napalm-mkinitramfs`, which builds the reproducible newc
//! cpio image and appends differentiation layers; for the host, `kernel`: the guest
//! kernel's uncompressed ELF taken out of its bzImage, booted through its PVH entry.
//!
//! Must not touch: anything on the host at run time when it runs as PID 1 in the guest.
//! Mounts, the network, hostname, `uname` and `/run/napalm` go through `syscall::Syscall`
//! so the boot is tested without root. Generating layers is the overlay crate's job; this
//! crate only carries and mounts them.
//!
//! Features: `guest` (default) is the PID-1 code, needed by `napalm-init`. A host program
//! (the coordinator) uses `default-features = false` and gets the grammar — `rootspec`
//! (root=), `ip` (ip=, nameserver=), `scratch` (napalm.scratch=), `identity` (napalm.mac=,
//! napalm.now=, napalm.seed=), `cmdline` (the command line, parsed as `BootConfig`
//! or built as `KernelCmdline`) — and the builder: `cpio`, `image`, `modules`
//! (modules.dep), `modsig` (modules' appended signatures), `kernel` (bzImage → vmlinux with its PVH note). `testing` adds `testing::static_init`, the static napalm-init for QEMU
//! tests.
//!
//! Guest map: `fsloader` (one module per root type), `whiteout` (portable → overlayfs
//! whiteouts), `union` (assembly), `unpack` (unpack=), `net` (interfaces, DHCPv4),
//! `timings`, `syscall` (the machine edge), `fwcfg` (QEMU's fw_cfg, where a restored
//! template finds its identity), `init` (the PID 1 flow, step by step).

// Host-usable: the grammar of the command line, the image builder. The coordinator depends
// with `default-features = false` and links only these.
pub mod cmdline;
pub mod cpio;
pub mod identity;
pub mod image;
pub mod ip;
pub mod kernel;
pub mod modsig;
pub mod modules;
pub mod rootspec;
pub mod scratch;
#[cfg(feature = "testing")]
pub mod testing;

// Guest-only (feature `guest`, on by default): what napalm-init does as PID 1.
#[cfg(feature = "guest")]
pub mod fsloader;
#[cfg(feature = "guest")]
pub mod fwcfg;
#[cfg(feature = "guest")]
pub mod init;
#[cfg(feature = "guest")]
pub mod net;
#[cfg(feature = "guest")]
pub mod syscall;
#[cfg(feature = "guest")]
pub mod timings;
#[cfg(feature = "guest")]
pub mod union;
#[cfg(feature = "guest")]
pub mod unpack;
#[cfg(feature = "guest")]
pub mod whiteout;
