//! The registry: agents, deployments and clones as `napalm.v1` records in a [`Store`].
//!
//! Keys: `/napalm/agents/<id>`, `/napalm/deployments/<name>`, `/napalm/clones/<name>`;
//! values are the protobuf encoding of `Agent`, `Deployment` (without its clones) and
//! `Clone`. Every change is a read-modify-write checked against the record's revision
//! (retried a few times on conflict) and, when coordinators share etcd, against the
//! leader's fencing token, so a deposed leader cannot write.

pub mod agents;
pub mod clones;

use std::sync::{Arc, RwLock};

use napalm_proto::ApiError;
use prost::Message;

use crate::clock::Clock;
use crate::store::election::LEADER_KEY;
use crate::store::{Check, Durability, Store, StoreError, Txn};

/// Key prefix of agent records.
pub const AGENTS: &str = "/napalm/agents/";
/// Key prefix of deployment records.
pub const DEPLOYMENTS: &str = "/napalm/deployments/";
/// Key prefix of clone records.
pub const CLONES: &str = "/napalm/clones/";

/// How many times a read-modify-write is retried when another writer got there first.
const RETRIES: usize = 8;

/// Records per transaction of [`Registry::update_many`]: with the fencing check, 65
/// compares and 64 puts stay under etcd's default `--max-txn-ops` of 128.
const BATCH: usize = 64;

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store failed or a change lost a race too many times.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A request was refused; the error says why.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Api(api) => api,
            RegistryError::Store(StoreError::Conflict { .. }) => ApiError::Conflict {
                description: e.to_string(),
            },
            RegistryError::Store(other) => ApiError::StoreUnavailable {
                description: other.to_string(),
            },
        }
    }
}

/// Typed access to the registry records.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    fence: Arc<RwLock<Option<u64>>>,
    /// Agents seen by the last full listing (sweep or list), for heartbeat TTLs: reading
    /// every agent record on each heartbeat would make heartbeats O(agents).
    agent_count: Arc<std::sync::atomic::AtomicUsize>,
    /// Bumped after every write of clone or deployment records this registry commits (not
    /// agents' heartbeats), so long polls (a clone's cluster files) wake on a change
    /// instead of re-reading on a timer. Writes by another
    /// coordinator sharing the store do not bump it: waiters re-read now and then too.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Listings of every clone record ([`Self::clone_listings`]).
    clone_listings: Arc<std::sync::atomic::AtomicU64>,
}

