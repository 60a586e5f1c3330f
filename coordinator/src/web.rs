//! The built-in read-only web view (thesis figure 3.9's domain page, for the whole grid):
//! `GET /` is one small HTML page (no framework, no external assets) that polls
//! `GET /v1/view.json` every two seconds and draws the agents, the deployments and the
//! clones with their phase, boot time and address. Both are served on the coordinator's
//! HTTP listener; they show no secret (no tokens, no endpoints) and change nothing.
//! The page builds its tables with `textContent`, so names from the registry are never
//! parsed as HTML.

use napalm_proto::v1::ClonePhase;
use serde::Serialize;

use crate::metrics::{agent_state_name, deployment_state_name, phase_name};
use crate::registry::{Registry, RegistryError};

/// The page.
pub const INDEX_HTML: &str = include_str!("web/index.html");

/// What the page shows, as `/v1/view.json`.
#[derive(Debug, Serialize)]
pub struct View {
    /// When this view was read, seconds since the Unix epoch.
    pub generated_at: f64,
    /// Agents, sorted by name.
    pub agents: Vec<AgentView>,
    /// Deployments, sorted by name.
    pub deployments: Vec<DeploymentView>,
    /// Clones, sorted by deployment then index.
    pub clones: Vec<CloneView>,
}

/// One agent.
#[derive(Debug, Serialize)]
pub struct AgentView {
    /// Stable id.
    pub id: String,
    /// Host name.
    pub name: String,
    /// What the page calls it: its name, with the start of its id when agents share it.
    pub label: String,
    /// `ready`, `down`, `draining`.
    pub state: String,
    /// Clones placed on it.
    pub clones: u32,
    /// vCPUs allocated / the host's CPUs (more allocated than the host has is the
    /// scheduler's overcommit, `--cpu-overcommit`).
    pub vcpus: (u32, u32),
    /// Memory allocated / the host's memory, bytes.
    pub memory_bytes: (u64, u64),
    /// napalm-agent version.
    pub version: String,
}

/// One deployment.
#[derive(Debug, Serialize)]
pub struct DeploymentView {
    /// Name.
    pub name: String,
    /// `progressing`, `ready`, `degraded`…
    pub state: String,
    /// Clones asked for.
    pub count: u32,
    /// Clones registered.
    pub registered: u32,
    /// Layers (template sets).
    pub layers: Vec<String>,
}

/// One clone.
#[derive(Debug, Serialize)]
pub struct CloneView {
    /// Name (its host name).
    pub name: String,
    /// Its deployment.
    pub deployment: String,
    /// The agent's label ([`AgentView::label`]; "" while unplaced).
    pub agent: String,
    /// `pending` … `running`, `registered`, `failed`.
    pub phase: String,
    /// Addresses it reported, or its static one.
    pub addresses: Vec<String>,
    /// Kernel start to registration, seconds (`None` until it registered with timings).
    pub boot_seconds: Option<f64>,
    /// Last failure.
    pub last_error: String,
}

fn secs(d: &prost_types::Duration) -> f64 {
    d.seconds as f64 + f64::from(d.nanos) / 1e9
}

/// Reads the view from the registry.
pub async fn view(registry: &Registry) -> Result<View, RegistryError> {
    let clones = registry.list_clones("").await?;
    let agents = registry.list_agents_using(&clones, &[]).await?;
    let deployments = registry.list_deployments().await?;
    let now = registry.clock().now();
    let generated_at = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    // Host names need not be unique (every libvirt test driver calls itself "vm").
    let label = |a: &napalm_proto::v1::Agent| {
        if agents.iter().filter(|b| b.name == a.name).count() > 1 {
            format!("{} ({})", a.name, a.id.chars().take(12).collect::<String>())
        } else {
            a.name.clone()
        }
    };
    let name_of = |id: &str| {
        agents
            .iter()
            .find(|a| a.id == id)
            .map_or_else(|| id.to_owned(), label)
    };
    Ok(View {
        generated_at,
        agents: agents
            .iter()
            .map(|a| {
                let alloc = a.allocated.unwrap_or_default();
                // The host's own size, not `available` (what was free when the agent
                // last reported: 0 CPUs once its guests outnumber them).
                let host = a
                    .capabilities
                    .as_ref()
                    .and_then(|c| c.host.clone())
                    .unwrap_or_default();
                AgentView {
                    id: a.id.clone(),
                    name: a.name.clone(),
                    label: label(a),
                    state: agent_state_name(a.state),
                    clones: a.clone_count,
                    vcpus: (alloc.vcpus, host.cpus),
                    memory_bytes: (alloc.memory_bytes, host.memory_bytes),
                    version: a.version.clone(),
                }
            })
            .collect(),
        deployments: deployments
            .iter()
            .filter_map(|d| {
                let spec = d.spec.as_ref()?;
                Some(DeploymentView {
                    name: spec.name.clone(),
                    state: deployment_state_name(d.state),
                    count: spec.count,
                    registered: clones
                        .iter()
                        .filter(|c| {
                            c.deployment == spec.name && c.phase == ClonePhase::Registered as i32
                        })
                        .count() as u32,
                    layers: spec.layers.clone(),
                })
            })
            .collect(),
        clones: clones
            .iter()
            .map(|c| CloneView {
                name: c.name.clone(),
                deployment: c.deployment.clone(),
                agent: if c.agent_id.is_empty() {
                    String::new()
                } else {
                    name_of(&c.agent_id)
                },
                phase: phase_name(c.phase),
                addresses: c.addresses.clone(),
                boot_seconds: c
                    .boot
                    .as_ref()
                    .and_then(|b| b.to_registered.as_ref())
                    .map(secs),
                last_error: c.last_error.clone(),
            })
            .collect(),
    })
}
