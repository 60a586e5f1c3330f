//! Reconcile, the first of the pipeline's three layers (Nomad's reconcile → place → apply):
//! compare what a deployment declares with what the registry records and what the agents
//! run, and say what must change and why. Pure functions over values: no I/O, no clock,
//! so the same step serves a client's `Deploy` and a loop that runs with nobody connected
//! ([`super::converge`]).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use napalm_proto::time::from_timestamp;
use napalm_proto::v1::{Agent, AgentState, Clone, ClonePhase, DeploymentSpec, Domain};

/// Clone names of a deployment: those its clones.conf declares, else `NAME-01` … (at
/// least two digits).
pub fn names(spec: &DeploymentSpec) -> Vec<String> {
    if !spec.clone_names.is_empty() {
        return spec.clone_names.clone();
    }
    let width = spec.count.to_string().len().max(2);
    (1..=spec.count)
        .map(|i| format!("{}-{i:0width$}", spec.name))
        .collect()
}

/// Why a change is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The spec declares a clone the registry does not record.
    Declared,
    /// The count went down: the clone is beyond it.
    BeyondCount,
    /// The clone is recorded but on no agent.
    Unplaced,
    /// The clone failed; it is placed again.
    Failed,
    /// Its agent is down (or gone) and the clone never came up there.
    AgentDown,
    /// Its agent has been down past the grace period: the host is taken for dead (the
    /// grace is the fence), and the clone boots elsewhere (a stateful one with its state,
    /// which is on NFS).
    AgentLost,
    /// Its agent is draining: the clone moves off cold (its domain there is stopped first,
    /// then it boots elsewhere; a stateful clone keeps its state, which is on NFS).
    Draining,
    /// An agent runs a domain of the deployment that the registry does not place there.
    NotPlacedHere,
    /// Its agent is revoked or untrusted: nothing is sent to it any more, so the clone
    /// boots elsewhere (its domain there is removed should the agent be trusted again).
    Untrusted,
    /// The clone's domain stopped without being asked to (its QEMU died, the guest
    /// crashed or powered off, the domain vanished) more often than its restart budget:
    /// it is replaced on another agent.
    Died,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Declared => "declared by the spec",
            Reason::BeyondCount => "beyond the requested count",
            Reason::Unplaced => "on no agent",
            Reason::Failed => "it failed to come up",
            Reason::AgentDown => "its agent is down",
            Reason::AgentLost => "its agent is lost (down past the grace period)",
            Reason::Draining => "its agent is draining",
            Reason::NotPlacedHere => "the registry does not place it here",
            Reason::Died => "it died past its restart budget",
            Reason::Untrusted => "its agent is revoked or untrusted",
        })
    }
}

/// One change reconcile asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Record a new clone (its 1-based index in the deployment).
    Add {
        /// Clone name.
        clone: String,
        /// Index (`NAME-NN`).
        index: u32,
    },
    /// Delete a clone's domain and record.
    Remove {
        /// The record.
        clone: Box<Clone>,
        /// Why.
        reason: Reason,
    },
    /// Find the clone an agent.
    Place {
        /// Clone name.
        clone: String,
        /// Why.
        reason: Reason,
    },
    /// Delete a domain from an agent.
    Stop {
        /// Agent id.
        agent: String,
        /// Domain name.
        domain: String,
        /// Why.
        reason: Reason,
    },
}

/// What a deployment needs, from its spec, its clone records and the agents.
#[derive(Debug, Default)]
pub struct Plan {
    /// Changes in order: adds, removes, then placements.
    pub actions: Vec<Action>,
    /// Clones of this deployment each agent keeps (the scheduler's anti-affinity input).
    pub held: HashMap<String, u32>,
}

impl Plan {
    /// Names of the clones to place.
    pub fn to_place(&self) -> Vec<String> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Place { clone, .. } => Some(clone.clone()),
                _ => None,
            })
            .collect()
    }
}

/// The agents down for longer than `grace` past their last heartbeat's TTL at `now`: their
/// hosts are taken for dead.
pub fn lost_agents(agents: &[Agent], now: SystemTime, grace: Duration) -> HashSet<String> {
    agents
        .iter()
        .filter(|a| a.state == AgentState::Down as i32)
        .filter(|a| {
            let ttl = a.heartbeat_ttl.map_or(Duration::ZERO, |d| {
                Duration::new(u64::try_from(d.seconds).unwrap_or(0), 0)
            });
            from_timestamp(a.last_heartbeat.as_ref()) + ttl + grace <= now
        })
        .map(|a| a.id.clone())
        .collect()
}

