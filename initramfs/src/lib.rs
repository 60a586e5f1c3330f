//! # napalm-initramfs — the clone's early userspace (thesis 2.2.2, 3.2, annex II)
//!
//! Owns: `napalm-init`, the static PID 1 of a clone's initramfs (kernel command line,
//! modules, network, the `root=` grammar and its fsloaders, union assembly with overlayfs,
//! switch_root, boot timings) and `napalm-mkinitramfs`, which builds the reproducible newc
//! cpio image and appends differentiation layers.
//!
//! Must not touch: anything on the host at run time; it runs inside the guest. Mount and
//! other syscalls go through [`syscall::Syscall`] so the logic is tested without root.
//! Generating layers is the overlay crate's job; this crate only carries and mounts them.
//!
//! Map: [`rootspec`] (root= grammar), [`ip`] (ip=, nameserver=), [`cmdline`] (the kernel
//! command line), [`fsloader`] (one module per root type), [`whiteout`] (portable →
//! overlayfs whiteouts), [`union`] (assembly), [`unpack`] (unpack=), [`modules`]
//! (modules.dep), [`net`] (interfaces, DHCPv4), [`timings`], [`init`] (the PID 1 flow),
//! [`cpio`] and [`image`] (the builder).

pub mod cmdline;
pub mod cpio;
pub mod fsloader;
pub mod image;
pub mod init;
pub mod ip;
pub mod modules;
pub mod net;
pub mod rootspec;
pub mod syscall;
pub mod timings;
pub mod union;
pub mod unpack;
pub mod whiteout;
#[cfg(feature = "testing")]
pub mod testing;
