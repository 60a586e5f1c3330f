//! `OUT/.napalm-manifest`: a cache of every layer's `inputs.sha256`, so a no-change rebuild
//! reads one file and one directory listing instead of one stamp per clone. The per-clone
//! stamps stay the truth: a clone the manifest does not vouch for (absent, other hash, no
//! directory) is checked against its stamp. One build at a time per output directory.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// File name of the manifest in the output directory.
pub const FILE: &str = ".napalm-manifest";

#[derive(Debug, Default)]
pub(crate) struct Manifest {
    entries: BTreeMap<String, String>,
    present: HashSet<String>,
}

impl Manifest {
    /// Read the manifest and list the output directory; anything unreadable counts as empty.
    pub(crate) fn load(out: &Path) -> Manifest {
        let entries = std::fs::read_to_string(out.join(FILE))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(hash, name)| (name.to_string(), hash.to_string()))
            .collect();
        let present = std::fs::read_dir(out)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        Manifest { entries, present }
    }

    /// Whether the manifest vouches that `name`'s layer was built from `hash`.
    pub(crate) fn vouches(&self, name: &str, hash: &str) -> bool {
        self.present.contains(name) && self.entries.get(name).is_some_and(|h| h == hash)
    }

    /// Write the manifest: previous entries whose directory still exists, updated with
    /// `current` (clones whose layer now holds that hash). Temp file, then rename.
    pub(crate) fn store<'a>(
        &'a self,
        out: &Path,
        current: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> std::io::Result<()> {
        let mut entries: BTreeMap<&str, &str> = self
            .entries
            .iter()
            .filter(|(n, _)| self.present.contains(n.as_str()))
            .map(|(n, h)| (n.as_str(), h.as_str()))
            .collect();
        entries.extend(current);
        let mut text = String::with_capacity(entries.len() * 80);
        for (name, hash) in entries {
            text.push_str(hash);
            text.push(' ');
            text.push_str(name);
            text.push('\n');
        }
        let tmp = crate::scratch::tmp_file(out, FILE);
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, out.join(FILE))
    }
}
