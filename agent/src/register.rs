//! Registration with a coordinator and heartbeats (`CoordinatorService.RegisterAgent`,
//! `Heartbeat`): on boot the agent announces itself with its capabilities, then reports
//! its domains and free resources at the interval the coordinator asks for, registering
//! again when told to or when the coordinator was unreachable. A heartbeat answer may
//! name stale domains (clones the registry placed elsewhere while this agent was away):
//! they go to the agent's reconcile ([`Agent::remove_stale`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use napalm_proto::v1 as pb;
use pb::coordinator_service_client::CoordinatorServiceClient;

use crate::core::{Agent, StaleDomain};
use crate::grpc::convert;

/// Where the agent is reachable, for the coordinator.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// gRPC endpoint (`http://host:port`).
    pub grpc: String,
    /// REST endpoint.
    pub rest: String,
    /// TLS certificate fingerprint (empty without TLS).
    pub fingerprint: String,
}

async fn register(
    agent: &Agent,
    c: &mut CoordinatorServiceClient<tonic::transport::Channel>,
    ep: &Endpoints,
    token: Option<&str>,
) -> Result<Duration, tonic::Status> {
    let caps = agent.capabilities().await.map_err(tonic::Status::from)?;
    let mut req = tonic::Request::new(pb::RegisterAgentRequest {
        request_id: String::new(),
        id: agent.id().to_owned(),
        name: caps.host.hostname.clone(),
        grpc_endpoint: ep.grpc.clone(),
        rest_endpoint: ep.rest.clone(),
        capabilities: Some(convert::capabilities(&caps, false, agent.id())),
        cert_fingerprint: ep.fingerprint.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        labels: Default::default(),
    });
    bearer(&mut req, token);
    let r = c.register_agent(req).await?.into_inner();
    tracing::info!(agent_id = agent.id(), "registered with the coordinator");
    Ok(convert::duration(r.heartbeat_interval.as_ref())
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(10)))
}

fn bearer<T>(req: &mut tonic::Request<T>, token: Option<&str>) {
    if let Some(v) = token.and_then(|t| format!("Bearer {t}").parse().ok()) {
        req.metadata_mut().insert("authorization", v);
    }
}

/// One heartbeat; returns the answer and the creation time of each domain it listed.
async fn heartbeat(
    agent: &Agent,
    c: &mut CoordinatorServiceClient<tonic::transport::Channel>,
    token: Option<&str>,
) -> Result<(pb::HeartbeatResponse, HashMap<String, u64>), tonic::Status> {
    let domains = agent.list(false).await.map_err(tonic::Status::from)?;
    let listed = domains
        .iter()
        .map(|d| (d.name.clone(), d.created_at_ms))
        .collect();
    let caps = agent.capabilities().await.map_err(tonic::Status::from)?;
    let mut req = tonic::Request::new(pb::HeartbeatRequest {
        agent_id: agent.id().to_owned(),
        domains: domains
            .iter()
            .map(|d| pb::DomainSummary {
                name: d.name.clone(),
                state: convert::state(d.state) as i32,
                labels: d.labels.clone().into_iter().collect(),
            })
            .collect(),
        available: Some(pb::Resources {
            vcpus: caps.free_vcpus,
            memory_bytes: caps.free_memory_bytes,
        }),
    });
    bearer(&mut req, token);
    Ok((c.heartbeat(req).await?.into_inner(), listed))
}

/// Hands the stale domains of a heartbeat answer to the agent's reconcile, each with the
/// creation time of the domain the heartbeat listed (one it did not list is left alone).
async fn remove_stale(agent: &Agent, stale: &[pb::StaleDomain], listed: &HashMap<String, u64>) {
    let stale: Vec<StaleDomain> = stale
        .iter()
        .filter_map(|s| {
            Some(StaleDomain {
                name: s.name.clone(),
                reason: s.reason.clone(),
                placed_on: s.placed_on_agent_id.clone(),
                created_at_ms: *listed.get(&s.name)?,
            })
        })
        .collect();
    let rep = agent.remove_stale(&stale).await;
    if !rep.removed.is_empty() || !rep.waiting.is_empty() || !rep.kept.is_empty() {
        tracing::info!(removed = ?rep.removed, waiting = ?rep.waiting, kept = ?rep.kept, "stale domains from the coordinator");
    }
}

/// How the agent reaches the coordinator.
#[derive(Debug, Clone)]
pub enum Link {
    /// A gRPC endpoint dialed as given (`http://host:port`; bearer token only).
    Plain(String),
    /// The coordinator's TLS listener, over mutual TLS with the agent's certificate.
    Mutual(crate::identity::Identity),
}

impl Link {
    fn describe(&self) -> String {
        match self {
            Self::Plain(e) => e.clone(),
            Self::Mutual(i) => format!("{} (mutual TLS)", i.coordinator),
        }
    }

    async fn connect(&self) -> Result<CoordinatorServiceClient<tonic::transport::Channel>, String> {
        match self {
            Self::Plain(e) => CoordinatorServiceClient::connect(e.clone())
                .await
                .map_err(|e| e.to_string()),
            Self::Mutual(i) => i
                .coordinator_channel()
                .await
                .map(CoordinatorServiceClient::new)
                .map_err(|e| e.to_string()),
        }
    }
}

/// Registers and heartbeats until `stop` flips; retries every few seconds on failure.
pub async fn run(
    agent: Arc<Agent>,
    link: Link,
    ep: Endpoints,
    token: Option<String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut interval: Option<Duration> = None;
    let mut client: Option<CoordinatorServiceClient<tonic::transport::Channel>> = None;
    loop {
        let wait = match (&mut client, interval) {
            (None, _) => match link.connect().await {
                Ok(c) => {
                    client = Some(c);
                    Duration::ZERO
                }
                Err(e) => {
                    tracing::warn!(endpoint = %link.describe(), error = %e, "coordinator unreachable; retrying");
                    Duration::from_secs(3)
                }
            },
            (Some(c), None) => match register(&agent, c, &ep, token.as_deref()).await {
                Ok(i) => {
                    interval = Some(i);
                    Duration::ZERO
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registration failed; retrying");
                    Duration::from_secs(3)
                }
            },
            (Some(c), Some(i)) => match heartbeat(&agent, c, token.as_deref()).await {
                Ok((r, listed)) => {
                    remove_stale(&agent, &r.stale_domains, &listed).await;
                    if r.reregister {
                        interval = None;
                    } else if let Some(n) =
                        convert::duration(r.heartbeat_interval.as_ref()).filter(|d| !d.is_zero())
                    {
                        interval = Some(n);
                    }
                    i
                }
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat failed; registering again");
                    interval = None;
                    Duration::from_secs(3)
                }
            },
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
}
