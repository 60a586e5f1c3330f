//! Placement: spread and binpack, capacity, constraints, anti-affinity, reasons per agent,
//! and agreement with a straightforward reference implementation on random inputs.

use std::collections::BTreeMap;

use napalm_coordinator::scheduler::{place, Amount, Candidate, Demand, Policy};
use napalm_proto::v1::{AgentState, Hypervisor, PlacementStrategy};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn agent(i: usize, cpus: u64, mem: u64) -> Candidate {
    Candidate {
        id: format!("id{i}"),
        name: format!("node{i}"),
        state: AgentState::Ready,
        hypervisors: vec![Hypervisor::Qemu],
        arch: "x86_64".into(),
        host: Amount {
            vcpus: cpus,
            memory: mem,
        },
        allocated: Amount::default(),
        huge_pages: None,
        labels: BTreeMap::new(),
        deployment_clones: 0,
    }
}

fn demand(strategy: PlacementStrategy) -> Demand {
    Demand {
        size: Amount {
            vcpus: 1,
            memory: 512 * MIB,
        },
        hypervisor: Hypervisor::Unspecified,
        arch: String::new(),
        selector: BTreeMap::new(),
        max_per_agent: 0,
        strategy,
    }
}

fn names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("clone{i:02}")).collect()
}

fn policy() -> Policy {
    Policy {
        cpu_overcommit: 4,
        memory_reserve: 0,
    }
}

fn per_agent(p: &napalm_coordinator::scheduler::Placement, m: usize) -> Vec<usize> {
    let mut counts = vec![0; m];
    for (_, i) in &p.placed {
        counts[*i] += 1;
    }
    counts
}

#[test]
fn spread_balances_and_binpack_fills_first() {
    let agents = vec![agent(0, 2, 8 * GIB), agent(1, 2, 8 * GIB)];
    let p = place(
        &demand(PlacementStrategy::Spread),
        &names(8),
        &agents,
        &policy(),
    );
    assert_eq!(per_agent(&p, 2), [4, 4]);
    let p = place(
        &demand(PlacementStrategy::Binpack),
        &names(6),
        &agents,
        &policy(),
    );
    assert_eq!(per_agent(&p, 2), [6, 0]);
    assert!(p.unplaced.is_empty());
}

#[test]
fn capacity_is_respected_and_every_agent_says_why() {
    let mut agents = vec![agent(0, 1, 2 * GIB), agent(1, 1, 1024 * MIB)];
    agents.push(Candidate {
        state: AgentState::Draining,
        ..agent(2, 64, 64 * GIB)
    });
    agents.push(Candidate {
        hypervisors: vec![Hypervisor::Xen],
        ..agent(3, 64, 64 * GIB)
    });
    let mut d = demand(PlacementStrategy::Spread);
    d.hypervisor = Hypervisor::Qemu;
    // node0 fits 4 (4 vCPU, 2 GiB), node1 fits 2 (memory): 6 of 8.
    let p = place(&d, &names(8), &agents, &policy());
    assert_eq!(p.placed.len(), 6);
    assert_eq!(p.unplaced.len(), 2);
    let (clone, why) = &p.unplaced[0];
    assert_eq!(clone, "clone07");
    let reasons: Vec<&str> = why.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(why.len(), 4, "one reason per agent: {reasons:?}");
    assert!(
        reasons[0].contains("needs 1 vCPU and 512 MiB, 0 vCPU and 0 MiB free"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("0 MiB free"), "{reasons:?}");
    assert_eq!(reasons[2], "agent is draining");
    assert_eq!(reasons[3], "does not run qemu (runs xen)");
}

#[test]
fn arch_labels_and_anti_affinity() {
    let mut agents: Vec<Candidate> = (0..3).map(|i| agent(i, 16, 64 * GIB)).collect();
    agents[0].arch = "aarch64".into();
    agents[1].labels.insert("rack".into(), "r1".into());
    agents[2].labels.insert("rack".into(), "r1".into());
    let mut d = demand(PlacementStrategy::Binpack);
    d.arch = "x86_64".into();
    d.selector.insert("rack".into(), "r1".into());
    d.max_per_agent = 2;
    let p = place(&d, &names(5), &agents, &policy());
    assert_eq!(per_agent(&p, 3), [0, 2, 2]);
    let why = &p.unplaced[0].1;
    assert_eq!(why[0].reason, "architecture aarch64 is not x86_64");
    assert!(
        why[1].reason.contains("max 2 per agent"),
        "{}",
        why[1].reason
    );
    agents[1].labels.clear();
    let p = place(&d, &names(1), &agents, &policy());
    assert_eq!(p.placed, [("clone01".to_string(), 2)]);
    let p = place(&d, &names(3), &agents, &policy());
    assert_eq!(p.unplaced.len(), 1);
    assert_eq!(p.unplaced[0].1[1].reason, "lacks label rack=r1");
}

#[test]
fn existing_allocations_count() {
    let mut agents = vec![agent(0, 2, 4 * GIB), agent(1, 2, 4 * GIB)];
    agents[0].allocated = Amount {
        vcpus: 6,
        memory: 3 * GIB,
    };
    let p = place(
        &demand(PlacementStrategy::Spread),
        &names(4),
        &agents,
        &policy(),
    );
    assert_eq!(
        per_agent(&p, 2),
        [0, 4],
        "node0 was already the more loaded"
    );
}

/// The obvious O(n*m) scheduler: scan all agents for each clone.
fn reference(
    d: &Demand,
    clones: &[String],
    agents: &[Candidate],
    pol: &Policy,
) -> Vec<Option<usize>> {
    let mut alloc: Vec<Amount> = agents.iter().map(|a| a.allocated).collect();
    let load = |a: &Candidate, al: Amount| {
        let cc = (a.host.vcpus * pol.cpu_overcommit).max(1) as u128;
        let cm = a.host.memory.saturating_sub(pol.memory_reserve).max(1) as u128;
        ((al.vcpus as u128 * 1_000_000 / cc).max(al.memory as u128 * 1_000_000 / cm)) as u64
    };
    clones
        .iter()
        .map(|_| {
            let mut best: Option<(u64, usize)> = None;
            for (i, a) in agents.iter().enumerate() {
                let fv = (a.host.vcpus * pol.cpu_overcommit).saturating_sub(alloc[i].vcpus);
                let fm = a
                    .host
                    .memory
                    .saturating_sub(pol.memory_reserve)
                    .saturating_sub(alloc[i].memory);
                if a.state != AgentState::Ready || fv < d.size.vcpus || fm < d.size.memory {
                    continue;
                }
                let l = load(a, alloc[i]);
                let better = match best {
                    None => true,
                    Some((bl, _)) => match d.strategy {
                        PlacementStrategy::Binpack => l > bl,
                        _ => l < bl,
                    },
                };
                if better {
                    best = Some((l, i));
                }
            }
            best.map(|(_, i)| {
                alloc[i].vcpus += d.size.vcpus;
                alloc[i].memory += d.size.memory;
                i
            })
        })
        .collect()
}

#[test]
fn matches_the_reference_scheduler_on_random_clusters() {
    // A small deterministic generator (xorshift) keeps the test reproducible.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    for round in 0..50 {
        let m = 1 + next(20) as usize;
        let agents: Vec<Candidate> = (0..m)
            .map(|i| {
                let mut a = agent(i, 1 + next(8), (1 + next(16)) * GIB);
                a.allocated = Amount {
                    vcpus: next(4),
                    memory: next(4) * 256 * MIB,
                };
                if next(10) == 0 {
                    a.state = AgentState::Down;
                }
                a
            })
            .collect();
        let strategy = if round % 2 == 0 {
            PlacementStrategy::Spread
        } else {
            PlacementStrategy::Binpack
        };
        let mut d = demand(strategy);
        d.size = Amount {
            vcpus: 1 + next(2),
            memory: (1 + next(4)) * 256 * MIB,
        };
        let clones = names(1 + next(100) as usize);
        let p = place(&d, &clones, &agents, &policy());
        let mut got: Vec<Option<usize>> = vec![None; clones.len()];
        for (c, i) in &p.placed {
            let idx = clones
                .iter()
                .position(|x| x == c)
                .expect("placed clone is one of ours");
            got[idx] = Some(*i);
        }
        assert_eq!(
            got,
            reference(&d, &clones, &agents, &policy()),
            "round {round}"
        );
    }
}

