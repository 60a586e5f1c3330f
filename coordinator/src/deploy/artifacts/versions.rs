//! A clone's layer directories: where it is built in place, and the versions a rollout
//! keeps (hard-link copies no later build touches, so a running clone's export never
//! changes under it), and which one a clone's NFS layer export serves.

use std::path::{Path, PathBuf};

use super::Artifacts;
use crate::deploy::DeployError;

impl Artifacts {
    /// The directory of a clone's layer as built in place (`DEPLOYMENT/CLONE/root`).
    fn built_root(&self, deployment: &str, clone: &str) -> PathBuf {
        self.cfg
            .layers_dir
            .join(deployment)
            .join(clone)
            .join("root")
    }

    /// Where the layer of `clone` at boot hash `hash` is kept once a rollout replaced it:
    /// `DEPLOYMENT/.v/CLONE-HASH16/root`, a copy (hard links) that no later build touches.
    fn version_root(&self, deployment: &str, clone: &str, hash: &str) -> PathBuf {
        let short = &hash[..hash.len().min(16)];
        self.cfg
            .layers_dir
            .join(deployment)
            .join(".v")
            .join(format!("{clone}-{short}"))
            .join("root")
    }

    /// The directory of a clone's layer at boot hash `hash` (what its NFS layer export
    /// serves and its `root=` mounts): its kept version when a rollout made one, else
    /// where it was built.
    pub fn layer_root(&self, deployment: &str, clone: &str, hash: &str) -> PathBuf {
        if !hash.is_empty() {
            let v = self.version_root(deployment, clone, hash);
            if v.is_dir() {
                return v;
            }
        }
        self.built_root(deployment, clone)
    }

    /// Keeps the layer of `clone` built aside (by a staged build) as its version at boot
    /// hash `hash`, unless it is there already, and drops its other kept versions. Clones
    /// mounting an older version keep it until they are replaced: a build never rewrites
    /// what a running clone mounts.
    pub fn keep_version(
        &self,
        deployment: &str,
        clone: &str,
        hash: &str,
    ) -> Result<PathBuf, DeployError> {
        let dest = self.version_root(deployment, clone, hash);
        if !dest.is_dir() {
            let staged = self
                .cfg
                .layers_dir
                .join(".staging")
                .join(deployment)
                .join(clone)
                .join("root");
            let parent = dest.parent().unwrap_or(&dest).to_owned();
            let tmp = parent.with_extension("tmp");
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).map_err(|e| DeployError::io("creating", &tmp, e))?;
            link_tree(&staged, &tmp.join("root"))?;
            let _ = std::fs::remove_dir_all(&parent);
            std::fs::rename(&tmp, &parent)
                .map_err(|e| DeployError::io("keeping the layer version", &parent, e))?;
        }
        Ok(dest)
    }

    /// Removes the kept layer versions of `clone` but the one at `hash` (those of a clone
    /// replaced since, which nothing mounts any more).
    pub fn prune_versions(&self, deployment: &str, clone: &str, hash: &str) {
        let keep = self
            .version_root(deployment, clone, hash)
            .parent()
            .map(Path::to_path_buf);
        let dir = self.cfg.layers_dir.join(deployment).join(".v");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let prefix = format!("{clone}-");
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let other_version = name
                .strip_prefix(&prefix)
                .is_some_and(|h| h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit()));
            if other_version && Some(&p) != keep.as_ref() {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
    }
}

/// Copies the tree `from` to `to` with hard links for files (a layer is read-only once
/// built: the builder writes new files, never into old ones), keeping directories' modes
/// and owners and symbolic links as they are.
fn link_tree(from: &Path, to: &Path) -> Result<(), DeployError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(from).map_err(|e| DeployError::io("reading", from, e))?;
    std::fs::create_dir(to).map_err(|e| DeployError::io("creating", to, e))?;
    for e in std::fs::read_dir(from).map_err(|e| DeployError::io("listing", from, e))? {
        let e = e.map_err(|e| DeployError::io("listing", from, e))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let t = e
            .file_type()
            .map_err(|e| DeployError::io("reading", &src, e))?;
        if t.is_dir() {
            link_tree(&src, &dst)?;
        } else if t.is_symlink() {
            let target =
                std::fs::read_link(&src).map_err(|e| DeployError::io("reading", &src, e))?;
            std::os::unix::fs::symlink(target, &dst)
                .map_err(|e| DeployError::io("linking", &dst, e))?;
        } else {
            std::fs::hard_link(&src, &dst).map_err(|e| DeployError::io("linking", &dst, e))?;
        }
    }
    std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid()))
        .map_err(|e| DeployError::io("setting the owner of", to, e))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| DeployError::io("setting the mode of", to, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::super::{ArtifactConfig, Artifacts};

    #[test]
    fn a_kept_version_is_a_copy_no_later_build_touches() {
        let t = tempfile::tempdir().expect("tmp");
        let a = Artifacts::new(ArtifactConfig {
            kernel: t.path().join("k"),
            kernel_entry: crate::deploy::artifacts::KernelEntry::default(),
            firmware: crate::deploy::artifacts::GuestFirmware::Default,
            base_image: t.path().join("b"),
            sets: Vec::new(),
            layers_dir: t.path().to_owned(),
        });
        let staged = t.path().join(".staging/dep/c1/root");
        std::fs::create_dir_all(staged.join("tmp")).expect("mkdir");
        std::fs::set_permissions(staged.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod");
        std::fs::write(staged.join("probe"), "v2\n").expect("write");
        std::os::unix::fs::symlink("/etc/probe", staged.join("link")).expect("symlink");
        // Never replaced: the layer is where it was built.
        let h1 = "1".repeat(64);
        assert_eq!(a.layer_root("dep", "c1", &h1), t.path().join("dep/c1/root"));
        let v = a.keep_version("dep", "c1", &h1).expect("keep");
        assert_eq!(a.layer_root("dep", "c1", &h1), v);
        assert_eq!(
            std::fs::read_to_string(v.join("probe")).expect("read"),
            "v2\n"
        );
        let mode = std::fs::metadata(v.join("tmp"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o1777);
        assert_eq!(
            std::fs::read_link(v.join("link")).expect("link"),
            Path::new("/etc/probe")
        );
        // The build rewrites its file (a new one): the kept version keeps the old content.
        std::fs::remove_file(staged.join("probe")).expect("rm");
        std::fs::write(staged.join("probe"), "v3\n").expect("write");
        assert_eq!(
            std::fs::read_to_string(v.join("probe")).expect("read"),
            "v2\n"
        );
        let h2 = "2".repeat(64);
        let v2 = a.keep_version("dep", "c1", &h2).expect("keep");
        assert_eq!(
            std::fs::read_to_string(v2.join("probe")).expect("read"),
            "v3\n"
        );
        // Once the clone runs h2, h1 goes.
        a.prune_versions("dep", "c1", &h2);
        assert!(!v.exists() && v2.exists());
        assert_eq!(a.layer_root("dep", "c1", &h1), t.path().join("dep/c1/root"));
    }
}
