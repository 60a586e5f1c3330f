//! systemd units verified and the Debian packages installed, run and purged.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::repo_root;

/// The overall exposure `systemd-analyze security --offline` gives `unit`.
pub(crate) fn exposure(unit: &Path) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .expect("systemd-analyze runs (scripts/setup installs systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level for {}:\n{text}{}",
                unit.display(),
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// The units are hardened, and their users and directories come out right when
/// sysusers.d/tmpfiles.d are applied to a scratch root (nothing on this machine changes).
pub(crate) fn check_units_offline(packaging: &Path) {
    for unit in ["napalm-agent.service", "napalm-coordinator.service"] {
        let level = exposure(&packaging.join("systemd").join(unit));
        println!("{unit}: systemd-analyze security exposure {level}");
        assert!(
            level <= MAX_EXPOSURE,
            "{unit}: exposure {level} > {MAX_EXPOSURE}"
        );
    }
    let root = tempfile::tempdir().expect("scratch root");
    std::fs::create_dir_all(root.path().join("etc")).expect("etc");
    run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(packaging.join("sysusers.d/napalm-agent.conf"))
        .arg(packaging.join("sysusers.d/napalm-coordinator.conf")));
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).expect("passwd");
    let group = std::fs::read_to_string(root.path().join("etc/group")).expect("group");
    for user in USERS {
        assert!(
            passwd.lines().any(|l| l.starts_with(&format!("{user}:"))),
            "sysusers made no user {user}:\n{passwd}"
        );
    }
    assert!(
        group
            .lines()
            .any(|l| l.starts_with("libvirt:") && l.ends_with("napalm-agent")),
        "napalm-agent is not in group libvirt:\n{group}"
    );
    run(Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", root.path().display()))
        .arg("--create")
        .arg(packaging.join("tmpfiles.d/napalm-coordinator.conf")));
    let state = std::fs::metadata(root.path().join("srv/napalm/state")).expect("state dir");
    let napalm_uid: u32 = passwd
        .lines()
        .find_map(|l| l.strip_prefix("napalm:x:"))
        .and_then(|l| l.split(':').next())
        .and_then(|u| u.parse().ok())
        .expect("napalm's uid");
    assert_eq!(state.uid(), napalm_uid, "/srv/napalm/state is not napalm's");
    assert_eq!(state.mode() & 0o777, 0o750);
}

/// Purges the packages and deletes the users the install created, when dropped: the
/// machine is left as it was, also when an assertion failed.
pub(crate) struct Installed {
    users_before: Vec<&'static str>,
}

impl Installed {
    fn purge(&self) -> Output {
        let out = Command::new("dpkg")
            .arg("--purge")
            .args(PACKAGES)
            .stdin(Stdio::null())
            .output()
            .expect("dpkg runs");
        for user in USERS {
            if !self.users_before.contains(&user) && user_exists(user) {
                let _ = Command::new("userdel").arg(user).status();
            }
        }
        out
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        self.purge();
    }
}

