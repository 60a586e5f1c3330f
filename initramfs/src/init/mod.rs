//! The PID 1 flow of napalm-init, one named step each: early mounts, command line, modules,
//! for a template (`napalm.template`) the wait for its identity (`template.rs`), network,
//! the union root, `unpack=`, `napalm.scratch=` (tmpfs beside the union), switch_root
//! semantics (empty the initramfs, move the
//! new root onto `/`, chroot), the boot report, exec `init=`. Any failure stops with a
//! message naming the step and its input, then does what `napalm.onfail=` says
//! ([`handle_failure`]). Every call that touches the machine goes through [`Syscall`], and
//! every path is under the boot's root (`/` at boot, a temp dir in tests).

mod failure;
mod report;
mod template;
#[cfg(test)]
mod template_tests;
#[cfg(test)]
mod tests;

pub use failure::{handle_failure, say, Failure};
pub use template::TEMPLATE_READY;

use crate::cmdline::{onfail_lenient, BootConfig, OnFail};
use crate::fsloader::{self, MountCtx};
use crate::ip::IpConfig;
use crate::modules;
use crate::net::{self, NetState};
use crate::rootspec::RootSpec;
use crate::syscall::Syscall;
use crate::timings::{uptime, Timings};
use crate::union::{self, Assembled};
use crate::unpack;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the new root is assembled.
pub const NEWROOT: &str = "/rootfs";

/// The source name of scratch tmpfs mounts, as `/proc/mounts` shows it (the union's own
/// tmpfs layers are `tmpfs`).
pub const SCRATCH_SOURCE: &str = "napalm-scratch";

/// The modules the network needs besides those of the fsloaders.
const NET_MODULES: [&str; 3] = ["virtio_pci", "virtio_net", "xen_netfront"];
/// The modules scratch disks need (the filesystem the host makes, ext4, is built into
/// Debian's kernels; a kernel with it as a module lists it in the image).
const DISK_MODULES: [&str; 4] = ["virtio_pci", "virtio_blk", "xen_blkfront", "ext4"];

/// Runs the whole boot on the real root `/`; returns only on failure (success execs the
/// real init with `init_args`, the words the kernel passed to us, e.g. `single`).
pub fn run(sys: &dyn Syscall, cmdline: &Path, init_args: &[String]) -> Failure {
    Boot::new(sys, Path::new("/")).run(cmdline, init_args)
}

/// One boot: the syscall edge, the root everything happens under, what to do on failure
/// (known once the command line is read), the timings so far and the boot's log.
pub struct Boot<'a> {
    sys: &'a dyn Syscall,
    root: PathBuf,
    onfail: OnFail,
    t0: f64,
    tm: Timings,
    /// The kernel's `quiet`: the log goes to boot.json only, not to the console. Under TCG
    /// every byte on the emulated serial port costs the guest CPU, and on a busy host the
    /// console is read by nobody; failures and the one-line summary are still printed.
    quiet: bool,
    /// Every line of the boot's log, printed or not; kept in `/run/napalm/boot.json`.
    log: Vec<String>,
    /// Set when this boot was restored from a template (`napalm.template`).
    restored: Option<template::Restored>,
    /// A restored boot's own command line (its identity less `napalm.seed=`), written to
    /// `/run/napalm/cmdline`: the kernel's /proc/cmdline is its template's.
    identity: Option<String>,
    /// The lines [`Boot::print`] put on the console (the tests read them).
    printed: Vec<String>,
}

type Step<T> = Result<T, Failure>;

impl<'a> Boot<'a> {
    /// A boot under `root` (`/` as PID 1).
    pub fn new(sys: &'a dyn Syscall, root: &Path) -> Self {
        let t0 = uptime();
        Boot {
            sys,
            root: root.to_path_buf(),
            onfail: OnFail::Halt,
            t0,
            tm: Timings::new(t0),
            quiet: false,
            log: Vec::new(),
            restored: None,
            identity: None,
            printed: Vec::new(),
        }
    }

    /// Logs a line: kept for boot.json, and printed on the console unless `quiet`.
    fn note(&mut self, line: String) {
        if !self.quiet {
            self.print(&line);
        }
        self.log.push(line);
    }