impl Registry {
    /// A registry over `store`, reading time from `clock`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            fence: Arc::new(RwLock::new(None)),
            agent_count: Arc::default(),
            changes: Arc::new(tokio::sync::watch::channel(0).0),
            clone_listings: Arc::default(),
        }
    }

    /// How many writes of clone or deployment records this registry has committed (what
    /// [`Self::changes`] counts): a reader that kept records read at one count knows they
    /// are still what this coordinator stored while the count stays the same.
    pub fn change_count(&self) -> u64 {
        *self.changes.borrow()
    }

    /// How many times every clone record was read at once since this registry opened: a
    /// control-loop pass, a `/metrics` scrape, a listing of all clones (listing one
    /// deployment's reads them all too: clone names need not start with the deployment's).
    /// What the store pays grows with this times the number of clones.
    pub fn clone_listings(&self) -> u64 {
        self.clone_listings
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A receiver that sees [`Self::commit`]'s successful writes of clone and deployment
    /// records (a counter; only the change matters).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The number of agents at the last full listing.
    pub fn known_agents(&self) -> usize {
        self.agent_count.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_known_agents(&self, n: usize) {
        self.agent_count
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The clock.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The fence writes check ([`Self::set_fence`]): it names the lead term; none
    /// without election.
    pub fn fence(&self) -> Option<u64> {
        self.fence.read().ok().and_then(|f| *f)
    }

    /// Sets the leader's fencing token: from now on every write also checks that the
    /// leader key still has this revision. `None` for a store with a single writer.
    pub fn set_fence(&self, fence: Option<u64>) {
        if let Ok(mut f) = self.fence.write() {
            *f = fence;
        }
    }

    fn fenced(&self, txn: Txn) -> Txn {
        match self.fence() {
            Some(rev) => txn.check(LEADER_KEY, Check::Revision(rev)),
            None => txn,
        }
    }

    /// Commits `txn` with the fencing check added.
    pub async fn commit(&self, txn: Txn) -> Result<u64, RegistryError> {
        let watched = txn
            .puts
            .iter()
            .map(|(k, _)| k)
            .chain(&txn.deletes)
            .any(|k| k.starts_with(CLONES) || k.starts_with(DEPLOYMENTS));
        let rev = self.store.commit(self.fenced(txn)).await?;
        if watched {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(rev)
    }

    /// One record and its revision.
    pub async fn get<M: Message + Default>(
        &self,
        key: &str,
    ) -> Result<Option<(M, u64)>, RegistryError> {
        match self.store.get(key).await? {
            Some(v) => Ok(Some((decode(key, &v.value)?, v.mod_revision))),
            None => Ok(None),
        }
    }

    /// All records under `prefix`, sorted by key.
    pub async fn list<M: Message + Default>(&self, prefix: &str) -> Result<Vec<M>, RegistryError> {
        if prefix == CLONES {
            self.clone_listings
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let mut out = Vec::new();
        for (key, v) in self.store.list(prefix).await? {
            out.push(decode(&key, &v.value)?);
        }
        Ok(out)
    }

    /// Read-modify-write of one record: `change` gets the current record (if any) and
    /// returns the new one (`None` deletes). Retried on conflict.
    pub async fn update<M, F>(&self, key: &str, change: F) -> Result<Option<M>, RegistryError>
    where
        M: Message + Default + Clone,
        F: FnMut(Option<M>) -> Result<Option<M>, RegistryError>,
    {
        self.update_with(key, Durability::Immediate, change).await
    }

    /// [`Self::update`] committed with `durability`: [`Durability::Eventual`] for progress
    /// that a re-run of the same operation recomputes (see [`crate::store::Durability`]).
    pub async fn update_with<M, F>(
        &self,
        key: &str,
        durability: Durability,
        mut change: F,
    ) -> Result<Option<M>, RegistryError>
    where
        M: Message + Default + Clone,
        F: FnMut(Option<M>) -> Result<Option<M>, RegistryError>,
    {
        let mut last = None;
        for _ in 0..RETRIES {
            let current = self.get::<M>(key).await?;
            let check = match &current {
                Some((_, rev)) => Check::Revision(*rev),
                None => Check::Absent,
            };
            let next = change(current.map(|(m, _)| m))?;
            let txn = match &next {
                Some(m) => Txn::new().check(key, check).put(key, m.encode_to_vec()),
                None => Txn::new().check(key, check).delete(key),
            }
            .durability(durability);
            match self.commit(txn).await {
                Ok(_) => return Ok(next),
                Err(RegistryError::Store(e @ StoreError::Conflict { .. })) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.map(RegistryError::Store).unwrap_or_else(|| {
            ApiError::Conflict {
                description: key.into(),
            }
            .into()
        }))
    }

    /// Read-modify-write of many records in few transactions ([`BATCH`] records each, every
    /// one revision-checked, all of a batch or nothing): `change` gets the index of the key
    /// in `keys` and its current record, and returns the new one (`None` deletes). A batch
    /// that loses a race is redone one record at a time with [`Self::update_with`]. Returns
    /// the new records in the order of `keys` (which must be distinct).
    pub async fn update_many<M, F>(
        &self,
        keys: &[String],
        durability: Durability,
        mut change: F,
    ) -> Result<Vec<Option<M>>, RegistryError>
    where
        M: Message + Default + Clone,
        F: FnMut(usize, Option<M>) -> Result<Option<M>, RegistryError>,
    {
        let mut out = Vec::with_capacity(keys.len());
        for (n, chunk) in keys.chunks(BATCH).enumerate() {
            let first = n * BATCH;
            let mut txn = Txn::new().durability(durability);
            let mut next = Vec::with_capacity(chunk.len());
            for (j, key) in chunk.iter().enumerate() {
                let current = self.get::<M>(key).await?;
                let check = match &current {
                    Some((_, rev)) => Check::Revision(*rev),
                    None => Check::Absent,
                };
                let m = change(first + j, current.map(|(m, _)| m))?;
                txn = match &m {
                    Some(m) => txn
                        .check(key.as_str(), check)
                        .put(key.as_str(), m.encode_to_vec()),
                    None => txn.check(key.as_str(), check).delete(key.as_str()),
                };
                next.push(m);
            }
            match self.commit(txn).await {
                Ok(_) => out.extend(next),
                Err(RegistryError::Store(StoreError::Conflict { .. })) => {
                    for (j, key) in chunk.iter().enumerate() {
                        let m = self
                            .update_with(key, durability, |cur| change(first + j, cur))
                            .await?;
                        out.push(m);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

fn decode<M: Message + Default>(key: &str, bytes: &[u8]) -> Result<M, RegistryError> {
    M::decode(bytes).map_err(|e| {
        StoreError::Corrupt {
            key: key.into(),
            message: e.to_string(),
        }
        .into()
    })
}

/// Checks a name used as a registry key and host name: a DNS label (RFC 1123), 1 to 63
/// characters of `a-z`, `0-9` and `-`, not starting or ending with `-`.
pub fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument {
            field: field.into(),
            description: format!(
                "{name:?} is not a valid name: use 1-63 lower-case letters, digits and '-', \
                 not starting or ending with '-'"
            ),
        })
    }
}

/// A registry on an embedded store in `dir`, for unit tests.
#[cfg(test)]
pub(crate) async fn temp_registry(dir: &std::path::Path) -> Registry {
    let path = dir.join("registry.redb");
    let store = crate::store::open(&path.to_string_lossy())
        .await
        .expect("open the store");
    Registry::new(store, Arc::new(crate::clock::SystemClock))
}
