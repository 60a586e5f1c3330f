//! Listing tables: `napalmctl agents`, `deployments` and `clones` (registry view), one
//! row per record, rendered in the chosen [`Output`] format.

use napalm_proto::v1::{AgentState, ClonePhase, DeploymentState, Hypervisor, RolloutState};
use serde_json::{json, Value};

use crate::output::{render, Output};

/// A proto enum's name without its prefix, lower case (`AGENT_STATE_READY` → `ready`).
pub(crate) fn state_name(s: &str, prefix: &str) -> String {
    s.trim_start_matches(prefix).to_lowercase()
}

fn mib(b: u64) -> u64 {
    b >> 20
}

fn seconds(d: prost_types::Duration) -> f64 {
    d.seconds as f64 + f64::from(d.nanos) / 1e9
}

/// An agent's state for the table: `untrusted (REASON)` / `revoked (REASON)` when the
/// coordinator recorded why, otherwise the state alone.
fn agent_state_cell(a: &napalm_proto::v1::Agent) -> String {
    let state = AgentState::try_from(a.state).unwrap_or_default();
    let name = state_name(state.as_str_name(), "AGENT_STATE_");
    if a.state_reason.is_empty() {
        name
    } else {
        format!("{name} ({})", a.state_reason)
    }
}

/// `napalmctl agents`: capacity and allocations of each agent. In a table an untrusted
/// or revoked agent's state says why; JSON and YAML keep `state` and `state_reason`
/// apart for scripts.
pub fn agents(output: Output, agents: &[napalm_proto::v1::Agent]) -> String {
    let rows: Vec<Value> = agents
        .iter()
        .map(|a| {
            let caps = a.capabilities.clone().unwrap_or_default();
            let host = caps.host.clone().unwrap_or_default();
            let alloc = a.allocated.unwrap_or_default();
            let state = AgentState::try_from(a.state).unwrap_or_default();
            json!({
                "name": a.name,
                "id": a.id,
                "state": if matches!(output, Output::Table) {
                    agent_state_cell(a)
                } else {
                    state_name(state.as_str_name(), "AGENT_STATE_")
                },
                "state_reason": a.state_reason,
                "endpoint": a.grpc_endpoint,
                "arch": host.arch,
                "cpus": host.cpus,
                "memory_mib": mib(host.memory_bytes),
                "clones": a.clone_count,
                "alloc_vcpus": alloc.vcpus,
                "alloc_mib": mib(alloc.memory_bytes),
                // The host's huge page pool (clones' RAM with --guest-hugepages).
                "hugepages_mib": mib(host.huge_pages.unwrap_or_default().total_bytes),
                "hugepages_free_mib": mib(host.huge_pages.unwrap_or_default().free_bytes),
                "hypervisors": caps.hypervisors.iter()
                    .filter_map(|h| Hypervisor::try_from(*h).ok())
                    .map(Hypervisor::short_name).collect::<Vec<_>>(),
            })
        })
        .collect();
    render(
        output,
        &[
            "name",
            "state",
            "endpoint",
            "hypervisors",
            "arch",
            "cpus",
            "memory_mib",
            "clones",
            "alloc_vcpus",
            "alloc_mib",
        ],
        &rows,
    )
}

/// `napalmctl deployments`.
pub fn deployments(output: Output, deployments: &[napalm_proto::v1::Deployment]) -> String {
    let rows: Vec<Value> = deployments
        .iter()
        .map(|d| {
            let spec = d.spec.clone().unwrap_or_default();
            let state = DeploymentState::try_from(d.state).unwrap_or_default();
            json!({
                "name": spec.name,
                "count": spec.count,
                "layers": spec.layers,
                "state": state_name(state.as_str_name(), "DEPLOYMENT_STATE_"),
                "revision": d.spec_revision,
                "rollout": d.rollout.as_ref().map(|r| state_name(
                    RolloutState::try_from(r.state).unwrap_or_default().as_str_name(),
                    "ROLLOUT_STATE_",
                )),
            })
        })
        .collect();
    render(
        output,
        &["name", "count", "layers", "state", "revision", "rollout"],
        &rows,
    )
}

/// `napalmctl clones`: agent, addresses, phase, boot time, error and the control plane's
/// last action (with its reason) of each clone.
pub fn clones(output: Output, clones: &[napalm_proto::v1::Clone]) -> String {
    let rows: Vec<Value> = clones
        .iter()
        .map(|k| {
            let phase = ClonePhase::try_from(k.phase).unwrap_or_default();
            json!({
                "clone": k.name,
                "deployment": k.deployment,
                "agent": k.agent_id,
                "addresses": k.addresses,
                "phase": state_name(phase.as_str_name(), "CLONE_PHASE_"),
                // Kernel start to the register hook, as the clone reported it.
                "boot_s": k.boot.as_ref().and_then(|b| b.to_registered)
                    .map(|d| (seconds(d) * 10.0).round() / 10.0),
                // napalm-init's phases (JSON and YAML only; the table shows boot_s).
                "boot_phases": k.boot.as_ref().map(|b| b.phases.iter().map(|p| json!({
                    "name": p.name,
                    "start_s": p.start.map(seconds),
                    "duration_s": p.duration.map(seconds),
                })).collect::<Vec<_>>()),
                "to_init_s": k.boot.as_ref().and_then(|b| b.to_init).map(seconds),
                // Why the clone failed (or its last retried error).
                "error": (!k.last_error.is_empty()).then_some(&k.last_error),
                // The control plane's last change to it and why.
                "last_action": (!k.last_action.is_empty()).then_some(&k.last_action),
                // Restarts after dying since it was placed, and the spec revision it runs.
                "restarts": k.restarts,
                "spec_revision": k.spec_revision,
                "registered_at": k.registered_at.as_ref().map(|t| seconds(prost_types::Duration {
                    seconds: t.seconds,
                    nanos: t.nanos,
                })),
            })
        })
        .collect();
    render(
        output,
        &[
            "clone",
            "deployment",
            "agent",
            "addresses",
            "phase",
            "boot_s",
            "error",
            "last_action",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untrusted_agent_shows_why_in_the_table_and_apart_in_json() {
        let a = napalm_proto::v1::Agent {
            id: "untrusted:10.0.0.9:7701".into(),
            name: "0123456789abcdef".into(),
            state: AgentState::Untrusted as i32,
            state_reason: "its certificate does not chain to the cluster CA".into(),
            ..Default::default()
        };
        let ready = napalm_proto::v1::Agent {
            id: "b".into(),
            name: "b".into(),
            state: AgentState::Ready as i32,
            ..Default::default()
        };
        let table = agents(Output::Table, &[a.clone(), ready]);
        assert!(
            table.contains("untrusted (its certificate does not chain to the cluster CA)"),
            "{table}"
        );
        assert!(table.contains(" ready "), "{table}");
        let json: Value = serde_json::from_str(&agents(Output::Json, &[a])).expect("json");
        assert_eq!(json[0]["state"], "untrusted");
        assert_eq!(
            json[0]["state_reason"],
            "its certificate does not chain to the cluster CA"
        );
    }
}
