//! Where a deployment's clones go: names, the hypervisor on an agent, placement through
//! the scheduler (with one reason per agent when a clone cannot go anywhere), and the sweep
//! of domains an agent runs for a deployment that the registry does not place there.

use std::collections::{BTreeMap, HashMap};

use napalm_proto::v1::{
    deploy_progress, Agent, AgentRejection, AgentState, DeploymentSpec, Hypervisor,
    PlacementFailure, PlacementStrategy,
};

use super::ship::Agents;
use crate::scheduler::{self, Amount, Candidate, Demand, Placement, Rejection};

/// Clone names of a deployment: `NAME-01` … (at least two digits).
pub(super) fn names(spec: &DeploymentSpec) -> Vec<String> {
    let width = spec.count.to_string().len().max(2);
    (1..=spec.count)
        .map(|i| format!("{}-{i:0width$}", spec.name))
        .collect()
}

fn hypervisors(a: &Agent) -> Vec<Hypervisor> {
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

/// Places `clones` on `agents`; `avoid` lists agents each clone already failed on.
pub(super) fn place(
    policy: &scheduler::Policy,
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
    scheduler::place(&demand, clones, &candidates, policy)
}

/// The wire form of an unplaced clone.
pub(super) fn unplaced(clone: &str, why: &[Rejection]) -> deploy_progress::Event {
    deploy_progress::Event::Unplaced(failure(clone, why))
}

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

/// Deletes domains labelled with `deployment` that the registry does not place on that
/// agent (`assigned`: clone → agent id). Unreachable agents are skipped.
pub(super) async fn sweep_orphans(
    agents: &Agents,
    all: &[Agent],
    deployment: &str,
    assigned: &HashMap<String, String>,
) -> usize {
    let mut removed = 0;
    for a in all.iter().filter(|a| a.state != AgentState::Down as i32) {
        let labels = HashMap::from([("deployment".to_owned(), deployment.to_owned())]);
        let Ok(domains) = agents.domains_labelled(&a.grpc_endpoint, labels).await else {
            continue;
        };
        for d in domains {
            if assigned.get(&d.name) == Some(&a.id) {
                continue;
            }
            tracing::warn!(domain = %d.name, agent = %a.id, "removing a domain the registry does not place here");
            if agents
                .delete(
                    &a.grpc_endpoint,
                    &d.name,
                    format!("orphan-{}-{}", a.id, d.name),
                )
                .await
                .is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}
