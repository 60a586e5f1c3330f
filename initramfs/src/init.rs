//! The PID 1 flow of napalm-init: early mounts, command line, modules, network, the union
//! root, `unpack=`, boot timings, then switch_root semantics (empty the initramfs, move the
//! new root onto `/`, chroot, exec `init=`). Any failure stops with a message naming the
//! step and its input, then does what `napalm.onfail=` says.

use crate::cmdline::{onfail_lenient, BootConfig, OnFail};
use crate::fsloader::{self, MountCtx};
use crate::ip::IpConfig;
use crate::modules;
use crate::net::{self, NetState};
use crate::syscall::{Shutdown, Syscall};
use crate::timings::{uptime, Timings};
use crate::union;
use crate::unpack;
use serde::Serialize;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the new root is assembled.
pub const NEWROOT: &str = "/rootfs";

/// A failed boot step: what was being done and why it failed.
#[derive(Debug)]
pub struct Failure {
    /// The step (`cmdline`, `modules`, `network`, `root`, `unpack`, `switch_root`).
    pub step: &'static str,
    /// The error, quoting its input.
    pub error: String,
    /// What to do now.
    pub onfail: OnFail,
}

/// Prints a line on the console (stdout of PID 1 is /dev/console).
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[derive(Serialize)]
struct BootReport<'a> {
    root: Option<String>,
    participants: &'a [(String, String)],
    overlay_options: &'a str,
    network: Option<NetReport>,
    timings: &'a Timings,
}

#[derive(Serialize)]
struct NetReport {
    iface: String,
    addr: String,
    method: &'static str,
    gateway: Option<String>,
    dns: Vec<String>,
    hostname: Option<String>,
}

fn net_report(n: &NetState) -> NetReport {
    NetReport {
        iface: n.iface.clone(),
        addr: n.addr.to_string(),
        method: n.method,
        gateway: n.gateway.map(|g| g.to_string()),
        dns: n.dns.iter().map(|d| d.to_string()).collect(),
        hostname: n.hostname.clone(),
    }
}

fn early_mounts(sys: &dyn Syscall) -> std::io::Result<()> {
    for (src, dir, fstype, data) in [
        ("proc", "/proc", "proc", ""),
        ("sysfs", "/sys", "sysfs", ""),
        ("devtmpfs", "/dev", "devtmpfs", "mode=0755"),
        ("tmpfs", "/run", "tmpfs", "mode=0755"),
    ] {
        sys.mkdir_all(Path::new(dir))?;
        match sys.mount(src, Path::new(dir), fstype, false, data) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            r => r.map_err(|e| {
                std::io::Error::new(e.kind(), format!("mount -t {fstype} {src} {dir}: {e}"))
            })?,
        }
    }
    Ok(())
}

fn needs_network(cfg: &BootConfig) -> bool {
    cfg.root
        .as_ref()
        .is_some_and(|r| r.devices.iter().any(|d| d.components().contains(&"nfs")))
}

