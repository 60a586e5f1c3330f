//! Creating a domain: from an archive (REST) or from blobs (gRPC). Both end in
//! [`Agent::install`]: files in place, policy check, record written (the commit point),
//! then libvirt define and optional start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{Agent, DomainView};
use crate::blobs::BlobId;
use crate::domain_store::{ArtifactRecord, DomainRecord, RestartPolicy};
use crate::durable;
use crate::error::{AgentError, Result};
use crate::events::EventKind;
use crate::hypervisor::RunState;
use crate::policy;
use crate::scratch_disk::{self, ScratchDiskSpec};

/// A file to take from the blob store.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ArtifactSpec {
    /// File name in the domain directory.
    pub name: String,
    /// The blob holding its content (uploaded before).
    pub blob: BlobId,
    /// Copy rather than hard-link (a disk the guest writes must not change the blob).
    pub writable: bool,
}

/// A create request from blobs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CreateSpec {
    /// Domain name.
    pub name: String,
    /// libvirt XML with bare artifact names.
    pub config_xml: String,
    /// The files the XML names, each from the blob store.
    pub artifacts: Vec<ArtifactSpec>,
    /// Start once defined (else only define it, desired `shutoff`).
    pub start: bool,
    /// What reconciliation does when it finds the domain stopped.
    pub restart: RestartPolicy,
    /// Key/value labels kept with the domain.
    pub labels: BTreeMap<String, String>,
    /// Blank disks to make in the domain directory (scratch space), named by the XML.
    pub scratch_disks: Vec<ScratchDiskSpec>,
    /// Start it from this agent's template of its shape ([`crate::template`]) rather than
    /// cold; not part of the definition (a replay with the other mode is the same create).
    pub boot_from_template: bool,
}

struct Staged {
    dir: PathBuf,
    scratch_disks: Vec<String>,
    config_xml: String,
    artifacts: Vec<ArtifactRecord>,
    digest: String,
    start: bool,
    from_template: bool,
    restart: RestartPolicy,
    labels: BTreeMap<String, String>,
}

/// Removes a staging file or directory unless it was moved into place.
struct StagingGuard(PathBuf);

