//! [`LinuxSyscall`]: the real calls (rustix; libc for the loop ioctls rustix does not wrap).

use super::{Shutdown, Syscall};
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
