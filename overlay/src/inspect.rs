//! Inspection: what a layer holds (`napalmctl clone render NAME`) and what the clone will see
//! differently from the server root (`napalmctl clone diff NAME [--root /]`).

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::Serialize;

use crate::layer::{Entry, Layer};

/// One line of `clone render`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Listed {
    /// Path in the clone (`/etc/hosts`).
    pub path: String,
    /// `dir`, `file`, `link`, `whiteout`, `opaque-dir`.
    pub kind: &'static str,
    /// Permission bits.
    pub mode: u32,
    /// Owner uid:gid.
    pub owner: (u32, u32),
    /// Size in bytes (files) or the link target.
    pub detail: String,
}

impl fmt::Display for Listed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<10} {:04o} {:>5}:{:<5} {:<40} {}",
            self.kind, self.mode, self.owner.0, self.owner.1, self.path, self.detail
        )
    }
}

/// List a layer's entries.
pub fn listing(layer: &Layer) -> Vec<Listed> {
    layer
        .entries
        .iter()
        .map(|(p, e)| {
            let path = format!("/{p}");
            match e {
                Entry::Dir { meta, opaque } => Listed {
                    path,
                    kind: if *opaque { "opaque-dir" } else { "dir" },
                    mode: meta.mode,
                    owner: (meta.uid, meta.gid),
                    detail: String::new(),
                },
                Entry::File { meta, data } => Listed {
                    path,
                    kind: "file",
                    mode: meta.mode,
                    owner: (meta.uid, meta.gid),
                    detail: format!("{} bytes", data.len()),
                },
                Entry::Symlink { meta, target } => Listed {
                    path,
                    kind: "link",
                    mode: 0o777,
                    owner: (meta.uid, meta.gid),
                    detail: format!("-> {target}"),
                },
                Entry::Whiteout => Listed {
                    path,
                    kind: "whiteout",
                    mode: 0,
                    owner: (0, 0),
                    detail: "removed from the server root".into(),
                },
            }
        })
        .collect()
}

/// How the clone's view differs from the server root at one path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Change {
    /// Not on the server; the layer adds it.
    Added(String),
    /// On the server with other content, type, target or mode.
    Modified(String),
    /// On the server; a whiteout removes it.
    Removed(String),
    /// On the server; hidden because a directory above it is opaque in the layer.
    Hidden(String),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added(p) => write!(f, "A /{p}"),
            Change::Modified(p) => write!(f, "M /{p}"),
            Change::Removed(p) => write!(f, "D /{p}"),
            Change::Hidden(p) => write!(f, "H /{p}"),
        }
    }
}

/// Compare `layer` with the server root `root`. Directories that exist on both sides are not
/// reported; entries under an opaque directory that the layer does not provide are `Hidden`.
pub fn diff(layer: &Layer, root: &Path) -> std::io::Result<Vec<Change>> {
    let mut out = Vec::new();
    for (p, e) in &layer.entries {
        let server = root.join(p);
        let md = std::fs::symlink_metadata(&server).ok();
        match (e, md) {
            (Entry::Whiteout, Some(_)) => out.push(Change::Removed(p.clone())),
            (Entry::Whiteout, None) => {}
            (_, None) => out.push(Change::Added(p.clone())),
            (Entry::Dir { opaque, .. }, Some(md)) => {
                if !md.is_dir() {
                    out.push(Change::Modified(p.clone()));
                } else if *opaque {
                    let mut hidden: Vec<String> = std::fs::read_dir(&server)?
                        .filter_map(|d| d.ok())
                        .map(|d| format!("{p}/{}", d.file_name().to_string_lossy()))
                        .filter(|h| !layer.entries.contains_key(h))
                        .collect();
                    hidden.sort();
                    out.extend(hidden.into_iter().map(Change::Hidden));
                }
            }
            (Entry::File { meta, data }, Some(md)) => {
                let same = md.is_file()
                    && md.len() == data.len() as u64
                    && md.permissions().mode() & 0o7777 == meta.mode
                    && std::fs::read(&server).is_ok_and(|d| d[..] == data[..]);
                if !same {
                    out.push(Change::Modified(p.clone()));
                }
            }
            (Entry::Symlink { target, .. }, Some(md)) => {
                let same = md.file_type().is_symlink()
                    && std::fs::read_link(&server).is_ok_and(|t| t.as_os_str() == target.as_str());
                if !same {
                    out.push(Change::Modified(p.clone()));
                }
            }
        }
    }
    Ok(out)
}