/// Runs the whole boot; returns only on failure (success execs the real init with
/// `init_args`, the words the kernel passed to us, e.g. `single`).
pub fn run(sys: &dyn Syscall, cmdline: &Path, init_args: &[String]) -> Failure {
    let mut onfail = OnFail::Halt;
    let fail = |step: &'static str, error: String, onfail: OnFail| Failure {
        step,
        error,
        onfail,
    };
    let t0 = uptime();
    let mut tm = Timings::new(t0);
    say(&format!(
        "napalm-init: starting at {t0:.3}s after kernel start"
    ));
    if let Err(e) = early_mounts(sys) {
        return fail("early mounts", e.to_string(), onfail);
    }
    let cfg = match BootConfig::from_cmdline(cmdline) {
        Ok(c) => c,
        Err(e) => {
            let raw = std::fs::read_to_string(cmdline).unwrap_or_default();
            return fail("cmdline", e.to_string(), onfail_lenient(&raw));
        }
    };
    onfail = cfg.onfail;
    if cfg.help {
        say(&fsloader::help_text());
    }
    let Some(root) = cfg.root.clone() else {
        return fail(
            "cmdline",
            "no root= on the kernel command line (e.g. root=nfs:10.0.2.100::ro;tmpfs:rw; napalm.help lists the types)".into(),
            onfail,
        );
    };
    if let Err(e) = union::validate(&root) {
        return fail("root", e.to_string(), onfail);
    }
    // Modules, dependencies first (the builder wrote the order).
    let s = uptime();
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let mut wanted = fsloader::modules_for(&root);
    if cfg.ip != IpConfig::Off {
        wanted.extend(["virtio_pci", "virtio_net", "xen_netfront"]);
    }
    match modules::load_needed(sys, &Path::new("/lib/modules").join(&release), &wanted) {
        Ok(n) => {
            say(&tm.record(&format!("modules: {} loaded", n.len()), s, uptime()));
            let mut slow: Vec<&(String, f64)> = n.iter().filter(|m| m.1 > 0.05).collect();
            slow.sort_by(|a, b| b.1.total_cmp(&a.1));
            for (m, t) in slow {
                say(&format!("napalm:   {t:.3}s {}", modules::module_name(m)));
            }
        }
        Err(e) => return fail("modules", e.to_string(), onfail),
    }
    // Network: as ip= says, DHCP by default when a layer is on NFS.
    let timeout = Duration::from_secs(cfg.timeout_secs);
    let mut ipcfg = cfg.ip.clone();
    if ipcfg == IpConfig::Off && needs_network(&cfg) {
        ipcfg = IpConfig::Dhcp {
            device: None,
            hostname: None,
        };
    }
    let s = uptime();
    let netstate = match net::configure(&ipcfg, &cfg.nameservers, timeout) {
        Ok(n) => n,
        Err(e) => return fail("network", format!("{e} (ip={ipcfg:?})"), onfail),
    };
    if let Some(n) = &netstate {
        let gw = n.gateway.map(|g| format!(", gw {g}")).unwrap_or_default();
        say(&tm.record(
            &format!("network: {} {} ({}{gw})", n.iface, n.addr, n.method),
            s,
            uptime(),
        ));
        if let Some(h) = &n.hostname {
            // As the kernel's own ip= does; the clone's layer may set it again later.
            if let Err(e) = rustix::system::sethostname(h.as_bytes()) {
                say(&format!("napalm: warning: sethostname({h}): {e}"));
            }
        }
        let _ = std::fs::create_dir_all("/run/napalm");
        if let Err(e) = std::fs::write("/run/napalm/resolv.conf", net::resolv_conf(&n.dns)) {
            return fail(
                "network",
                format!("writing /run/napalm/resolv.conf: {e}"),
                onfail,
            );
        }
    }
    // The union root.
    let s = uptime();
    let mut ctx = MountCtx::new(sys, Path::new("/"), timeout);
    ctx.client_ip = netstate.as_ref().map(|n| n.addr);
    let assembled = union::assemble(&mut ctx, &root, Path::new(NEWROOT));
    for p in &ctx.phases {
        say(&tm.record(&format!("mount {}", p.0), p.1, p.2));
    }
    for l in &ctx.log {
        say(&format!("napalm:   {l}"));
    }
    let assembled = match assembled {
        Ok(a) => a,
        Err(e) => return fail("root", e.to_string(), onfail),
    };
    say(&tm.record("union root assembled", s, uptime()));
    for (desc, at) in &assembled.participants {
        say(&format!("napalm:   {at}  {desc}"));
    }
    let s = uptime();
    match unpack::unpack_all(Path::new(NEWROOT), &cfg.unpack, assembled.writable) {
        Ok(done) if done.is_empty() => {}
        Ok(done) => {
            for (a, n) in &done {
                say(&format!("napalm:   unpacked {} ({n} entries)", a.display()));
            }
            say(&tm.record("unpack", s, uptime()));
        }
        Err(e) => return fail("unpack", e.to_string(), onfail),
    }
    // switch_root.
    let s = uptime();
    let init = cfg.init.clone();
    let in_new = Path::new(NEWROOT).join(init.strip_prefix("/").unwrap_or(&init));
    if in_new.symlink_metadata().is_err() {
        return fail(
            "switch_root",
            format!("init={} does not exist in the new root", init.display()),
            onfail,
        );
    }
    if let Err(e) = switch_root(sys, Path::new(NEWROOT)) {
        return fail("switch_root", e.to_string(), onfail);
    }
    let end = uptime();
    say(&tm.record("switch_root", s, end));
    tm.exec_init = Some(end);
    let report = BootReport {
        root: Some(
            root.devices
                .iter()
                .map(|d| d.display())
                .collect::<Vec<_>>()
                .join(";"),
        ),
        participants: &assembled.participants,
        overlay_options: &assembled.overlay_options,
        network: netstate.as_ref().map(net_report),
        timings: &tm,
    };
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    if std::fs::create_dir_all("/run/napalm")
        .and_then(|_| std::fs::write("/run/napalm/boot.json", json))
        .is_err()
    {
        say("napalm: warning: could not write /run/napalm/boot.json (no /run in the new root?)");
    }
    say(&format!(
        "napalm: initramfs took {:.3}s (kernel {:.3}s); transferring control to {} ...",
        end - t0,
        t0,
        init.display()
    ));
    let err = sys.exec(&init, init_args);
    fail(
        "exec init",
        format!("exec {}: {err}", init.display()),
        onfail,
    )
}

