//! Portable whiteouts (OCI/AUFS: `.wh.NAME` removes NAME, `.wh..wh..opq` makes a directory
//! opaque; the thesis's UnionFS also used `.wh.__dir_opaque`) converted to overlayfs form
//! (a 0/0 character device, the `trusted.overlay.opaque` xattr) while copying a layer onto
//! a tmpfs. Plain NFS, tar and cpio copies cannot carry the overlayfs form; this is why
//! layers are stored portably and converted at boot.

use crate::syscall::Syscall;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// The prefix of a portable (AUFS/OCI) whiteout file: `.wh.NAME` deletes `NAME`.
pub const WH_PREFIX: &str = ".wh.";
/// Names that mark their directory opaque.
pub const OPAQUE_MARKERS: [&str; 2] = [".wh..wh..opq", ".wh.__dir_opaque"];
/// The overlayfs opaque xattr.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What a conversion did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConvertStats {
    /// Files, directories and symlinks copied.
    pub copied: usize,
    /// `.wh.NAME` turned into 0/0 character devices.
    pub whiteouts: usize,
    /// Directories marked opaque.
    pub opaque: usize,
}

/// True when `dir` holds any portable whiteout (does not cross into other mounts).
pub fn has_portable_whiteouts(dir: &Path) -> bool {
    walkdir::WalkDir::new(dir)
        .same_file_system(true)
        .into_iter()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with(WH_PREFIX))
}

/// Copies `src` into `dst` (an existing, empty directory on a tmpfs), converting portable
/// whiteouts; mknod and setxattr go through `sys`, file data through std.
pub fn copy_convert(sys: &dyn Syscall, src: &Path, dst: &Path) -> io::Result<ConvertStats> {
    let mut stats = ConvertStats::default();
    let root = std::fs::metadata(src)?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(root.mode() & 0o7777))?;
    let as_root = rustix::process::geteuid().is_root();
    for entry in walkdir::WalkDir::new(src).min_depth(1).sort_by_file_name() {
        let entry = entry.map_err(io::Error::other)?;
        let rel = entry.path().strip_prefix(src).map_err(io::Error::other)?;
        let name = entry.file_name().to_string_lossy();
        let parent = dst.join(rel.parent().unwrap_or(Path::new("")));
        if OPAQUE_MARKERS.contains(&name.as_ref()) {
            sys.setxattr(&parent, OPAQUE_XATTR, b"y")?;
            stats.opaque += 1;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WH_PREFIX) {
            sys.mknod_char(&parent.join(hidden), 0o600, 0, 0)?;
            stats.whiteouts += 1;
            continue;
        }
        let target = dst.join(rel);
        let meta = entry.path().symlink_metadata()?;
        let ft = meta.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&target)?;
            std::fs::set_permissions(
                &target,
                std::fs::Permissions::from_mode(meta.mode() & 0o7777),
            )?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        } else if ft.is_file() {
            std::fs::copy(entry.path(), &target)?;
        } else {
            // Sockets, fifos and devices have no business in a differentiation layer.
            continue;
        }
        if as_root {
            std::os::unix::fs::lchown(&target, Some(meta.uid()), Some(meta.gid()))?;
        }
        stats.copied += 1;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::RecordingSyscall;

    #[test]
    fn converts_whiteouts_and_opaque_dirs() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let s = src.path();
        std::fs::create_dir_all(s.join("etc/ssh")).unwrap();
        std::fs::write(s.join("etc/hostname"), "clone01\n").unwrap();
        std::fs::write(s.join("etc/.wh.motd"), "").unwrap();
        std::fs::write(s.join("etc/ssh/.wh..wh..opq"), "").unwrap();
        std::fs::create_dir_all(s.join("var/tmp")).unwrap();
        std::fs::write(s.join("var/tmp/.wh.__dir_opaque"), "").unwrap();
        std::os::unix::fs::symlink("/proc/self/mounts", s.join("etc/mtab")).unwrap();
        assert!(has_portable_whiteouts(s));
        let sys = RecordingSyscall::new(Some(dst.path()));
        let stats = copy_convert(&sys, s, dst.path()).unwrap();
        assert_eq!(
            stats,
            ConvertStats {
                copied: 6,
                whiteouts: 1,
                opaque: 2
            }
        );
        assert_eq!(
            sys.calls(),
            vec![
                "mknod /etc/motd c 0 0 600",
                "setxattr /etc/ssh trusted.overlay.opaque=y",
                "setxattr /var/tmp trusted.overlay.opaque=y",
            ]
        );
        assert_eq!(
            std::fs::read_to_string(dst.path().join("etc/hostname")).unwrap(),
            "clone01\n"
        );
        assert!(!dst.path().join("etc/.wh.motd").exists());
        assert_eq!(
            std::fs::read_link(dst.path().join("etc/mtab")).unwrap(),
            Path::new("/proc/self/mounts")
        );
    }

    #[test]
    fn plain_layer_has_no_whiteouts() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("a.wh"), "").unwrap();
        assert!(!has_portable_whiteouts(src.path()));
    }
}
