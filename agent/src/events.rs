//! Domain lifecycle events: numbered, retained in a ring for replay, broadcast to watchers.
//! The agent emits events for what it does; a watcher polling libvirt reports changes it
//! did not cause (a guest that shut itself down or crashed).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::clock::{Clock, SystemClock};
use crate::hypervisor::RunState;

/// What happened to a domain; [`EventKind::Shutdown`] and [`EventKind::Crashed`] are seen
/// by the watcher, the others are caused by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Defined in libvirt (created, or redefined by reconciliation).
    Defined,
    /// Removed from libvirt.
    Undefined,
    /// Started (by a client, or at create).
    Started,
    /// Paused by a client.
    Suspended,
    /// Resumed from pause by a client.
    Resumed,
    /// Shut off by a client (cleanly, or forced after the timeout).
    Stopped,
    /// Guest shut down by itself.
    Shutdown,
    /// The guest crashed (libvirt reports `crashed`).
    Crashed,
    /// Restarted by policy.
    Restarted,
    /// Adopted after an agent restart.
    Adopted,
}

/// One event, as `WatchDomainEvents` streams it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// Increasing from 1 within one agent process; a watcher resumes after the last it saw.
    pub sequence: u64,
    /// The domain it happened to.
    pub name: String,
    /// What happened.
    pub kind: EventKind,
    /// The domain's state after it.
    pub state: RunState,
    /// Who or what caused it, in words (`asked by a client`, `seen by the agent's watcher`).
    pub detail: String,
    /// When, ms since epoch.
    pub at_ms: u64,
    /// Duration of the causing operation, ms.
    pub took_ms: Option<u64>,
}

/// The hub: numbers events, keeps the last [`RETAINED`] for replay, stamps them with its
/// clock and broadcasts them.
pub struct EventHub {
    tx: broadcast::Sender<Event>,
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
}

struct Inner {
    seq: u64,
    ring: VecDeque<Event>,
    last: HashMap<String, RunState>,
}

/// How many past events are kept for watchers that resume from a sequence number.
pub const RETAINED: usize = 1024;

impl Default for EventHub {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock))
    }
}

impl EventHub {
    /// A hub stamping events with `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            tx: broadcast::channel(256).0,
            inner: Mutex::new(Inner {
                seq: 0,
                ring: VecDeque::new(),
                last: HashMap::new(),
            }),
        }
    }
}

impl EventHub {
    /// Records and broadcasts an event the agent caused.
    pub fn emit(
        &self,
        name: &str,
        kind: EventKind,
        state: RunState,
        detail: &str,
        took: Option<std::time::Duration>,
    ) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if kind == EventKind::Undefined {
            g.last.remove(name);
        } else {
            g.last.insert(name.to_owned(), state);
        }
        g.seq += 1;
        let ev = Event {
            sequence: g.seq,
            name: name.to_owned(),
            kind,
            state,
            detail: detail.to_owned(),
            at_ms: self.clock.unix_ms(),
            took_ms: took.map(|d| d.as_millis() as u64),
        };
        if g.ring.len() == RETAINED {
            g.ring.pop_front();
        }
        g.ring.push_back(ev.clone());
        drop(g);
        tracing::info!(domain = name, kind = ?kind, state = state.as_str(), detail, "domain event");
        let _ = self.tx.send(ev);
    }

    /// The state last seen or caused for `name`, if any.
    pub fn last_state(&self, name: &str) -> Option<RunState> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.last.get(name).copied()
    }

    /// Reports a state seen by polling; emits an event when it changed behind our back.
    pub fn observe(&self, name: &str, state: RunState) {
        let prev = {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            // Compare and set under one lock, so two observers never report one change twice.
            g.last.insert(name.to_owned(), state)
        };
        let Some(prev) = prev else { return };
        if prev == state {
            return;
        }
        let kind = match (prev, state) {
            (_, RunState::Crashed) => EventKind::Crashed,
            (RunState::Paused, RunState::Running) => EventKind::Resumed,
            (_, RunState::Paused) => EventKind::Suspended,
            (_, RunState::Running) => EventKind::Started,
            (_, RunState::Shutoff) => EventKind::Shutdown,
            _ => return,
        };
        self.emit(name, kind, state, "seen by the agent's watcher", None);
    }

    /// Retained events after `since` (when non-zero), and a receiver for new ones.
    pub fn subscribe(&self, since: u64) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let replay = if since == 0 {
            Vec::new()
        } else {
            g.ring
                .iter()
                .filter(|e| e.sequence > since)
                .cloned()
                .collect()
        };
        (replay, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn events_are_numbered_and_stamped_by_the_hubs_clock() {
        let clock = Arc::new(ManualClock::at(5_000));
        let hub = EventHub::new(clock.clone());
        let (_, mut rx) = hub.subscribe(0);
        hub.emit("d", EventKind::Defined, RunState::Shutoff, "", None);
        clock.advance(std::time::Duration::from_millis(250));
        hub.emit("d", EventKind::Started, RunState::Running, "", None);
        let mut seen = Vec::new();
        while let Ok(e) = rx.try_recv() {
            seen.push((e.sequence, e.at_ms));
        }
        assert_eq!(seen, [(1, 5_000), (2, 5_250)]);
        let (replayed, _) = hub.subscribe(1);
        assert_eq!(replayed.len(), 1, "events after sequence 1 are retained");
        assert_eq!(hub.last_state("d"), Some(RunState::Running));
    }
}
