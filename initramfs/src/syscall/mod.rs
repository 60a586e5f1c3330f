//! The edge to the kernel (youki's `trait Syscall`): the calls of napalm-init that change
//! the machine or depend on it — mounts, the loop device, modules, the network, hostname,
//! `uname`, writes under `/run/napalm`, emptying the initramfs, exec and reboot, and for
//! a restored template QEMU's fw_cfg, the NIC's MAC and the wall clock — go
//! through [`Syscall`], so a whole boot is unit-tested with [`RecordingSyscall`] and runs
//! for real with [`LinuxSyscall`] inside the guest. Reading the tree being assembled
//! (whiteout scans, image lookup, `unpack=`) uses the filesystem directly.
//!
//! One file per implementation: [`linux`] and [`recording`].

mod linux;
mod recording;

pub use linux::LinuxSyscall;
pub use recording::{RecordingSyscall, RECORDED_RELEASE};

use crate::identity::UnixTime;
use crate::ip::IpConfig;
use crate::net::NetState;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the machine is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// `RB_POWER_OFF`: the domain stops (what a failed clone does by default).
    PowerOff,
    /// `RB_AUTOBOOT`: the domain boots again.
    Reboot,
}

/// The syscalls napalm-init needs; paths are absolute.
pub trait Syscall {
    /// `mount(source, target, fstype, flags, data)`; `read_only` sets `MS_RDONLY`.
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        read_only: bool,
        data: &str,
    ) -> io::Result<()>;
    /// `mount(from, to, NULL, MS_MOVE, NULL)`.
    fn mount_move(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// `mount --bind from to` (a file onto a file, or a directory onto a directory).
    fn bind_mount(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// `umount2(target, MNT_DETACH)`.
    fn umount(&self, target: &Path) -> io::Result<()>;
    /// `mkdir -p` with mode 0755.
    fn mkdir_all(&self, path: &Path) -> io::Result<()>;
    /// `chmod` (permission bits and set-id/sticky bits of `mode`).
    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// `mknod(path, S_IFCHR | mode, makedev(major, minor))`.
    fn mknod_char(&self, path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()>;
    /// `lsetxattr(path, name, value)`.
    fn setxattr(&self, path: &Path, name: &str, value: &[u8]) -> io::Result<()>;
    /// `chroot(path)`.
    fn chroot(&self, path: &Path) -> io::Result<()>;
    /// `chdir(path)`.
    fn chdir(&self, path: &Path) -> io::Result<()>;
    /// `execv(path, args)`; returns only on failure.
    fn exec(&self, path: &Path, args: &[String]) -> io::Error;
    /// `finit_module(open(path), params, 0)`; an already loaded module is not an error.
    fn finit_module(&self, path: &Path, params: &str) -> io::Result<()>;
    /// Attaches `file` to a free loop device and returns the device path.
    fn loop_attach(&self, file: &Path, read_only: bool) -> io::Result<PathBuf>;
    /// `sync(); reboot(cmd)`.
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
    /// The running kernel's release (`uname -r`), which names `/lib/modules/<release>`.
    fn kernel_release(&self) -> io::Result<String>;
    /// `sethostname(name)`.
    fn sethostname(&self, name: &str) -> io::Result<()>;
    /// Writes `contents` to the file `path` (its directory must exist).
    fn write_file(&self, path: &Path, contents: &[u8]) -> io::Result<()>;
    /// Brings the network up as `ip=` says (see [`crate::net::configure`]); `None` for
    /// `ip=off`.
    fn configure_network(
        &self,
        ip: &IpConfig,
        nameservers: &[Ipv4Addr],
        timeout: Duration,
    ) -> io::Result<Option<NetState>>;
    /// Deletes everything under `root` on its filesystem, skipping `keep` and other
    /// mounts, after checking `root` is an initramfs (ramfs or tmpfs): never a disk.
    fn empty_initramfs(&self, root: &Path, keep: &Path) -> io::Result<()>;
    /// The content of QEMU's fw_cfg file `name` (e.g. [`crate::fwcfg::IDENTITY_FILE`]),
    /// `None` while its directory has no such file; an error when there is no fw_cfg
    /// (not QEMU, not x86_64) or it cannot be read. Cheap enough to poll every 10 ms.
    fn fw_cfg_file(&self, name: &str) -> io::Result<Option<Vec<u8>>>;
    /// `SIOCSIFHWADDR`: sets the Ethernet address of `iface` (which must be down).
    fn set_mac(&self, iface: &str, mac: [u8; 6]) -> io::Result<()>;
    /// `clock_settime(CLOCK_REALTIME, now)`: sets the wall clock.
    fn set_clock(&self, now: UnixTime) -> io::Result<()>;
    /// Mixes `seed` into the kernel's random pool (a write to `urandom`, the path of
    /// /dev/urandom) and reseeds its CRNG from the pool at once (`RNDRESEEDCRNG`): clones
    /// restored from one template resume with one CRNG state, which a write alone would
    /// only change at the kernel's next periodic reseed (a kernel without the VM
    /// generation id driver, as Debian's cloud kernel, gets no other signal).
    fn reseed_random(&self, urandom: &Path, seed: &[u8]) -> io::Result<()>;
}
