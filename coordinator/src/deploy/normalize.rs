//! Checking and completing a deployment spec before anything is written: its name and
//! count, template sets, resources, mode, the root= it boots (the coordinator's export by
//! default) and its scratch paths. Bad input is refused quoting it and saying what to do.

use napalm_initramfs::rootspec::{Device, RootSpec};
use napalm_proto::v1::{CloneMode, DeploymentSpec};
use napalm_proto::ApiError;

use super::{chain, scratch, Deployer};
use crate::registry::check_name;

/// An `InvalidArgument` about `field`.
pub(super) fn invalid(field: &str, description: String) -> ApiError {
    ApiError::InvalidArgument {
        field: field.into(),
        description,
    }
}

/// Largest deployment accepted.
pub const MAX_COUNT: u32 = 10_000;

impl Deployer {
    /// Checks and completes a spec with defaults; bad input is refused before anything is
    /// written.
    pub fn normalize(&self, spec: Option<DeploymentSpec>) -> Result<DeploymentSpec, ApiError> {
        let mut s = spec.ok_or_else(|| invalid("spec", "missing deployment spec".into()))?;
        check_name("spec.name", &s.name)?;
        if s.clones_conf.is_empty() {
            s.clone_names.clear();
        } else {
            self.declare(&mut s)?;
        }
        if s.count == 0 || s.count > MAX_COUNT {
            return Err(invalid(
                "spec.count",
                format!(
                    "count must be between 1 and {MAX_COUNT}, got \"{}\"",
                    s.count
                ),
            ));
        }
        if s.layers.is_empty() {
            s.layers = vec!["base".into()];
        }
        self.inner
            .artifacts
            .check_sets(&s.layers)
            .map_err(|e| invalid("spec.layers", chain(&e)))?;
        let r = s.resources.get_or_insert_default();
        if r.vcpus == 0 {
            r.vcpus = 1;
        }
        if r.memory_bytes == 0 {
            r.memory_bytes = 512 << 20;
        }
        if r.memory_bytes < 64 << 20 {
            return Err(invalid(
                "spec.resources.memory_bytes",
                format!(
                    "{} MiB is too little to boot a clone; give at least 64 MiB",
                    r.memory_bytes >> 20
                ),
            ));
        }
        if r.vcpus > 64 {
            return Err(invalid(
                "spec.resources.vcpus",
                format!("{} vCPUs is more than 64", r.vcpus),
            ));
        }
        if s.mode == CloneMode::Unspecified as i32 {
            s.mode = CloneMode::Stateless as i32;
        }
        if let Some(pool) = &self.inner.cfg.addresses {
            if s.count > pool.capacity() {
                return Err(invalid(
                    "spec.count",
                    format!(
                        "count \"{}\" is more than the {} clone addresses of the pool; \
                         deploy fewer or give the coordinator a larger --clone-addresses",
                        s.count,
                        pool.capacity()
                    ),
                ));
            }
        }
        if s.mode == CloneMode::Stateful as i32
            && (self.inner.cfg.exports.is_none() || self.inner.cfg.addresses.is_none())
        {
            return Err(invalid(
                "spec.mode",
                "stateful clones keep their state in a per-clone NFS export restricted to \
                 the clone's address: start the coordinator with --export-root, \
                 --export-state-dir and --clone-addresses, or use --mode stateless"
                    .into(),
            ));
        }
        if s.root.is_empty() {
            let dir = match &self.inner.cfg.exports {
                Some(x) => x.config().root.to_string_lossy().into_owned(),
                None => "/".to_owned(),
            };
            let root = Device::nfs(&self.inner.cfg.server, &dir).map_err(|e| {
                invalid(
                    "server",
                    format!("the coordinator's --server or --export-root: {e}"),
                )
            })?;
            s.root = root.to_string();
        }
        // The root is one or more read-only layers of the root= grammar.
        RootSpec::parse(&s.root).map_err(|e| invalid("spec.root", e.to_string()))?;
        let memory = s.resources.map_or(0, |r| r.memory_bytes);
        scratch::check(&s, memory)?;
        Ok(s)
    }
}
