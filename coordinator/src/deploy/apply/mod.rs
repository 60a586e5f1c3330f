//! Apply, the last of the pipeline's three layers: one run of a deployment carries out
//! what reconcile and place decided: record added and removed clones, record placements,
//! stop strays, build layers, export them, ship, create and start domains
//! ([`bring_up`]), and follow clones until they register. The records a run writes first
//! (the deployment, added and removed clones) are [`records`]'.

mod bring_up;
mod follow;
mod gate;
mod layers;
mod records;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use napalm_proto::v1::{
    Agent, Clone, ClonePhase, DeploySummary, Deployment, DeploymentSpec, Hypervisor,
};
use tokio::sync::Semaphore;

use super::place::{failure, hypervisor_on, place, unplaced};
use super::reconcile::{self, Action};
use super::report::{progress, send, state_of, Progress};
use super::rollout;
use super::ship::Agents;
use super::Inner;
use crate::clock::{duration, timestamp};
use crate::registry::{RegistryError, CLONES, DEPLOYMENTS};
use crate::store::Durability;

/// One run of a deployment.
pub(super) struct Run {
    inner: Arc<Inner>,
    spec: DeploymentSpec,
    tx: Progress,
    /// Whether the run waits for its clones to register (a client's run does; the control
    /// loop's does not).
    follow: bool,
    /// A run of the control loop: it places only what the loop acts on by itself
    /// ([`super::converge::acts_on`]), not every clone reconcile would re-place.
    control_loop: bool,
    /// Distinguishes this incarnation of the deployment (its creation time): request ids
    /// of a redeploy after an undeploy must not replay the first incarnation's results.
    generation: String,
    /// The deployment as stored by this run (spec revision, rollout).
    stored: Deployment,
    /// What this run shipped, or found, on each agent (endpoint, kernel digest, image
    /// digest): every clone of an agent waits for that agent's one shipment
    /// instead of asking it again (one `HasBlobs` per agent, not per clone, and no two
    /// uploads of one blob at once). A bring-up that fails on an agent forgets its
    /// entries, so a retry there asks again.
    shipped: std::sync::Mutex<Shipments>,
    /// Signalled when an undeploy or a newer client deploy of the deployment asks for it:
    /// clones not yet started are not started (taken from the run's hold in
    /// [`Run::execute`]).
    withdrawn: super::holds::Withdrawal,
    /// Places for the clones shipping or being created at once (`DeployConfig::concurrency`);
    /// a clone waiting for its boot slot holds none, so a busy agent does not keep the
    /// others' clones from shipping.
    places: Semaphore,
    /// What the agents that answered ran of the deployment when the run began (agent id
    /// → names of its domains not dead by [`super::restart::dead`]): a clone recorded up
    /// whose domain is not among them boots again, as a new boot (a slot, a boot
    /// timeout, a registration).
    listed: HashMap<String, std::collections::HashSet<String>>,
    /// What the agents that answered ran of the deployment when the run began (agent id
    /// → its domains), listed once ([`Run::apply_records`]) for the run's dead clones and
    /// strays.
    running: Vec<(String, Vec<napalm_proto::v1::Domain>)>,
}

/// One shipment per (agent endpoint, kernel digest, image digest, firmware digest), done
/// once.
type Shipments = HashMap<(String, String, String, Option<String>), Arc<tokio::sync::OnceCell<()>>>;

/// The `clone` span of `name` under `deploy` (see [`crate::telemetry`]), made on first use
/// and kept in `spans` until the run ends.
fn clone_span(
    deploy: &tracing::Span,
    spans: &mut HashMap<String, tracing::Span>,
    name: &str,
) -> tracing::Span {
    spans
        .entry(name.to_owned())
        .or_insert_with(|| tracing::info_span!(parent: deploy, "clone", napalm.clone = %name))
        .clone()
}

fn clone_key(name: &str) -> String {
    format!("{CLONES}{name}")
}

