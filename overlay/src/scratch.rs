//! Names of the scratch entries a build leaves in the output directory while it writes:
//! `.NAME.tmp-PID-N` (a layer being written), `.NAME.old-PID` (the previous layer during the
//! swap) and `FILE.tmp-PID` (a file being replaced). The process id and a counter keep
//! concurrent writers apart; `prune` recognises leftovers by these shapes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// This process's id, read once.
fn pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// A fresh directory name for writing layer `name`: `OUT/.NAME.tmp-PID-N`.
pub(crate) fn tmp_dir(out: &Path, name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    out.join(format!(".{name}.tmp-{}-{n}", pid()))
}

/// Where the previous layer `name` waits during a swap: `OUT/.NAME.old-PID`.
pub(crate) fn old_dir(out: &Path, name: &str) -> PathBuf {
    out.join(format!(".{name}.old-{}", pid()))
}

/// Where file `file` is written before it is renamed over: `OUT/FILE.tmp-PID`.
pub(crate) fn tmp_file(out: &Path, file: &str) -> PathBuf {
    out.join(format!("{file}.tmp-{}", pid()))
}

/// Whether an output directory entry is a leftover of an interrupted build.
pub(crate) fn is_leftover(entry_name: &str) -> bool {
    entry_name.starts_with('.') && (entry_name.contains(".tmp-") || entry_name.contains(".old-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_are_fresh_and_recognised_as_leftovers() {
        let out = Path::new("/out");
        let (a, b) = (tmp_dir(out, "c1"), tmp_dir(out, "c1"));
        assert_ne!(a, b);
        for p in [a, b, old_dir(out, "c1")] {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            assert!(is_leftover(name), "{name}");
        }
        assert!(!is_leftover("c1"));
        assert!(!is_leftover(".napalm-manifest"));
    }
}
