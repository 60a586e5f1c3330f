//! The index of a clone's cluster files, and requests held on it: how a running clone
//! follows its deployment without polling (`GET /v1/clones/NAME/cluster?files=…`,
//! [`crate::http`]).
//!
//! The index lists, for each file asked for, a tag of its content ([`index`]). A request
//! that names the index it already has (`index=TAG&wait=60s`) is held until one of those
//! files changes or the wait ends, like Consul's blocking queries ([`Indexes::wait`]); the
//! watcher then fetches only the files ([`crate::cluster_files`]). An idle clone costs one
//! held connection instead of a round of requests every few seconds.
//!
//! Held requests wake on the registry's writes of clone and deployment records
//! ([`Registry::changes`]) and re-read every few seconds (another coordinator sharing the
//! store may have written). All held requests share one listing of the registry's clones
//! per change, and one index per (deployment, files) rendered from it ([`Indexes`]): a
//! change costs one registry listing, not one per waiting clone or per deployment.
//!
//! Must not: render the files themselves (that is [`crate::cluster_files`]), or change
//! anything in the registry.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use napalm_overlay::live::{self, LiveClone, LiveFormat};
use sha2::Digest as _;
use tokio::time::Instant;

use crate::cluster_files::{authenticate, deployment_of, live_clone, ClusterFilesError, Rendered};
use crate::registry::clones::TokenKey;
use crate::registry::Registry;

/// The longest a request may be held.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// How long a request that names an index but no `wait` is held.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// How many requests one clone may hold at once (its watcher holds one; a restarted
/// watcher may briefly overlap its predecessor's).
pub const MAX_HELD_PER_CLONE: usize = 4;

/// How often held requests re-read the registry without a local write.
const RECHECK: Duration = Duration::from_secs(5);

/// How long a held request waits after a local write before it reads again: writes come
/// in bursts (a deployment's records, a batch of phases), and one round per burst is
/// enough for the watcher.
const SETTLE: Duration = Duration::from_millis(250);

/// A `wait`: `60`, `60s` or `2m`, at most [`MAX_WAIT`].
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

/// `hosts,known-hosts`: the files an index covers, each once; empty means all of them.
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

/// The tag of `text`'s lines other than comments. Comments say a clone's passing phase
/// (`# web-03 (pending)`): following them would wake every watcher at each step of every
/// booting clone, for nothing a program reads. A watcher's round fetches them too.
fn content_tag(text: &str) -> String {
    let content: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| [l, "\n"])
        .collect();
    live::etag(&content)
}

/// One computed index and the clones it covers.
#[derive(Debug)]
pub struct Index {
    /// `# cluster files of deployment D (napalm registry)`, then `FILE TAG` per file.
    pub rendered: Rendered,
    /// The deployment's clones when it was computed.
    pub clones: HashSet<String>,
}

/// The index of `files` for `deployment`, whose clones are `records`: a header line, then
/// `FILE TAG` per file in the order given, TAG being a tag of the file's lines other than
/// comments. For files with host keys, the tag covers what the keys derive from (the
/// coordinator's secret, by a derivation of its own) rather than the keys, so no key is
/// derived. The index's own entity tag changes exactly when one of those does: when a
/// clone comes, goes, gets an address or registers, not at every phase of a booting clone
/// (`json`, whose rows carry phases, excepted).
pub fn index(
    tokens: &TokenKey,
    deployment: &str,
    records: &[napalm_proto::v1::Clone],
    files: &[LiveFormat],
) -> Index {
    let live: Vec<LiveClone> = records
        .iter()
        .map(|c| LiveClone {
            host_key: Some("ssh-ed25519 KEY".to_owned()),
            ..live_clone(c, None)
        })
        .collect();
    let keys_from = hex::encode(sha2::Sha256::digest(
        tokens.derive(&format!("cluster-index/keys/{deployment}")),
    ));
    let mut body = format!("# cluster files of deployment {deployment} (napalm registry)\n");
    for f in files {
        let mut text = live::render(deployment, *f, &live);
        if f.needs_host_keys() {
            text.push_str(&keys_from);
        }
        body.push_str(&format!("{} {}\n", f.name(), content_tag(&text)));
    }
    Index {
        rendered: Rendered {
            deployment: deployment.to_owned(),
            etag: live::etag(&body),
            body,
        },
        clones: records.iter().map(|c| c.name.clone()).collect(),
    }
}

