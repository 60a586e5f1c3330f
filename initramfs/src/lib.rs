//! # napalm-initramfs — the clone's early userspace (thesis 2.2.2, 3.2, annex II)
//!
//! Owns: `napalm-init`, the static PID 1 of a clone's initramfs (kernel command line,
//! modules, network, the `root=` grammar and its fsloaders, union assembly with overlayfs,
//! switch_root, boot timings) and `napalm-mkinitramfs`, which builds the reproducible newc
//! cpio image and appends differentiation layers.
//!
//! Must not touch: anything on the host at run time; it runs inside the guest. Mount and
//! other syscalls go through a trait so the logic is tested without root.
//!
//! Status: arrives with issue #4; this crate is the place it goes.
