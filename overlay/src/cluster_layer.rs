//! The shared cluster layer (opt-in, [`LayerBuilder::shared_cluster_layer`]): the outputs of
//! the cluster templates (`*.ctmpl`: `/etc/hosts`, ssh known_hosts, MPI hostfile) written once
//! per set stack as `OUT/_cluster-HASH/` in the same three forms as a clone's layer, instead of
//! once in every clone's layer. `_` cannot start a hostname, so the name never clashes.

use sha2::{Digest, Sha256};

use crate::builder::{BuildReport, LayerBuilder, Prepared, TMP_COUNTER};
use crate::error::BuildError;
use crate::layer::{Entry, Layer};
use crate::stack::Plan;
use crate::template_set::SetEntry;

/// Prefix of cluster layer directories.
pub const PREFIX: &str = "_cluster-";

/// The cluster layer of a plan, `None` when its sets have no cluster template.
pub fn name_of(plan: &Plan) -> Option<String> {
    let has = plan
        .entries
        .values()
        .any(|(_, e)| matches!(e, SetEntry::ClusterTemplate { .. }));
    has.then(|| format!("{PREFIX}{}", &hex::encode(plan.hash)[..12]))
}

impl LayerBuilder<'_> {
    /// Build (when its inputs changed) the cluster layer of every plan in `prep`.
    pub(crate) fn build_cluster_layers(
        &self,
        prep: &Prepared,
        report: &mut BuildReport,
    ) -> Result<(), BuildError> {
        let mut outputs = None;
        let mut plans: Vec<_> = prep.plans.values().collect();
        plans.sort_by_key(|p| p.hash);
        plans.dedup_by_key(|p| p.hash);
        for plan in plans {
            let Some(name) = name_of(plan) else { continue };
            let mut h = Sha256::new();
            h.update(b"napalm-overlay cluster layer v1");
            h.update(plan.hash);
            h.update(prep.facts_digest);
            h.update(prep.identity.fingerprint());
            h.update(format!("{:?}", self.outputs).as_bytes());
            let hash = hex::encode(h.finalize());
            let stamp = self.out.join(&name).join("inputs.sha256");
            if !self.force && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == hash) {
                continue;
            }
            if outputs.is_none() {
                outputs = Some(self.cluster_outputs(prep)?);
            }
            let files = outputs.as_ref().map(|o| (o, plan));
            let mut layer = Layer::default();
            if let Some((out, plan)) = files {
                for (path, (_, e)) in &plan.entries {
                    if let SetEntry::ClusterTemplate { meta, file } = e {
                        let data = out.get(file).cloned().unwrap_or_else(|| Vec::new().into());
                        layer.entries.insert(
                            path.clone(),
                            Entry::File {
                                meta: meta.to_owned(),
                                data,
                            },
                        );
                    }
                }
            }
            layer.add_parents();
            let n = TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = self
                .out
                .join(format!(".{name}.tmp-{}-{n}", crate::builder::pid()));
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
