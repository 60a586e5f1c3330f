//! What each agent runs, for the control loop, kept between its passes from the agent's
//! domain events (an informer, as Kubernetes' controllers have) instead of asked again of
//! every agent for every deployment at every pass.
//!
//! Per agent, a task holds a `WatchDomainEvents` stream open. A listing of the agent's
//! domains (`ListDomains`, all the agent owns, without their XML) is kept once the stream
//! is open, and kept current by the events: a domain started, paused, resumed, stopped,
//! shut down or crashed gets the event's state. Anything the cache cannot follow from an
//! event alone drops it, and the next read lists the agent again: a domain defined,
//! undefined or adopted (a new name, its labels unknown), an event for a name not in
//! the listing, an event that arrived while the listing was being taken, the stream
//! ending or falling behind. A listing older than [`RELIST`] is taken again whatever the
//! events said: the safety net for a change no event reports (a domain removed behind
//! the agent's back). An agent without the stream (an older one, or one that refuses
//! it) is listed at every read, as before.
//!
//! Only the control loop reads through it: a run lists its agents itself when it begins
//! (its first look decides what it boots again), and the informer must not touch what
//! a run changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use napalm_proto::v1::{Agent, Domain, DomainEvent, DomainEventKind, WatchDomainEventsRequest};
use tokio::time::Instant;
use tokio_stream::StreamExt as _;

use super::ship::Agents;
use crate::discovery::Backoff;
use crate::metrics::Metrics;

/// How old a listing may grow before it is taken again, events or not.
pub const RELIST: Duration = Duration::from_secs(60);

/// Agents' domains, kept from their events.
#[derive(Clone)]
pub struct Informer {
    agents: Agents,
    watched: Arc<Mutex<HashMap<String, Watched>>>,
    /// Each read counts as kept or listed here.
    metrics: Metrics,
}

/// One agent's watch and what it keeps.
struct Watched {
    endpoint: String,
    cache: Arc<Mutex<Cache>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
struct Cache {
    /// The stream is open: events from now on arrive.
    open: bool,
    /// The kept listing; `None`: list again.
    kept: Option<Kept>,
    /// Events seen so far: a listing during which this moved is not kept.
    events: u64,
    /// Streams opened so far: a listing during which this moved is not kept either.
    opened: u64,
}

/// A listing of an agent's domains, kept current by its events.
struct Kept {
    /// When it was taken.
    at: Instant,
    /// The agent's domains by name.
    domains: HashMap<String, Domain>,
    /// Their names by `deployment` label, sorted: a pass asks for each deployment's, and
    /// scanning every domain for each would cost deployments × domains. Events only change
    /// states; whatever changes a name or a label drops the listing, and this with it.
    by_deployment: HashMap<String, Vec<String>>,
}

impl Kept {
    fn new(at: Instant, listed: Vec<Domain>) -> Self {
        let mut by_deployment: HashMap<String, Vec<String>> = HashMap::new();
        for d in &listed {
            if let Some(dep) = d.labels.get("deployment") {
                by_deployment
                    .entry(dep.clone())
                    .or_default()
                    .push(d.name.clone());
            }
        }
        for names in by_deployment.values_mut() {
            names.sort();
        }
        Self {
            at,
            domains: listed.into_iter().map(|d| (d.name.clone(), d)).collect(),
            by_deployment,
        }
    }
}

/// Whether `d` is a domain of `deployment` (by its `deployment` label).
fn of_deployment(d: &Domain, deployment: &str) -> bool {
    d.labels.get("deployment").map(String::as_str) == Some(deployment)
}

fn lock(c: &Mutex<Cache>) -> std::sync::MutexGuard<'_, Cache> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cache {
    /// Applies one event; drops the listing when the event alone cannot say what
    /// changed.
    fn apply(&mut self, e: &DomainEvent) {
        self.events += 1;
        let follows = matches!(
            DomainEventKind::try_from(e.kind).unwrap_or_default(),
            DomainEventKind::Started
                | DomainEventKind::Suspended
                | DomainEventKind::Resumed
                | DomainEventKind::Stopped
                | DomainEventKind::Shutdown
                | DomainEventKind::Crashed
                | DomainEventKind::Restarted
        );
        let Some(kept) = self.kept.as_mut() else {
            return;
        };
        match kept.domains.get_mut(&e.name) {
            Some(d) if follows => d.state = e.state,
            _ => self.drop_listing(),
        }
    }

