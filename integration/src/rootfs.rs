//! The reference system clones share: a small busybox-based root the harness builds once
//! and caches. Its rcS brings the clone up the way a real distribution would (proc, sys,
//! hostname from the clone's layer, `/etc/rc2.d/S*` — where the base set's register hook
//! lives) and, for the tests, serves a shell on TCP 5000 of the private network
//! (`nc -ll -e`), so a test can run commands inside a clone.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Port of the clones' test shell.
pub const SHELL_PORT: u16 = 5000;

const INITTAB: &str =
    "::sysinit:/etc/init.d/rcS\n::shutdown:/bin/umount -a -r\n::restart:/sbin/init\n";

const RCS: &str = r#"#!/bin/sh
# Reference root rcS (napalm integration): what a minimal distribution does at boot.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /run/napalm /var/log /tmp
mount -t devpts devpts /dev/pts 2>/dev/null
[ -s /etc/hostname ] && hostname -F /etc/hostname
ip link set lo up
echo "napalm-clone: $(hostname) up at $(cut -d' ' -f1 /proc/uptime) s" > /dev/console
for s in /etc/rc2.d/S*; do
	[ -x "$s" ] && "$s" start > /dev/console 2>&1
done
echo "napalm-clone: $(hostname) ready" > /dev/console
# The tests' way in: a shell per connection, on the private network only.
nc -ll -p 5000 -e /bin/sh &
"#;

/// Errors building the root.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// busybox is missing or did not list its applets.
    #[error("busybox: {0} (install busybox-static)")]
    Busybox(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RootError {
    let what = what.into();
    move |source| RootError::Io { what, source }
}

/// The cached reference root under `cache` (built if missing or outdated).
pub fn busybox_root(cache: &Path) -> Result<PathBuf, RootError> {
    let busybox = Path::new("/bin/busybox");
    let bb = std::fs::read(busybox).map_err(|e| RootError::Busybox(e.to_string()))?;
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
        .map_err(|e| RootError::Busybox(e.to_string()))?;
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
