//! The reference system clones share: a small busybox-based root the harness builds once
//! and caches. Its rcS brings the clone up the way a real distribution would (proc, sys,
//! hostname from the clone's layer, `/etc/rc2.d/S*` — where the base set's register hook
//! lives) and, for the tests, serves a shell on TCP 5000 of the private network
//! (`nc -ll -e`), so a test can run commands inside a clone.
//!
//! [`debian_root`] is the other reference: a debootstrapped, systemd-based Debian with the
//! same test shell as a socket-activated unit.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Port of the clones' test shell.
pub const SHELL_PORT: u16 = 5000;

const INITTAB: &str =
    "::sysinit:/etc/init.d/rcS\n::shutdown:/bin/umount -a -r\n::restart:/sbin/init\n";

const RCS: &str = r#"#!/bin/sh
# Reference root rcS (napalm integration): what a minimal distribution does at boot.
# Under TCG every process costs the guest tens of milliseconds, so what napalm-init already
# did (it moves /proc, /sys, /dev and /run into the new root and sets the hostname from
# ip=) is only checked with shell builtins, not done again by another process.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
[ -e /proc/self ] || mount -t proc proc /proc
[ -e /sys/kernel ] || mount -t sysfs sys /sys
[ -e /dev/null ] || mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /run/napalm /var/log /tmp
[ -e /dev/pts/ptmx ] || mount -t devpts devpts /dev/pts 2>/dev/null
[ -s /etc/hostname ] && hostname -F /etc/hostname
ip link set lo up
read up _ < /proc/uptime
read host < /proc/sys/kernel/hostname
echo "napalm-clone: $host up at $up s" > /dev/console
# The tests' way in: a shell per connection, on the private network only. Listening before
# the register hook runs, so a registered clone's shell always answers.
nc -ll -p 5000 -e /bin/sh &
for s in /etc/rc2.d/S*; do
	[ -x "$s" ] && "$s" start > /dev/console 2>&1
done
echo "napalm-clone: $host ready" > /dev/console
"#;

