//! Building layers: many clones in parallel (rayon), each only when its inputs changed, each
//! replaced atomically so a failed build keeps the previous good layer.
//!
//! Output of clone NAME under the output directory:
//! ```text
//! NAME/root/          directory form, portable whiteouts (NFS-export this)
//! NAME/layer.cpio     reproducible newc segment (append to an initramfs)
//! NAME/layer.tar.gz   reproducible tarball (for `unpack=`)
//! NAME/inputs.sha256  content hash over every input (written last; the rebuild check)
//! NAME/cluster-layer  name of its shared cluster layer (only with `shared_cluster_layer`)
//! _cluster-HASH/      the shared cluster layer, same three forms (see `cluster_layer`)
//! .napalm-identity    cluster secret for machine-ids and ssh host keys (mode 0600)
//! .napalm-manifest    cache of every `inputs.sha256` (see `manifest`)
//! ```
//! A clone is rebuilt when the hash of its inputs differs from `inputs.sha256`: engine
//! version, the content of its stacked sets (files, modes, owners, hooks), its resolved
//! values, the identity fingerprint and, when its sets render cluster templates or list
//! `clones`, the cluster facts (names, indexes, groups, addresses, slots, server) — except
//! for cluster templates of a clone with a `register_url` ([`LIVE_CLUSTER_FILES_KEY`]),
//! whose cluster files the coordinator keeps current while it runs.
//! A new layer is written to `.NAME.tmp-*`, then swapped in with two renames (see `emit`);
//! between them the clone's directory is briefly absent, and a crash there leaves the
//! previous layer as `.NAME.old-*` (an `inputs.sha256`-less clone is rebuilt next time).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::cluster::{CloneSpec, Cluster};

/// The value whose presence makes a clone's cluster templates a boot-time seed only (its
/// cluster files then come live from the coordinator it registers with): their output
/// does not enter the clone's input hash.
pub const LIVE_CLUSTER_FILES_KEY: &str = "register_url";
use crate::cluster_files::ClusterFiles;
use crate::error::{BuildError, TemplateError};
use crate::identity::Identity;
use crate::layer::Layer;
use crate::manifest::Manifest;
use crate::render::{self, Facts, Renderer};
use crate::stack::{self, Plan};
use crate::template_set::{SetEntry, SetLibrary};
use crate::{dir_output, hooks};

/// Bumped when the output format changes, so every layer is rebuilt.
const FORMAT_VERSION: &str = "napalm-overlay layer v1";

/// Where the outputs of one clone live.
#[derive(Clone, Debug)]
pub struct ClonePaths {
    /// `NAME/`.
    pub dir: PathBuf,
    /// `NAME/root/`.
    pub root: PathBuf,
    /// `NAME/layer.cpio`.
    pub cpio: PathBuf,
    /// `NAME/layer.tar.gz`.
    pub tar_gz: PathBuf,
    /// `NAME/inputs.sha256`.
    pub hash: PathBuf,
}

/// One clone's rendered layer (or why it failed), from [`LayerBuilder::render_all`].
pub type Rendered = (String, Result<Layer, BuildError>);

/// Which forms a build writes. All three by default. The directory form is written anyway
/// for clones whose sets have `setup.d/` hooks (hooks work on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outputs {
    /// `NAME/root/`.
    pub dir: bool,
    /// `NAME/layer.cpio`.
    pub cpio: bool,
    /// `NAME/layer.tar.gz`.
    pub tar_gz: bool,
}

impl Default for Outputs {
    fn default() -> Self {
        Outputs {
            dir: true,
            cpio: true,
            tar_gz: true,
        }
    }
}

/// What a build did, with timings (`--timings`).
#[derive(Debug, Default)]
pub struct BuildReport {
    /// Clones whose layer was (re)built.
    pub built: Vec<String>,
    /// Clones whose inputs did not change.
    pub unchanged: Vec<String>,
    /// Shared cluster layers (re)built (see [`LayerBuilder::shared_cluster_layer`]).
    pub cluster_layers: Vec<String>,
    /// Clones whose build failed (their previous layer is untouched).
    pub failed: Vec<(String, BuildError)>,
    /// Loading sets, compiling templates, hashing inputs.
    pub prepare: Duration,
    /// Rendering, hooks, writing and swapping layers.
    pub write: Duration,
}

