//! Scheduler throughput: 10,000 clones over 500 agents (issue #6 goal: ≥ 10,000
//! placements/s; Nomad published 3,750/s on its C1M run), against a baseline measured in
//! the same run: the obvious scheduler that scans every agent for every clone.
//!
//! Run: `cargo bench -p napalm-coordinator --bench scheduler`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use napalm_coordinator::scheduler::{place, Amount, Candidate, Demand, Policy};
use napalm_proto::v1::{AgentState, Hypervisor, PlacementStrategy};

const CLONES: usize = 10_000;
const AGENTS: usize = 500;
const RUNS: usize = 7;

fn agents() -> Vec<Candidate> {
    (0..AGENTS)
        .map(|i| Candidate {
            id: format!("agent-{i:03}"),
            name: format!("node{i:03}"),
            state: AgentState::Ready,
            hypervisors: vec![Hypervisor::Kvm, Hypervisor::Qemu],
            arch: "x86_64".into(),
            host: Amount {
                vcpus: 16 + (i as u64 % 4) * 8,
                memory: (64 + (i as u64 % 3) * 32) << 30,
            },
            allocated: Amount::default(),
            huge_pages: None,
            labels: BTreeMap::new(),
            deployment_clones: 0,
        })
        .collect()
}

/// Baseline: scan all agents for each clone, pick the least loaded that fits.
fn scan(d: &Demand, clones: &[String], agents: &[Candidate], p: &Policy) -> usize {
    let mut alloc: Vec<Amount> = agents.iter().map(|a| a.allocated).collect();
    let mut placed = 0;
    for _ in clones {
        let mut best: Option<(u64, usize)> = None;
        for (i, a) in agents.iter().enumerate() {
            let cap_c = a.host.vcpus * p.cpu_overcommit;
            let cap_m = a.host.memory - p.memory_reserve;
            if cap_c - alloc[i].vcpus < d.size.vcpus || cap_m - alloc[i].memory < d.size.memory {
                continue;
            }
            let l = (alloc[i].vcpus * 1_000_000 / cap_c).max(alloc[i].memory / (cap_m / 1_000_000));
            if best.is_none_or(|(bl, _)| l < bl) {
                best = Some((l, i));
            }
        }
        if let Some((_, i)) = best {
            alloc[i].vcpus += d.size.vcpus;
            alloc[i].memory += d.size.memory;
            placed += 1;
        }
    }
    placed
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let agents = agents();
    let clones: Vec<String> = (0..CLONES).map(|i| format!("clone{i:05}")).collect();
    let policy = Policy::default();
    let demand = |strategy| Demand {
        size: Amount {
            vcpus: 1,
            memory: 512 << 20,
        },
        hypervisor: Hypervisor::Kvm,
        arch: "x86_64".into(),
        selector: BTreeMap::new(),
        max_per_agent: 0,
        strategy,
    };
    let mut results = Vec::new();
    for (label, strategy) in [
        ("spread", PlacementStrategy::Spread),
        ("binpack", PlacementStrategy::Binpack),
    ] {
        let d = demand(strategy);
        let times: Vec<Duration> = (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                let p = place(
                    black_box(&d),
                    black_box(&clones),
                    black_box(&agents),
                    &policy,
                );
                let e = t.elapsed();
                assert_eq!(p.placed.len(), CLONES);
                e
            })
            .collect();
        results.push((label, median(times)));
    }
    let d = demand(PlacementStrategy::Spread);
    let base: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            let n = scan(
                black_box(&d),
                black_box(&clones),
                black_box(&agents),
                &policy,
            );
            let e = t.elapsed();
            assert_eq!(n, CLONES);
            e
        })
        .collect();
    let base = median(base);
    let rate = |t: Duration| CLONES as f64 / t.as_secs_f64();
    println!("scheduler: {CLONES} clones over {AGENTS} agents, median of {RUNS} runs");
    for (label, t) in &results {
        println!(
            "  {label:8} {:>10.1} ms  {:>12.0} placements/s  ({:.1}x the scan baseline)",
            t.as_secs_f64() * 1e3,
            rate(*t),
            base.as_secs_f64() / t.as_secs_f64()
        );
    }
    println!(
        "  {:8} {:>10.1} ms  {:>12.0} placements/s  (baseline: scan all agents per clone)",
        "scan",
        base.as_secs_f64() * 1e3,
        rate(base)
    );
}
