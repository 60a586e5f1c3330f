//! The control loop: the leader runs reconcile for every stored deployment, with no client
//! connected, and applies what it finds (Nomad's evaluations, on a timer). A coordinator
//! killed mid-deploy, a leader takeover or an agent that went down leaves clones missing,
//! unplaced or half brought up; the next pass finishes them. Clones that failed to come up
//! are placed again after a backoff that grows with each failure in a row (never given
//! up: what stopped them may be gone at the next try); clones of an agent that is
//! down wait until it is lost (past the grace period), and the loop never follows
//! clones until they register: registration arrives by itself, and the pass after it
//! records the deployment's state.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use napalm_proto::v1::{Agent, Clone, ClonePhase, DeploymentSpec};

use super::reconcile::{self, Action, Reason};
use super::restart::{self, Death, Fate};
use super::snapshot::Snapshot;
use super::Deployer;
use super::{place, rollout};
use crate::clock::timestamp;
use crate::registry::{RegistryError, CLONES};

/// How often the leader looks at every deployment by default.
pub const EVERY: Duration = Duration::from_secs(2);

/// Phases a clone only passes through while a run brings it up: a clone left in one
/// belongs to a run that died. (A pending clone has no agent: reconcile places it.)
fn interrupted(phase: i32) -> bool {
    [
        ClonePhase::Scheduled,
        ClonePhase::Layer,
        ClonePhase::Shipped,
        ClonePhase::Defined,
    ]
    .iter()
    .any(|p| *p as i32 == phase)
}

/// What the control loop carries out by itself of what reconcile asks for: everything
/// but placing a clone whose agent is merely down (a restarting agent is down for a
/// moment; the loop waits until the agent is lost, past the grace period, so a clone
/// never runs twice because an agent restarted), and a failed clone only once its retry
/// is due ([`restart::retry_due`]: after a backoff that grows with each failure in a
/// row). `records`: the deployment's clones.
pub(super) fn acts_on(action: &Action, records: &HashMap<&str, &Clone>, now: SystemTime) -> bool {
    match action {
        Action::Place {
            reason: Reason::AgentDown,
            ..
        } => false,
        Action::Place {
            clone,
            reason: Reason::Failed,
        } => records
            .get(clone.as_str())
            .is_some_and(|c| restart::retry_due(c, now)),
        _ => true,
    }
}

/// The clones of `plan` the control loop places by itself ([`acts_on`]), given the
/// deployment's `records`.
pub(super) fn loop_placements(
    plan: &super::reconcile::Plan,
    records: &[Clone],
    now: SystemTime,
) -> Vec<String> {
    let by_name: HashMap<&str, &Clone> = records.iter().map(|c| (c.name.as_str(), c)).collect();
    plan.actions
        .iter()
        .filter(|a| acts_on(a, &by_name, now))
        .filter_map(|a| match a {
            Action::Place { clone, .. } => Some(clone.clone()),
            _ => None,
        })
        .collect()
}

/// Whether a run the loop started for `spec` may go on once it has the deployment's hold,
/// given the deployment as stored then: the pass read `spec` before it had the hold, and an
/// undeploy, or a client's deploy of another spec, may have finished in between. Such a run
/// would store `spec` again: bring back the deployment an undeploy just removed, or roll
/// the clones back to the older spec. It stops instead; the next pass converges what is
/// stored.
pub(super) fn still_stored(
    stored: Option<&napalm_proto::v1::Deployment>,
    spec: &DeploymentSpec,
) -> bool {
    stored.and_then(|d| d.spec.as_ref()) == Some(spec)
}

/// Whether `plan` asks for more than placements: those only make work when at least one
/// clone can be placed now (clones waiting for capacity do not churn a run each pass).
fn beyond_placement(action: &Action) -> bool {
    !matches!(action, Action::Place { .. })
}

/// A deployment as one control-loop pass sees it.
struct Observed {
    /// Its clone records.
    records: Vec<napalm_proto::v1::Clone>,
    /// What reconcile asks for.
    plan: reconcile::Plan,
    /// Domains agents run where the registry does not place them.
    strays: Vec<reconcile::Action>,
    /// Each answering agent's domains of the deployment.
    running: Vec<(String, Vec<napalm_proto::v1::Domain>)>,
}

