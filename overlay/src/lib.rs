//! # napalm-overlay — the Clone engine (thesis 3.1, 3.5.1, annex IV)
//!
//! Owns: loading `clones.conf` (values cascading global → group → host, with provenance),
//! template sets (the thesis's GCDSE: rendered `*.tmpl`, copied files, whiteouts, stacking),
//! and building each clone's differentiation layer in its output forms (directory in the
//! portable whiteout convention, newc cpio segment, tar.gz) plus cluster-wide files
//! (`/etc/hosts`, MPI hostfile, ssh known_hosts).
//!
//! Must not touch: libvirt, the network, mounts, or anything outside the output directory
//! it is given. The coordinator calls it; `napalmctl clone …` exposes it.
//!
//! ## Map
//! - [`config`]: `clones.conf` → [`Config`] (or built from code); [`cluster`]: the cascade
//!   resolved into a [`Cluster`] of [`CloneSpec`]s; [`provenance`]: where each value came from;
//!   [`range`]: `clone[01-24]` and hostname checks.
//! - [`template_set`]: one set on disk → [`TemplateSet`]; [`stack`]: sets stacked in order with
//!   [`whiteout`] semantics; [`render`]: handlebars (strict) per clone; [`identity`]: per-clone
//!   machine-id and ssh host key; [`hooks`]: `setup.d/` programs.
//! - [`layer`]: the in-memory layer tree; [`cpio`], [`tarball`], [`dir_output`]: its forms;
//!   [`builder`]: [`LayerBuilder`] (hash, incremental, parallel, atomic);
//!   [`cluster_files`]: hosts / MPI / known_hosts / json / yaml / table, rendered once;
//!   [`live`]: the same files for a live deployment's registry records (coordinator
//!   endpoint and `napalmctl clones --deployment`);
//!   [`inspect`]: `clone render` and `clone diff`.
//!
//! ## What `napalmctl` calls (the CLI stays a thin wrapper; see `examples/clonectl.rs`)
//! | command | library call |
//! |---|---|
//! | `clone show NAME [--explain]` | [`Config::load`] → [`Config::resolve`] → [`Cluster::get`] → [`CloneSpec::explain`] |
//! | `clone render NAME` | [`LayerBuilder::render`] → [`inspect::listing`] |
//! | `clone diff NAME [--root /]` | [`LayerBuilder::render`] → [`inspect::diff`] |
//! | `clone build [--all\|NAME…] [--timings] [--force]` | [`LayerBuilder::build_all`] / [`LayerBuilder::build`] → [`BuildReport`] (`prepare`, `write`) |
//! | `clones --format F` | `F.parse::<`[`Format`]`>()` → [`ClusterFiles::render`] |
//!
//! A deployment without a clones.conf builds its [`Config`] from code: [`Config::new`],
//! [`config::Scope::set`], [`config::Scope::group`], [`config::Scope::add_hosts`].
//!
//! ## Security notes
//! Each layer holds that clone's private ssh host key, derived from the cluster secret
//! ([`Identity`]). By default the secret is `OUT/.napalm-identity` (mode 0600): if `OUT` is
//! NFS-exported (as `/var/state/systems` is in the thesis), pass an [`Identity`] kept
//! elsewhere (the coordinator's state directory) with [`LayerBuilder::identity`], and export
//! each clone's directory to that clone only.
//!
//! ## Typical use
//! ```no_run
//! use napalm_overlay::{Config, LayerBuilder, SetLibrary};
//! let cluster = Config::load("/etc/clones.conf")?.resolve()?;
//! let sets = SetLibrary::new(vec![napalm_overlay::default_sets_dir()]);
//! let report = LayerBuilder::new(&cluster, &sets, "/var/state/systems").build_all()?;
//! println!("{} built, {} unchanged", report.built.len(), report.unchanged.len());
//! # Ok::<(), napalm_overlay::BuildError>(())
//! ```

pub mod builder;
pub mod cluster;
pub mod cluster_files;
pub mod cluster_layer;
pub mod config;
pub mod cpio;
pub mod dir_output;
mod emit;
pub mod error;
pub mod hooks;
pub mod identity;
pub mod inspect;
pub mod layer;
pub mod limits;
pub mod live;
pub mod manifest;
pub mod provenance;
pub mod range;
pub mod render;
mod scratch;
pub mod stack;
pub mod tarball;
pub mod template_set;
pub mod whiteout;
mod yaml;

pub use builder::{BuildReport, LayerBuilder, Outputs};
pub use cluster::{CloneSpec, Cluster};
pub use cluster_files::{ClusterFiles, Format};
pub use config::Config;
pub use error::{BuildError, ConfigError, TemplateError};
pub use identity::Identity;
pub use layer::Layer;
pub use limits::Limits;
pub use provenance::{Explanation, Origin, Resolved};
pub use template_set::{SetLibrary, TemplateSet};

/// The directory of the template sets shipped with this crate (`base`, `ganglia`, `mpi`).
pub fn default_sets_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sets")
}
