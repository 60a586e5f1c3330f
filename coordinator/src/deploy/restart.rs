//! Clones whose domain died: which to start again on their agent (after a backoff) and
//! which, past their restart budget, to replace elsewhere. Pure, like [`super::reconcile`];
//! the control loop ([`super::converge`]) carries it out.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use napalm_proto::time::from_timestamp;
use napalm_proto::v1::{Clone, ClonePhase, Domain, DomainState};

/// A clone whose domain died, as its agent listed it, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    /// Clone name.
    pub clone: String,
    /// Its agent.
    pub agent: String,
    /// Its domain's state as listed: shut off or crashed, unspecified when it is gone.
    pub state: i32,
    /// What to do.
    pub fate: Fate,
}

/// What the control loop does about a [`Death`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Start it again on its agent now (the `attempt`-th restart).
    Restart {
        /// 1 for the first restart.
        attempt: u32,
    },
    /// Start it again once its backoff since its last restart ([`backoff`]) has passed.
    BackOff {
        /// The restart it waits for.
        attempt: u32,
        /// The backoff it waits out, counted from its last restart.
        wait: Duration,
    },
    /// Its restart budget is spent: replace it elsewhere.
    Replace,
}

/// How long after its `restarts`-th restart a clone that dies again waits before the
/// next: 2 s, 4 s, 8 s… up to a minute.
pub fn backoff(restarts: u32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(restarts.min(5) + 1).min(60))
}

/// Whether a clone recorded up is dead by what its agent listed: no domain, one shut off
/// or crashed, or one libvirt no longer knows (the agent still has its record, in no
/// state: undefined behind its back).
pub fn dead(domain: Option<&Domain>) -> bool {
    domain.is_none_or(|d| dead_state(d.state))
}

/// Whether a listed domain in `state` is dead: shut off, crashed, or in no state.
fn dead_state(state: i32) -> bool {
    state == DomainState::Shutoff as i32
        || state == DomainState::Crashed as i32
        || state == DomainState::Unspecified as i32
}

/// Whether a clone's record says its domain was started and has not been stopped since:
/// running, registered, or died behind our back and not yet restarted or replaced.
pub fn started(phase: i32) -> bool {
    phase == ClonePhase::Registered as i32
        || phase == ClonePhase::Running as i32
        || phase == ClonePhase::Died as i32
}

/// The clones that died: started ([`started`]) in the registry, while their agent, which
/// answered (`running`: agent id → its domains of the deployment), shows their domain
/// shut off or crashed, or has none. Each is restarted on its agent once its backoff has
/// passed, up to `budget` restarts, then replaced.
pub fn died(
    records: &[Clone],
    running: &[(String, Vec<Domain>)],
    now: SystemTime,
    budget: u32,
) -> Vec<Death> {
    let answered: HashMap<&str, &Vec<Domain>> =
        running.iter().map(|(a, d)| (a.as_str(), d)).collect();
    let mut out = Vec::new();
    for c in records {
        let Some(domains) = answered.get(c.agent_id.as_str()) else {
            continue;
        };
        if !started(c.phase) {
            continue;
        }
        let domain = domains.iter().find(|d| d.name == c.name);
        if !dead(domain) {
            continue;
        }
        let wait = backoff(c.restarts);
        let fate = if c.restarts >= budget {
            Fate::Replace
        } else if c.restarts > 0 && from_timestamp(c.restarted_at.as_ref()) + wait > now {
            Fate::BackOff {
                attempt: c.restarts + 1,
                wait,
            }
        } else {
            Fate::Restart {
                attempt: c.restarts + 1,
            }
        };
        out.push(Death {
            clone: c.name.clone(),
            agent: c.agent_id.clone(),
            state: domain.map_or(DomainState::Unspecified as i32, |d| d.state),
            fate,
        });
    }
    out
}

/// The clones started ([`started`]) whose domain is alive on an agent that answered, in
/// another state than recorded (paused, say), or recorded died while it runs again
/// (started by someone else): clone name → the state listed.
pub fn drifted<'a>(
    records: &'a [Clone],
    running: &'a [(String, Vec<Domain>)],
) -> impl Iterator<Item = (&'a str, i32)> {
    let listed: HashMap<(&str, &str), i32> = running
        .iter()
        .flat_map(|(a, ds)| {
            ds.iter()
                .map(move |d| ((a.as_str(), d.name.as_str()), d.state))
        })
        .collect();
    records.iter().filter_map(move |c| {
        let state = *listed.get(&(c.agent_id.as_str(), c.name.as_str()))?;
        let alive = !dead_state(state);
        let differs = state != c.domain_state || c.phase == ClonePhase::Died as i32;
        (alive && started(c.phase) && differs).then_some((c.name.as_str(), state))
    })
}

