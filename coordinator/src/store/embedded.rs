//! The embedded store: one redb file, no service to run.
//!
//! Layout: table `kv` maps key → 8-byte little-endian `mod_revision` followed by the value;
//! table `meta` holds the store revision under `revision`. Every [`Txn`] is one redb write
//! transaction, so a crash never leaves half a change. [`Durability::Immediate`] ones are
//! committed with redb's immediate durability (fsync before returning);
//! [`Durability::Eventual`] ones with redb's `Durability::None` — no fsync, held by this
//! process until the next immediate commit writes them too (redb keeps commit order, so a
//! crash loses a suffix of eventual commits, nothing else). An eventual commit more than
//! [`EVENTUAL_WINDOW`] after the last durable one is made immediate, and closing the store
//! makes pending ones durable. redb locks the file: a second coordinator on the same file
//! fails to open it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Check, Durability, Store, StoreError, Txn, Versioned, EVENTUAL_WINDOW};

const KV: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// A registry in one redb file.
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    /// When the last immediate commit returned (bounds how long eventual ones stay at risk).
    last_durable: Arc<Mutex<Instant>>,
}

impl EmbeddedStore {
    /// Opens or creates the store at `path` (parent directories are created).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let unavailable = |e: &dyn std::fmt::Display| StoreError::Unavailable {
            backend: format!("embedded {}", path.display()),
            message: e.to_string(),
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| unavailable(&e))?;
        }
        let db = Database::create(path).map_err(|e| unavailable(&e))?;
        // Make sure both tables exist so readers never see "table does not exist".
        let w = db.begin_write().map_err(|e| unavailable(&e))?;
        {
            w.open_table(KV).map_err(|e| unavailable(&e))?;
            w.open_table(META).map_err(|e| unavailable(&e))?;
        }
        w.commit().map_err(|e| unavailable(&e))?;
        Ok(Self {
            db: Arc::new(db),
            path: path.to_path_buf(),
            last_durable: Arc::new(Mutex::new(Instant::now())),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable {
            backend: self.describe(),
            message: e.to_string(),
        }
    }

    fn decode(key: &str, raw: &[u8]) -> Result<Versioned, StoreError> {
        let (rev, value) = raw.split_at_checked(8).ok_or_else(|| StoreError::Corrupt {
            key: key.into(),
            message: format!("{} bytes, shorter than its revision header", raw.len()),
        })?;
        let mut r = [0u8; 8];
        r.copy_from_slice(rev);
        Ok(Versioned {
            value: value.to_vec(),
            mod_revision: u64::from_le_bytes(r),
        })
    }

    fn get_sync(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(KV).map_err(|e| self.err(e))?;
        match t.get(key).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(Self::decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    fn list_sync(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(KV).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.range(prefix..).map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_owned(), Self::decode(key, v.value())?));
        }
        Ok(out)
    }

    /// Whether this commit may skip the fsync.
    fn lazy(&self, durability: Durability) -> bool {
        durability == Durability::Eventual
            && self
                .last_durable
                .lock()
                .is_ok_and(|t| t.elapsed() < EVENTUAL_WINDOW)
    }

    fn commit_sync(&self, txn: Txn) -> Result<u64, StoreError> {
        let mut w = self.db.begin_write().map_err(|e| self.err(e))?;
        // Decided after begin_write: the write lock orders this against other commits.
        let lazy = self.lazy(txn.durability);
        if lazy {
            w.set_durability(redb::Durability::None)
                .map_err(|e| self.err(e))?;
        }
        let revision = {
            let mut kv = w.open_table(KV).map_err(|e| self.err(e))?;
            for (key, check) in &txn.checks {
                let found = match kv.get(key.as_str()).map_err(|e| self.err(e))? {
                    Some(v) => Some(Self::decode(key, v.value())?.mod_revision),
                    None => None,
                };
                let ok = match (check, found) {
                    (Check::Absent, None) => true,
                    (Check::Revision(want), Some(have)) => *want == have,
                    _ => false,
                };
                if !ok {
                    return Err(StoreError::Conflict {
                        key: key.clone(),
                        expected: describe_check(check),
                        found: found.map_or("absent".into(), |r| format!("revision {r}")),
                    });
                }
            }
            let mut meta = w.open_table(META).map_err(|e| self.err(e))?;
            let current = meta
                .get("revision")
                .map_err(|e| self.err(e))?
                .map_or(0, |v| v.value());
            let revision = current + 1;
            for (key, value) in &txn.puts {
                let mut raw = Vec::with_capacity(8 + value.len());
                raw.extend_from_slice(&revision.to_le_bytes());
                raw.extend_from_slice(value);
                kv.insert(key.as_str(), raw.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            for key in &txn.deletes {
                kv.remove(key.as_str()).map_err(|e| self.err(e))?;
            }
            meta.insert("revision", revision).map_err(|e| self.err(e))?;
            revision
        };
        w.commit().map_err(|e| self.err(e))?;
        if !lazy {
            if let Ok(mut t) = self.last_durable.lock() {
                *t = Instant::now();
            }
        }
        Ok(revision)
    }
}

/// How a check reads in an error message.
pub(crate) fn describe_check(check: &Check) -> String {
    match check {
        Check::Absent => "absent".into(),
        Check::Revision(r) => format!("revision {r}"),
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let this = self.clone_handle();
        let key = key.to_owned();
        blocking(move || this.get_sync(&key)).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let this = self.clone_handle();
        let prefix = prefix.to_owned();
        blocking(move || this.list_sync(&prefix)).await
    }
    async fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        let this = self.clone_handle();
        blocking(move || this.commit_sync(txn)).await
    }
    fn describe(&self) -> String {
        format!("embedded {}", self.path.display())
    }
}

impl EmbeddedStore {
    fn clone_handle(&self) -> Self {
        Self {
            db: Arc::clone(&self.db),
            path: self.path.clone(),
            last_durable: Arc::clone(&self.last_durable),
        }
    }
}

/// redb is synchronous: run it off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable {
            backend: "embedded".into(),
            message: format!("store task failed: {e}"),
        })?
}
