//! Agents' heartbeats on the embedded registry, on disk: each heartbeat commits its
//! agent's record, and the registry takes about 100 a second from 500 agents (the
//! heartbeat policy: a 10 s TTL, a beat every 5 s). Committed durably, each waits for a
//! disk flush, and every other durable change (a deploy's placements, a registration)
//! queues behind them; the registry now commits them `Durability::Eventual` (flushed with
//! the next durable commit, or within a second).
//!
//! Against a baseline measured in the same run: the same record change committed durably,
//! as `Registry::heartbeat` did before. Printed, for each: heartbeats a second flat out
//! (32 at once), and beside 500 agents' beats at the policy's pace, how long a durable
//! commit of another record takes (p50, p99) and how many one writer gets through.
//!
//! Run: `cargo bench -p napalm-coordinator --bench heartbeats`. `NAPALM_BENCH_DIR`: where
//! the registry file goes (default: the temporary directory; on tmpfs a flush costs
//! nothing, so run it on the disk a coordinator would use). `NAPALM_BENCH_SECONDS`: how
//! long each paced phase lasts (default 10). `NAPALM_BENCH_RUNS`: rounds of the three
//! phases, alternated (default 3).

// A benchmark harness: a failed step should stop it loudly.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use napalm_coordinator::clock::{timestamp, SystemClock};
use napalm_coordinator::registry::agents::HeartbeatPolicy;
use napalm_coordinator::registry::{Registry, AGENTS, CLONES};
use napalm_coordinator::store::{Durability, Txn};
use napalm_proto::v1::{Agent, HeartbeatRequest, RegisterAgentRequest};
use prost::Message as _;

// The deploy bench's measures of this process (CPU time by getrusage); it also has
// others this bench does not use.
#[allow(dead_code)]
#[path = "deploy/machine.rs"]
mod machine;

/// `name` from the environment as a number, `default` when unset or not a number.
fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const AGENT_COUNT: usize = 500;
const FLAT_OUT: usize = 20_000;
const AT_ONCE: usize = 32;

#[derive(Clone, Copy, PartialEq)]
enum Beats {
    /// No heartbeats: the durable writer alone.
    None,
    /// The record change a heartbeat makes, committed durably (the baseline).
    Durable,
    /// `Registry::heartbeat` as it is.
    Registry,
}

impl Beats {
    fn name(self) -> &'static str {
        match self {
            Beats::None => "no heartbeats",
            Beats::Durable => "heartbeats committed durably (before)",
            Beats::Registry => "Registry::heartbeat (eventual)",
        }
    }
}

fn id(i: usize) -> String {
    format!("agent-{i:03}")
}

async fn beat(reg: &Registry, policy: &HeartbeatPolicy, i: usize, how: Beats) {
    match how {
        Beats::None => {}
        Beats::Durable => {
            let now = timestamp(reg.clock().now());
            reg.update_with::<Agent, _>(
                &format!("{AGENTS}{}", id(i)),
                Durability::Immediate,
                |old| {
                    Ok(old.map(|mut a| {
                        a.last_heartbeat = Some(now);
                        a
                    }))
                },
            )
            .await
            .unwrap();
        }
        Beats::Registry => {
            let r = reg
                .heartbeat(
                    HeartbeatRequest {
                        agent_id: id(i),
                        ..Default::default()
                    },
                    policy,
                )
                .await
                .unwrap();
            assert!(!r.reregister);
        }
    }
}