/// Marks `k`, which died on agent `agent` (named `on`) past its restart `budget`, failed
/// at `now` to be replaced elsewhere ([`super::reconcile::Reason::Died`]: at once, away
/// from that agent), with `state` its domain's state as listed; `last_error` says why.
pub fn mark_replaced(
    k: &mut Clone,
    agent: &str,
    on: &str,
    state: i32,
    budget: u32,
    now: SystemTime,
) {
    let why = format!(
        "died {} time(s) on {on}, past its restart budget of {budget}",
        budget + 1
    );
    mark_failed(k, now);
    k.domain_state = state;
    k.restarts = k.restarts.max(1);
    k.last_action = format!("replacing: {why}");
    k.last_error = why;
    if !k.failed_agents.iter().any(|a| a == agent) {
        k.failed_agents.push(agent.to_owned());
    }
}

/// Marks `k` failed at `now`: one failure more in a row (see [`retry_due`]).
pub fn mark_failed(k: &mut Clone, now: SystemTime) {
    k.phase = ClonePhase::Failed as i32;
    k.failures = k.failures.saturating_add(1);
    k.failed_at = Some(napalm_proto::time::timestamp(now));
}

/// The longest wait between two placements of a clone that keeps failing to come up:
/// like kubelet's crash-loop back-off, retries never stop, but a clone that cannot boot
/// costs a boot every five minutes at most.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(300);

/// How long after its `failures`-th failure in a row a clone is placed again: 2 s, 4 s,
/// 8 s… up to [`MAX_RETRY_BACKOFF`].
pub fn retry_backoff(failures: u32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(failures.clamp(1, 16))).min(MAX_RETRY_BACKOFF)
}