impl Deployer {
    /// What reconcile sees for `spec` now: its clone `records` (from the pass's
    /// snapshot), the plan against `agents` (of which `lost` are taken for dead), the
    /// domains of the deployment that agents run where the registry does not place them,
    /// and each answering agent's domains of the deployment. Nothing is written.
    async fn observe(
        &self,
        spec: &DeploymentSpec,
        records: Vec<Clone>,
        agents: &[napalm_proto::v1::Agent],
        lost: &std::collections::HashSet<String>,
    ) -> Result<Observed, RegistryError> {
        let plan = reconcile::reconcile(spec, &records, agents, lost);
        let assigned: HashMap<String, String> = records
            .iter()
            .filter(|c| !c.agent_id.is_empty())
            .map(|c| (c.name.clone(), c.agent_id.clone()))
            .collect();
        let running = if self.inner.cfg.informer {
            self.inner.informer.running(agents, &spec.name).await
        } else {
            self.inner.agents.running(agents, &spec.name).await
        };
        let strays = reconcile::strays(&assigned, &running);
        Ok(Observed {
            records,
            plan,
            strays,
            running,
        })
    }

    /// One pass over every stored deployment: those that need work and that no run holds
    /// get a run in the background; the others get their state recorded. Returns the
    /// deployments it started a run for.
    pub async fn converge_all(&self) -> Result<Vec<String>, RegistryError> {
        let reg = &self.inner.registry;
        self.inner.adopt_boots().await;
        // Every clone record read once for the whole pass (and again only when it grew
        // stale): the agents' allocations and each deployment's records come from it.
        let mut snapshot = Snapshot::take(reg).await?;
        let agents = snapshot.agents(reg).await?;
        self.prefetch(&agents);
        let lost = self.lost(&agents);
        // Looked up by id for every clone of every deployment.
        let by_id: HashMap<&str, &Agent> = agents.iter().map(|a| (a.id.as_str(), a)).collect();
        // A clone left half brought up on an agent that is down waits for the agent to come
        // back (the pass after picks it up) or to be lost.
        let down: std::collections::HashSet<&str> = agents
            .iter()
            .filter(|a| a.state == napalm_proto::v1::AgentState::Down as i32)
            .map(|a| a.id.as_str())
            .collect();
        let mut started = Vec::new();
        for d in reg.list_deployments().await? {
            let Some(spec) = d.spec.clone() else { continue };
            let Some(guard) = self.try_hold(&spec.name) else {
                continue;
            };
            let records = snapshot.take_deployment(reg, &spec.name).await?;
            let Observed {
                records,
                plan,
                strays,
                running,
            } = self.observe(&spec, records, &agents, &lost).await?;
            if self.tend(&spec, &records, &running, &by_id).await? {
                // Restarted or failed clones: the next pass sees them as they are now.
                continue;
            }
            let now = reg.clock().now();
            let by_name: HashMap<&str, &Clone> =
                records.iter().map(|c| (c.name.as_str(), c)).collect();
            let acts_on = |a: &Action| acts_on(a, &by_name, now);
            let placeable = || {
                let to_place = loop_placements(&plan, &records, now);
                !to_place.is_empty()
                    && !place::place(&self.inner.cfg, &spec, &to_place, &agents, &plan.held)
                        .placed
                        .is_empty()
            };
            // A rollout under way makes a run when a batch may start: fewer clones down
            // than it allows, and some still on an older spec.
            let rolling = rollout::progressing(&d)
                && rollout::outdated(&d, &records).next().is_some()
                && records
                    .iter()
                    .filter(|c| !rollout::available(c, |id| self.tests_on(&spec, &by_id, id)))
                    .count()
                    < rollout::max_unavailable(&spec);
            let work = rolling
                || plan.actions.iter().any(beyond_placement)
                || !strays.is_empty()
                || records
                    .iter()
                    .any(|c| interrupted(c.phase) && !down.contains(c.agent_id.as_str()))
                || placeable();
            if work {
                let metrics = &self.inner.metrics;
                let acting: Vec<&Action> = plan
                    .actions
                    .iter()
                    .chain(&strays)
                    .filter(|a| acts_on(a))
                    .collect();
                for a in &acting {
                    metrics.converge_action(kind(a));
                }
                metrics.converge_run();
                let why: Vec<String> = acting.into_iter().map(describe).collect();
                tracing::info!(deployment = %spec.name, actions = ?why, "converging");
                let this = self.clone();
                let name = name_of(&d);
                tokio::spawn(async move {
                    if let Err(e) = this.converge_held(spec, guard).await {
                        tracing::warn!(deployment = %name, error = %e, "converge failed");
                    }
                });
                started.push(name_of(&d));
            } else {
                self.record_state(&d, &records, &by_id).await?;
            }
        }
        Ok(started)
    }
}

