//! Place, the second of the pipeline's three layers: the clones reconcile wants placed go
//! to agents through the pure [`crate::scheduler`] (capacity, hypervisor, arch, labels,
//! anti-affinity, strategy), with one reason per agent when a clone can go nowhere; and
//! the hypervisor a clone runs under on its agent.

use std::collections::{BTreeMap, HashMap};

use napalm_proto::v1::{
    deploy_progress, Agent, AgentRejection, AgentState, DeploymentSpec, Hypervisor,
    PlacementFailure, PlacementStrategy,
};

use crate::scheduler::{self, Amount, Candidate, Demand, Placement, Rejection};

pub(super) fn hypervisors(a: &Agent) -> Vec<Hypervisor> {
    a.capabilities
        .as_ref()
        .map(|c| {
            c.hypervisors
                .iter()
                .filter_map(|h| Hypervisor::try_from(*h).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The hypervisor a clone runs under on agent `a`.
pub(super) fn hypervisor_on(spec: &DeploymentSpec, a: &Agent) -> Hypervisor {
    let wanted = Hypervisor::try_from(spec.hypervisor).unwrap_or(Hypervisor::Unspecified);
    if wanted != Hypervisor::Unspecified {
        return wanted;
    }
    let hs = hypervisors(a);
    [
        Hypervisor::Kvm,
        Hypervisor::Qemu,
        Hypervisor::Xen,
        Hypervisor::Test,
    ]
    .into_iter()
    .find(|h| hs.contains(h))
    .unwrap_or(Hypervisor::Qemu)
}

/// Places clone `c`, which failed on the agents it lists (`failed_agents`), on another
/// agent when there is one; else on another than the one it failed on last (the first
/// may be back); else anywhere.
pub(super) fn place_failed(
    cfg: &super::DeployConfig,
    spec: &DeploymentSpec,
    c: &napalm_proto::v1::Clone,
    agents: &[Agent],
    held: &HashMap<String, u32>,
) -> Placement {
    let last: Vec<String> = c.failed_agents.last().cloned().into_iter().collect();
    let mut tried = Placement::default();
    for avoid in [&c.failed_agents, &last, &Vec::new()] {
        let pool_of: Vec<usize> = (0..agents.len())
            .filter(|i| !avoid.contains(&agents[*i].id))
            .collect();
        let pool: Vec<Agent> = pool_of.iter().map(|i| agents[*i].clone()).collect();
        tried = place(cfg, spec, std::slice::from_ref(&c.name), &pool, held);
        if let Some((name, i)) = tried.placed.pop() {
            return Placement {
                placed: vec![(name, pool_of[i])],
                ..Placement::default()
            };
        }
    }
    tried
}

/// Places `clones` on `agents` under `cfg`'s capacity policy (and, with
/// [`guest_hugepages`](super::DeployConfig::guest_hugepages), by each agent's huge page
/// pool).
pub(super) fn place(
    cfg: &super::DeployConfig,
    spec: &DeploymentSpec,
    clones: &[String],
    agents: &[Agent],
    held: &HashMap<String, u32>,
) -> Placement {
    let candidates: Vec<Candidate> = agents
        .iter()
        .map(|a| {
            let host = a
                .capabilities
                .as_ref()
                .and_then(|c| c.host.clone())
                .unwrap_or_default();
            let alloc = a.allocated.unwrap_or_default();
            // QEMU and KVM clones get their RAM from the pool with --guest-hugepages
            // (deploy/xml.rs): they are placed by it.
            let huge_pages = (cfg.guest_hugepages
                && matches!(hypervisor_on(spec, a), Hypervisor::Qemu | Hypervisor::Kvm))
            .then(|| host.huge_pages.unwrap_or_default().total_bytes);
            Candidate {
                id: a.id.clone(),
                name: a.name.clone(),
                state: AgentState::try_from(a.state).unwrap_or_default(),
                hypervisors: hypervisors(a),
                arch: host.arch.clone(),
                host: Amount {
                    vcpus: u64::from(host.cpus),
                    memory: host.memory_bytes,
                },
                allocated: Amount {
                    vcpus: u64::from(alloc.vcpus),
                    memory: alloc.memory_bytes,
                },
                huge_pages,
                labels: a
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                deployment_clones: held.get(&a.id).copied().unwrap_or(0),
            }
        })
        .collect();
    let r = spec.resources.unwrap_or_default();
    let demand = Demand {
        size: Amount {
            vcpus: u64::from(r.vcpus),
            memory: r.memory_bytes,
        },
        hypervisor: Hypervisor::try_from(spec.hypervisor).unwrap_or_default(),
        arch: spec.arch.clone(),
        selector: spec
            .agent_selector
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        max_per_agent: spec.max_per_agent,
        strategy: PlacementStrategy::try_from(spec.strategy).unwrap_or_default(),
    };
    scheduler::place(&demand, clones, &candidates, &cfg.policy)
}

/// The wire form of an unplaced clone.
pub(super) fn unplaced(clone: &str, why: &[Rejection]) -> deploy_progress::Event {
    deploy_progress::Event::Unplaced(failure(clone, why))
}

/// Why a clone could not be placed, per agent.
pub(super) fn failure(clone: &str, why: &[Rejection]) -> PlacementFailure {
    PlacementFailure {
        clone: clone.into(),
        rejections: why
            .iter()
            .map(|r| AgentRejection {
                agent_id: r.agent_id.clone(),
                agent_name: r.agent_name.clone(),
                reason: r.reason.clone(),
            })
            .collect(),
    }
}

/// Why a deploy is refused: how many of `requested` clones to place fit, and why the next
/// one fits on no agent (one line per agent).
pub(super) fn shortfall(spec: &DeploymentSpec, requested: usize, p: &Placement) -> String {
    let mut s = format!(
        "{requested} clone(s) of {:?} to place, {} fit, {} do not; nothing was written.",
        spec.name,
        p.placed.len(),
        p.unplaced.len()
    );
    if let Some((clone, why)) = p.unplaced.first() {
        s.push_str(&format!("\n  {clone} fits on no agent:"));
        let who = |r: &Rejection| format!("{} ({})", r.agent_name, r.agent_id);
        let width = why.iter().map(|r| who(r).len()).max().unwrap_or(0);
        for r in why {
            s.push_str(&format!("\n    {:width$}  {}", who(r), r.reason));
        }
    }
    s.push_str(
        "\nDeploy fewer clones or smaller ones, add agents, or pass --allow-pending to keep \
         the clones that do not fit pending until capacity appears.",
    );
    s
}
