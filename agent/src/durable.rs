//! Durable file writes: write to a temporary sibling, fsync, rename, fsync the directory.

use std::io::Write;
use std::path::Path;

use crate::error::{AgentError, Result};

/// A process-unique suffix for temporary names (the process id and a counter).
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Atomically replaces `path` with `data`: a crash leaves either the old or the new content.
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| AgentError::io(path, std::io::Error::other("no parent directory")))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // One temporary name per call, not per process: two writers of one file in this
    // process (a renewal beside another) would otherwise truncate and rename each
    // other's temporary file.
    let tmp = dir.join(format!(".{file_name}.tmp{}", unique()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(data)?;
            f.sync_all()
        })
        .map_err(|e| AgentError::io(&tmp, e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| AgentError::io(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
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

    /// Two writers of one file in one process (an agent's renewal beside another) must
    /// not share a temporary file: each write lands whole, and none fails.
    #[test]
    fn concurrent_writers_in_one_process_each_land_whole() -> Result<()> {
        let d = tempfile::tempdir().map_err(|e| AgentError::io("tmp", e))?;
        let p = d.path().join("agent.crt");
        let bodies: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 64 * 1024]).collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = bodies
                .iter()
                .map(|b| {
                    let p = &p;
                    s.spawn(move || (0..20).try_for_each(|_| atomic_write(p, b)))
                })
                .collect();
            for h in handles {
                h.join().expect("writer thread")?;
            }
            Ok::<(), AgentError>(())
        })?;
        let got = std::fs::read(&p).map_err(|e| AgentError::io(&p, e))?;
        assert!(bodies.contains(&got), "a torn write: {} bytes", got.len());
        assert_eq!(std::fs::read_dir(d.path()).map(|r| r.count()).ok(), Some(1));
        Ok(())
    }
}
