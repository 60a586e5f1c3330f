//! Blank scratch disks (issue 15, thesis 4.2): a sparse raw file of the asked size with an
//! empty ext4 filesystem, made in a domain's staging directory before the domain is
//! defined, so the guest mounts scratch space beside its union root without going through
//! overlayfs. The guest finds the filesystem by its label.
//!
//! The filesystem is made by e2fsprogs' `mkfs.ext4` on this host (Debian's `e2fsprogs`,
//! essential on every Debian system), with lazy inode-table and journal initialisation: the
//! file is sparse, so the journal already reads as zeros and nothing but the superblocks,
//! group descriptors and bitmaps is written (a 4 GiB disk costs about 2 MiB of the host's
//! disk until the guest writes). The guest mounts it with `noinit_itable`, so no kernel
//! thread zeroes inode tables behind its back either (under TCG that would cost the clone
//! CPU).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{AgentError, Result};

/// The smallest disk accepted: ext4's own metadata and journal need a few MiB.
pub const MIN_BYTES: u64 = 16 << 20;
/// The largest disk accepted (sparse, but a guest could fill it).
pub const MAX_BYTES: u64 = 1 << 40;

/// One disk to make.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScratchDiskSpec {
    /// File name in the domain directory.
    pub name: String,
    /// Size, bytes.
    pub size_bytes: u64,
    /// ext4 volume label.
    pub label: String,
}

impl ScratchDiskSpec {
    /// Refuses what the agent will not make, quoting it: a name that is not a plain file
    /// name, a size outside [`MIN_BYTES`]..=[`MAX_BYTES`], a label ext4 cannot hold.
    pub fn check(&self) -> Result<()> {
        if self.name.contains('/') {
            return Err(AgentError::Policy(format!(
                "scratch disk name {:?} contains '/'",
                self.name
            )));
        }
        crate::names::check_relative("scratch_disk.name", &self.name)?;
        if crate::names::RESERVED_FILES.contains(&self.name.as_str()) {
            return Err(AgentError::invalid(
                "scratch_disk.name",
                format!("{:?} is a reserved name", self.name),
            ));
        }
        if !(MIN_BYTES..=MAX_BYTES).contains(&self.size_bytes) {
            return Err(AgentError::invalid(
                "scratch_disk.size_bytes",
                format!(
                    "{} bytes for {:?}: a scratch disk is 16 MiB to 1 TiB",
                    self.size_bytes, self.name
                ),
            ));
        }
        let ok_label = !self.label.is_empty()
            && self.label.len() <= 16
            && self
                .label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok_label {
            return Err(AgentError::invalid(
                "scratch_disk.label",
                format!(
                    "{:?}: an ext4 label is 1 to 16 characters of letters, digits and ._-",
                    self.label
                ),
            ));
        }
        Ok(())
    }
}

/// `mkfs.ext4` on PATH, else where Debian puts it (a daemon's PATH may lack the sbin
/// directories).
fn mkfs_program() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d: PathBuf| d.join("mkfs.ext4"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("mkfs.ext4"))
}

/// Makes `spec` at `dir/NAME`: a sparse file of its size holding an empty ext4 labelled
/// `spec.label`, its root directory owned by root (the guest's napalm-init gives it the
/// scratch entry's mode). Blocking (run it off the async workers).
pub fn make(dir: &Path, spec: &ScratchDiskSpec) -> Result<PathBuf> {
    make_with(&mkfs_program(), dir, spec)
}

/// [`make`] with `program` as mkfs.ext4.
fn make_with(program: &Path, dir: &Path, spec: &ScratchDiskSpec) -> Result<PathBuf> {
    spec.check()?;
    let path = dir.join(&spec.name);
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(spec.size_bytes))
        .map_err(|e| AgentError::io(&path, e))?;
    let out = Command::new(program)
        .args(["-q", "-F", "-m", "0", "-L", &spec.label])
        .args([
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
        ])
        .arg(&path)
        .output()
        .map_err(|e| {
            let _ = std::fs::remove_file(&path);
            AgentError::io(program, e)
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&path);
        return Err(AgentError::io(
            &path,
            std::io::Error::other(format!(
                "{} -L {} {} failed ({}): {}",
                program.display(),
                spec.label,
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, size: u64, label: &str) -> ScratchDiskSpec {
        ScratchDiskSpec {
            name: name.into(),
            size_bytes: size,
            label: label.into(),
        }
    }

    /// Reads the ext4 superblock's magic and label with debugfs-free arithmetic.
    fn ext4_label(path: &Path) -> Option<String> {
        let b = std::fs::read(path).ok()?;
        let sb = b.get(1024..2048)?;
        if sb[56..58] != [0x53, 0xEF] {
            return None;
        }
        let l = &sb[120..136];
        let end = l.iter().position(|&c| c == 0).unwrap_or(16);
        Some(String::from_utf8_lossy(&l[..end]).into_owned())
    }

    #[test]
    fn a_disk_is_sparse_ext4_with_its_label() {
        let d = tempfile::tempdir().unwrap();
        let s = spec("scratch0.img", 1 << 30, "napalm-scratch0");
        let p = make(d.path(), &s).unwrap_or_else(|e| panic!("{e}"));
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), 1 << 30);
        use std::os::unix::fs::MetadataExt;
        let used = m.blocks() * 512;
        assert!(
            used < 16 << 20,
            "{used} bytes allocated for a blank 1 GiB disk"
        );
        // Read only the head: the rest is a hole.
        let mut head = vec![0u8; 4096];
        use std::io::Read;
        std::fs::File::open(&p)
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        let h = d.path().join("head");
        std::fs::write(&h, &head).unwrap();
        assert_eq!(ext4_label(&h).as_deref(), Some("napalm-scratch0"));
        // e2fsck finds it clean (a real check of what the guest will mount).
        let fsck = Command::new("/sbin/e2fsck")
            .args(["-n", "-f"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stdout)
        );
    }

    #[test]
    fn refusals_quote_the_input() {
        let d = tempfile::tempdir().unwrap();
        for (s, what) in [
            (spec("a/b.img", 1 << 30, "x"), "contains '/'"),
            (spec("..", 1 << 30, "x"), ".."),
            (spec("s.img", 1 << 20, "x"), "16 MiB to 1 TiB"),
            (spec("s.img", 2 << 40, "x"), "16 MiB to 1 TiB"),
            (spec("s.img", 1 << 30, ""), "1 to 16 characters"),
            (
                spec("s.img", 1 << 30, "a-label-far-too-long"),
                "\"a-label-far-too-long\"",
            ),
            (spec("s.img", 1 << 30, "bad label"), "\"bad label\""),
        ] {
            let e = make(d.path(), &s).expect_err(&s.name).to_string();
            assert!(e.contains(what), "{s:?}: {e}");
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        // A mkfs that fails (or is missing) leaves no file behind and says why.
        let s = spec("s.img", 64 << 20, "napalm-scratch0");
        let e = make_with(Path::new("/bin/false"), d.path(), &s)
            .expect_err("mkfs fails")
            .to_string();
        assert!(
            e.contains("/bin/false -L napalm-scratch0") && e.contains("failed"),
            "{e}"
        );
        let e = make_with(Path::new("/nonexistent/mkfs.ext4"), d.path(), &s)
            .expect_err("no mkfs")
            .to_string();
        assert!(e.contains("/nonexistent/mkfs.ext4"), "{e}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
