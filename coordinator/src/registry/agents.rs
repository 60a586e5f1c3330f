//! Agents: registration, heartbeats with a TTL that grows with the number of agents (as
//! Nomad does: at most `max_rate` heartbeats per second cluster-wide, never under
//! `min_ttl`), ready/down/draining states, and allocations computed from the clones.
//! Two states come from the trust layer and carry a `state_reason`: `untrusted` (an mDNS
//! advertisement that failed the certificate check, recorded under an id of its own,
//! `untrusted:HOST:PORT`, so a spoofer can never overwrite the agent it impersonates) and
//! `revoked` (set by `Trust::revoke_agent`); neither is swept down, re-registered ready,
//! set ready by hand, placed on or dialed ([`reachable`]).

use std::collections::HashMap;
use std::time::Duration;

use napalm_proto::v1::{
    Agent, AgentSource, AgentState, Clone, ClonePhase, HeartbeatRequest, HeartbeatResponse,
    RegisterAgentRequest, RegisterAgentResponse, Resources,
};
use napalm_proto::ApiError;

use super::{Registry, RegistryError, AGENTS, CLONES};
use crate::clock::{duration, from_timestamp, timestamp};
use crate::store::Durability;

/// Heartbeat timing.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatPolicy {
    /// Smallest TTL.
    pub min_ttl: Duration,
    /// Heartbeats per second the coordinator is willing to take from all agents.
    pub max_rate: f64,
}

impl Default for HeartbeatPolicy {
    fn default() -> Self {
        Self {
            min_ttl: Duration::from_secs(10),
            max_rate: 50.0,
        }
    }
}

impl HeartbeatPolicy {
    /// TTL for a cluster of `agents` agents.
    pub fn ttl(&self, agents: usize) -> Duration {
        self.min_ttl.max(Duration::from_secs_f64(
            agents as f64 / self.max_rate.max(0.001),
        ))
    }
    /// How often an agent is asked to heartbeat: half the TTL, so one lost beat is not fatal.
    pub fn interval(&self, agents: usize) -> Duration {
        self.ttl(agents) / 2
    }
}

fn agent_key(id: &str) -> String {
    format!("{AGENTS}{id}")
}

fn check_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument {
            field: "id".into(),
            description: format!(
                "agent id {id:?} must be 1-128 characters of letters, digits, '-', '_', '.', ':'"
            ),
        })
    }
}

/// Whether the coordinator may dial `a`: not down, and neither untrusted nor revoked.
pub fn reachable(a: &Agent) -> bool {
    ![
        AgentState::Down as i32,
        AgentState::Untrusted as i32,
        AgentState::Revoked as i32,
    ]
    .contains(&a.state)
}

/// The registry id of what advertised itself at `endpoint` without passing the trust
/// check: `untrusted:HOST:PORT`.
pub fn untrusted_id(endpoint: &str) -> String {
    let authority = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let safe: String = authority
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(110)
        .collect();
    format!("untrusted:{safe}")
}

fn check_endpoint(field: &str, url: &str) -> Result<(), ApiError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument {
            field: field.into(),
            description: format!("{url:?} is not an http:// or https:// URL"),
        })
    }
}

