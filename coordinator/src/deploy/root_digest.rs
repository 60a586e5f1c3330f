//! The identity of the shared root a clone boots, for OpenTelemetry's `host.image.id`
//! (issue 14): the agent labels each clone's telemetry with it, so a dashboard tells
//! clones of one root from clones of another. The root is a directory this server exports
//! over NFS, often large (a Debian root is tens of thousands of files), so its digest is
//! that of its manifest, not of its bytes: every entry's path, type, mode, owner, size,
//! modification time and link target, in path order. Any file added, removed, replaced or
//! written changes it; a root nobody touched keeps it across coordinator restarts.
//!
//! Must not touch: the root (it only reads metadata), and it never follows a link out of
//! it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a computed digest is reused before the tree is read again: a deploy of many
/// clones reads it once, and a root changed on disk shows within this.
pub const REUSE_FOR: Duration = Duration::from_secs(30);

/// `sha256:HEX` of the manifest of the tree at `dir` (see the module).
pub fn tree_digest(dir: &Path) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut entries: Vec<(std::ffi::OsString, std::fs::Metadata)> =
            std::fs::read_dir(dir.join(&rel))?
                .map(|e| e.and_then(|e| Ok((e.file_name(), e.metadata()?))))
                .collect::<std::io::Result<_>>()?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        // Directories are walked after this one's entries, in name order (the stack
        // pops the last pushed first).
        let mut subdirs = Vec::new();
        for (name, m) in entries {
            let path = rel.join(&name);
            let target = if m.file_type().is_symlink() {
                std::fs::read_link(dir.join(&path))?
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                Vec::new()
            };
            h.update(path.as_os_str().as_encoded_bytes());
            h.update([0]);
            for n in [
                u64::from(m.mode()),
                u64::from(m.uid()),
                u64::from(m.gid()),
                m.size(),
            ] {
                h.update(n.to_le_bytes());
            }
            h.update(m.mtime().to_le_bytes());
            h.update(m.mtime_nsec().to_le_bytes());
            h.update(&target);
            h.update([0]);
            if m.file_type().is_dir() {
                subdirs.push(path);
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// The directory of the root= value `root` when it is `exported`, the root this
/// coordinator exports from `server` (only that one is known to be the clones' root and
/// a tree worth reading; never `/` or another of the host's directories), else `None`:
/// the first `nfs` device (the shared root; layers come after it).
pub fn root_dir(root: &str, server: &str, exported: Option<&Path>) -> Option<PathBuf> {
    let exported = exported?;
    let spec = napalm_initramfs::rootspec::RootSpec::parse(root).ok()?;
    let d = spec.devices.into_iter().find(|d| d.kind == "nfs")?;
    let (host, path) = (d.params.first()?, d.params.get(1)?);
    let dir = PathBuf::from(path);
    (host == server && dir == exported && dir.is_dir()).then_some(dir)
}

/// Digests of roots, each reused for [`REUSE_FOR`]. One walk at a time: the clones of a
/// deploy ask together, and all but the first get its result.
#[derive(Default)]
pub struct RootDigests {
    known: tokio::sync::Mutex<HashMap<PathBuf, (Instant, String)>>,
}

impl RootDigests {
    /// The digest of the root `root` (a root= value) served by `server`, `None` when it
    /// is not the `exported` root or cannot be read (the clone is labelled without it).
    pub async fn of(&self, root: &str, server: &str, exported: Option<&Path>) -> Option<String> {
        let dir = root_dir(root, server, exported)?;
        let mut known = self.known.lock().await;
        if let Some((at, d)) = known.get(&dir) {
            if at.elapsed() < REUSE_FOR {
                return Some(d.clone());
            }
        }
        let walked = dir.clone();
        let digest = match tokio::task::spawn_blocking(move || tree_digest(&walked)).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::warn!(root = %dir.display(), error = %e, "reading the root for its digest failed");
                return None;
            }
            Err(_) => return None,
        };
        known.insert(dir, (Instant::now(), digest.clone()));
        Some(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_follows_every_change_of_the_tree_and_only_those() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        std::fs::create_dir_all(root.join("etc")).expect("etc");
        std::fs::create_dir_all(root.join("bin")).expect("bin");
        std::fs::write(root.join("etc/motd"), "napalm reference root\n").expect("motd");
        std::fs::write(root.join("bin/busybox"), "ELF").expect("busybox");
        std::os::unix::fs::symlink("busybox", root.join("bin/sh")).expect("link");
        let first = tree_digest(root).expect("digest");
        assert!(
            first.starts_with("sha256:") && first.len() == 7 + 64,
            "{first}"
        );
        assert_eq!(tree_digest(root).expect("again"), first, "stable");

        std::fs::write(root.join("etc/motd"), "napalm reference root, v2\n").expect("write");
        let written = tree_digest(root).expect("digest");
        assert_ne!(written, first, "a file written");
        std::fs::remove_file(root.join("bin/sh")).expect("rm");
        std::os::unix::fs::symlink("/bin/busybox", root.join("bin/sh")).expect("relink");
        assert_ne!(
            tree_digest(root).expect("digest"),
            written,
            "a link retargeted"
        );
    }

    #[test]
    fn only_the_root_this_coordinator_exports_is_read() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().display().to_string();
        let ours = Some(tmp.path());
        let s = "10.0.2.100";
        assert_eq!(
            root_dir(&format!("nfs:{s}:{dir}:ro"), s, ours),
            Some(tmp.path().to_path_buf())
        );
        assert_eq!(root_dir(&format!("nfs:10.0.2.9:{dir}:ro"), s, ours), None);
        assert_eq!(
            root_dir(&format!("nfs:{s}:{dir}:ro"), s, None),
            None,
            "no export"
        );
        // The default root without exports is the server's `/`: never walked.
        assert_eq!(root_dir(&format!("nfs:{s}:/:ro"), s, ours), None);
        assert_eq!(root_dir("/dev/vda:ro", s, ours), None);
    }
}
