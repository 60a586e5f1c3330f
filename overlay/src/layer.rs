//! A clone's differentiation layer in memory: relative paths → entries. Every output form
//! (directory, cpio, tar.gz) is written from [`Layer::portable`], so whiteouts and opaque
//! directories come out the same way in each.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::whiteout;

/// Owner and permission bits of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Meta {
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

impl Meta {
    /// Root-owned with the given mode.
    pub fn root(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
        }
    }
}

/// One entry of a layer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Entry {
    /// A directory; `opaque` hides everything below it in lower layers.
    Dir {
        /// Owner and mode.
        meta: Meta,
        /// Opaque directory.
        opaque: bool,
    },
    /// A regular file.
    File {
        /// Owner and mode.
        meta: Meta,
        /// Content (shared between clones when identical, e.g. cluster files).
        #[serde(skip)]
        data: Arc<[u8]>,
    },
    /// A symbolic link.
    Symlink {
        /// Owner (a symlink's mode is not used).
        meta: Meta,
        /// Target as written.
        target: String,
    },
    /// Removes the path from the layers below.
    Whiteout,
}

/// An entry in the portable form written to disk and archives.
#[derive(Clone, Debug, PartialEq)]
pub enum Portable<'a> {
    /// A directory.
    Dir(Meta),
    /// A regular file (whiteout markers are empty files).
    File(Meta, &'a [u8]),
    /// A symlink.
    Symlink(Meta, &'a str),
}

/// Mode and owner of whiteout marker files.
pub const MARKER_META: Meta = Meta {
    mode: 0o644,
    uid: 0,
    gid: 0,
};

/// A clone's layer: sorted relative paths (`etc/hosts`, no leading `/`) → entries.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Layer {
    /// The entries; parents sort before their children.
    pub entries: BTreeMap<String, Entry>,
}

impl Layer {
    /// The layer as portable `(path, entry)` pairs, sorted, with whiteouts turned into
    /// `.wh.NAME` files and opaque directories given a `.wh..wh..opq` file.
    pub fn portable(&self) -> Vec<(String, Portable<'_>)> {
        let mut out: Vec<(String, Portable<'_>)> = Vec::with_capacity(self.entries.len() + 4);
        for (path, entry) in &self.entries {
            match entry {
                Entry::Dir { meta, opaque } => {
                    out.push((path.clone(), Portable::Dir(*meta)));
                    if *opaque {
                        out.push((
                            format!("{path}/{}", whiteout::OPAQUE),
                            Portable::File(MARKER_META, &[]),
                        ));
                    }
                }
                Entry::File { meta, data } => out.push((path.clone(), Portable::File(*meta, data))),
                Entry::Symlink { meta, target } => {
                    out.push((path.clone(), Portable::Symlink(*meta, target)))
                }
                Entry::Whiteout => {
                    let (dir, name) = split(path);
                    let marker = whiteout::marker_for(name);
                    let p = if dir.is_empty() {
                        marker
                    } else {
                        format!("{dir}/{marker}")
                    };
                    out.push((p, Portable::File(MARKER_META, &[])));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Add directories for every missing ancestor of the entries (root-owned, 0755), so
    /// archives extract anywhere.
    pub fn add_parents(&mut self) {
        let mut missing = Vec::new();
        for path in self.entries.keys() {
            let mut p = path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                if !self.entries.contains_key(parent) {
                    missing.push(parent.to_string());
                }
                p = parent;
            }
        }
        for m in missing {
            self.entries.entry(m).or_insert(Entry::Dir {
                meta: Meta::root(0o755),
                opaque: false,
            });
        }
    }

    /// Total bytes of file content.
    pub fn content_bytes(&self) -> usize {
        self.entries
            .values()
            .map(|e| match e {
                Entry::File { data, .. } => data.len(),
                _ => 0,
            })
            .sum()
    }
}

/// Split `a/b/c` into (`a/b`, `c`); a top-level name gives (``, name).
pub fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_form_turns_markers_into_files() {
        let mut l = Layer::default();
        l.entries.insert(
            "tmp".into(),
            Entry::Dir {
                meta: Meta::root(0o1777),
                opaque: true,
            },
        );
        l.entries.insert("etc/motd".into(), Entry::Whiteout);
        l.add_parents();
        let names: Vec<String> = l.portable().into_iter().map(|(p, _)| p).collect();
        assert_eq!(names, ["etc", "etc/.wh.motd", "tmp", "tmp/.wh..wh..opq"]);
    }
}