impl Registry {
    /// Records an agent that announced itself (or was found by mDNS / configuration).
    /// A known id is updated in place; a draining agent stays draining.
    pub async fn register_agent(
        &self,
        req: RegisterAgentRequest,
        source: AgentSource,
        policy: &HeartbeatPolicy,
    ) -> Result<RegisterAgentResponse, RegistryError> {
        check_id(&req.id)?;
        check_endpoint("grpc_endpoint", &req.grpc_endpoint)?;
        if !req.rest_endpoint.is_empty() {
            check_endpoint("rest_endpoint", &req.rest_endpoint)?;
        }
        let count = self.known_agents() + 1;
        let ttl = policy.ttl(count);
        let now = timestamp(self.clock().now());
        let stored = self
            .update::<Agent, _>(&agent_key(&req.id), |old| {
                let old = old.unwrap_or_default();
                // Revocation outlives re-registration (over the plain listener, or a
                // static agent's probe): only re-enrollment under a new id undoes it.
                let (state, state_reason) = if old.state == AgentState::Revoked as i32 {
                    (AgentState::Revoked, old.state_reason.clone())
                } else if old.state == AgentState::Draining as i32 {
                    (AgentState::Draining, String::new())
                } else {
                    (AgentState::Ready, String::new())
                };
                Ok(Some(Agent {
                    id: req.id.clone(),
                    name: if req.name.is_empty() {
                        req.id.clone()
                    } else {
                        req.name.clone()
                    },
                    grpc_endpoint: req.grpc_endpoint.clone(),
                    rest_endpoint: req.rest_endpoint.clone(),
                    state: state as i32,
                    source: source as i32,
                    capabilities: req.capabilities.clone(),
                    allocated: None,
                    clone_count: 0,
                    cert_fingerprint: req.cert_fingerprint.clone(),
                    version: req.version.clone(),
                    last_heartbeat: Some(now),
                    heartbeat_ttl: Some(duration(ttl)),
                    labels: req.labels.clone(),
                    state_reason: state_reason.clone(),
                }))
            })
            .await?
            .unwrap_or_default();
        tracing::info!(id = %stored.id, name = %stored.name, "agent registered");
        Ok(RegisterAgentResponse {
            agent: Some(stored),
            heartbeat_interval: Some(duration(policy.interval(count))),
        })
    }