#[test]
fn units_verify_and_debian_packages_install_run_and_purge() {
    let root = repo_root();
    let packaging = root.join("packaging");
    check_units_offline(&packaging);

    let out = tempfile::tempdir().expect("output dir");
    let debs: Vec<PathBuf> = stdout(
        Command::new(packaging.join("build-debs"))
            .arg(bin_dir())
            .arg(out.path()),
    )
    .lines()
    .map(PathBuf::from)
    .collect();
    let version = version();
    assert_eq!(debs.len(), 3, "three packages: {debs:?}");
    for (deb, pkg) in debs.iter().zip(PACKAGES) {
        let fields = stdout(
            Command::new("dpkg-deb")
                .args(["--field"])
                .arg(deb)
                .args(["Package", "Version", "Depends"]),
        );
        println!("{}:\n{fields}", deb.display());
        assert!(fields.contains(&format!("Package: {pkg}\n")), "{fields}");
        assert!(
            fields.contains(&format!("Version: {version}\n")),
            "{fields}"
        );
        assert!(
            fields.contains("libc6"),
            "{pkg} Depends lacks libc6: {fields}"
        );
        assert_eq!(
            fields.contains("libvirt0"),
            pkg == "napalm-agent",
            "only the agent links libvirt: {fields}"
        );
        let contents = stdout(Command::new("dpkg-deb").arg("--contents").arg(deb));
        let bin = if pkg == "napalmctl" { "napalmctl" } else { pkg };
        assert!(
            contents.contains(&format!("./usr/bin/{bin}\n")),
            "{contents}"
        );
        assert!(contents.contains(&format!("./usr/share/doc/{pkg}/copyright\n")));
        if pkg != "napalmctl" {
            for path in [
                format!("./lib/systemd/system/{pkg}.service"),
                format!("./usr/lib/sysusers.d/{pkg}.conf"),
                format!("./etc/default/{pkg}"),
            ] {
                assert!(
                    contents.contains(&format!("{path}\n")),
                    "{pkg} lacks {path}"
                );
            }
        }
    }

    // Installing changes the machine's packages: not while host_setup compares them.
    let _dpkg = crate::DPKG.lock().unwrap_or_else(|p| p.into_inner());
    let installed = Installed {
        users_before: USERS.into_iter().filter(|u| user_exists(u)).collect(),
    };
    if PACKAGES.iter().any(|p| package_installed(p)) {
        // Left by a run that was killed before it could clean up.
        installed.purge();
    }
    let log = stdout(Command::new("dpkg").arg("-i").args(&debs));
    println!("{log}");

    let v = stdout(Command::new("/usr/bin/napalm-agent").arg("--version"));
    assert_eq!(v.trim(), format!("napalm-agent {version}"));
    let help = stdout(Command::new("/usr/bin/napalmctl").arg("--help"));
    assert!(help.contains("Usage: napalmctl"), "{help}");
    let v = stdout(Command::new("/usr/bin/napalm-coordinator").arg("--version"));
    assert_eq!(v.trim(), format!("napalm-coordinator {version}"));

    // What the maintainer scripts did: users (the agent in libvirt), root-only random
    // tokens, the coordinator's state directory, units enabled at boot.
    let groups = stdout(Command::new("id").args(["-nG", "napalm-agent"]));
    assert!(
        groups.split_whitespace().any(|g| g == "libvirt"),
        "napalm-agent not in libvirt: {groups}"
    );
    assert!(user_exists("napalm"));
    for token in ["/etc/napalm/agent-token", "/etc/napalm/api-token"] {
        let meta = std::fs::metadata(token).unwrap_or_else(|e| panic!("{token}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{token} mode");
        assert_eq!(meta.uid(), 0, "{token} owner");
        let t = std::fs::read_to_string(token).expect("token");
        assert_eq!(t.len(), 64, "{token} is not 32 random bytes in hex: {t:?}");
    }
    assert!(Path::new("/srv/napalm/state").is_dir());
    for unit in ["napalm-agent.service", "napalm-coordinator.service"] {
        let wants = Path::new("/etc/systemd/system/multi-user.target.wants").join(unit);
        assert!(
            wants.is_symlink(),
            "{unit} is not enabled at boot ({} missing)",
            wants.display()
        );
    }
    // systemd-analyze verify needs the ExecStart binaries where the units say: installed.
    let verify = run(Command::new("systemd-analyze")
        .args(["verify", "--no-pager"])
        .arg("/lib/systemd/system/napalm-agent.service")
        .arg("/lib/systemd/system/napalm-coordinator.service"));
    let warnings = String::from_utf8_lossy(&verify.stderr);
    assert!(
        warnings.trim().is_empty(),
        "systemd-analyze verify warns:\n{warnings}"
    );
    println!("systemd-analyze verify: both units clean");

    let purge = installed.purge();
    assert!(
        purge.status.success(),
        "dpkg --purge failed:\n{}",
        String::from_utf8_lossy(&purge.stderr)
    );
    for p in PACKAGES {
        assert!(!package_installed(p), "{p} still installed");
    }
    for left in [
        "/usr/bin/napalm-agent",
        "/usr/bin/napalmctl",
        "/etc/napalm",
        "/etc/default/napalm-agent",
        "/srv/napalm",
        "/etc/systemd/system/multi-user.target.wants/napalm-agent.service",
        "/etc/systemd/system/napalm-agent.service",
    ] {
        assert!(!Path::new(left).exists(), "{left} left after purge");
    }
}