/// Errors building a reference root.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant's #[error] message documents it; the fields are named for what they hold"
)]
pub enum RootError {
    /// A file operation failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// `/bin/busybox` is missing or did not list its applets.
    #[error("cannot read or run /bin/busybox (install busybox-static)")]
    Busybox(#[source] std::io::Error),
    /// A half-built root still has mounts under it (debootstrap's proc, sys): removing it
    /// could reach through them into the host.
    #[error("{} still has mounts under it; not removing it", .dir.display())]
    Mounted { dir: PathBuf },
    /// debootstrap could not be run at all.
    #[error("cannot run debootstrap (install debootstrap)")]
    DebootstrapSpawn(#[source] std::io::Error),
    /// debootstrap ran and failed; the end of its log says why.
    #[error("debootstrap {DEBIAN_SUITE} failed ({status}) after {secs} s; log {}:\n{tail}", .log.display())]
    Debootstrap {
        status: std::process::ExitStatus,
        secs: u64,
        log: PathBuf,
        tail: String,
    },
    /// `systemctl enable` could not be run in the new root.
    #[error("cannot run systemctl enable in the chroot {}", .root.display())]
    Chroot {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `ldd` could not list a program's libraries.
    #[error("ldd {} failed: {stderr}", .program.display())]
    Ldd { program: PathBuf, stderr: String },
    /// `systemctl enable` ran in the new root and failed.
    #[error("systemctl enable {units} failed: {stderr}")]
    Enable { units: String, stderr: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RootError {
    let what = what.into();
    move |source| RootError::Io { what, source }
}

/// Where Debian's ganglia-monitor installs gmond's metric modules (the `ganglia` template
/// set's default `module_dir`).
pub const GMOND_MODULES: &str = "/usr/lib/x86_64-linux-gnu/ganglia";

/// gmond's metric modules (the `*.so` of [`GMOND_MODULES`]): what a root running gmond
/// carries beside `/usr/sbin/gmond` ([`busybox_root_with`]'s `files`).
pub fn gmond_modules() -> Result<Vec<PathBuf>, RootError> {
    let dir = std::fs::read_dir(GMOND_MODULES).map_err(io(format!(
        "reading {GMOND_MODULES} (install ganglia-monitor: scripts/setup does)"
    )))?;
    let mut modules: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "so"))
        .collect();
    modules.sort();
    Ok(modules)
}

/// The busybox root with host programs added, cached beside it as `NAME-root-HASH`: each
/// of `programs` (absolute paths) with the libraries `ldd` names, and `files` as they are
/// (data a program needs), at the same paths.
pub fn busybox_root_with(
    cache: &Path,
    name: &str,
    programs: &[&Path],
    files: &[&Path],
) -> Result<PathBuf, RootError> {
    let busybox = busybox_root(cache)?;
    let mut copy: Vec<PathBuf> = files.iter().map(|f| f.to_path_buf()).collect();
    for p in programs {
        let out = Command::new("ldd")
            .arg(p)
            .output()
            .map_err(io(format!("running ldd {}", p.display())))?;
        if !out.status.success() {
            return Err(RootError::Ldd {
                program: p.to_path_buf(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        copy.push(p.to_path_buf());
        copy.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter(|w| w.starts_with('/'))
                .map(PathBuf::from),
        );
    }
    copy.sort();
    copy.dedup();
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        busybox.hash(&mut h);
        for f in &copy {
            f.hash(&mut h);
            std::fs::read(f)
                .map_err(io(format!("reading {}", f.display())))?
                .hash(&mut h);
        }
        h.finish()
    };
    let root = cache.join(format!("{name}-root-{key:016x}"));
    if root.join(".complete").exists() {
        return Ok(root);
    }
    let tmp = cache.join(format!(".{name}-root-{key:016x}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let status = Command::new("cp")
        .arg("-a")
        .arg(&busybox)
        .arg(&tmp)
        .status()
        .map_err(io("running cp -a"))?;
    if !status.success() {
        return Err(RootError::Io {
            what: format!("cp -a {} {}", busybox.display(), tmp.display()),
            source: std::io::Error::other(status.to_string()),
        });
    }
    let _ = std::fs::remove_file(tmp.join(".complete"));
    for f in &copy {
        let rel = f.strip_prefix("/").unwrap_or(f);
        let dst = tmp.join(rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("mkdir {}", parent.display())))?;
        }
        std::fs::copy(f, &dst).map_err(io(format!("copying {}", f.display())))?;
    }
    std::fs::write(tmp.join(".complete"), "").map_err(io("writing .complete"))?;
    std::fs::rename(&tmp, &root).map_err(io(format!("renaming {}", tmp.display())))?;
    Ok(root)
}

/// The cached reference root under `cache` (built if missing or outdated).
pub fn busybox_root(cache: &Path) -> Result<PathBuf, RootError> {
    let busybox = Path::new("/bin/busybox");
    let bb = std::fs::read(busybox).map_err(RootError::Busybox)?;
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bb.hash(&mut h);
        INITTAB.hash(&mut h);
        RCS.hash(&mut h);
        h.finish()
    };
    let root = cache.join(format!("busybox-root-{key:016x}"));
    if root.join(".complete").exists() {
        return Ok(root);
    }
    let tmp = cache.join(format!(".busybox-root-{key:016x}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc/init.d",
        "etc/rc2.d",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "var/log",
        "var/tmp",
        "root",
        "home",
        "mnt",
    ] {
        std::fs::create_dir_all(tmp.join(d)).map_err(io(format!("mkdir {d}")))?;
    }
    std::fs::write(tmp.join("bin/busybox"), &bb).map_err(io("copy busybox"))?;
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(RootError::Busybox)?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let link = tmp.join(applet);
        if applet.is_empty() || link.exists() || applet == "bin/busybox" {
            continue;
        }
        std::os::unix::fs::symlink("/bin/busybox", &link).map_err(io(format!("link {applet}")))?;
    }
    for (path, body, mode) in [
        ("etc/inittab", INITTAB, 0o644),
        ("etc/init.d/rcS", RCS, 0o755),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
        ("etc/group", "root:x:0:\n", 0o644),
        ("etc/hostname", "reference\n", 0o644),
        ("etc/motd", "napalm reference root (busybox)\n", 0o644),
    ] {
        let p = tmp.join(path);
        std::fs::write(&p, body).map_err(io(format!("write {path}")))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(io(format!("chmod {path}")))?;
    }
    for (d, mode) in [("bin/busybox", 0o755), ("tmp", 0o1777), ("var/tmp", 0o1777)] {
        std::fs::set_permissions(tmp.join(d), std::fs::Permissions::from_mode(mode))
            .map_err(io(format!("chmod {d}")))?;
    }
    std::fs::write(tmp.join(".complete"), b"").map_err(io("mark complete"))?;
    match std::fs::rename(&tmp, &root) {
        Ok(()) => Ok(root),
        // Another process built it meanwhile.
        Err(_) if root.join(".complete").exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(root)
        }
        Err(e) => Err(io("rename root")(e)),
    }
}

/// Debian suite of [`debian_root`].
pub const DEBIAN_SUITE: &str = "bookworm";
/// Where [`debian_root`] downloads from.
pub const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
/// What [`debian_root`] adds to debootstrap's `minbase` (required packages only): systemd
/// as init with udev and D-Bus (logind, hostnamed), `ip` for the register hook, `ping`
/// for the tests and GNU wget for the register hook's POST.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    "iproute2",
    "iputils-ping",
    "wget",
];
/// Bound on one debootstrap run (downloads included).
const DEBOOTSTRAP_TIMEOUT_S: u64 = 1200;

/// The test shell: systemd listens on TCP 5000 and runs `/bin/sh` per connection (stdin
/// and stdout are the socket), like the busybox root's `nc -ll -e /bin/sh`.
const SHELL_SOCKET: &str = "[Unit]
Description=Napalm integration test shell (TCP 5000, one /bin/sh per connection)

[Socket]
ListenStream=5000
Accept=yes

[Install]
WantedBy=sockets.target
";

/// `KillMode=process`: what a test starts in the background (`(sleep 1; reboot -f) &`)
/// outlives the connection, as with `nc -e`. `-/bin/sh`: a script's last exit status
/// is the test's business, not a failed unit (which would make the system "degraded").
const SHELL_SERVICE: &str = "[Unit]
Description=Napalm integration test shell session

[Service]
ExecStart=-/bin/sh
StandardInput=socket
StandardOutput=socket
StandardError=socket
KillMode=process
";

/// Files [`debian_root`] writes after debootstrap (path, body, mode); part of the cache key.
const DEBIAN_FILES: &[(&str, &str, u32)] = &[
    (
        "etc/systemd/system/napalm-test-shell.socket",
        SHELL_SOCKET,
        0o644,
    ),
    (
        "etc/systemd/system/napalm-test-shell@.service",
        SHELL_SERVICE,
        0o644,
    ),
    ("etc/hostname", "reference\n", 0o644),
    (
        "etc/motd",
        "napalm reference root (Debian bookworm, systemd)\n",
        0o644,
    ),
    // A shared root carries no identity: every clone's layer brings its own machine-id
    // (systemd mounts a transient one when a root has none).
    ("etc/machine-id", "", 0o444),
];

/// Symlinks (path, target) [`debian_root`] makes; part of the cache key.
const DEBIAN_LINKS: &[(&str, &str)] = &[
    // napalm-init configured eth0 (ip=) before switch_root, and the NFS root runs over it:
    // udev must not try to rename it to a predictable name (it is up; renames fail).
    ("etc/systemd/network/99-default.link", "/dev/null"),
    // Whatever napalm-init learnt (ip=… DNS fields) rather than the build host's.
    ("etc/resolv.conf", "../run/napalm/resolv.conf"),
    // D-Bus prefers its own id file: make it the clone's machine-id, not one for all.
    ("var/lib/dbus/machine-id", "/etc/machine-id"),
];

/// Directories [`debian_root`] empties (contents only); part of the cache key.
const DEBIAN_PRUNE: &[&str] = &[
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
];

/// Units enabled in the root: networkd (applies the base set's `10-napalm.network`,
/// `KeepConfiguration=yes`, so the link napalm-init configured is kept) and the test shell.
const DEBIAN_ENABLE: &[&str] = &["systemd-networkd.service", "napalm-test-shell.socket"];

/// Unmounts (lazily) whatever is mounted at or under `dir` (what an interrupted
/// debootstrap may leave: proc, sys); true when nothing is left mounted there.
fn unmount_under(dir: &Path) -> bool {
    let mounted = || -> Vec<PathBuf> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut v: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| PathBuf::from(p.replace("\\040", " ")))
            .filter(|p| p.starts_with(dir))
            .collect();
        // Deepest first.
        v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        v
    };
    for m in mounted() {
        if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
            // SAFETY: a plain syscall on a NUL-terminated path we own.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    mounted().is_empty()
}

/// Removes a half-built root, never through a mount point (debootstrap mounts /proc and
/// /sys in its target; a device bind mount would lead into the host's /dev).
fn remove_partial(dir: &Path) -> Result<(), RootError> {
    if !dir.exists() {
        return Ok(());
    }
    if !unmount_under(dir) {
        return Err(RootError::Mounted {
            dir: dir.to_path_buf(),
        });
    }
    std::fs::remove_dir_all(dir).map_err(io(format!("removing {}", dir.display())))
}

/// The cached systemd-based Debian reference root under `cache` (`debootstrap
/// --variant=minbase` of [`DEBIAN_SUITE`] plus [`DEBIAN_PACKAGES`]), built if missing.
///
/// Built in a temporary directory and renamed when complete, keyed by the suite, the
/// package list and the files added, so a second call is instant. Downloaded packages are
/// kept in `cache/debootstrap-debs` for the next rebuild. What it adds for the clones:
/// the test shell as `napalm-test-shell.socket` (port [`SHELL_PORT`], `Accept=yes`,
/// `/bin/sh` per connection), systemd-networkd enabled for the base set's
/// `10-napalm.network` (`KeepConfiguration=yes`: the address napalm-init set from `ip=`
/// stays), no predictable interface renaming, no machine-id of its own. The clone's layer
/// supplies hostname, hosts, machine-id and `napalm-register-clone.service`.
///
/// napalm-init moves its `/run` (with `/run/napalm/boot.json`) into the new root before
/// `switch_root`; systemd keeps an already mounted `/run`, so the file stays visible.
pub fn debian_root(cache: &Path) -> Result<PathBuf, RootError> {
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        DEBIAN_SUITE.hash(&mut h);
        DEBIAN_PACKAGES.hash(&mut h);
        DEBIAN_FILES.hash(&mut h);
        DEBIAN_LINKS.hash(&mut h);
        DEBIAN_ENABLE.hash(&mut h);
        DEBIAN_PRUNE.hash(&mut h);
        h.finish()
    };
    let root = cache.join(format!("debian-root-{key:016x}"));
    if root.join(".complete").exists() {
        return Ok(root);
    }
    std::fs::create_dir_all(cache).map_err(io("creating the cache"))?;
    let debs = cache.join("debootstrap-debs");
    std::fs::create_dir_all(&debs).map_err(io("creating the package cache"))?;
    let tmp = cache.join(format!(".debian-root-{key:016x}.{}", std::process::id()));
    remove_partial(&tmp)?;
    let log = cache.join(format!(".debian-root-{key:016x}.log"));
    let logf = std::fs::File::create(&log).map_err(io("creating the debootstrap log"))?;
    let started = std::time::Instant::now();
    let status = Command::new("timeout")
        .args(["--kill-after=30", &DEBOOTSTRAP_TIMEOUT_S.to_string()])
        .arg("debootstrap")
        .args(["--variant=minbase", "--merged-usr"])
        .arg(format!("--include={}", DEBIAN_PACKAGES.join(",")))
        .arg(format!(
            "--cache-dir={}",
            std::path::absolute(&debs)
                .map_err(io("package cache path"))?
                .display()
        ))
        .arg(DEBIAN_SUITE)
        .arg(&tmp)
        .arg(DEBIAN_MIRROR)
        .stdin(std::process::Stdio::null())
        .stdout(logf.try_clone().map_err(io("debootstrap log"))?)
        .stderr(logf)
        .status()
        .map_err(RootError::DebootstrapSpawn)?;
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let _ = remove_partial(&tmp);
        return Err(RootError::Debootstrap {
            status,
            secs: started.elapsed().as_secs(),
            log,
            tail: tail.join("\n"),
        });
    }
    eprintln!(
        "debian_root: debootstrap {DEBIAN_SUITE} took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if !unmount_under(&tmp) {
        return Err(RootError::Mounted { dir: tmp });
    }
    customize_debian(&tmp).inspect_err(|_| {
        let _ = remove_partial(&tmp);
    })?;
    std::fs::write(tmp.join(".complete"), b"").map_err(io("mark complete"))?;
    match std::fs::rename(&tmp, &root) {
        Ok(()) => Ok(root),
        // Another process built it meanwhile.
        Err(_) if root.join(".complete").exists() => {
            let _ = remove_partial(&tmp);
            Ok(root)
        }
        Err(e) => Err(io("rename root")(e)),
    }
}

