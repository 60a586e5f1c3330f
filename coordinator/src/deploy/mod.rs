//! The deploy pipeline (thesis 4.5) in Nomad's three layers:
//!
//! 1. [`reconcile`]: compare the deployment's declared clones with the registry's records
//!    and the agents' domains → a list of [`reconcile::Action`]s with a reason each
//!    (pure; [`converge`] runs it for every deployment with no client attached);
//! 2. [`place`]: the clones to place go to agents through the pure scheduler;
//! 3. [`apply`]: record, build layers ([`artifacts`]), export ([`nfs`]), ship, wait for a
//!    boot slot on the agent ([`boot_slots`]) and create ([`ship`], [`xml`]), follow until
//!    each clone registers.
//!
//! Beside them, `prefetch`: the leader's control loop ships the boot artifacts every clone
//! boots (kernel, firmware, base initramfs) to each ready agent before any deploy needs them;
//! and [`informer`]: what each agent runs, kept from its domain events between the loop's
//! passes.
//!
//! Re-running a deployment of the same name converges on the stored spec: clones already
//! recorded keep their names and agents, missing ones are added, surplus ones removed, and
//! domains an agent runs for this deployment that the registry does not assign to it are
//! deleted, so a deployment never ends with duplicates, whatever point a previous run
//! died at. Every step is idempotent: records are revision-checked, `CreateDomain` carries
//! a request id derived from the clone's layer hash, blobs are content-addressed.

pub mod addresses;
mod apply;
pub mod artifacts;
pub mod boot_slots;
pub mod converge;
mod declare;
mod error;
mod holds;
pub mod informer;
pub mod nfs;
mod normalize;
mod place;
mod prefetch;
pub mod reconcile;
pub mod report;
pub mod restart;
pub mod rollout;
pub mod root_digest;
pub mod scratch;
pub mod ship;
pub mod snapshot;
pub mod xml;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use napalm_proto::v1::{
    AgentState, ClonePhase, DeployRequest, DeploySummary, Deployment, DeploymentSpec,
    UndeployRequest,
};
use napalm_proto::ApiError;

use crate::clock::duration;
use crate::exports::Exporter;
use crate::metrics::Metrics;
use crate::registry::clones::TokenKey;
use crate::registry::{check_name, Registry, RegistryError, CLONES, DEPLOYMENTS};
use crate::scheduler::Policy;
use addresses::AddressPool;
use artifacts::{ArtifactConfig, Artifacts};
pub use error::{chain, DeployError};
use holds::Hold;
pub use holds::WithdrawnBy;
use normalize::invalid;
pub use normalize::MAX_COUNT;
use report::{progress, send, Progress};
use ship::Agents;

