//! Issue #12, "Scale 8 → 12 → 4": real QEMU clones (busybox root over NFS, `base` + `mpi`
//! sets) keep running while their deployment grows and shrinks — each survivor keeps its
//! libvirt domain id, its boot id and its uptime — and their /etc/hosts, MPI hostfile and
//! ssh known_hosts follow every scale without a reboot: the base set's watcher holds one
//! request on the coordinator's index of those files (`GET /v1/clones/NAME/cluster?…`),
//! which answers when they change, then fetches them (`…/cluster/FILE`) with the clone's
//! token.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use napalm_integration::grid::{Grid, GridOptions};
use serde_json::Value;

/// One scaled deployment: its name (also the grid's domain prefix).
#[derive(Clone, Copy)]
pub(crate) struct Dep(pub(crate) &'static str);

impl Dep {
    fn clone_name(self, i: u32) -> String {
        format!("{}-{i:02}", self.0)
    }
}

/// `napalmctl deploy` of `count` clones of `dep` (base + mpi sets); the time it took.
fn deploy(g: &Grid, dep: Dep, count: u32) -> Duration {
    let t = Instant::now();
    let count = count.to_string();
    let args = [
        "--output",
        "json",
        "deploy",
        "--memory",
        "256M",
        "--hypervisor",
        "qemu",
        "--layers",
        "base,mpi",
        "--name",
        dep.0,
        "--count",
        &count,
    ];
    let out = g.napalmctl(&args).expect("napalmctl deploy");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "deploy --count {count} failed ({:?}): {}\n{}\nlogs in {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        g.dir.display()
    );
    took
}

/// The libvirt domain id of `name` (changes when the domain is restarted or replaced).
fn domid(name: &str) -> Option<u32> {
    let out = Command::new("virsh")
        .args(["-q", "-c", "qemu:///system", "domid", name])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// What one clone says about itself and its cluster files.
#[derive(Debug, Clone, Default)]
struct Seen {
    boot_id: String,
    uptime: f64,
    /// Clone names in /etc/hosts (below the mark and above), sorted.
    hosts: BTreeSet<String>,
    /// Hosts of the MPI hostfile (uncommented lines).
    mpi: BTreeSet<String>,
    /// Names in /etc/ssh/ssh_known_hosts.
    known: BTreeSet<String>,
}

fn probe(g: &Grid, dep: Dep, i: u32) -> Result<Seen, String> {
    let script = format!(
        "echo BOOT=$(cat /proc/sys/kernel/random/boot_id)
echo UP=$(cut -d' ' -f1 /proc/uptime)
echo HOSTS=$(grep -o '{}-[0-9]*' /etc/hosts | sort -u | tr '\\n' ' ')
echo MPI=$(grep -v '^#' /etc/openmpi/openmpi-default-hostfile | tr '\\n' ' ')
echo KNOWN=$(grep -v '^#' /etc/ssh/ssh_known_hosts | cut -d, -f1 | tr '\\n' ' ')
echo END",
        dep.0
    );
    let out = g
        .clone_sh(&g.clone_addr(i), &script, Duration::from_secs(20))
        .map_err(|e| napalm_integration::error_chain(&e))?;
    if !out.contains("END") {
        return Err(format!("cut short: {out:?}"));
    }
    let mut s = Seen::default();
    for line in out.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let set = || v.split_whitespace().map(str::to_owned).collect();
        match k {
            "BOOT" => s.boot_id = v.trim().to_owned(),
            "UP" => s.uptime = v.trim().parse().unwrap_or(0.0),
            "HOSTS" => s.hosts = set(),
            "MPI" => s.mpi = set(),
            "KNOWN" => s.known = set(),
            _ => {}
        }
    }
    Ok(s)
}

