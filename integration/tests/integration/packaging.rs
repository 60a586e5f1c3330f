//! Installing Napalm (`packaging/`, `charts/napalm`), checked with the tools operators and
//! distributions use, on the workspace's own binaries:
//!
//! - systemd units: `systemd-analyze security --offline` (exposure at most
//!   [`MAX_EXPOSURE`]), the sysusers.d/tmpfiles.d entries applied to a scratch root, and
//!   `systemd-analyze verify` of the installed units;
//! - Debian packages built by `packaging/build-debs`: fields and contents read back with
//!   `dpkg-deb`, installed with `dpkg -i` on this machine, `napalm-agent --version` and
//!   `napalmctl --help` run from `/usr/bin`, users, tokens and boot-time enablement checked,
//!   then purged (also when an assertion fails) and nothing left behind;
//! - OCI images built by `packaging/build-images` without a daemon: `umoci stat` and
//!   `skopeo inspect`, unpacked, the coordinator run from its image as the image's user and
//!   the agent from its image against this host's libvirtd (its socket bind-mounted as the
//!   chart mounts it), until the agent has registered with the coordinator;
//! - the Helm chart: `charts/validate.py` (strict lint, schema, render and
//!   `kubernetes-validate --strict` for the default values and every `ci/*-values.yaml`),
//!   whose default images are the tags the image build produced.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use napalm_integration::bins;
use napalm_integration::proc::{wait_for, Daemon};
use serde_json::Value;

/// Highest `systemd-analyze security` exposure (0 = locked down, 10 = unprotected) a unit
/// may have.
const MAX_EXPOSURE: f64 = 2.0;

