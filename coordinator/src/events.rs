//! Registry events for `CoordinatorService.WatchEvents` (`napalmctl watch`).
//!
//! The store has no change feed common to redb and etcd, so a watch polls: every
//! [`POLL_INTERVAL`] it lists agents, deployments and clones and compares them with the
//! previous listing. A record that appeared or changed becomes an [`Event`] carrying its new
//! state; a record that vanished becomes an event with `deleted = true` carrying its last
//! state. Changes that happen between two polls are seen as one (a clone going
//! scheduled → layer → shipped within one interval shows up once, in its latest phase).
//!
//! What counts as a change: any field of a clone or a deployment; for an agent anything but
//! the heartbeat bookkeeping (`last_heartbeat`, `heartbeat_ttl`, `capabilities.available`),
//! which changes on every heartbeat and would drown the stream.
//!
//! `since_revision` replays the current state of every record changed after that revision
//! (deleted records are not retained, so their deletions cannot be replayed).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use napalm_proto::v1::{event, Agent, Clone, Deployment, Event, EventKind, WatchEventsRequest};
use napalm_proto::ApiError;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

use crate::clock::timestamp;
use crate::registry::{check_name, Registry, RegistryError, AGENTS, CLONES, DEPLOYMENTS};

/// How often a watch lists the registry.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Consecutive failed listings after which a watch ends with the store's error.
const MAX_FAILURES: u32 = 5;

/// Events buffered per watcher before polling waits for the client.
const BUFFER: usize = 1024;

/// The stream a watch returns.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

/// One record as last listed.
#[derive(Debug, Clone, PartialEq)]
struct Rec<M> {
    /// The record, its `revision` field (when it has one) set from the store.
    msg: M,
    /// Store revision of its last change.
    revision: u64,
    /// Encoding of the fields whose change is an event.
    fingerprint: Vec<u8>,
}

/// The registry at one poll.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    agents: BTreeMap<String, Rec<Agent>>,
    deployments: BTreeMap<String, Rec<Deployment>>,
    clones: BTreeMap<String, Rec<Clone>>,
}

fn agent_fingerprint(a: &Agent) -> Vec<u8> {
    let mut a = a.clone();
    a.last_heartbeat = None;
    a.heartbeat_ttl = None;
    if let Some(c) = a.capabilities.as_mut() {
        c.available = None;
    }
    a.encode_to_vec()
}

impl Snapshot {
    /// Lists the registry. A record that does not decode is skipped with a warning (the
    /// registry's own reads report it to whoever uses it).
    pub async fn read(registry: &Registry) -> Result<Self, RegistryError> {
        let mut s = Self::default();
        for (key, v) in registry.store().list(AGENTS).await? {
            if let Some(a) = decode::<Agent>(&key, &v.value) {
                let fingerprint = agent_fingerprint(&a);
                s.agents.insert(
                    key,
                    Rec {
                        msg: a,
                        revision: v.mod_revision,
                        fingerprint,
                    },
                );
            }
        }
        for (key, v) in registry.store().list(DEPLOYMENTS).await? {
            if let Some(mut d) = decode::<Deployment>(&key, &v.value) {
                let fingerprint = d.encode_to_vec();
                d.revision = v.mod_revision;
                s.deployments.insert(
                    key,
                    Rec {
                        msg: d,
                        revision: v.mod_revision,
                        fingerprint,
                    },
                );
            }
        }
        for (key, v) in registry.store().list(CLONES).await? {
            if let Some(mut c) = decode::<Clone>(&key, &v.value) {
                let fingerprint = c.encode_to_vec();
                c.revision = v.mod_revision;
                s.clones.insert(
                    key,
                    Rec {
                        msg: c,
                        revision: v.mod_revision,
                        fingerprint,
                    },
                );
            }
        }
        Ok(s)
    }

    /// The highest revision of any record listed.
    fn revision(&self) -> u64 {
        let a = self.agents.values().map(|r| r.revision);
        let d = self.deployments.values().map(|r| r.revision);
        let c = self.clones.values().map(|r| r.revision);
        a.chain(d).chain(c).max().unwrap_or(0)
    }
}

fn decode<M: Message + Default>(key: &str, bytes: &[u8]) -> Option<M> {
    match M::decode(bytes) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(%key, error = %e, "watch: skipping a record that does not decode");
            None
        }
    }
}

/// Adds the events of one record kind, `wrap` building the payload.
fn diff_kind<M: std::clone::Clone>(
    old: &BTreeMap<String, Rec<M>>,
    new: &BTreeMap<String, Rec<M>>,
    at: &prost_types::Timestamp,
    delete_revision: u64,
    wrap: fn(M) -> event::Payload,
    out: &mut Vec<Event>,
) {
    for (key, rec) in new {
        if old
            .get(key)
            .is_none_or(|o| o.fingerprint != rec.fingerprint)
        {
            out.push(Event {
                revision: rec.revision,
                at: Some(*at),
                deleted: false,
                payload: Some(wrap(rec.msg.clone())),
            });
        }
    }
    for (key, rec) in old {
        if !new.contains_key(key) {
            out.push(Event {
                revision: delete_revision.max(rec.revision),
                at: Some(*at),
                deleted: true,
                payload: Some(wrap(rec.msg.clone())),
            });
        }
    }
}