/// Polls survivors `1..=survivors` until each one's hosts, MPI hostfile and known_hosts
/// list exactly clones `1..=count`; returns what each said last and how long it took.
fn wait_files(
    g: &Grid,
    dep: Dep,
    survivors: u32,
    count: u32,
    within: Duration,
) -> BTreeMap<u32, Seen> {
    let want: BTreeSet<String> = (1..=count).map(|i| dep.clone_name(i)).collect();
    let t = Instant::now();
    let mut last: BTreeMap<u32, Seen> = BTreeMap::new();
    let mut errors: BTreeMap<u32, String> = BTreeMap::new();
    let mut done: BTreeSet<u32> = BTreeSet::new();
    while done.len() < survivors as usize {
        for i in 1..=survivors {
            if done.contains(&i) {
                continue;
            }
            match probe(g, dep, i) {
                Ok(s) => {
                    if s.hosts == want && s.mpi == want && s.known == want {
                        done.insert(i);
                    }
                    errors.remove(&i);
                    last.insert(i, s);
                }
                Err(e) => {
                    errors.insert(i, e);
                }
            }
        }
        assert!(
            t.elapsed() < within,
            "cluster files of survivors did not follow the scale to {count} within {within:?}: \
             {last:#?}\nunanswered: {errors:#?}\nlogs in {}",
            g.dir.display()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    last
}

/// Survivors kept their domain, their boot and their uptime since `before`.
fn assert_survived(
    dep: Dep,
    before: &BTreeMap<u32, (Option<u32>, Seen)>,
    after: &BTreeMap<u32, Seen>,
    to: u32,
) {
    for (i, now) in after {
        let (id_before, was) = &before[i];
        let n = dep.clone_name(*i);
        assert!(id_before.is_some(), "{n} had a domain id");
        assert_eq!(domid(&n), *id_before, "{n}'s domain id changed at {to}");
        assert_eq!(now.boot_id, was.boot_id, "{n} rebooted at {to}");
        assert!(
            now.uptime > was.uptime,
            "{n}'s uptime went from {} to {} at {to}",
            was.uptime,
            now.uptime
        );
    }
}

fn snapshot(g: &Grid, dep: Dep, survivors: u32) -> BTreeMap<u32, (Option<u32>, Seen)> {
    (1..=survivors)
        .map(|i| {
            let n = dep.clone_name(i);
            let seen = probe(g, dep, i).unwrap_or_else(|e| panic!("{n} answers: {e}"));
            (i, (domid(&n), seen))
        })
        .collect()
}

fn registered(g: &Grid, dep: Dep) -> Vec<String> {
    let clones: Vec<Value> = g.clones(dep.0).expect("clones");
    let mut names: Vec<String> = clones
        .iter()
        .filter(|c| {
            c["phase"]
                .as_str()
                .is_some_and(|p| p.eq_ignore_ascii_case("registered"))
        })
        .filter_map(|c| c["clone"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// Scales `dep` through `counts` (the first is the initial deploy), checking after each
/// step that the survivors were not restarted and that their files list exactly the clones
/// there are; returns (from, to, deploy took, files followed after) per step.
fn scale_through(g: &Grid, dep: Dep, counts: &[u32]) -> Vec<(u32, u32, Duration, Duration)> {
    let took = deploy(g, dep, counts[0]);
    eprintln!(
        "scale {}: deploy --count {}: {:.1} s",
        dep.0,
        counts[0],
        took.as_secs_f64()
    );
    files_list(g, dep, counts[0]);
    scale_steps(g, dep, counts)
}

/// Waits until each of the `count` clones of `dep` lists exactly those clones in its
/// cluster files (after the first deploy).
pub(crate) fn files_list(g: &Grid, dep: Dep, count: u32) {
    let first = wait_files(g, dep, count, count, Duration::from_secs(120));
    assert!(first.values().all(|s| !s.boot_id.is_empty()));
}

/// The scale steps of [`scale_through`] from a deployment of `counts[0]` clones already
/// there (deployed with `--layers base,mpi`).
pub(crate) fn scale_steps(
    g: &Grid,
    dep: Dep,
    counts: &[u32],
) -> Vec<(u32, u32, Duration, Duration)> {
    let mut figures = Vec::new();
    for w in counts.windows(2) {
        let (from, to) = (w[0], w[1]);
        let survivors = from.min(to);
        let before = snapshot(g, dep, survivors);
        let t = Instant::now();
        let took = deploy(g, dep, to);
        let after = wait_files(g, dep, survivors, to, Duration::from_secs(120));
        let files = t.elapsed();
        eprintln!(
            "scale {}: {from} -> {to}: deploy returned in {:.1} s; every survivor's \
             /etc/hosts, MPI hostfile and known_hosts listed the {to} clones {:.1} s after \
             the scale began ({:.1} s after deploy returned)",
            dep.0,
            took.as_secs_f64(),
            files.as_secs_f64(),
            (files - took).as_secs_f64()
        );
        figures.push((from, to, took, files));
        assert_survived(dep, &before, &after, to);
        let want: Vec<String> = (1..=to).map(|i| dep.clone_name(i)).collect();
        assert_eq!(
            registered(g, dep),
            want,
            "exactly the {to} clones are registered"
        );
        let domains: Vec<String> = g
            .domains()
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(domains, want, "exactly {to} domains");
    }
    for (from, to, took, files) in &figures {
        eprintln!(
            "FIGURE {} scale {from}->{to}: deploy {:.1} s, files followed at {:.1} s",
            dep.0,
            took.as_secs_f64(),
            files.as_secs_f64()
        );
    }
    figures
}

/// The figure on busybox clones (the watcher under busybox init, wget).
#[test]
fn scale_8_12_4_keeps_survivors_running_and_their_cluster_files_follow() {
    let dep = Dep("gscale");
    let g = Grid::start(
        GridOptions {
            keep: std::env::var_os("NAPALM_KEEP_GRID").is_some(),
            ..Default::default()
        },
        dep.0,
    )
    .expect("starting the grid");
    scale_through(&g, dep, &[8, 12, 4]);
}