/// Moves /dev /proc /sys /run into the new root, empties the initramfs, moves the new
/// root onto `/` and chroots into it.
pub fn switch_root(sys: &dyn Syscall, newroot: &Path) -> std::io::Result<()> {
    for m in ["/dev", "/proc", "/sys", "/run"] {
        let target = newroot.join(m.trim_start_matches('/'));
        if target.is_dir() {
            sys.mount_move(Path::new(m), &target)?;
        } else {
            sys.umount(Path::new(m))?;
        }
    }
    // Like switch_root(8): only ever empty an initramfs (ramfs or tmpfs), never a disk.
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let fs_type = rustix::fs::statfs("/")?.f_type as i64;
    if fs_type != RAMFS_MAGIC && fs_type != TMPFS_MAGIC {
        return Err(std::io::Error::other(format!(
            "/ is not an initramfs (filesystem magic {fs_type:#x}); refusing to empty it"
        )));
    }
    let root_dev = std::fs::metadata("/")?.dev();
    sys.chdir(newroot)?;
    empty_dir_same_dev(Path::new("/"), root_dev, newroot);
    sys.mount_move(Path::new("."), Path::new("/"))?;
    sys.chroot(Path::new("."))?;
    sys.chdir(Path::new("/"))
}

/// Deletes everything under `dir` that lives on device `dev` (the initramfs), not crossing
/// into other mounts and skipping `keep`. Best effort: what cannot go only wastes memory.
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

/// Reports a failure on the console and does what `napalm.onfail=` says. As PID 1 it
/// never returns; otherwise it returns so the caller can exit non-zero.
pub fn handle_failure(sys: &dyn Syscall, f: &Failure) {
    say(&format!(
        "napalm-init: FAILED at step '{}': {}",
        f.step, f.error
    ));
    let pid1 = rustix::process::getpid().is_init();
    let mut action = f.onfail;
    if action == OnFail::Shell {
        if Path::new("/bin/sh").exists() {
            say("napalm-init: napalm.onfail=shell: starting /bin/sh; leave it to power off");
            if pid1 {
                let _ = std::process::Command::new("/bin/sh").status();
            }
        } else {
            say("napalm-init: napalm.onfail=shell but this initramfs has no /bin/sh (build with --busybox); halting");
        }
        action = OnFail::Halt;
    }
    let how = if action == OnFail::Reboot {
        Shutdown::Reboot
    } else {
        Shutdown::PowerOff
    };
    say(&format!(
        "napalm-init: {} now",
        if how == Shutdown::Reboot {
            "rebooting"
        } else {
            "powering off"
        }
    ));
    if !pid1 {
        return;
    }
    if let Err(e) = sys.shutdown(how) {
        say(&format!(
            "napalm-init: reboot(2) failed: {e}; sleeping forever"
        ));
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
