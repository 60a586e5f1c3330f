//! [`RecordingSyscall`]: records each call as a line of text, for unit tests without root.

use super::{Shutdown, Syscall};
use crate::identity::{format_mac, UnixTime};
use crate::ip::IpConfig;
use crate::net::NetState;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Records every call as a line of text; mkdir also creates the directory for real, so
/// logic that reads the tree (whiteout conversion, image lookup) works in a temp dir, and
/// so does a loaded module's `/sys/module/<name>`, as the kernel would.
#[derive(Debug, Default)]
pub struct RecordingSyscall {
    calls: RefCell<Vec<String>>,
    fail_on: RefCell<Option<String>>,
    loops: RefCell<u32>,
    strip: Option<PathBuf>,
    /// What `fw_cfg_file` answers, one per call; empty: there is no fw_cfg.
    fw_cfg: RefCell<VecDeque<Option<Vec<u8>>>>,
    /// What `write_file` was given, by the path it records.
    written: RefCell<Vec<(String, Vec<u8>)>>,
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

    /// Queues what the next calls of `fw_cfg_file` answer, one each (`None`: the file is
    /// not there yet); once they are used up it fails as a machine without fw_cfg.
    pub fn fw_cfg_answers(&self, answers: impl IntoIterator<Item = Option<Vec<u8>>>) {
        self.fw_cfg.borrow_mut().extend(answers);
    }

    /// The bytes last written to `path` (as the calls show it: `/dev/urandom`).
    pub fn written(&self, path: &str) -> Option<Vec<u8>> {
        self.written
            .borrow()
            .iter()
            .rev()
            .find(|(p, _)| p == path)
            .map(|(_, c)| c.clone())
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
    fn bind_mount(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.record(format!("bind {} {}", self.p(from), self.p(to)))
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
    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.record(format!("chmod {} {mode:o}", self.p(path)))
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
        self.record(format!("finit_module {} [{params}]", self.p(path)))?;
        if let Some(base) = &self.strip {
            let name = crate::modules::module_name(&path.to_string_lossy());
            std::fs::create_dir_all(base.join("sys/module").join(name))?;
        }
        Ok(())
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
    fn kernel_release(&self) -> io::Result<String> {
        self.record("uname".into())?;
        Ok(RECORDED_RELEASE.into())
    }
    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.record(format!("sethostname {name}"))
    }
    /// Records the path only (what is written, timings, differs from run to run); the
    /// bytes are kept for [`RecordingSyscall::written`].
    fn write_file(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        self.record(format!("write {}", self.p(path)))?;
        self.written
            .borrow_mut()
            .push((self.p(path), contents.to_vec()));
        Ok(())
    }
    /// A static `ip=` is taken as given; DHCP gets the lease QEMU's user network would
    /// give (10.0.2.15/24 via 10.0.2.2, DNS 10.0.2.3).
    fn configure_network(
        &self,
        ip: &IpConfig,
        nameservers: &[Ipv4Addr],
        _timeout: Duration,
    ) -> io::Result<Option<NetState>> {
        self.record(format!("network ip={ip}"))?;
        let mut st = match ip {
            IpConfig::Off => return Ok(None),
            IpConfig::Static(s) => NetState {
                iface: s.device.clone().unwrap_or_else(|| "eth0".into()),
                addr: s.client,
                netmask: s.netmask,
                gateway: s.gateway,
                dns: s.dns.clone(),
                hostname: s.hostname.clone(),
                method: "static",
            },
            IpConfig::Dhcp { device, hostname } => NetState {
                iface: device.clone().unwrap_or_else(|| "eth0".into()),
                addr: Ipv4Addr::new(10, 0, 2, 15),
                netmask: Ipv4Addr::new(255, 255, 255, 0),
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
                dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
                hostname: hostname.clone(),
                method: "dhcp",
            },
        };
        let mut dns = nameservers.to_vec();
        dns.extend(st.dns.iter().filter(|d| !nameservers.contains(d)));
        st.dns = dns;
        Ok(Some(st))
    }
    fn empty_initramfs(&self, root: &Path, keep: &Path) -> io::Result<()> {
        self.record(format!(
            "empty_initramfs {} keep {}",
            self.p(root),
            self.p(keep)
        ))
    }
    fn fw_cfg_file(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        self.record(format!("fw_cfg {name}"))?;
        self.fw_cfg.borrow_mut().pop_front().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "napalm.template needs QEMU's fw_cfg (ports 0x510-0x511), not found (recorded)",
            )
        })
    }
    fn set_mac(&self, iface: &str, mac: [u8; 6]) -> io::Result<()> {
        self.record(format!("set_mac {iface} {}", format_mac(&mac)))
    }
    fn reseed_random(&self, urandom: &Path, seed: &[u8]) -> io::Result<()> {
        self.write_file(urandom, seed)?;
        self.record("reseed".to_owned())
    }
    fn set_clock(&self, now: UnixTime) -> io::Result<()> {
        self.record(format!("set_clock {now}"))
    }
}

/// What [`RecordingSyscall::kernel_release`] answers.
pub const RECORDED_RELEASE: &str = "6.1.0-test";
