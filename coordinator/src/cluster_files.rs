//! A deployment's cluster files from the live registry — `/etc/hosts` lines, the OpenMPI
//! hostfile, ssh known_hosts, JSON — rendered by [`napalm_overlay::live`] (the rules
//! napalmctl uses too). The one core operation behind `GET /v1/clones/NAME/cluster/FILE`
//! ([`crate::http`]), which the base set's watcher in every running clone polls so its files
//! follow the deployment as it grows or shrinks, without a reboot.
//!
//! Host keys are not stored: a clone's public ssh host key derives from the deployment's
//! cluster identity, itself derived from the coordinator's secret and the deployment name
//! (as the layer builder does, `deploy::apply::layers`), so every coordinator sharing the
//! secret renders the same known_hosts.
//!
//! A watcher need not poll: the *index* of a clone's files (`GET
//! /v1/clones/NAME/cluster?files=…`, [`wait_index`]) lists each file's entity tag, and a
//! request that names the index it already has (`index=ETAG&wait=60s`) is held until one of
//! the files changes or the wait ends, like Consul's blocking queries. A clone that idles
//! then costs one held connection instead of a round of requests every few seconds.

use std::time::Duration;

use napalm_overlay::live::{self, LiveClone, LiveFormat};
use napalm_overlay::Identity;
use napalm_proto::v1::{Clone, ClonePhase};
use napalm_proto::ApiError;
use sha2::Digest as _;

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
    /// A `wait` that is not a duration within [`MAX_WAIT`].
    #[error("wait={0:?} is not a wait this endpoint takes: give seconds (`60`, `60s`) or minutes (`2m`), at most 5m")]
    Wait(String),
    /// The registry could not be read.
    #[error("reading the registry: {0}")]
    Registry(#[source] RegistryError),
}

impl From<RegistryError> for ClusterFilesError {
    fn from(e: RegistryError) -> Self {
        ClusterFilesError::Registry(e)
    }
}

/// The longest a request may be held by [`wait_index`].
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// How often a held request re-reads the registry even without a local write: another
/// coordinator sharing the store may have changed it.
const RECHECK: Duration = Duration::from_secs(5);

/// How long a held request waits after a local write before it reads again.
const SETTLE: Duration = Duration::from_millis(250);

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