/// Site settings of the pipeline.
#[derive(Debug, Clone)]
pub struct DeployConfig {
    /// Kernel, base image, template sets, layer directory.
    pub artifacts: ArtifactConfig,
    /// Address clones mount the shared root from (`root=nfs:SERVER:/`).
    pub server: String,
    /// Base URL of the coordinator's HTTP endpoint as clones reach it.
    pub register_base: String,
    /// Bearer token presented to agents.
    pub agent_token: Option<String>,
    /// How long a clone may take from start to registration.
    pub register_timeout: Duration,
    /// Clones of a run shipping or being created at once (a clone waiting for a boot
    /// slot holds no place).
    pub concurrency: usize,
    /// Capacity policy.
    pub policy: Policy,
    /// libvirt network clones' first NIC joins (`None`: no NIC).
    pub network: Option<String>,
    /// Kernel arguments before the generated ones.
    pub kernel_args: String,
    /// How long an agent stays down past its heartbeat TTL before its host is taken for
    /// dead and its stateless clones boot elsewhere.
    pub lost_grace: Duration,
    /// Restarts on its agent of a clone that died before it is replaced elsewhere (a
    /// deployment's `restart_budget` wins).
    pub restart_budget: u32,
    /// Attempts per clone on different agents before it is reported failed.
    pub attempts: usize,
    /// Static clone addresses (`None`: clones use DHCP).
    pub addresses: Option<AddressPool>,
    /// Append each clone's layer to its own initramfs even when the coordinator exports
    /// NFS with static addresses (where layers are otherwise served over NFS): no layer
    /// export, one image per clone shipped to its agent.
    pub layers_in_initramfs: bool,
    /// Give QEMU/KVM clones ACPI (`<features><acpi/><apic/></features>`): the guest
    /// kernel finds its local APIC timer and the HPET, calibrates its TSC and stops
    /// ticking while idle; without it, it keeps time with the PIT at 250 interrupts a
    /// second, idle or not.
    pub guest_acpi: bool,
    /// Back QEMU/KVM clones' RAM with the agents' hosts' huge page pool
    /// (`<memoryBacking><hugepages/>`). Pages a pool holds stay with the host's kernel
    /// between guests, so a clone's boot does not fault in fresh memory page by page;
    /// a host whose pool cannot hold a clone fails to start it (libvirt's error), and the
    /// clone is placed again elsewhere.
    pub guest_hugepages: bool,
    /// Ask agents to start QEMU/KVM clones from their template of the clone's shape (the
    /// agent's `boot_from_template`) when every clone shares one image (layers over NFS)
    /// and has no scratch disk.
    pub boot_from_template: bool,
    /// The NFS exports this coordinator writes (`None`: the root is exported by hand and
    /// stateful clones are refused).
    pub exports: Option<Arc<Exporter>>,
    /// The cluster trust (`None`: none): agents at `https://` endpoints are dialed over
    /// mutual TLS and must prove the id the registry records for them.
    pub trust: Option<crate::trust::Trust>,
    /// How many clones boot at once per agent ([`boot_slots`]).
    pub boot_concurrency: boot_slots::BootConcurrency,
    /// Keep what each agent runs from its domain events between the control loop's
    /// passes ([`informer`]); off, every pass lists every agent for every deployment (the
    /// benches' baseline).
    pub informer: bool,
}

/// Runs deployments.
#[derive(Clone)]
pub struct Deployer {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    cfg: DeployConfig,
    agents: Agents,
    artifacts: Artifacts,
    /// The shared roots' digests, which clones' domains carry as their `root` label.
    roots: root_digest::RootDigests,
    tokens: Arc<TokenKey>,
    /// Placements, runs and phase durations go here.
    metrics: Metrics,
    /// One hold per deployment, and the undeploy's withdrawal ([`holds`]).
    holds: holds::Holds,
    /// Boot artifacts shipped to agents ahead of their clones.
    prefetch: prefetch::Prefetch,
    /// Each agent's boot slots, shared by every run.
    boot_slots: boot_slots::BootSlots,
    /// What each agent runs, kept from its domain events for the control loop.
    informer: informer::Informer,
}

impl Inner {
    /// Why clone `clone` failed when it did not register within `limit` of starting:
    /// what the guest printed says why (no kernel, no root, no network…), so its
    /// console's last 15 lines from its `agent` go with it.
    async fn not_registered(
        &self,
        agent: Option<&napalm_proto::v1::Agent>,
        clone: &str,
        limit: Duration,
    ) -> String {
        let console = match agent {
            Some(a) => self.agents.console_note(&a.grpc_endpoint, clone, 15).await,
            None => "console: (unavailable: its agent is unknown)".into(),
        };
        format!(
            "did not register within {} s of starting; {console}",
            limit.as_secs()
        )
    }

    /// How long a started clone of `spec` may take to register.
    fn boot_timeout(&self, spec: &DeploymentSpec) -> Duration {
        spec.boot_timeout
            .map(napalm_proto::time::duration_from)
            .filter(|d| !d.is_zero())
            .unwrap_or(self.cfg.register_timeout)
    }
}

impl Deployer {
    /// A pipeline over `registry`, with metrics of its own.
    pub fn new(registry: Registry, cfg: DeployConfig, tokens: Arc<TokenKey>) -> Self {
        Self::with_metrics(registry, cfg, tokens, Metrics::new())
    }

    /// A pipeline over `registry` recording into `metrics` (the daemon's `/metrics`).
    pub fn with_metrics(
        registry: Registry,
        cfg: DeployConfig,
        tokens: Arc<TokenKey>,
        metrics: Metrics,
    ) -> Self {
        let agents = Agents::new(cfg.agent_token.clone()).with_trust(cfg.trust.clone());
        let informer = informer::Informer::new(agents.clone(), metrics.clone());
        let artifacts = Artifacts::new(cfg.artifacts.clone());
        let boot_slots = boot_slots::BootSlots::new(cfg.boot_concurrency);
        Self {
            inner: Arc::new(Inner {
                registry,
                cfg,
                agents,
                artifacts,
                roots: Default::default(),
                tokens,
                metrics,
                holds: Default::default(),
                prefetch: prefetch::Prefetch::new(),
                boot_slots,
                informer,
            }),
        }
    }

