//! The registry's storage edge: one [`Store`] trait, two real backends.
//!
//! - [`embedded::EmbeddedStore`]: a single redb file, no service to run (the default).
//! - [`etcd::EtcdStore`]: etcd, for several coordinators sharing state; with a leader
//!   elected on a lease ([`election`]).
//!
//! Both give the same semantics: every key carries the store revision of its last change
//! (`mod_revision`); a [`Txn`] applies its puts and deletes only if every check holds, all
//! or nothing, and bumps the revision once. Two coordinators racing on the same change
//! therefore cannot both apply it: the loser gets [`StoreError::Conflict`]. A [`Txn`] may
//! be marked [`Durability::Eventual`] (progress that a re-run recomputes): a crash may then
//! lose it, but only together with the eventual changes after it.

pub mod election;
pub mod embedded;
pub mod etcd;

use std::sync::Arc;

use async_trait::async_trait;

/// A stored value with the revision of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The bytes stored.
    pub value: Vec<u8>,
    /// Store revision of the last change of this key (never 0 for a present key).
    pub mod_revision: u64,
}

/// What a transaction requires of a key before it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The key must not exist.
    Absent,
    /// The key must exist with exactly this `mod_revision`.
    Revision(u64),
}

/// How soon a committed change must survive a crash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// On disk (or agreed by a quorum) before the commit returns. The default.
    #[default]
    Immediate,
    /// For progress a re-run recomputes (a clone's phase on its way to running): visible to
    /// readers and revision-checked like any change, but a crash may lose it — together
    /// with the eventual changes after it, never without them, and never an immediate
    /// change (stores keep commit order). The embedded store writes it without waiting for
    /// the disk and makes it durable with the next immediate commit, at the latest
    /// [`EVENTUAL_WINDOW`] later; etcd makes every commit immediate.
    Eventual,
}

/// The longest an [`Durability::Eventual`] change stays at risk while commits continue:
/// an eventual commit that comes later than this after the last durable one is made
/// durable itself.
pub const EVENTUAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// An all-or-nothing change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions on keys; if any fails nothing is written.
    pub checks: Vec<(String, Check)>,
    /// Keys to write.
    pub puts: Vec<(String, Vec<u8>)>,
    /// Keys to delete (absent keys are ignored).
    pub deletes: Vec<String>,
    /// When the change must be on disk.
    pub durability: Durability,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a check.
    pub fn check(mut self, key: impl Into<String>, check: Check) -> Self {
        self.checks.push((key.into(), check));
        self
    }
    /// Adds a put.
    pub fn put(mut self, key: impl Into<String>, value: Vec<u8>) -> Self {
        self.puts.push((key.into(), value));
        self
    }
    /// Adds a delete.
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.deletes.push(key.into());
        self
    }
    /// Sets when the change must be on disk.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }
}

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A check of a transaction failed: someone else changed the key first.
    #[error(
        "conflicting change on {key:?}: expected {expected}, found {found}; re-read and retry"
    )]
    Conflict {
        /// The key whose check failed.
        key: String,
        /// What the transaction expected.
        expected: String,
        /// What the store holds.
        found: String,
    },
    /// The backend is unreachable or failed.
    #[error("{backend} store unavailable: {message}")]
    Unavailable {
        /// `embedded FILE` or `etcd ENDPOINTS`.
        backend: String,
        /// The backend's error.
        message: String,
    },
    /// A `--store` URL that names no backend.
    #[error(
        "unknown store {url:?}: use a file path (embedded store, e.g. /var/lib/napalm/registry.redb) \
         or etcd://host:port[,host:port...]"
    )]
    BadUrl {
        /// The URL given.
        url: String,
    },
    /// A stored record does not decode.
    #[error("record {key:?} in the store is corrupt: {message}")]
    Corrupt {
        /// Its key.
        key: String,
        /// The decoder's error.
        message: String,
    },
}

/// Registry storage with revision-checked transactions.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// One key.
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;
    /// Every key starting with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError>;
    /// Applies `txn` if all its checks hold; returns the new store revision.
    async fn commit(&self, txn: Txn) -> Result<u64, StoreError>;
    /// A human description (`embedded /var/lib/napalm/registry.redb`).
    fn describe(&self) -> String;
}

/// Opens the store a `--store` argument names: `etcd://h1:2379,h2:2379` or a file path
/// (optionally `file://PATH`) for the embedded store.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, None).await
}

/// The etcd endpoints of an `etcd://h1:2379,h2:2379` URL, `https://` with TLS and
/// `http://` without; `None` for a URL of another backend.
pub fn etcd_endpoints(url: &str, tls: bool) -> Option<Vec<String>> {
    let scheme = if tls { "https" } else { "http" };
    url.strip_prefix("etcd://").map(|rest| {
        rest.split(',')
            .filter(|e| !e.is_empty())
            .map(|e| format!("{scheme}://{e}"))
            .collect()
    })
}

/// [`open`], reaching etcd over TLS with `etcd_tls` when given (ignored for the
/// embedded store).
pub async fn open_with(
    url: &str,
    etcd_tls: Option<&etcd::EtcdTls>,
) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(endpoints) = etcd_endpoints(url, etcd_tls.is_some()) {
        if endpoints.is_empty() {
            return Err(StoreError::BadUrl { url: url.into() });
        }
        return Ok(Arc::new(
            etcd::EtcdStore::connect_with(&endpoints, etcd_tls).await?,
        ));
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    if path.is_empty() || path.contains("://") {
        return Err(StoreError::BadUrl { url: url.into() });
    }
    Ok(Arc::new(embedded::EmbeddedStore::open(path.as_ref())?))
}