/// A deployment and the files of its index.
type IndexKey = (String, Vec<LiveFormat>);

/// Every clone record, by deployment, as listed at a registry change.
struct Listing {
    /// This listing among the ones this [`Indexes`] made.
    serial: u64,
    /// [`Registry::changes`]' value read before the listing: a write during it makes the
    /// next request list again.
    generation: u64,
    at: Instant,
    by_deployment: HashMap<String, Vec<napalm_proto::v1::Clone>>,
}

/// The state held requests share: one listing of the registry's clones per change (all
/// deployments' requests use it), the indexes rendered from it, and how many requests
/// each clone holds.
pub struct Indexes {
    recheck: Duration,
    listing: tokio::sync::Mutex<Option<Arc<Listing>>>,
    listings: std::sync::atomic::AtomicU64,
    /// Per (deployment, files): the serial of the listing it was rendered from, and the
    /// index.
    rendered: Mutex<HashMap<IndexKey, (u64, Arc<Index>)>>,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

impl Default for Indexes {
    fn default() -> Self {
        Self::with_recheck(RECHECK)
    }
}

/// One held request of a clone; dropping it frees the place.
struct Held {
    clone: String,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut h = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = h.get_mut(&self.clone) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                h.remove(&self.clone);
            }
        }
    }
}

impl Indexes {
    /// Held requests re-read the registry every `recheck` without a write of their own
    /// coordinator.
    pub fn with_recheck(recheck: Duration) -> Self {
        Self {
            recheck,
            listing: tokio::sync::Mutex::default(),
            listings: std::sync::atomic::AtomicU64::default(),
            rendered: Mutex::default(),
            held: Arc::default(),
        }
    }

    fn hold(&self, clone: &str) -> Result<Held, ClusterFilesError> {
        let mut h = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = h.entry(clone.to_owned()).or_default();
        if *n >= MAX_HELD_PER_CLONE {
            return Err(ClusterFilesError::TooManyHeld {
                clone: clone.to_owned(),
                held: *n,
            });
        }
        *n += 1;
        Ok(Held {
            clone: clone.to_owned(),
            held: Arc::clone(&self.held),
        })
    }

    /// The registry's clones as of change `generation` or later and not older than the
    /// re-read period (or listed now when `fresh`): one listing for every request.
    async fn listing(
        &self,
        registry: &Registry,
        generation: u64,
        fresh: bool,
    ) -> Result<Arc<Listing>, ClusterFilesError> {
        // Held across the listing: requests waking together wait for the first one's
        // listing instead of each reading the registry.
        let mut slot = self.listing.lock().await;
        if let Some(l) = slot.as_ref() {
            if !fresh && l.generation >= generation && l.at.elapsed() < self.recheck {
                return Ok(Arc::clone(l));
            }
        }
        let now_generation = registry.change_count();
        let by_deployment = registry.clones_by_deployment().await?;
        let l = Arc::new(Listing {
            serial: self
                .listings
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            generation: now_generation,
            at: Instant::now(),
            by_deployment,
        });
        *slot = Some(Arc::clone(&l));
        Ok(l)
    }

    /// The index of `files` for `deployment` from `listing`, rendered once per listing.
    fn index_from(
        &self,
        tokens: &TokenKey,
        listing: &Arc<Listing>,
        deployment: &str,
        files: &[LiveFormat],
    ) -> Arc<Index> {
        let id = listing.serial;
        let key = (deployment.to_owned(), files.to_vec());
        let mut rendered = self
            .rendered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((from, index)) = rendered.get(&key) {
            if *from == id {
                return Arc::clone(index);
            }
        }
        let records = listing
            .by_deployment
            .get(deployment)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let index = Arc::new(index(tokens, deployment, records, files));
        // Indexes of deployments nobody asked about since this listing's predecessors go.
        if rendered.len() > 4 * listing.by_deployment.len() + 64 {
            rendered.retain(|(d, _), _| listing.by_deployment.contains_key(d));
        }
        rendered.insert(key, (id, Arc::clone(&index)));
        index
    }

