//! The control loop's reconcile step over 10,000 clones on 500 agents (issue #9 goal: a
//! pass with nothing to do under 50 ms), with nothing to do and with 5 % drift (clones
//! failed, unplaced, on a lost agent, and surplus ones), against a baseline measured in the
//! same run: the obvious reconcile that looks each record's agent up by scanning the agent
//! list. The pass's store read (every clone record of the deployment from the embedded
//! redb store) is timed beside it.
//!
//! Run: `cargo bench -p napalm-coordinator --bench reconcile`

// A benchmark harness: a failed step should stop it loudly.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use napalm_coordinator::clock::SystemClock;
use napalm_coordinator::deploy::reconcile::{names, reconcile};
use napalm_coordinator::registry::{Registry, CLONES};
use napalm_coordinator::store::Txn;
use napalm_proto::v1::{Agent, AgentState, Clone, ClonePhase, DeploymentSpec};

const CLONES_N: u32 = 10_000;
const AGENTS: usize = 500;
const RUNS: usize = 9;

fn spec() -> DeploymentSpec {
    DeploymentSpec {
        name: "big".into(),
        count: CLONES_N,
        ..Default::default()
    }
}

fn agents() -> Vec<Agent> {
    (0..AGENTS)
        .map(|i| Agent {
            id: format!("agent-{i:03}"),
            name: format!("node{i:03}"),
            state: AgentState::Ready as i32,
            ..Default::default()
        })
        .collect()
}

/// Every clone registered on its agent: nothing to do.
fn converged() -> Vec<Clone> {
    names(&spec())
        .into_iter()
        .enumerate()
        .map(|(i, name)| Clone {
            name,
            deployment: "big".into(),
            index: i as u32 + 1,
            agent_id: format!("agent-{:03}", i % AGENTS),
            phase: ClonePhase::Registered as i32,
            ..Default::default()
        })
        .collect()
}

/// 5 % drift: 1 % failed, 1 % unplaced, 1 % missing, 1 % on a lost agent, 1 % surplus.
fn drifted() -> (Vec<Clone>, Vec<Agent>, HashSet<String>) {
    let mut records = converged();
    let n = records.len();
    for (i, c) in records.iter_mut().enumerate() {
        match i % 100 {
            0 => c.phase = ClonePhase::Failed as i32,
            1 => c.agent_id.clear(),
            _ => {}
        }
    }
    records.retain(|c| c.index % 100 != 3);
    for k in 0..n / 100 {
        records.push(Clone {
            name: format!("big-{:05}", CLONES_N as usize + 1 + k),
            deployment: "big".into(),
            agent_id: "agent-000".into(),
            phase: ClonePhase::Registered as i32,
            ..Default::default()
        });
    }
    let mut agents = agents();
    // Agents 495–499 are lost: their 100 clones go elsewhere.
    for a in agents.iter_mut().skip(AGENTS - 5) {
        a.state = AgentState::Down as i32;
    }
    let lost = agents
        .iter()
        .skip(AGENTS - 5)
        .map(|a| a.id.clone())
        .collect();
    (records, agents, lost)
}

/// Baseline: for each record, scan the agent list for its agent; for each wanted name, scan
/// the records.
fn naive(spec: &DeploymentSpec, records: &[Clone], agents: &[Agent]) -> usize {
    let mut actions = 0;
    for n in names(spec) {
        if !records.iter().any(|c| c.name == n) {
            actions += 1;
        }
    }
    for c in records {
        let agent = agents.iter().find(|a| a.id == c.agent_id);
        if c.agent_id.is_empty()
            || c.phase == ClonePhase::Failed as i32
            || agent.is_none_or(|a| a.state == AgentState::Down as i32)
        {
            actions += 1;
        }
    }
    actions
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut runs = Vec::new();
    let mut out = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        out = black_box(f());
        runs.push(t.elapsed());
    }
    (median(runs), out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let spec = spec();
    let agents = agents();
    let records = converged();
    let none = HashSet::new();
    let (idle, idle_actions) = time(|| reconcile(&spec, &records, &agents, &none).actions.len());
    assert_eq!(idle_actions, 0);
    let (drecords, dagents, lost) = drifted();
    let (drift, drift_actions) =
        time(|| reconcile(&spec, &drecords, &dagents, &lost).actions.len());
    let (base, _) = time(|| naive(&spec, &drecords, &dagents));

    // The pass's read of the records from the embedded store.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let read = rt.block_on(async {
        let store = napalm_coordinator::store::open(dir.path().join("r.redb").to_str().unwrap())
            .await
            .unwrap();
        let reg = Registry::new(store, Arc::new(SystemClock));
        for chunk in records.chunks(500) {
            let mut txn = Txn::new();
            for c in chunk {
                txn = txn.put(
                    format!("{CLONES}{}", c.name),
                    prost::Message::encode_to_vec(c),
                );
            }
            reg.commit(txn).await.unwrap();
        }
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            let t = Instant::now();
            let got = reg.list_clones("big").await.unwrap();
            runs.push(t.elapsed());
            assert_eq!(got.len(), CLONES_N as usize);
        }
        median(runs)
    });

    println!("reconcile, {CLONES_N} clones over {AGENTS} agents, median of {RUNS}:");
    println!("  nothing to do:        {:8.2} ms", ms(idle));
    println!(
        "  5 % drift:            {:8.2} ms ({drift_actions} actions)",
        ms(drift)
    );
    println!(
        "  baseline (scans), 5 % drift: {:8.2} ms, so reconcile is {:.0}x faster",
        ms(base),
        base.as_secs_f64() / drift.as_secs_f64().max(1e-9)
    );
    println!(
        "  store read of the records (redb): {:8.2} ms; a pass with nothing to do: {:.2} ms (goal < 50 ms)",
        ms(read),
        ms(read + idle)
    );
}
