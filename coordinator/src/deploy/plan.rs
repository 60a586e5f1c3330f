//! One run of a deployment: converge records, place, build, ship, create, follow.

mod bring_up;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use napalm_proto::v1::{
    Agent, AgentState, Clone, CloneMode, ClonePhase, DeploySummary, Deployment, DeploymentSpec,
    Hypervisor,
};
use serde_json::json;
use tokio::sync::Semaphore;

use super::artifacts::{BuiltLayer, CloneInput};
use super::placement::{failure, hypervisor_on, names, place, sweep_orphans, unplaced};
use super::xml::mac_for;
use super::{progress, send, state_of, Inner, Progress};
use crate::clock::{duration, timestamp};
use crate::registry::{RegistryError, CLONES, DEPLOYMENTS};
use crate::store::{Check, Durability, Txn};

/// One run of a deployment.
pub(super) struct Run {
    inner: Arc<Inner>,
    spec: DeploymentSpec,
    tx: Progress,
    /// Distinguishes this incarnation of the deployment (its creation time): request ids
    /// of a redeploy after an undeploy must not replay the first incarnation's results.
    generation: String,
}

fn clone_key(name: &str) -> String {
    format!("{CLONES}{name}")
}

impl Run {
    pub(super) fn new(inner: Arc<Inner>, spec: DeploymentSpec, tx: Progress) -> Self {
        Self {
            inner,
            spec,
            tx,
            generation: String::new(),
        }
    }

    async fn set(
        &self,
        name: &str,
        f: impl Fn(&mut Clone),
    ) -> Result<Option<Clone>, RegistryError> {
        self.inner
            .registry
            .update::<Clone, _>(&clone_key(name), |cur| {
                Ok(cur.map(|mut c| {
                    f(&mut c);
                    c
                }))
            })
            .await
    }