    /// Prints a line on the console, quiet or not.
    fn print(&mut self, line: &str) {
        say(line);
        self.printed.push(line.to_owned());
    }

    /// Runs every step; returns only on failure, like [`run`].
    pub fn run(mut self, cmdline: &Path, init_args: &[String]) -> Failure {
        match self.steps(cmdline, init_args) {
            Err(f) => f,
            Ok(never) => match never {},
        }
    }

    fn steps(&mut self, cmdline: &Path, init_args: &[String]) -> Step<Infallible> {
        // Logged before the command line says whether the console is quiet: printed then.
        self.log.push(format!(
            "napalm-init: starting at {:.3}s after kernel start",
            self.t0
        ));
        self.early_mounts()?;
        let mut cfg = self.read_cmdline(cmdline)?;
        if !self.quiet {
            self.log.iter().for_each(|l| say(l));
        }
        let mut root = self.root_spec(&cfg)?;
        self.load_modules(&cfg, &root)?;
        if cfg.template {
            // Saved here by the host, restored into each clone's QEMU: from now on the
            // clone's own command line (its identity) rules.
            cfg = self.await_identity()?;
            root = self.root_spec(&cfg)?;
            self.load_modules(&cfg, &root)?;
            self.apply_identity(&cfg)?;
        }
        let net = self.bring_up_network(&cfg)?;
        let assembled = self.assemble_root(&cfg, &root, net.as_ref())?;
        self.unpack(&cfg, &assembled)?;
        self.mount_scratch(&cfg, stateless(&root))?;
        self.switch_root(&cfg)?;
        self.write_report(&root, &assembled, net.as_ref());
        Err(self.exec_init(&cfg, init_args))
    }

    /// `abs` (an absolute path of the booted system) under this boot's root.
    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    fn fail(&self, step: &'static str, error: impl Into<String>) -> Failure {
        Failure {
            step,
            error: error.into(),
            onfail: self.onfail,
        }
    }