impl Run {
    pub(super) fn new(inner: Arc<Inner>, spec: DeploymentSpec, tx: Progress) -> Self {
        let places = Semaphore::new(inner.cfg.concurrency.max(1));
        Self {
            inner,
            spec,
            tx,
            follow: true,
            control_loop: false,
            generation: String::new(),
            stored: Deployment::default(),
            shipped: std::sync::Mutex::default(),
            withdrawn: Default::default(),
            places,
            listed: Default::default(),
            running: Vec::new(),
        }
    }

    /// Changes clone `name`'s record with `f`, durably.
    async fn set(
        &self,
        name: &str,
        f: impl Fn(&mut Clone),
    ) -> Result<Option<Clone>, RegistryError> {
        self.set_with(name, Durability::Immediate, f).await
    }

    /// [`Self::set`] for a phase on the way to running: a crash may lose it (the re-run
    /// redoes the idempotent step), so it does not wait for the disk.
    async fn set_progress(
        &self,
        name: &str,
        f: impl Fn(&mut Clone),
    ) -> Result<Option<Clone>, RegistryError> {
        self.set_with(name, Durability::Eventual, f).await
    }

    async fn set_with(
        &self,
        name: &str,
        durability: Durability,
        f: impl Fn(&mut Clone),
    ) -> Result<Option<Clone>, RegistryError> {
        self.inner
            .registry
            .update_with::<Clone, _>(&clone_key(name), durability, |cur| {
                Ok(cur.map(|mut c| {
                    f(&mut c);
                    c
                }))
            })
            .await
    }

    pub(super) async fn fail(&self, c: &Clone, why: &str) -> Result<(), RegistryError> {
        self.fail_on(c, why, false).await
    }

    /// Records `c` failed with `why`; `its_agent`: the failure was its agent's or its
    /// domain's (it did not boot there), so a new placement avoids that agent and is a new
    /// attempt for the agents' request ids.
    pub(super) async fn fail_on(
        &self,
        c: &Clone,
        why: &str,
        its_agent: bool,
    ) -> Result<(), RegistryError> {
        tracing::warn!(clone = %c.name, error = %why, "clone failed");
        let now = self.inner.registry.clock().now();
        if let Some(u) = self
            .set(&c.name, |k| {
                crate::deploy::restart::mark_failed(k, now);
                k.last_error = why.to_owned();
                if its_agent && !k.agent_id.is_empty() && !k.failed_agents.contains(&k.agent_id) {
                    k.failed_agents.push(k.agent_id.clone());
                }
            })
            .await?
        {
            self.report(&u, why).await;
        }
        Ok(())
    }

    async fn report(&self, c: &Clone, message: &str) {
        send(
            &self.tx,
            progress(
                c,
                ClonePhase::try_from(c.phase).unwrap_or_default(),
                message,
            ),
        )
        .await;
    }

    /// A run of the control loop: it ends once its clones are brought up, and leaves
    /// alone the clones the loop does not act on.
    pub(super) fn by_the_control_loop(mut self) -> Self {
        self.follow = false;
        self.control_loop = true;
        self
    }