const PACKAGES: [&str; 3] = ["napalm-agent", "napalm-coordinator", "napalmctl"];
const USERS: [&str; 2] = ["napalm-agent", "napalm"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// The workspace version, what packages and image tags carry.
fn version() -> String {
    let toml = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    let section = toml
        .split("[workspace.package]")
        .nth(1)
        .expect("[workspace.package]");
    section
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("a workspace version")
}

/// The directory holding napalm-agent, napalm-coordinator and napalmctl (built if missing).
fn bin_dir() -> PathBuf {
    let agent = bins::agent().unwrap_or_else(|e| panic!("{}", napalm_integration::error_chain(&e)));
    bins::coordinator().unwrap_or_else(|e| panic!("{}", napalm_integration::error_chain(&e)));
    bins::napalmctl().unwrap_or_else(|e| panic!("{}", napalm_integration::error_chain(&e)));
    agent.parent().expect("binary in a directory").to_path_buf()
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd`, which must succeed; its output.
fn run(cmd: &mut Command) -> Output {
    let what = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    assert!(
        out.status.success(),
        "`{what}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

fn json(cmd: &mut Command) -> Value {
    let what = describe(cmd);
    let text = stdout(cmd);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("`{what}` printed no JSON ({e}):\n{text}"))
}

fn user_exists(name: &str) -> bool {
    Command::new("getent")
        .args(["passwd", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", name])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// A free loopback port (bound, read, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

// ---------------------------------------------------------------------------------------
// systemd units and Debian packages
// ---------------------------------------------------------------------------------------

/// The overall exposure `systemd-analyze security --offline` gives `unit`.
fn exposure(unit: &Path) -> f64 {
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
fn check_units_offline(packaging: &Path) {
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
struct Installed {
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

// ---------------------------------------------------------------------------------------
// OCI images
// ---------------------------------------------------------------------------------------

/// One image's config as `skopeo inspect --config` prints it.
struct ImageConfig {
    entrypoint: Vec<String>,
    user: String,
    env: Vec<String>,
}

fn inspect(layout: &Path, version: &str, name: &str) -> ImageConfig {
    let reference = format!("{}:{version}", layout.display());
    let stat = json(Command::new("umoci").args(["stat", "--json", "--image", &reference]));
    let history = stat["history"].as_array().expect("umoci stat history");
    let created_by: Vec<&str> = history
        .iter()
        .filter_map(|h| h["created_by"].as_str())
        .collect();
    println!("umoci stat {name}: {created_by:?}");
    assert!(
        created_by.iter().any(|c| c.contains("base (libraries"))
            && created_by
                .iter()
                .any(|c| c.ends_with(&format!("/usr/bin/{name}"))),
        "{name}: layers are not base + binary: {created_by:?}"
    );
    let oci = format!("oci:{reference}");
    let manifest = json(Command::new("skopeo").args(["inspect", &oci]));
    assert_eq!(manifest["Layers"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        manifest["Labels"]["org.opencontainers.image.version"],
        version
    );
    let config = json(Command::new("skopeo").args(["inspect", "--config", &oci]));
    let c = &config["config"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    ImageConfig {
        entrypoint: strings(&c["Entrypoint"]),
        user: c["User"].as_str().unwrap_or_default().to_owned(),
        env: strings(&c["Env"]),
    }
}

/// Runs an unpacked image's entrypoint with `args` as the image's user and environment
/// (plus `env`), chrooted into its root file system, in a mount namespace of its own
/// where what a container runtime provides (/proc, /dev/null, /dev/urandom...) and `binds`
/// (host path, path in the image) are bind-mounted. Killed on drop.
fn run_image(
    rootfs: &Path,
    config: &ImageConfig,
    args: &[String],
    env: &[(&str, String)],
    binds: &[(&str, &str)],
    log: &Path,
) -> Daemon {
    let mut script = String::new();
    // What an OCI runtime provides every container: /proc and the default devices.
    let runtime = [
        ("/proc", "/proc"),
        ("/dev/null", "/dev/null"),
        ("/dev/zero", "/dev/zero"),
        ("/dev/random", "/dev/random"),
        ("/dev/urandom", "/dev/urandom"),
    ];
    for (host, inside) in runtime.iter().chain(binds) {
        let target = rootfs.join(inside.trim_start_matches('/'));
        if Path::new(host).is_dir() {
            std::fs::create_dir_all(&target).expect("bind target");
        } else {
            std::fs::create_dir_all(target.parent().expect("parent")).expect("bind target");
            std::fs::write(&target, b"").expect("bind target");
        }
        script += &format!("mount --bind {host} {} && ", target.display());
    }
    script += "exec chroot --userspec=\"$IMAGE_USER\" \"$IMAGE_ROOT\" \"$@\"";
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ])
    .args(&config.entrypoint)
    .args(args)
    .env_clear()
    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    .env("IMAGE_USER", &config.user)
    .env("IMAGE_ROOT", rootfs);
    for kv in &config.env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let file = std::fs::File::create(log).expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file);
    Daemon(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", config.entrypoint)),
    )
}

fn unpack(layout: &Path, version: &str, into: &Path) -> PathBuf {
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{version}", layout.display()))
        .arg(into));
    into.join("rootfs")
}

#[test]
fn oci_images_build_inspect_and_run_the_agent_registering_with_the_coordinator() {
    let root = repo_root();
    let version = version();
    let out = tempfile::tempdir().expect("output dir");
    let refs = stdout(
        Command::new(root.join("packaging/build-images"))
            .arg(bin_dir())
            .arg(out.path()),
    );
    for name in ["napalm-coordinator", "napalm-agent"] {
        assert!(
            refs.contains(&format!("oci:{}/{name}:{version}", out.path().display())),
            "{refs}"
        );
    }
    let coordinator = inspect(
        &out.path().join("napalm-coordinator"),
        &version,
        "napalm-coordinator",
    );
    assert_eq!(coordinator.entrypoint, ["/usr/bin/napalm-coordinator"]);
    assert_eq!(
        coordinator.user, "65532:65532",
        "the coordinator runs unprivileged"
    );
    let agent = inspect(&out.path().join("napalm-agent"), &version, "napalm-agent");
    assert_eq!(agent.entrypoint, ["/usr/bin/napalm-agent"]);
    assert_eq!(agent.user, "0:0");

    let coord_root = unpack(
        &out.path().join("napalm-coordinator"),
        &version,
        &out.path().join("coordinator-bundle"),
    );
    let agent_root = unpack(
        &out.path().join("napalm-agent"),
        &version,
        &out.path().join("agent-bundle"),
    );
    for (rootfs, name) in [
        (&coord_root, "napalm-coordinator"),
        (&agent_root, "napalm-agent"),
    ] {
        let v = stdout(
            Command::new("chroot")
                .arg(rootfs)
                .arg(format!("/usr/bin/{name}"))
                .arg("--version"),
        );
        assert_eq!(v.trim(), format!("{name} {version}"));
    }

    // The agent drives this host's libvirtd through its socket, as the chart mounts it.
    run(Command::new(root.join("scripts/services")).arg("start"));
    let grpc = free_port();
    let http = free_port();
    let coord_log = out.path().join("coordinator.log");
    let _coord = run_image(
        &coord_root,
        &coordinator,
        &["--insecure-no-auth".into()],
        &[
            ("NAPALM_LISTEN", format!("127.0.0.1:{grpc}")),
            ("NAPALM_HTTP_LISTEN", format!("127.0.0.1:{http}")),
        ],
        &[],
        &coord_log,
    );
    let grpc_addr: SocketAddr = format!("127.0.0.1:{grpc}").parse().expect("address");
    let up = wait_for(Duration::from_secs(30), || {
        TcpStream::connect_timeout(&grpc_addr, Duration::from_millis(200)).ok()
    });
    assert!(
        up.is_some(),
        "the coordinator from its image does not listen:\n{}",
        std::fs::read_to_string(&coord_log).unwrap_or_default()
    );
    let agent_log = out.path().join("agent.log");
    let mut agent_proc = run_image(
        &agent_root,
        &agent,
        &["--insecure-no-auth".into()],
        &[
            ("NAPALM_HTTP_LISTEN", format!("127.0.0.1:{}", free_port())),
            ("NAPALM_GRPC_LISTEN", format!("127.0.0.1:{}", free_port())),
            ("NAPALM_COORDINATOR", format!("http://{grpc_addr}")),
        ],
        &[("/run/libvirt", "/run/libvirt")],
        &agent_log,
    );
    let napalmctl = bins::napalmctl().expect("napalmctl");
    let registered = wait_for(Duration::from_secs(60), || {
        if let Ok(Some(status)) = agent_proc.0.try_wait() {
            // Exited: nothing will register; the log says why.
            return Some(Err(status));
        }
        let out = Command::new(&napalmctl)
            .args([
                "--coordinator",
                &format!("http://{grpc_addr}"),
                "-o",
                "json",
                "agents",
            ])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let agents = v.as_array().or_else(|| v["agents"].as_array())?;
        (!agents.is_empty()).then(|| Ok(v.to_string()))
    });
    assert!(
        matches!(registered, Some(Ok(_))),
        "the agent from its image did not register with the coordinator from its image\n\
         ({registered:?}) agent:\n{}\ncoordinator:\n{}",
        std::fs::read_to_string(&agent_log).unwrap_or_default(),
        std::fs::read_to_string(&coord_log).unwrap_or_default()
    );
    println!(
        "agent (image, qemu:///system) registered with the coordinator (image): {}",
        registered.and_then(Result::ok).unwrap_or_default()
    );
}

// ---------------------------------------------------------------------------------------
// Helm chart
// ---------------------------------------------------------------------------------------

#[test]
fn helm_chart_lints_strict_renders_and_validates_for_every_values_file() {
    let root = repo_root();
    let out = Command::new("python3")
        .arg(root.join("charts/validate.py"))
        .arg(root.join("charts/napalm"))
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs (scripts/setup installs helm-python-sdk, kubernetes-validate)");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "charts/validate.py failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .expect("a JSON summary last");
    let mut sets: Vec<String> = std::fs::read_dir(root.join("charts/napalm/ci"))
        .expect("charts/napalm/ci")
        .filter_map(|e| e.ok())
        .map(|e| format!("ci/{}", e.file_name().to_string_lossy()))
        .filter(|n| n.ends_with("-values.yaml"))
        .collect();
    sets.push("default".into());
    for set in &sets {
        assert!(summary[set]["kinds"].is_array(), "{set} was not validated");
    }
    // The default values run the images packaging/build-images tags.
    let version = version();
    let images = summary["default"]["images"].to_string();
    for image in ["napalm-agent", "napalm-coordinator"] {
        assert!(
            images.contains(&format!("\"{image}:{version}\"")),
            "{images}"
        );
    }
    let kinds = summary["default"]["kinds"].to_string();
    for kind in [
        "StatefulSet/",
        "DaemonSet/",
        "Service/",
        "Secret/",
        "NetworkPolicy/",
    ] {
        assert!(
            kinds.contains(kind),
            "no {kind} in the default render: {kinds}"
        );
    }
}
