//! End-to-end deploy throughput on libvirt's `test:///default` (issue #6 goal: 1,000 clones
//! across 50 agents in under 10 s): real napalm-agents (in this process, each with its own
//! state directory and gRPC server on loopback), the real coordinator service over gRPC,
//! real layer builds (napalm-overlay, `base` set) and per-clone images. Baseline measured
//! in the same run: the same deployment shipped with a concurrency of 1.
//!
//! Run: `cargo bench -p napalm-coordinator --bench deploy`
//! (`NAPALM_BENCH_CLONES`, `NAPALM_BENCH_AGENTS` change the sizes; `NAPALM_BENCH_RUNS=N`
//! repeats the concurrent run and reports the median; `NAPALM_BENCH_BASELINE=0` skips the
//! sequential baseline; `NAPALM_BENCH_AGENT_DIR=/dev/shm` keeps the agents' state off the
//! disk the registry is on; `TMPDIR=/dev/shm` puts the registry and layers on tmpfs too).
//!
//! Each agent runs on a libvirt test driver of its own (`test:///…/node.xml`), as real
//! hosts each have their own libvirtd. Each run ends with an untimed undeploy.
//!
//! `NAPALM_BENCH_STORES=redb,etcd` runs the deploy on each registry store in turn (etcd: a
//! real single-member etcd on loopback, started for the run). After each run the bench
//! prints the registry's size, the process's peak RSS so far (coordinator and agents
//! together: an upper bound of the coordinator's), and how long `ListClones` of the
//! deployment takes over gRPC and, when `target/release/napalmctl` is built, as
//! `napalmctl clones` run by a user.
//!
//! `NAPALM_BENCH_AGENTS_APART=1` runs the agents in a child process (this bench started
//! again in agent mode), so that the figures are the coordinator's alone: its peak RSS,
//! and its CPU and memory while idle (`NAPALM_BENCH_IDLE` seconds, default 10) with the
//! agents and no clone, then with the deployed clones: per agent and per idle clone; then
//! (unless `NAPALM_BENCH_HELD=0`) with one cluster-index request held per clone, as each
//! running clone's watcher holds one, and what one change that answers them all costs
//! (`deploy/held.rs`).
//!
//! The coordinator's control loop ships the kernel and the base image to every agent as
//! it registers (`deploy/prefetch.rs`); the bench waits until every agent holds them (and
//! prints how long that took) before the timed deploy, which then ships nothing.
//! `NAPALM_BENCH_PREFETCH=0` runs without the control loop: the timed deploy ships them.
//!
//! `NAPALM_BENCH_DEPLOYMENTS=N` (agents apart) then deploys the same clones again as N
//! deployments and compares the coordinator's idle CPU with the one deployment's
//! (`deploy/spread.rs`).
//!
//! `NAPALM_BENCH_INFORMER=0` has the control loop list every agent at every pass instead of
//! keeping what they run from their domain events (`deploy/informer.rs`): the baseline of
//! its idle figures.
//!
//! `NAPALM_BENCH_WARM=1` deploys and removes one clone per agent before the timed deploy
//! (untimed), so that it ships nothing: the control plane's figure without the agents
//! filling their blob stores (see `warm`). After each deploy the bench also writes what the
//! agents stored to a new file beside them and prints how long that took: the machine's
//! cost of filling fresh memory, in the same run (see `fresh_memory`).
//!
//! `NAPALM_BENCH_PERF_CTL=FIFO` profiles the timed deploys alone: `mkfifo FIFO; perf record
//! -a -D -1 --control fifo:FIFO -- sleep 600 &` before the bench, which writes `enable`
//! and `disable` to FIFO around each timed deploy.

// A benchmark harness: a failed step should stop it loudly.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

#[path = "../tests/coordinator/etcd_harness.rs"]
#[allow(dead_code)]
mod etcd_harness;

#[path = "deploy/agents.rs"]
mod agents;
#[path = "deploy/held.rs"]
mod held;
#[path = "deploy/machine.rs"]
mod machine;
#[path = "deploy/prefetched.rs"]
mod prefetched;
#[path = "deploy/spread.rs"]
mod spread;

