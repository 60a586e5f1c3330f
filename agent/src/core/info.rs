//! Read-only operations: about, capabilities, domain views.

use std::collections::BTreeMap;

use super::Agent;
use crate::domain_store::{ArtifactRecord, DomainRecord, RestartPolicy};
use crate::error::{AgentError, Result};
use crate::hypervisor::{huge_pages, HostFacts, RunState, Stats};

/// `/about`: what this software is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct About {
    /// The package name (`napalm-agent`).
    pub name: &'static str,
    /// The package version.
    pub version: &'static str,
    /// The package description.
    pub description: &'static str,
    /// The package license (SPDX).
    pub license: &'static str,
    /// This agent's id (in the napalm metadata of the domains it owns).
    pub agent_id: String,
    /// The libvirt connection it manages.
    pub libvirt_uri: String,
}

/// One guest kind of the capabilities.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GuestView {
    /// `hvm`, `xen`, `exe`.
    pub os_type: String,
    /// Guest architecture (`x86_64`, `i686`).
    pub arch: String,
    /// Guest word size, bits.
    pub wordsize: u32,
    /// Path of the emulator binary (the policy allows only these).
    pub emulator: String,
    /// Machine types the emulator offers (`pc`, `q35`).
    pub machines: Vec<String>,
    /// `<domain type=…>` values usable for this guest (`qemu`, `kvm`, `xen`, `test`).
    pub domain_types: Vec<String>,
}

/// What the host is and can run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CapabilitiesView {
    /// The host's name, CPUs, memory and versions.
    pub host: HostFacts,
    /// Architecture of the host.
    pub arch: String,
    /// Each guest kind libvirt can run here.
    pub guests: Vec<GuestView>,
    /// Domain types usable (`qemu`, `kvm`, `xen`, `test`).
    pub hypervisors: Vec<String>,
    /// vCPUs not yet allocated to this agent's running domains.
    pub free_vcpus: u32,
    /// Memory not yet allocated, bytes.
    pub free_memory_bytes: u64,
    /// libvirt's capabilities XML, served as `/capabilities.xml`.
    #[serde(skip)]
    pub raw_xml: String,
}

/// A domain as the agent presents it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DomainView {
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Current state.
    pub state: RunState,
    /// Desired state (`None` for foreign domains).
    pub desired: Option<RunState>,
    /// Whether this agent owns it.
    pub owned: bool,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Files referenced by config.xml.
    pub files: Vec<String>,
    /// Files from blobs.
    pub artifacts: Vec<ArtifactRecord>,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// Created, ms since epoch.
    pub created_at_ms: u64,
    /// libvirt id while running.
    pub libvirt_id: Option<u32>,
    /// Counters when asked for.
    #[serde(skip)]
    pub stats: Option<Stats>,
}

impl DomainView {
    fn from_record(r: &DomainRecord, state: RunState, id: Option<u32>) -> Self {
        Self {
            name: r.name.clone(),
            uuid: r.uuid.clone(),
            state,
            desired: Some(r.desired),
            owned: true,
            restart: r.restart,
            labels: r.labels.clone(),
            files: r.files.clone(),
            artifacts: r.artifacts.clone(),
            vcpus: r.vcpus,
            memory_bytes: r.memory_bytes,
            created_at_ms: r.created_at_ms,
            libvirt_id: id,
            stats: None,
        }
    }
}

/// Emulator paths listed in a capabilities XML.
pub(crate) fn emulators(caps: &str) -> Vec<String> {
    let Ok(doc) = roxmltree::Document::parse(caps) else {
        return Vec::new();
    };
    let mut v: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("emulator"))
        .filter_map(|n| n.text().map(|t| t.trim().to_owned()))
        .collect();
    v.sort();
    v.dedup();
    v
}

impl Agent {
    /// `/about`.
    pub fn about(&self, uri: &str) -> About {
        About {
            name: "napalm-agent",
            version: env!("CARGO_PKG_VERSION"),
            description: "Napalm (Networked And Parallel Applications on Lazy Machines) agent: deploys clone VMs onto this hypervisor host",
            license: "Apache-2.0",
            agent_id: self.agent_id.clone(),
            libvirt_uri: uri.to_owned(),
        }
    }