    /// Carries out the run; `hold` is let go of once its clones are brought up (following
    /// them goes on), so the control loop or an undeploy may act on the deployment
    /// meanwhile.
    pub(super) async fn execute(
        mut self,
        started: Instant,
        hold: super::Hold,
    ) -> Result<DeploySummary, RegistryError> {
        self.withdrawn = hold.withdrawn();
        self.inner.adopt_boots().await;
        let reg = self.inner.registry.clone();
        let deploy_span = tracing::Span::current();
        let mut clone_spans = HashMap::new();
        let Some((plan, plan_records)) = self.apply_records().await? else {
            return Ok(DeploySummary {
                deployment: self.spec.name.clone(),
                ..Default::default()
            });
        };
        let agents = reg.list_agents(&[]).await?;
        let by_id: HashMap<String, Agent> =
            agents.iter().map(|a| (a.id.clone(), a.clone())).collect();

        // Place what reconcile says needs an agent; agents already carry the others'
        // allocations, so the clones being re-placed are not counted twice.
        let needs = if self.control_loop {
            super::converge::loop_placements(&plan, &plan_records, reg.clock().now())
        } else {
            plan.to_place()
        };
        let why: HashMap<String, reconcile::Reason> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Place { clone, reason } => Some((clone.clone(), *reason)),
                _ => None,
            })
            .collect();
        let held = plan.held;
        let placing = Instant::now();
        let place_spans: Vec<tracing::Span> = needs
            .iter()
            .map(|n| {
                let parent = clone_span(&deploy_span, &mut clone_spans, n);
                tracing::info_span!(parent: &parent, "place")
            })
            .collect();
        // A clone that died past its restart budget, or did not boot, avoids the agents it
        // failed on (`place::place_failed`).
        let records: HashMap<String, &Clone> =
            plan_records.iter().map(|c| (c.name.clone(), c)).collect();
        let (failed, needs): (Vec<&Clone>, Vec<String>) =
            needs
                .into_iter()
                .fold((Vec::new(), Vec::new()), |(mut f, mut n), name| {
                    match records.get(&name) {
                        Some(c) if !c.failed_agents.is_empty() => f.push(*c),
                        _ => n.push(name),
                    }
                    (f, n)
                });
        let mut placement = place(&self.inner.cfg, &self.spec, &needs, &agents, &held);
        for c in failed {
            let p = super::place::place_failed(&self.inner.cfg, &self.spec, c, &agents, &held);
            placement.placed.extend(p.placed);
            placement.unplaced.extend(p.unplaced);
        }
        let metrics = &self.inner.metrics;
        metrics.phase("place", placing.elapsed());
        drop(place_spans);
        metrics.placements(placement.placed.len(), placement.unplaced.len());
        let mut unplaced_clones = Vec::new();
        for (clone, why) in &placement.unplaced {
            send(&self.tx, unplaced(clone, why)).await;
            unplaced_clones.push(failure(clone, why));
            let reason = why
                .iter()
                .map(|r| format!("{}: {}", r.agent_name, r.reason))
                .collect::<Vec<_>>()
                .join("; ");
            // A spec that allows pending clones keeps them waiting for capacity (the
            // control loop places them when some appears); otherwise they failed.
            let pending = self.spec.allow_pending;
            let now = reg.clock().now();
            self.set(clone, |c| {
                if pending {
                    c.phase = ClonePhase::Pending as i32;
                    c.agent_id.clear();
                    c.last_error = format!("pending, waits for capacity: {reason}");
                    c.last_action = "pending: waits for capacity".into();
                } else {
                    super::restart::mark_failed(c, now);
                    c.last_error = format!("cannot be placed: {reason}");
                    c.last_action = "failed: cannot be placed".into();
                }
            })
            .await?;
        }
        // Placements are durable, in batches (one commit per 64 clones, not per clone).
        let keys: Vec<String> = placement.placed.iter().map(|(n, _)| clone_key(n)).collect();
        let control_loop = self.control_loop;
        let scheduled = reg
            .update_many::<Clone, _>(&keys, Durability::Immediate, |j, cur| {
                let agent = &agents[placement.placed[j].1];
                Ok(cur.map(|mut c| {
                    c.last_action = match why.get(&c.name) {
                        Some(reason) => format!("placed on {}: {reason}", agent.name),
                        None => format!("placed on {}", agent.name),
                    };
                    c.agent_id = agent.id.clone();
                    c.phase = ClonePhase::Scheduled as i32;
                    c.last_error.clear();
                    c.restarts = 0;
                    c.restarted_at = None;
                    // An operator's deploy starts the count of retries over.
                    if !control_loop {
                        c.failures = 0;
                    }
                    c
                }))
            })
            .await?;
        for (c, (_, i)) in scheduled.iter().zip(&placement.placed) {
            if let Some(c) = c {
                self.report(c, &format!("scheduled on {}", agents[*i].name))
                    .await;
            }
        }

        // No agent runs a domain of this deployment the registry does not place there.
        let clones = reg.list_clones(&self.spec.name).await?;
        let assigned: HashMap<String, String> = clones
            .iter()
            .filter(|c| !c.agent_id.is_empty())
            .map(|c| (c.name.clone(), c.agent_id.clone()))
            .collect();
        let listed = std::mem::take(&mut self.running);
        stop_strays(&self.inner.agents, &agents, &assigned, &listed).await;
        self.listed = listed
            .into_iter()
            .map(|(agent, domains)| {
                let up = domains
                    .into_iter()
                    .filter(|d| !super::restart::dead(Some(d)))
                    .map(|d| d.name);
                (agent, up.collect())
            })
            .collect();

        // Build layers and images of every placed clone.
        let todo: Vec<Clone> = clones
            .iter()
            .filter(|c| c.phase != ClonePhase::Failed as i32 && !c.agent_id.is_empty())
            .cloned()
            .collect();
        let building = Instant::now();
        let layer_spans: Vec<tracing::Span> = todo
            .iter()
            .map(|c| {
                let parent = clone_span(&deploy_span, &mut clone_spans, &c.name);
                tracing::info_span!(parent: &parent, "layer")
            })
            .collect();
        // Clones mount their layer over NFS from the directory a build writes: while some
        // run, the new layers are first built aside, so that those the rollout gate holds
        // back keep the layer they booted with; only the clones going now are built where
        // they are exported.
        let staged = crate::deploy::nfs::layers_over_nfs(&self.inner.cfg)
            && todo
                .iter()
                .any(|c| rollout::up(c) && !c.layer_hash.is_empty());
        let mut built = self.build(&todo, staged).await;
        // Loaded at start (`Deployer::load_kernel`); a failure fails each clone below.
        let kernels = self.inner.artifacts.kernels();
        // The kernel artifact each clone boots is a boot input: a clone whose agent's
        // hypervisor, or `--kernel-entry`, changes what it boots is rolled.
        let hv_of: HashMap<&str, Hypervisor> = todo
            .iter()
            .filter_map(|c| Some((c.name.as_str(), by_id.get(&c.agent_id)?)))
            .map(|(n, a)| (n, hypervisor_on(&self.spec, a)))
            .collect();
        for (name, b) in built.iter_mut() {
            if let Ok(b) = b {
                let hv = hv_of
                    .get(name.as_str())
                    .copied()
                    .unwrap_or(Hypervisor::Unspecified);
                let kernel = kernels
                    .as_ref()
                    .map_or("", |k| k.for_hypervisor(hv).r.sha256.as_str());
                b.hash = rollout::boot_hash(&self.spec, kernel, &b.hash);
            }
        }
        let todo = self.gate(todo, &built, &clones, &by_id).await?;
        if staged {
            for (name, why) in self.keep_versions(&todo, &built).await {
                built.insert(name, Err(why));
            }
        }
        for (name, why) in self.prepare_exports(&todo, &built).await {
            built.insert(name, Err(why));
        }
        if !todo.is_empty() {
            self.inner.metrics.phase("layer", building.elapsed());
        }
        drop(layer_spans);

        // Ship and start, bounded in parallel (`Run::places`).
        let mut tasks = tokio::task::JoinSet::new();
        let this = Arc::new(self);
        // One list for every clone's task: a copy each was clones × agents records (GBs
        // and most of the CPU of a 10,000-clone deploy over 500 agents).
        let agents = Arc::new(agents);
        for c in todo {
            let this = Arc::clone(&this);
            let layer = built.get(&c.name).cloned();
            let kernel = kernels.clone();
            let agents = Arc::clone(&agents);
            let span = clone_span(&deploy_span, &mut clone_spans, &c.name);
            tasks.spawn(tracing::Instrument::instrument(
                async move { this.bring_up(c, layer, kernel, &agents).await },
                span,
            ));
        }
        // Following starts with the bring-ups: with boot slots (`boot_slots`) a clone
        // registers while others still wait for theirs, and is reported as it does.
        let brought_up = std::sync::OnceLock::new();
        let bringing_up = async {
            while let Some(r) = tasks.join_next().await {
                if let Ok(Err(e)) = r {
                    tracing::warn!(error = %e, "a clone's bring-up hit the registry");
                }
            }
            // Layer versions no clone mounts any more go, while the run still holds the
            // deployment (another run may be building new ones).
            let pruned = async {
                if !staged {
                    return Ok(());
                }
                let now = reg.list_clones(&this.spec.name).await?;
                let inner = Arc::clone(&this.inner);
                let deployment = this.spec.name.clone();
                let current: Vec<(String, String)> = now
                    .into_iter()
                    .filter(|c| !c.layer_hash.is_empty())
                    .map(|c| (c.name, c.layer_hash))
                    .collect();
                let _ = tokio::task::spawn_blocking(move || {
                    for (n, h) in current {
                        inner.artifacts.prune_versions(&deployment, &n, &h);
                    }
                })
                .await;
                Ok::<(), RegistryError>(())
            }
            .await;
            // The control loop or an undeploy may act on the deployment from here on;
            // following ends with the wait for the others (always set, or it never would).
            drop(hold);
            let _ = brought_up.set(Instant::now());
            pruned
        };
        if this.follow {
            let following = Instant::now();
            let (brought, followed) = tokio::join!(
                bringing_up,
                this.follow(&deploy_span, &mut clone_spans, &brought_up)
            );
            brought?;
            followed?;
            this.inner.metrics.phase("follow", following.elapsed());
        } else {
            bringing_up.await?;
        }

        let clones = reg.list_clones(&this.spec.name).await?;
        let state = state_of(&clones);
        let now = timestamp(reg.clock().now());
        let test = |id: &str| {
            by_id
                .get(id)
                .is_some_and(|a| hypervisor_on(&this.spec, a) == Hypervisor::Test)
        };
        let complete = rollout::complete(&this.stored, &clones, test);
        reg.update::<Deployment, _>(&format!("{DEPLOYMENTS}{}", this.spec.name), |cur| {
            Ok(cur.map(|mut d| {
                d.state = state as i32;
                d.updated_at = Some(now);
                if complete {
                    rollout::mark_complete(&mut d, now);
                }
                d
            }))
        })
        .await?;
        let done = |c: &&Clone| {
            c.phase == ClonePhase::Registered as i32
                || (c.phase == ClonePhase::Running as i32 && this.is_test(c, &by_id))
        };
        Ok(DeploySummary {
            deployment: this.spec.name.clone(),
            requested: this.spec.count,
            succeeded: clones.iter().filter(done).count() as u32,
            failed: clones
                .iter()
                .filter(|c| c.phase == ClonePhase::Failed as i32)
                .count() as u32,
            took: Some(duration(started.elapsed())),
            unplaced: unplaced_clones,
        })
    }
}

/// Deletes the domains of a deployment that agents run (`running`: agent id → its domains
/// of the deployment, as the agents that answered listed them) but the registry does not
/// place there (`assigned`: clone → agent id).
pub(super) async fn stop_strays(
    agents: &Agents,
    all: &[Agent],
    assigned: &HashMap<String, String>,
    running: &[(String, Vec<napalm_proto::v1::Domain>)],
) {
    for action in reconcile::strays(assigned, running) {
        let Action::Stop {
            agent,
            domain,
            reason,
        } = action
        else {
            continue;
        };
        let Some(a) = all.iter().find(|a| a.id == agent) else {
            continue;
        };
        tracing::warn!(domain = %domain, agent = %agent, %reason, "removing a domain");
        if let Err(e) = agents
            .delete(
                &a.grpc_endpoint,
                &domain,
                format!("orphan-{agent}-{domain}"),
            )
            .await
        {
            tracing::warn!(domain = %domain, agent = %agent, error = %e.message(), "could not remove a domain");
        }
    }
}