    /// Records a heartbeat. An unknown agent is told to register again; a known one is
    /// told which of the clone domains it runs the registry no longer places on it
    /// ([`Self::stale_domains`]), which it then removes itself.
    ///
    /// Committed [`Durability::Eventual`]: the next heartbeat says it all again, so a crash
    /// that loses the last second's beats loses nothing (an agent marked down comes back
    /// ready on its next beat). A disk flush for each (about 100 a second at 500 agents)
    /// cost four times the CPU per heartbeat, and on a disk with slow flushes would hold
    /// every other durable change behind them (`cargo bench -p napalm-coordinator
    /// --bench heartbeats`).
    pub async fn heartbeat(
        &self,
        req: HeartbeatRequest,
        policy: &HeartbeatPolicy,
    ) -> Result<HeartbeatResponse, RegistryError> {
        check_id(&req.agent_id)?;
        let count = self.known_agents().max(1);
        let ttl = policy.ttl(count);
        let now = timestamp(self.clock().now());
        let known = self
            .update_with::<Agent, _>(&agent_key(&req.agent_id), Durability::Eventual, |old| {
                Ok(old.map(|mut a| {
                    a.last_heartbeat = Some(now);
                    a.heartbeat_ttl = Some(duration(ttl));
                    if a.state == AgentState::Down as i32 {
                        a.state = AgentState::Ready as i32;
                    }
                    if let (Some(caps), Some(avail)) = (a.capabilities.as_mut(), req.available) {
                        caps.available = Some(avail);
                    }
                    a
                }))
            })
            .await?;
        let stale_domains = match known {
            Some(_) => self
                .stale_domains(&req.agent_id, &req.domains)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(agent = %req.agent_id, error = %e, "could not tell the agent its stale domains");
                    Vec::new()
                }),
            None => Vec::new(),
        };
        Ok(HeartbeatResponse {
            heartbeat_interval: Some(duration(policy.interval(count))),
            reregister: known.is_none(),
            stale_domains,
        })
    }

    /// The clone domains among `domains` (what agent `agent_id` says it runs) that the
    /// registry does not place on it: a clone whose record names another agent (`placed
    /// on NAME (ID) by the registry`: it moved while this agent was away), and a clone
    /// whose record is gone while its deployment still exists (`no longer declared by
    /// deployment D`; the agent waits for a second heartbeat saying so). Left out: domains
    /// without the `deployment` and `clone` labels of a napalm clone, clones not placed
    /// anywhere yet, and domains whose deployment record is gone too, since a registry
    /// that lost its records (a coordinator started on an empty store) must never make
    /// agents remove what they run.
    pub async fn stale_domains(
        &self,
        agent_id: &str,
        domains: &[napalm_proto::v1::DomainSummary],
    ) -> Result<Vec<napalm_proto::v1::StaleDomain>, RegistryError> {
        use napalm_proto::v1::{Deployment, StaleDomain};
        let mut out = Vec::new();
        let mut names: HashMap<String, String> = HashMap::new();
        for d in domains {
            let (Some(dep), Some(clone)) = (d.labels.get("deployment"), d.labels.get("clone"))
            else {
                continue;
            };
            if *clone != d.name || dep.is_empty() {
                continue;
            }
            let reason = match self.get::<Clone>(&format!("{CLONES}{clone}")).await? {
                Some((c, _)) if c.agent_id.is_empty() || c.agent_id == agent_id => continue,
                Some((c, _)) => {
                    if !names.contains_key(&c.agent_id) {
                        let name = self
                            .get::<Agent>(&agent_key(&c.agent_id))
                            .await?
                            .map(|(a, _)| a.name)
                            .unwrap_or_default();
                        names.insert(c.agent_id.clone(), name);
                    }
                    let name = names.get(&c.agent_id).cloned().unwrap_or_default();
                    out.push(StaleDomain {
                        name: d.name.clone(),
                        reason: format!("placed on {name} ({}) by the registry", c.agent_id),
                        placed_on_agent_id: c.agent_id,
                    });
                    continue;
                }
                None => format!("no longer declared by deployment {dep}"),
            };
            if self
                .get::<Deployment>(&format!("{}{dep}", super::DEPLOYMENTS))
                .await?
                .is_some()
            {
                out.push(StaleDomain {
                    name: d.name.clone(),
                    reason,
                    placed_on_agent_id: String::new(),
                });
            }
        }
        if !out.is_empty() {
            tracing::info!(agent = %agent_id, stale = ?out.iter().map(|s| &s.name).collect::<Vec<_>>(), "agent runs clone domains the registry places elsewhere");
        }
        Ok(out)
    }

    /// Records what advertised itself at `endpoint` as agent `advertised_id` and failed
    /// the trust check, as untrusted with `reason`, under [`untrusted_id`] (never under
    /// the advertised id: that agent's own record, if any, is left alone). Returns the
    /// record's id.
    pub async fn record_untrusted(
        &self,
        advertised_id: &str,
        endpoint: &str,
        rest_endpoint: Option<String>,
        reason: &str,
    ) -> Result<String, RegistryError> {
        let id = untrusted_id(endpoint);
        let now = timestamp(self.clock().now());
        let name = if advertised_id.is_empty() {
            id.clone()
        } else {
            advertised_id.chars().take(128).collect()
        };
        self.update::<Agent, _>(&agent_key(&id), |_| {
            Ok(Some(Agent {
                id: id.clone(),
                name: name.clone(),
                grpc_endpoint: endpoint.to_owned(),
                rest_endpoint: rest_endpoint.clone().unwrap_or_default(),
                state: AgentState::Untrusted as i32,
                source: AgentSource::Mdns as i32,
                last_heartbeat: Some(now),
                state_reason: reason.to_owned(),
                ..Default::default()
            }))
        })
        .await?;
        tracing::warn!(%endpoint, advertised = %advertised_id, %reason, "advertised agent untrusted");
        Ok(id)
    }

    /// Removes the untrusted record of `endpoint`, once an agent there passed the trust
    /// check. Absent is fine.
    pub async fn forget_untrusted(&self, endpoint: &str) -> Result<(), RegistryError> {
        self.update::<Agent, _>(&agent_key(&untrusted_id(endpoint)), |_| Ok(None))
            .await?;
        Ok(())
    }

    /// Marks agents whose TTL expired as down; returns their ids.
    pub async fn sweep_agents(&self) -> Result<Vec<String>, RegistryError> {
        let now = self.clock().now();
        let mut downed = Vec::new();
        let agents = self.list::<Agent>(AGENTS).await?;
        self.set_known_agents(agents.len());
        for a in agents {
            // Untrusted and revoked agents keep their state (and reason): neither
            // heartbeats, and down would hide why.
            if [
                AgentState::Down as i32,
                AgentState::Untrusted as i32,
                AgentState::Revoked as i32,
            ]
            .contains(&a.state)
            {
                continue;
            }
            let ttl = a.heartbeat_ttl.map_or(Duration::ZERO, |d| {
                Duration::from_secs(u64::try_from(d.seconds).unwrap_or(0))
            });
            let seen = from_timestamp(a.last_heartbeat.as_ref());
            if now.duration_since(seen).unwrap_or_default() <= ttl {
                continue;
            }
            let id = a.id.clone();
            self.update::<Agent, _>(&agent_key(&id), |cur| {
                Ok(cur.map(|mut c| {
                    c.state = AgentState::Down as i32;
                    c
                }))
            })
            .await?;
            tracing::warn!(%id, "agent missed its heartbeat TTL: down");
            downed.push(id);
        }
        Ok(downed)
    }

    /// All agents (optionally only in `states`), sorted by name, with allocations and
    /// clone counts computed from the clones placed on them.
    pub async fn list_agents(&self, states: &[AgentState]) -> Result<Vec<Agent>, RegistryError> {
        let clones = self.list::<Clone>(CLONES).await?;
        self.list_agents_using(&clones, states).await
    }

    /// [`Self::list_agents`] with the allocations computed from `clones`, every clone
    /// record as the caller just read them: a reader that needs both reads the clone
    /// records once.
    pub async fn list_agents_using<'a>(
        &self,
        clones: impl IntoIterator<Item = &'a Clone>,
        states: &[AgentState],
    ) -> Result<Vec<Agent>, RegistryError> {
        let mut usage: HashMap<&str, (Resources, u32)> = HashMap::new();
        let deployments = self.deployment_sizes().await?;
        for c in clones {
            if c.agent_id.is_empty() || c.phase == ClonePhase::Removed as i32 {
                continue;
            }
            let size = deployments.get(&c.deployment).copied().unwrap_or_default();
            let u = usage.entry(c.agent_id.as_str()).or_default();
            u.0.vcpus += size.vcpus;
            u.0.memory_bytes += size.memory_bytes;
            u.1 += 1;
        }
        let all = self.list::<Agent>(AGENTS).await?;
        self.set_known_agents(all.len());
        let mut agents: Vec<Agent> = all
            .into_iter()
            .filter(|a| states.is_empty() || states.iter().any(|s| *s as i32 == a.state))
            .map(|mut a| {
                if let Some((r, n)) = usage.get(a.id.as_str()) {
                    a.allocated = Some(*r);
                    a.clone_count = *n;
                }
                a
            })
            .collect();
        agents.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(agents)
    }

    /// One agent by id, or by name when exactly one agent has it (host names need not be
    /// unique; an ambiguous name is refused naming the ids to use instead).
    pub async fn get_agent(&self, id_or_name: &str) -> Result<Agent, RegistryError> {
        let agents = self.list_agents(&[]).await?;
        if let Some(a) = agents.iter().find(|a| a.id == id_or_name) {
            return Ok(a.clone());
        }
        let named: Vec<&Agent> = agents.iter().filter(|a| a.name == id_or_name).collect();
        match named.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ApiError::NotFound {
                kind: "agent".into(),
                name: id_or_name.into(),
            }
            .into()),
            many => Err(ApiError::InvalidArgument {
                field: "id".into(),
                description: format!(
                    "{} agents are named {id_or_name:?} (ids {}); give the id",
                    many.len(),
                    many.iter()
                        .map(|a| a.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
            .into()),
        }
    }

    /// Sets an agent ready or draining.
    pub async fn set_agent_state(
        &self,
        id_or_name: &str,
        state: AgentState,
    ) -> Result<Agent, RegistryError> {
        if !matches!(state, AgentState::Ready | AgentState::Draining) {
            return Err(ApiError::InvalidArgument {
                field: "state".into(),
                description: format!(
                    "{} cannot be set by hand: use AGENT_STATE_READY or AGENT_STATE_DRAINING",
                    state.as_str_name()
                ),
            }
            .into());
        }
        let found = self.get_agent(id_or_name).await?;
        if found.state == AgentState::Untrusted as i32 || found.state == AgentState::Revoked as i32
        {
            return Err(ApiError::InvalidArgument {
                field: "agent".into(),
                description: format!(
                    "agent {} is {}{}: it cannot be set ready or draining by hand",
                    found.id,
                    AgentState::try_from(found.state)
                        .unwrap_or_default()
                        .as_str_name()
                        .trim_start_matches("AGENT_STATE_")
                        .to_lowercase(),
                    if found.state_reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", found.state_reason)
                    }
                ),
            }
            .into());
        }
        let id = found.id;
        self.update::<Agent, _>(&agent_key(&id), |cur| {
            Ok(cur.map(|mut a| {
                a.state = state as i32;
                a
            }))
        })
        .await?;
        self.get_agent(&id).await
    }
}