    /// What the host can run, and what is left after this agent's allocations.
    pub async fn capabilities(&self) -> Result<CapabilitiesView> {
        let (raw_xml, mut host) = self
            .call(|h| Ok((h.capabilities_xml()?, named_by_uts(h.host()?))))
            .await?;
        let doc = crate::policy::parse("capabilities", &raw_xml)?;
        if let Some((size, pages, cells)) = huge_pages::pool_in_capabilities(&doc) {
            // A pool whose free pages cannot be read is reported all used.
            let free = if pages == 0 {
                Vec::new()
            } else {
                self.call(move |h| h.free_pages(size, cells))
                    .await
                    .unwrap_or_default()
            };
            host.huge_pages = huge_pages::pool(size, pages, &free);
        }
        let arch = doc
            .descendants()
            .find(|n| n.has_tag_name("host"))
            .and_then(|h| h.descendants().find(|n| n.has_tag_name("arch")))
            .and_then(|n| n.text())
            .unwrap_or_default()
            .to_owned();
        let mut guests = Vec::new();
        let mut hypervisors = Vec::new();
        for g in doc.descendants().filter(|n| n.has_tag_name("guest")) {
            let text = |tag: &str| {
                g.descendants()
                    .find(|n| n.has_tag_name(tag))
                    .and_then(|n| n.text())
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            };
            let a = g.children().find(|n| n.has_tag_name("arch"));
            let domain_types: Vec<String> = g
                .descendants()
                .filter(|n| n.has_tag_name("domain"))
                .filter_map(|d| d.attribute("type").map(str::to_owned))
                .collect();
            for t in &domain_types {
                if !hypervisors.contains(t) {
                    hypervisors.push(t.clone());
                }
            }
            let mut machines: Vec<String> = g
                .descendants()
                .filter(|n| n.has_tag_name("machine"))
                .filter_map(|m| m.text().map(str::to_owned))
                .collect();
            machines.dedup();
            guests.push(GuestView {
                os_type: text("os_type"),
                arch: a
                    .and_then(|a| a.attribute("name"))
                    .unwrap_or_default()
                    .to_owned(),
                wordsize: text("wordsize").parse().unwrap_or(0),
                emulator: text("emulator"),
                machines,
                domain_types,
            });
        }
        let running: Vec<DomainView> = self
            .list(false)
            .await?
            .into_iter()
            .filter(|d| d.state.is_active())
            .collect();
        let used_cpu: u32 = running.iter().map(|d| d.vcpus).sum();
        let used_mem: u64 = running.iter().map(|d| d.memory_bytes).sum();
        Ok(CapabilitiesView {
            free_vcpus: host.cpus.saturating_sub(used_cpu),
            free_memory_bytes: host.memory_bytes.saturating_sub(used_mem),
            host,
            arch,
            guests,
            hypervisors,
            raw_xml,
        })
    }

    /// The domains this agent owns, and with `include_foreign` the others (read-only).
    pub async fn list(&self, include_foreign: bool) -> Result<Vec<DomainView>> {
        let live = self.call(|h| h.list()).await?;
        let by_name: std::collections::HashMap<&str, &crate::hypervisor::DomainSummary> =
            live.iter().map(|d| (d.name.as_str(), d)).collect();
        let mut out = Vec::new();
        for r in self.store.records()? {
            if r.deleting {
                continue;
            }
            let l = by_name.get(r.name.as_str());
            let (state, id) = l
                .map(|d| (d.state, d.id))
                .unwrap_or((RunState::Nostate, None));
            out.push(DomainView::from_record(&r, state, id));
        }
        if include_foreign {
            let owned: std::collections::HashSet<String> =
                out.iter().map(|o| o.name.clone()).collect();
            for d in live.iter().filter(|d| !owned.contains(&d.name)) {
                out.push(DomainView {
                    name: d.name.clone(),
                    uuid: d.uuid.clone(),
                    state: d.state,
                    desired: None,
                    owned: false,
                    restart: RestartPolicy::Never,
                    labels: BTreeMap::new(),
                    files: Vec::new(),
                    artifacts: Vec::new(),
                    vcpus: 0,
                    memory_bytes: 0,
                    created_at_ms: 0,
                    libvirt_id: d.id,
                    stats: None,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One owned domain.
    pub async fn get(&self, name: &str, with_stats: bool) -> Result<DomainView> {
        let r = self.record(name)?;
        let n = name.to_owned();
        let (state, id, stats) = self
            .call(move |h| {
                let l = h.summary(&n)?;
                let stats = if with_stats && l.is_some() {
                    h.stats(&n).ok()
                } else {
                    None
                };
                Ok(l.map(|d| (d.state, d.id, stats))
                    .unwrap_or((RunState::Nostate, None, None)))
            })
            .await?;
        let mut v = DomainView::from_record(&r, state, id);
        v.stats = stats;
        Ok(v)
    }

    /// The state of an owned domain (status.xml).
    pub async fn status(&self, name: &str) -> Result<RunState> {
        self.record(name)?;
        let n = name.to_owned();
        Ok(self
            .call(move |h| h.state(&n))
            .await?
            .unwrap_or(RunState::Nostate))
    }

    /// Counters of every running owned domain (for metrics).
    pub async fn all_stats(&self) -> Result<Vec<(DomainView, Stats)>> {
        let mut out = Vec::new();
        for d in self.list(false).await? {
            let n = d.name.clone();
            let s = if d.state.is_active() {
                self.call(move |h| h.stats(&n)).await.unwrap_or_default()
            } else {
                Stats::default()
            };
            out.push((d, s));
        }
        Ok(out)
    }

    /// Host facts (for metrics and advertisement).
    pub async fn host(&self) -> Result<HostFacts> {
        self.call(|h| h.host().map(named_by_uts)).await
    }

    /// A domain must exist and be ours.
    pub(crate) fn require(&self, name: &str) -> Result<DomainRecord> {
        self.record(name).map_err(|e| match e {
            AgentError::NotFound { .. } => AgentError::no_domain(name),
            other => other,
        })
    }
}

/// The host an agent runs on goes by its own (UTS) host name: libvirt's on a host of its
/// own, and the only right one where several agents share one libvirtd (each in its
/// network and UTS namespace, as on the test grid). It names the agent when it
/// registers, advertises itself and enrolls (a join token made with `--name` must
/// match it). libvirt's name when the UTS one cannot be read.
fn named_by_uts(mut host: HostFacts) -> HostFacts {
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            h.clone_into(&mut host.hostname);
        }
    }
    host
}
