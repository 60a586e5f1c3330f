//! One run of a deployment: converge records, place, build, ship, create, follow.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use napalm_proto::v1::{
    Agent, AgentState, Clone, CloneMode, ClonePhase, CreateDomainRequest, DeploySummary,
    Deployment, DeploymentSpec, DomainState, Hypervisor, RestartPolicy,
};
use serde_json::json;
use tokio::sync::Semaphore;

use super::artifacts::{BuiltLayer, CloneInput};
use super::placement::{failure, hypervisor_on, names, place, sweep_orphans, unplaced};
use super::ship::Blob;
use super::xml::{domain_xml, mac_for, DomainParams};
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

    fn cmdline(&self, c: &Clone) -> String {
        let cfg = &self.inner.cfg;
        let mut s = String::new();
        if !cfg.kernel_args.is_empty() {
            s.push_str(&cfg.kernel_args);
            s.push(' ');
        }
        let upper = match &cfg.exports {
            Some(x) if self.stateful() => format!(
                "loop+nfs:{}:{}/upper.img:rw",
                cfg.server,
                x.state_path(&self.spec.name, &c.name).display()
            ),
            _ => "tmpfs:rw".to_owned(),
        };
        let ip = match cfg
            .addresses
            .and_then(|p| super::assigned(c).map(|a| (p, a)))
        {
            Some((p, a)) => format!("ip={a}:{}::{}:{}:eth0:off", cfg.server, p.netmask(), c.name),
            None => "ip=dhcp".to_owned(),
        };
        let layer = if super::layers_over_nfs(cfg) {
            format!(
                "nfs:{}:{}",
                cfg.server,
                self.inner
                    .artifacts
                    .layer_root(&self.spec.name, &c.name)
                    .display()
            )
        } else {
            format!("layer:{}", c.name)
        };
        s.push_str(&format!(
            "root={}:ro;{layer}:ro;{upper} {ip}",
            self.spec.root
        ));
        if !self.spec.kernel_args.is_empty() {
            s.push(' ');
            s.push_str(&self.spec.kernel_args);
        }
        s
    }

    /// Ships and starts one clone, retrying on other agents.
    async fn bring_up(
        &self,
        mut c: Clone,
        layer: Option<Result<BuiltLayer, String>>,
        kernel: Result<Blob, String>,
        agents: &[Agent],
    ) -> Result<(), RegistryError> {
        let layer = match (layer, kernel) {
            (Some(Ok(l)), Ok(k)) => (l, k),
            (Some(Err(e)), _) | (_, Err(e)) => return self.fail(&c, &format!("layer: {e}")).await,
            (None, _) => return self.fail(&c, "layer was not built").await,
        };
        let (built, kernel) = layer;
        // A registered clone whose layer did not change stays registered: a re-run only
        // checks its domain is there and running (it will not boot, so not report, again).
        // A changed layer recreates the domain, so the clone boots and registers anew.
        let changed = c.layer_hash != built.hash;
        if let Some(u) = self
            .set_progress(&c.name, |k| {
                k.layer_hash = built.hash.clone();
                if k.phase < ClonePhase::Layer as i32
                    || (changed && k.phase == ClonePhase::Registered as i32)
                {
                    k.phase = ClonePhase::Layer as i32;
                }
            })
            .await?
        {
            c = u;
            self.report(&c, "layer built").await;
        }
        for attempt in 0..self.inner.cfg.attempts.max(1) {
            let Some(agent) = agents.iter().find(|a| a.id == c.agent_id) else {
                return self
                    .fail(&c, &format!("agent {} is gone", c.agent_id))
                    .await;
            };
            match self.create_on(&c, agent, &built, &kernel).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(clone = %c.name, agent = %agent.id, error = %e, "bring-up failed");
                    self.inner.agents.forget(&agent.grpc_endpoint).await;
                    let failed_on = agent.id.clone();
                    let mut avoid = c.failed_agents.clone();
                    avoid.push(failed_on.clone());
                    let rest: Vec<Agent> = agents
                        .iter()
                        .filter(|a| !avoid.contains(&a.id))
                        .cloned()
                        .collect();
                    let p = place(
                        &self.inner.cfg.policy,
                        &self.spec,
                        std::slice::from_ref(&c.name),
                        &rest,
                        &HashMap::new(),
                    );
                    let next = p.placed.first().map(|(_, i)| rest[*i].id.clone());
                    let msg = format!("on {}: {e}", agent.name);
                    match next {
                        Some(next) if attempt + 1 < self.inner.cfg.attempts => {
                            if let Some(u) = self
                                .set(&c.name, |k| {
                                    k.failed_agents.push(failed_on.clone());
                                    k.agent_id = next.clone();
                                    k.phase = ClonePhase::Scheduled as i32;
                                    k.last_error = msg.clone();
                                })
                                .await?
                            {
                                c = u;
                                self.report(&c, &format!("retrying elsewhere after failing {msg}"))
                                    .await;
                            }
                        }
                        _ => return self.fail(&c, &msg).await,
                    }
                }
            }
        }
        Ok(())
    }

    async fn create_on(
        &self,
        c: &Clone,
        agent: &Agent,
        built: &BuiltLayer,
        kernel: &Blob,
    ) -> Result<(), String> {
        let ep = &agent.grpc_endpoint;
        self.inner
            .agents
            .ship(ep, &[kernel, &built.image])
            .await
            .map_err(|e| format!("shipping: {}", e.message()))?;
        if let Some(u) = self
            .set_progress(&c.name, |k| {
                if k.phase != ClonePhase::Registered as i32 {
                    k.phase = ClonePhase::Shipped as i32;
                }
            })
            .await
            .map_err(|e| e.to_string())?
        {
            self.report(&u, &format!("artifacts on {}", agent.name))
                .await;
        }
        let hv = hypervisor_on(&self.spec, agent);
        let r = self.spec.resources.unwrap_or_default();
        let cmdline = self.cmdline(c);
        let xml = domain_xml(
            hv,
            &DomainParams {
                name: &c.name,
                vcpus: r.vcpus,
                memory: r.memory_bytes,
                cmdline: &cmdline,
                state_disk: None,
                mac: &c.mac,
                network: if hv == Hypervisor::Test {
                    None
                } else {
                    self.inner.cfg.network.as_deref()
                },
            },
        );
        let request = CreateDomainRequest {
            request_id: format!(
                "{}-{}-{}",
                c.name,
                self.generation,
                &built.hash[..16.min(built.hash.len())]
            ),
            name: c.name.clone(),
            config_xml: xml,
            artifacts: vec![
                napalm_proto::v1::Artifact {
                    name: "vmlinuz".into(),
                    blob: Some(kernel.r.clone()),
                    writable: false,
                },
                napalm_proto::v1::Artifact {
                    name: "initrd.img".into(),
                    blob: Some(built.image.r.clone()),
                    writable: false,
                },
            ],
            start: true,
            restart_policy: RestartPolicy::OnFailure as i32,
            labels: HashMap::from([
                ("deployment".to_owned(), self.spec.name.clone()),
                ("clone".to_owned(), c.name.clone()),
            ]),
        };
        let agents = &self.inner.agents;
        let created = match agents.create(ep, request.clone()).await {
            // The agent holds this clone's domain from an older layer (its templates
            // changed, or another coordinator built it before a takeover): the registry
            // places the clone here, so converge by replacing it. A domain the agent does
            // not manage is refused differently (conflict) and never touched.
            Err(e) if e.code() == tonic::Code::AlreadyExists => {
                tracing::info!(clone = %c.name, agent = %agent.id, "replacing its domain of an older layer");
                let id = format!("replace-{}", request.request_id);
                agents.delete(ep, &c.name, id).await.map_err(|e| {
                    format!("replacing its domain of an older layer: {}", e.message())
                })?;
                agents.create(ep, request).await
            }
            r => r,
        };
        let domain = created.map_err(|e| format!("creating the domain: {}", e.message()))?;
        // A create interrupted between define and start (a coordinator killed mid-call)
        // leaves the domain defined; the retry returns it as it is, so start it here.
        let domain = if domain.state == DomainState::Running as i32 {
            domain
        } else {
            self.inner
                .agents
                .start(ep, &c.name, format!("start-{}-{}", c.name, self.generation))
                .await
                .map_err(|e| format!("starting the domain: {}", e.message()))?
        };
        let running = domain.state == DomainState::Running as i32;
        if let Some(u) = self
            .set_progress(&c.name, |k| {
                k.domain_state = domain.state;
                if k.phase != ClonePhase::Registered as i32 {
                    k.phase = if running {
                        ClonePhase::Running
                    } else {
                        ClonePhase::Defined
                    } as i32;
                }
            })
            .await
            .map_err(|e| e.to_string())?
        {
            self.report(
                &u,
                &format!(
                    "{} on {}",
                    if running { "running" } else { "defined" },
                    agent.name
                ),
            )
            .await;
        }
        Ok(())
    }

    async fn fail(&self, c: &Clone, why: &str) -> Result<(), RegistryError> {
        tracing::warn!(clone = %c.name, error = %why, "clone failed");
        if let Some(u) = self
            .set(&c.name, |k| {
                k.phase = ClonePhase::Failed as i32;
                k.last_error = why.to_owned();
            })
            .await?
        {
            self.report(&u, why).await;
        }
        Ok(())
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
