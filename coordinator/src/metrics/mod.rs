//! The coordinator's telemetry, as OpenMetrics text at `GET /metrics` on its HTTP listener
//! (the same page a Prometheus scrapes and `charts/napalm/dashboards/napalm.json` queries).
//!
//! Two kinds of series, all named `napalm_coordinator_*`:
//! - **state**, read from the registry at each scrape (so every coordinator of an etcd
//!   cluster reports the same): deployments by state, clones by deployment and phase,
//!   agents by state, each agent's allocations and capacity;
//! - **events**, counted where they happen: placements, control-loop passes, runs and
//!   actions ([`crate::deploy::converge`]), the registry's reads of every clone record
//!   ([`Registry::clone_listings`]), gRPC requests and their latency per method
//!   ([`layer::RpcMetricsLayer`], a `tower` layer on the tonic server), deploy, undeploy
//!   and converge run durations, the pipeline's phase durations (place, layer, ship,
//!   create, follow) and clones' boot times as they register.
//!
//! Series with labels known up front start at zero, so `rate()` sees the first event.
//! Encoding is `prometheus-client`'s; nothing here formats exposition text by hand.

pub mod layer;

use std::sync::Arc;
use std::time::Duration;

use napalm_proto::v1::{AgentState, ClonePhase, DeploymentState};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as Exposition;

use crate::registry::{Registry, RegistryError};

