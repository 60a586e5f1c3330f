//! Template sets (the thesis's GCDSE): a directory per set, found by name in a search path.
//!
//! ```text
//! SET/README.md      what the set does and which values it reads (not part of the layer)
//! SET/root/...       the tree laid over the server root:
//!                    *.tmpl   rendered per clone (handlebars, strict), suffix dropped
//!                    *.ctmpl  rendered once per cluster (cluster facts only), suffix dropped
//!                    .wh.NAME / .wh..wh..opq   whiteout / opaque markers
//!                    anything else: copied with mode, owner and symlinks
//! SET/setup.d/*      executables run per clone after the tree is laid (see `hooks`)
//! SET/attributes     optional `PATH MODE [UID GID]` lines (output paths, octal mode):
//!                    git keeps neither directory modes nor owners, so shipped sets say
//!                    here that `tmp` is 1777 or a host key 0600
//! ```
//! Symlinks are copied as links; an absolute target is read inside the clone's root, a
//! relative one must not climb above the layer root. A template that is a symlink must point
//! inside its set. Sizes are bounded by [`Limits`].

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::error::TemplateError;
use crate::layer::{split, Meta};
use crate::limits::Limits;
use crate::whiteout::{self, Marker};

/// One entry of a set, keyed by its output path.
#[derive(Clone, Debug)]
pub enum SetEntry {
    /// A directory (opaque when it holds an opaque marker).
    Dir {
        /// Owner and mode.
        meta: Meta,
        /// Opaque marker present.
        opaque: bool,
    },
    /// A file copied as is.
    File {
        /// Owner and mode.
        meta: Meta,
        /// The file's bytes, shared by every clone's layer.
        data: Arc<[u8]>,
    },
    /// A symlink copied as is.
    Symlink {
        /// Owner (a symlink's mode is not used).
        meta: Meta,
        /// The link's target, exactly as written in the set.
        target: String,
    },
    /// A per-clone template (`*.tmpl`).
    Template {
        /// Owner and mode of the output.
        meta: Meta,
        /// Template file (its name in handlebars and in messages).
        file: PathBuf,
    },
    /// A once-per-cluster template (`*.ctmpl`).
    ClusterTemplate {
        /// Owner and mode of the output.
        meta: Meta,
        /// Template file.
        file: PathBuf,
    },
    /// A `.wh.NAME` marker: removes the path from lower sets and from the server root.
    Whiteout,
}

/// A template set loaded from disk.
#[derive(Clone, Debug)]
pub struct TemplateSet {
    /// Set name (its directory name).
    pub name: String,
    /// The directory the set was loaded from.
    pub dir: PathBuf,
    /// Output path → entry.
    pub entries: BTreeMap<String, SetEntry>,
    /// Template sources by template file path.
    pub sources: HashMap<PathBuf, Arc<str>>,
    /// `setup.d/` executables, sorted by name.
    pub hooks: Vec<PathBuf>,
    /// SHA-256 over every byte, mode, owner and name of the set.
    pub hash: [u8; 32],
}

fn meta_of(md: &std::fs::Metadata) -> Meta {
    Meta {
        mode: md.permissions().mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
    }
}

/// Whether a relative symlink target at `parent` climbs above the layer root.
pub fn symlink_escapes(parent: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut depth = parent.split('/').filter(|c| !c.is_empty()).count();
    for comp in target.split('/') {
        match comp {
            "" | "." => {}
            ".." if depth == 0 => return true,
            ".." => depth -= 1,
            _ => depth += 1,
        }
    }
    false
}

