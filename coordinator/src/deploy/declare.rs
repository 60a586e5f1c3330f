//! Deployments a clones.conf declares (`napalmctl deploy -f`): the file's hosts are the
//! clones, by name and in its order; their sets must exist; their names must not be
//! another deployment's clones.

use napalm_proto::v1::DeploymentSpec;
use napalm_proto::ApiError;

use super::{artifacts, chain, invalid, Deployer};
use crate::registry::{check_name, CLONES};

impl Deployer {
    /// Takes the clones `s.clones_conf` declares: their names (checked, in the file's
    /// order), their count, and the template sets they use (which must exist).
    pub(super) fn declare(&self, s: &mut DeploymentSpec) -> Result<(), ApiError> {
        if s.clones_conf_file.is_empty() {
            s.clones_conf_file = "clones.conf".into();
        }
        let declared = artifacts::Declared {
            file: &s.clones_conf_file,
            text: &s.clones_conf,
        };
        let cluster = declared
            .resolve()
            .map_err(|e| invalid("spec.clones_conf", e.to_string()))?;
        if cluster.is_empty() {
            return Err(invalid(
                "spec.clones_conf",
                format!(
                    "{} declares no clone: add hosts under `hosts:` or a group's `hosts:`",
                    s.clones_conf_file
                ),
            ));
        }
        let n = cluster.len();
        if s.count != 0 && s.count as usize != n {
            return Err(invalid(
                "spec.count",
                format!(
                    "count \"{}\" but {} declares {n} clone(s): leave the count out with a \
                     clones.conf, or edit the file",
                    s.count, s.clones_conf_file
                ),
            ));
        }
        let mut sets: Vec<String> = Vec::new();
        for c in &cluster.clones {
            check_name("spec.clones_conf", &c.name)?;
            for l in &c.layers {
                if !sets.contains(l) {
                    sets.push(l.clone());
                }
            }
        }
        self.inner
            .artifacts
            .check_sets(&sets)
            .map_err(|e| invalid("spec.clones_conf", chain(&e)))?;
        s.count = u32::try_from(n).unwrap_or(u32::MAX);
        s.clone_names = cluster.clones.iter().map(|c| c.name.clone()).collect();
        s.layers = sets;
        Ok(())
    }

    /// Refuses clone names another deployment already holds (clones.conf names are the
    /// operator's, and a clone name is a host name: it names one clone in the registry).
    pub(super) async fn check_names_free(&self, spec: &DeploymentSpec) -> Result<(), ApiError> {
        if spec.clone_names.is_empty() {
            return Ok(());
        }
        let registry = &self.inner.registry;
        for n in &spec.clone_names {
            if let Some((c, _)) = registry
                .get::<napalm_proto::v1::Clone>(&format!("{CLONES}{n}"))
                .await
                .map_err(ApiError::from)?
            {
                if c.deployment != spec.name {
                    return Err(invalid(
                        "spec.clones_conf",
                        format!(
                            "clone {n:?} of {} is already a clone of deployment {:?}; \
                             rename it in the file or undeploy {:?} first; nothing was \
                             deployed",
                            spec.clones_conf_file, c.deployment, c.deployment
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
