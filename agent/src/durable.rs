//! Durable file writes: write to a temporary sibling, fsync, rename, fsync the directory.

use std::io::Write;
use std::path::Path;

use crate::error::{AgentError, Result};

/// Atomically replaces `path` with `data`: a crash leaves either the old or the new content.
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| AgentError::io(path, std::io::Error::other("no parent directory")))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| AgentError::io(&tmp, e))?;
        f.write_all(data).map_err(|e| AgentError::io(&tmp, e))?;
        f.sync_all().map_err(|e| AgentError::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| AgentError::io(path, e))?;
    sync_dir(dir)
}

/// Fsyncs a directory so renames inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AgentError::io(dir, e))
}

/// Creates a directory (and parents) readable and traversable by the hypervisor's user
/// (mode 0755), since QEMU under `qemu:///system` may run unprivileged.
pub fn create_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| AgentError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content() -> Result<()> {
        let d = tempfile::tempdir().map_err(|e| AgentError::io("tmp", e))?;
        let p = d.path().join("x.json");
        atomic_write(&p, b"one")?;
        atomic_write(&p, b"two")?;
        assert_eq!(std::fs::read(&p).ok().as_deref(), Some(&b"two"[..]));
        assert_eq!(std::fs::read_dir(d.path()).map(|r| r.count()).ok(), Some(1));
        Ok(())
    }
}
