//! Clones whose domain died: which to start again on their agent (after a backoff) and
//! which, past their restart budget, to replace elsewhere. Pure, like [`super::reconcile`];
//! the control loop ([`super::converge`]) carries it out.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use napalm_proto::time::from_timestamp;
use napalm_proto::v1::{Clone, ClonePhase, Domain, DomainState};

/// What to do about a clone whose domain died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Death {
    /// Start it again on its agent (the `attempt`-th restart).
    Restart {
        /// Clone name.
        clone: String,
        /// Its agent.
        agent: String,
        /// 1 for the first restart.
        attempt: u32,
    },
    /// Its restart budget is spent: replace it elsewhere.
    Replace {
        /// Clone name.
        clone: String,
        /// The agent it kept dying on.
        agent: String,
    },
}

/// How long after its `restarts`-th restart a clone that dies again waits before the
/// next: 2 s, 4 s, 8 s… up to a minute.
pub fn backoff(restarts: u32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(restarts.min(5) + 1).min(60))
}

/// Whether a clone recorded up is dead by what its agent listed: no domain, or one shut
/// off or crashed.
pub fn dead(domain: Option<&Domain>) -> bool {
    domain.is_none_or(|d| {
        d.state == DomainState::Shutoff as i32 || d.state == DomainState::Crashed as i32
    })
}

/// The clones that died: up (running or registered) in the registry, while their agent,
/// which answered (`running`: agent id → its domains of the deployment), shows their
/// domain shut off or crashed, or has none. Each is restarted on its agent once its
/// backoff has passed, up to `budget` restarts, then replaced.
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
        let up = c.phase == ClonePhase::Registered as i32 || c.phase == ClonePhase::Running as i32;
        let Some(domains) = answered.get(c.agent_id.as_str()) else {
            continue;
        };
        if !up {
            continue;
        }
        if !dead(domains.iter().find(|d| d.name == c.name)) {
            continue;
        }
        if c.restarts >= budget {
            out.push(Death::Replace {
                clone: c.name.clone(),
                agent: c.agent_id.clone(),
            });
            continue;
        }
        if c.restarts > 0 && from_timestamp(c.restarted_at.as_ref()) + backoff(c.restarts) > now {
            continue;
        }
        out.push(Death::Restart {
            clone: c.name.clone(),
            agent: c.agent_id.clone(),
            attempt: c.restarts + 1,
        });
    }
    out
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
        // Alive: nothing.
        assert!(died(&[c.clone()], &running(DomainState::Running), at(100), 3).is_empty());
        // Shut off behind our back: first restart, at once.
        let restart = |attempt| Death::Restart {
            clone: "web-01".into(),
            agent: "a".into(),
            attempt,
        };
        assert_eq!(
            died(&[c.clone()], &running(DomainState::Shutoff), at(100), 3),
            [restart(1)]
        );
        // Crashed again 1 s after the first restart: waits for the 4 s backoff.
        c.restarts = 1;
        c.restarted_at = Some(napalm_proto::time::timestamp(at(100)));
        assert!(died(&[c.clone()], &running(DomainState::Crashed), at(101), 3).is_empty());
        assert_eq!(
            died(&[c.clone()], &running(DomainState::Crashed), at(104), 3),
            [restart(2)]
        );
        // Its domain vanished: dead too.
        assert_eq!(
            died(&[c.clone()], &[("a".to_owned(), vec![])], at(104), 3),
            [restart(2)]
        );
        // Budget spent: replaced.
        c.restarts = 3;
        assert_eq!(
            died(&[c.clone()], &running(DomainState::Shutoff), at(200), 3),
            [Death::Replace {
                clone: "web-01".into(),
                agent: "a".into()
            }]
        );
        // An agent that did not answer says nothing; a clone still coming up is not dead.
        assert!(died(&[c.clone()], &[], at(200), 3).is_empty());
        let booting = clone("web-01", "a", ClonePhase::Shipped);
        assert!(died(&[booting], &running(DomainState::Shutoff), at(200), 3).is_empty());
    }

    #[test]
    fn restarts_back_off_up_to_a_minute() {
        assert_eq!(backoff(0), Duration::from_secs(2));
        assert_eq!(backoff(1), Duration::from_secs(4));
        assert_eq!(backoff(2), Duration::from_secs(8));
        assert_eq!(backoff(10), Duration::from_secs(60));
    }
}
