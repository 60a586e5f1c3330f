//! Desired state of each domain, persisted in the agent's state directory:
//! `STATE/domains/NAME/{record.json, config.xml, console.log, files/}`. Every write is atomic and
//! fsynced; a directory without `record.json` is an unfinished create and is discarded.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    /// Files of `files` that are scratch disks the agent made (the guest's data, sparse
    /// and possibly huge): left out of the domain's archive.
    #[serde(default)]
    pub scratch_disks: Vec<String>,
    /// The interfaces' anti-spoofing rules the agent installs itself before every start
    /// (taken out of the XML's `clean-traffic` filterrefs, [`crate::port_filter`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_filters: Vec<crate::port_filter::PortFilter>,
}

/// The domains directory.
#[derive(Debug, Clone)]
pub struct DomainStore {
    root: PathBuf,
    /// Records as last parsed, with the stamp of the file they were parsed from. Listings
    /// (the coordinator's every 2 s, its capability probes, the state watcher's passes)
    /// read every record; a stat instead of an open, a read and a JSON parse makes that
    /// cost one stat per domain, and sharing the parsed record spares a copy of its XML.
    parsed: Arc<Mutex<Parsed>>,
}

/// Each record's name, the stamp of the file it was parsed from, and the parsed record.
type Parsed = HashMap<String, (Stamp, Arc<DomainRecord>)>;

/// What identifies one version of a `record.json`: a save renames a new file over it (a new
/// inode), and an edit in place changes its size or modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(md: &std::fs::Metadata) -> Self {
        Self {
            ino: md.ino(),
            len: md.len(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
        }
    }
}

impl DomainStore {
    /// Opens (creating) `STATE/domains`.
    pub fn open(root: &Path) -> Result<Self> {
        durable::create_dir(root)?;
        Ok(Self {
            root: root.to_owned(),
            parsed: Arc::default(),
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
        Ok(self.shared(name)?.map(Arc::unwrap_or_clone))
    }

    /// [`Self::load`] without a copy: the parsed record this store keeps.
    pub fn shared(&self, name: &str) -> Result<Option<Arc<DomainRecord>>> {
        let p = self.dir(name).join("record.json");
        // A stat by path first: an unchanged record costs no open. A save renamed in
        // between is read below with its own stamp; one renamed after the stat makes
        // the next look read it again (a new inode).
        let gone = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound {
                self.forget(name);
                Ok(None)
            } else {
                Err(AgentError::io(&p, e))
            }
        };
        let md = match std::fs::metadata(&p) {
            Ok(md) => md,
            Err(e) => return gone(e),
        };
        if let Some((s, r)) = self.cached(name) {
            if s == Stamp::of(&md) {
                return Ok(Some(r));
            }
        }
        let mut f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) => return gone(e),
        };
        let stamp = Stamp::of(&f.metadata().map_err(|e| AgentError::io(&p, e))?);
        let mut b = Vec::with_capacity(stamp.len as usize);
        std::io::Read::read_to_end(&mut f, &mut b).map_err(|e| AgentError::io(&p, e))?;
        let r: Arc<DomainRecord> = Arc::new(
            serde_json::from_slice(&b).map_err(|e| AgentError::io(&p, std::io::Error::other(e)))?,
        );
        self.parsed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), (stamp, Arc::clone(&r)));
        Ok(Some(r))
    }

    fn cached(&self, name: &str) -> Option<(Stamp, Arc<DomainRecord>)> {
        self.parsed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn forget(&self, name: &str) {
        self.parsed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
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
        // The entry's type from the directory listing itself (no stat per domain; std
        // stats only where the file system does not say).
        let mut v: Vec<String> = std::fs::read_dir(&self.root)
            .map_err(|e| AgentError::io(&self.root, e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| crate::names::check_domain_name(n).is_ok())
            .collect();
        v.sort();
        Ok(v)
    }

    /// All complete records, as parsed and shared by this store.
    pub fn records(&self) -> Result<Vec<Arc<DomainRecord>>> {
        let mut out = Vec::new();
        for n in self.names()? {
            if let Some(r) = self.shared(&n)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Removes a domain's directory.
    pub fn remove(&self, name: &str) -> Result<()> {
        let d = self.dir(name);
        self.forget(name);
        match std::fs::remove_dir_all(&d) {
            Ok(()) => durable::sync_dir(&self.root),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(AgentError::io(&d, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> DomainRecord {
        DomainRecord {
            scratch_disks: Vec::new(),
            port_filters: Vec::new(),
            name: name.into(),
            uuid: String::new(),
            desired: RunState::Running,
            restart: RestartPolicy::OnFailure,
            labels: BTreeMap::new(),
            files: Vec::new(),
            artifacts: Vec::new(),
            vcpus: 1,
            memory_bytes: 1 << 20,
            created_at_ms: 0,
            libvirt_xml: "<domain/>".into(),
            deleting: false,
        }
    }

    #[test]
    fn a_parsed_record_is_reused_only_while_its_file_is_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = DomainStore::open(&dir.path().join("domains")).expect("open");
        std::fs::create_dir_all(s.dir("d1")).expect("mkdir");
        let mut r = record("d1");
        s.save(&r).expect("save");
        assert_eq!(s.load("d1").expect("load"), Some(r.clone()));
        // A save (rename over) is seen.
        r.desired = RunState::Shutoff;
        s.save(&r).expect("save");
        assert_eq!(
            s.load("d1").expect("load").map(|r| r.desired),
            Some(RunState::Shutoff)
        );
        // So is an edit in place by someone else (what a crash mid-delete leaves).
        let p = s.dir("d1").join("record.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("json");
        v["deleting"] = true.into();
        std::fs::write(&p, serde_json::to_vec(&v).expect("ser")).expect("write");
        assert!(s.load("d1").expect("load").is_some_and(|r| r.deleting));
        // A clone of the store shares what was parsed; a removed record is gone for both.
        let other = s.clone();
        s.remove("d1").expect("remove");
        assert_eq!(other.load("d1").expect("load"), None);
        assert!(other.records().expect("records").is_empty());
    }
}