    /// Clone `name`'s index of `files` (comma-separated names, all when empty),
    /// authenticated by `token`. With `seen` (the tag of the index the caller has, quoted
    /// or not) the answer is held while the index still has that tag, for `wait`
    /// ([`DEFAULT_WAIT`] when `None`, at most [`MAX_WAIT`]): it comes soon after a file
    /// changes, else when the wait ends, unchanged. Without `seen`, at once. A clone
    /// removed meanwhile ends the wait with [`ClusterFilesError::NotFound`].
    #[allow(clippy::too_many_arguments)]
    pub async fn wait(
        &self,
        registry: &Registry,
        tokens: &TokenKey,
        name: &str,
        token: Option<&str>,
        files: &str,
        seen: Option<&str>,
        wait: Option<&str>,
    ) -> Result<Rendered, ClusterFilesError> {
        authenticate(tokens, name, token)?;
        let files = parse_files(files)?;
        let wait = match wait.map(parse_wait).transpose()? {
            _ if seen.is_none() => Duration::ZERO,
            Some(w) => w,
            None => DEFAULT_WAIT,
        };
        let _held = self.hold(name)?;
        let deployment = deployment_of(registry, name).await?;
        let deadline = Instant::now() + wait;
        let mut changes = registry.changes();
        let mut fresh = false;
        loop {
            let generation = *changes.borrow_and_update();
            let listing = self.listing(registry, generation, fresh).await?;
            let now = self.index_from(tokens, &listing, &deployment, &files);
            if !now.clones.contains(name) {
                if !fresh {
                    // A listing from before the clone was written: read again first.
                    fresh = true;
                    continue;
                }
                return Err(ClusterFilesError::NotFound {
                    kind: "clone",
                    name: name.to_owned(),
                });
            }
            fresh = false;
            let current =
                seen.is_some_and(|s| s.trim_matches('"') == now.rendered.etag.trim_matches('"'));
            if !current || Instant::now() >= deadline {
                return Ok(now.rendered.clone());
            }
            let next = deadline.min(Instant::now() + self.recheck);
            tokio::select! {
                woke = changes.changed() => match woke {
                    Ok(()) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        tokio::time::sleep(SETTLE.min(left)).await
                    }
                    Err(_) => tokio::time::sleep_until(next).await,
                },
                _ = tokio::time::sleep_until(next) => {}
            }
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

    #[test]
    fn a_clone_holds_a_few_requests_at_most() {
        let idx = Indexes::default();
        let held: Vec<Held> = (0..MAX_HELD_PER_CLONE)
            .map(|_| idx.hold("c1").expect("room"))
            .collect();
        let e = idx.hold("c1").err().expect("one too many").to_string();
        assert!(e.contains("\"c1\"") && e.contains("wait for one"), "{e}");
        assert!(idx.hold("c2").is_ok(), "another clone is not counted");
        drop(held);
        assert!(idx.hold("c1").is_ok(), "places are freed");
        assert!(
            idx.held.lock().expect("lock").is_empty(),
            "no count is left once nothing is held"
        );
    }

    async fn put(
        registry: &Registry,
        name: &str,
        index: u32,
        address: Option<&str>,
        phase: napalm_proto::v1::ClonePhase,
    ) {
        use napalm_proto::v1::Clone;
        let c = Clone {
            name: name.into(),
            deployment: "web".into(),
            index,
            addresses: address.into_iter().map(str::to_owned).collect(),
            phase: phase as i32,
            ..Default::default()
        };
        registry
            .update::<Clone, _>(&format!("{}{name}", crate::registry::CLONES), |_| {
                Ok(Some(c.clone()))
            })
            .await
            .expect("write the clone");
    }

    /// `web-01`'s index of `hosts`, held on `seen` for `wait`.
    async fn ask(
        idx: &Indexes,
        registry: &Registry,
        tokens: &TokenKey,
        token: &str,
        seen: Option<&str>,
        wait: Option<&str>,
    ) -> Result<Rendered, ClusterFilesError> {
        idx.wait(registry, tokens, "web-01", Some(token), "hosts", seen, wait)
            .await
    }

    /// [`ask`] held on `tag` for `wait`, in a task of its own.
    fn hold_on(
        idx: &Arc<Indexes>,
        registry: &Registry,
        tokens: &Arc<TokenKey>,
        token: &str,
        tag: &str,
        wait: &'static str,
    ) -> tokio::task::JoinHandle<Result<Rendered, ClusterFilesError>> {
        let (idx, registry, tokens) = (Arc::clone(idx), registry.clone(), Arc::clone(tokens));
        let (token, tag) = (token.to_owned(), tag.to_owned());
        tokio::spawn(
            async move { ask(&idx, &registry, &tokens, &token, Some(&tag), Some(wait)).await },
        )
    }

    #[tokio::test]
    async fn a_held_request_wakes_on_a_write_and_ends_when_its_clone_goes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let registry = crate::registry::temp_registry(dir.path()).await;
        let tokens = Arc::new(TokenKey::new(&[7; 32]).expect("key"));
        use napalm_proto::v1::ClonePhase;
        put(
            &registry,
            "web-01",
            1,
            Some("10.0.0.1/24"),
            ClonePhase::Running,
        )
        .await;
        // Re-reads on the timer only hourly: an answer within seconds comes from the write.
        let idx = Arc::new(Indexes::with_recheck(Duration::from_secs(3600)));
        let token = tokens.token("web-01");
        let now = || ask(&idx, &registry, &tokens, &token, None, None);
        let first = now().await.expect("the index");
        assert!(first.body.starts_with("# cluster files of deployment web "));
        // Requests at the same registry change share its listing.
        for _ in 0..2 {
            assert_eq!(now().await.expect("the index").etag, first.etag);
        }
        assert_eq!(
            idx.listings.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "one listing for the three requests"
        );

        // Unchanged: held for its whole wait. A new phase changes no line of hosts.
        let t = Instant::now();
        let held = hold_on(&idx, &registry, &tokens, &token, &first.etag, "1s");
        tokio::time::sleep(Duration::from_millis(300)).await;
        put(
            &registry,
            "web-01",
            1,
            Some("10.0.0.1/24"),
            ClonePhase::Registered,
        )
        .await;
        let same = held.await.expect("task").expect("answer");
        assert_eq!(same.etag, first.etag);
        assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());

