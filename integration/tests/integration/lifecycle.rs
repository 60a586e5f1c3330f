//! Issue #12 on real QEMU clones: the thesis's annex IV clones.conf deployed as written
//! (its first 8 hosts), a rolling update with max-unavailable 2 sampled from
//! `napalmctl watch`, a broken template that pauses the rollout, a clone whose QEMU is
//! killed (restarted, then replaced past its budget), and an agent host lost for good
//! (agent SIGKILLed and its domains destroyed behind its back). No operator command after
//! each fault: the coordinator's loop does the work.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use napalm_integration::grid::{clone_address, Grid, GridOptions};
use serde_json::Value;

/// A template set `probe` whose one file, /etc/probe, holds the value `probe`; removed
/// when the returned directory is dropped (the test keeps it while its grid runs).
fn probe_sets() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("napalm-probe-sets-")
        .tempdir()
        .expect("tempdir");
    let etc = dir.path().join("probe/root/etc");
    std::fs::create_dir_all(&etc).expect("mkdir");
    std::fs::write(etc.join("probe.tmpl"), "{{probe}}\n").expect("template");
    dir
}

/// The agents' heartbeat TTL (they beat every half of it).
const TTL: Duration = Duration::from_secs(3);
/// How long after its last heartbeat an agent is taken for lost: the TTL and the grace.
// libvirt takes about a second per domain to reap SIGKILLed QEMUs (5.5 s for 5 here
// under load); the grace leaves room for that.
const LOST_AFTER: Duration = Duration::from_secs(15);

/// The grid and the `probe` set it reads (drop the set after the grid).
fn grid() -> (Grid, tempfile::TempDir) {
    let sets = probe_sets();
    let opts = GridOptions {
        keep: std::env::var_os("NAPALM_KEEP_GRID").is_some(),
        agent_lost_grace: LOST_AFTER - TTL,
        coordinator_args: vec![
            "--sets".into(),
            sets.path().display().to_string(),
            "--restart-budget".into(),
            "1".into(),
            "--heartbeat-min-ttl".into(),
            TTL.as_secs().to_string(),
        ],
        ..Default::default()
    };
    (Grid::start(opts, "clone").expect("starting the grid"), sets)
}