impl TemplateSet {
    /// Load the set in `dir` (named after the directory).
    pub fn load(dir: &Path, limits: &Limits) -> Result<TemplateSet, TemplateError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let read = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TemplateError::Read { path, source }
        };
        let invalid = |path: &Path, message: String| TemplateError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let root = dir.join("root");
        let canon_dir = std::fs::canonicalize(dir).map_err(read(dir))?;
        let mut set = TemplateSet {
            name,
            dir: dir.to_path_buf(),
            entries: BTreeMap::new(),
            sources: HashMap::new(),
            hooks: Vec::new(),
            hash: [0; 32],
        };
        let mut total: u64 = 0;
        let mut hasher = Sha256::new();
        if root.is_dir() {
            let walk = walkdir::WalkDir::new(&root)
                .min_depth(1)
                .follow_links(false)
                .sort_by_file_name();
            for item in walk {
                let item = item.map_err(|e| {
                    let p = e.path().unwrap_or(&root).to_path_buf();
                    TemplateError::Read {
                        source: e.into(),
                        path: p,
                    }
                })?;
                let path = item.path();
                if set.entries.len() >= limits.max_set_entries {
                    return Err(TemplateError::TooLarge {
                        path: dir.to_path_buf(),
                        what: format!("more than {} entries", limits.max_set_entries),
                    });
                }
                let rel = path
                    .strip_prefix(&root)
                    .ok()
                    .and_then(Path::to_str)
                    .ok_or_else(|| invalid(path, "file names must be UTF-8".into()))?
                    .to_string();
                let md = item.metadata().map_err(|e| TemplateError::Read {
                    path: path.to_path_buf(),
                    source: e.into(),
                })?;
                let meta = meta_of(&md);
                let (parent, fname) = split(&rel);
                let (out_path, entry) = match whiteout::classify(fname).map_err(|m| invalid(path, m))? {
                    Marker::Opaque => {
                        if parent.is_empty() {
                            return Err(invalid(path, "an opaque marker at the top of a set would hide the whole server root; put it in a directory".into()));
                        }
                        match set.entries.get_mut(parent) {
                            Some(SetEntry::Dir { opaque, .. }) => *opaque = true,
                            _ => return Err(invalid(path, "opaque marker outside a directory".into())),
                        }
                        hasher.update(format!("O {parent}\0").as_bytes());
                        continue;
                    }
                    Marker::Whiteout(target) => {
                        let p = if parent.is_empty() { target.to_string() } else { format!("{parent}/{target}") };
                        (p, SetEntry::Whiteout)
                    }
                    Marker::None if md.file_type().is_symlink() => {
                        let target = std::fs::read_link(path).map_err(read(path))?;
                        let target = target
                            .to_str()
                            .ok_or_else(|| invalid(path, "symlink targets must be UTF-8".into()))?
                            .to_string();
                        if fname.ends_with(".tmpl") || fname.ends_with(".ctmpl") {
                            // A template reached through a link: it must stay inside the set.
                            let canon = std::fs::canonicalize(path).map_err(read(path))?;
                            if !canon.starts_with(&canon_dir) {
                                return Err(TemplateError::Escape {
                                    path: path.to_path_buf(),
                                    what: format!("template link to `{target}`"),
                                });
                            }
                            let tmd = std::fs::metadata(path).map_err(read(path))?;
                            set.template(&rel, path, meta_of(&tmd), tmd.len(), limits, &mut total, &mut hasher)?
                        } else {
                            if symlink_escapes(parent, &target) {
                                return Err(TemplateError::Escape {
                                    path: path.to_path_buf(),
                                    what: format!("relative symlink to `{target}`"),
                                });
                            }
                            hasher.update(format!("L {rel}\0{target}\0{}:{}\0", meta.uid, meta.gid).as_bytes());
                            (rel.clone(), SetEntry::Symlink { meta, target })
                        }
                    }
                    Marker::None if md.is_dir() => {
                        hasher.update(format!("D {rel}\0{:o}:{}:{}\0", meta.mode, meta.uid, meta.gid).as_bytes());
                        (rel.clone(), SetEntry::Dir { meta, opaque: false })
                    }
                    Marker::None if md.is_file() => {
                        if fname.ends_with(".tmpl") || fname.ends_with(".ctmpl") {
                            set.template(&rel, path, meta, md.len(), limits, &mut total, &mut hasher)?
                        } else {
                            let data = read_bounded(path, md.len(), limits, &mut total, dir)?;
                            hasher.update(format!("F {rel}\0{:o}:{}:{}\0{}\0", meta.mode, meta.uid, meta.gid, data.len()).as_bytes());
                            hasher.update(&data);
                            (rel.clone(), SetEntry::File { meta, data: Arc::from(data) })
                        }
                    }
                    Marker::None => {
                        return Err(invalid(path, "only files, directories and symlinks may be in a template set (no devices, fifos or sockets)".into()))
                    }
                };
                if let Some(prev) = set.entries.get(&out_path) {
                    let what = if matches!(prev, SetEntry::Whiteout)
                        || matches!(entry, SetEntry::Whiteout)
                    {
                        "its own whiteout"
                    } else {
                        "another file with the same output name"
                    };
                    return Err(invalid(
                        path,
                        format!("`{out_path}` clashes with {what} in the same set; keep one"),
                    ));
                }
                set.entries.insert(out_path, entry);
            }
        }
        let attributes = dir.join("attributes");
        if attributes.is_file() {
            let text = std::fs::read_to_string(&attributes).map_err(read(&attributes))?;
            hasher.update(b"A\0");
            hasher.update(text.as_bytes());
            set.apply_attributes(&attributes, &text)?;
        }
        let setup = dir.join("setup.d");
        if setup.is_dir() {
            let mut hooks: Vec<PathBuf> = std::fs::read_dir(&setup)
                .map_err(read(&setup))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    std::fs::metadata(p)
                        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                        .unwrap_or(false)
                })
                .collect();
            hooks.sort();
            for h in &hooks {
                let data = std::fs::read(h).map_err(read(h))?;
                hasher.update(format!("H {}\0{}\0", h.display(), data.len()).as_bytes());
                hasher.update(&data);
            }
            set.hooks = hooks;
        }
        set.hash = hasher.finalize().into();
        tracing::debug!(set = %set.name, entries = set.entries.len(), hooks = set.hooks.len(), "template set loaded");
        Ok(set)
    }

    fn apply_attributes(&mut self, file: &Path, text: &str) -> Result<(), TemplateError> {
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: String| TemplateError::Invalid {
                path: PathBuf::from(format!("{}:{}", file.display(), n + 1)),
                message: format!("`{line}`: {why} (write `PATH MODE [UID GID]`, e.g. `tmp 1777`)"),
            };
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 2 && f.len() != 4 {
                return Err(bad("expected 2 or 4 fields".into()));
            }
            let mode = u32::from_str_radix(f[1], 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| bad(format!("`{}` is not an octal mode", f[1])))?;
            let owner = if f.len() == 4 {
                let uid = f[2]
                    .parse::<u32>()
                    .map_err(|_| bad(format!("`{}` is not a uid", f[2])))?;
                let gid = f[3]
                    .parse::<u32>()
                    .map_err(|_| bad(format!("`{}` is not a gid", f[3])))?;
                Some((uid, gid))
            } else {
                None
            };
            let path = f[0].trim_matches('/');
            let meta = match self.entries.get_mut(path) {
                Some(SetEntry::Dir { meta, .. })
                | Some(SetEntry::File { meta, .. })
                | Some(SetEntry::Template { meta, .. })
                | Some(SetEntry::ClusterTemplate { meta, .. }) => meta,
                Some(SetEntry::Symlink { meta, .. }) if owner.is_some() => meta,
                _ => {
                    return Err(bad(format!(
                        "`{path}` is not a file or directory of the set"
                    )))
                }
            };
            meta.mode = mode;
            if let Some((uid, gid)) = owner {
                meta.uid = uid;
                meta.gid = gid;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn template(
        &mut self,
        rel: &str,
        path: &Path,
        meta: Meta,
        len: u64,
        limits: &Limits,
        total: &mut u64,
        hasher: &mut Sha256,
    ) -> Result<(String, SetEntry), TemplateError> {
        let data = read_bounded(path, len, limits, total, &self.dir)?;
        let source = String::from_utf8(data).map_err(|_| TemplateError::Invalid {
            path: path.to_path_buf(),
            message: "templates must be UTF-8 text".into(),
        })?;
        hasher.update(
            format!(
                "T {rel}\0{:o}:{}:{}\0{}\0",
                meta.mode,
                meta.uid,
                meta.gid,
                source.len()
            )
            .as_bytes(),
        );
        hasher.update(source.as_bytes());
        self.sources.insert(path.to_path_buf(), Arc::from(source));
        let file = path.to_path_buf();
        Ok(match rel.strip_suffix(".ctmpl") {
            Some(out) => (out.to_string(), SetEntry::ClusterTemplate { meta, file }),
            None => (
                rel.trim_end_matches(".tmpl").to_string(),
                SetEntry::Template { meta, file },
            ),
        })
    }
}

fn read_bounded(
    path: &Path,
    len: u64,
    limits: &Limits,
    total: &mut u64,
    set_dir: &Path,
) -> Result<Vec<u8>, TemplateError> {
    if len > limits.max_file_bytes {
        return Err(TemplateError::TooLarge {
            path: path.to_path_buf(),
            what: format!("{len} bytes, more than {} per file", limits.max_file_bytes),
        });
    }
    *total += len;
    if *total > limits.max_set_bytes {
        return Err(TemplateError::TooLarge {
            path: set_dir.to_path_buf(),
            what: format!("more than {} bytes in the set", limits.max_set_bytes),
        });
    }
    std::fs::read(path).map_err(|source| TemplateError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Where sets are found: a search path of directories, each holding sets by name. The first
/// directory holding a set wins. Loaded sets are cached.
#[derive(Debug)]
pub struct SetLibrary {
    dirs: Vec<PathBuf>,
    limits: Limits,
    cache: Mutex<HashMap<String, Arc<TemplateSet>>>,
}

impl SetLibrary {
    /// A library searching `dirs` in order, with default limits.
    pub fn new(dirs: Vec<PathBuf>) -> SetLibrary {
        SetLibrary::with_limits(dirs, Limits::default())
    }

    /// A library with explicit limits.
    pub fn with_limits(dirs: Vec<PathBuf>, limits: Limits) -> SetLibrary {
        SetLibrary {
            dirs,
            limits,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The directories searched, joined for messages.
    pub fn searched(&self) -> String {
        let v: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        v.join(", ")
    }

    /// Limits used to load sets.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Load the set `name`; `Ok(None)` when no directory holds it.
    pub fn get(&self, name: &str) -> Result<Option<Arc<TemplateSet>>, TemplateError> {
        if let Some(s) = self.cache.lock().ok().and_then(|c| c.get(name).cloned()) {
            return Ok(Some(s));
        }
        let Some(dir) = self.dirs.iter().map(|d| d.join(name)).find(|d| d.is_dir()) else {
            return Ok(None);
        };
        let set = Arc::new(TemplateSet::load(&dir, &self.limits)?);
        if let Ok(mut c) = self.cache.lock() {
            c.insert(name.to_string(), set.clone());
        }
        Ok(Some(set))
    }

    /// Names of every set in the search path, sorted.
    pub fn available(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .dirs
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::symlink_escapes;

    #[test]
    fn escapes() {
        assert!(!symlink_escapes("etc/runlevels/boot", "../clone-boot"));
        assert!(!symlink_escapes("etc", "/etc/init.d/x"));
        assert!(symlink_escapes("etc", "../../shadow"));
        assert!(symlink_escapes("", "../x"));
        assert!(!symlink_escapes("a/b", "../../c"));
    }
}