/// What the clones need on top of debootstrap's result.
fn customize_debian(tmp: &Path) -> Result<(), RootError> {
    for (path, body, mode) in DEBIAN_FILES {
        let p = tmp.join(path);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(io(format!("mkdir for {path}")))?;
        }
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, body).map_err(io(format!("write {path}")))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))
            .map_err(io(format!("chmod {path}")))?;
    }
    for (path, target) in DEBIAN_LINKS {
        let p = tmp.join(path);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(io(format!("mkdir for {path}")))?;
        }
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(target, &p).map_err(io(format!("link {path}")))?;
    }
    // systemctl works offline in a chroot: it only writes the [Install] symlinks.
    let out = Command::new("chroot")
        .arg(tmp)
        .args(["systemctl", "enable"])
        .args(DEBIAN_ENABLE)
        .output()
        .map_err(|source| RootError::Chroot {
            root: tmp.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(RootError::Enable {
            units: DEBIAN_ENABLE.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    // Not needed at run time (about half the size): the downloaded packages (kept in the
    // cache's debootstrap-debs), debootstrap's package lists, documentation, translations.
    for d in DEBIAN_PRUNE {
        let Ok(rd) = std::fs::read_dir(tmp.join(d)) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let _ = if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
    for (d, mode) in [("tmp", 0o1777), ("var/tmp", 0o1777)] {
        std::fs::set_permissions(tmp.join(d), std::fs::Permissions::from_mode(mode))
            .map_err(io(format!("chmod {d}")))?;
    }
    Ok(())
}