/// Why `c` needs an agent, if it does: it has none, it failed, its agent is draining, its
/// agent is down (or gone) while the clone never came up there, or its agent is lost.
/// A clone running or registered on an agent that went down stays where it is until the
/// agent is lost (it must never run twice: only the grace period fences the old domain).
fn needs_placement(
    c: &Clone,
    agents: &HashMap<&str, &Agent>,
    lost: &HashSet<String>,
) -> Option<Reason> {
    if c.agent_id.is_empty() {
        return Some(Reason::Unplaced);
    }
    if c.phase == ClonePhase::Failed as i32 {
        // A clone that spent its restart budget is replaced at once; any other failure
        // is placed again once its backoff has passed (`restart::retry_due`).
        return Some(if c.restarts > 0 {
            Reason::Died
        } else {
            Reason::Failed
        });
    }
    // Lost: down past the grace period, which stands for the fence (the host is taken for
    // dead, so its domain is too). A stateful clone's state is reachable from any agent
    // (its image is on the server, over NFS), so it moves as a stateless one does; its
    // old domain, should the host come back, is a stray removed before anything else.
    if lost.contains(&c.agent_id) {
        return Some(Reason::AgentLost);
    }
    // A clone that died waits on its agent for its restart as a running one does.
    let up = super::restart::started(c.phase);
    match agents.get(c.agent_id.as_str()) {
        None => Some(Reason::AgentDown),
        Some(a) if a.state == AgentState::Draining as i32 => Some(Reason::Draining),
        Some(a)
            if a.state == AgentState::Revoked as i32 || a.state == AgentState::Untrusted as i32 =>
        {
            Some(Reason::Untrusted)
        }
        Some(a) if a.state == AgentState::Down as i32 && !up => Some(Reason::AgentDown),
        Some(_) => None,
    }
}

/// Compares `spec` with the deployment's clone `records` and the registered `agents`, of
/// which `lost` are taken for dead.
pub fn reconcile(
    spec: &DeploymentSpec,
    records: &[Clone],
    agents: &[Agent],
    lost: &HashSet<String>,
) -> Plan {
    let wanted = names(spec);
    let keep: HashSet<&str> = wanted.iter().map(String::as_str).collect();
    let recorded: HashMap<&str, &Clone> = records.iter().map(|c| (c.name.as_str(), c)).collect();
    let by_id: HashMap<&str, &Agent> = agents.iter().map(|a| (a.id.as_str(), a)).collect();
    let mut plan = Plan::default();
    let mut place = Vec::new();
    for (i, n) in wanted.iter().enumerate() {
        if !recorded.contains_key(n.as_str()) {
            plan.actions.push(Action::Add {
                clone: n.clone(),
                index: i as u32 + 1,
            });
            place.push(Action::Place {
                clone: n.clone(),
                reason: Reason::Declared,
            });
        }
    }
    for c in records {
        if !keep.contains(c.name.as_str()) {
            plan.actions.push(Action::Remove {
                clone: Box::new(c.clone()),
                reason: Reason::BeyondCount,
            });
            continue;
        }
        match needs_placement(c, &by_id, lost) {
            Some(reason) => place.push(Action::Place {
                clone: c.name.clone(),
                reason,
            }),
            None => *plan.held.entry(c.agent_id.clone()).or_default() += 1,
        }
    }
    plan.actions.extend(place);
    plan
}

