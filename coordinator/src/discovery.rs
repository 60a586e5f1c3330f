//! Finding agents: a static list from the configuration, agents found over mDNS
//! ([`crate::browse`]) — both recorded here after the agent answered GetCapabilities — and
//! agents' own registration (the gRPC service). A static agent that does not answer yet
//! (started after the coordinator, rebooting) is retried in the background with backoff
//! ([`keep_registering_static`]) until it does.

use std::time::Duration;

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
        (None, None),
        AgentSource::Static,
        policy,
    )
    .await
}

/// How often a static agent that did not answer is tried again: `first`, doubling up to
/// `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Wait after the first failure.
    pub first: Duration,
    /// Longest wait between two attempts.
    pub max: Duration,
}

impl Default for Backoff {
    /// 1 s, doubling up to 30 s.
    fn default() -> Self {
        Self {
            first: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The wait after `failures` consecutive failures (1 = the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.first
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// How often the coordinator probes each static agent: a third of the heartbeat TTL it
/// records for a cluster of `agents`, so a probe lost or late twice is not yet a miss.
/// The TTL grows with the cluster ([`HeartbeatPolicy::ttl`]), so all static agents
/// together cost at most three probes per TTL each, not a rate that grows with their
/// number (at 5,000 agents: 150 a second instead of 1,500).
pub fn probe_interval(policy: &HeartbeatPolicy, agents: usize) -> Duration {
    policy.ttl(agents.max(1)) / 3
}

/// Keeps the static agent at `endpoint` registered ([`register_static`]): tries with
/// `backoff` until it answers, then probes it every [`probe_interval`] so it stays
/// ready while it answers. Runs forever: spawn it, abort the task to stop.
pub async fn keep_registering_static(
    registry: Registry,
    agents: Agents,
    endpoint: String,
    policy: HeartbeatPolicy,
    backoff: Backoff,
) {
    // A static agent may never heartbeat itself (it need not know the coordinator): the
    // coordinator probes it (GetCapabilities) often enough to keep it within its TTL, and
    // a silent one goes down like any agent that misses its heartbeats.
    let mut failures = 0u32;
    let mut known = false;
    loop {
        match register_static(&registry, &agents, &endpoint, &policy).await {
            Ok(id) => {
                if !known {
                    tracing::info!(%endpoint, %id, attempts = failures + 1, "static agent registered");
                }
                known = true;
                failures = 0;
                tokio::time::sleep(probe_interval(&policy, registry.known_agents())).await;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = backoff.delay(failures);
                tracing::warn!(
                    %endpoint,
                    error = %e,
                    retry_in = ?wait,
                    "static agent not answering; retrying"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Records an agent found over mDNS (after it answered GetCapabilities), with the
/// fingerprint of the certificate it presented when it was verified against the CA.
pub async fn register_found(
    registry: &Registry,
    agents: &Agents,
    endpoint: &str,
    rest_endpoint: Option<String>,
    cert_fingerprint: Option<String>,
    policy: &HeartbeatPolicy,
) -> Result<String, RegistryError> {
    record(
        registry,
        agents,
        endpoint,
        (rest_endpoint, cert_fingerprint),
        AgentSource::Mdns,
        policy,
    )
    .await
}

/// Asks the agent at `endpoint` for its capabilities and records it; `found` holds its
/// REST endpoint and certificate fingerprint when known.
async fn record(
    registry: &Registry,
    agents: &Agents,
    endpoint: &str,
    found: (Option<String>, Option<String>),
    source: AgentSource,
    policy: &HeartbeatPolicy,
) -> Result<String, RegistryError> {
    let (rest_endpoint, cert_fingerprint) = found;
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
    // Over mutual TLS the certificate proved an agent id: the agent must claim that one.
    let proven = agents.proven_id(endpoint).await;
    if let Some(proven) = &proven {
        if caps.agent_id != *proven {
            return Err(ApiError::InvalidArgument {
                field: "agent".into(),
                description: format!(
                    "agent {endpoint:?} calls itself {:?} but its certificate names {proven:?}",
                    caps.agent_id
                ),
            }
            .into());
        }
    }
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
                cert_fingerprint: cert_fingerprint.unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_probes_stay_within_the_ttl_and_their_rate_is_bounded() {
        let p = HeartbeatPolicy::default();
        for agents in [0, 1, 500, 5_000, 50_000] {
            let every = probe_interval(&p, agents);
            let ttl = p.ttl(agents.max(1));
            assert!(
                every * 3 <= ttl,
                "{agents} agents: every {every:?}, ttl {ttl:?}"
            );
            let per_second = agents as f64 / every.as_secs_f64();
            assert!(
                per_second <= 3.0 * p.max_rate + 1e-6,
                "{agents} agents: {per_second:.0} probes/s"
            );
        }
        assert_eq!(probe_interval(&p, 500), Duration::from_secs(10) / 3);
        assert_eq!(probe_interval(&p, 5_000), Duration::from_secs(100) / 3);
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=8).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(b.delay(u32::MAX), b.max);
        assert_eq!(b.delay(0), b.first);
    }
}