/// The events that turn `old` into `new`, in revision order (agents, then deployments, then
/// clones within one revision). A deletion's revision is not known after the fact: it gets
/// the highest revision of `new` (at least its record's last revision).
pub fn diff(old: &Snapshot, new: &Snapshot, at: SystemTime) -> Vec<Event> {
    let at = timestamp(at);
    let del = new.revision();
    let mut out = Vec::new();
    diff_kind(
        &old.agents,
        &new.agents,
        &at,
        del,
        event::Payload::Agent,
        &mut out,
    );
    diff_kind(
        &old.deployments,
        &new.deployments,
        &at,
        del,
        event::Payload::Deployment,
        &mut out,
    );
    diff_kind(
        &old.clones,
        &new.clones,
        &at,
        del,
        event::Payload::Clone,
        &mut out,
    );
    out.sort_by_key(|e| e.revision);
    out
}

/// Which events a watcher asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    kinds: Vec<EventKind>,
    deployment: String,
}

impl Filter {
    /// The filter of a request; unknown kinds and bad deployment names are refused.
    pub fn from_request(req: &WatchEventsRequest) -> Result<Self, ApiError> {
        let mut kinds = Vec::new();
        for k in &req.kinds {
            match EventKind::try_from(*k) {
                Ok(EventKind::Unspecified) | Err(_) => {
                    return Err(ApiError::InvalidArgument {
                        field: "kinds".into(),
                        description: format!(
                            "unknown event kind \"{k}\": use EVENT_KIND_AGENT, \
                             EVENT_KIND_CLONE or EVENT_KIND_DEPLOYMENT"
                        ),
                    })
                }
                Ok(kind) => kinds.push(kind),
            }
        }
        if !req.deployment.is_empty() {
            check_name("deployment", &req.deployment)?;
        }
        Ok(Self {
            kinds,
            deployment: req.deployment.clone(),
        })
    }

    /// Whether `e` passes. With a deployment, only that deployment and its clones do.
    pub fn matches(&self, e: &Event) -> bool {
        let (kind, deployment) = match &e.payload {
            Some(event::Payload::Agent(_)) => (EventKind::Agent, None),
            Some(event::Payload::Clone(c)) => (EventKind::Clone, Some(c.deployment.as_str())),
            Some(event::Payload::Deployment(d)) => (
                EventKind::Deployment,
                Some(d.spec.as_ref().map_or("", |s| s.name.as_str())),
            ),
            None => return false,
        };
        (self.kinds.is_empty() || self.kinds.contains(&kind))
            && (self.deployment.is_empty() || deployment == Some(self.deployment.as_str()))
    }
}

