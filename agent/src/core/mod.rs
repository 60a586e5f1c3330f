//! Core operations: the one implementation behind both transports (REST and gRPC).
//! Each mutating operation takes the domain's lock, persists the desired state first,
//! then acts on libvirt, so a crash at any point is finished by [`Agent::reconcile`].

pub mod console;
mod create;
mod files;
mod from_template;
mod info;
mod lifecycle;
pub mod reconcile;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use console::ConsoleView;
pub use create::{ArtifactSpec, CreateSpec, Spooled};
pub use info::{About, CapabilitiesView, DomainView, GuestView};
pub use reconcile::StaleDomain;

use crate::archive::Limits;
use crate::blobs::BlobStore;
use crate::clock::{Clock, SystemClock};
use crate::domain_store::DomainStore;
use crate::error::{AgentError, Result};
use crate::events::EventHub;
use crate::hypervisor::{self, Hypervisor};
use crate::idempotency::{KeyedLocks, RequestLog};
use crate::policy::Policy;
use crate::port_filter::{Firewall, PortFilter, PortFilterMode};

/// Settings of the core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// State directory (blobs, domains, request log, agent id).
    pub state_dir: PathBuf,
    /// Operator policy for domain XML.
    pub policy: Policy,
    /// Limits on unpacking a domain archive (entries, total bytes): decompression bombs
    /// stop early.
    pub limits: Limits,
    /// Graceful shutdown deadline before a domain is destroyed.
    pub shutdown_timeout: Duration,
    /// Who enforces `clean-traffic` filterrefs: libvirt, or the agent with nftables.
    pub port_filter: PortFilterMode,
}

/// The agent's core: hypervisor, stores, events.
pub struct Agent {
    cfg: CoreConfig,
    agent_id: String,
    hv: Arc<dyn Hypervisor>,
    blobs: BlobStore,
    store: DomainStore,
    requests: RequestLog,
    locks: KeyedLocks,
    clock: Arc<dyn Clock>,
    /// Installs the port filters the agent enforces itself (`None`: libvirt does).
    firewall: Option<Arc<dyn Firewall>>,
    /// Domains the last heartbeat answer said no deployment declares any more, with the
    /// creation time they were reported with: removed only when the next answer says so
    /// again ([`Agent::remove_stale`]).
    declared_nowhere: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Lifecycle events: numbered, retained for replay, broadcast to watchers.
    pub events: EventHub,
    /// How the state watcher has looked at libvirt so far.
    pub watch_counts: WatchCounts,
    /// The templates clones start from ([`crate::template`]).
    templates: crate::template::Templates,
}

/// The state watcher's passes: full listings ([`Agent::watch_once`]) and looks at the
/// domains libvirt reported events for ([`Agent::watch_names`]).
#[derive(Debug, Default)]
pub struct WatchCounts {
    /// Full passes (every domain's state).
    pub full: std::sync::atomic::AtomicU64,
    /// Looks at named domains after lifecycle events.
    pub looks: std::sync::atomic::AtomicU64,
}

impl Agent {
    /// Opens the state directory and binds to a hypervisor. The agent id is created once
    /// and kept in `STATE/agent-id`, so a restarted agent recognises its domains.
    pub async fn open(cfg: CoreConfig, hv: Arc<dyn Hypervisor>) -> Result<Arc<Self>> {
        Self::open_with_clock(cfg, hv, Arc::new(SystemClock)).await
    }

    /// [`Agent::open`] reading wall-clock time from `clock` (tests pass a
    /// [`crate::clock::ManualClock`]).
    pub async fn open_with_clock(
        cfg: CoreConfig,
        hv: Arc<dyn Hypervisor>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>> {
        crate::durable::create_dir(&cfg.state_dir)?;
        // Paths handed to libvirt must be absolute.
        let dir = cfg
            .state_dir
            .canonicalize()
            .map_err(|e| AgentError::io(&cfg.state_dir, e))?;
        let id_path = dir.join("agent-id");
        let agent_id = match std::fs::read_to_string(&id_path) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
            _ => {
                let id = new_agent_id();
                crate::durable::atomic_write(&id_path, id.as_bytes())?;
                id
            }
        };
        let mut cfg = cfg;
        cfg.state_dir = dir.clone();
        if cfg.policy.allowed_emulators.is_empty() {
            let caps = hypervisor::call(&hv, |h| h.capabilities_xml()).await?;
            cfg.policy.allowed_emulators = info::emulators(&caps);
        }
        Ok(Arc::new(Self {
            blobs: BlobStore::open(&dir.join("blobs"))?,
            store: DomainStore::open(&dir.join("domains"))?,
            requests: RequestLog::open(&dir.join("requests"), clock.as_ref())?,
            locks: KeyedLocks::default(),
            events: EventHub::new(Arc::clone(&clock)),
            declared_nowhere: Default::default(),
            watch_counts: WatchCounts::default(),
            templates: crate::template::Templates::new(dir.join("templates")),
            firewall: crate::port_filter::firewall(&cfg.port_filter),
            clock,
            agent_id,
            hv,
            cfg,
        }))
    }

