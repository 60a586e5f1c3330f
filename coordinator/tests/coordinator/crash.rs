//! The coordinator killed (SIGKILL) at several points of a deploy and restarted: re-running
//! the deploy converges to exactly the requested clones, none lost or duplicated — with
//! the embedded store and with etcd. Also: with two coordinators on one etcd, killing the
//! leader lets the other take over and finish the deployment. The etcd cases run twice:
//! plain, and with etcd serving TLS only and requiring client certificates (issue 13).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use napalm_integration::proc::{wait_for, Daemon};

use napalm_coordinator::testing::agent_config;

use crate::deploy::TOKEN;
use crate::etcd_harness::{free_port, Etcd};

struct Agents {
    rt: tokio::runtime::Runtime,
    running: Vec<napalm_agent::server::Running>,
    endpoints: Vec<String>,
}

impl Agents {
    fn start(dir: &Path, n: usize) -> Self {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let running: Vec<_> = (0..n)
            .map(|i| {
                rt.block_on(napalm_agent::server::start(agent_config(
                    &dir.join(format!("agent{i}")),
                    Some(TOKEN.into()),
                )))
                .expect("agent starts")
            })
            .collect();
        let endpoints = running
            .iter()
            .map(|r| format!("http://{}", r.grpc_addr.expect("grpc")))
            .collect();
        Self {
            rt,
            running,
            endpoints,
        }
    }

    /// Running domains of a deployment, per agent.
    fn domains(&self, deployment: &str) -> Vec<String> {
        let mut all = Vec::new();
        for r in &self.running {
            let list = self.rt.block_on(r.agent.list(false)).expect("list domains");
            all.extend(
                list.into_iter()
                    .filter(|d| d.labels.get("deployment").map(String::as_str) == Some(deployment))
                    .map(|d| d.name),
            );
        }
        all.sort();
        all
    }
}

struct Coord {
    grpc: String,
    daemon: Option<Daemon>,
    args: Vec<String>,
    log: PathBuf,
}

impl Coord {
    /// A coordinator daemon on the registry `store` names: its flags (`--store URL`, and
    /// for etcd over TLS the `--etcd-*` files).
    fn new(dir: &Path, store: &[String], agents: &[String], tag: &str) -> Self {
        let kernel = dir.join("vmlinuz");
        if !kernel.exists() {
            std::fs::write(&kernel, b"not booted by the test driver").expect("kernel");
            let mut a = napalm_initramfs::cpio::Archive::new();
            a.add(
                "init",
                napalm_initramfs::cpio::Entry::File(0o755, b"#!/bin/sh\n".to_vec()),
            );
            std::fs::write(dir.join("base.img"), a.write(0)).expect("base");
        }
        let port = free_port();
        let mut args: Vec<String> = vec![
            "--insecure-no-auth".into(),
            "--insecure-plain".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--http-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--secret-file".into(),
            dir.join("secret").display().to_string(),
            "--agent".into(),
            agents.join(","),
            "--agent-token".into(),
            TOKEN.into(),
            "--kernel".into(),
            kernel.display().to_string(),
            "--base-image".into(),
            dir.join("base.img").display().to_string(),
            "--layers-dir".into(),
            dir.join(format!("layers-{tag}")).display().to_string(),
            "--id".into(),
            tag.into(),
            "--lease-ttl".into(),
            "2".into(),
            "--register-timeout".into(),
            "5".into(),
        ];
        args.extend(store.iter().cloned());
        Self {
            grpc: format!("http://127.0.0.1:{port}"),
            daemon: None,
            args,
            log: dir.join(format!("coordinator-{tag}.log")),
        }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_napalm-coordinator"))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("coordinator starts");
        self.daemon = Some(Daemon(child));
        let addr = self.grpc.trim_start_matches("http://").to_owned();
        wait_for(Duration::from_secs(20), || {
            std::net::TcpStream::connect(&addr).ok()
        })
        .unwrap_or_else(|| panic!("coordinator did not listen; log:\n{}", self.log_text()));
    }

    fn kill(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(napalm_integration::bins::napalmctl().expect("napalmctl"));
        c.args(["--coordinator", &self.grpc, "--output", "json"])
            .args(args);
        c
    }

    fn deploy(&self, name: &str) -> std::process::Output {
        self.ctl(&["deploy", "--count", "8", "--name", name, "--memory", "128M"])
            .output()
            .expect("napalmctl runs")
    }
}

fn expected(name: &str) -> Vec<String> {
    (1..=8).map(|i| format!("{name}-{i:02}")).collect()
}

