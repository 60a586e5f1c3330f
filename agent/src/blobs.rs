//! Content-addressed blob store: kernels and initramfs images stored once by sha256 under
//! `STATE/blobs/sha256/HEX` and hard-linked (read-only) or copied (writable) into domains.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::durable;
use crate::error::{AgentError, Result};

/// A blob named by content.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct BlobId {
    /// Lower-case hex sha256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

impl BlobId {
    /// Checks the digest is 64 lower-case hex characters.
    pub fn validate(&self) -> Result<()> {
        if self.sha256.len() == 64
            && self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(())
        } else {
            Err(AgentError::invalid(
                "blob.sha256",
                format!("{:?} is not 64 lower-case hex digits", self.sha256),
            ))
        }
    }
}

impl std::fmt::Display for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.sha256, self.size)
    }
}

/// The store on disk.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

/// An upload in progress: bytes go to a temporary file and are hashed on the way.
pub struct BlobWriter {
    expected: BlobId,
    tmp: PathBuf,
    file: std::fs::File,
    hasher: Sha256,
    written: u64,
    final_path: PathBuf,
}

impl BlobStore {
    /// Opens (creating) the store under `root`.
    pub fn open(root: &Path) -> Result<Self> {
        durable::create_dir(&root.join("sha256"))?;
        durable::create_dir(&root.join("tmp"))?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// Where a blob lives.
    pub fn path(&self, id: &BlobId) -> PathBuf {
        self.root.join("sha256").join(&id.sha256)
    }

    /// True when the blob is stored with the announced size.
    pub fn has(&self, id: &BlobId) -> bool {
        id.validate().is_ok()
            && std::fs::metadata(self.path(id))
                .map(|m| m.len() == id.size)
                .unwrap_or(false)
    }

    /// Starts an upload of `id`.
    pub fn writer(&self, id: BlobId) -> Result<BlobWriter> {
        id.validate()?;
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.{}", id.sha256, durable::unique()));
        let file = std::fs::File::create(&tmp).map_err(|e| AgentError::io(&tmp, e))?;
        Ok(BlobWriter {
            final_path: self.path(&id),
            expected: id,
            tmp,
            file,
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// Stores `data` as a blob and returns its id.
    pub fn put_bytes(&self, data: &[u8]) -> Result<BlobId> {
        let id = BlobId {
            sha256: hex::encode(Sha256::digest(data)),
            size: data.len() as u64,
        };
        if !self.has(&id) {
            let mut w = self.writer(id.clone())?;
            w.write(data)?;
            w.finish()?;
        }
        Ok(id)
    }

    /// Places a blob at `dest`: a hard link (shared, read-only) or a copy (writable).
    pub fn materialise(&self, id: &BlobId, dest: &Path, writable: bool) -> Result<()> {
        if !self.has(id) {
            return Err(AgentError::BlobMissing(id.sha256.clone()));
        }
        let src = self.path(id);
        let _ = std::fs::remove_file(dest);
        if writable || std::fs::hard_link(&src, dest).is_err() {
            std::fs::copy(&src, dest).map_err(|e| AgentError::io(dest, e))?;
        }
        Ok(())
    }
}

impl BlobWriter {
    /// Appends a chunk; refuses more bytes than announced.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.written += chunk.len() as u64;
        if self.written > self.expected.size {
            return Err(AgentError::Digest {
                expected: self.expected.to_string(),
                actual: format!("more than {} bytes", self.expected.size),
            });
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .map_err(|e| AgentError::io(&self.tmp, e))
    }

    /// Verifies digest and size, then moves the blob into place.
    pub fn finish(self) -> Result<BlobId> {
        let actual = BlobId {
            sha256: hex::encode(self.hasher.clone().finalize()),
            size: self.written,
        };
        if actual != self.expected {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(AgentError::Digest {
                expected: self.expected.to_string(),
                actual: actual.to_string(),
            });
        }
        self.file
            .sync_all()
            .map_err(|e| AgentError::io(&self.tmp, e))?;
        set_read_only(&self.tmp)?;
        std::fs::rename(&self.tmp, &self.final_path)
            .map_err(|e| AgentError::io(&self.final_path, e))?;
        if let Some(dir) = self.final_path.parent() {
            durable::sync_dir(dir)?;
        }
        Ok(actual)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn set_read_only(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o444))
        .map_err(|e| AgentError::io(p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_verifies_digest() -> Result<()> {
        let d = tempfile::tempdir().map_err(|e| AgentError::io("tmp", e))?;
        let store = BlobStore::open(d.path())?;
        let id = store.put_bytes(b"kernel")?;
        assert!(store.has(&id));
        let bad = BlobId {
            sha256: "0".repeat(64),
            size: 6,
        };
        let mut w = store.writer(bad.clone())?;
        w.write(b"kernel")?;
        assert!(matches!(w.finish(), Err(AgentError::Digest { .. })));
        assert!(!store.has(&bad));
        let mut w = store.writer(id.clone())?;
        assert!(w.write(b"kernel+more").is_err());
        Ok(())
    }
}