    /// Whether the stream is open, which stream, and how many events it brought: a
    /// listing is kept only if this is the same when it ends as when it began.
    fn mark(&self) -> (bool, u64, u64) {
        (self.open, self.opened, self.events)
    }

    fn drop_listing(&mut self) {
        self.kept = None;
    }

    /// The kept domains of `deployment`, when the listing is kept and fresh.
    fn of(&self, deployment: &str, now: Instant) -> Option<Vec<Domain>> {
        let kept = self
            .kept
            .as_ref()
            .filter(|k| self.open && now.duration_since(k.at) < RELIST)?;
        Some(
            kept.by_deployment
                .get(deployment)
                .into_iter()
                .flatten()
                .filter_map(|name| kept.domains.get(name).cloned())
                .collect(),
        )
    }
}

impl Informer {
    /// An informer dialing agents through `agents`, counting its reads in `metrics`.
    pub fn new(agents: Agents, metrics: Metrics) -> Self {
        Self {
            agents,
            watched: Arc::default(),
            metrics,
        }
    }

    /// The domains of `deployment` each agent of `all` that may be dialed runs (agent id
    /// → its domains, sorted by name), from its kept listing when there is one, else
    /// listed now; agents that do not answer are left out. Watches start for agents new
    /// here and stop for those no longer dialable: [`super::ship::Agents::running`],
    /// kept between calls.
    pub async fn running(&self, all: &[Agent], deployment: &str) -> Vec<(String, Vec<Domain>)> {
        let reachable: Vec<&Agent> = all
            .iter()
            .filter(|a| crate::registry::agents::reachable(a))
            .collect();
        let caches: Vec<Arc<Mutex<Cache>>> = {
            let endpoints: HashMap<&str, &str> = reachable
                .iter()
                .map(|a| (a.id.as_str(), a.grpc_endpoint.as_str()))
                .collect();
            let mut w = self.watched.lock().unwrap_or_else(|p| p.into_inner());
            w.retain(|id, watched| endpoints.get(id.as_str()) == Some(&watched.endpoint.as_str()));
            reachable
                .iter()
                .map(|a| {
                    let watched = w
                        .entry(a.id.clone())
                        .or_insert_with(|| self.watch(a.grpc_endpoint.clone()));
                    Arc::clone(&watched.cache)
                })
                .collect()
        };
        let now = Instant::now();
        let at_once = tokio::sync::Semaphore::new(super::ship::ASK_AT_ONCE);
        let asks = reachable.iter().zip(caches).map(|(a, cache)| {
            let at_once = &at_once;
            async move {
                let kept = lock(&cache).of(deployment, now);
                if let Some(domains) = kept {
                    self.metrics.agent_look(true);
                    return Some((a.id.clone(), domains));
                }
                let _turn = at_once.acquire().await.ok()?;
                let before = lock(&cache).mark();
                let listed = self
                    .agents
                    .domains_labelled(&a.grpc_endpoint, HashMap::new())
                    .await
                    .ok()?;
                self.metrics.agent_look(false);
                let mine: Vec<Domain> = listed
                    .iter()
                    .filter(|d| of_deployment(d, deployment))
                    .cloned()
                    .collect();
                let mut c = lock(&cache);
                // Kept only if the stream was open before the listing began and no event
                // came while it was taken: then every later change arrives as an event.
                if before.0 && c.mark() == before {
                    c.kept = Some(Kept::new(now, listed));
                }
                Some((a.id.clone(), mine))
            }
        });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Starts watching the agent at `endpoint`.
    fn watch(&self, endpoint: String) -> Watched {
        let cache = Arc::new(Mutex::new(Cache::default()));
        let task = tokio::spawn(follow(
            self.agents.clone(),
            endpoint.clone(),
            Arc::clone(&cache),
        ));
        Watched {
            endpoint,
            cache,
            task,
        }
    }
}

/// Holds the agent's event stream open, applying its events to `cache`, and opens it
/// again after it ends, after the static agents' backoff ([`Backoff`]: 1 s, doubling up
/// to 30 s while it keeps failing to open).
async fn follow(agents: Agents, endpoint: String, cache: Arc<Mutex<Cache>>) {
    let backoff = Backoff::default();
    let mut failures = 0;
    loop {
        let opened = async {
            agents
                .client(&endpoint)
                .await?
                .watch_domain_events(WatchDomainEventsRequest {
                    names: Vec::new(),
                    since_sequence: 0,
                })
                .await
        }
        .await;
        match opened {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                {
                    let mut c = lock(&cache);
                    c.open = true;
                    c.opened += 1;
                    // What happened while it was closed is unknown: list again.
                    c.drop_listing();
                }
                failures = 0;
                while let Some(Ok(e)) = stream.next().await {
                    lock(&cache).apply(&e);
                }
                tracing::debug!(agent = %endpoint, "an agent's domain events ended; watching again");
            }
            Err(e) => {
                tracing::debug!(agent = %endpoint, error = %e.message(), "cannot watch an agent's domain events");
            }
        }
        {
            let mut c = lock(&cache);
            c.open = false;
            c.drop_listing();
        }
        failures += 1;
        tokio::time::sleep(backoff.delay(failures)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use napalm_proto::v1::DomainState;

    fn dom(name: &str, deployment: &str, state: DomainState) -> Domain {
        Domain {
            name: name.into(),
            state: state as i32,
            labels: HashMap::from([("deployment".to_owned(), deployment.to_owned())]),
            ..Default::default()
        }
    }

    fn event(name: &str, kind: DomainEventKind, state: DomainState) -> DomainEvent {
        DomainEvent {
            name: name.into(),
            kind: kind as i32,
            state: state as i32,
            ..Default::default()
        }
    }

    fn kept(domains: &[Domain], at: Instant) -> Cache {
        Cache {
            open: true,
            kept: Some(Kept::new(at, domains.to_vec())),
            ..Default::default()
        }
    }

    #[test]
    fn state_events_keep_the_listing_and_anything_else_drops_it() {
        let t = Instant::now();
        let mut c = kept(
            &[
                dom("web-01", "web", DomainState::Running),
                dom("db-01", "db", DomainState::Running),
            ],
            t,
        );
        let names = |c: &Cache, d: &str| {
            c.of(d, t)
                .map(|v| v.into_iter().map(|d| (d.name, d.state)).collect::<Vec<_>>())
        };
        assert_eq!(
            names(&c, "web"),
            Some(vec![("web-01".into(), DomainState::Running as i32)])
        );
        // A crash: the state follows, the listing stays.
        c.apply(&event(
            "web-01",
            DomainEventKind::Crashed,
            DomainState::Crashed,
        ));
        assert_eq!(
            names(&c, "web"),
            Some(vec![("web-01".into(), DomainState::Crashed as i32)])
        );
        c.apply(&event(
            "web-01",
            DomainEventKind::Started,
            DomainState::Running,
        ));
        assert_eq!(c.events, 2);
        // A new domain: its labels are unknown, so the next read lists the agent.
        c.apply(&event(
            "web-02",
            DomainEventKind::Defined,
            DomainState::Shutoff,
        ));
        assert_eq!(names(&c, "web"), None);

        // A known name defined again (its labels may have changed) or undefined: dropped.
        for kind in [
            DomainEventKind::Defined,
            DomainEventKind::Undefined,
            DomainEventKind::Adopted,
        ] {
            let mut c = kept(&[dom("web-01", "web", DomainState::Running)], t);
            c.apply(&event("web-01", kind, DomainState::Shutoff));
            assert_eq!(names(&c, "web"), None, "{kind:?}");
        }
        // A state event for a name it does not know: dropped too.
        let mut c = kept(&[dom("web-01", "web", DomainState::Running)], t);
        c.apply(&event(
            "web-09",
            DomainEventKind::Stopped,
            DomainState::Shutoff,
        ));
        assert_eq!(names(&c, "web"), None);
    }

    #[test]
    fn a_listing_is_used_only_while_the_stream_is_open_and_for_a_minute() {
        let t = Instant::now();
        let mut c = kept(&[dom("web-01", "web", DomainState::Running)], t);
        assert!(c.of("web", t + RELIST - Duration::from_secs(1)).is_some());
        assert!(c.of("web", t + RELIST).is_none(), "stale: listed again");
        c.open = false;
        assert!(
            c.of("web", t).is_none(),
            "no stream, no events: listed again"
        );
    }
}