impl BuildReport {
    /// `Err` with the first failure if any clone failed.
    pub fn into_result(mut self) -> Result<BuildReport, BuildError> {
        if self.failed.is_empty() {
            Ok(self)
        } else {
            Err(self.failed.remove(0).1)
        }
    }
}

/// Builds differentiation layers of a cluster into an output directory.
#[derive(Debug)]
pub struct LayerBuilder<'a> {
    pub(crate) cluster: &'a Cluster,
    pub(crate) sets: &'a SetLibrary,
    pub(crate) out: PathBuf,
    identity: Option<Identity>,
    pub(crate) force: bool,
    threads: Option<usize>,
    pub(crate) outputs: Outputs,
    pub(crate) shared_cluster: bool,
}

pub(crate) struct Prepared {
    pub(crate) identity: Identity,
    pub(crate) plans: HashMap<Vec<String>, Arc<Plan>>,
    pub(crate) renderer: Renderer,
    pub(crate) facts: Facts,
    pub(crate) facts_digest: [u8; 32],
}

impl<'a> LayerBuilder<'a> {
    /// A builder writing under `out` (created if absent).
    pub fn new(cluster: &'a Cluster, sets: &'a SetLibrary, out: impl Into<PathBuf>) -> Self {
        LayerBuilder {
            cluster,
            sets,
            out: out.into(),
            identity: None,
            force: false,
            threads: None,
            outputs: Outputs::default(),
            shared_cluster: false,
        }
    }