    /// [`Self::set`] for a phase on the way to running: a crash may lose it (the re-run
    /// redoes the idempotent step), so it does not wait for the disk.
    async fn set_progress(
        &self,
        name: &str,
        f: impl Fn(&mut Clone),
    ) -> Result<Option<Clone>, RegistryError> {
        self.inner
            .registry
            .update_with::<Clone, _>(&clone_key(name), Durability::Eventual, |cur| {
                Ok(cur.map(|mut c| {
                    f(&mut c);
                    c
                }))
            })
            .await
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

    /// Records the deployment and its clones (creating missing ones, removing surplus).
    async fn converge_records(&mut self) -> Result<Vec<Clone>, RegistryError> {
        let reg = &self.inner.registry;
        let now = timestamp(reg.clock().now());
        let spec = self.spec.clone();
        let stored = reg
            .update::<Deployment, _>(&format!("{DEPLOYMENTS}{}", spec.name), |cur| {
                let mut d = cur.unwrap_or_else(|| Deployment {
                    created_at: Some(now),
                    ..Default::default()
                });
                d.spec = Some(spec.clone());
                d.state = napalm_proto::v1::DeploymentState::Progressing as i32;
                d.updated_at = Some(now);
                Ok(Some(d))
            })
            .await?;
        let created = stored.and_then(|d| d.created_at).unwrap_or_default();
        self.generation = format!("{:x}{:x}", created.seconds, created.nanos);
        let wanted = names(&self.spec);
        let existing: HashMap<String, Clone> = reg
            .list_clones(&self.spec.name)
            .await?
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        // Static addresses: the pool's lowest ones no clone of any deployment holds.
        let mut used: HashSet<std::net::Ipv4Addr> = HashSet::new();
        if self.inner.cfg.addresses.is_some() {
            used = reg
                .list::<Clone>(crate::registry::CLONES)
                .await?
                .iter()
                .filter_map(super::assigned)
                .collect();
        }
        for chunk in wanted
            .iter()
            .enumerate()
            .filter(|(_, n)| !existing.contains_key(*n))
            .collect::<Vec<_>>()
            .chunks(64)
        {
            let mut txn = Txn::new();
            for (i, n) in chunk {
                let address = self.inner.cfg.addresses.and_then(|p| p.next_free(&used));
                if let Some(a) = address {
                    used.insert(a);
                }
                let c = Clone {
                    name: (*n).clone(),
                    deployment: self.spec.name.clone(),
                    index: *i as u32 + 1,
                    phase: ClonePhase::Pending as i32,
                    mac: mac_for(&self.spec.name, *i as u32 + 1),
                    addresses: address.map(|a| a.to_string()).into_iter().collect(),
                    ..Default::default()
                };
                txn = txn
                    .check(clone_key(n), Check::Absent)
                    .put(clone_key(n), prost::Message::encode_to_vec(&c));
            }
            match reg.commit(txn).await {
                Ok(_) | Err(RegistryError::Store(crate::store::StoreError::Conflict { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        // Surplus clones (the count went down) are removed like an undeploy of them.
        let keep: HashSet<&String> = wanted.iter().collect();
        let agents = reg.list_agents(&[]).await?;
        for c in existing.values().filter(|c| !keep.contains(&c.name)) {
            if let Some(a) = agents.iter().find(|a| a.id == c.agent_id) {
                let _ = self
                    .inner
                    .agents
                    .delete(&a.grpc_endpoint, &c.name, format!("shrink-{}", c.name))
                    .await;
            }
            reg.commit(Txn::new().delete(clone_key(&c.name))).await?;
            send(
                &self.tx,
                progress(
                    c,
                    ClonePhase::Removed,
                    "removed: beyond the requested count",
                ),
            )
            .await;
        }
        reg.list_clones(&self.spec.name).await
    }

    pub(super) async fn execute(
        mut self,
        started: Instant,
    ) -> Result<DeploySummary, RegistryError> {
        let reg = self.inner.registry.clone();
        let clones = self.converge_records().await?;
        let agents = reg.list_agents(&[]).await?;
        let by_id: HashMap<String, Agent> =
            agents.iter().map(|a| (a.id.clone(), a.clone())).collect();

        // Place clones without a (ready) agent.
        let needs: Vec<String> = clones
            .iter()
            .filter(|c| {
                c.agent_id.is_empty()
                    || c.phase == ClonePhase::Failed as i32
                    || by_id.get(&c.agent_id).is_none_or(|a| {
                        a.state == AgentState::Down as i32
                            && c.phase != ClonePhase::Registered as i32
                            && c.phase != ClonePhase::Running as i32
                    })
            })
            .map(|c| c.name.clone())
            .collect();
        let mut held: HashMap<String, u32> = HashMap::new();
        for c in clones.iter().filter(|c| !needs.contains(&c.name)) {
            *held.entry(c.agent_id.clone()).or_default() += 1;
        }
        // Agents outside this placement already carry the others' allocations; do not count
        // the clones being re-placed twice.
        let placement = place(&self.inner.cfg.policy, &self.spec, &needs, &agents, &held);
        let mut unplaced_clones = Vec::new();
        for (clone, why) in &placement.unplaced {
            send(&self.tx, unplaced(clone, why)).await;
            unplaced_clones.push(failure(clone, why));
            let reason = why
                .iter()
                .map(|r| format!("{}: {}", r.agent_name, r.reason))
                .collect::<Vec<_>>()
                .join("; ");
            self.set(clone, |c| {
                c.phase = ClonePhase::Failed as i32;
                c.last_error = format!("cannot be placed: {reason}");
            })
            .await?;
        }
        // Placements are durable, in batches (one commit per 64 clones, not per clone).
        let keys: Vec<String> = placement.placed.iter().map(|(n, _)| clone_key(n)).collect();
        let scheduled = reg
            .update_many::<Clone, _>(&keys, Durability::Immediate, |j, cur| {
                let agent = &agents[placement.placed[j].1];
                Ok(cur.map(|mut c| {
                    c.agent_id = agent.id.clone();
                    c.phase = ClonePhase::Scheduled as i32;
                    c.last_error.clear();
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
        sweep_orphans(&self.inner.agents, &agents, &self.spec.name, &assigned).await;

        // Build layers and images of every placed clone.
        let todo: Vec<Clone> = clones
            .iter()
            .filter(|c| c.phase != ClonePhase::Failed as i32 && !c.agent_id.is_empty())
            .cloned()
            .collect();
        let mut built = self.build(&todo).await;
        for (name, why) in self.prepare_exports(&todo).await {
            built.insert(name, Err(why));
        }
        let kernel = self.inner.artifacts.kernel();

        // Ship and start, bounded in parallel.
        let gate = Arc::new(Semaphore::new(self.inner.cfg.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let this = Arc::new(self);
        for c in todo {
            let this = Arc::clone(&this);
            let gate = Arc::clone(&gate);
            let layer = built.get(&c.name).cloned();
            let kernel = kernel.clone();
            let agents = agents.clone();
            tasks.spawn(async move {
                let _permit = gate.acquire().await;
                this.bring_up(c, layer, kernel, &agents).await
            });
        }
        while let Some(r) = tasks.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "a clone's bring-up hit the registry");
            }
        }
        this.follow().await?;

        let clones = reg.list_clones(&this.spec.name).await?;
        let state = state_of(&clones);
        let now = timestamp(reg.clock().now());
        reg.update::<Deployment, _>(&format!("{DEPLOYMENTS}{}", this.spec.name), |cur| {
            Ok(cur.map(|mut d| {
                d.state = state as i32;
                d.updated_at = Some(now);
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

    fn is_test(&self, c: &Clone, agents: &HashMap<String, Agent>) -> bool {
        agents
            .get(&c.agent_id)
            .is_some_and(|a| hypervisor_on(&self.spec, a) == Hypervisor::Test)
    }

    async fn build(&self, clones: &[Clone]) -> HashMap<String, Result<BuiltLayer, String>> {
        let cfg = &self.inner.cfg;
        let inputs: Vec<CloneInput> = clones
            .iter()
            .map(|c| CloneInput {
                name: c.name.clone(),
                values: [
                    ("clone_index".into(), json!(c.index)),
                    ("mac".into(), json!(c.mac)),
                    ("interface".into(), json!("eth0")),
                    (
                        "register_url".into(),
                        json!(format!(
                            "{}/v1/clones/register?token={}",
                            cfg.register_base,
                            self.inner.tokens.token(&c.name)
                        )),
                    ),
                ]
                .into_iter()
                .chain(
                    cfg.addresses
                        .and_then(|p| {
                            let a = super::assigned(c)?;
                            Some([
                                ("address".to_owned(), json!(a.to_string())),
                                ("netmask".to_owned(), json!(p.netmask().to_string())),
                            ])
                        })
                        .into_iter()
                        .flatten(),
                )
                .collect(),
            })
            .collect();
        let globals = vec![
            ("server".to_owned(), json!(cfg.server)),
            ("deployment".to_owned(), json!(self.spec.name)),
            (
                "mode".to_owned(),
                json!(if self.stateful() {
                    "stateful"
                } else {
                    "stateless"
                }),
            ),
        ];
        let inner = Arc::clone(&self.inner);
        let deployment = self.spec.name.clone();
        let layers = self.spec.layers.clone();
        let over_nfs = super::layers_over_nfs(cfg);
        let names: Vec<String> = clones.iter().map(|c| c.name.clone()).collect();
        // Derived from the coordinator's secret: coordinators sharing it (HA on etcd) build
        // the same layers, so a takeover does not give clones new host keys.
        let identity = napalm_overlay::Identity::from_secret(
            &self
                .inner
                .tokens
                .derive(&format!("cluster-identity/{deployment}")),
        );
        let result = tokio::task::spawn_blocking(move || {
            inner
                .artifacts
                .build(&deployment, &globals, &layers, &inputs, over_nfs, identity)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match result {
            Ok(list) => list.into_iter().collect(),
            Err(e) => names.into_iter().map(|n| (n, Err(e.clone()))).collect(),
        }
    }

    fn stateful(&self) -> bool {
        self.spec.mode == CloneMode::Stateful as i32
    }

    /// Exports what the clones mount besides the root — their layers (over NFS) and, for
    /// stateful clones, their state (creating missing images) — each to its clone's
    /// address. Returns the clones that cannot start, with why.
    async fn prepare_exports(&self, clones: &[Clone]) -> Vec<(String, String)> {
        let Some(x) = self.inner.cfg.exports.clone() else {
            return Vec::new();
        };
        if !self.stateful() {
            return match super::sync_exports(&self.inner).await {
                Ok(()) => Vec::new(),
                Err(e) => clones.iter().map(|c| (c.name.clone(), e.clone())).collect(),
            };
        }
        let deployment = self.spec.name.clone();
        let names: Vec<String> = clones.iter().map(|c| c.name.clone()).collect();
        let mut failed: Vec<(String, String)> = tokio::task::spawn_blocking(move || {
            names
                .into_iter()
                .filter_map(|n| match x.ensure_state(&deployment, &n) {
                    Ok(_) => None,
                    Err(e) => Some((n, e.to_string())),
                })
                .collect()
        })
        .await
        .unwrap_or_else(|e| {
            clones
                .iter()
                .map(|c| (c.name.clone(), format!("state images: {e}")))
                .collect()
        });
        if let Err(e) = super::sync_exports(&self.inner).await {
            failed = clones.iter().map(|c| (c.name.clone(), e.clone())).collect();
        }
        failed
    }

    /// Waits until every running clone registered (or the timeout): clones on libvirt's
    /// `test` driver run no guest, so they stop at RUNNING.
    async fn follow(&self) -> Result<(), RegistryError> {
        let reg = &self.inner.registry;
        let agents: HashMap<String, Agent> = reg
            .list_agents(&[])
            .await?
            .into_iter()
            .map(|a| (a.id.clone(), a))
            .collect();
        let deadline = Instant::now() + self.inner.cfg.register_timeout;
        let mut seen: HashSet<String> = HashSet::new();
        loop {
            let clones = reg.list_clones(&self.spec.name).await?;
            let mut waiting = Vec::new();
            for c in &clones {
                if c.phase == ClonePhase::Registered as i32 {
                    if seen.insert(c.name.clone()) {
                        self.report(c, "registered").await;
                    }
                } else if c.phase == ClonePhase::Running as i32 && !self.is_test(c, &agents) {
                    waiting.push(c.clone());
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let secs = self.inner.cfg.register_timeout.as_secs();
                for c in waiting {
                    self.fail(&c, &format!("did not register within {secs} s of starting"))
                        .await?;
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