    /// The agents taken for dead now.
    fn lost(&self, agents: &[napalm_proto::v1::Agent]) -> std::collections::HashSet<String> {
        let now = self.inner.registry.clock().now();
        reconcile::lost_agents(agents, now, self.inner.cfg.lost_grace)
    }

    /// Waits for the right to work on `deployment`.
    async fn hold(&self, deployment: &str) -> Hold {
        self.inner.holds.hold(deployment, None).await
    }

    /// The right to work on `deployment`, unless someone else has it.
    fn try_hold(&self, deployment: &str) -> Option<Hold> {
        self.inner.holds.try_hold(deployment)
    }

    /// Brings a stored deployment to its spec with nobody connected: one run that does
    /// not follow its clones until they register.
    async fn converge_held(
        &self,
        spec: DeploymentSpec,
        hold: Hold,
    ) -> Result<DeploySummary, RegistryError> {
        // Nobody reads this run's progress.
        let (tx, _) = tokio::sync::mpsc::channel(1);
        let started = Instant::now();
        let r = apply::Run::new(Arc::clone(&self.inner), spec, tx)
            .by_the_control_loop()
            .execute(started, hold)
            .await;
        self.inner
            .metrics
            .run_finished("converge", started.elapsed());
        r
    }

    /// The metrics this pipeline records into.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Records a deployment's state from its clones when it changed.
    async fn record_state(
        &self,
        d: &Deployment,
        clones: &[napalm_proto::v1::Clone],
        agents: &HashMap<&str, &napalm_proto::v1::Agent>,
    ) -> Result<(), RegistryError> {
        let state = report::state_of(clones) as i32;
        let Some(spec) = &d.spec else { return Ok(()) };
        let complete = rollout::complete(d, clones, |id| self.tests_on(spec, agents, id));
        if d.state == state && !complete {
            return Ok(());
        }
        let now = crate::clock::timestamp(self.inner.registry.clock().now());
        self.inner
            .registry
            .update::<Deployment, _>(&format!("{DEPLOYMENTS}{}", spec.name), |cur| {
                Ok(cur.map(|mut d| {
                    d.state = state;
                    d.updated_at = Some(now);
                    if complete {
                        rollout::mark_complete(&mut d, now);
                    }
                    d
                }))
            })
            .await?;
        Ok(())
    }

    /// Whether agent `id` (of `agents`, by id) runs `spec`'s clones on libvirt's test
    /// driver (no guest boots, so none registers: running is as far as they go).
    fn tests_on(
        &self,
        spec: &DeploymentSpec,
        agents: &HashMap<&str, &napalm_proto::v1::Agent>,
        id: &str,
    ) -> bool {
        agents
            .get(id)
            .is_some_and(|a| place::hypervisor_on(spec, a) == napalm_proto::v1::Hypervisor::Test)
    }