    /// Use this cluster identity instead of `OUT/.napalm-identity`.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Rebuild even when inputs did not change.
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Use `n` worker threads instead of rayon's global pool.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n.max(1));
        self
    }

    /// Put the cluster templates' outputs (`/etc/hosts`, known_hosts, MPI hostfile) in one
    /// shared cluster layer per set stack (`OUT/_cluster-HASH/`, named in each clone's
    /// `NAME/cluster-layer`) instead of in every clone's layer. They grow with the cluster, so
    /// copying them into each layer costs O(clones²) bytes; a clone then boots with the
    /// cluster layer under its own (`root=…;nfs:S:/…/_cluster-HASH:ro;nfs:S:/…/NAME:ro;…`).
    /// Off by default: with it, the clone's own layer alone lacks those files.
    pub fn shared_cluster_layer(mut self, shared: bool) -> Self {
        self.shared_cluster = shared;
        self
    }

    /// Write only these forms.
    pub fn outputs(mut self, outputs: Outputs) -> Self {
        self.outputs = outputs;
        self
    }

    /// Output paths of clone `name`.
    pub fn paths(&self, name: &str) -> ClonePaths {
        let dir = self.out.join(name);
        ClonePaths {
            root: dir.join("root"),
            cpio: dir.join("layer.cpio"),
            tar_gz: dir.join("layer.tar.gz"),
            hash: dir.join("inputs.sha256"),
            dir,
        }
    }

    /// The cluster identity this builder uses (loading or creating `OUT/.napalm-identity`).
    pub fn load_identity(&self) -> Result<Identity, BuildError> {
        if let Some(id) = &self.identity {
            return Ok(id.clone());
        }
        let path = self.out.join(".napalm-identity");
        Identity::load_or_create(&path).map_err(|source| BuildError::Io {
            clone: String::new(),
            action: "read or create the cluster identity",
            path,
            source,
        })
    }

    /// Build every clone of the cluster.
    pub fn build_all(&self) -> Result<BuildReport, BuildError> {
        let all: Vec<&CloneSpec> = self.cluster.clones.iter().collect();
        self.run(|| self.build_clones(&all))
    }

    /// Build the named clones.
    pub fn build(&self, names: &[&str]) -> Result<BuildReport, BuildError> {
        let clones = names
            .iter()
            .map(|n| {
                self.cluster
                    .get(n)
                    .ok_or_else(|| BuildError::UnknownClone(n.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.run(|| self.build_clones(&clones))
    }

    /// Remove layers of clones no longer in the cluster (directories holding an
    /// `inputs.sha256`) and leftovers of interrupted builds (`.NAME.tmp-*`, `.NAME.old-*`).
    /// Shared cluster layers (`_cluster-*`) are kept.
    /// Returns what was removed.
    pub fn prune(&self) -> Result<Vec<String>, BuildError> {
        let mut removed = Vec::new();
        let entries = match std::fs::read_dir(&self.out) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(self.io("", "list", &self.out, e)),
        };
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let leftover = crate::scratch::is_leftover(&name);
            let stale = !name.starts_with('.')
                && !name.starts_with(crate::cluster_layer::PREFIX)
                && self.cluster.get(&name).is_none()
                && path.join("inputs.sha256").is_file();
            if leftover || stale {
                let removed_one = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed_one.map_err(|e| self.io(&name, "remove", &path, e))?;
                tracing::info!(path = %path.display(), "pruned");
                removed.push(name);
            }
        }
        removed.sort();
        Ok(removed)
    }

    /// Render clone `name`'s layer in memory without writing the output directory (hooks, if
    /// any, run in a temporary directory). For `napalmctl clone render` and `clone diff`.
    pub fn render(&self, name: &str) -> Result<Layer, BuildError> {
        let clone = self
            .cluster
            .get(name)
            .ok_or_else(|| BuildError::UnknownClone(name.to_string()))?;
        let prep = self.prepare(&[clone])?;
        let cluster_out = self.cluster_outputs(&prep)?;
        self.render_clone(&prep, &cluster_out, clone, None, None)
    }

    /// Render every clone's layer in memory, in parallel, writing nothing (hooks, if any, run
    /// in temporary directories). For `clone render --all` and for measuring the engine alone.
    pub fn render_all(&self) -> Result<Vec<Rendered>, BuildError> {
        let all: Vec<&CloneSpec> = self.cluster.clones.iter().collect();
        self.run(|| {
            let prep = self.prepare(&all)?;
            let cluster_out = self.cluster_outputs(&prep)?;
            Ok(all
                .par_iter()
                .map(|c| {
                    let r = self.render_clone(&prep, &cluster_out, c, None, None);
                    (c.name.clone(), r)
                })
                .collect())
        })
    }

    fn run<T: Send>(
        &self,
        f: impl FnOnce() -> Result<T, BuildError> + Send,
    ) -> Result<T, BuildError> {
        match self.threads {
            Some(n) => rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| BuildError::Io {
                    clone: String::new(),
                    action: "start worker threads",
                    path: self.out.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?
                .install(f),
            None => f(),
        }
    }

    pub(crate) fn io(
        &self,
        clone: &str,
        action: &'static str,
        path: &Path,
        source: std::io::Error,
    ) -> BuildError {
        BuildError::Io {
            clone: clone.to_string(),
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    fn prepare(&self, clones: &[&CloneSpec]) -> Result<Prepared, BuildError> {
        let identity = self.load_identity()?;
        let mut plans: HashMap<Vec<String>, Arc<Plan>> = HashMap::new();
        let mut all_sets = Vec::new();
        for c in clones {
            if plans.contains_key(&c.layers) {
                continue;
            }
            let mut sets = Vec::with_capacity(c.layers.len());
            for name in &c.layers {
                let set = self
                    .sets
                    .get(name)?
                    .ok_or_else(|| TemplateError::UnknownSet {
                        name: name.clone(),
                        clone: c.name.clone(),
                        searched: self.sets.searched(),
                    })?;
                if !all_sets.iter().any(|s: &Arc<_>| Arc::ptr_eq(s, &set)) {
                    all_sets.push(set.clone());
                }
                sets.push(set);
            }
            plans.insert(c.layers.clone(), Arc::new(stack::stack(&sets)));
        }
        let renderer = Renderer::new(&all_sets, self.sets.limits().max_render_bytes)?;
        let facts = Facts::new(self.cluster);
        let mut h = Sha256::new();
        h.update(format!("{:?}\0", self.cluster.server).as_bytes());
        for c in &self.cluster.clones {
            let slots = c.values.get("slots").map(|r| r.value.to_string());
            h.update(
                format!(
                    "{}\0{}\0{:?}\0{:?}\0{:?}\n",
                    c.name, c.index, c.group, c.address, slots
                )
                .as_bytes(),
            );
        }
        Ok(Prepared {
            identity,
            plans,
            renderer,
            facts,
            facts_digest: h.finalize().into(),
        })
    }

    fn input_hash(&self, prep: &Prepared, plan: &Plan, clone: &CloneSpec) -> String {
        let mut h = Sha256::new();
        h.update(FORMAT_VERSION.as_bytes());
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        h.update(plan.hash);
        h.update(prep.identity.fingerprint());
        // A clone that reports to a coordinator (`register_url`) gets its cluster files
        // live from it (the base set's watcher, see `crate::live`): what its cluster
        // templates rendered is only the boot-time seed, so the other clones coming and
        // going does not make its layer stale — a scale must not replace running clones.
        let live = clone.values.contains_key(LIVE_CLUSTER_FILES_KEY);
        let cluster_wide = plan.uses_clones
            || (!self.shared_cluster
                && !live
                && plan
                    .entries
                    .values()
                    .any(|(_, e)| matches!(e, SetEntry::ClusterTemplate { .. })));
        if cluster_wide {
            h.update(prep.facts_digest);
        }
        h.update(clone.name.as_bytes());
        h.update(serde_json::to_vec(&clone.values_json()).unwrap_or_default());
        h.update(serde_json::to_vec(&clone.layers).unwrap_or_default());
        h.update(format!("{:?} shared={}", self.outputs, self.shared_cluster).as_bytes());
        hex::encode(h.finalize())
    }

    pub(crate) fn cluster_outputs(
        &self,
        prep: &Prepared,
    ) -> Result<HashMap<PathBuf, Arc<[u8]>>, BuildError> {
        let plans: Vec<Arc<Plan>> = prep.plans.values().cloned().collect();
        let needs = plans.iter().any(|p| {
            p.entries
                .values()
                .any(|(_, e)| matches!(e, SetEntry::ClusterTemplate { .. }))
        });
        if !needs {
            return Ok(HashMap::new());
        }
        let files = ClusterFiles::new(self.cluster, &prep.identity).template_value();
        Ok(render::render_cluster_templates(
            &prep.renderer,
            &plans,
            &prep.facts,
            files,
        )?)
    }

    /// Render `clone`; with `root`, also write the directory form there, linking the files
    /// it shares with the build's other layers from `links` (unless hooks will edit it).
    /// Hooks run on `root` (or on a temporary directory when there is none) and the result
    /// is read back.
    pub(crate) fn render_clone(
        &self,
        prep: &Prepared,
        cluster_out: &HashMap<PathBuf, Arc<[u8]>>,
        clone: &CloneSpec,
        root: Option<&Path>,
        links: Option<&dir_output::Links>,
    ) -> Result<Layer, BuildError> {
        let plan = prep
            .plans
            .get(&clone.layers)
            .ok_or_else(|| BuildError::UnknownClone(clone.name.clone()))?;
        let ident = prep.identity.for_clone(&clone.name);
        let ctx = render::clone_context(clone, &prep.facts, &ident, plan.uses_clones);
        let stdin = if plan.hooks.is_empty() {
            Vec::new()
        } else {
            serde_json::to_vec(&ctx).unwrap_or_default()
        };
        let layer = render::render_layer(
            plan,
            &prep.renderer,
            ctx,
            cluster_out,
            !self.shared_cluster,
            &clone.name,
        )?;
        let write = |layer: &Layer, dir: &Path, links| {
            dir_output::write_linked(layer, dir, links)
                .map_err(|e| self.io(&clone.name, "write the layer directory", dir, e))
        };
        if plan.hooks.is_empty() {
            if let Some(root) = root {
                write(&layer, root, links)?;
            }
            return Ok(layer);
        }
        let tmp;
        let dir = match root {
            Some(r) => r,
            None => {
                tmp = tempfile::tempdir().map_err(|e| {
                    self.io(
                        &clone.name,
                        "create a temporary directory",
                        &std::env::temp_dir(),
                        e,
                    )
                })?;
                tmp.path()
            }
        };
        // Hooks edit files in place: this layer's are its own.
        write(&layer, dir, None)?;
        let timeout = self.sets.limits().hook_timeout;
        for hook in &plan.hooks {
            hooks::run(hook, &clone.name, &stdin, dir, timeout)?;
        }
        let mut layer = dir_output::read(dir)
            .map_err(|e| self.io(&clone.name, "read back the layer after hooks", dir, e))?;
        layer.add_parents();
        Ok(layer)
    }

    fn build_clones(&self, clones: &[&CloneSpec]) -> Result<BuildReport, BuildError> {
        let start = Instant::now();
        std::fs::create_dir_all(&self.out)
            .map_err(|e| self.io("", "create the output directory", &self.out, e))?;
        let prep = self.prepare(clones)?;
        let manifest = Manifest::load(&self.out);
        let stamps_read = AtomicUsize::new(0);
        let checked: Vec<(&CloneSpec, String, bool)> = clones
            .par_iter()
            .map(|c| {
                let plan = &prep.plans[&c.layers];
                let hash = self.input_hash(&prep, plan, c);
                let same = !self.force
                    && (manifest.vouches(&c.name, &hash) || {
                        stamps_read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        std::fs::read_to_string(self.paths(&c.name).hash)
                            .is_ok_and(|old| old.trim() == hash)
                    });
                (*c, hash, same)
            })
            .collect();
        let mut report = BuildReport {
            prepare: start.elapsed(),
            ..BuildReport::default()
        };
        if self.shared_cluster {
            self.build_cluster_layers(&prep, &mut report)?;
        }
        let todo: Vec<&(&CloneSpec, String, bool)> = checked.iter().filter(|c| !c.2).collect();
        report.unchanged = checked
            .iter()
            .filter(|c| c.2)
            .map(|c| c.0.name.clone())
            .collect();
        let store = |report: &BuildReport| {
            let now_built: HashSet<&str> = report
                .built
                .iter()
                .chain(&report.unchanged)
                .map(String::as_str)
                .collect();
            let current = checked
                .iter()
                .filter(|c| now_built.contains(c.0.name.as_str()))
                .map(|c| (c.0.name.as_str(), c.1.as_str()));
            if let Err(e) = manifest.store(&self.out, current) {
                tracing::warn!(error = %e, "cannot write the build manifest; next check reads stamps");
            }
        };
        if todo.is_empty() {
            if stamps_read.into_inner() > 0 {
                store(&report);
            }
            return Ok(report);
        }
        let write_start = Instant::now();
        let cluster_out = self.cluster_outputs(&prep)?;
        let tails = self.shared_tails(&prep, &cluster_out)?;
        let links = dir_output::Links::new(crate::scratch::tmp_dir(&self.out, "links"));
        let shared = crate::emit::Shared {
            cluster_out: &cluster_out,
            tails: &tails,
            links: &links,
        };
        let results: Vec<(String, Result<(), BuildError>)> = todo
            .par_iter()
            .map(|(c, hash, _)| (c.name.clone(), self.build_one(&prep, &shared, c, hash)))
            .collect();
        drop(links);
        for (name, r) in results {
            match r {
                Ok(()) => report.built.push(name),
                Err(e) => {
                    tracing::warn!(clone = %name, error = %e, "layer build failed; previous layer kept");
                    report.failed.push((name, e));
                }
            }
        }
        store(&report);
        report.write = write_start.elapsed();
        tracing::info!(
            built = report.built.len(),
            unchanged = report.unchanged.len(),
            failed = report.failed.len(),
            "layers built"
        );
        Ok(report)
    }
}