/// Starts a watch: checks the request, takes the first listing (so every change after this
/// returns is seen), replays records changed after `since_revision` when it is not 0, then
/// polls every `interval` until the receiver is dropped. The stream ends with UNAVAILABLE
/// when the store fails [`MAX_FAILURES`] times in a row.
pub async fn watch(
    registry: Registry,
    req: WatchEventsRequest,
    interval: Duration,
) -> Result<EventStream, ApiError> {
    let filter = Filter::from_request(&req)?;
    let mut prev = Snapshot::read(&registry).await.map_err(ApiError::from)?;
    let (tx, rx) = mpsc::channel::<Result<Event, Status>>(BUFFER);
    let replay: Vec<Event> = if req.since_revision > 0 {
        diff(&Snapshot::default(), &prev, registry.clock().now())
            .into_iter()
            .filter(|e| e.revision > req.since_revision && filter.matches(e))
            .collect()
    } else {
        Vec::new()
    };
    tokio::spawn(async move {
        for e in replay {
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut failures = 0;
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tick.tick() => {}
            }
            let next = match Snapshot::read(&registry).await {
                Ok(n) => {
                    failures = 0;
                    n
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "watch: listing the registry failed");
                    if failures >= MAX_FAILURES {
                        let _ = tx.send(Err(Status::from(ApiError::from(e)))).await;
                        return;
                    }
                    continue;
                }
            };
            for e in diff(&prev, &next, registry.clock().now()) {
                if filter.matches(&e) && tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            prev = next;
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use napalm_proto::v1::{AgentState, Capabilities, ClonePhase, DeploymentSpec, Resources};

    fn rec<M: Message + std::clone::Clone>(m: M, revision: u64) -> Rec<M> {
        let fingerprint = m.encode_to_vec();
        Rec {
            msg: m,
            revision,
            fingerprint,
        }
    }

    fn agent_rec(a: Agent, revision: u64) -> Rec<Agent> {
        let fingerprint = agent_fingerprint(&a);
        Rec {
            msg: a,
            revision,
            fingerprint,
        }
    }

    fn clone(name: &str, deployment: &str, phase: ClonePhase) -> Clone {
        Clone {
            name: name.into(),
            deployment: deployment.into(),
            phase: phase as i32,
            ..Default::default()
        }
    }

    fn deployment(name: &str) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn phase_of(e: &Event) -> Option<i32> {
        match &e.payload {
            Some(event::Payload::Clone(c)) => Some(c.phase),
            _ => None,
        }
    }

    #[test]
    fn phase_changes_additions_and_deletions_become_events() {
        let mut a = Snapshot::default();
        a.clones.insert(
            "c1".into(),
            rec(clone("g-01", "g", ClonePhase::Scheduled), 5),
        );
        a.clones
            .insert("c2".into(), rec(clone("g-02", "g", ClonePhase::Running), 6));
        a.deployments.insert("d".into(), rec(deployment("g"), 4));
        let mut b = a.clone();
        // Same record: no event. Changed phase: one. Removed: one, deleted.
        b.clones
            .insert("c1".into(), rec(clone("g-01", "g", ClonePhase::Running), 9));
        b.clones.remove("c2");
        b.deployments.insert("e".into(), rec(deployment("h"), 8));
        let events = diff(&a, &b, SystemTime::UNIX_EPOCH);
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(events[0].revision, 8);
        assert!(
            matches!(&events[0].payload, Some(event::Payload::Deployment(d))
            if d.spec.as_ref().map(|s| s.name.as_str()) == Some("h"))
        );
        assert_eq!(phase_of(&events[1]), Some(ClonePhase::Running as i32));
        assert!(!events[1].deleted);
        assert_eq!(phase_of(&events[2]), Some(ClonePhase::Running as i32));
        assert!(events[2].deleted);
        assert_eq!(events[2].revision, 9, "a deletion gets the newest revision");
        assert!(diff(&b, &b, SystemTime::UNIX_EPOCH).is_empty());
    }

    #[test]
    fn heartbeats_are_not_agent_events_but_state_changes_are() {
        let agent = Agent {
            id: "a1".into(),
            state: AgentState::Ready as i32,
            capabilities: Some(Capabilities::default()),
            ..Default::default()
        };
        let mut a = Snapshot::default();
        a.agents.insert("a1".into(), agent_rec(agent.clone(), 3));
        let mut beat = agent.clone();
        beat.last_heartbeat = Some(timestamp(SystemTime::now()));
        if let Some(c) = beat.capabilities.as_mut() {
            c.available = Some(Resources {
                vcpus: 3,
                memory_bytes: 1,
            });
        }
        let mut b = Snapshot::default();
        b.agents.insert("a1".into(), agent_rec(beat.clone(), 4));
        assert!(diff(&a, &b, SystemTime::now()).is_empty());
        let mut down = beat;
        down.state = AgentState::Down as i32;
        let mut c = Snapshot::default();
        c.agents.insert("a1".into(), agent_rec(down, 5));
        let events = diff(&b, &c, SystemTime::now());
        assert_eq!(events.len(), 1);
        assert!(matches!(&events[0].payload, Some(event::Payload::Agent(x))
            if x.state == AgentState::Down as i32));
    }

    #[test]
    fn filters_by_kind_and_deployment() {
        let ev = |p: event::Payload| Event {
            payload: Some(p),
            ..Default::default()
        };
        let c = ev(event::Payload::Clone(clone("g-01", "g", ClonePhase::Layer)));
        let other = ev(event::Payload::Clone(clone("h-01", "h", ClonePhase::Layer)));
        let d = ev(event::Payload::Deployment(deployment("g")));
        let a = ev(event::Payload::Agent(Agent::default()));
        let f = Filter::from_request(&WatchEventsRequest {
            deployment: "g".into(),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(
            [&c, &other, &d, &a].map(|e| f.matches(e)),
            [true, false, true, false]
        );
        let f = Filter::from_request(&WatchEventsRequest {
            kinds: vec![EventKind::Agent as i32],
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(
            [&c, &other, &d, &a].map(|e| f.matches(e)),
            [false, false, false, true]
        );
        let bad = Filter::from_request(&WatchEventsRequest {
            deployment: "Bad_Name".into(),
            ..Default::default()
        });
        assert!(
            matches!(bad, Err(ApiError::InvalidArgument { ref description, .. }) if description.contains("\"Bad_Name\"")),
            "{bad:?}"
        );
        let bad = Filter::from_request(&WatchEventsRequest {
            kinds: vec![42],
            ..Default::default()
        });
        assert!(matches!(bad, Err(ApiError::InvalidArgument { .. })));
    }
}