    /// Reads the kernel and, unless `--kernel-entry bzimage`, extracts the ELF QEMU/KVM
    /// clones boot through PVH (off the async workers; kept for every later deploy). An
    /// error with `--kernel-entry pvh` means that kernel cannot boot so: the coordinator
    /// refuses to start rather than failing each deploy. Also reads and hashes the base
    /// initramfs, which the control loop ships ahead (`prefetch`); a missing one is left
    /// for the first deploy to report.
    pub async fn load_kernel(&self) -> Result<(), DeployError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let _ = inner.artifacts.base_blob();
            inner.artifacts.kernels().map(drop)
        })
        .await
        .map_err(|_| DeployError::TaskPanicked("kernel extraction"))?
    }

    /// Whether QEMU/KVM clones must boot through the PVH entry (`--kernel-entry pvh`).
    pub fn requires_pvh(&self) -> bool {
        self.inner.cfg.artifacts.kernel_entry == artifacts::KernelEntry::Pvh
    }

    /// Writes the NFS exports for what the registry holds (at start-up, before clones
    /// mount anything).
    pub async fn sync_exports(&self) -> Result<(), DeployError> {
        let i = &self.inner;
        nfs::sync_exports(&i.cfg, &i.registry, &i.artifacts, &HashMap::new()).await
    }

    /// Deploys or converges; streams progress into `tx`; returns the summary.
    pub async fn deploy(
        &self,
        req: DeployRequest,
        tx: Progress,
    ) -> Result<DeploySummary, ApiError> {
        let started = Instant::now();
        let spec = self.normalize(req.spec)?;
        self.check_names_free(&spec).await?;
        if req.dry_run {
            let agents = self
                .inner
                .registry
                .list_agents(&[])
                .await
                .map_err(ApiError::from)?;
            let names = reconcile::names(&spec);
            let placement = place::place(&self.inner.cfg, &spec, &names, &agents, &HashMap::new());
            for (clone, why) in &placement.unplaced {
                send(&tx, place::unplaced(clone, why)).await;
            }
            return Ok(DeploySummary {
                deployment: spec.name.clone(),
                requested: spec.count,
                succeeded: placement.placed.len() as u32,
                failed: placement.unplaced.len() as u32,
                took: Some(duration(started.elapsed())),
                unplaced: Vec::new(),
            });
        }
        // No ready agent at all: refuse before anything is written (a deployment of
        // clones that can only fail helps nobody). Every client gets the same answer.
        let agents = self
            .inner
            .registry
            .list_agents(&[])
            .await
            .map_err(ApiError::from)?;
        if !agents.iter().any(|a| a.state == AgentState::Ready as i32) {
            return Err(ApiError::Unschedulable {
                description: no_ready_agent(&agents, &spec),
            });
        }
        // Admission: what does not fit is refused whole, before anything is written,
        // unless the spec lets it wait.
        if !spec.allow_pending {
            let records = self
                .inner
                .registry
                .list_clones(&spec.name)
                .await
                .map_err(ApiError::from)?;
            let plan = reconcile::reconcile(&spec, &records, &agents, &self.lost(&agents));
            let needs = plan.to_place();
            let placement = place::place(&self.inner.cfg, &spec, &needs, &agents, &plan.held);
            if !placement.unplaced.is_empty() {
                return Err(ApiError::Unschedulable {
                    description: place::shortfall(&spec, needs.len(), &placement),
                });
            }
        }
        // One run per batch of a rolling update: each follows its clones until they
        // register, and the next batch starts after it. The client's part ends when no
        // clone is left on an older revision or on its way up, or when a run changed
        // none of them (the rollout paused, or clones down for other reasons); the
        // control loop carries on.
        let key = format!("{DEPLOYMENTS}{}", spec.name);
        let mut before = None;
        // This deploy takes over from a run still starting the deployment's clones (an
        // earlier client's, or the control loop's): those waiting for a boot slot are not
        // started, so a corrected spec does not wait for a storm of the old one to get its
        // slots. Its clones go on under this deploy's spec.
        let mut taking_over = Some(WithdrawnBy::NewerDeploy);
        loop {
            let hold = self.inner.holds.hold(&spec.name, taking_over.take()).await;
            let withdrawal = hold.withdrawn();
            let p = apply::Run::new(Arc::clone(&self.inner), spec.clone(), tx.clone());
            let r = p.execute(started, hold).await.map_err(ApiError::from)?;
            // A newer deploy took over: another run of this one would store the older spec
            // again. (After an undeploy the deployment is gone, below.)
            if withdrawal.by() == Some(WithdrawnBy::NewerDeploy) {
                self.inner.metrics.run_finished("deploy", started.elapsed());
                return Ok(r);
            }
            let registry = &self.inner.registry;
            let d = registry
                .get::<Deployment>(&key)
                .await
                .map_err(ApiError::from)?;
            let Some((d, _)) = d.filter(|(d, _)| rollout::progressing(d)) else {
                self.inner.metrics.run_finished("deploy", started.elapsed());
                return Ok(r);
            };
            let clones = registry
                .list_clones(&spec.name)
                .await
                .map_err(ApiError::from)?;
            // The control loop may be bringing up the next batch (the hold is let go of
            // while following): those clones are on their way with the new revision, and
            // the next run follows them too.
            let left: Vec<String> = rollout::unsettled(&d, &clones)
                .map(|c| c.name.clone())
                .collect();
            if left.is_empty() || before.as_ref() == Some(&left) {
                self.inner.metrics.run_finished("deploy", started.elapsed());
                return Ok(r);
            }
            before = Some(left);
        }
    }

    /// Removes a deployment's clones from their agents and the registry.
    pub async fn undeploy(
        &self,
        req: UndeployRequest,
        tx: Progress,
    ) -> Result<DeploySummary, ApiError> {
        let started = Instant::now();
        check_name("name", &req.name)?;
        // A run bringing the deployment up starts no more clones: those waiting for a
        // boot slot (a storm takes a minute to get them all) are not started at all.
        let _hold = self
            .inner
            .holds
            .hold(&req.name, Some(WithdrawnBy::Undeploy))
            .await;
        let registry = &self.inner.registry;
        let Some((_deployment, _)) = registry
            .get::<Deployment>(&format!("{DEPLOYMENTS}{}", req.name))
            .await
            .map_err(ApiError::from)?
        else {
            return Err(ApiError::NotFound {
                kind: "deployment".into(),
                name: req.name,
            });
        };
        let clones = registry
            .list_clones(&req.name)
            .await
            .map_err(ApiError::from)?;
        let agents = registry.list_agents(&[]).await.map_err(ApiError::from)?;
        let endpoint: HashMap<&str, &str> = agents
            .iter()
            .map(|a| (a.id.as_str(), a.grpc_endpoint.as_str()))
            .collect();
        let mut removed = 0;
        let mut failed = 0;
        for c in &clones {
            if let Some(ep) = endpoint.get(c.agent_id.as_str()) {
                if let Err(e) = self
                    .inner
                    .agents
                    .delete(ep, &c.name, format!("undeploy-{}", c.name))
                    .await
                {
                    failed += 1;
                    send(
                        &tx,
                        progress(
                            c,
                            ClonePhase::Failed,
                            &format!("delete on {}: {}", c.agent_id, e.message()),
                        ),
                    )
                    .await;
                    continue;
                }
            }
            registry
                .commit(crate::store::Txn::new().delete(format!("{CLONES}{}", c.name)))
                .await
                .map_err(ApiError::from)?;
            removed += 1;
            send(&tx, progress(c, ClonePhase::Removed, "removed")).await;
        }
        // Domains of this deployment the registry did not know about (a crash between
        // create and record) go too.
        let running = self.inner.agents.running(&agents, &req.name).await;
        apply::stop_strays(&self.inner.agents, &agents, &HashMap::new(), &running).await;
        if failed == 0 {
            registry
                .commit(crate::store::Txn::new().delete(format!("{DEPLOYMENTS}{}", req.name)))
                .await
                .map_err(ApiError::from)?;
        }
        // The removed clones' state exports go (their state stays on the server).
        if let Err(e) = self.sync_exports().await {
            tracing::warn!(error = %chain(&e), "exports not updated after undeploy");
        }
        self.inner
            .metrics
            .run_finished("undeploy", started.elapsed());
        Ok(DeploySummary {
            deployment: req.name,
            requested: clones.len() as u32,
            succeeded: removed,
            failed,
            took: Some(duration(started.elapsed())),
            unplaced: Vec::new(),
        })
    }
}

/// Why nothing can be deployed when no agent is ready, naming the agents there are.
fn no_ready_agent(agents: &[napalm_proto::v1::Agent], spec: &DeploymentSpec) -> String {
    let known = if agents.is_empty() {
        "none is registered".to_owned()
    } else {
        let list: Vec<String> = agents
            .iter()
            .map(|a| {
                let state = AgentState::try_from(a.state).unwrap_or_default();
                let state = state.as_str_name().trim_start_matches("AGENT_STATE_");
                format!("{} {}", a.name, state.to_lowercase())
            })
            .collect();
        format!("{} known, none ready: {}", agents.len(), list.join(", "))
    };
    format!(
        "no agent can take clones ({known}): no ready agent to place the {} clone(s) of {:?} \
         on; nothing was deployed. Start napalm-agent on a hypervisor host (it registers \
         itself with --coordinator, is found by mDNS, or give napalm-coordinator --agent \
         ENDPOINT) or undrain one, then check `napalmctl agents`",
        spec.count, spec.name
    )
}