impl Drop for StagingGuard {
    fn drop(&mut self) {
        if std::fs::remove_dir_all(&self.0).is_err() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// An upload received into the staging directory (removed when dropped).
pub struct Spooled {
    guard: StagingGuard,
    /// sha256 of the content.
    pub sha256: String,
}

impl Spooled {
    /// Moves the upload to `dest` durably (fsync, rename, fsync of the directory).
    pub fn persist(self, dest: &Path) -> Result<()> {
        let src = &self.guard.0;
        std::fs::File::open(src)
            .and_then(|f| f.sync_all())
            .map_err(|e| AgentError::io(src, e))?;
        std::fs::rename(src, dest).map_err(|e| AgentError::io(dest, e))?;
        match dest.parent() {
            Some(d) => durable::sync_dir(d),
            None => Ok(()),
        }
    }
}

impl Agent {
    fn staging(&self) -> Result<StagingGuard> {
        let dir = self
            .cfg
            .state_dir
            .join("staging")
            .join(crate::durable::unique());
        durable::create_dir(&dir.join("files"))?;
        Ok(StagingGuard(dir))
    }

    /// Receives an upload into a file under `STATE/staging` (never whole in memory),
    /// hashing it on the way; more than `limit` bytes is refused.
    pub async fn spool<S, B, E>(&self, mut stream: S, limit: u64) -> Result<Spooled>
    where
        S: futures_util::Stream<Item = std::result::Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let dir = self.cfg.state_dir.join("staging");
        durable::create_dir(&dir)?;
        let guard = StagingGuard(dir.join(format!("upload-{}", crate::durable::unique())));
        let path = guard.0.clone();
        let mut f = tokio::fs::File::create(&path)
            .await
            .map_err(|e| AgentError::io(&path, e))?;
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| AgentError::invalid("body", format!("upload interrupted: {e}")))?;
            let chunk = chunk.as_ref();
            total += chunk.len() as u64;
            if total > limit {
                return Err(AgentError::TooLarge(format!(
                    "body is larger than {limit} bytes"
                )));
            }
            hasher.update(chunk);
            f.write_all(chunk)
                .await
                .map_err(|e| AgentError::io(&path, e))?;
        }
        f.flush().await.map_err(|e| AgentError::io(&path, e))?;
        Ok(Spooled {
            guard,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    /// Creates a domain from an archive (`config.xml` + files), as `PUT /domain/NAME`.
    pub async fn create_from_archive(
        &self,
        name: &str,
        upload: Spooled,
        start: bool,
        request_id: Option<&str>,
    ) -> Result<DomainView> {
        crate::names::check_domain_name(name)?;
        let digest = upload.sha256.clone();
        self.requests
            .once(request_id, &format!("create:{name}"), async {
                let _g = self.locks.lock(name).await;
                if let Some(v) = self.existing(name, &digest).await? {
                    return Ok(v);
                }
                let staging = self.staging()?;
                let files = staging.0.join("files");
                let limits = self.cfg.limits;
                let f2 = files.clone();
                let src = upload.guard.0.clone();
                tokio::task::spawn_blocking(move || {
                    let file = std::fs::File::open(&src).map_err(|e| AgentError::io(&src, e))?;
                    crate::archive::extract(file, &f2, limits)
                })
                .await
                .map_err(|e| AgentError::invalid("archive", format!("extraction failed: {e}")))??;
                let cfg_path = files.join("config.xml");
                let config_xml = std::fs::read_to_string(&cfg_path).map_err(|_| {
                    AgentError::invalid(
                        "archive",
                        "no config.xml (UTF-8) at the top of the archive",
                    )
                })?;
                std::fs::remove_file(&cfg_path).map_err(|e| AgentError::io(&cfg_path, e))?;
                let staged = Staged {
                    dir: staging.0.clone(),
                    scratch_disks: Vec::new(),
                    config_xml,
                    artifacts: Vec::new(),
                    digest,
                    start,
                    from_template: false,
                    restart: RestartPolicy::OnFailure,
                    labels: BTreeMap::new(),
                };
                self.install(name, staged).await
            })
            .await
    }

    /// Creates a domain from XML and blobs already uploaded (gRPC `CreateDomain`).
    pub async fn create_from_blobs(
        &self,
        spec: CreateSpec,
        request_id: Option<&str>,
    ) -> Result<DomainView> {
        crate::names::check_domain_name(&spec.name)?;
        // Scratch disks join the digest only when asked for, so a create sent before they
        // existed replays to the same digest.
        let digest = hex::encode(Sha256::digest(
            if spec.scratch_disks.is_empty() {
                serde_json::to_vec(&(
                    &spec.config_xml,
                    &spec.artifacts,
                    &spec.labels,
                    spec.restart,
                ))
            } else {
                serde_json::to_vec(&(
                    &spec.config_xml,
                    &spec.artifacts,
                    &spec.labels,
                    spec.restart,
                    &spec.scratch_disks,
                ))
            }
            .unwrap_or_default(),
        ));
        let name = spec.name.clone();
        self.requests
            .once(request_id, &format!("create:{name}"), async {
                let _g = self.locks.lock(&name).await;
                if let Some(v) = self.existing(&name, &digest).await? {
                    return Ok(v);
                }
                let staging = self.staging()?;
                let mut artifacts = Vec::new();
                for a in &spec.artifacts {
                    if a.name.contains('/') {
                        return Err(AgentError::Policy(format!(
                            "artifact name {:?} contains '/'",
                            a.name
                        )));
                    }
                    let rel = crate::names::check_relative("artifact.name", &a.name)?;
                    if crate::names::RESERVED_FILES.contains(&a.name.as_str()) {
                        return Err(AgentError::invalid(
                            "artifact.name",
                            format!("{:?} is a reserved name", a.name),
                        ));
                    }
                    a.blob.validate()?;
                    self.blobs.materialise(
                        &a.blob,
                        &staging.0.join("files").join(rel),
                        a.writable,
                    )?;
                    artifacts.push(ArtifactRecord {
                        name: a.name.clone(),
                        blob: a.blob.clone(),
                        writable: a.writable,
                    });
                }
                for d in &spec.scratch_disks {
                    d.check()?;
                    if spec.artifacts.iter().any(|a| a.name == d.name)
                        || spec
                            .scratch_disks
                            .iter()
                            .filter(|o| o.name == d.name)
                            .count()
                            > 1
                    {
                        return Err(AgentError::invalid(
                            "scratch_disk.name",
                            format!("{:?} names two files of the domain", d.name),
                        ));
                    }
                }
                if !spec.scratch_disks.is_empty() {
                    let files = staging.0.join("files");
                    let disks = spec.scratch_disks.clone();
                    tokio::task::spawn_blocking(move || {
                        disks
                            .iter()
                            .try_for_each(|d| scratch_disk::make(&files, d).map(drop))
                    })
                    .await
                    .map_err(|e| {
                        AgentError::Hypervisor(format!("the scratch disk task failed: {e}"))
                    })??;
                }
                let staged = Staged {
                    dir: staging.0.clone(),
                    scratch_disks: spec.scratch_disks.iter().map(|d| d.name.clone()).collect(),
                    config_xml: spec.config_xml.clone(),
                    artifacts,
                    digest,
                    start: spec.start,
                    from_template: spec.boot_from_template,
                    restart: spec.restart,
                    labels: spec.labels.clone(),
                };
                self.install(&name, staged).await
            })
            .await
    }

    /// `Some(view)` when the same definition already exists (idempotent create).
    async fn existing(&self, name: &str, digest: &str) -> Result<Option<DomainView>> {
        match self.store.load(name)? {
            Some(r) if !r.deleting => {
                let same = std::fs::read_to_string(self.store.dir(name).join("source.sha256"))
                    .map(|d| d == digest)
                    .unwrap_or(false);
                if same {
                    Ok(Some(self.get(name, false).await?))
                } else {
                    Err(AgentError::AlreadyExists {
                        name: name.to_owned(),
                    })
                }
            }
            _ => Ok(None),
        }
    }

    async fn install(&self, name: &str, s: Staged) -> Result<DomainView> {
        let t0 = Instant::now();
        // A libvirt domain of this name that is not ours must never be overwritten.
        let n = name.to_owned();
        if let Some((_, xml)) = self.call(move |h| h.find(&n)).await? {
            if policy::owner_of(&xml).as_deref() != Some(self.agent_id.as_str()) {
                return Err(AgentError::Conflict(format!(
                    "libvirt already has a domain {name:?} that this agent does not manage"
                )));
            }
        }
        let dest = self.store.dir(name);
        // A directory without a record is a create that crashed half-way: replace it.
        self.store.remove(name)?;
        std::fs::rename(&s.dir, &dest).map_err(|e| AgentError::io(&dest, e))?;
        let result = self.commit(name, &dest, s, t0).await;
        if let Err(e) = &result {
            // A create that failed leaves nothing behind: not its record, nor a libvirt
            // definition (which would block the same name here, and on a host whose
            // libvirtd another agent shares, there too), nor its port filters.
            let n = name.to_owned();
            let id = self.agent_id.clone();
            let undo = self
                .call(move |h| {
                    if let Some((_, xml)) = h.find(&n)? {
                        if policy::owner_of(&xml).as_deref() == Some(id.as_str()) {
                            h.shutdown(&n, Duration::ZERO)?;
                            h.undefine(&n)?;
                        }
                    }
                    Ok(())
                })
                .await;
            if let Some(r) = self.store.load(name).ok().flatten() {
                let _ = self.remove_port_filters(&r.port_filters).await;
            }
            if let Err(u) = undo {
                tracing::warn!(domain = %name, error = %e, undo = %u, "a failed create left its libvirt definition");
            }
            let _ = self.store.remove(name);
        }
        result
    }

    async fn commit(&self, name: &str, dest: &Path, s: Staged, t0: Instant) -> Result<DomainView> {
        let (checked, port_filters) = self.check_config(name, &s.config_xml)?;
        let mut record = DomainRecord {
            name: name.to_owned(),
            uuid: String::new(),
            desired: if s.start {
                RunState::Running
            } else {
                RunState::Shutoff
            },
            restart: s.restart,
            labels: s.labels,
            files: checked.files.clone(),
            artifacts: s.artifacts,
            vcpus: checked.vcpus,
            memory_bytes: checked.memory_bytes,
            created_at_ms: self.clock.unix_ms(),
            libvirt_xml: checked.libvirt_xml.clone(),
            deleting: false,
            scratch_disks: s.scratch_disks,
            port_filters,
        };
        durable::atomic_write(&dest.join("source.sha256"), s.digest.as_bytes())?;
        self.store.save_config(name, &s.config_xml)?;
        self.store.save(&record)?;
        // The port filters exist before libvirt knows the domain: its tap is filtered from
        // the moment QEMU creates it, and a host that cannot filter gets no domain.
        self.apply_port_filters(&record.port_filters).await?;
        let xml = checked.libvirt_xml;
        let uuid = self.call(move |h| h.define(&xml)).await?;
        record.libvirt_xml = policy::with_uuid(&record.libvirt_xml, &uuid);
        record.uuid = uuid;
        self.store.save(&record)?;
        self.events.emit(
            name,
            EventKind::Defined,
            RunState::Shutoff,
            "created",
            Some(t0.elapsed()),
        );
        if s.start {
            let how = if s.from_template {
                self.start_from_template(&record).await?
            } else {
                let n = name.to_owned();
                self.call(move |h| h.start(&n)).await?;
                "started on create".to_owned()
            };
            self.events.emit(
                name,
                EventKind::Started,
                RunState::Running,
                &how,
                Some(t0.elapsed()),
            );
        }
        self.get(name, false).await
    }
}