use agents::{agents_child, AgentsApart};
use machine::{cpu_used, fresh_memory, idle, idle_secs, peak_rss_mib};

use napalm_coordinator::testing::{GridOptions, TestGrid};
use napalm_proto::v1::*;
use tokio_stream::StreamExt;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// When each phase was first and last reported, from the start of the deploy call.
#[derive(Default)]
struct Phases(std::collections::BTreeMap<i32, (Duration, Duration, usize)>);

impl Phases {
    fn saw(&mut self, phase: i32, at: Duration) {
        let e = self.0.entry(phase).or_insert((at, at, 0));
        e.1 = at;
        e.2 += 1;
    }
    fn print(&self) {
        for (phase, (first, last, n)) in &self.0 {
            let name = ClonePhase::try_from(*phase)
                .map(|p| p.as_str_name())
                .unwrap_or("?");
            println!(
                "    {name:<28} {n:>5} events, first {:>6.2} s, last {:>6.2} s",
                first.as_secs_f64(),
                last.as_secs_f64()
            );
        }
    }
}

/// Times listing the deployment's clones: over gRPC, then with `napalmctl clones` as a
/// user runs it (when built beside this bench, in `target/release`).
async fn time_listing(
    c: &mut napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient<
        tonic::transport::Channel,
    >,
    endpoint: &str,
    tag: &str,
    clones: u32,
) {
    let t = Instant::now();
    let listed = c
        .list_clones(ListClonesRequest {
            deployment: tag.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .clones
        .len();
    assert_eq!(listed, clones as usize);
    println!(
        "    ListClones of {listed} clones over gRPC: {:.3} s",
        t.elapsed().as_secs_f64()
    );
    let ctl = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join("napalmctl")))
        .filter(|p| p.is_file());
    let Some(ctl) = ctl else {
        println!("    napalmctl clones: not timed (cargo build --release -p napalm-ctl first)");
        return;
    };
    let t = Instant::now();
    let out = tokio::process::Command::new(&ctl)
        .args(["--coordinator", endpoint, "clones", "--deployment", tag])
        .output()
        .await
        .unwrap();
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "    napalmctl clones --deployment {tag} ({} lines, {} bytes): {:.3} s",
        out.stdout.iter().filter(|b| **b == b'\n').count(),
        out.stdout.len(),
        took.as_secs_f64()
    );
}

/// Where the registry lives.
#[derive(Clone, Copy, PartialEq)]
enum Store {
    /// The embedded redb file.
    Redb,
    /// A real etcd on loopback, started for the run.
    Etcd,
}

