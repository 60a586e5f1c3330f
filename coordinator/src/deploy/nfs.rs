//! The NFS exports the registry implies: the shared root, each clone's layer (when layers
//! travel over NFS) and each stateful clone's state, the last two restricted to the
//! clone's address. Written through [`crate::exports::Exporter`].

use std::collections::HashMap;
use std::sync::Arc;

use napalm_proto::v1::CloneMode;

use super::addresses::assigned;
use super::artifacts::Artifacts;
use super::{DeployConfig, DeployError};
use crate::exports::{LayerExport, StateExport};
use crate::registry::Registry;

/// Whether clones get their layer over NFS (an export restricted to the clone's address)
/// rather than appended to their initramfs: when this coordinator writes the exports and
/// knows clone addresses up front, unless told to append layers to the initramfs. Then
/// every clone of an agent boots the same image, shipped once.
pub fn layers_over_nfs(cfg: &DeployConfig) -> bool {
    cfg.exports.is_some() && cfg.addresses.is_some() && !cfg.layers_in_initramfs
}

/// Rewrites the NFS exports from the registry; `versions` gives the boot hash of clones a
/// run is about to bring up (their records still name the previous one), so that the
/// layer version they will mount is exported. A no-op when this coordinator manages no
/// exports.
pub async fn sync_exports(
    cfg: &DeployConfig,
    registry: &Registry,
    artifacts: &Artifacts,
    versions: &HashMap<String, String>,
) -> Result<(), DeployError> {
    let Some(x) = &cfg.exports else {
        return Ok(());
    };
    let mut states = Vec::new();
    let mut layers = Vec::new();
    if cfg.addresses.is_some() {
        let mut clones = registry.clones_by_deployment().await?;
        for d in registry.list_deployments().await? {
            let Some(spec) = d.spec else { continue };
            let stateful = spec.mode == CloneMode::Stateful as i32;
            for c in clones.remove(&spec.name).unwrap_or_default() {
                let Some(address) = assigned(&c) else {
                    continue;
                };
                let hash = versions.get(&c.name).unwrap_or(&c.layer_hash);
                let path = artifacts.layer_root(&spec.name, &c.name, hash);
                if path.is_dir() {
                    layers.push(LayerExport {
                        clone: c.name.clone(),
                        path,
                        address,
                    });
                }
                if stateful {
                    states.push(StateExport {
                        deployment: spec.name.clone(),
                        clone: c.name,
                        address,
                    });
                }
            }
        }
    }
    let x = Arc::clone(x);
    tokio::task::spawn_blocking(move || x.apply(&states, &layers))
        .await
        .map_err(|_| DeployError::TaskPanicked("NFS exports"))?
        .map(|_| ())
        .map_err(|e| DeployError::Exports(Arc::new(e)))
}