    /// Mounts /proc, /sys, /dev (devtmpfs) and /run; already mounted is fine.
    fn early_mounts(&self) -> Step<()> {
        for (src, dir, fstype, data) in [
            ("proc", "/proc", "proc", ""),
            ("sysfs", "/sys", "sysfs", ""),
            ("devtmpfs", "/dev", "devtmpfs", "mode=0755"),
            ("tmpfs", "/run", "tmpfs", "mode=0755"),
        ] {
            let target = self.path(dir);
            let r = self.sys.mkdir_all(&target).and_then(|()| {
                match self.sys.mount(src, &target, fstype, false, data) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
                    r => r.map_err(|e| {
                        std::io::Error::new(e.kind(), format!("mount -t {fstype} {src} {dir}: {e}"))
                    }),
                }
            });
            r.map_err(|e| self.fail("early mounts", e.to_string()))?;
        }
        Ok(())
    }

    /// Parses the command line; from here on `napalm.onfail=` applies (leniently read
    /// when the line itself is malformed).
    fn read_cmdline(&mut self, cmdline: &Path) -> Step<BootConfig> {
        match BootConfig::from_cmdline(cmdline) {
            Ok(cfg) => {
                self.onfail = cfg.onfail;
                self.quiet = cfg.quiet;
                if cfg.help {
                    say(&fsloader::help_text());
                }
                Ok(cfg)
            }
            Err(e) => {
                let raw = std::fs::read_to_string(cmdline).unwrap_or_default();
                self.onfail = onfail_lenient(&raw);
                Err(self.fail("cmdline", e.to_string()))
            }
        }
    }

    /// The `root=` to assemble, checked against the fsloaders before anything is mounted.
    fn root_spec(&self, cfg: &BootConfig) -> Step<RootSpec> {
        let Some(root) = cfg.root.clone() else {
            return Err(self.fail(
                "cmdline",
                "no root= on the kernel command line (e.g. root=nfs:10.0.2.100::ro;tmpfs:rw; napalm.help lists the types)",
            ));
        };
        union::validate(&root).map_err(|e| self.fail("root", e.to_string()))?;
        Ok(root)
    }

    /// Loads the modules the root and the network need, dependencies first (the builder
    /// wrote modules.dep), and names the slow ones.
    fn load_modules(&mut self, cfg: &BootConfig, root: &RootSpec) -> Step<()> {
        let s = uptime();
        let release = self
            .sys
            .kernel_release()
            .map_err(|e| self.fail("modules", format!("uname: {e}")))?;
        let mut wanted = fsloader::modules_for(root);
        if cfg.ip != IpConfig::Off {
            wanted.extend(NET_MODULES);
        }
        if cfg.scratch.disks().next().is_some() {
            for m in DISK_MODULES {
                if !wanted.contains(&m) {
                    wanted.push(m);
                }
            }
        }
        let dir = self.path("/lib/modules").join(&release);
        let loaded = modules::load_needed(self.sys, &dir, &self.path("/sys/module"), &wanted)
            .map_err(|e| self.fail("modules", e.to_string()))?;
        let line = self
            .tm
            .record(&format!("modules: {} loaded", loaded.len()), s, uptime());
        self.note(line);
        let mut slow: Vec<&(String, f64)> = loaded.iter().filter(|m| m.1 > 0.05).collect();
        slow.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (m, t) in slow {
            self.note(format!("napalm:   {t:.3}s {}", modules::module_name(m)));
        }
        Ok(())
    }

    /// The network as `ip=` says (DHCP by default when a layer is on NFS), the hostname it
    /// names, and `/run/napalm/resolv.conf`.
    fn bring_up_network(&mut self, cfg: &BootConfig) -> Step<Option<NetState>> {
        let timeout = Duration::from_secs(cfg.timeout_secs);
        let mut ipcfg = cfg.ip.clone();
        if ipcfg == IpConfig::Off && needs_network(cfg) {
            ipcfg = IpConfig::dhcp();
        }
        let s = uptime();
        let state = self
            .sys
            .configure_network(&ipcfg, &cfg.nameservers, timeout)
            .map_err(|e| self.fail("network", format!("{e} (ip={ipcfg:?})")))?;
        let Some(n) = state else {
            return Ok(None);
        };
        let gw = n.gateway.map(|g| format!(", gw {g}")).unwrap_or_default();
        let line = self.tm.record(
            &format!("network: {} {} ({}{gw})", n.iface, n.addr, n.method),
            s,
            uptime(),
        );
        self.note(line);
        if let Some(h) = &n.hostname {
            // As the kernel's own ip= does; the clone's layer may set it again later.
            if let Err(e) = self.sys.sethostname(h) {
                self.note(format!("napalm: warning: sethostname({h}): {e}"));
            }
        }
        let _ = self.sys.mkdir_all(&self.path("/run/napalm"));
        self.sys
            .write_file(
                &self.path("/run/napalm/resolv.conf"),
                net::resolv_conf(&n.dns).as_bytes(),
            )
            .map_err(|e| self.fail("network", format!("writing /run/napalm/resolv.conf: {e}")))?;
        Ok(Some(n))
    }

    /// Mounts every `root=` layer and the overlayfs union on [`NEWROOT`].
    fn assemble_root(
        &mut self,
        cfg: &BootConfig,
        root: &RootSpec,
        net: Option<&NetState>,
    ) -> Step<Assembled> {
        let s = uptime();
        let mut ctx = MountCtx::new(self.sys, &self.root, Duration::from_secs(cfg.timeout_secs));
        ctx.client_ip = net.map(|n| n.addr);
        let assembled = union::assemble(&mut ctx, root, &self.path(NEWROOT));
        let (phases, log) = (
            std::mem::take(&mut ctx.phases),
            std::mem::take(&mut ctx.log),
        );
        drop(ctx);
        for p in phases {
            let line = self.tm.record(&format!("mount {}", p.0), p.1, p.2);
            self.note(line);
        }
        for l in log {
            self.note(format!("napalm:   {l}"));
        }
        let assembled = assembled.map_err(|e| self.fail("root", e.to_string()))?;
        let line = self.tm.record("union root assembled", s, uptime());
        self.note(line);
        for (desc, at) in &assembled.participants {
            self.note(format!("napalm:   {at}  {desc}"));
        }
        Ok(assembled)
    }

    /// `unpack=`: archives unpacked onto the new root's upper layer.
    fn unpack(&mut self, cfg: &BootConfig, assembled: &Assembled) -> Step<()> {
        let s = uptime();
        let done = unpack::unpack_all(&self.path(NEWROOT), &cfg.unpack, assembled.writable)
            .map_err(|e| self.fail("unpack", e.to_string()))?;
        if !done.is_empty() {
            for (a, n) in &done {
                self.note(format!("napalm:   unpacked {} ({n} entries)", a.display()));
            }
            let line = self.tm.record("unpack", s, uptime());
            self.note(line);
        }
        Ok(())
    }

    /// `napalm.scratch=`: at each path of the new root, a tmpfs of the given size and mode,
    /// or the filesystem labelled for that disk entry (waiting `napalm.timeout=` for the
    /// device) with its root directory given the mode; mounted on the assembled union (not
    /// through it: writes there never reach overlayfs); switch_root's move of the new root
    /// carries them along. The directory is created in the union when missing, which needs
    /// a writable root. A disk follows the clone's mode: on a `stateless` root (its upper
    /// is a tmpfs) it is emptied, so a reboot from inside the guest finds it as fresh as the
    /// upper (a new start of the domain already gets a fresh one from the host).
    fn mount_scratch(&mut self, cfg: &BootConfig, stateless: bool) -> Step<()> {
        if cfg.scratch.is_empty() {
            return Ok(());
        }
        let s = uptime();
        let timeout = Duration::from_secs(cfg.timeout_secs);
        for m in &cfg.scratch.mounts {
            let target = self.path(NEWROOT).join(m.path.trim_start_matches('/'));
            let made = self.sys.mkdir_all(&target).map_err(|e| {
                format!(
                    "{m}: creating {} in the new root: {e} (a read-only root needs the \
                     directory in one of its layers)",
                    m.path
                )
            });
            let done = made.and_then(|()| match cfg.scratch.label_of(m) {
                None => {
                    let opts = m.mount_options();
                    self.sys
                        .mount(SCRATCH_SOURCE, &target, "tmpfs", false, &opts)
                        .map(|()| format!("tmpfs {opts}"))
                        .map_err(|e| format!("{m}: mount -t tmpfs -o {opts} {}: {e}", m.path))
                }
                Some(label) => self.mount_scratch_disk(m, &label, &target, timeout, stateless),
            });
            let what = done.map_err(|e| {
                self.fail("scratch", format!("napalm.scratch={}: {e}", cfg.scratch))
            })?;
            self.note(format!("napalm:   scratch {} {what}", m.path));
        }
        let line = self.tm.record("scratch mounted", s, uptime());
        self.note(line);
        Ok(())
    }

    /// One disk entry: finds the filesystem labelled `label`, mounts it at `target`,
    /// empties it when `stateless` (all but `lost+found`) and gives its root directory the
    /// entry's mode; says what it mounted.
    fn mount_scratch_disk(
        &self,
        m: &crate::scratch::ScratchMount,
        label: &str,
        target: &Path,
        timeout: Duration,
        stateless: bool,
    ) -> Result<String, String> {
        let (dev, fstype) = fsloader::wait_for_label(&self.root, label, timeout).map_err(|e| {
            format!(
                "{m}: no disk with the filesystem label {label} after {}s: {e} (the host \
                 attaches it; `napalm.timeout=` waits longer)",
                timeout.as_secs()
            )
        })?;
        let shown = format!(
            "/{}",
            dev.strip_prefix(&self.root).unwrap_or(&dev).display()
        );
        // The host made it with lazy inode tables: no kernel thread zeroes them in the
        // background (CPU a TCG guest would pay for nothing; the tables are valid unzeroed).
        let opts = if fstype == "ext4" {
            "noinit_itable"
        } else {
            ""
        };
        self.sys
            .mount(&shown, target, &fstype, false, opts)
            .map_err(|e| format!("{m}: mount -t {fstype} -o {opts} {shown} {}: {e}", m.path))?;
        let emptied = if stateless {
            crate::scratch::empty_dir(target)
                .map_err(|e| format!("{m}: emptying {} (a stateless clone's): {e}", m.path))?
        } else {
            0
        };
        self.sys
            .chmod(target, m.mode)
            .map_err(|e| format!("{m}: chmod {:o} {}: {e}", m.mode, m.path))?;
        let kept = if stateless {
            format!("emptied ({emptied} entries)")
        } else {
            "kept".into()
        };
        Ok(format!(
            "{shown} ({fstype}, {label}) mode {:o}, {kept}",
            m.mode
        ))
    }

    /// Checks `init=` exists in the new root, then switches to it ([`switch_root`]).
    fn switch_root(&mut self, cfg: &BootConfig) -> Step<()> {
        let s = uptime();
        let init = &cfg.init;
        let in_new = self
            .path(NEWROOT)
            .join(init.strip_prefix("/").unwrap_or(init));
        if in_new.symlink_metadata().is_err() {
            return Err(self.fail(
                "switch_root",
                format!("init={} does not exist in the new root", init.display()),
            ));
        }
        switch_root_under(self.sys, &self.root, &self.path(NEWROOT))
            .map_err(|e| self.fail("switch_root", e.to_string()))?;
        let end = uptime();
        let line = self.tm.record("switch_root", s, end);
        self.note(line);
        self.tm.exec_init = Some(end);
        Ok(())
    }

    /// `/run/napalm/boot.json` for the register hook; a failure is only a warning.
    fn write_report(&self, root: &RootSpec, assembled: &Assembled, net: Option<&NetState>) {
        let json = report::boot_json(root, assembled, net, &self.tm, &self.log, self.restored);
        // After switch_root the boot's root is the new root, its /run the one moved there.
        let dir = self.path("/run/napalm");
        let written = self.sys.mkdir_all(&dir).and_then(|()| {
            self.sys
                .write_file(&dir.join("boot.json"), json.as_bytes())?;
            match &self.identity {
                Some(c) => {
                    let own = dir.join("cmdline");
                    self.sys.write_file(&own, format!("{c}\n").as_bytes())?;
                    // Over /proc/cmdline too (as LXCFS does over /proc/meminfo), so that
                    // what reads the kernel's command line finds the clone's.
                    self.sys.bind_mount(&own, &self.path("/proc/cmdline"))
                }
                None => Ok(()),
            }
        });
        if written.is_err() {
            say(
                "napalm: warning: could not write /run/napalm/boot.json or cmdline (no /run in the new root?)",
            );
        }
    }

    /// Execs `init=`; returns only the failure.
    fn exec_init(&self, cfg: &BootConfig, init_args: &[String]) -> Failure {
        let end = self.tm.exec_init.unwrap_or_else(uptime);
        say(&format!(
            "napalm: initramfs took {:.3}s (kernel {:.3}s); {} {} ...",
            end - self.t0,
            self.t0,
            crate::identity::HANDOVER,
            cfg.init.display()
        ));
        let err = self.sys.exec(&cfg.init, init_args);
        self.fail("exec init", format!("exec {}: {err}", cfg.init.display()))
    }
}