async fn run(
    clones: u32,
    agents: usize,
    concurrency: usize,
    tag: &str,
    over_nfs: bool,
    store: Store,
) -> (Duration, Phases, Leftovers) {
    let etcd = (store == Store::Etcd).then(etcd_harness::Etcd::start);
    // Agents' blob stores and domain records (each fsynced by the agent) share this
    // machine's one disk; NAPALM_BENCH_AGENT_DIR=/dev/shm puts them on tmpfs, as if every
    // agent had a disk of its own, leaving the registry (and layers) on disk.
    let agent_dir = match std::env::var("NAPALM_BENCH_AGENT_DIR") {
        Ok(d) if !d.is_empty() => tempfile::tempdir_in(d).unwrap(),
        _ => tempfile::tempdir().unwrap(),
    };
    let apart = (env("NAPALM_BENCH_AGENTS_APART", 0) != 0)
        .then(|| AgentsApart::start(agents, agent_dir.path()));
    let opts = GridOptions {
        agents,
        agent_token: None,
        agent_dir: Some(agent_dir.path().into()),
        kernel_bytes: 8 << 20,
        base_bytes: 1 << 20,
        // Each agent on its own test driver, as each real host has its own libvirtd.
        own_drivers: true,
        external_agents: apart
            .as_ref()
            .map(|a| a.endpoints.clone())
            .unwrap_or_default(),
    };
    // What each agent stores: the kernel and the base image, once.
    let shipped = agents as u64 * (opts.kernel_bytes + opts.base_bytes) as u64;
    let store_url = etcd.as_ref().map(|e| e.store_url());
    let mut redb = None;
    let prefetch = env("NAPALM_BENCH_PREFETCH", 1) != 0;
    let grid = TestGrid::start_with(opts, |cfg| {
        // Layers over NFS: the coordinator writes one export per clone (a ganesha file
        // beside the registry's directory, nobody to reload) and every clone ships the
        // same image. Before an etcd URL replaces the registry's path.
        if over_nfs {
            napalm_coordinator::testing::layers_over_nfs(cfg);
        }
        let root = cfg.store.clone();
        match store_url {
            Some(url) => cfg.store = url,
            None => redb = Some(std::path::PathBuf::from(&root)),
        }
        // Without the control loop nothing ships ahead: the deploy ships it all.
        if !prefetch {
            cfg.converge_every = None;
        }
        let d = cfg.deploy.as_mut().unwrap();
        d.concurrency = concurrency;
        d.informer = env("NAPALM_BENCH_INFORMER", 1) != 0;
        d.kernel_args = String::new();
        d.attempts = 1;
    })
    .await
    .unwrap();
    let mut c = grid.client().await.unwrap();
    if prefetch {
        let endpoints = apart.as_ref().map_or(&grid.endpoints, |a| &a.endpoints);
        let took = prefetched::wait(&grid, endpoints, over_nfs).await;
        println!(
            "    boot artifacts on all {agents} agents ahead of the deploy (the control loop, \
             untimed): {:.1} s after the grid was up",
            took.as_secs_f64()
        );
    }
    let idle_agents = match &apart {
        Some(_) => Some(idle(idle_secs()).await),
        None => None,
    };
    if env("NAPALM_BENCH_WARM", 0) != 0 {
        warm(&mut c, tag, agents).await;
    }
    perf_control("enable");
    let cpu = cpu_used();
    let t = Instant::now();
    let mut s = c
        .deploy(DeployRequest {
            request_id: tag.into(),
            spec: Some(spec(tag, clones)),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut summary = None;
    let mut phases = Phases::default();
    while let Some(m) = s.next().await {
        match m.unwrap().event {
            Some(deploy_progress::Event::Summary(x)) => summary = Some(x),
            Some(deploy_progress::Event::Clone(p)) => {
                if let Some(c) = p.clone {
                    phases.saw(c.phase, t.elapsed());
                }
            }
            _ => {}
        }
    }
    let took = t.elapsed();
    let cpu = cpu_used() - cpu;
    perf_control("disable");
    let summary = summary.unwrap();
    assert_eq!(summary.succeeded, clones, "{summary:?}");
    if apart.is_some() {
        println!(
            "    the coordinator's CPU during the deploy: {:.1} s ({:.2} ms per clone)",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e3 / f64::from(clones)
        );
    }
    // Untimed figures of the deployed state.
    match &redb {
        Some(file) => println!(
            "    registry: redb, {:.1} MiB on disk",
            std::fs::metadata(file).map_or(0, |m| m.len()) as f64 / f64::from(1 << 20)
        ),
        None => println!("    registry: etcd"),
    }
    match apart {
        Some(_) => println!(
            "    peak RSS of the coordinator so far: {:.0} MiB",
            peak_rss_mib()
        ),
        None => println!(
            "    peak RSS of coordinator and agents so far: {:.0} MiB",
            peak_rss_mib()
        ),
    }
    time_listing(&mut c, &grid.coordinator.endpoint(), tag, clones).await;
    let fill = fresh_memory(agent_dir.path(), shipped);
    println!(
        "    for scale, the machine: {:.2} GiB (what the agents stored) written to a new file \
         beside them: {:.2} s, {:.2} GiB/s",
        shipped as f64 / f64::from(1 << 30),
        fill.as_secs_f64(),
        shipped as f64 / f64::from(1 << 30) / fill.as_secs_f64()
    );
    let mut undeployed = false;
    if let Some((cpu0, rss0)) = idle_agents {
        let (cpu1, rss1) = idle(idle_secs()).await;
        println!(
            "    coordinator idle, {agents} agents and no clone: {:.1} ms CPU/s, {rss0:.0} MiB \
             ({:.1} us CPU/s per agent); with {clones} clones: {:.1} ms CPU/s, {rss1:.0} MiB \
             (per idle clone {:.2} us CPU/s, {:.1} KiB)",
            cpu0 * 1e3,
            cpu0 * 1e6 / agents as f64,
            cpu1 * 1e3,
            (cpu1 - cpu0) * 1e6 / f64::from(clones),
            (rss1 - rss0) * 1024.0 / f64::from(clones),
        );
        if env("NAPALM_BENCH_HELD", 1) != 0 {
            held::measure(&grid, &mut c, tag, (cpu1, rss1)).await;
        }
        let n = env("NAPALM_BENCH_DEPLOYMENTS", 1) as u32;
        if n > 1 {
            spread::measure(&mut c, tag, clones, n, cpu1).await;
            undeployed = true;
        }
    }
    // Untimed (see the header).
    if !undeployed {
        assert_eq!(
            undeploy(&mut c, format!("{tag}-undeploy"), tag).await,
            Some(clones),
            "undeploy after the run"
        );
    }
    let TestGrid {
        coordinator,
        agents,
        dir,
        ..
    } = grid;
    for r in agents {
        r.stop().await;
    }
    let _ = coordinator.shutdown().await;
    (
        took,
        phases,
        Leftovers {
            _dirs: [dir, agent_dir],
        },
    )
}

/// The deployment every deploy of this bench asks for: `count` clones of 1 vCPU, 64 MiB.
fn spec(name: &str, count: u32) -> DeploymentSpec {
    DeploymentSpec {
        name: name.into(),
        count,
        resources: Some(Resources {
            vcpus: 1,
            memory_bytes: 64 << 20,
        }),
        ..Default::default()
    }
}

/// How many clones a deploy's or undeploy's summary says succeeded, once its stream ends.
async fn succeeded(mut s: tonic::Streaming<DeployProgress>) -> Option<u32> {
    let mut done = None;
    while let Some(m) = s.next().await {
        if let Some(deploy_progress::Event::Summary(x)) = m.unwrap().event {
            done = Some(x.succeeded);
        }
    }
    done
}

/// Removes deployment `name` and its records; how many clones it removed.
async fn undeploy(
    c: &mut napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient<
        tonic::transport::Channel,
    >,
    request_id: String,
    name: &str,
) -> Option<u32> {
    let s = c
        .undeploy(UndeployRequest {
            request_id,
            name: name.into(),
            purge: true,
        })
        .await
        .unwrap()
        .into_inner();
    succeeded(s).await
}

/// `NAPALM_BENCH_WARM=1`: before the timed deploy, an untimed one of one clone per agent
/// (spread), then its undeploy, so that every agent already holds the kernel and the base
/// image, as hosts keep them from one deployment to the next. The timed deploy then ships
/// nothing and measures the control plane without filling the agents' blob stores.
async fn warm(
    c: &mut napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient<
        tonic::transport::Channel,
    >,
    tag: &str,
    agents: usize,
) {
    let name = format!("{tag}-warm");
    let deployed = c
        .deploy(DeployRequest {
            request_id: name.clone(),
            spec: Some(spec(&name, agents as u32)),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(succeeded(deployed).await, Some(agents as u32), "warm-up");
    // Every agent got one (and so its blobs), or the timed deploy would ship.
    let on: std::collections::HashSet<String> = c
        .list_clones(ListClonesRequest {
            deployment: name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .clones
        .into_iter()
        .map(|k| k.agent_id)
        .collect();
    assert_eq!(on.len(), agents, "the warm-up reached every agent");
    assert_eq!(
        undeploy(c, format!("{name}-undeploy"), &name).await,
        Some(agents as u32),
        "warm-up's undeploy"
    );
    println!("    agents warmed (untimed): each holds the kernel and the base image");
}

/// With `NAPALM_BENCH_PERF_CTL=FIFO`, tells a `perf record -D -1 --control fifo:FIFO`
/// started beside the bench to `enable` or `disable` its sampling: a profile of the timed
/// deploy alone, without the agents' start or the idle and listing figures.
fn perf_control(command: &str) {
    if let Ok(fifo) = std::env::var("NAPALM_BENCH_PERF_CTL") {
        std::fs::write(&fifo, format!("{command}\n")).unwrap();
    }
}

/// A run's directories, removed when dropped. `main` keeps them until the end: removing
/// tens of thousands of inodes just before the next run slows that run's file creation on
/// ext4 (its inode allocator skips recently deleted inodes), which no deploy meets in use.
struct Leftovers {
    _dirs: [tempfile::TempDir; 2],
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if let Ok(dir) = std::env::var("NAPALM_BENCH_AGENTS_CHILD") {
        return agents_child(&dir);
    }
    if let Ok(addr) = std::env::var("NAPALM_BENCH_HOLDERS_CHILD") {
        return held::child(&addr);
    }
    let clones = env("NAPALM_BENCH_CLONES", 1000) as u32;
    let agents = env("NAPALM_BENCH_AGENTS", 50);
    let runs = env("NAPALM_BENCH_RUNS", 1).max(1);
    let baseline = env("NAPALM_BENCH_BASELINE", 1) != 0;
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!(
        "deploy: {clones} clones over {agents} agents, each on a libvirt test driver of its own, end to end over gRPC"
    );
    // NAPALM_BENCH_LAYERS=initramfs|nfs|both (default both): each clone's layer appended
    // to its own initramfs, or served over NFS with one shared image per agent.
    let modes: Vec<bool> = match std::env::var("NAPALM_BENCH_LAYERS").as_deref() {
        Ok("initramfs") => vec![false],
        Ok("nfs") => vec![true],
        _ => vec![true, false],
    };
    let mut fast = Duration::ZERO;
    let mut fast_nfs = false;
    let mut by_mode = Vec::new();
    let mut keep = Vec::new();
    // NAPALM_BENCH_STORES=redb|etcd|redb,etcd (default redb): the registry's store.
    let stores: Vec<(Store, &str)> = std::env::var("NAPALM_BENCH_STORES")
        .unwrap_or_else(|_| "redb".into())
        .split(',')
        .map(|s| match s.trim() {
            "etcd" => (Store::Etcd, "etcd"),
            "redb" | "" => (Store::Redb, "redb"),
            other => {
                panic!("NAPALM_BENCH_STORES: unknown store {other:?}; use redb, etcd or redb,etcd")
            }
        })
        .collect();
    let runs_of = stores
        .iter()
        .flat_map(|s| modes.iter().map(move |m| (*s, *m)));
    for ((store, store_name), over_nfs) in runs_of {
        let label = match (over_nfs, stores.len()) {
            (true, 1) => "layers over NFS".to_owned(),
            (false, 1) => "layers in initramfs".to_owned(),
            (true, _) => format!("layers over NFS, {store_name}"),
            (false, _) => format!("layers in initramfs, {store_name}"),
        };
        let mut times = Vec::new();
        for i in 0..runs {
            let (took, phases, dirs) = rt.block_on(run(
                clones,
                agents,
                32,
                &format!("benchfast{i}"),
                over_nfs,
                store,
            ));
            keep.push(dirs);
            println!(
                "  run {i}, {label}, concurrency 32: {:.2} s",
                took.as_secs_f64()
            );
            phases.print();
            times.push(took);
        }
        fast = median(times);
        fast_nfs = over_nfs;
        println!(
            "  {label}, concurrency 32: {:>7.2} s  ({:>6.0} clones/s), median of {runs}",
            fast.as_secs_f64(),
            f64::from(clones) / fast.as_secs_f64(),
        );
        by_mode.push((label, fast));
    }
    if let [(a, ta), rest @ ..] = by_mode.as_slice() {
        for (b, tb) in rest {
            println!(
                "  {b} takes {:.2}x the time of {a} (same run)",
                tb.as_secs_f64() / ta.as_secs_f64()
            );
        }
    }
    if baseline {
        // The baseline ships the last mode measured above one clone at a time.
        let (base, _, dirs) =
            rt.block_on(run(clones, agents, 1, "benchseq", fast_nfs, Store::Redb));
        keep.push(dirs);
        println!(
            "  concurrency 1, same layers: {:>7.2} s  ({:>6.0} clones/s, baseline; concurrency 32 is {:.1}x)",
            base.as_secs_f64(),
            f64::from(clones) / base.as_secs_f64(),
            base.as_secs_f64() / fast.as_secs_f64()
        );
    }
}