impl Coord {
    /// Whether the registry holds deployment `name`.
    fn has_deployment(&self, name: &str) -> bool {
        let o = self
            .ctl(&["deployments"])
            .output()
            .expect("napalmctl deployments");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v.as_array()
            .is_some_and(|a| a.iter().any(|d| d["name"] == name))
    }

    /// The phase of each clone of `name` in the registry.
    fn phases(&self, name: &str) -> Vec<String> {
        let o = self
            .ctl(&["clones", "--deployment", name])
            .output()
            .expect("napalmctl clones");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|c| c["phase"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Waits, with no client command, until the agents run exactly `name`'s 8 clones and the
/// registry has the 8 running (the test driver boots nothing, so they stop at running).
fn converges_by_itself(coord: &Coord, agents: &Agents, name: &str, within: Duration) -> bool {
    wait_for(within, || {
        let phases = coord.phases(name);
        (agents.domains(name) == expected(name)
            && phases.len() == 8
            && phases.iter().all(|p| p == "running"))
        .then_some(())
    })
    .is_some()
}

/// `prefix` keeps deployment names apart: every agent of this test process shares one
/// `test:///default` driver state.
fn kill_at_several_points(prefix: &str, store: &[String], dir: &Path, agents: &Agents) {
    let mut coord = Coord::new(dir, store, &agents.endpoints, "c1");
    coord.start();
    let mut by_itself = 0;
    for (round, delay_ms) in [30u64, 120, 300, 700].into_iter().enumerate() {
        let name = format!("{prefix}{round}");
        let mut client = coord
            .ctl(&[
                "deploy", "--count", "8", "--name", &name, "--memory", "128M",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("napalmctl deploy");
        std::thread::sleep(Duration::from_millis(delay_ms));
        coord.kill();
        let _ = client.wait();
        coord.start();
        // A deployment the registry holds converges with no second deploy; one whose
        // request died before it was written needs the operator to ask again.
        if coord.has_deployment(&name) {
            let t = Instant::now();
            assert!(
                converges_by_itself(&coord, agents, &name, Duration::from_secs(30)),
                "kill at {delay_ms} ms: not converged without a client: domains {:?}, \
                 phases {:?}\nlog:\n{}",
                agents.domains(&name),
                coord.phases(&name),
                coord.log_text()
            );
            eprintln!(
                "kill at {delay_ms} ms: converged by itself in {:?}",
                t.elapsed()
            );
            by_itself += 1;
        }
        // Asking again changes nothing (or finishes what was never written).
        let out = coord.deploy(&name);
        if !out.status.success() {
            let clones = coord
                .ctl(&["clones", "--deployment", &name])
                .output()
                .expect("clones");
            panic!(
                "redeploy after a kill at {delay_ms} ms failed: {}\nclones: {}\nlog:\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&clones.stdout),
                coord.log_text()
            );
        }
        assert_eq!(
            agents.domains(&name),
            expected(&name),
            "kill at {delay_ms} ms"
        );
        let listed = coord
            .ctl(&["clones", "--deployment", &name])
            .output()
            .expect("napalmctl clones");
        let v: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
        assert_eq!(v.as_array().map(Vec::len), Some(8), "registry: {v}");
    }
    eprintln!("{by_itself} of 4 kills left a deployment that converged with no client");
    // At least one kill (the latest, 700 ms in) comes after the deployment is recorded, so
    // the no-client path is always exercised.
    assert!(
        by_itself > 0,
        "no kill left a recorded deployment to converge"
    );
}

#[test]
fn coordinator_killed_mid_deploy_converges_with_the_embedded_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let agents = Agents::start(dir.path(), 2);
    let store = dir.path().join("registry.redb").display().to_string();
    kill_at_several_points(
        "kill-redb-",
        &["--store".into(), store],
        dir.path(),
        &agents,
    );
}

/// A coordinator restarted while clones boot counts them against their agents' boot
/// slots, for what is left of their boot timeout: its first deploy does not start a full
/// set of boots beside them.
#[test]
fn a_restarted_coordinator_counts_the_clones_still_booting_against_the_slots() {
    let dir = tempfile::tempdir().expect("temp dir");
    let agents = Agents::start(dir.path(), 2);
    let store = dir.path().join("registry.redb").display().to_string();
    let mut coord = Coord::new(
        dir.path(),
        &["--store".into(), store],
        &agents.endpoints,
        "s",
    );
    coord.args.extend(["--boot-concurrency".into(), "1".into()]);
    coord.start();
    // One clone on each agent, holding its agent's one slot while it boots: on the test
    // driver it never registers, so for its whole boot timeout.
    let boot_timeout = Duration::from_secs(15);
    let deploy = |coord: &Coord, name: &str| {
        deploy_booting(coord, name, boot_timeout)
            .unwrap_or_else(|said| panic!("deploy {name}: {said}\nlog:\n{}", coord.log_text()))
    };
    let (_, _) = deploy(&coord, "slots-first");
    let first_started = Instant::now();
    coord.kill();
    coord.start();
    let (took, said) = deploy(&coord, "slots-second");
    let waited = first_started.elapsed();
    eprintln!("the second deploy took {took:?}, {waited:?} after the first clones started");
    assert!(
        said.contains("waiting to boot"),
        "the second deploy's clones did not wait for a slot: {said}\nlog:\n{}",
        coord.log_text()
    );
    // Its clones started once the first ones' boot timeout had passed, not at once.
    assert!(
        waited >= boot_timeout - Duration::from_secs(5),
        "started {waited:?} after the first clones, within their boot timeout of {boot_timeout:?}"
    );
    assert_eq!(agents.domains("slots-first").len(), 2);
    assert_eq!(agents.domains("slots-second").len(), 2);
}

/// Deploys `name`, 2 clones of 128 MiB booting for at most `boot_timeout`, on `coord`:
/// how long it took and what napalmctl said, or what it said when it failed.
fn deploy_booting(
    coord: &Coord,
    name: &str,
    boot_timeout: Duration,
) -> Result<(Duration, String), String> {
    let t = Instant::now();
    let out = coord
        .ctl(&[
            "deploy",
            "--count",
            "2",
            "--name",
            name,
            "--memory",
            "128M",
            "--boot-timeout",
            &boot_timeout.as_secs().to_string(),
        ])
        .output()
        .expect("napalmctl deploy");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok((t.elapsed(), said))
    } else {
        Err(said)
    }
}

/// Two coordinators on etcd, one boot slot per agent. Whoever begins to lead counts the
/// clones the other left booting against the slots: the follower taking over from a
/// leader that stopped answering (SIGSTOP, its lease lapsing), and that first leader
/// again once it is back, a follower, and the second is killed. Each time a new
/// deployment's clones wait for the slots of those still booting, in the same process
/// as before (a lead term, not a process, is what adopts).
#[test]
fn with_two_coordinators_on_etcd_each_new_leader_counts_the_clones_left_booting() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let agents = Agents::start(dir.path(), 2);
    let boot_timeout = Duration::from_secs(12);
    let coordinator = |tag: &str| {
        let mut c = Coord::new(dir.path(), &etcd.coordinator_args(), &agents.endpoints, tag);
        c.args.extend(["--boot-concurrency".into(), "1".into()]);
        c.start();
        c
    };
    let mut a = coordinator("adopt-a");
    std::thread::sleep(Duration::from_millis(500));
    let mut b = coordinator("adopt-b");
    let signal = |c: &Coord, sig: &str| {
        let pid = c.daemon.as_ref().expect("running").pid().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill runs");
        assert!(ok.success(), "kill {sig} {pid}");
    };
    // Deploys `name` on `c` once it leads (a follower refuses), within 30 s.
    let deploy_once_leading = |c: &Coord, name: &str| {
        let mut said = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match deploy_booting(c, name, boot_timeout) {
                Ok(done) => return done,
                Err(s) if s.contains("not the leader") => said = s,
                Err(s) => panic!("deploy {name}: {s}\nlog:\n{}", c.log_text()),
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("{name}: never led: {said}\nlog:\n{}", c.log_text());
    };
    let wait_check = |name: &str, said: &str, since: Instant, c: &Coord| {
        let waited = since.elapsed();
        eprintln!("{name}: started {waited:?} after the clones left booting");
        assert!(
            said.contains("waiting to boot"),
            "{name}'s clones did not wait for a slot: {said}\nlog:\n{}",
            c.log_text()
        );
        assert!(
            waited >= boot_timeout - Duration::from_secs(4),
            "{name} started {waited:?} after the clones left booting, within their boot timeout of {boot_timeout:?}\nlog:\n{}",
            c.log_text()
        );
    };

    let _ = deploy_once_leading(&a, "adopt-first");
    let first = Instant::now();
    // a stops answering; its lease lapses and b leads.
    signal(&a, "-STOP");
    let (_, said) = deploy_once_leading(&b, "adopt-second");
    wait_check("adopt-second", &said, first, &b);
    let second = Instant::now();
    // a is back, and follows; b dies: a leads again, in the same process.
    signal(&a, "-CONT");
    let followed = wait_for(Duration::from_secs(15), || {
        deploy_booting(&a, "adopt-refused", boot_timeout)
            .err()
            .filter(|s| s.contains("not the leader"))
    });
    assert!(
        followed.is_some(),
        "a, back, did not follow b; log:\n{}",
        a.log_text()
    );
    b.kill();
    let (_, said) = deploy_once_leading(&a, "adopt-third");
    wait_check("adopt-third", &said, second, &a);
    for name in ["adopt-first", "adopt-second", "adopt-third"] {
        assert_eq!(agents.domains(name).len(), 2, "{name}");
    }
    a.kill();
}

#[test]
fn coordinator_killed_mid_deploy_converges_with_etcd() {
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::start();
    let agents = Agents::start(dir.path(), 2);
    kill_at_several_points("kill-etcd-", &etcd.coordinator_args(), dir.path(), &agents);
}

#[test]
fn coordinator_killed_mid_deploy_converges_with_etcd_over_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::start_tls();
    let agents = Agents::start(dir.path(), 2);
    kill_at_several_points("kill-etcds-", &etcd.coordinator_args(), dir.path(), &agents);
}

#[test]
fn with_two_coordinators_on_etcd_the_survivor_finishes_the_deployment() {
    takeover(&Etcd::start(), "");
}

#[test]
fn with_two_coordinators_on_etcd_over_tls_the_survivor_finishes_the_deployment() {
    takeover(&Etcd::start_tls(), "tls");
}

/// Two coordinators on `etcd`; the leader is killed mid-deploy. Deployment names start
/// with `prefix` (the test driver is shared by the tests of this binary).
fn takeover(etcd: &Etcd, prefix: &str) {
    let (takeover, hafollow) = (format!("{prefix}takeover"), format!("{prefix}hafollow"));
    let dir = tempfile::tempdir().expect("temp dir");
    let agents = Agents::start(dir.path(), 2);
    let mut a = Coord::new(
        dir.path(),
        &etcd.coordinator_args(),
        &agents.endpoints,
        "ca",
    );
    a.start();
    // a is first, so it leads; b follows and refuses to deploy.
    std::thread::sleep(Duration::from_millis(500));
    let mut b = Coord::new(
        dir.path(),
        &etcd.coordinator_args(),
        &agents.endpoints,
        "cb",
    );
    b.start();
    let refused = wait_for(Duration::from_secs(10), || {
        let o = b.deploy(&takeover);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (!o.status.success() && err.contains("not the leader")).then_some(err)
    });
    assert!(
        refused.is_some(),
        "the follower deployed; log:\n{}",
        b.log_text()
    );
    // Given both endpoints, the follower's first, napalmctl finds the leader by itself.
    let both = format!("{},{}", b.grpc, a.grpc);
    let o = Command::new(napalm_integration::bins::napalmctl().expect("napalmctl"))
        .args(["--coordinator", &both, "--output", "json"])
        .args([
            "deploy",
            "--count",
            "2",
            "--name",
            hafollow.as_str(),
            "--memory",
            "128M",
        ])
        .output()
        .expect("napalmctl runs");
    assert!(
        o.status.success(),
        "deploy through the follower's endpoint first: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        agents.domains(&hafollow),
        [format!("{hafollow}-01"), format!("{hafollow}-02")]
    );

    let mut client = a
        .ctl(&[
            "deploy",
            "--count",
            "8",
            "--name",
            takeover.as_str(),
            "--memory",
            "128M",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("deploy on the leader");
    std::thread::sleep(Duration::from_millis(150));
    let killed = Instant::now();
    a.kill();
    let _ = client.wait();
    if b.has_deployment(&takeover) {
        assert!(
            converges_by_itself(&b, &agents, &takeover, Duration::from_secs(30)),
            "the survivor did not finish by itself: domains {:?}, phases {:?}\nlog:\n{}",
            agents.domains(&takeover),
            b.phases(&takeover),
            b.log_text()
        );
        eprintln!(
            "takeover: converged by itself {:?} after the kill",
            killed.elapsed()
        );
    }
    let done = wait_for(Duration::from_secs(30), || {
        let o = b.deploy(&takeover);
        o.status.success().then_some(o)
    });
    let took = killed.elapsed();
    assert!(
        done.is_some(),
        "the survivor never finished; log:\n{}",
        b.log_text()
    );
    eprintln!("leader killed -> survivor finished the deployment in {took:?} (lease TTL 2 s)");
    assert_eq!(agents.domains(&takeover), expected(&takeover));
}