/// Whether the root's writable layer is a tmpfs: a stateless clone, whose writes vanish at
/// every boot.
fn stateless(root: &RootSpec) -> bool {
    root.upper()
        .ok()
        .flatten()
        .and_then(|i| root.devices.get(i))
        .is_some_and(|d| d.kind == "tmpfs")
}

fn needs_network(cfg: &BootConfig) -> bool {
    cfg.root
        .as_ref()
        .is_some_and(|r| r.devices.iter().any(|d| d.components().contains(&"nfs")))
}

/// Moves /dev /proc /sys /run into the new root, empties the initramfs, moves the new
/// root onto `/` and chroots into it.
pub fn switch_root(sys: &dyn Syscall, newroot: &Path) -> std::io::Result<()> {
    switch_root_under(sys, Path::new("/"), newroot)
}

/// [`switch_root`] with the initramfs at `root` instead of `/`.
fn switch_root_under(sys: &dyn Syscall, root: &Path, newroot: &Path) -> std::io::Result<()> {
    for m in ["dev", "proc", "sys", "run"] {
        let target = newroot.join(m);
        if target.is_dir() {
            sys.mount_move(&root.join(m), &target)?;
        } else {
            sys.umount(&root.join(m))?;
        }
    }
    sys.empty_initramfs(root, newroot)?;
    sys.chdir(newroot)?;
    sys.mount_move(Path::new("."), root)?;
    sys.chroot(Path::new("."))?;
    sys.chdir(Path::new("/"))
}