/// Untrusted (a spoofed advertisement) and revoked agents never take a clone, however
/// much room they have, and each says why; the one ready agent takes them all.
#[test]
fn untrusted_and_revoked_agents_are_never_placed_on() {
    let mut untrusted = agent(0, 64, 256 * GIB);
    untrusted.state = AgentState::Untrusted;
    let mut revoked = agent(1, 64, 256 * GIB);
    revoked.state = AgentState::Revoked;
    let ready = agent(2, 4, 8 * GIB);
    let agents = [untrusted, revoked, ready];
    let p = place(
        &demand(PlacementStrategy::Spread),
        &names(3),
        &agents,
        &policy(),
    );
    assert_eq!(per_agent(&p, 3), [0, 0, 3]);
    // With no ready agent, nothing is placed and the reasons name the states.
    let p = place(
        &demand(PlacementStrategy::Spread),
        &names(1),
        &agents[..2],
        &policy(),
    );
    assert!(p.placed.is_empty());
    let reasons: Vec<&str> = p.unplaced[0].1.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons, ["agent is untrusted", "agent is revoked"]);
}

/// Clones whose RAM comes from a huge page pool count against the pool, not the host's
/// memory (nor its reserve), and a clone that does not fit says so, naming the pool.
#[test]
fn clones_backed_by_huge_pages_are_placed_by_the_pool() {
    let with_pool = |i, pool| Candidate {
        huge_pages: Some(pool),
        ..agent(i, 64, 64 * GIB)
    };
    // 1.5 GiB of huge pages on a 64 GiB host: three 512 MiB clones.
    let agents = vec![with_pool(0, 1536 * MIB), with_pool(1, 0)];
    let reserve = Policy {
        memory_reserve: 60 * GIB,
        ..policy()
    };
    let p = place(
        &demand(PlacementStrategy::Spread),
        &names(4),
        &agents,
        &reserve,
    );
    assert_eq!(per_agent(&p, 2), [3, 0], "{p:?}");
    let (clone, why) = &p.unplaced[0];
    assert_eq!(clone, "clone04");
    assert_eq!(
        why[0].reason,
        "needs 1 vCPU and 512 MiB of huge pages, 253 vCPU and 0 MiB free (its huge page \
         pool holds 1536 MiB: raise the host's vm.nr_hugepages)"
    );
    assert!(why[1].reason.contains("pool holds 0 MiB"), "{why:?}");
    // Without a pool the same host takes its memory less the reserve: 4 GiB, 8 clones.
    let plain = vec![agent(0, 64, 64 * GIB)];
    let p = place(
        &demand(PlacementStrategy::Spread),
        &names(9),
        &plain,
        &reserve,
    );
    assert_eq!(p.placed.len(), 8);
    assert!(!p.unplaced[0].1[0].reason.contains("huge"), "{p:?}");
}