/// Heartbeats a second with `AT_ONCE` callers beating flat out, and the CPU time each
/// took.
async fn flat_out(reg: &Registry, policy: &HeartbeatPolicy, how: Beats) -> (f64, Duration) {
    let c = machine::cpu_used();
    let t = Instant::now();
    let tasks: Vec<_> = (0..AT_ONCE)
        .map(|k| {
            let reg = reg.clone();
            let policy = *policy;
            tokio::spawn(async move {
                for n in (k..FLAT_OUT).step_by(AT_ONCE) {
                    beat(&reg, &policy, n % AGENT_COUNT, how).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (
        FLAT_OUT as f64 / t.elapsed().as_secs_f64(),
        (machine::cpu_used() - c) / FLAT_OUT as u32,
    )
}

/// For `seconds`, every agent beats at the policy's interval (spread evenly) while one
/// writer commits another record durably, one change after the other: the writer's
/// commit latencies.
async fn paced(
    reg: &Registry,
    policy: &HeartbeatPolicy,
    how: Beats,
    seconds: u64,
) -> (Vec<Duration>, usize) {
    let interval = policy.interval(AGENT_COUNT);
    let per_beat = interval / AGENT_COUNT as u32;
    let stop = Instant::now() + Duration::from_secs(seconds);
    let pacer = {
        let reg = reg.clone();
        let policy = *policy;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(per_beat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut beats = tokio::task::JoinSet::new();
            let mut n = 0;
            while Instant::now() < stop && how != Beats::None {
                tick.tick().await;
                let reg = reg.clone();
                beats.spawn(async move { beat(&reg, &policy, n % AGENT_COUNT, how).await });
                n += 1;
            }
            while beats.join_next().await.is_some() {}
            n
        })
    };
    let mut latencies = Vec::new();
    let mut v = 0u64;
    while Instant::now() < stop {
        v += 1;
        let t = Instant::now();
        reg.commit(
            Txn::new()
                .put(format!("{CLONES}writer"), v.to_le_bytes().to_vec())
                .durability(Durability::Immediate),
        )
        .await
        .unwrap();
        latencies.push(t.elapsed());
    }
    let beats = pacer.await.unwrap();
    latencies.sort();
    (latencies, beats)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let seconds = env("NAPALM_BENCH_SECONDS", 10) as u64;
    let runs = env("NAPALM_BENCH_RUNS", 3);
    let base = std::env::var_os("NAPALM_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).unwrap();
    let path = dir.path().join("registry.redb");
    let store = napalm_coordinator::store::open(path.to_str().unwrap())
        .await
        .unwrap();
    let reg = Registry::new(store, Arc::new(SystemClock));
    let policy = HeartbeatPolicy::default();
    for i in 0..AGENT_COUNT {
        reg.register_agent(
            RegisterAgentRequest {
                request_id: format!("r-{i}"),
                id: id(i),
                name: format!("node{i:03}"),
                grpc_endpoint: format!("http://10.0.{}.{}:7701", i / 250, i % 250 + 1),
                ..Default::default()
            },
            napalm_proto::v1::AgentSource::Static,
            &policy,
        )
        .await
        .unwrap();
    }
    let record = reg
        .get::<Agent>(&format!("{AGENTS}{}", id(0)))
        .await
        .unwrap()
        .unwrap()
        .0
        .encoded_len();
    let interval = policy.interval(AGENT_COUNT);
    println!(
        "{AGENT_COUNT} agents on the embedded registry at {} (agent record {record} B); \
         the policy asks each for a beat every {interval:?}: {:.0} a second",
        path.display(),
        AGENT_COUNT as f64 / interval.as_secs_f64()
    );

    let modes = [Beats::None, Beats::Durable, Beats::Registry];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut cpus: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); modes.len()];
    let mut commits: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for run in 1..=runs {
        for (m, how) in modes.iter().enumerate() {
            if *how != Beats::None {
                let (r, c) = flat_out(&reg, &policy, *how).await;
                println!(
                    "run {run}: {}: {r:.0} heartbeats/s flat out, {c:.2?} of CPU each",
                    how.name()
                );
                rates[m].push(r);
                cpus[m].push(c.as_secs_f64() * 1e6);
            }
            let (l, beats) = paced(&reg, &policy, *how, seconds).await;
            println!(
                "run {run}: {}: {beats} beats in {seconds} s; a durable commit beside them \
                 p50 {:.2?}, p99 {:.2?}, {} in {seconds} s",
                how.name(),
                pct(&l, 0.5),
                pct(&l, 0.99),
                l.len()
            );
            commits[m].push(l.len() as f64 / seconds as f64);
            lat[m].extend(l);
        }
    }
    println!();
    println!("| {runs} runs, alternated | heartbeats/s flat out (median) | CPU per heartbeat (median) | durable commit beside the beats: p50, p99 | durable commits/s (median) |");
    println!("|---|---|---|---|---|");
    for (m, how) in modes.iter().enumerate() {
        lat[m].sort();
        let (rate, cpu) = if rates[m].is_empty() {
            ("-".to_owned(), "-".to_owned())
        } else {
            (
                format!("{:.0}", median(rates[m].clone())),
                format!("{:.0} µs", median(cpus[m].clone())),
            )
        };
        println!(
            "| {} | {rate} | {cpu} | {:.2?}, {:.2?} | {:.0} |",
            how.name(),
            pct(&lat[m], 0.5),
            pct(&lat[m], 0.99),
            median(commits[m].clone())
        );
    }
    let (d, e) = (median(rates[1].clone()), median(rates[2].clone()));
    println!(
        "eventual / durable: heartbeats flat out {:.1}x; CPU per heartbeat {:.2}x; durable \
         commits/s beside them {:.2}x",
        e / d,
        median(cpus[2].clone()) / median(cpus[1].clone()),
        median(commits[2].clone()) / median(commits[1].clone())
    );
}
