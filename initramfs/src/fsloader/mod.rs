//! Fsloaders: one module per kind of root participant, registered by name, each with its
//! help text and parameter list (the interface of thesis annex II: `--help`,
//! `--parameters`, `--do-mount`). Like Kata's storage handlers, the registry maps a `root=`
//! device type to the code that mounts it.

mod block;
mod compose;
mod image;
mod layer;
mod nfs;
mod share;
mod tmpfs;

pub use image::{detect_fs, fs_label_uuid};

use crate::rootspec::{Device, Role};
use crate::syscall::Syscall;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Why an fsloader failed; always names the device as written in `root=`.
#[derive(Debug, Error)]
pub enum LoadError {
    /// Bad or missing parameters.
    #[error("{device}: {what}\n  usage: {usage}")]
    Params {
        /// The device as written.
        device: String,
        /// What is wrong.
        what: String,
        /// The loader's usage line.
        usage: &'static str,
    },
    /// A syscall or lookup failed.
    #[error("{device}: {step}: {source}")]
    Sys {
        /// The device as written.
        device: String,
        /// What was being done, with its inputs.
        step: String,
        /// The error of the syscall or lookup.
        source: io::Error,
    },
}

/// One mounted participant of the union.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    /// Where it is mounted (under `/mnt/unions`).
    pub dir: PathBuf,
    /// Human description for the console (`10.0.2.100:/ (nfs4)`).
    pub desc: String,
    /// Already a tmpfs copy in overlayfs form (no whiteout scan needed).
    pub converted: bool,
}

/// Everything a loader may use: the syscalls, where to mount, what is already mounted.
pub struct MountCtx<'a> {
    /// Where every mount and loop attach goes (recorded in tests).
    pub sys: &'a dyn Syscall,
    /// The filesystem root seen by napalm-init (`/` at boot, a temp dir in tests).
    pub base: PathBuf,
    /// Participants mounted so far, leftmost first (the loop loader looks here).
    pub earlier: Vec<PathBuf>,
    /// Our IPv4 address once the network is up (NFS `clientaddr=`).
    pub client_ip: Option<Ipv4Addr>,
    /// How long to wait for devices and servers.
    pub timeout: Duration,
    /// Console lines produced while mounting.
    pub log: Vec<String>,
    /// (device, start, end) of each device mount, seconds since kernel start.
    pub phases: Vec<(String, f64, f64)>,
    next: usize,
}

impl<'a> MountCtx<'a> {
    /// A context rooted at `base`.
    pub fn new(sys: &'a dyn Syscall, base: &Path, timeout: Duration) -> Self {
        Self {
            sys,
            base: base.to_path_buf(),
            earlier: Vec::new(),
            client_ip: None,
            timeout,
            log: Vec::new(),
            phases: Vec::new(),
            next: 0,
        }
    }

    /// `base` joined with an absolute path.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.base.join(abs.trim_start_matches('/'))
    }

    /// `/mnt/unions`, where participants are mounted (thesis 3.2.5).
    pub fn unions(&self) -> PathBuf {
        self.path("/mnt/unions")
    }

    /// Creates the next participant mount point `/mnt/unions/N-label`.
    pub fn mountpoint(&mut self, label: &str) -> io::Result<PathBuf> {
        let p = self.unions().join(format!("{}-{}", self.next, label));
        self.next += 1;
        self.sys.mkdir_all(&p)?;
        Ok(p)
    }
}

/// The annex II interface of one fsloader.
pub trait Fsloader: Sync {
    /// The `root=` type it serves (`nfs`, `loop+nfs`).
    fn name(&self) -> &'static str;
    /// The concise parameter list (`--parameters`).
    fn parameters(&self) -> &'static str;
    /// The usage line.
    fn usage(&self) -> &'static str;
    /// The help text (`--help`), with examples.
    fn help(&self) -> &'static str;
    /// Kernel modules it needs (dependencies are resolved from modules.dep).
    fn modules(&self) -> &'static [&'static str];
    /// `None` if it may be the rw upper layer, else why not.
    fn refuse_upper(&self) -> Option<&'static str> {
        None
    }
    /// Mounts the device (`--do-mount`); may yield several participants (`loop+nfs` dirs).
    fn mount(&self, ctx: &mut MountCtx<'_>, dev: &Device) -> Result<Vec<Mounted>, LoadError>;
}

