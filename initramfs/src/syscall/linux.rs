//! [`LinuxSyscall`]: the real calls (rustix; libc for the loop ioctls rustix does not wrap;
//! on x86_64 QEMU's fw_cfg through its I/O ports, with inline `in`/`out`).

use super::{Shutdown, Syscall};
use crate::identity::UnixTime;
use crate::ip::IpConfig;
use crate::net::NetState;
use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The real implementation (rustix; libc for the loop ioctls rustix does not wrap).
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("NUL byte in {s:?}")))
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        read_only: bool,
        data: &str,
    ) -> io::Result<()> {
        use rustix::mount::MountFlags;
        let flags = if read_only {
            MountFlags::RDONLY
        } else {
            MountFlags::empty()
        };
        let data = cstr(data)?;
        rustix::mount::mount(source, target, fstype, flags, Some(data.as_c_str()))?;
        Ok(())
    }

    fn mount_move(&self, from: &Path, to: &Path) -> io::Result<()> {
        rustix::mount::mount_move(from, to)?;
        Ok(())
    }

    fn bind_mount(&self, from: &Path, to: &Path) -> io::Result<()> {
        rustix::mount::mount_bind(from, to)?;
        Ok(())
    }

    fn umount(&self, target: &Path) -> io::Result<()> {
        rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH)?;
        Ok(())
    }

    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }

    fn mknod_char(&self, path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        use rustix::fs::{makedev, mknodat, FileType, Mode, CWD};
        mknodat(
            CWD,
            path,
            FileType::CharacterDevice,
            Mode::from_raw_mode(mode),
            makedev(major, minor),
        )?;
        Ok(())
    }

    fn setxattr(&self, path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())?;
        Ok(())
    }

    fn chroot(&self, path: &Path) -> io::Result<()> {
        rustix::process::chroot(path)?;
        Ok(())
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        rustix::process::chdir(path)?;
        Ok(())
    }

    fn exec(&self, path: &Path, args: &[String]) -> io::Error {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(path).args(args).exec()
    }

    fn finit_module(&self, path: &Path, params: &str) -> io::Result<()> {
        let file = std::fs::File::open(path)?;
        let params = cstr(params)?;
        match rustix::system::finit_module(&file, &params, 0) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn loop_attach(&self, file: &Path, read_only: bool) -> io::Result<PathBuf> {
        use std::os::fd::AsRawFd;
        const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
        const LOOP_SET_FD: libc::c_ulong = 0x4C00;
        let ctl = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")?;
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let backing = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(file)?;
        let loopdev = wait_open(&dev, !read_only)?;
        // SAFETY: LOOP_SET_FD takes the backing file descriptor by value.
        let rc = unsafe { libc::ioctl(loopdev.as_raw_fd(), LOOP_SET_FD, backing.as_raw_fd()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(dev)
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        use rustix::system::{reboot, RebootCommand};
        rustix::fs::sync();
        reboot(match how {
            Shutdown::PowerOff => RebootCommand::PowerOff,
            Shutdown::Reboot => RebootCommand::Restart,
        })?;
        Ok(())
    }

    fn kernel_release(&self) -> io::Result<String> {
        Ok(rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned())
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        rustix::system::sethostname(name.as_bytes())?;
        Ok(())
    }

    fn write_file(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        std::fs::write(path, contents)
    }

    fn configure_network(
        &self,
        ip: &IpConfig,
        nameservers: &[Ipv4Addr],
        timeout: Duration,
    ) -> io::Result<Option<NetState>> {
        crate::net::configure(ip, nameservers, timeout)
    }

    fn empty_initramfs(&self, root: &Path, keep: &Path) -> io::Result<()> {
        // Like switch_root(8): only ever empty an initramfs (ramfs or tmpfs), never a disk.
        const RAMFS_MAGIC: i64 = 0x8584_58f6;
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        let fs_type = rustix::fs::statfs(root)?.f_type as i64;
        if fs_type != RAMFS_MAGIC && fs_type != TMPFS_MAGIC {
            return Err(io::Error::other(format!(
                "{} is not an initramfs (filesystem magic {fs_type:#x}); refusing to empty it",
                root.display()
            )));
        }
        let dev = std::fs::metadata(root)?.dev();
        empty_dir_same_dev(root, dev, keep);
        Ok(())
    }

    fn fw_cfg_file(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        fw_cfg::file(name)
    }

    fn set_mac(&self, iface: &str, mac: [u8; 6]) -> io::Result<()> {
        crate::net::iface::set_hwaddr(iface, mac)
    }

    fn reseed_random(&self, urandom: &Path, seed: &[u8]) -> io::Result<()> {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        /// `_IO('R', 0x07)` of linux/random.h.
        const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
        let mut f = std::fs::OpenOptions::new().write(true).open(urandom)?;
        f.write_all(seed)?;
        // SAFETY: an ioctl without argument on a descriptor `f` keeps open for the call.
        if unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
            let e = io::Error::last_os_error();
            // ENODATA: the CRNG is not seeded yet; it will be from the pool, seed included.
            if e.raw_os_error() != Some(libc::ENODATA) {
                return Err(e);
            }
        }
        Ok(())
    }

    fn set_clock(&self, now: UnixTime) -> io::Result<()> {
        let tv_sec = libc::time_t::try_from(now.secs).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("time {now} out of range"),
            )
        })?;
        let ts = libc::timespec {
            tv_sec,
            // Below 1e9: fits any c_long.
            tv_nsec: now.nanos as libc::c_long,
        };
        // SAFETY: clock_settime only reads the timespec, which lives across the call.
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// fw_cfg over the x86 I/O ports 0x510 (selector) and 0x511 (data).
#[cfg(target_arch = "x86_64")]
mod fw_cfg {
    use crate::fwcfg::{FwCfgError, Ports, Reader, DATA_PORT, SELECTOR_PORT};
    use std::io;
    use std::sync::Mutex;

