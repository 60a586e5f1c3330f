//! Building what each clone boots before it is shipped: its differentiation layer (and
//! initramfs segment) from the deployment's template sets, and the NFS exports of its
//! layer and state.

use std::collections::HashMap;
use std::sync::Arc;

use napalm_proto::v1::{Clone, CloneMode};
use serde_json::json;

use super::Run;
use crate::deploy::addresses::assigned;
use crate::deploy::artifacts::{BuiltLayer, CloneInput, Declared};
use crate::deploy::nfs::{layers_over_nfs, sync_exports};
use crate::deploy::DeployError;

/// Per clone: its built layer, or why it could not be built or exported.
pub(super) type Built = HashMap<String, Result<BuiltLayer, DeployError>>;

impl Run {
    /// Builds the layers (and, without NFS layers, the images) of `clones`; `staged`:
    /// beside the exported layers, only to learn their hashes (see [`Artifacts::build`]).
    ///
    /// [`Artifacts::build`]: crate::deploy::artifacts::Artifacts::build
    pub(super) async fn build(&self, clones: &[Clone], staged: bool) -> Built {
        let cfg = &self.inner.cfg;
        let inputs: Vec<CloneInput> = clones
            .iter()
            .map(|c| CloneInput {
                name: c.name.clone(),
                values: [
                    ("clone_index".into(), json!(c.index)),
                    ("mac".into(), json!(c.mac)),
                    ("interface".into(), json!("eth0")),
                    // The URL carries no secret; the token goes in a header (the base
                    // set writes it to a root-only file).
                    (
                        "register_url".into(),
                        json!(format!("{}/v1/clones/register", cfg.register_base)),
                    ),
                    (
                        "register_token".into(),
                        json!(self.inner.tokens.token(&c.name)),
                    ),
                ]
                .into_iter()
                .chain(
                    cfg.addresses
                        .and_then(|p| {
                            let a = assigned(c)?;
                            Some([
                                ("address".to_owned(), json!(a.to_string())),
                                ("netmask".to_owned(), json!(p.netmask().to_string())),
                            ])
                        })
                        .into_iter()
                        .flatten(),
                )
                .collect(),
            })
            .collect();
        let mut globals = vec![
            ("server".to_owned(), json!(cfg.server)),
            ("deployment".to_owned(), json!(self.spec.name)),
            (
                "mode".to_owned(),
                json!(if self.stateful() {
                    "stateful"
                } else {
                    "stateless"
                }),
            ),
        ];
        // The cluster CA, with which clones verify the coordinator's HTTPS endpoint.
        if let Some(t) = &cfg.trust {
            globals.push(("ca_pem".to_owned(), json!(t.ca_pem())));
        }
        let inner = Arc::clone(&self.inner);
        let deployment = self.spec.name.clone();
        let layers = self.spec.layers.clone();
        let conf = (!self.spec.clones_conf.is_empty()).then(|| {
            (
                self.spec.clones_conf_file.clone(),
                self.spec.clones_conf.clone(),
            )
        });
        let over_nfs = layers_over_nfs(cfg);
        let names: Vec<String> = clones.iter().map(|c| c.name.clone()).collect();
        // Derived from the coordinator's secret: coordinators sharing it (HA on etcd) build
        // the same layers, so a takeover does not give clones new host keys.
        let identity = napalm_overlay::Identity::from_secret(
            &self
                .inner
                .tokens
                .derive(&format!("cluster-identity/{deployment}")),
        );
        let result = tokio::task::spawn_blocking(move || {
            let declared = conf.as_ref().map(|(file, text)| Declared { file, text });
            inner.artifacts.build(
                &deployment,
                &globals,
                &layers,
                &inputs,
                declared,
                over_nfs,
                staged,
                identity,
            )
        })
        .await
        .map_err(|_| DeployError::TaskPanicked("layer build"))
        .and_then(|r| r);
        match result {
            Ok(list) => list.into_iter().collect(),
            Err(e) => names.into_iter().map(|n| (n, Err(e.clone()))).collect(),
        }
    }

    pub(super) fn stateful(&self) -> bool {
        self.spec.mode == CloneMode::Stateful as i32
    }

    /// Keeps the layers built aside by a staged build as versions of their own for the
    /// clones that run a new one (replaced or new), so that no build rewrites a layer a
    /// clone mounts. Returns the clones whose layer could not be kept, with why.
    pub(super) async fn keep_versions(
        &self,
        clones: &[Clone],
        built: &Built,
    ) -> Vec<(String, DeployError)> {
        let todo: Vec<(String, String)> = clones
            .iter()
            .filter_map(|c| match built.get(&c.name) {
                Some(Ok(b)) if b.hash != c.layer_hash => Some((c.name.clone(), b.hash.clone())),
                _ => None,
            })
            .collect();
        let inner = Arc::clone(&self.inner);
        let deployment = self.spec.name.clone();
        tokio::task::spawn_blocking(move || {
            todo.into_iter()
                .filter_map(|(n, h)| {
                    inner
                        .artifacts
                        .keep_version(&deployment, &n, &h)
                        .err()
                        .map(|e| (n, e))
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// Exports what the clones mount besides the root — their layers (over NFS) and, for
    /// stateful clones, their state (creating missing images) — each to its clone's
    /// address; `built` names the layer versions the clones will boot. Returns the clones
    /// that cannot start, with why.
    pub(super) async fn prepare_exports(
        &self,
        clones: &[Clone],
        built: &Built,
    ) -> Vec<(String, DeployError)> {
        let Some(x) = self.inner.cfg.exports.clone() else {
            return Vec::new();
        };
        // Only the clones brought up now boot a new version: one the rollout holds back
        // keeps the export of the layer it mounts.
        let versions: HashMap<String, String> = clones
            .iter()
            .filter_map(|c| match built.get(&c.name) {
                Some(Ok(b)) => Some((c.name.clone(), b.hash.clone())),
                _ => None,
            })
            .collect();
        let sync = || {
            sync_exports(
                &self.inner.cfg,
                &self.inner.registry,
                &self.inner.artifacts,
                &versions,
            )
        };
        if !self.stateful() {
            return match sync().await {
                Ok(()) => Vec::new(),
                Err(e) => clones.iter().map(|c| (c.name.clone(), e.clone())).collect(),
            };
        }
        let deployment = self.spec.name.clone();
        let names: Vec<String> = clones.iter().map(|c| c.name.clone()).collect();
        let mut failed: Vec<(String, DeployError)> = tokio::task::spawn_blocking(move || {
            names
                .into_iter()
                .filter_map(|n| match x.ensure_state(&deployment, &n) {
                    Ok(_) => None,
                    Err(e) => Some((n, DeployError::Exports(Arc::new(e)))),
                })
                .collect()
        })
        .await
        .unwrap_or_else(|_| {
            clones
                .iter()
                .map(|c| (c.name.clone(), DeployError::TaskPanicked("state images")))
                .collect()
        });
        if let Err(e) = sync().await {
            failed = clones.iter().map(|c| (c.name.clone(), e.clone())).collect();
        }
        failed
    }
}
