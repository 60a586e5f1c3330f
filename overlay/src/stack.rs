//! Stacking template sets (the union idea applied to templates, thesis 3.1).
//!
//! Sets apply left to right (`layers: [base, ssh, mpi]`): a later set's entry replaces an
//! earlier set's entry at the same path; a later `.wh.NAME` removes NAME (and what is under
//! it) from the earlier sets and keeps the whiteout for the server root; a later opaque
//! directory drops everything the earlier sets put under it. A directory laid over an
//! earlier whiteout becomes opaque, as overlayfs does for rmdir + mkdir.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::template_set::{SetEntry, TemplateSet};

/// The stacked result for one list of sets; shared by every clone with that list.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The sets, in stacking order.
    pub sets: Vec<Arc<TemplateSet>>,
    /// Output path → (name of the set that provided it, entry).
    pub entries: BTreeMap<String, (String, SetEntry)>,
    /// Hooks of every set, in set order then name order.
    pub hooks: Vec<PathBuf>,
    /// Hash of the sets' hashes, in order.
    pub hash: [u8; 32],
    /// Whether a per-clone template mentions `clones` (then it gets the full clone list).
    pub uses_clones: bool,
}

fn remove_below(entries: &mut BTreeMap<String, (String, SetEntry)>, path: &str) {
    let prefix = format!("{path}/");
    let doomed: Vec<String> = entries
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        entries.remove(&k);
    }
}

/// Whether a template refers to `clones` inside a `{{…}}` expression (then every clone's
/// context must carry the whole clone list, which costs O(clones) per clone).
pub fn mentions_clones(source: &str) -> bool {
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}").unwrap_or(after.len());
        if after[..end]
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|t| t == "clones")
        {
            return true;
        }
        rest = &after[end..];
    }
    false
}

/// Stack `sets` in order.
pub fn stack(sets: &[Arc<TemplateSet>]) -> Plan {
    let mut entries: BTreeMap<String, (String, SetEntry)> = BTreeMap::new();
    let mut hooks = Vec::new();
    let mut hasher = Sha256::new();
    let mut uses_clones = false;
    for set in sets {
        hasher.update(set.hash);
        hooks.extend(set.hooks.iter().cloned());
        for (path, entry) in &set.entries {
            let mut entry = entry.clone();
            match &mut entry {
                SetEntry::Whiteout => {
                    entries.remove(path);
                    remove_below(&mut entries, path);
                }
                SetEntry::Dir { opaque, .. } => {
                    // Only this set's own opaque marker hides what earlier sets put below.
                    if *opaque {
                        remove_below(&mut entries, path);
                    }
                    match entries.get(path) {
                        Some((_, SetEntry::Whiteout)) => *opaque = true,
                        Some((_, SetEntry::Dir { opaque: was, .. })) => *opaque |= *was,
                        Some(_) => {}
                        None => {}
                    }
                }
                SetEntry::Template { file, .. } => {
                    uses_clones |= set.sources.get(file).is_some_and(|s| mentions_clones(s));
                    remove_below(&mut entries, path);
                }
                _ => remove_below(&mut entries, path),
            }
            entries.insert(path.clone(), (set.name.clone(), entry));
        }
    }
    Plan {
        sets: sets.to_vec(),
        entries,
        hooks,
        hash: hasher.finalize().into(),
        uses_clones,
    }
}

#[cfg(test)]
mod tests {
    use super::mentions_clones;

    #[test]
    fn clone_list_detection() {
        assert!(mentions_clones("{{#each clones}}{{name}}{{/each}}"));
        assert!(mentions_clones("x {{ ../clones.[0].name }}"));
        assert!(!mentions_clones("no clones.conf here {{name}}"));
        assert!(!mentions_clones("{{clones_count}}"));
    }
}