    /// The two ports; only made after `ioperm` granted them to this process.
    #[derive(Debug)]
    struct IoPorts(());

    impl Ports for IoPorts {
        fn select(&mut self, key: u16) {
            // SAFETY: ioperm gave this process the port (an `IoPorts` exists only after
            // it did); `out` touches no memory of ours, only fw_cfg's selected item.
            unsafe {
                core::arch::asm!(
                    "out dx, ax",
                    in("dx") SELECTOR_PORT,
                    in("ax") key,
                    options(nomem, nostack, preserves_flags)
                );
            }
        }

        fn read(&mut self, buf: &mut [u8]) {
            for b in buf {
                let v: u8;
                // SAFETY: as in `select`; `in` only advances fw_cfg's offset in the item.
                unsafe {
                    core::arch::asm!(
                        "in al, dx",
                        out("al") v,
                        in("dx") DATA_PORT,
                        options(nomem, nostack, preserves_flags)
                    );
                }
                *b = v;
            }
        }
    }

    /// One reader per process: it keeps what the polling needs between calls.
    static READER: Mutex<Option<Reader<IoPorts>>> = Mutex::new(None);

    pub(super) fn file(name: &str) -> io::Result<Option<Vec<u8>>> {
        let mut reader = READER.lock().unwrap_or_else(|p| p.into_inner());
        if reader.is_none() {
            // SAFETY: ioperm only changes this process's I/O permission bitmap.
            if unsafe { libc::ioperm(SELECTOR_PORT.into(), 2, 1) } != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "ioperm(0x510, 2): {e} (napalm.template needs QEMU's fw_cfg, ports \
                         0x510-0x511, and the rights of PID 1)"
                    ),
                ));
            }
        }
        let reader = reader.get_or_insert_with(|| Reader::new(IoPorts(())));
        reader.file(name).map_err(|e| {
            let kind = match e {
                FwCfgError::Absent(_) => io::ErrorKind::NotFound,
                _ => io::ErrorKind::InvalidData,
            };
            io::Error::new(kind, e.to_string())
        })
    }
}

/// No fw_cfg ports but on x86.
#[cfg(not(target_arch = "x86_64"))]
mod fw_cfg {
    use std::io;

    pub(super) fn file(_name: &str) -> io::Result<Option<Vec<u8>>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "napalm.template needs QEMU's fw_cfg (x86 ports 0x510-0x511); this is not x86_64",
        ))
    }
}

/// Deletes what lives on device `dev` under `dir`, not crossing into other mounts and
/// skipping `keep`. Best effort: what cannot go only wastes memory.
fn empty_dir_same_dev(dir: &Path, dev: u64, keep: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        let p: PathBuf = e.path();
        if p == keep {
            continue;
        }
        let Ok(meta) = p.symlink_metadata() else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            empty_dir_same_dev(&p, dev, keep);
            let _ = std::fs::remove_dir(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// devtmpfs creates `/dev/loopN` asynchronously after `LOOP_CTL_GET_FREE`; wait up to 2 s.
fn wait_open(dev: &Path, write: bool) -> io::Result<std::fs::File> {
    let mut last = None;
    for _ in 0..200 {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(dev)
        {
            Ok(f) => return Ok(f),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(last.unwrap_or_else(|| io::Error::other("loop device never appeared")))
}
