//! The directory form of a layer (what NFS exports as the clone's differentiation layer), in
//! the portable whiteout convention, and reading such a directory back (after hooks ran).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::layer::{split, Entry, Layer, Meta, Portable};
use crate::template_set::symlink_escapes;
use crate::whiteout::{self, Marker};

/// The process umask, read once from `/proc/self/status` (all bits set when unknown, which
/// makes every mode be set explicitly).
fn umask() -> u32 {
    static UMASK: OnceLock<u32> = OnceLock::new();
    *UMASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o7777)
    })
}

/// Owner that new entries under a directory get without chown.
struct Creator {
    uid: u32,
    gid: u32,
}

impl Creator {
    fn for_dir(dir: &Path) -> std::io::Result<Creator> {
        let md = std::fs::metadata(dir)?;
        static IDS: OnceLock<(u32, u32)> = OnceLock::new();
        let (uid, egid) = *IDS.get_or_init(|| {
            (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            )
        });
        let gid = if md.mode() & 0o2000 != 0 {
            md.gid()
        } else {
            egid
        };
        Ok(Creator { uid, gid })
    }

    /// Give `path` the owner in `m` when it differs from what creation gave it. Without the
    /// right to chown (not root), the owner is kept: the archives still carry `m`.
    fn chown(&self, path: &Path, m: &Meta) -> std::io::Result<()> {
        if m.uid == self.uid && m.gid == self.gid {
            return Ok(());
        }
        match std::os::unix::fs::lchown(path, Some(m.uid), Some(m.gid)) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                tracing::debug!(path = %path.display(), uid = m.uid, gid = m.gid, "not root: owner kept (archives still carry it)");
                Ok(())
            }
            other => other,
        }
    }
}

/// Files that the layers of one build share (one `Arc` held by several layers: a template
/// set's static files, the cluster files `/etc/hosts` and `ssh_known_hosts`), each written
/// once into a scratch directory of the build and hard-linked into every layer that holds
/// it. Without this a cluster's `/etc/hosts` and `known_hosts`, which list every clone, are
/// written once per clone: bytes and inodes quadratic in the cluster's size (14 GB for
/// 10,000 clones).
///
/// Sound because no layer file is ever changed in place: a rebuild writes a new directory
/// and renames it over the old one, and the layers are exported read-only. Never use it
/// for a layer that hooks will edit.
pub struct Links {
    dir: PathBuf,
    made: Mutex<HashMap<(usize, usize, Meta), Linked>>,
    next: AtomicUsize,
}

/// One shared file written: the content it was written from (held so that its address,
/// the key, cannot be reused by other content during the build) and where.
struct Linked {
    _data: Arc<[u8]>,
    path: PathBuf,
}

impl Links {
    /// Shared files of a build writing into `out`, kept under the scratch directory `dir`
    /// (inside `out`, so on its file system, and named so that `prune` removes it if a
    /// build is interrupted).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            made: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
        }
    }

    /// Creates `full` as a link to the file of `data` with `m`, writing that file first if
    /// this build has not yet.
    fn link(
        &self,
        data: &Arc<[u8]>,
        m: &Meta,
        creator: &Creator,
        full: &Path,
    ) -> std::io::Result<()> {
        let key = (data.as_ptr() as usize, data.len(), *m);
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        let src = match made.get(&key) {
            Some(l) => l.path.clone(),
            None => {
                if made.is_empty() {
                    std::fs::create_dir_all(&self.dir)?;
                }
                let path = self
                    .dir
                    .join(self.next.fetch_add(1, Ordering::Relaxed).to_string());
                write_file(&path, m, data, creator)?;
                made.insert(
                    key,
                    Linked {
                        _data: Arc::clone(data),
                        path: path.clone(),
                    },
                );
                path
            }
        };
        drop(made);
        std::fs::hard_link(&src, full)
    }
}

impl Drop for Links {
    /// The layers keep their links; the scratch names go.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes one regular file with mode and owner `m`.
fn write_file(full: &Path, m: &Meta, data: &[u8], creator: &Creator) -> std::io::Result<()> {
    let mask = umask();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(m.mode)
        .open(full)?;
    if !data.is_empty() {
        f.write_all(data)?;
    }
    if m.mode & mask != 0 || m.mode & 0o7000 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(m.mode))?;
    }
    drop(f);
    // After chown the kernel drops setuid/setgid bits: set the mode again then.
    if m.uid != creator.uid || m.gid != creator.gid {
        creator.chown(full, m)?;
        std::fs::set_permissions(full, std::fs::Permissions::from_mode(m.mode))?;
    }
    Ok(())
}

