//! Request-id idempotency: a mutating call carrying a request id runs once; a retry with
//! the same id gets the first result back (persisted, so it survives an agent restart).
//! Reusing an id for another operation is a conflict.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::durable;
use crate::error::{AgentError, Result};

/// Per-key async locks (domain names, request ids).
#[derive(Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    fn entry(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 4096 {
            map.retain(|_, v| Arc::strong_count(v) > 1);
        }
        Arc::clone(map.entry(key.to_owned()).or_default())
    }

    /// Locks `key` until the guard drops.
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.entry(key).lock_owned().await
    }

    /// Locks `key` if nobody holds it.
    pub fn try_lock(&self, key: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.entry(key).try_lock_owned().ok()
    }
}

/// How long a completed request's result is kept for a retry: retries come within
/// minutes, so a week is plenty.
pub const FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The persisted log of completed requests.
pub struct RequestLog {
    dir: PathBuf,
    locks: KeyedLocks,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    op: String,
    result: serde_json::Value,
}

impl RequestLog {
    /// Opens (creating) the log directory and forgets records older than [`FORGET_AFTER`]
    /// by `clock`.
    pub fn open(dir: &Path, clock: &dyn Clock) -> Result<Self> {
        durable::create_dir(dir)?;
        let now = clock.now();
        for e in std::fs::read_dir(dir)
            .map_err(|e| AgentError::io(dir, e))?
            .flatten()
        {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > FORGET_AFTER);
            if old {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            locks: KeyedLocks::default(),
        })
    }

    /// Runs `f` once for `(id, op)`; without an id, always runs it.
    pub async fn once<T, F>(&self, id: Option<&str>, op: &str, f: F) -> Result<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
        F: Future<Output = Result<T>>,
    {
        let Some(id) = id.filter(|i| !i.is_empty()) else {
            return f.await;
        };
        if id.len() > 128 {
            return Err(AgentError::invalid("request_id", "longer than 128 bytes"));
        }
        let _g = self.locks.lock(id).await;
        let path = self.dir.join(hex::encode(Sha256::digest(id.as_bytes())));
        if let Ok(b) = std::fs::read(&path) {
            if let Ok(e) = serde_json::from_slice::<Entry>(&b) {
                if e.op != op {
                    return Err(AgentError::RequestIdReused(id.to_owned()));
                }
                if let Ok(v) = serde_json::from_value(e.result) {
                    tracing::debug!(
                        request_id = id,
                        op,
                        "replaying the result of a retried request"
                    );
                    return Ok(v);
                }
            }
        }
        let v = f.await?;
        let e = Entry {
            op: op.to_owned(),
            result: serde_json::to_value(&v)
                .map_err(|e| AgentError::io(&path, std::io::Error::other(e)))?,
        };
        let data =
            serde_json::to_vec(&e).map_err(|e| AgentError::io(&path, std::io::Error::other(e)))?;
        durable::atomic_write(&path, &data)?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SystemClock};

    #[tokio::test]
    async fn a_retry_is_replayed_until_the_record_is_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = RequestLog::open(dir.path(), &SystemClock).expect("open");
        let first: u32 = log
            .once(Some("r1"), "create", async { Ok(1) })
            .await
            .expect("1");
        let again: u32 = log
            .once(Some("r1"), "create", async { Ok(2) })
            .await
            .expect("2");
        assert_eq!((first, again), (1, 1), "the retry gets the first result");
        assert!(matches!(
            log.once::<u32, _>(Some("r1"), "delete", async { Ok(3) })
                .await,
            Err(AgentError::RequestIdReused(_))
        ));

        // Reopened six days later (an agent restart): still replayed.
        let clock = ManualClock::at(SystemClock.unix_ms());
        clock.advance(std::time::Duration::from_secs(6 * 24 * 3600));
        let log = RequestLog::open(dir.path(), &clock).expect("reopen");
        let v: u32 = log
            .once(Some("r1"), "create", async { Ok(4) })
            .await
            .expect("4");
        assert_eq!(v, 1);

        // Reopened past FORGET_AFTER: forgotten, so the id runs again.
        clock.advance(FORGET_AFTER);
        let log = RequestLog::open(dir.path(), &clock).expect("reopen");
        let v: u32 = log
            .once(Some("r1"), "create", async { Ok(5) })
            .await
            .expect("5");
        assert_eq!(v, 5);
    }
}
