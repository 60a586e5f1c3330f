//! Desired state of each domain, persisted in the agent's state directory:
//! `STATE/domains/NAME/{record.json, config.xml, console.log, files/}`. Every write is atomic and
//! fsynced; a directory without `record.json` is an unfinished create and is discarded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::blobs::BlobId;
use crate::durable;
use crate::error::{AgentError, Result};
use crate::hypervisor::RunState;

/// What to do with a domain found stopped while it should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Leave it stopped.
    Never,
    /// Start it again when it stopped without being asked to.
    #[default]
    OnFailure,
    /// Keep it running.
    Always,
}

/// A file of a domain that came from the blob store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArtifactRecord {
    /// File name in the domain directory.
    pub name: String,
    /// The blob its content was linked or copied from.
    pub blob: BlobId,
    /// Copied (writable) rather than linked.
    pub writable: bool,
}

/// The persisted desired state of one domain.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DomainRecord {
    /// Domain name, also the directory name under `domains/` and libvirt's `<name>`.
    pub name: String,
    /// libvirt UUID once defined.
    pub uuid: String,
    /// State the agent keeps the domain in (`running`, `shutoff` or `paused`).
    pub desired: RunState,
    /// What reconciliation does when it finds the domain stopped while desired running.
    pub restart: RestartPolicy,
    /// Free-form key/value labels a client attached (selectable in `ListDomains`).
    pub labels: BTreeMap<String, String>,
    /// Files referenced by config.xml, relative to `files/`.
    pub files: Vec<String>,
    /// Those of `files` that came from the blob store (gRPC creates), with their blobs.
    pub artifacts: Vec<ArtifactRecord>,
    /// vCPUs the XML asks for (counted against the host's capacity).
    pub vcpus: u32,
    /// Memory the XML asks for, bytes.
    pub memory_bytes: u64,
    /// Milliseconds since the epoch when created.
    pub created_at_ms: u64,
    /// The XML handed to libvirt (absolute paths, metadata), to redefine a lost domain.
    pub libvirt_xml: String,
    /// Set while a delete is in progress, so a crash finishes it rather than undoing it.
    #[serde(default)]
    pub deleting: bool,
}

/// The domains directory.
#[derive(Debug, Clone)]
pub struct DomainStore {
    root: PathBuf,
}

impl DomainStore {
    /// Opens (creating) `STATE/domains`.
    pub fn open(root: &Path) -> Result<Self> {
        durable::create_dir(root)?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// `STATE/domains/NAME`.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `STATE/domains/NAME/files`: the only place a domain's XML may point to.
    pub fn files_dir(&self, name: &str) -> PathBuf {
        self.dir(name).join("files")
    }

    /// The record, if the domain is complete.
    pub fn load(&self, name: &str) -> Result<Option<DomainRecord>> {
        let p = self.dir(name).join("record.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| AgentError::io(&p, std::io::Error::other(e))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::io(&p, e)),
        }
    }

    /// Persists a record (atomically).
    pub fn save(&self, r: &DomainRecord) -> Result<()> {
        let data = serde_json::to_vec_pretty(r)
            .map_err(|e| AgentError::io("record", std::io::Error::other(e)))?;
        durable::atomic_write(&self.dir(&r.name).join("record.json"), &data)
    }

    /// The client's config.xml as last accepted.
    pub fn config(&self, name: &str) -> Result<String> {
        let p = self.dir(name).join("config.xml");
        std::fs::read_to_string(&p).map_err(|e| AgentError::io(&p, e))
    }

    /// Replaces the client's config.xml.
    pub fn save_config(&self, name: &str, xml: &str) -> Result<()> {
        durable::atomic_write(&self.dir(name).join("config.xml"), xml.as_bytes())
    }

    /// Names of all directories, complete or not.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(&self.root)
            .map_err(|e| AgentError::io(&self.root, e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| crate::names::check_domain_name(n).is_ok())
            .collect();
        v.sort();
        Ok(v)
    }

    /// All complete records.
    pub fn records(&self) -> Result<Vec<DomainRecord>> {
        let mut out = Vec::new();
        for n in self.names()? {
            if let Some(r) = self.load(&n)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Removes a domain's directory.
    pub fn remove(&self, name: &str) -> Result<()> {
        let d = self.dir(name);
        match std::fs::remove_dir_all(&d) {
            Ok(()) => durable::sync_dir(&self.root),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(AgentError::io(&d, e)),
        }
    }
}