/// Write `layer` under `dir` (which must exist and be empty), with as few system calls as
/// possible: modes are given at creation and fixed afterwards only when the umask or special
/// bits require it; owners are changed only when they differ from the creator's.
pub fn write(layer: &Layer, dir: &Path) -> std::io::Result<()> {
    write_linked(layer, dir, None)
}

/// [`write`], with the files `layer` shares with other layers of the build hard-linked
/// from `links` rather than written again.
pub fn write_linked(layer: &Layer, dir: &Path, links: Option<&Links>) -> std::io::Result<()> {
    let creator = Creator::for_dir(dir)?;
    let mask = umask();
    let mut fix_dirs: Vec<(std::path::PathBuf, u32)> = Vec::new();
    for (path, p) in layer.portable() {
        let full = dir.join(&path);
        match p {
            Portable::Dir(m) => {
                // Owner rwx while children are written; exact mode restored below if needed.
                match std::fs::DirBuilder::new()
                    .mode(m.mode | 0o700)
                    .create(&full)
                {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        fix_dirs.push((full.clone(), m.mode));
                    }
                    Err(e) => return Err(e),
                    Ok(()) => {
                        if m.mode & 0o700 != 0o700 || m.mode & mask != 0 || m.mode & 0o6000 != 0 {
                            fix_dirs.push((full.clone(), m.mode));
                        }
                    }
                }
                creator.chown(&full, &m)?;
            }
            Portable::File(m, data) => {
                // Shared with other layers: held by more than this layer.
                let shared = links.zip(match layer.entries.get(&path) {
                    Some(Entry::File { data, .. })
                        if !data.is_empty() && Arc::strong_count(data) > 1 =>
                    {
                        Some(data)
                    }
                    _ => None,
                });
                match shared {
                    Some((l, arc)) => l.link(arc, &m, &creator, &full)?,
                    None => write_file(&full, &m, data, &creator)?,
                }
            }
            Portable::Symlink(m, target) => {
                std::os::unix::fs::symlink(target, &full)?;
                creator.chown(&full, &m)?;
            }
        }
    }
    // Directory modes last (a 0555 directory must still receive its children).
    for (full, mode) in fix_dirs.into_iter().rev() {
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Read a directory in the portable convention back into a [`Layer`]. Refuses relative
/// symlinks that climb above `dir` and anything but files, directories and symlinks.
pub fn read(dir: &Path) -> std::io::Result<Layer> {
    let bad = |p: &Path, why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {why}", p.display()),
        )
    };
    let mut layer = Layer::default();
    for item in walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
    {
        let item = item.map_err(std::io::Error::from)?;
        let path = item.path();
        let rel = path
            .strip_prefix(dir)
            .ok()
            .and_then(Path::to_str)
            .ok_or_else(|| bad(path, "file names must be UTF-8"))?
            .to_string();
        let md = item.metadata().map_err(std::io::Error::from)?;
        let meta = Meta {
            mode: md.permissions().mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
        };
        let (parent, name) = split(&rel);
        let marker = whiteout::classify(name).map_err(|m| bad(path, &m))?;
        match marker {
            Marker::Opaque => {
                if let Some(Entry::Dir { opaque, .. }) = layer.entries.get_mut(parent) {
                    *opaque = true;
                }
            }
            Marker::Whiteout(target) => {
                let p = if parent.is_empty() {
                    target.to_string()
                } else {
                    format!("{parent}/{target}")
                };
                layer.entries.insert(p, Entry::Whiteout);
            }
            Marker::None if md.file_type().is_symlink() => {
                let target = std::fs::read_link(path)?;
                let target = target
                    .to_str()
                    .ok_or_else(|| bad(path, "symlink targets must be UTF-8"))?
                    .to_string();
                if symlink_escapes(parent, &target) {
                    return Err(bad(
                        path,
                        &format!("relative symlink to `{target}` escapes the layer"),
                    ));
                }
                layer.entries.insert(rel, Entry::Symlink { meta, target });
            }
            Marker::None if md.is_dir() => {
                let opaque = matches!(
                    layer.entries.get(&rel),
                    Some(Entry::Dir { opaque: true, .. })
                );
                layer.entries.insert(rel, Entry::Dir { meta, opaque });
            }
            Marker::None if md.is_file() => {
                let data = std::fs::read(path)?;
                layer.entries.insert(
                    rel,
                    Entry::File {
                        meta,
                        data: Arc::from(data),
                    },
                );
            }
            Marker::None => {
                return Err(bad(
                    path,
                    "only files, directories and symlinks are allowed in a layer",
                ))
            }
        }
    }
    Ok(layer)
}