    /// This agent's id (in the napalm metadata of its domains).
    pub fn id(&self) -> &str {
        &self.agent_id
    }

    /// The clock this agent reads wall-clock time from.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The hypervisor this agent drives: what tests use to change a domain behind the
    /// agent's back (a guest that crashed, a QEMU that was killed).
    pub fn hypervisor(&self) -> &Arc<dyn Hypervisor> {
        &self.hv
    }

    /// The configured shutdown deadline.
    pub fn shutdown_timeout(&self) -> Duration {
        self.cfg.shutdown_timeout
    }

    async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Hypervisor) -> Result<T> + Send + 'static,
    {
        hypervisor::call(&self.hv, f).await
    }

    fn record(&self, name: &str) -> Result<crate::domain_store::DomainRecord> {
        crate::names::check_domain_name(name)?;
        match self.store.load(name)? {
            Some(r) if !r.deleting => Ok(r),
            _ => Err(AgentError::no_domain(name)),
        }
    }
}

fn new_agent_id() -> String {
    use sha2::{Digest, Sha256};
    let seed = format!(
        "{:?}{}{}",
        std::time::SystemTime::now(),
        std::process::id(),
        crate::durable::unique()
    );
    hex::encode(&Sha256::digest(seed.as_bytes())[..8])
}

impl Agent {
    /// Checks `xml` against the operator policy for domain `name` (paths confined to its
    /// `files/` directory, our metadata element) and that its `<name>` is `name`; the
    /// `clean-traffic` filterrefs the agent enforces itself are taken out of the checked
    /// XML and returned as port filters.
    pub(crate) fn check_config(
        &self,
        name: &str,
        xml: &str,
    ) -> Result<(crate::policy::CheckedConfig, Vec<PortFilter>)> {
        let mut checked = crate::policy::check(
            xml,
            &self.store.files_dir(name),
            &self.cfg.policy,
            &crate::policy::metadata_element(&self.agent_id),
            Some(&self.console_log(name)),
        )?;
        if checked.name != name {
            return Err(AgentError::invalid(
                "config.xml",
                format!(
                    "<name> is {:?} but the request is for {name:?}",
                    checked.name
                ),
            ));
        }
        if !self.filters_ports() {
            return Ok((checked, Vec::new()));
        }
        let (xml, filters) = crate::port_filter::take_clean_traffic(name, &checked.libvirt_xml)?;
        checked.libvirt_xml = xml;
        Ok((checked, filters))
    }

    /// Whether this agent enforces port filters itself (else libvirt does, from the XML).
    pub(crate) fn filters_ports(&self) -> bool {
        self.firewall.is_some()
    }

    /// Installs `filters` (before the domain they protect starts).
    pub(crate) async fn apply_port_filters(&self, filters: &[PortFilter]) -> Result<()> {
        self.firewall_call(filters, |fw, f| fw.apply(f)).await
    }

    /// Removes `filters` (once their domain is gone).
    pub(crate) async fn remove_port_filters(&self, filters: &[PortFilter]) -> Result<()> {
        self.firewall_call(filters, |fw, f| {
            fw.remove(&f.iter().map(|f| f.port.as_str()).collect::<Vec<_>>())
        })
        .await
    }

    async fn firewall_call(
        &self,
        filters: &[PortFilter],
        op: fn(&dyn Firewall, &[PortFilter]) -> Result<()>,
    ) -> Result<()> {
        let Some(fw) = self.firewall.clone() else {
            return Ok(());
        };
        if filters.is_empty() {
            return Ok(());
        }
        let filters = filters.to_vec();
        tokio::task::spawn_blocking(move || op(fw.as_ref(), &filters))
            .await
            .map_err(|e| AgentError::PortFilter(format!("the nft task failed: {e}")))?
    }
}