impl Deployer {
    /// The clones of `spec` that died or never registered: a dead clone (its domain
    /// shut off, crashed or gone on an agent that answers) is started again on its agent
    /// after a backoff, once the agent has a boot slot free (until then it is recorded
    /// [`Died`](ClonePhase::Died), with what it waits for), up to the restart budget, then
    /// failed with `restarts` kept so that reconcile replaces it elsewhere
    /// ([`Reason::Died`]); a clone running past the boot timeout without registering is
    /// failed with why; a live domain's state is recorded as its agent lists it. Returns
    /// whether it changed a clone's phase (a clone still waiting as recorded is no
    /// change).
    async fn tend(
        &self,
        spec: &DeploymentSpec,
        records: &[Clone],
        running: &[(String, Vec<napalm_proto::v1::Domain>)],
        agents: &HashMap<&str, &Agent>,
    ) -> Result<bool, RegistryError> {
        let reg = &self.inner.registry;
        let now = reg.clock().now();
        let at = timestamp(now);
        let budget = spec.restart_budget.unwrap_or(self.inner.cfg.restart_budget);
        let mut changed = false;
        let deaths = restart::died(records, running, now, budget);
        // A clone dealt with as dead is not also timed out below.
        let dead: std::collections::HashSet<String> =
            deaths.iter().map(|d| d.clone.clone()).collect();
        for Death {
            clone,
            agent,
            state,
            fate,
        } in deaths
        {
            let its = agents.get(agent.as_str()).copied();
            let on = its.map_or(agent.as_str(), |a| a.name.as_str());
            match fate {
                Fate::BackOff { attempt, wait } => {
                    let action = format!(
                        "died on {on}: restarts {} s after its last restart (restart {attempt} of {budget})",
                        wait.as_secs()
                    );
                    changed |= self.mark_died(records, &clone, state, &action).await?;
                }
                Fate::Restart { attempt } => {
                    let Some(a) = its else {
                        continue;
                    };
                    // A restart is a boot like any other: on an agent whose slots are
                    // all taken it waits for a later pass (clones whose host restarted
                    // all die at once, and would otherwise all boot at once). The boot
                    // that died holds no slot any more.
                    self.inner.boot_slots.let_go(&clone);
                    let slot = match self
                        .inner
                        .boot_slots
                        .try_admit(a, super::place::hypervisor_on(spec, a))
                    {
                        Some(Err(slots)) => {
                            let action = format!(
                                "waiting to restart: {slots} clones booting on {} ({slots} at once)",
                                a.name
                            );
                            changed |= self.mark_died(records, &clone, state, &action).await?;
                            continue;
                        }
                        Some(Ok(slot)) => Some(slot),
                        None => None,
                    };
                    changed = true;
                    let started = self
                        .inner
                        .agents
                        .start(
                            &a.grpc_endpoint,
                            &clone,
                            format!("restart-{clone}-{}-{attempt}", at.seconds),
                        )
                        .await;
                    self.inner.metrics.converge_action("restart");
                    let action = format!(
                        "restarted on {}: its domain died (restart {attempt} of {budget})",
                        a.name
                    );
                    tracing::info!(clone = %clone, agent = %a.name, attempt, ok = started.is_ok(), "restarting a clone that died");
                    self.set_clone(&clone, |k| {
                        k.restarts = attempt;
                        k.restarted_at = Some(at);
                        k.last_action = action.clone();
                        match &started {
                            Ok(d) => {
                                k.phase = ClonePhase::Running as i32;
                                k.domain_state = d.state;
                                k.started_at = Some(at);
                                k.registered_at = None;
                            }
                            Err(e) => {
                                // Still dead: tried again after its backoff.
                                k.phase = ClonePhase::Died as i32;
                                k.domain_state = state;
                                k.last_action = format!(
                                    "died on {}: restart {attempt} of {budget} refused",
                                    a.name
                                );
                                k.last_error = format!("restart on {}: {}", a.name, e.message())
                            }
                        }
                    })
                    .await?;
                    if let (Some(slot), Ok(_)) = (slot, &started) {
                        self.inner.boot_slots.hold_while_booting(
                            slot,
                            reg.clone(),
                            clone.clone(),
                            self.inner.boot_timeout(spec),
                        );
                    }
                }
                Fate::Replace => {
                    changed = true;
                    tracing::warn!(clone = %clone, agent = %on, budget, "a clone died past its restart budget: replacing it");
                    self.set_clone(&clone, |k| {
                        restart::mark_replaced(k, &agent, on, state, budget, now);
                    })
                    .await?;
                }
            }
        }
        // Domains alive in another state than recorded: paused, say, or started again by
        // someone else after they died (they boot, and register or time out as any boot).
        for (clone, state) in restart::drifted(records, running) {
            let listed = napalm_proto::v1::DomainState::try_from(state).unwrap_or_default();
            tracing::info!(clone = %clone, state = listed.as_str_name(), "its domain's state changed behind the control plane");
            self.set_clone(clone, |k| {
                k.domain_state = state;
                if k.phase == ClonePhase::Died as i32 {
                    k.phase = ClonePhase::Running as i32;
                    k.started_at = Some(at);
                    k.registered_at = None;
                    k.last_action =
                        "its domain runs again: started outside the control plane".into();
                }
            })
            .await?;
        }
        // Clones that do not register in time.
        let limit = self.inner.boot_timeout(spec);
        for c in records.iter().filter(|c| {
            c.phase == ClonePhase::Running as i32
                && !dead.contains(&c.name)
                && !self.tests_on(spec, agents, &c.agent_id)
                && c.started_at.is_some()
                && napalm_proto::time::from_timestamp(c.started_at.as_ref()) + limit <= now
        }) {
            changed = true;
            let why = self
                .inner
                .not_registered(agents.get(c.agent_id.as_str()).copied(), &c.name, limit)
                .await;
            tracing::warn!(clone = %c.name, "{why}");
            self.set_clone(&c.name, |k| {
                if k.phase == ClonePhase::Running as i32 {
                    restart::mark_failed(k, now);
                    k.last_error = why.clone();
                    k.last_action = format!("failed: {why}");
                    if !k.failed_agents.contains(&k.agent_id) {
                        k.failed_agents.push(k.agent_id.clone());
                    }
                }
            })
            .await?;
        }
        Ok(changed)
    }

