//! The edge to the kernel (youki's `trait Syscall`): every call that changes the machine
//! goes through [`Syscall`], so the mount logic is unit-tested with [`RecordingSyscall`]
//! and runs for real with [`LinuxSyscall`] inside the guest.

use std::cell::RefCell;
use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

/// How the machine is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Power off.
    PowerOff,
    /// Reboot.
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
    /// `umount2(target, MNT_DETACH)`.
    fn umount(&self, target: &Path) -> io::Result<()>;
    /// `mkdir -p` with mode 0755.
    fn mkdir_all(&self, path: &Path) -> io::Result<()>;
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
}

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

/// Records every call as a line of text; mkdir also creates the directory for real, so
/// logic that reads the tree (whiteout conversion, image lookup) works in a temp dir.
#[derive(Debug, Default)]
pub struct RecordingSyscall {
    calls: RefCell<Vec<String>>,
    fail_on: RefCell<Option<String>>,
    loops: RefCell<u32>,
    strip: Option<PathBuf>,
}

impl RecordingSyscall {
    /// A recorder that prints paths relative to `base` (shown as `/…`).
    pub fn new(base: Option<&Path>) -> Self {
        Self {
            strip: base.map(Path::to_path_buf),
            ..Self::default()
        }
    }

    /// Makes the next call whose record starts with `prefix` fail with EIO.
    pub fn fail_on(&self, prefix: &str) {
        *self.fail_on.borrow_mut() = Some(prefix.to_string());
    }

    /// The calls recorded so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    fn p(&self, path: &Path) -> String {
        match &self.strip {
            Some(base) => match path.strip_prefix(base) {
                Ok(rel) => format!("/{}", rel.display()),
                Err(_) => path.display().to_string(),
            },
            None => path.display().to_string(),
        }
    }

    fn record(&self, line: String) -> io::Result<()> {
        let fail = self
            .fail_on
            .borrow()
            .as_ref()
            .is_some_and(|f| line.starts_with(f.as_str()));
        self.calls.borrow_mut().push(line.clone());
        if fail {
            *self.fail_on.borrow_mut() = None;
            return Err(io::Error::other(format!("injected failure: {line}")));
        }
        Ok(())
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        read_only: bool,
        data: &str,
    ) -> io::Result<()> {
        let ro = if read_only { " ro" } else { "" };
        let src = match &self.strip {
            Some(b) if source.starts_with(&*b.to_string_lossy()) => self.p(Path::new(source)),
            _ => source.to_string(),
        };
        let data = match &self.strip {
            Some(b) => data.replace(&*b.to_string_lossy(), ""),
            None => data.to_string(),
        };
        self.record(format!(
            "mount {src} {} {fstype}{ro} [{data}]",
            self.p(target)
        ))
    }
    fn mount_move(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.record(format!("move {} {}", self.p(from), self.p(to)))
    }
    fn umount(&self, target: &Path) -> io::Result<()> {
        self.record(format!("umount {}", self.p(target)))
    }
    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        self.record(format!("mkdir {}", self.p(path)))?;
        if self.strip.is_some() {
            std::fs::create_dir_all(path)?;
        }
        Ok(())
    }
    fn mknod_char(&self, path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.record(format!("mknod {} c {major} {minor} {mode:o}", self.p(path)))
    }
    fn setxattr(&self, path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        self.record(format!(
            "setxattr {} {name}={}",
            self.p(path),
            String::from_utf8_lossy(value)
        ))
    }
    fn chroot(&self, path: &Path) -> io::Result<()> {
        self.record(format!("chroot {}", self.p(path)))
    }
    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.record(format!("chdir {}", self.p(path)))
    }
    fn exec(&self, path: &Path, args: &[String]) -> io::Error {
        match self.record(format!("exec {} {}", self.p(path), args.join(" "))) {
            Err(e) => e,
            Ok(()) => io::Error::other("recorded exec does not replace the process"),
        }
    }
    fn finit_module(&self, path: &Path, params: &str) -> io::Result<()> {
        self.record(format!("finit_module {} [{params}]", self.p(path)))
    }
    fn loop_attach(&self, file: &Path, read_only: bool) -> io::Result<PathBuf> {
        let n = {
            let mut l = self.loops.borrow_mut();
            *l += 1;
            *l - 1
        };
        self.record(format!(
            "loop_attach {} -> /dev/loop{n}{}",
            self.p(file),
            if read_only { " ro" } else { "" }
        ))?;
        Ok(PathBuf::from(format!("/dev/loop{n}")))
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.record(format!("shutdown {how:?}"))
    }
}
