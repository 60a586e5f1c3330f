//! Finding agents: a static list from the configuration, agents found over mDNS
//! ([`crate::browse`]) — both recorded here after the agent answered GetCapabilities — and
//! agents' own registration (the gRPC service).

use napalm_proto::v1::{AgentSource, GetCapabilitiesRequest, RegisterAgentRequest};
use napalm_proto::ApiError;

use crate::deploy::ship::Agents;
use crate::registry::agents::HeartbeatPolicy;
use crate::registry::{Registry, RegistryError};

/// Asks the agent at `endpoint` for its capabilities and records it as a static agent.
pub async fn register_static(
    registry: &Registry,
    agents: &Agents,
    endpoint: &str,
    policy: &HeartbeatPolicy,
) -> Result<String, RegistryError> {
    record(
        registry,
        agents,
        endpoint,
        None,
        AgentSource::Static,
        policy,
    )
    .await
}

/// Records an agent found over mDNS (after it answered GetCapabilities).
pub async fn register_found(
    registry: &Registry,
    agents: &Agents,
    endpoint: &str,
    rest_endpoint: Option<String>,
    policy: &HeartbeatPolicy,
) -> Result<String, RegistryError> {
    record(
        registry,
        agents,
        endpoint,
        rest_endpoint,
        AgentSource::Mdns,
        policy,
    )
    .await
}

async fn record(
    registry: &Registry,
    agents: &Agents,
    endpoint: &str,
    rest_endpoint: Option<String>,
    source: AgentSource,
    policy: &HeartbeatPolicy,
) -> Result<String, RegistryError> {
    let unreachable = |e: tonic::Status| ApiError::InvalidArgument {
        field: "agent".into(),
        description: format!(
            "agent {endpoint:?} did not answer GetCapabilities: {}",
            e.message()
        ),
    };
    let caps = agents
        .client(endpoint)
        .await
        .map_err(unreachable)?
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .map_err(unreachable)?
        .into_inner();
    let id = if caps.agent_id.is_empty() {
        endpoint
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .replace('/', "-")
    } else {
        caps.agent_id.clone()
    };
    let name = caps
        .host
        .as_ref()
        .map(|h| h.hostname.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| id.clone());
    let resp = registry
        .register_agent(
            RegisterAgentRequest {
                request_id: format!("static-{id}"),
                id: id.clone(),
                name,
                grpc_endpoint: endpoint.to_owned(),
                rest_endpoint: rest_endpoint.unwrap_or_default(),
                version: caps.agent_version.clone(),
                capabilities: Some(caps),
                ..Default::default()
            },
            source,
            policy,
        )
        .await?;
    Ok(resp.agent.map(|a| a.id).unwrap_or(id))
}