fn ctl(g: &Grid, args: &[&str]) -> (bool, String, String) {
    let out = g.napalmctl(args).expect("napalmctl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `napalmctl deploy` of small QEMU clones with `args`; panics with the output on failure.
fn deploy(g: &Grid, args: &[&str]) -> Duration {
    let t = Instant::now();
    let mut a = vec![
        "--output",
        "json",
        "deploy",
        "--memory",
        "128M",
        "--hypervisor",
        "qemu",
    ];
    a.extend_from_slice(args);
    let (ok, out, err) = ctl(g, &a);
    assert!(
        ok,
        "deploy {args:?}: {out}\n{err}\nlogs in {}",
        g.dir.display()
    );
    t.elapsed()
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_owned()
}

/// Waits until `ok` holds of the deployment's clones; panics with them after `within`.
fn until(
    g: &Grid,
    deployment: &str,
    within: Duration,
    what: &str,
    ok: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let c = g.clones(deployment).unwrap_or_default();
        if ok(&c) {
            return c;
        }
        if Instant::now() >= deadline {
            let rows: Vec<String> = c
                .iter()
                .map(|c| {
                    format!(
                        "{} {} on {} restarts {} action {:?} error {:?}",
                        s(c, "clone"),
                        s(c, "phase"),
                        s(c, "agent"),
                        c["restarts"],
                        s(c, "last_action"),
                        s(c, "error")
                    )
                })
                .collect();
            panic!(
                "{what}: not within {within:?}:\n{}\nlogs in {}",
                rows.join("\n"),
                g.dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn registered(c: &Value) -> bool {
    s(c, "phase") == "registered"
}

fn sh(g: &Grid, c: &Value, script: &str) -> String {
    g.clone_sh(&clone_address(c), script, Duration::from_secs(20))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The thesis's annex IV clones.conf, cut to its first `n` hosts.
fn annex_iv(n: usize) -> String {
    let text = include_str!("../../../overlay/tests/data/annex-iv-clones.conf");
    let mut out = String::new();
    let mut hosts = 0;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("clone") && t.ends_with(':') {
            hosts += 1;
            if hosts > n {
                continue;
            }
        }
        out += line;
        out.push('\n');
    }
    out
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write the file");
    p.display().to_string()
}

/// Counts, from `napalmctl watch` JSON lines, the most clones of `deployment` not
/// registered at once. The watch reports the changes of one registry listing together
/// (same `at`): the count is taken between listings, not half-way through one.
struct DownSampler {
    child: std::process::Child,
    worst: Arc<Mutex<usize>>,
}

impl DownSampler {
    fn start(g: &Grid, deployment: &str, clones: &[Value]) -> DownSampler {
        let mut cmd = g.napalmctl_command().expect("napalmctl");
        cmd.args(["--output", "json", "watch", "--deployment", deployment])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("napalmctl watch starts");
        let stdout = child.stdout.take().expect("piped");
        let worst = Arc::new(Mutex::new(0));
        let w = Arc::clone(&worst);
        let mut phase: HashMap<String, String> = clones
            .iter()
            .map(|c| (s(c, "clone"), s(c, "phase")))
            .collect();
        std::thread::spawn(move || {
            let mut last_at = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if s(&v, "kind") != "clone" {
                    continue;
                }
                let at = v["at"].as_f64();
                if last_at.is_some() && at != last_at {
                    let down = phase.values().filter(|p| *p != "registered").count();
                    let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
                    *w = (*w).max(down);
                }
                last_at = at;
                if v["deleted"].as_bool() == Some(true) {
                    phase.remove(&s(&v, "name"));
                } else {
                    phase.insert(s(&v, "name"), s(&v, "phase"));
                }
            }
        });
        // Let the watch take its first listing before anything changes.
        std::thread::sleep(Duration::from_secs(2));
        DownSampler { child, worst }
    }

    fn stop(mut self) -> usize {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self.worst.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The QEMU process of domain `name` (libvirt's pid file).
fn qemu_pid(name: &str) -> i32 {
    let p = format!("/run/libvirt/qemu/{name}.pid");
    std::fs::read_to_string(&p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {p}"))
}

fn kill9(pid: i32) {
    // SAFETY: a signal to a QEMU process this test's grid started.
    let r = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(r, 0, "kill -9 {pid}");
}

#[test]
fn declared_clusters_roll_restart_and_survive_a_lost_host_on_real_clones() {
    let (mut g, _sets) = grid();

    // Annex IV as written, its first 8 hosts, 8 × 128 MiB.
    let conf = write(&g.dir, "clones.conf", &annex_iv(8));
    let took = deploy(&g, &["-f", &conf, "--name", "annex"]);
    let clones = until(
        &g,
        "annex",
        Duration::from_secs(60),
        "annex registered",
        |c| c.len() == 8 && c.iter().all(registered),
    );
    eprintln!(
        "annex IV, 8 clones: {:.1} s to all registered",
        took.as_secs_f64()
    );
    for (i, c) in clones.iter().enumerate() {
        let name = format!("clone{:02}", i + 1);
        assert_eq!(s(c, "clone"), name);
        assert_eq!(sh(&g, c, "hostname"), name, "its own hostname");
    }
    let (ok, mpi, err) = ctl(&g, &["clones", "--deployment", "annex", "--format", "mpi"]);
    assert!(ok, "{err}");
    let hosts: Vec<&str> = mpi.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        hosts,
        (1..=8).map(|i| format!("clone{i:02}")).collect::<Vec<_>>()
    );
    let (ok, shown, _) = ctl(&g, &["deployments", "show", "annex"]);
    assert!(ok && shown.contains("revision: 1") && shown.contains("attack of the clones"));
    let (ok, _, err) = ctl(&g, &["undeploy", "annex"]);
    assert!(ok, "{err}");

    // A rolling update of 8 clones, at most 2 down at once.
    let roll = |v: &str| {
        let mut t = format!("layers: [base, probe]\nprobe: {v}\nhosts:\n");
        for i in 31..=38 {
            t += &format!("  clone{i}:\n");
        }
        t
    };
    let f = write(&g.dir, "roll.conf", &roll("v1"));
    deploy(&g, &["-f", &f, "--name", "roll", "--max-unavailable", "2"]);
    let before = until(&g, "roll", Duration::from_secs(60), "roll v1", |c| {
        c.len() == 8 && c.iter().all(registered)
    });
    assert_eq!(sh(&g, &before[0], "cat /etc/probe"), "v1");
    let sampler = DownSampler::start(&g, "roll", &before);
    let f = write(&g.dir, "roll.conf", &roll("v2"));
    let took = deploy(&g, &["-f", &f, "--name", "roll", "--max-unavailable", "2"]);
    let after = until(&g, "roll", Duration::from_secs(120), "roll v2", |c| {
        c.len() == 8 && c.iter().all(|c| registered(c) && c["spec_revision"] == 2)
    });
    let worst = sampler.stop();
    eprintln!(
        "rolling update of 8 (max-unavailable 2): {:.1} s, at most {worst} unregistered at once",
        took.as_secs_f64()
    );
    assert!(worst <= 2, "{worst} clones unregistered at once");
    assert!(worst >= 1, "the sampler saw the rollout");
    for c in &after {
        assert_eq!(sh(&g, c, "cat /etc/probe"), "v2", "{}", s(c, "clone"));
    }
    // A second rollout: the clones held back now mount the first rollout's versions.
    let f = write(&g.dir, "roll.conf", &roll("v3"));
    let took = deploy(&g, &["-f", &f, "--name", "roll", "--max-unavailable", "2"]);
    let after = until(&g, "roll", Duration::from_secs(120), "roll v3", |c| {
        c.len() == 8 && c.iter().all(|c| registered(c) && c["spec_revision"] == 3)
    });
    eprintln!("second rolling update of 8: {:.1} s", took.as_secs_f64());
    for c in &after {
        assert_eq!(sh(&g, c, "cat /etc/probe"), "v3", "{}", s(c, "clone"));
    }

    // A broken template (the value it needs is gone): paused, the old clones run on.
    let f = write(&g.dir, "roll.conf", &roll("v3").replace("probe: v3\n", ""));
    let _ = ctl(
        &g,
        &[
            "deploy",
            "-f",
            &f,
            "--name",
            "roll",
            "--memory",
            "128M",
            "--hypervisor",
            "qemu",
        ],
    );
    let (ok, status, err) = ctl(&g, &["rollout", "status", "roll"]);
    assert!(ok, "{err}");
    assert!(
        status.contains("rollout paused") && status.contains("probe"),
        "{status}"
    );
    let still = g.clones("roll").expect("clones");
    assert!(still.iter().all(registered));
    assert_eq!(sh(&g, &still[0], "cat /etc/probe"), "v3");
    let (ok, _, err) = ctl(&g, &["rollout", "undo", "roll"]);
    assert!(ok, "{err}");

    // A clone's QEMU killed: restarted on its agent, registers again.
    let victim = s(&after[0], "clone");
    let home = s(&after[0], "agent");
    let first_registration = after[0]["registered_at"].as_f64().unwrap_or(0.0);
    kill9(qemu_pid(&victim));
    let killed = Instant::now();
    until(&g, "roll", Duration::from_secs(90), "restarted", |c| {
        c.iter().any(|c| {
            s(c, "clone") == victim
                && registered(c)
                && c["restarts"] == 1
                && c["registered_at"].as_f64().unwrap_or(0.0) > first_registration
        })
    });
    eprintln!(
        "QEMU killed: restarted and registered again in {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    // Killed again, past its budget of 1: replaced on the other agent.
    kill9(qemu_pid(&victim));
    let killed = Instant::now();
    let now = until(&g, "roll", Duration::from_secs(90), "replaced", |c| {
        c.iter()
            .any(|c| s(c, "clone") == victim && registered(c) && s(c, "agent") != home)
    });
    eprintln!(
        "QEMU killed past the budget: registered on the other agent in {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    let moved = now
        .iter()
        .find(|c| s(c, "clone") == victim)
        .expect("victim");
    assert!(
        s(moved, "last_action").contains("died past its restart budget"),
        "{moved}"
    );

    // An agent host lost for good: its agent SIGKILLed, its domains destroyed.
    let (_, agents, _) = ctl(&g, &["--output", "json", "agents"]);
    let agents: Value = serde_json::from_str(&agents).expect("agents json");
    let index_of_lost = 0;
    let endpoint = g.agent_grpc(index_of_lost).to_string();
    let lost_id = agents
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| s(a, "endpoint").contains(&endpoint))
        .map(|a| s(a, "id"))
        .expect("agent 0 is registered");
    let clones = g.clones("roll").expect("clones");
    let on_lost: Vec<String> = clones
        .iter()
        .filter(|c| s(c, "agent") == lost_id)
        .map(|c| s(c, "clone"))
        .collect();
    assert!(!on_lost.is_empty(), "agent 0 runs clones");
    // The host is gone with its hypervisor: every domain it owns (the napalm metadata
    // names its agent id) vanishes with it. Both agents of this grid share one libvirtd,
    // so the test kills their QEMUs and undefines them (on separate hosts the survivor would not
    // see them at all), all at once and before the coordinator may take the agent for
    // lost (heartbeat TTL + grace): otherwise the survivor meets a domain of the same
    // name that another agent owns, which no real pair of hosts can show.
    let owned_by_lost = |g: &Grid| -> Vec<String> {
        g.domains()
            .into_iter()
            .filter(|d| {
                let xml = Command::new("virsh")
                    .args(["-q", "-c", "qemu:///system", "dumpxml", d])
                    .output()
                    .expect("virsh");
                // A domain gone between the listing and this: not there.
                xml.status.success() && String::from_utf8_lossy(&xml.stdout).contains(&lost_id)
            })
            .collect()
    };
    let doomed = owned_by_lost(&g);
    assert!(!doomed.is_empty(), "agent 0 owned domains");
    g.kill_agent(index_of_lost);
    let lost = Instant::now();
    // The host's QEMUs die with it (SIGKILL: at once, as a power cut), then libvirt
    // forgets their domains.
    for d in &doomed {
        if let Ok(pid) = std::fs::read_to_string(format!("/run/libvirt/qemu/{d}.pid")) {
            if let Ok(pid) = pid.trim().parse() {
                kill9(pid);
            }
        }
    }
    let runs: Vec<_> = doomed
        .iter()
        .map(|d| {
            Command::new("virsh")
                .args(["-q", "-c", "qemu:///system", "undefine", d])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("virsh")
        })
        .collect();
    for (d, run) in doomed.iter().zip(runs) {
        let out = run.wait_with_output().expect("virsh");
        assert!(out.status.success(), "virsh undefine {d}: {out:?}");
    }
    let undefined_in = lost.elapsed();
    // An undefined domain whose QEMU libvirt has not reaped yet is transient for a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lingering = |g: &Grid| -> Vec<String> {
        g.domains()
            .into_iter()
            .filter(|d| doomed.contains(d))
            .collect()
    };
    while !lingering(&g).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let vanished_in = lost.elapsed();
    assert!(
        owned_by_lost(&g).is_empty(),
        "the lost host's domains are gone"
    );
    // The simulation holds only if its domains vanished before the agent could be lost:
    // its last heartbeat was up to half a TTL before the kill.
    assert!(
        vanished_in + TTL / 2 < LOST_AFTER,
        "removing the lost host's {} domains took {vanished_in:?}: the coordinator may have \
         taken the agent for lost ({LOST_AFTER:?} after its last heartbeat) before they vanished",
        doomed.len()
    );
    let survivors = until(
        &g,
        "roll",
        Duration::from_secs(180),
        "moved off the lost host",
        |c| c.len() == 8 && c.iter().all(|c| registered(c) && s(c, "agent") != lost_id),
    );
    eprintln!(
        "agent host lost ({} clones, undefined {:.1} s and gone {:.1} s after the kill): all 8 \
         registered on the survivor {:.1} s after the kill",
        doomed.len(),
        undefined_in.as_secs_f64(),
        vanished_in.as_secs_f64(),
        lost.elapsed().as_secs_f64()
    );
    for c in survivors
        .iter()
        .filter(|c| on_lost.contains(&s(c, "clone")))
    {
        assert!(s(c, "last_action").contains("its agent is lost"), "{c}");
        assert_eq!(sh(&g, c, "hostname"), s(c, "clone"));
    }
}
