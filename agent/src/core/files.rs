//! A domain's config.xml and the files it references: read, replace, archive.
//! Only files referenced by config.xml are served or accepted (thesis 3.3.1).

use std::path::PathBuf;

use super::{Agent, DomainView};
use crate::error::{AgentError, Result};
use crate::events::EventKind;
use crate::hypervisor::RunState;
use crate::{durable, names, policy};

impl Agent {
    /// The client's config.xml.
    pub fn config(&self, name: &str) -> Result<String> {
        self.require(name)?;
        self.store.config(name)
    }

    /// Replaces config.xml (same policy as at create) and redefines the domain; a running
    /// domain picks the change up at its next start.
    pub async fn put_config(&self, name: &str, xml: &str) -> Result<DomainView> {
        let _g = self.locks.lock(name).await;
        let mut r = self.require(name)?;
        let (checked, port_filters) = self.check_config(name, xml)?;
        self.store.save_config(name, xml)?;
        let gone: Vec<_> = r
            .port_filters
            .iter()
            .filter(|f| !port_filters.iter().any(|n| n.port == f.port))
            .cloned()
            .collect();
        r.port_filters = port_filters;
        r.files = checked.files;
        r.vcpus = checked.vcpus;
        r.memory_bytes = checked.memory_bytes;
        r.libvirt_xml = policy::with_uuid(&checked.libvirt_xml, &r.uuid);
        self.store.save(&r)?;
        let x = r.libvirt_xml.clone();
        r.uuid = self.call(move |h| h.define(&x)).await?;
        self.store.save(&r)?;
        // The running domain keeps its tap until it stops; its next start gets the new
        // filters. A port the new XML no longer has goes now.
        self.remove_port_filters(&gone).await?;
        self.events.emit(
            name,
            EventKind::Defined,
            RunState::Shutoff,
            "config.xml replaced",
            None,
        );
        self.get(name, false).await
    }

    fn referenced(&self, name: &str, file: &str) -> Result<PathBuf> {
        let r = self.require(name)?;
        let rel = names::check_relative("file", file)?;
        let rel_s = rel.to_string_lossy();
        if !r.files.iter().any(|f| *f == rel_s) {
            return Err(AgentError::NotFound {
                kind: "file",
                name: format!("{name}/{file} (not referenced by config.xml)"),
            });
        }
        Ok(self.store.files_dir(name).join(rel))
    }

    /// Path of a referenced file, for serving. It must be a regular file inside the
    /// domain directory (no symlink may lead out).
    pub fn file_path(&self, name: &str, file: &str) -> Result<PathBuf> {
        let p = self.referenced(name, file)?;
        let meta = std::fs::symlink_metadata(&p).map_err(|_| AgentError::NotFound {
            kind: "file",
            name: format!("{name}/{file}"),
        })?;
        if !meta.file_type().is_file() {
            return Err(AgentError::Policy(format!(
                "{file:?} is not a regular file"
            )));
        }
        Ok(p)
    }

    /// Fails unless `file` is referenced by the domain's config.xml (checked before an
    /// upload is received).
    pub fn check_file(&self, name: &str, file: &str) -> Result<()> {
        self.referenced(name, file).map(|_| ())
    }

    /// Replaces (or adds) a referenced file with an upload.
    pub async fn put_file(&self, name: &str, file: &str, data: super::Spooled) -> Result<()> {
        let _g = self.locks.lock(name).await;
        let p = self.referenced(name, file)?;
        let dir = self.store.files_dir(name);
        tokio::task::spawn_blocking(move || -> Result<()> {
            if let Some(parent) = p.parent() {
                durable::create_dir(parent)?;
                let canon = parent
                    .canonicalize()
                    .map_err(|e| AgentError::io(parent, e))?;
                let root = dir.canonicalize().map_err(|e| AgentError::io(&dir, e))?;
                if !canon.starts_with(root) {
                    return Err(AgentError::Policy(
                        "the file's directory resolves outside the domain directory".into(),
                    ));
                }
            }
            data.persist(&p)
        })
        .await
        .map_err(|e| AgentError::Hypervisor(format!("write task failed: {e}")))?
    }

    /// The whole domain as a tar.gz: config.xml and every referenced file present, but its
    /// scratch disks (the guest's data, up to a TiB: `GET /domain/NAME/FILE` streams one).
    pub async fn archive(&self, name: &str) -> Result<Vec<u8>> {
        let r = self.require(name)?;
        let cfg = self.store.config(name)?;
        let dir = self.store.files_dir(name);
        let files: Vec<String> = r
            .files
            .iter()
            .filter(|f| !r.scratch_disks.contains(f))
            .cloned()
            .collect();
        tokio::task::spawn_blocking(move || crate::archive::build(cfg.as_bytes(), &dir, &files))
            .await
            .map_err(|e| AgentError::Hypervisor(format!("archive task failed: {e}")))?
    }
}