/// The domains of a deployment that agents run but the registry does not place there
/// (`assigned`: clone → agent id; `running`: agent id → its domains of the deployment).
pub fn strays(
    assigned: &HashMap<String, String>,
    running: &[(String, Vec<Domain>)],
) -> Vec<Action> {
    let mut out = Vec::new();
    for (agent, domains) in running {
        for d in domains {
            if assigned.get(&d.name) != Some(agent) {
                out.push(Action::Stop {
                    agent: agent.clone(),
                    domain: d.name.clone(),
                    reason: Reason::NotPlacedHere,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use napalm_proto::v1::CloneMode;

    fn spec(count: u32) -> DeploymentSpec {
        DeploymentSpec {
            name: "web".into(),
            count,
            ..Default::default()
        }
    }

    fn agent(id: &str, state: AgentState) -> Agent {
        Agent {
            id: id.into(),
            state: state as i32,
            ..Default::default()
        }
    }

    fn none() -> HashSet<String> {
        HashSet::new()
    }

    fn clone(name: &str, agent: &str, phase: ClonePhase) -> Clone {
        Clone {
            name: name.into(),
            agent_id: agent.into(),
            phase: phase as i32,
            ..Default::default()
        }
    }

    #[test]
    fn names_have_at_least_two_digits() {
        assert_eq!(names(&spec(3)), ["web-01", "web-02", "web-03"]);
        assert_eq!(names(&spec(100))[99], "web-100");
        assert_eq!(names(&spec(100))[0], "web-001");
    }

    #[test]
    fn a_new_deployment_adds_and_places_every_clone() {
        let p = reconcile(&spec(2), &[], &[agent("a", AgentState::Ready)], &none());
        assert_eq!(
            p.actions,
            [
                Action::Add {
                    clone: "web-01".into(),
                    index: 1
                },
                Action::Add {
                    clone: "web-02".into(),
                    index: 2
                },
                Action::Place {
                    clone: "web-01".into(),
                    reason: Reason::Declared
                },
                Action::Place {
                    clone: "web-02".into(),
                    reason: Reason::Declared
                },
            ]
        );
        assert!(p.held.is_empty());
    }

    #[test]
    fn a_converged_deployment_needs_nothing() {
        let records = [
            clone("web-01", "a", ClonePhase::Registered),
            clone("web-02", "b", ClonePhase::Running),
        ];
        let agents = [agent("a", AgentState::Ready), agent("b", AgentState::Ready)];
        let p = reconcile(&spec(2), &records, &agents, &none());
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        assert_eq!(p.held, HashMap::from([("a".into(), 1), ("b".into(), 1)]));
    }

    #[test]
    fn shrinking_removes_the_clones_beyond_the_count() {
        let records = [
            clone("web-01", "a", ClonePhase::Registered),
            clone("web-02", "a", ClonePhase::Registered),
        ];
        let p = reconcile(
            &spec(1),
            &records,
            &[agent("a", AgentState::Ready)],
            &none(),
        );
        assert_eq!(
            p.actions,
            [Action::Remove {
                clone: Box::new(records[1].clone()),
                reason: Reason::BeyondCount
            }]
        );
    }

    #[test]
    fn failed_unplaced_and_stranded_clones_are_placed_again() {
        let records = [
            clone("web-01", "a", ClonePhase::Failed),
            clone("web-02", "", ClonePhase::Pending),
            clone("web-03", "down", ClonePhase::Shipped),
            clone("web-04", "down", ClonePhase::Registered),
            clone("web-05", "gone", ClonePhase::Scheduled),
        ];
        let agents = [
            agent("a", AgentState::Ready),
            agent("down", AgentState::Down),
        ];
        let p = reconcile(&spec(5), &records, &agents, &none());
        let placed: Vec<(String, Reason)> = p
            .actions
            .iter()
            .map(|a| match a {
                Action::Place { clone, reason } => (clone.clone(), *reason),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            placed,
            [
                ("web-01".into(), Reason::Failed),
                ("web-02".into(), Reason::Unplaced),
                ("web-03".into(), Reason::AgentDown),
                ("web-05".into(), Reason::AgentDown),
            ]
        );
        // A registered clone on a down agent stays: it may well still run.
        assert_eq!(p.held, HashMap::from([("down".into(), 1)]));
    }

    #[test]
    fn a_lost_agents_clones_go_elsewhere_stateful_ones_too_once_fenced_by_the_grace() {
        let records = [
            clone("web-01", "lost", ClonePhase::Registered),
            clone("web-02", "a", ClonePhase::Registered),
        ];
        let agents = [
            agent("a", AgentState::Ready),
            agent("lost", AgentState::Down),
        ];
        let lost = HashSet::from(["lost".to_owned()]);
        let p = reconcile(&spec(2), &records, &agents, &lost);
        assert_eq!(
            p.actions,
            [Action::Place {
                clone: "web-01".into(),
                reason: Reason::AgentLost
            }]
        );
        // A stateful clone's state is on the server (NFS): it moves too once the agent is
        // lost, the grace period standing for the fence; while the agent is merely down it
        // stays (it must never run twice).
        let mut stateful = spec(2);
        stateful.mode = CloneMode::Stateful as i32;
        let p = reconcile(&stateful, &records, &agents, &lost);
        assert_eq!(
            p.actions,
            [Action::Place {
                clone: "web-01".into(),
                reason: Reason::AgentLost
            }]
        );
        let p = reconcile(&stateful, &records, &agents, &none());
        assert!(p.actions.is_empty(), "{:?}", p.actions);
    }

    #[test]
    fn an_agent_is_lost_only_past_its_ttl_and_the_grace() {
        let heard = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut down = agent("down", AgentState::Down);
        down.last_heartbeat = Some(napalm_proto::time::timestamp(heard));
        down.heartbeat_ttl = Some(napalm_proto::time::duration(Duration::from_secs(10)));
        let ready = agent("ready", AgentState::Ready);
        let agents = [down, ready];
        let grace = Duration::from_secs(30);
        let at = |s| lost_agents(&agents, heard + Duration::from_secs(s), grace);
        assert!(at(39).is_empty());
        assert_eq!(at(40), HashSet::from(["down".to_owned()]));
    }

    #[test]
    fn a_draining_agents_clones_move_off_stateful_ones_too() {
        let records = [
            clone("web-01", "d", ClonePhase::Registered),
            clone("web-02", "a", ClonePhase::Registered),
        ];
        let agents = [
            agent("a", AgentState::Ready),
            agent("d", AgentState::Draining),
        ];
        let mut stateful = spec(2);
        stateful.mode = CloneMode::Stateful as i32;
        for s in [spec(2), stateful] {
            assert_eq!(
                reconcile(&s, &records, &agents, &none()).actions,
                [Action::Place {
                    clone: "web-01".into(),
                    reason: Reason::Draining
                }]
            );
        }
    }

    #[test]
    fn strays_are_domains_placed_elsewhere_or_nowhere() {
        let assigned = HashMap::from([("web-01".to_owned(), "a".to_owned())]);
        let d = |n: &str| Domain {
            name: n.into(),
            ..Default::default()
        };
        let running = vec![
            ("a".to_owned(), vec![d("web-01"), d("web-02")]),
            ("b".to_owned(), vec![d("web-01")]),
        ];
        assert_eq!(
            strays(&assigned, &running),
            [
                Action::Stop {
                    agent: "a".into(),
                    domain: "web-02".into(),
                    reason: Reason::NotPlacedHere
                },
                Action::Stop {
                    agent: "b".into(),
                    domain: "web-01".into(),
                    reason: Reason::NotPlacedHere
                },
            ]
        );
    }

    #[test]
    fn a_clones_conf_names_the_clones() {
        let mut s = spec(2);
        s.clone_names = vec!["clone01".into(), "clone02".into()];
        assert_eq!(names(&s), ["clone01", "clone02"]);
        let plan = reconcile(&s, &[], &[agent("a", AgentState::Ready)], &none());
        assert_eq!(plan.to_place(), ["clone01", "clone02"]);
    }

    #[test]
    fn a_clone_that_spent_its_restart_budget_is_placed_again_by_itself() {
        let mut spent = clone("web-01", "a", ClonePhase::Failed);
        spent.restarts = 3;
        let plan = reconcile(
            &spec(1),
            &[spent],
            &[agent("a", AgentState::Ready)],
            &none(),
        );
        assert_eq!(
            plan.actions,
            [Action::Place {
                clone: "web-01".into(),
                reason: Reason::Died
            }]
        );
    }

    #[test]
    fn a_revoked_or_untrusted_agents_clones_go_elsewhere() {
        for state in [AgentState::Revoked, AgentState::Untrusted] {
            let records = [clone("web-01", "bad", ClonePhase::Registered)];
            let agents = [agent("a", AgentState::Ready), agent("bad", state)];
            let p = reconcile(&spec(1), &records, &agents, &none());
            assert_eq!(
                p.actions,
                [Action::Place {
                    clone: "web-01".into(),
                    reason: Reason::Untrusted
                }],
                "{state:?}"
            );
        }
    }
}