    /// Records clone `name` died (its domain listed in `state`) and waiting, as `action`
    /// says, unless its record (one of `records`) says so already. Returns whether it
    /// changed the record.
    async fn mark_died(
        &self,
        records: &[Clone],
        name: &str,
        state: i32,
        action: &str,
    ) -> Result<bool, RegistryError> {
        let same = records.iter().any(|c| {
            c.name == name
                && c.phase == ClonePhase::Died as i32
                && c.domain_state == state
                && c.last_action == action
        });
        if same {
            return Ok(false);
        }
        tracing::info!(clone = %name, "{action}");
        self.set_clone(name, |k| {
            k.phase = ClonePhase::Died as i32;
            k.domain_state = state;
            k.last_action = action.to_owned();
        })
        .await?;
        Ok(true)
    }

    /// Changes clone `name`'s record with `f`.
    async fn set_clone(&self, name: &str, f: impl Fn(&mut Clone)) -> Result<(), RegistryError> {
        self.inner
            .registry
            .update::<Clone, _>(&format!("{CLONES}{name}"), |cur| {
                Ok(cur.map(|mut c| {
                    f(&mut c);
                    c
                }))
            })
            .await?;
        Ok(())
    }
}

fn name_of(d: &napalm_proto::v1::Deployment) -> String {
    d.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default()
}

/// An action's kind, as the metrics label it.
fn kind(a: &Action) -> &'static str {
    match a {
        Action::Add { .. } => "add",
        Action::Remove { .. } => "remove",
        Action::Place { .. } => "place",
        Action::Stop { .. } => "stop",
    }
}

/// One line per action for the log.
fn describe(a: &Action) -> String {
    match a {
        Action::Add { clone, .. } => format!("add {clone}"),
        Action::Remove { clone, reason } => format!("remove {}: {reason}", clone.name),
        Action::Place { clone, reason } => format!("place {clone}: {reason}"),
        Action::Stop {
            agent,
            domain,
            reason,
        } => format!("stop {domain} on {agent}: {reason}"),
    }
}

/// Runs [`Deployer::converge_all`] every `every` while `leads` says this coordinator
/// leads (always, without election).
pub async fn run(deployer: Deployer, every: Duration, leads: impl Fn() -> bool + Send + 'static) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !leads() {
            continue;
        }
        let pass = deployer.converge_all().await;
        deployer.metrics().converge_pass(pass.is_ok());
        if let Err(e) = pass {
            tracing::warn!(error = %e, "a converge pass failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use napalm_proto::v1::Deployment;

    #[test]
    fn a_loop_run_goes_on_only_for_the_spec_still_stored() {
        let spec = crate::testing::spec("d", 4);
        let stored = |spec: &DeploymentSpec| Deployment {
            spec: Some(spec.clone()),
            ..Default::default()
        };
        assert!(still_stored(Some(&stored(&spec)), &spec));
        // Undeployed since the pass read it.
        assert!(!still_stored(None, &spec));
        // Deployed anew with another spec since.
        let newer = DeploymentSpec {
            count: 2,
            ..spec.clone()
        };
        assert!(!still_stored(Some(&stored(&newer)), &spec));
        assert!(!still_stored(Some(&Deployment::default()), &spec));
    }
}
