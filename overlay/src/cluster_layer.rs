//! The shared cluster layer (opt-in, [`crate::LayerBuilder::shared_cluster_layer`]): the
//! outputs of the cluster templates (`*.ctmpl`: `/etc/hosts`, ssh known_hosts, MPI hostfile)
//! written once per set stack as `OUT/_cluster-HASH/` in the same three forms as a clone's
//! layer, instead of once in every clone's layer. `_` cannot start a hostname, so the name
//! never clashes.
//!
//! This module says what the layer is — its name, the hash of its inputs, its content —
//! and writes nothing; the builder writes it like a clone's layer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

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

/// The hash of everything the cluster layer of `plan` is made from (its stamp): the sets,
/// the cluster facts, the identity and the output forms.
pub(crate) fn inputs_hash(
    plan: &Plan,
    facts_digest: [u8; 32],
    identity_fingerprint: [u8; 32],
    outputs: &impl std::fmt::Debug,
) -> String {
    let mut h = Sha256::new();
    h.update(b"napalm-overlay cluster layer v1");
    h.update(plan.hash);
    h.update(facts_digest);
    h.update(identity_fingerprint);
    h.update(format!("{outputs:?}").as_bytes());
    hex::encode(h.finalize())
}

/// The layer holding `plan`'s cluster templates, each with its rendered output from
/// `rendered` (empty when absent), parents included.
pub(crate) fn layer_of(plan: &Plan, rendered: &HashMap<PathBuf, Arc<[u8]>>) -> Layer {
    let mut layer = Layer::default();
    for (path, (_, e)) in &plan.entries {
        if let SetEntry::ClusterTemplate { meta, file } = e {
            let data = rendered
                .get(file)
                .cloned()
                .unwrap_or_else(|| Vec::new().into());
            layer.entries.insert(
                path.clone(),
                Entry::File {
                    meta: meta.to_owned(),
                    data,
                },
            );
        }
    }
    layer.add_parents();
    layer
}