/// Label pairs of one series.
pub type Labels = Vec<(&'static str, String)>;

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// The `Content-Type` of [`Metrics::render`]'s page.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Kinds of deploy runs ([`Metrics::run_finished`]).
pub const RUN_KINDS: &[&str] = &["deploy", "converge", "undeploy"];

/// Phases of the pipeline whose durations are recorded ([`Metrics::phase`]): `place`
/// (one run's placement), `layer` (one run's layers and exports), `ship` and `create`
/// (one clone on its agent), `follow` (a client's run waiting for its clones to register).
pub const PHASES: &[&str] = &["place", "layer", "ship", "create", "follow"];

/// Control-loop action kinds ([`Metrics::converge_action`]).
pub const ACTIONS: &[&str] = &["add", "remove", "place", "stop"];

/// Errors of the metrics page.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The registry could not be read for the state series.
    #[error("reading the registry for the state series")]
    Registry(#[from] RegistryError),
    /// The exposition could not be encoded.
    #[error("encoding the OpenMetrics text")]
    Encode(#[from] std::fmt::Error),
}

/// The coordinator's metrics; cheap to clone (one shared set).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

struct Inner {
    exposition: Exposition,
    /// One scrape refreshes the state series at a time.
    refresh: tokio::sync::Mutex<()>,
    deployments: Family<Labels, Gauge>,
    clones: Family<Labels, Gauge>,
    agents: Family<Labels, Gauge>,
    agent_clones: Family<Labels, Gauge>,
    agent_vcpus: Family<Labels, Gauge>,
    agent_memory: Family<Labels, Gauge>,
    agent_capacity_vcpus: Family<Labels, Gauge>,
    agent_capacity_memory: Family<Labels, Gauge>,
    placements: Family<Labels, Counter>,
    converge_passes: Family<Labels, Counter>,
    converge_runs: Counter,
    clone_listings: Counter,
    converge_actions: Family<Labels, Counter>,
    agent_looks: Family<Labels, Counter>,
    rpc_requests: Family<Labels, Counter>,
    rpc_duration: HistogramFamily,
    run_duration: HistogramFamily,
    phase_duration: HistogramFamily,
    clone_boot: Histogram,
}

fn latency_buckets() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn run_buckets() -> Histogram {
    // 10 ms … ~5.5 min.
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

fn one(name: &'static str, value: impl Into<String>) -> Labels {
    vec![(name, value.into())]
}

/// `CLONE_PHASE_REGISTERED` → `registered`.
fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

/// A clone phase as a label value.
pub fn phase_name(phase: i32) -> String {
    let p = ClonePhase::try_from(phase).unwrap_or_default();
    short(p.as_str_name(), "CLONE_PHASE_")
}

/// An agent state as a label value.
pub fn agent_state_name(state: i32) -> String {
    let s = AgentState::try_from(state).unwrap_or_default();
    short(s.as_str_name(), "AGENT_STATE_")
}

/// A deployment state as a label value.
pub fn deployment_state_name(state: i32) -> String {
    let s = DeploymentState::try_from(state).unwrap_or_default();
    short(s.as_str_name(), "DEPLOYMENT_STATE_")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set, every series registered.
    pub fn new() -> Self {
        let mut r = Exposition::with_prefix("napalm_coordinator");
        let gauges = || Family::<Labels, Gauge>::default();
        let histograms = |f: fn() -> Histogram| HistogramFamily::new_with_constructor(f);
        let inner = Inner {
            exposition: Exposition::default(),
            refresh: tokio::sync::Mutex::new(()),
            deployments: gauges(),
            clones: gauges(),
            agents: gauges(),
            agent_clones: gauges(),
            agent_vcpus: gauges(),
            agent_memory: gauges(),
            agent_capacity_vcpus: gauges(),
            agent_capacity_memory: gauges(),
            placements: Family::default(),
            converge_passes: Family::default(),
            converge_runs: Counter::default(),
            clone_listings: Counter::default(),
            converge_actions: Family::default(),
            agent_looks: Family::default(),
            rpc_requests: Family::default(),
            rpc_duration: histograms(latency_buckets),
            run_duration: histograms(run_buckets),
            phase_duration: histograms(latency_buckets),
            clone_boot: Histogram::new(exponential_buckets(0.25, 2.0, 10)),
        };
        let i = &inner;
        r.register(
            "deployments",
            "Deployments by state (from the registry).",
            i.deployments.clone(),
        );
        r.register(
            "clones",
            "Clones by deployment and phase (from the registry).",
            i.clones.clone(),
        );
        r.register(
            "agents",
            "Agents by state (from the registry).",
            i.agents.clone(),
        );
        r.register(
            "agent_allocated_clones",
            "Clones placed on each agent.",
            i.agent_clones.clone(),
        );
        r.register(
            "agent_allocated_vcpus",
            "Virtual CPUs allocated to clones on each agent.",
            i.agent_vcpus.clone(),
        );
        r.register(
            "agent_allocated_memory_bytes",
            "Memory allocated to clones on each agent.",
            i.agent_memory.clone(),
        );
        r.register(
            "agent_capacity_vcpus",
            "CPUs each agent offers to clones, as last reported.",
            i.agent_capacity_vcpus.clone(),
        );
        r.register(
            "agent_capacity_memory_bytes",
            "Memory each agent offers to clones, as last reported.",
            i.agent_capacity_memory.clone(),
        );
        r.register(
            "placements",
            "Clones placed on an agent, or left unplaced, by deploy runs.",
            i.placements.clone(),
        );
        r.register(
            "converge_passes",
            "Passes of the control loop over every deployment, by result.",
            i.converge_passes.clone(),
        );
        r.register(
            "converge_runs",
            "Runs the control loop started for a deployment that needed work.",
            i.converge_runs.clone(),
        );
        r.register(
            "registry_clone_listings",
            "Reads of every clone record at once (a control-loop pass, a scrape, a listing \
             of clones): the store reads this many times the number of clones.",
            i.clone_listings.clone(),
        );
        r.register(
            "converge_actions",
            "Actions the control loop found to act on, by kind.",
            i.converge_actions.clone(),
        );
        r.register(
            "converge_agent_looks",
            "The control loop's looks at what an agent runs of a deployment: answered \
             from a listing kept from the agent's domain events (kept), or by listing the \
             agent (listed).",
            i.agent_looks.clone(),
        );
        r.register(
            "grpc_requests",
            "gRPC requests served, by method and status code.",
            i.rpc_requests.clone(),
        );
        r.register(
            "grpc_request_duration_seconds",
            "gRPC request latency per method (until the response head; a stream's \
             duration is not included).",
            i.rpc_duration.clone(),
        );
        r.register(
            "run_duration_seconds",
            "Duration of deploy, converge and undeploy runs.",
            i.run_duration.clone(),
        );
        r.register(
            "deploy_phase_duration_seconds",
            "Duration of the deploy pipeline's phases (place, layer: per run; ship, \
             create: per clone; follow: a client's run waiting for registrations).",
            i.phase_duration.clone(),
        );
        r.register(
            "clone_boot_seconds",
            "Clones' boot time, kernel start to registration, as they register.",
            i.clone_boot.clone(),
        );
        for kind in RUN_KINDS {
            let _ = i.run_duration.get_or_create(&one("kind", *kind));
        }
        for p in PHASES {
            let _ = i.phase_duration.get_or_create(&one("phase", *p));
        }
        for a in ACTIONS {
            let _ = i.converge_actions.get_or_create(&one("action", *a));
        }
        for answer in ["kept", "listed"] {
            let _ = i.agent_looks.get_or_create(&one("answer", answer));
        }
        for result in ["ok", "error"] {
            let _ = i.converge_passes.get_or_create(&one("result", result));
        }
        for result in ["placed", "unplaced"] {
            let _ = i.placements.get_or_create(&one("result", result));
        }
        for m in layer::METHODS {
            let _ = i.rpc_duration.get_or_create(&one("method", *m));
        }
        let mut inner = inner;
        inner.exposition = r;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Clones placed (`placed`) and left unplaced by one run.
    pub fn placements(&self, placed: usize, unplaced: usize) {
        let i = &self.inner;
        i.placements
            .get_or_create(&one("result", "placed"))
            .inc_by(placed as u64);
        i.placements
            .get_or_create(&one("result", "unplaced"))
            .inc_by(unplaced as u64);
    }

    /// One control-loop pass ended (`ok`: it read the registry and started what it found).
    pub fn converge_pass(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.inner
            .converge_passes
            .get_or_create(&one("result", result))
            .inc();
    }

    /// The control loop started a run for a deployment.
    pub fn converge_run(&self) {
        self.inner.converge_runs.inc();
    }

    /// The control loop found an action of `kind` (one of [`ACTIONS`]) to act on.
    pub fn converge_action(&self, kind: &'static str) {
        self.inner
            .converge_actions
            .get_or_create(&one("action", kind))
            .inc();
    }

    /// The control loop looked at what an agent runs: from a `kept` listing, or by
    /// listing the agent.
    pub fn agent_look(&self, kept: bool) {
        let answer = if kept { "kept" } else { "listed" };
        self.inner
            .agent_looks
            .get_or_create(&one("answer", answer))
            .inc();
    }

    /// A gRPC request to `method` ended with `code` after `took`.
    pub fn rpc(&self, method: &'static str, code: &'static str, took: Duration) {
        let i = &self.inner;
        i.rpc_duration
            .get_or_create(&one("method", method))
            .observe(took.as_secs_f64());
        i.rpc_requests
            .get_or_create(&vec![("method", method.into()), ("code", code.into())])
            .inc();
    }

    /// A run of `kind` (one of [`RUN_KINDS`]) ended after `took`.
    pub fn run_finished(&self, kind: &'static str, took: Duration) {
        self.inner
            .run_duration
            .get_or_create(&one("kind", kind))
            .observe(took.as_secs_f64());
    }

    /// A phase (one of [`PHASES`]) of the pipeline took `took`.
    pub fn phase(&self, phase: &'static str, took: Duration) {
        self.inner
            .phase_duration
            .get_or_create(&one("phase", phase))
            .observe(took.as_secs_f64());
    }

    /// A clone registered having booted in `boot` (kernel start to its register hook).
    pub fn clone_booted(&self, boot: Option<&prost_types::Duration>) {
        if let Some(d) = boot {
            let secs = d.seconds as f64 + f64::from(d.nanos) / 1e9;
            if secs.is_finite() && secs >= 0.0 {
                self.inner.clone_boot.observe(secs);
            }
        }
    }

    /// The page: the state series refreshed from `registry`, then every series encoded.
    pub async fn render(&self, registry: &Registry) -> Result<String, MetricsError> {
        let i = &self.inner;
        let _one_at_a_time = i.refresh.lock().await;
        let clones = registry.list_clones("").await?;
        let agents = registry.list_agents_using(&clones, &[]).await?;
        let deployments = registry.list_deployments().await?;

        i.deployments.clear();
        for s in [
            DeploymentState::Progressing,
            DeploymentState::Ready,
            DeploymentState::Degraded,
        ] {
            let _ = i
                .deployments
                .get_or_create(&one("state", deployment_state_name(s as i32)));
        }
        for d in &deployments {
            i.deployments
                .get_or_create(&one("state", deployment_state_name(d.state)))
                .inc();
        }

        i.clones.clear();
        for c in &clones {
            i.clones
                .get_or_create(&vec![
                    ("deployment", c.deployment.clone()),
                    ("phase", phase_name(c.phase)),
                ])
                .inc();
        }

        i.agents.clear();
        for s in [
            AgentState::Ready,
            AgentState::Down,
            AgentState::Draining,
            AgentState::Untrusted,
            AgentState::Revoked,
        ] {
            let _ = i
                .agents
                .get_or_create(&one("state", agent_state_name(s as i32)));
        }
        for f in [
            &i.agent_clones,
            &i.agent_vcpus,
            &i.agent_memory,
            &i.agent_capacity_vcpus,
            &i.agent_capacity_memory,
        ] {
            f.clear();
        }
        for a in &agents {
            i.agents
                .get_or_create(&one("state", agent_state_name(a.state)))
                .inc();
            let who = vec![("agent", a.name.clone()), ("agent_id", a.id.clone())];
            let alloc = a.allocated.unwrap_or_default();
            let cap = a
                .capabilities
                .as_ref()
                .and_then(|c| c.available)
                .unwrap_or_default();
            let set = |f: &Family<Labels, Gauge>, v: u64| {
                f.get_or_create(&who)
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            };
            set(&i.agent_clones, u64::from(a.clone_count));
            set(&i.agent_vcpus, u64::from(alloc.vcpus));
            set(&i.agent_memory, alloc.memory_bytes);
            set(&i.agent_capacity_vcpus, u64::from(cap.vcpus));
            set(&i.agent_capacity_memory, cap.memory_bytes);
        }

        // The registry counts; the series shows its count (this scrape's read included).
        i.clone_listings.inner().store(
            registry.clone_listings(),
            std::sync::atomic::Ordering::Relaxed,
        );

        let mut out = String::new();
        encode(&mut out, &i.exposition)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_short_lowercase_names() {
        assert_eq!(phase_name(ClonePhase::Registered as i32), "registered");
        assert_eq!(agent_state_name(AgentState::Draining as i32), "draining");
        assert_eq!(
            deployment_state_name(DeploymentState::Progressing as i32),
            "progressing"
        );
        assert_eq!(phase_name(999), "unspecified");
    }

    #[tokio::test]
    async fn an_empty_registry_renders_every_series_at_zero() {
        let dir = tempfile::tempdir().expect("temp dir");
        let registry = crate::registry::temp_registry(dir.path()).await;
        let m = Metrics::new();
        m.rpc("Deploy", "OK", Duration::from_millis(3));
        let page = m.render(&registry).await.expect("render");
        for line in [
            "napalm_coordinator_agents{state=\"ready\"} 0",
            "napalm_coordinator_deployments{state=\"degraded\"} 0",
            "napalm_coordinator_run_duration_seconds_count{kind=\"converge\"} 0",
            "napalm_coordinator_deploy_phase_duration_seconds_count{phase=\"ship\"} 0",
            "napalm_coordinator_converge_actions_total{action=\"stop\"} 0",
            "napalm_coordinator_grpc_requests_total{method=\"Deploy\",code=\"OK\"} 1",
            "napalm_coordinator_clone_boot_seconds_count 0",
        ] {
            assert!(page.contains(line), "{line} missing:\n{page}");
        }
        assert!(page.ends_with("# EOF\n"), "{page}");
    }
}