        // A second clone: a request held for a minute answers at once.
        let held = hold_on(&idx, &registry, &tokens, &token, &first.etag, "60");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!held.is_finished(), "answered before anything changed");
        let t = Instant::now();
        put(
            &registry,
            "web-02",
            2,
            Some("10.0.0.2/24"),
            ClonePhase::Running,
        )
        .await;
        let changed = tokio::time::timeout(Duration::from_secs(5), held)
            .await
            .expect("answered within seconds of the write")
            .expect("task")
            .expect("answer");
        assert_ne!(changed.etag, first.etag);
        assert!(t.elapsed() < Duration::from_secs(5));

        // Its clone removed: the held request ends with not found.
        let held = hold_on(&idx, &registry, &tokens, &token, &changed.etag, "60");
        tokio::time::sleep(Duration::from_millis(300)).await;
        registry
            .update::<napalm_proto::v1::Clone, _>(
                &format!("{}web-01", crate::registry::CLONES),
                |_| Ok(None),
            )
            .await
            .expect("delete");
        let gone = tokio::time::timeout(Duration::from_secs(5), held)
            .await
            .expect("answered within seconds of the delete")
            .expect("task");
        assert!(
            matches!(gone, Err(ClusterFilesError::NotFound { .. })),
            "{gone:?}"
        );
    }
}