fn authenticate(
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
async fn deployment_of(registry: &Registry, name: &str) -> Result<String, ClusterFilesError> {
    match registry.get_clone(name).await {
        Ok(c) => Ok(c.deployment),
        Err(RegistryError::Api(ApiError::NotFound { .. })) => Err(ClusterFilesError::NotFound {
            kind: "clone",
            name: name.to_owned(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// A held request's `wait`: `60`, `60s` or `2m`, at most [`MAX_WAIT`].
pub fn parse_wait(value: &str) -> Result<Duration, ClusterFilesError> {
    let v = value.trim();
    let (digits, unit) = match v.strip_suffix('m') {
        Some(d) => (d, 60),
        None => (v.strip_suffix('s').unwrap_or(v), 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .map(Duration::from_secs)
        .filter(|d| *d <= MAX_WAIT)
        .ok_or_else(|| ClusterFilesError::Wait(value.to_owned()))
}

/// `hosts,known-hosts`: the files an index covers; empty means all of them.
pub fn parse_files(value: &str) -> Result<Vec<LiveFormat>, ClusterFilesError> {
    let mut out = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let f: LiveFormat = name.parse()?;
        if !out.contains(&f) {
            out.push(f);
        }
    }
    if out.is_empty() {
        out = LiveFormat::ALL.iter().map(|(_, f)| *f).collect();
    }
    Ok(out)
}

/// The index of `files` for `deployment`: a header line, then `FILE TAG` per file in the
/// order given, TAG being a tag of the file's lines other than comments (for files with
/// host keys, of what the keys derive from rather than the keys). The
/// index's own entity tag changes exactly when one of those does: when a clone comes,
/// goes, gets an address or registers, not at every phase of a booting clone.
pub async fn index(
    registry: &Registry,
    tokens: &TokenKey,
    deployment: &str,
    files: &[LiveFormat],
) -> Result<Rendered, ClusterFilesError> {
    let clones = registry.list_clones(deployment).await?;
    // No host key is derived for the tags (an ed25519 key per clone, for each waiting
    // clone at each change): known_hosts is tagged with a stand-in key on every line
    // and the secret the real keys derive from, which together decide them.
    let live: Vec<LiveClone> = clones
        .iter()
        .map(|c| LiveClone {
            host_key: Some("ssh-ed25519 KEY".to_owned()),
            ..live_clone(c, None)
        })
        .collect();
    let keys_from = hex::encode(sha2::Sha256::digest(
        tokens.derive(&format!("cluster-identity/{deployment}")),
    ));
    let mut body = format!("# cluster files of deployment {deployment} (napalm registry)\n");
    for f in files {
        let mut text = live::render(deployment, *f, &live);
        if f.needs_host_keys() {
            text.push_str(&keys_from);
        }
        body.push_str(&format!("{} {}\n", f.name(), content_tag(&text)));
    }
    Ok(Rendered {
        deployment: deployment.to_owned(),
        etag: live::etag(&body),
        body,
    })
}

/// The entity tag of `text`'s lines other than comments. Comments say a clone's passing
/// phase (`# web-03 (pending)`): following them would wake every watcher at each step of
/// every booting clone, for nothing a program reads. A watcher's round fetches them too.
fn content_tag(text: &str) -> String {
    let content: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| [l, "\n"])
        .collect();
    live::etag(&content)
}

/// Clone `name`'s index of `files` ([`index`]), authenticated by `token`. With `seen`
/// (the entity tag of the index the caller has, quoted or not), the answer is held while the index still
/// has that tag, for at most `wait` (capped at [`MAX_WAIT`]): it comes as soon as a file
/// changes, else when the wait ends, unchanged. The registry is re-read on each of its
/// writes and every few seconds. A clone removed meanwhile ends the wait with
/// [`ClusterFilesError::NotFound`].
pub async fn wait_index(
    registry: &Registry,
    tokens: &TokenKey,
    name: &str,
    token: Option<&str>,
    files: &[LiveFormat],
    seen: Option<&str>,
    wait: Duration,
) -> Result<Rendered, ClusterFilesError> {
    authenticate(tokens, name, token)?;
    let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
    let mut changes = registry.changes();
    loop {
        changes.borrow_and_update();
        let deployment = deployment_of(registry, name).await?;
        let now = index(registry, tokens, &deployment, files).await?;
        let current = seen.is_some_and(|s| s.trim_matches('"') == now.etag.trim_matches('"'));
        if !current || tokio::time::Instant::now() >= deadline {
            return Ok(now);
        }
        let next = deadline.min(tokio::time::Instant::now() + RECHECK);
        tokio::select! {
            woke = changes.changed() => match woke {
                // Writes come in bursts (a deployment's records, a batch of phases): let
                // the burst settle so the watcher makes one round for it, not one per write.
                Ok(()) => tokio::time::sleep(SETTLE).await,
                Err(_) => tokio::time::sleep_until(next).await,
            },
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_seconds_or_minutes_up_to_five_minutes() {
        assert_eq!(parse_wait("60").ok(), Some(Duration::from_secs(60)));
        assert_eq!(parse_wait("45s").ok(), Some(Duration::from_secs(45)));
        assert_eq!(parse_wait("5m").ok(), Some(MAX_WAIT));
        for bad in ["6m", "301", "-1", "1h", "soon", ""] {
            let e = parse_wait(bad).expect_err(bad).to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn a_files_tag_follows_its_lines_but_not_its_comments() {
        let pending = "# clones of deployment web (napalm registry)\nweb-01\n# web-02 (pending)\n";
        let running = pending.replace("pending", "running");
        let registered = pending.replace("# web-02 (pending)", "web-02");
        assert_eq!(content_tag(pending), content_tag(&running));
        assert_ne!(content_tag(pending), content_tag(&registered));
    }

    #[test]
    fn an_index_names_known_files_once_and_all_by_default() {
        assert_eq!(
            parse_files("hosts, mpi,hosts").ok(),
            Some(vec![LiveFormat::Hosts, LiveFormat::Mpi])
        );
        assert_eq!(parse_files("").map(|f| f.len()).ok(), Some(4));
        let e = parse_files("hosts,passwd").expect_err("passwd").to_string();
        assert!(e.contains("\"passwd\"") && e.contains("known-hosts"), "{e}");
    }
}
