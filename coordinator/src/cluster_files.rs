//! A deployment's cluster files from the live registry — `/etc/hosts` lines, the OpenMPI
//! hostfile, ssh known_hosts, JSON — rendered by [`napalm_overlay::live`] (the rules
//! napalmctl uses too). The one core operation behind `GET /v1/clones/NAME/cluster/FILE`
//! ([`crate::http`]), which the base set's watcher in every running clone fetches when the
//! index of its files says one changed ([`crate::cluster_index`]), so its files follow the
//! deployment as it grows or shrinks, without a reboot.
//!
//! Host keys are not stored: a clone's public ssh host key derives from the deployment's
//! cluster identity, itself derived from the coordinator's secret and the deployment name
//! (as the layer builder does, `deploy::apply::layers`), so every coordinator sharing the
//! secret renders the same known_hosts.

use napalm_overlay::live::{self, LiveClone, LiveFormat};
use napalm_overlay::Identity;
use napalm_proto::v1::{Clone, ClonePhase};
use napalm_proto::ApiError;

use crate::registry::clones::TokenKey;
use crate::registry::{Registry, RegistryError};

/// Why cluster files could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ClusterFilesError {
    /// No token, or not the clone's own.
    #[error("wrong or missing clone token for {clone:?}: send the clone's own token as `Authorization: Bearer TOKEN` (or `X-Napalm-Clone-Token`)")]
    Unauthenticated {
        /// The clone asked about.
        clone: String,
    },
    /// The clone (or its deployment) is not in the registry.
    #[error("{kind} {name:?} is not in the registry")]
    NotFound {
        /// `clone` or `deployment`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// Not a cluster file name.
    #[error(transparent)]
    Format(#[from] live::UnknownFormat),
    /// A `wait` that is not a duration within [`crate::cluster_index::MAX_WAIT`].
    #[error("wait={0:?} is not a wait this endpoint takes: give seconds (`60`, `60s`) or minutes (`2m`), at most 5m")]
    Wait(String),
    /// The clone already has as many held requests as it may.
    #[error("clone {clone:?} already holds {held} requests for its cluster files: wait for one to answer")]
    TooManyHeld {
        /// The clone.
        clone: String,
        /// How many it holds.
        held: usize,
    },
    /// The registry could not be read.
    #[error("reading the registry: {0}")]
    Registry(#[source] RegistryError),
}

impl From<RegistryError> for ClusterFilesError {
    fn from(e: RegistryError) -> Self {
        ClusterFilesError::Registry(e)
    }
}

/// One rendered file with its entity tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The deployment it belongs to.
    pub deployment: String,
    /// The file's content.
    pub body: String,
    /// Strong entity tag of `body` (quoted hex of its SHA-256 prefix).
    pub etag: String,
}

/// The cluster identity of `deployment`: the clones' host keys derive from it.
pub fn identity(tokens: &TokenKey, deployment: &str) -> Identity {
    Identity::from_secret(&tokens.derive(&format!("cluster-identity/{deployment}")))
}

fn phase_name(c: &Clone) -> String {
    let p = ClonePhase::try_from(c.phase).unwrap_or_default();
    p.as_str_name()
        .trim_start_matches("CLONE_PHASE_")
        .to_ascii_lowercase()
}

/// A registry record as [`napalm_overlay::live`] takes it; `identity` adds its host key.
pub fn live_clone(c: &Clone, identity: Option<&Identity>) -> LiveClone {
    LiveClone {
        name: c.name.clone(),
        index: c.index,
        address: c.addresses.first().cloned(),
        phase: phase_name(c),
        registered: c.phase == ClonePhase::Registered as i32,
        agent: c.agent_id.clone(),
        host_key: identity.map(|i| i.ssh_public(&c.name)),
    }
}

/// Renders `format` for the clones `deployment` has in the registry now.
pub async fn render(
    registry: &Registry,
    tokens: &TokenKey,
    deployment: &str,
    format: LiveFormat,
) -> Result<Rendered, ClusterFilesError> {
    let clones = registry.list_clones(deployment).await?;
    let identity = format
        .needs_host_keys()
        .then(|| identity(tokens, deployment));
    let live: Vec<LiveClone> = clones
        .iter()
        .map(|c| live_clone(c, identity.as_ref()))
        .collect();
    let body = live::render(deployment, format, &live);
    Ok(Rendered {
        deployment: deployment.to_owned(),
        etag: live::etag(&body),
        body,
    })
}

/// What clone `name` asks for with `token`: `file` (`hosts`, `mpi`, `known-hosts`, `json`)
/// of its own deployment. The token is checked before anything is read, so a caller
/// without it learns nothing, not even whether the clone exists.
pub async fn for_clone(
    registry: &Registry,
    tokens: &TokenKey,
    name: &str,
    token: Option<&str>,
    file: &str,
) -> Result<Rendered, ClusterFilesError> {
    authenticate(tokens, name, token)?;
    let format: LiveFormat = file.parse()?;
    let deployment = deployment_of(registry, name).await?;
    render(registry, tokens, &deployment, format).await
}

pub(crate) fn authenticate(
    tokens: &TokenKey,
    name: &str,
    token: Option<&str>,
) -> Result<(), ClusterFilesError> {
    if token.is_some_and(|t| tokens.verify(name, t)) {
        Ok(())
    } else {
        Err(ClusterFilesError::Unauthenticated {
            clone: name.to_owned(),
        })
    }
}

/// The deployment clone `name` belongs to.
pub(crate) async fn deployment_of(
    registry: &Registry,
    name: &str,
) -> Result<String, ClusterFilesError> {
    match registry.get_clone(name).await {
        Ok(c) => Ok(c.deployment),
        Err(RegistryError::Api(ApiError::NotFound { .. })) => Err(ClusterFilesError::NotFound {
            kind: "clone",
            name: name.to_owned(),
        }),
        Err(e) => Err(e.into()),
    }
}
