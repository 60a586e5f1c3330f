//! Limits that turn absurd input into a clear refusal instead of exhausted memory or disk.

use std::time::Duration;

/// Every limit the engine enforces. `Limits::default()` suits clusters up to 100,000 clones.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest clones.conf accepted, in bytes.
    pub max_config_bytes: u64,
    /// YAML nodes after alias expansion (alias-bomb guard).
    pub max_yaml_nodes: usize,
    /// YAML nesting depth.
    pub max_yaml_depth: usize,
    /// Clones in one cluster (and names one range may expand to).
    pub max_clones: usize,
    /// Largest single file in a template set, in bytes.
    pub max_file_bytes: u64,
    /// Largest template set in all, in bytes.
    pub max_set_bytes: u64,
    /// Most entries in one template set.
    pub max_set_entries: usize,
    /// Largest rendered template output, in bytes.
    pub max_render_bytes: usize,
    /// How long one `setup.d/` hook may run.
    pub hook_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_config_bytes: 8 << 20,
            max_yaml_nodes: 1_000_000,
            max_yaml_depth: 64,
            max_clones: 100_000,
            max_file_bytes: 64 << 20,
            max_set_bytes: 512 << 20,
            max_set_entries: 100_000,
            max_render_bytes: 16 << 20,
            hook_timeout: Duration::from_secs(30),
        }
    }
}