/// Whether the control loop places failed clone `c` again now: it failed to come up
/// (its create was refused, it did not boot or register in time, or it could not be
/// placed; a clone that died past its restart budget is replaced at once instead) and
/// its backoff since the last failure ([`retry_backoff`]) has passed. There is no
/// budget: what stopped it (another agent's stale domain of the same name, a host
/// short of memory, an image fixed since) may be gone at the next try, and declared
/// clones converge with no operator re-running anything; an operator's deploy starts
/// the backoff over.
pub fn retry_due(c: &Clone, now: SystemTime) -> bool {
    c.phase == ClonePhase::Failed as i32
        && c.restarts == 0
        && from_timestamp(c.failed_at.as_ref()) + retry_backoff(c.failures) <= now
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clone(name: &str, agent: &str, phase: ClonePhase) -> Clone {
        Clone {
            name: name.into(),
            agent_id: agent.into(),
            phase: phase as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_failed_clone_is_retried_with_a_growing_backoff_and_never_given_up() {
        let at = |s: u64| std::time::UNIX_EPOCH + Duration::from_secs(s);
        let mut c = clone("web-01", "a", ClonePhase::Running);
        assert!(!retry_due(&c, at(100)), "not failed");
        mark_failed(&mut c, at(100));
        assert_eq!((c.phase, c.failures), (ClonePhase::Failed as i32, 1));
        assert!(!retry_due(&c, at(101)), "2 s backoff after the first");
        assert!(retry_due(&c, at(102)));
        mark_failed(&mut c, at(102));
        assert!(!retry_due(&c, at(105)), "4 s after the second");
        assert!(retry_due(&c, at(106)));
        mark_failed(&mut c, at(106));
        assert!(!retry_due(&c, at(113)), "8 s after the third");
        assert!(retry_due(&c, at(114)));
        for _ in 0..40 {
            mark_failed(&mut c, at(1_000));
        }
        assert!(!retry_due(&c, at(1_299)), "capped, not shorter");
        assert!(retry_due(&c, at(1_300)), "five minutes at most, then again");
        assert_eq!(retry_backoff(u32::MAX), MAX_RETRY_BACKOFF);
        // A clone that died past its restart budget is not this kind of retry.
        let mut died = clone("web-02", "a", ClonePhase::Running);
        mark_failed(&mut died, at(100));
        died.restarts = 3;
        assert!(!retry_due(&died, at(10_000)));
    }

    #[test]
    fn a_dead_clone_is_restarted_with_backoff_then_replaced() {
        let at = |s: u64| std::time::UNIX_EPOCH + Duration::from_secs(s);
        let dom = |n: &str, st: DomainState| Domain {
            name: n.into(),
            state: st as i32,
            ..Default::default()
        };
        let mut c = clone("web-01", "a", ClonePhase::Registered);
        let running = |st| vec![("a".to_owned(), vec![dom("web-01", st)])];
        let death = |state: DomainState, fate| Death {
            clone: "web-01".into(),
            agent: "a".into(),
            state: state as i32,
            fate,
        };
        // Alive: nothing.
        assert!(died(&[c.clone()], &running(DomainState::Running), at(100), 3).is_empty());
        // Shut off behind our back: first restart, at once.
        assert_eq!(
            died(&[c.clone()], &running(DomainState::Shutoff), at(100), 3),
            [death(DomainState::Shutoff, Fate::Restart { attempt: 1 })]
        );
        // Crashed again 1 s after the first restart: waits for the 4 s backoff, and says
        // so (recorded as died meanwhile).
        c.restarts = 1;
        c.restarted_at = Some(napalm_proto::time::timestamp(at(100)));
        let waits = Fate::BackOff {
            attempt: 2,
            wait: Duration::from_secs(4),
        };
        assert_eq!(
            died(&[c.clone()], &running(DomainState::Crashed), at(101), 3),
            [death(DomainState::Crashed, waits.clone())]
        );
        c.phase = ClonePhase::Died as i32;
        assert_eq!(
            died(&[c.clone()], &running(DomainState::Crashed), at(103), 3),
            [death(DomainState::Crashed, waits)]
        );
        assert_eq!(
            died(&[c.clone()], &running(DomainState::Crashed), at(104), 3),
            [death(DomainState::Crashed, Fate::Restart { attempt: 2 })]
        );
        // Its domain vanished: dead too, whether the agent lists it no more or, keeping
        // its record, in no state (libvirt no longer knows it).
        assert_eq!(
            died(&[c.clone()], &[("a".to_owned(), vec![])], at(104), 3),
            [death(
                DomainState::Unspecified,
                Fate::Restart { attempt: 2 }
            )]
        );
        assert_eq!(
            died(&[c.clone()], &running(DomainState::Unspecified), at(104), 3),
            [death(
                DomainState::Unspecified,
                Fate::Restart { attempt: 2 }
            )]
        );
        // Budget spent: replaced.
        c.restarts = 3;
        assert_eq!(
            died(&[c.clone()], &running(DomainState::Shutoff), at(200), 3),
            [death(DomainState::Shutoff, Fate::Replace)]
        );
        // An agent that did not answer says nothing; a clone still coming up is not dead.
        assert!(died(&[c.clone()], &[], at(200), 3).is_empty());
        let booting = clone("web-01", "a", ClonePhase::Shipped);
        assert!(died(&[booting], &running(DomainState::Shutoff), at(200), 3).is_empty());
    }

    #[test]
    fn a_started_clone_whose_domain_changed_state_is_drifted() {
        let dom = |n: &str, st: DomainState| Domain {
            name: n.into(),
            state: st as i32,
            ..Default::default()
        };
        let mut up = clone("web-01", "a", ClonePhase::Registered);
        up.domain_state = DomainState::Running as i32;
        let mut paused = up.clone();
        paused.name = "web-02".into();
        let mut died = up.clone();
        died.name = "web-03".into();
        died.phase = ClonePhase::Died as i32;
        died.domain_state = DomainState::Shutoff as i32;
        let mut elsewhere = up.clone();
        elsewhere.name = "web-04".into();
        elsewhere.agent_id = "b".into();
        let booting = clone("web-05", "a", ClonePhase::Defined);
        let running = vec![(
            "a".to_owned(),
            vec![
                dom("web-01", DomainState::Running),
                dom("web-02", DomainState::Paused),
                // Started again by someone else (`virsh start`): it boots, and is
                // recorded running again.
                dom("web-03", DomainState::Running),
                // Another agent's clone of the same name is not this one.
                dom("web-04", DomainState::Paused),
                dom("web-05", DomainState::Shutoff),
            ],
        )];
        let records = [up, paused, died, elsewhere, booting];
        assert_eq!(
            drifted(&records, &running).collect::<Vec<_>>(),
            [
                ("web-02", DomainState::Paused as i32),
                ("web-03", DomainState::Running as i32)
            ]
        );
    }

    #[test]
    fn restarts_back_off_up_to_a_minute() {
        assert_eq!(backoff(0), Duration::from_secs(2));
        assert_eq!(backoff(1), Duration::from_secs(4));
        assert_eq!(backoff(2), Duration::from_secs(8));
        assert_eq!(backoff(10), Duration::from_secs(60));
    }
}
