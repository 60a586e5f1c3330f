//! Real boots under QEMU TCG with the Debian cloud kernel, dracut-test style: each case
//! builds a root and an initramfs, boots QEMU with a timeout, and asserts on markers the
//! guest prints on the serial console.
//!
//! Needs (Debian): qemu-system-x86, linux-image-cloud-amd64, busybox-static, nfs-ganesha,
//! nfs-ganesha-vfs, squashfs-tools, erofs-utils, e2fsprogs, dracut-network (bench only),
//! virtiofsd (/usr/lib/qemu, from qemu-system-common); and root for ganesha.
//!
//! The static napalm-init is built by the first test that needs it with
//! `napalm_initramfs::testing::static_init` (release, crt-static, stripped, into
//! `<target dir>/napalm-static`, a separate target dir so the outer cargo's lock is not
//! contended). Set `NAPALM_STATIC_INIT=/path` to use a prebuilt one.
//!
//! Network rule: guests get QEMU user networking with `restrict=on` and one explicit
//! forward, 10.0.2.100:2049 → the test's own ganesha on 127.0.0.1:<free port>; no route out.

// Test harness helpers panic on purpose when the host lacks a tool or a step fails.
#![allow(clippy::unwrap_used)]

mod bench;
mod boot_variants;
mod boots;
mod cli;
mod support;
