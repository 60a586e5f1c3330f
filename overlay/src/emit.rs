//! Writing a built layer: a temporary directory `OUT/.NAME.tmp-*` receives the directory
//! form, the archives and the input hash (last); then two renames swap it in place of the
//! previous layer, which is kept if anything fails before. Clones' layers and shared
//! cluster layers ([`crate::cluster_layer`]) are written the same way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::builder::{BuildReport, LayerBuilder, Prepared};
use crate::cluster::CloneSpec;
use crate::error::BuildError;
use crate::layer::Layer;
use crate::tarball::{self, SharedTail};
use crate::template_set::SetEntry;
use crate::{cluster_layer, cpio, scratch};

/// What every clone's layer of one build shares: the cluster files rendered once, the
/// archive tails of each set stack, and the files written once and linked into each layer.
pub(crate) struct Shared<'a> {
    pub(crate) cluster_out: &'a HashMap<PathBuf, Arc<[u8]>>,
    pub(crate) tails: &'a HashMap<Vec<String>, SharedTail>,
    pub(crate) links: &'a crate::dir_output::Links,
}

impl LayerBuilder<'_> {
    /// Per plan without hooks, its cluster files tarred and deflated once (see `tarball`).
    pub(crate) fn shared_tails(
        &self,
        prep: &Prepared,
        cluster_out: &HashMap<PathBuf, Arc<[u8]>>,
    ) -> Result<HashMap<Vec<String>, SharedTail>, BuildError> {
        let mut tails = HashMap::new();
        if !self.outputs.tar_gz || self.shared_cluster {
            return Ok(tails);
        }
        for (key, plan) in &prep.plans {
            if !plan.hooks.is_empty() {
                continue;
            }
            let files: Vec<_> = plan
                .entries
                .iter()
                .filter_map(|(path, (_, e))| match e {
                    SetEntry::ClusterTemplate { meta, file } => cluster_out
                        .get(file)
                        .map(|d| (path.clone(), *meta, d.clone())),
                    _ => None,
                })
                .collect();
            if files.is_empty() {
                continue;
            }
            let tail = SharedTail::new(files)
                .map_err(|e| self.io("", "compress the cluster files", &self.out, e))?;
            tails.insert(key.clone(), tail);
        }
        Ok(tails)
    }

    pub(crate) fn build_one(
        &self,
        prep: &Prepared,
        shared: &Shared<'_>,
        clone: &CloneSpec,
        hash: &str,
    ) -> Result<(), BuildError> {
        let tmp = scratch::tmp_dir(&self.out, &clone.name);
        let result = self.write_tmp(prep, shared, clone, hash, &tmp);
        let result = result.and_then(|()| self.swap(&clone.name, &tmp));
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    fn write_tmp(
        &self,
        prep: &Prepared,
        shared: &Shared<'_>,
        clone: &CloneSpec,
        hash: &str,
        tmp: &Path,
    ) -> Result<(), BuildError> {
        let (cluster_out, links) = (shared.cluster_out, shared.links);
        let tail = shared.tails.get(&clone.layers);
        let name = &clone.name;
        std::fs::create_dir(tmp).map_err(|e| self.io(name, "create", tmp, e))?;
        let root = tmp.join("root");
        let plan_has_hooks = prep
            .plans
            .get(&clone.layers)
            .is_some_and(|p| !p.hooks.is_empty());
        let layer = if self.outputs.dir || plan_has_hooks {
            std::fs::create_dir(&root).map_err(|e| self.io(name, "create", &root, e))?;
            self.render_clone(prep, cluster_out, clone, Some(&root), Some(links))?
        } else {
            self.render_clone(prep, cluster_out, clone, None, None)?
        };
        if self.shared_cluster {
            if let Some(plan) = prep.plans.get(&clone.layers) {
                if let Some(cl) = cluster_layer::name_of(plan) {
                    let p = tmp.join("cluster-layer");
                    std::fs::write(&p, format!("{cl}\n"))
                        .map_err(|e| self.io(name, "write", &p, e))?;
                }
            }
        }
        self.write_archives(name, &layer, tail, hash, tmp)
    }

    /// Write the archives and the input hash of `layer` into `tmp`.
    pub(crate) fn write_archives(
        &self,
        name: &str,
        layer: &Layer,
        tail: Option<&SharedTail>,
        hash: &str,
        tmp: &Path,
    ) -> Result<(), BuildError> {
        if self.outputs.cpio {
            let p = tmp.join("layer.cpio");
            std::fs::write(&p, cpio::to_vec(layer)).map_err(|e| self.io(name, "write", &p, e))?;
        }
        if self.outputs.tar_gz {
            let p = tmp.join("layer.tar.gz");
            let tgz =
                tarball::to_vec_with(layer, tail).map_err(|e| self.io(name, "write", &p, e))?;
            std::fs::write(&p, tgz).map_err(|e| self.io(name, "write", &p, e))?;
        }
        let p = tmp.join("inputs.sha256");
        std::fs::write(&p, format!("{hash}\n")).map_err(|e| self.io(name, "write", &p, e))?;
        Ok(())
    }

    pub(crate) fn swap(&self, name: &str, tmp: &Path) -> Result<(), BuildError> {
        let dest = self.out.join(name);
        let old = scratch::old_dir(&self.out, name);
        let had_old = match std::fs::rename(&dest, &old) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(self.io(name, "move aside the previous layer", &dest, e)),
        };
        if let Err(e) = std::fs::rename(tmp, &dest) {
            if had_old {
                let _ = std::fs::rename(&old, &dest);
            }
            return Err(self.io(name, "move the new layer into place", &dest, e));
        }
        if had_old {
            std::fs::remove_dir_all(&old)
                .map_err(|e| self.io(name, "remove the previous layer", &old, e))?;
        }
        Ok(())
    }

    /// Build (when its inputs changed) the cluster layer of every plan in `prep`.
    pub(crate) fn build_cluster_layers(
        &self,
        prep: &Prepared,
        report: &mut BuildReport,
    ) -> Result<(), BuildError> {
        let mut rendered = None;
        let mut plans: Vec<_> = prep.plans.values().collect();
        plans.sort_by_key(|p| p.hash);
        plans.dedup_by_key(|p| p.hash);
        for plan in plans {
            let Some(name) = cluster_layer::name_of(plan) else {
                continue;
            };
            let hash = cluster_layer::inputs_hash(
                plan,
                prep.facts_digest,
                prep.identity.fingerprint(),
                &self.outputs,
            );
            let stamp = self.out.join(&name).join("inputs.sha256");
            if !self.force && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == hash) {
                continue;
            }
            if rendered.is_none() {
                rendered = Some(self.cluster_outputs(prep)?);
            }
            let layer = rendered
                .as_ref()
                .map(|r| cluster_layer::layer_of(plan, r))
                .unwrap_or_default();
            let tmp = scratch::tmp_dir(&self.out, &name);
            let result = (|| {
                std::fs::create_dir(&tmp).map_err(|e| self.io(&name, "create", &tmp, e))?;
                if self.outputs.dir {
                    let root = tmp.join("root");
                    std::fs::create_dir(&root).map_err(|e| self.io(&name, "create", &root, e))?;
                    crate::dir_output::write(&layer, &root)
                        .map_err(|e| self.io(&name, "write the layer directory", &root, e))?;
                }
                self.write_archives(&name, &layer, None, &hash, &tmp)?;
                self.swap(&name, &tmp)
            })();
            if let Err(e) = result {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
            report.cluster_layers.push(name);
        }
        Ok(())
    }
}
