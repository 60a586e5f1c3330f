//! OCI images built without a daemon, inspected, and run.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use napalm_integration::bins;
use napalm_integration::proc::{wait_for, Daemon};
use serde_json::Value;

use super::*;
use crate::repo_root;

/// One image's config as `skopeo inspect --config` prints it.
pub(crate) struct ImageConfig {
    entrypoint: Vec<String>,
    user: String,
    env: Vec<String>,
}

pub(crate) fn inspect(layout: &Path, version: &str, name: &str) -> ImageConfig {
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
pub(crate) fn run_image(
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

pub(crate) fn unpack(layout: &Path, version: &str, into: &Path) -> PathBuf {
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
        &["--insecure-no-auth".into(), "--insecure-plain".into()],
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
        &["--insecure-no-auth".into(), "--insecure-plain".into()],
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
