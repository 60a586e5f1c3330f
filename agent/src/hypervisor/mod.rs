//! The libvirt edge. [`Hypervisor`] is what the core needs from a hypervisor; its methods
//! block (libvirt calls do), so the core runs them on tokio's blocking pool through
//! [`call`]. [`libvirt::Libvirt`] is the real implementation on the `virt` crate, working
//! with `test:///default`, `qemu:///system` and `xen:///system`.

pub mod huge_pages;
pub mod libvirt;
pub mod lifecycle;

use std::sync::Arc;
use std::time::Duration;

use crate::error::{AgentError, Result};

/// A domain's run state, named as the thesis's status.xml names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// The guest runs (a desired state clients can ask for).
    Running,
    /// Running but blocked on a resource (libvirt's `blocked`).
    Blocked,
    /// Paused by the hypervisor: memory kept, no CPU (a desired state clients can ask for).
    Paused,
    /// The guest is shutting down.
    Shutdown,
    /// Defined, not running (a desired state clients can ask for).
    Shutoff,
    /// The guest crashed; the restart policy decides what follows.
    Crashed,
    /// Suspended by guest power management (ACPI S3/S4).
    Pmsuspended,
    /// libvirt reports no state.
    Nostate,
}

impl RunState {
    /// The status.xml word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Blocked => "blocked",
            Self::Paused => "paused",
            Self::Shutdown => "shutdown",
            Self::Shutoff => "shutoff",
            Self::Crashed => "crashed",
            Self::Pmsuspended => "pmsuspended",
            Self::Nostate => "nostate",
        }
    }

    /// Parses a status.xml word.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => Self::Running,
            "blocked" => Self::Blocked,
            "paused" => Self::Paused,
            "shutdown" => Self::Shutdown,
            "shutoff" => Self::Shutoff,
            "crashed" => Self::Crashed,
            "pmsuspended" => Self::Pmsuspended,
            "nostate" => Self::Nostate,
            _ => return None,
        })
    }

    /// True when a guest is executing (or could resume) in memory.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Self::Running | Self::Blocked | Self::Paused | Self::Shutdown | Self::Pmsuspended
        )
    }
}

/// One domain as libvirt lists it.
#[derive(Debug, Clone)]
pub struct DomainSummary {
    /// Domain name (libvirt's `<name>`).
    pub name: String,
    /// libvirt's UUID, stable across redefinitions of the same domain.
    pub uuid: String,
    /// Its run state when listed.
    pub state: RunState,
    /// libvirt's numeric id while running (changes when the domain is restarted).
    pub id: Option<u32>,
}

/// Facts about the host.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HostFacts {
    /// Host name.
    pub hostname: String,
    /// CPU model.
    pub cpu_model: String,
    /// Logical CPUs (sockets × cores × threads).
    pub cpus: u32,
    /// CPU sockets.
    pub sockets: u32,
    /// Cores per socket.
    pub cores: u32,
    /// Threads per core.
    pub threads: u32,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// Free memory, bytes.
    pub free_memory_bytes: u64,
    /// The pool of huge pages of the default huge size (filled in by the agent's
    /// capabilities; zero from [`Hypervisor::host`] alone).
    pub huge_pages: huge_pages::HugePages,
    /// libvirt version `a.b.c`.
    pub libvirt_version: String,
    /// Hypervisor driver version `a.b.c`.
    pub hypervisor_version: String,
    /// The libvirt connection URI (`qemu:///system`, `test:///default`).
    pub uri: String,
}

/// Counters of one domain.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    /// Guest CPU time, ns.
    pub cpu_time_ns: u64,
    /// Memory assigned, bytes.
    pub memory_bytes: u64,
    /// vCPUs the domain has now.
    pub vcpus: u32,
    /// Bytes received.
    pub net_rx_bytes: u64,
    /// Bytes sent.
    pub net_tx_bytes: u64,
    /// Bytes read from disks.
    pub disk_read_bytes: u64,
    /// Bytes written to disks.
    pub disk_write_bytes: u64,
}

