//! Trust records in the registry store: the CA under [`CA_KEY`] (certificate and key,
//! JSON; the key never leaves the store but to sign) and join token records under
//! [`TOKENS`]`<id>` (JSON [`napalm_trust::TokenRecord`]: hashes, never secrets). Changes
//! are revision-checked like every registry change, so a token redeemed by two agents at
//! once is redeemed by one.

use napalm_trust::{ClusterCa, TokenRecord};
use serde::{Deserialize, Serialize};

use super::TrustSetupError;
use crate::registry::Registry;
use crate::store::{Check, StoreError, Txn};

/// Key of the cluster CA.
pub const CA_KEY: &str = "/napalm/trust/ca";
/// Key prefix of join token records.
pub const TOKENS: &str = "/napalm/trust/tokens/";
/// Key prefix of revoked agent identities.
pub const REVOKED: &str = "/napalm/trust/revoked/";

/// A revoked agent identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// The agent id.
    pub agent_id: String,
    /// When, Unix seconds.
    pub revoked_at: i64,
    /// Why (the operator's words).
    pub reason: String,
}

/// Every revoked agent identity.
pub async fn revoked(registry: &Registry) -> Result<Vec<Revoked>, StoreError> {
    Ok(registry
        .store()
        .list(REVOKED)
        .await?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v.value).ok())
        .collect())
}

/// Records `r` (a second revocation keeps the first record).
pub async fn put_revoked(registry: &Registry, r: &Revoked) -> Result<Revoked, StoreError> {
    let key = format!("{REVOKED}{}", r.agent_id);
    if let Some(v) = registry.store().get(&key).await? {
        if let Ok(first) = serde_json::from_slice(&v.value) {
            return Ok(first);
        }
    }
    let value = serde_json::to_vec(r).unwrap_or_default();
    match registry
        .store()
        .commit(Txn::new().check(key.clone(), Check::Absent).put(key, value))
        .await
    {
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(r.clone()),
        Err(e) => Err(e),
    }
}

#[derive(Serialize, Deserialize)]
struct StoredCa {
    cert_pem: String,
    key_pem: String,
}

/// The CA in the registry; at first start the operator's files (when given) or a new one,
/// stored only if no other coordinator stored one first.
pub async fn load_or_create_ca(
    registry: &Registry,
    files: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> Result<ClusterCa, TrustSetupError> {
    let store = registry.store();
    for _ in 0..3 {
        if let Some(v) = store.get(CA_KEY).await.map_err(TrustSetupError::Store)? {
            let s: StoredCa = serde_json::from_slice(&v.value).map_err(|e| {
                TrustSetupError::Ca(napalm_trust::TrustError::Parse {
                    what: "stored CA",
                    detail: e.to_string(),
                })
            })?;
            return ClusterCa::from_pem(&s.cert_pem, &s.key_pem).map_err(TrustSetupError::Ca);
        }
        let ca = match files {
            Some((cert, key)) => {
                let read = |p: &std::path::PathBuf| {
                    std::fs::read_to_string(p).map_err(|source| TrustSetupError::CaFile {
                        path: p.clone(),
                        source,
                    })
                };
                ClusterCa::from_pem(&read(cert)?, &read(key)?).map_err(TrustSetupError::Ca)?
            }
            None => {
                // A name of its own, so two clusters' CAs are told apart by name too.
                let tag = napalm_trust::random_bytes(4).map_err(TrustSetupError::Ca)?;
                let name = format!("napalm cluster CA {}", hex::encode(tag));
                ClusterCa::generate(&name, super::unix_now(registry))
                    .map_err(TrustSetupError::Ca)?
            }
        };
        let value = serde_json::to_vec(&StoredCa {
            cert_pem: ca.cert_pem().to_owned(),
            key_pem: ca.key_pem(),
        })
        .unwrap_or_default();
        match store
            .commit(Txn::new().check(CA_KEY, Check::Absent).put(CA_KEY, value))
            .await
        {
            Ok(_) => return Ok(ca),
            // Another coordinator stored its CA first: use that one.
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(TrustSetupError::Store(e)),
        }
    }
    Err(TrustSetupError::Store(StoreError::Conflict {
        key: CA_KEY.into(),
        expected: "a CA".into(),
        found: "none after three tries".into(),
    }))
}

/// A token record and its revision.
pub async fn token(
    registry: &Registry,
    id: &str,
) -> Result<Option<(TokenRecord, u64)>, StoreError> {
    let Some(v) = registry.store().get(&format!("{TOKENS}{id}")).await? else {
        return Ok(None);
    };
    Ok(serde_json::from_slice(&v.value)
        .ok()
        .map(|r| (r, v.mod_revision)))
}

/// Every token record.
pub async fn tokens(registry: &Registry) -> Result<Vec<TokenRecord>, StoreError> {
    Ok(registry
        .store()
        .list(TOKENS)
        .await?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v.value).ok())
        .collect())
}

/// Stores `record`, which must still be at `revision` (`None`: must be new).
pub async fn put_token(
    registry: &Registry,
    record: &TokenRecord,
    revision: Option<u64>,
) -> Result<(), StoreError> {
    let key = format!("{TOKENS}{}", record.id);
    let check = match revision {
        Some(r) => Check::Revision(r),
        None => Check::Absent,
    };
    let value = serde_json::to_vec(record).unwrap_or_default();
    registry
        .store()
        .commit(Txn::new().check(key.clone(), check).put(key, value))
        .await
        .map(|_| ())
}

/// Records the bootstrap token in `path` as a reusable token unless a record of it exists
/// (one a coordinator stored before, or an operator revoked: a revocation stays). The
/// token must pin `fingerprint`, this cluster's CA.
pub async fn ensure_bootstrap(
    registry: &Registry,
    path: &std::path::Path,
    fingerprint: &str,
) -> Result<(), TrustSetupError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrustSetupError::BootstrapFile {
        path: path.to_owned(),
        source,
    })?;
    let token = napalm_trust::JoinToken::decode(&text).map_err(|source| {
        TrustSetupError::BootstrapToken {
            path: path.to_owned(),
            source,
        }
    })?;
    if token.ca_fingerprint != fingerprint {
        return Err(TrustSetupError::BootstrapForeignCa {
            path: path.to_owned(),
            pinned: token.ca_fingerprint,
            ours: fingerprint.to_owned(),
        });
    }
    let record = TokenRecord::bootstrap(&token, super::unix_now(registry));
    match put_token(registry, &record, None).await {
        Ok(()) => {
            tracing::info!(token = %record.id, expires_at = record.expires_at, "bootstrap join token recorded");
            Ok(())
        }
        Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(TrustSetupError::Store(e)),
    }
}