/// All fsloaders, in help order.
pub fn registry() -> Vec<&'static dyn Fsloader> {
    vec![
        &block::Block,
        &nfs::Nfs,
        &tmpfs::Tmpfs,
        &image::Loop,
        &image::LoopNfs,
        &share::NineP,
        &share::Virtiofs,
        &layer::Layer,
        &LOOP_BLOCK,
        &LOOP_9P,
        &LOOP_VIRTIOFS,
    ]
}

static LOOP_BLOCK: compose::LoopOver = compose::LoopOver {
    name: "loop+block",
    inner: &block::Block,
    usage: "loop+block:<device>:<image path>[:ro|rw]",
};
static LOOP_9P: compose::LoopOver = compose::LoopOver {
    name: "loop+9p",
    inner: &share::NineP,
    usage: "loop+9p:<tag>:<image path>[:ro|rw]",
};
static LOOP_VIRTIOFS: compose::LoopOver = compose::LoopOver {
    name: "loop+virtiofs",
    inner: &share::Virtiofs,
    usage: "loop+virtiofs:<tag>:<image path>[:ro|rw]",
};

/// The fsloader serving `name`, composed names included (`loop+nfs`).
pub fn find(name: &str) -> Option<&'static dyn Fsloader> {
    registry().into_iter().find(|l| l.name() == name)
}

/// The text `napalm.help` prints: every loader's parameters and help.
pub fn help_text() -> String {
    let mut s = String::from(
        "napalm-init fsloaders (root=Device{;Device}, Device=Type{:Param}, rightmost wins):\n",
    );
    for l in registry() {
        s.push_str(&format!(
            "\n== {} ({})\n  usage: {}\n",
            l.name(),
            l.parameters(),
            l.usage()
        ));
        for line in l.help().lines() {
            s.push_str("  ");
            s.push_str(line);
            s.push('\n');
        }
    }
    s
}

/// Modules needed to boot `spec`: overlay plus what each fsloader declares.
pub fn modules_for(spec: &crate::rootspec::RootSpec) -> Vec<&'static str> {
    let mut m = vec!["overlay"];
    for d in &spec.devices {
        // A composed type needs its parts' modules too (`loop+block`: loop and block).
        let parts = std::iter::once(d.kind.as_str()).chain(d.components());
        for l in parts.filter_map(find) {
            for x in l.modules() {
                if !m.contains(x) {
                    m.push(x);
                }
            }
        }
    }
    m
}

/// The device holding the filesystem labelled `label` (e.g. a scratch disk), waiting up
/// to `timeout` for it to appear, and its filesystem type read from the superblock.
pub(crate) fn wait_for_label(
    base: &Path,
    label: &str,
    timeout: Duration,
) -> io::Result<(PathBuf, String)> {
    let spec = format!("LABEL={label}");
    let path = retry(timeout, device_not_ready, || block::resolve(base, &spec))?;
    let fstype = block::probe(&path)?;
    Ok((path, fstype))
}

/// Helpers shared by the loaders.
pub(crate) fn params_err(l: &dyn Fsloader, dev: &Device, what: impl Into<String>) -> LoadError {
    LoadError::Params {
        device: dev.display(),
        what: what.into(),
        usage: l.usage(),
    }
}

pub(crate) fn sys_err(
    dev: &Device,
    step: impl Into<String>,
) -> impl FnOnce(io::Error) -> LoadError {
    let device = dev.display();
    let step = step.into();
    move |source| LoadError::Sys {
        device,
        step,
        source,
    }
}

/// Retries `f` until it succeeds, fails with a non-transient error, or `timeout` passes.
pub(crate) fn retry<T>(
    timeout: Duration,
    transient: fn(&io::Error) -> bool,
    mut f: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let start = std::time::Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if transient(&e) && start.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => return Err(e),
        }
    }
}

/// Errors worth waiting out while a device is being probed.
pub(crate) fn device_not_ready(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        NotFound | ConnectionRefused | TimedOut | WouldBlock | HostUnreachable | NetworkUnreachable
    ) || matches!(
        e.raw_os_error(),
        Some(libc::ENXIO) | Some(libc::ENODEV) | Some(libc::EAGAIN)
    )
}

/// Errors worth waiting out while the network or a server comes up.
pub(crate) fn network_not_ready(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | TimedOut | HostUnreachable | NetworkUnreachable | WouldBlock
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EIO) | Some(libc::EAGAIN) | Some(libc::ENETUNREACH)
    )
}

/// The role written as mount flag.
pub(crate) fn read_only(dev: &Device) -> bool {
    dev.role() == Role::Ro
}

#[cfg(test)]
#[path = "tests.rs"]
pub(crate) mod tests;