/// What the agent needs from a hypervisor. All methods block.
pub trait Hypervisor: Send + Sync + 'static {
    /// Defines (or redefines) a persistent domain from XML; returns its UUID.
    fn define(&self, xml: &str) -> Result<String>;
    /// Starts a defined domain.
    fn start(&self, name: &str) -> Result<()>;
    /// Creates and starts a transient domain from XML (gone once it stops).
    fn create_transient(&self, xml: &str) -> Result<()> {
        let _ = xml;
        Err(AgentError::Hypervisor(
            "this hypervisor cannot create transient domains".into(),
        ))
    }
    /// Saves a running domain's memory and device state to `to` (libvirt's
    /// `virDomainSave`); the domain stops.
    fn save(&self, name: &str, to: &std::path::Path) -> Result<()> {
        let _ = (name, to);
        Err(AgentError::Hypervisor(
            "this hypervisor cannot save domains".into(),
        ))
    }
    /// Asks the guest to shut down, waits up to `deadline`, then destroys it.
    fn shutdown(&self, name: &str, deadline: Duration) -> Result<()>;
    /// Pauses a running domain.
    fn suspend(&self, name: &str) -> Result<()>;
    /// Resumes a paused domain.
    fn resume(&self, name: &str) -> Result<()>;
    /// Undefines a (stopped) domain; `false` when it did not exist.
    fn undefine(&self, name: &str) -> Result<bool>;
    /// The domain's state; `None` when libvirt does not know it.
    fn state(&self, name: &str) -> Result<Option<RunState>>;
    /// Every domain libvirt knows on this connection, without their XML (cheap enough to
    /// poll every second with hundreds of domains).
    fn list(&self) -> Result<Vec<DomainSummary>>;
    /// One domain by name with its current XML (live when running), without listing the
    /// others; `None` when libvirt does not know it.
    fn find(&self, name: &str) -> Result<Option<(DomainSummary, String)>>;
    /// One domain's summary by name, without its XML; `None` when libvirt does not know it.
    fn summary(&self, name: &str) -> Result<Option<DomainSummary>> {
        Ok(self.find(name)?.map(|(d, _)| d))
    }
    /// libvirt's capabilities XML (host CPU, guest kinds, emulators; thesis annex V).
    fn capabilities_xml(&self) -> Result<String>;
    /// The host's name, CPUs, memory and versions (its huge page pool is read from the
    /// capabilities, with [`Self::free_pages`]).
    fn host(&self) -> Result<HostFacts>;
    /// Free pages of `size_kib` in each of the first `cells` NUMA cells (libvirt's
    /// `virNodeGetFreePages`).
    fn free_pages(&self, size_kib: u32, cells: u32) -> Result<Vec<u64>>;
    /// Counters of a domain (zeros for a stopped one).
    fn stats(&self, name: &str) -> Result<Stats>;
    /// Calls `changed` with a domain's name at each lifecycle event libvirt reports for it
    /// (started, stopped, crashed, suspended…), from libvirt's event thread, so it must only
    /// hand the name on; `false` when this hypervisor reports none (the agent then polls
    /// every domain's state each second).
    fn subscribe(&self, changed: lifecycle::Subscriber) -> Result<bool> {
        let _ = changed;
        Ok(false)
    }
}

/// Runs a blocking hypervisor call on tokio's blocking pool.
pub async fn call<T, F>(hv: &Arc<dyn Hypervisor>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&dyn Hypervisor) -> Result<T> + Send + 'static,
{
    let hv = Arc::clone(hv);
    tokio::task::spawn_blocking(move || f(hv.as_ref()))
        .await
        .map_err(|e| {
            AgentError::Hypervisor(format!("libvirt call panicked or was cancelled: {e}"))
        })?
}
