//! Join tokens: what an operator hands a new host so it can enroll.
//!
//! The printed form is `napalm-join-v1.<base64url(JSON)>`; the JSON carries the
//! coordinator addresses to dial, the CA fingerprint to pin on that first connection, a
//! 32-byte secret and the expiry. The coordinator keeps only a [`TokenRecord`]: the
//! SHA-256 of the secret (never the secret), the expiry, and whether the token was used or
//! revoked. A token is single use: [`TokenRecord::redeem`] marks it used by the agent that
//! presented it, and every later attempt is refused with a message saying what to do.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Result, TrustError};

/// Prefix of the printed token.
pub const PREFIX: &str = "napalm-join-v1.";
/// Default lifetime of a join token.
pub const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// Bytes of secret in a token.
const SECRET_BYTES: usize = 32;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A decoded join token, as the joining host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Coordinator endpoints serving enrollment (`host:port`), tried in order.
    #[serde(rename = "a")]
    pub addresses: Vec<String>,
    /// Hex SHA-256 of the CA certificate's DER: the only CA the first connection accepts.
    #[serde(rename = "f")]
    pub ca_fingerprint: String,
    /// The secret, base64url.
    #[serde(rename = "s")]
    pub secret: String,
    /// Expiry, Unix seconds.
    #[serde(rename = "e")]
    pub expires_at: i64,
}

impl JoinToken {
    /// A fresh token with a random secret, and the record the coordinator stores for it.
    pub fn create(
        addresses: Vec<String>,
        ca_fingerprint: String,
        name: Option<String>,
        now: i64,
        ttl: std::time::Duration,
    ) -> Result<(Self, TokenRecord)> {
        let secret = B64.encode(crate::random_bytes(SECRET_BYTES)?);
        let expires_at = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        let token = Self {
            addresses,
            ca_fingerprint,
            secret,
            expires_at,
        };
        let hash = hash_secret(&token.secret);
        let record = TokenRecord {
            id: id_of_hash(&hash),
            hash,
            name,
            created_at: now,
            expires_at,
            used_at: None,
            used_by: None,
            revoked_at: None,
            reusable: false,
            uses: 0,
        };
        Ok((token, record))
    }

    /// The printed form, `napalm-join-v1.…`.
    pub fn encode(&self) -> String {
        // Serializing a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{PREFIX}{}", B64.encode(json))
    }

    /// Reads a printed token (surrounding white space is ignored).
    pub fn decode(text: &str) -> Result<Self> {
        let body = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| TrustError::BadToken(format!("it does not start with {PREFIX}")))?;
        let json = B64
            .decode(body)
            .map_err(|e| TrustError::BadToken(format!("base64: {e}")))?;
        let t: Self = serde_json::from_slice(&json)
            .map_err(|e| TrustError::BadToken(format!("contents: {e}")))?;
        if t.addresses.is_empty() {
            return Err(TrustError::BadToken(
                "it names no coordinator address".into(),
            ));
        }
        if t.ca_fingerprint.len() != 64 || hex::decode(&t.ca_fingerprint).is_err() {
            return Err(TrustError::BadToken(
                "its CA fingerprint is not SHA-256 hex".into(),
            ));
        }
        Ok(t)
    }

    /// The id of this token's record (what `napalmctl agent token list` shows).
    pub fn id(&self) -> String {
        id_of_hash(&hash_secret(&self.secret))
    }
}

/// Hex SHA-256 of a token secret: what the coordinator stores.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A token's id: the first 16 hex digits of its hash (not enough to guess the secret,
/// enough to name it in listings and `revoke`).
pub fn id_of_hash(hash: &str) -> String {
    hash.chars().take(16).collect()
}

/// What the coordinator keeps about a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Short id (prefix of the hash).
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    /// Host name the token was made for, if the operator gave one; the enrolling agent
    /// must report that host name.
    pub name: Option<String>,
    /// When it was created, Unix seconds.
    pub created_at: i64,
    /// When it expires, Unix seconds.
    pub expires_at: i64,
    /// When it was used, if it was.
    pub used_at: Option<i64>,
    /// The agent id that used it.
    pub used_by: Option<String>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
    /// A bootstrap token ([`TokenRecord::bootstrap`]): it enrolls any number of new
    /// agents until it expires or is revoked, like kubeadm's bootstrap tokens. What a
    /// DaemonSet's hosts share; each still gets its own key and certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reusable: bool,
    /// How many agents a bootstrap token enrolled (`used_by` names the last).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uses: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A token's state at a given time, for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// May be used.
    Active,
    /// Already used (single use).
    Used,
    /// Past its expiry.
    Expired,
    /// Revoked by an operator.
    Revoked,
}

impl TokenState {
    /// Lower-case word for listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Used => "used",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

/// Why a token may not enroll; each message says what the operator should do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefused {
    /// No record has this secret (never issued here, or deleted).
    #[error(
        "join token unknown to this coordinator: create one with \
         `napalmctl agent token create` on this cluster"
    )]
    Unknown,
    /// Past its expiry.
    #[error(
        "join token {id} expired at {expires_at} (Unix time): create a new one with \
         `napalmctl agent token create [--ttl 15m]`"
    )]
    Expired {
        /// The token's id.
        id: String,
        /// Its expiry.
        expires_at: i64,
    },
    /// Already used.
    #[error(
        "join token {id} was already used (by agent {used_by}): tokens are single use; \
         create a new one with `napalmctl agent token create`"
    )]
    Used {
        /// The token's id.
        id: String,
        /// The agent that used it.
        used_by: String,
    },
    /// Revoked.
    #[error(
        "join token {id} was revoked: ask the operator for a new one \
         (`napalmctl agent token create`)"
    )]
    Revoked {
        /// The token's id.
        id: String,
    },
    /// Made for another host.
    #[error(
        "join token {id} is for host {expected:?}, not {found:?}: use the token made for \
         this host, or create one with `napalmctl agent token create --name {found}`"
    )]
    WrongHost {
        /// The token's id.
        id: String,
        /// The host it was made for.
        expected: String,
        /// The host that presented it.
        found: String,
    },
}

impl TokenRecord {
    /// The record of a bootstrap token made outside the coordinator (the Helm chart
    /// renders one into a Secret its agents share): reusable until `token` expires or
    /// is revoked. The caller checks the token pins this cluster's CA.
    pub fn bootstrap(token: &JoinToken, now: i64) -> Self {
        let hash = hash_secret(&token.secret);
        Self {
            id: id_of_hash(&hash),
            hash,
            name: None,
            created_at: now,
            expires_at: token.expires_at,
            used_at: None,
            used_by: None,
            revoked_at: None,
            reusable: true,
            uses: 0,
        }
    }

    /// The state at `now`. Revoked wins over used, used over expired.
    pub fn state(&self, now: i64) -> TokenState {
        if self.revoked_at.is_some() {
            TokenState::Revoked
        } else if self.used_at.is_some() {
            TokenState::Used
        } else if now >= self.expires_at {
            TokenState::Expired
        } else {
            TokenState::Active
        }
    }

    /// Whether `secret` is this token's (constant-time comparison of the hashes).
    pub fn matches(&self, secret: &str) -> bool {
        let h = hash_secret(secret);
        h.as_bytes().ct_eq(self.hash.as_bytes()).into()
    }

    /// Checks the token may enroll agent `agent_id` on host `host` at `now` and, if so,
    /// marks it used by that agent (the caller stores the record back, revision-checked,
    /// so two agents racing on one token cannot both win).
    pub fn redeem(
        &mut self,
        secret: &str,
        agent_id: &str,
        host: &str,
        now: i64,
    ) -> Result<(), TokenRefused> {
        if !self.matches(secret) {
            return Err(TokenRefused::Unknown);
        }
        let id = self.id.clone();
        match self.state(now) {
            TokenState::Revoked => return Err(TokenRefused::Revoked { id }),
            TokenState::Used => {
                return Err(TokenRefused::Used {
                    id,
                    used_by: self.used_by.clone().unwrap_or_default(),
                })
            }
            TokenState::Expired => {
                return Err(TokenRefused::Expired {
                    id,
                    expires_at: self.expires_at,
                })
            }
            TokenState::Active => {}
        }
        if let Some(expected) = &self.name {
            if expected != host {
                return Err(TokenRefused::WrongHost {
                    id,
                    expected: expected.clone(),
                    found: host.to_owned(),
                });
            }
        }
        if self.reusable {
            self.uses = self.uses.saturating_add(1);
        } else {
            self.used_at = Some(now);
        }
        self.used_by = Some(agent_id.to_owned());
        Ok(())
    }

    /// Revokes the token (idempotent: the first revocation time is kept).
    pub fn revoke(&mut self, now: i64) {
        self.revoked_at.get_or_insert(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000;
    const FP: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn fresh(name: Option<&str>) -> (JoinToken, TokenRecord) {
        JoinToken::create(
            vec!["127.0.0.1:8490".into()],
            FP.into(),
            name.map(str::to_owned),
            NOW,
            DEFAULT_TTL,
        )
        .expect("token")
    }

    #[test]
    fn a_token_round_trips_and_its_record_keeps_no_secret() {
        let (t, r) = fresh(None);
        let text = t.encode();
        assert!(text.starts_with("napalm-join-v1."));
        let back = JoinToken::decode(&format!("  {text}\n")).expect("decodes");
        assert_eq!(back, t);
        assert_eq!(back.id(), r.id);
        assert_eq!(r.expires_at, NOW + 900);
        let stored = serde_json::to_string(&r).expect("json");
        assert!(!stored.contains(&t.secret), "{stored}");
        assert_eq!(r.state(NOW), TokenState::Active);
    }

    #[test]
    fn garbage_is_not_a_token() {
        for bad in [
            "",
            "hello",
            "napalm-join-v1.",
            "napalm-join-v1.!!!",
            "napalm-join-v1.e30",
        ] {
            let e = JoinToken::decode(bad).expect_err(bad);
            assert!(
                e.to_string().contains("napalmctl agent token create"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_token_is_single_use() {
        let (t, mut r) = fresh(None);
        r.redeem(&t.secret, "agent1", "h", NOW + 1)
            .expect("first use");
        assert_eq!(r.state(NOW + 2), TokenState::Used);
        let e = r
            .redeem(&t.secret, "agent2", "h", NOW + 2)
            .expect_err("reuse");
        assert!(matches!(e, TokenRefused::Used { ref used_by, .. } if used_by == "agent1"));
        assert!(e.to_string().contains("single use"), "{e}");
    }

    #[test]
    fn a_bootstrap_token_enrolls_many_until_it_expires_or_is_revoked() {
        let (t, _) = fresh(None);
        let mut r = TokenRecord::bootstrap(&t, NOW);
        assert_eq!((r.id.clone(), r.expires_at), (t.id(), t.expires_at));
        for (i, agent) in ["a1", "a2", "a3"].into_iter().enumerate() {
            r.redeem(&t.secret, agent, "h", NOW + 1 + i as i64)
                .expect("reusable");
        }
        assert_eq!((r.uses, r.used_by.as_deref()), (3, Some("a3")));
        assert_eq!(r.state(NOW + 5), TokenState::Active);
        // A record written before the field existed reads as single use.
        let old: TokenRecord =
            serde_json::from_str(&serde_json::to_string(&fresh(None).1).expect("json"))
                .expect("parse");
        assert!(!old.reusable);
        let e = r
            .redeem(&t.secret, "a4", "h", t.expires_at)
            .expect_err("expired");
        assert!(matches!(e, TokenRefused::Expired { .. }), "{e}");
        r.revoke(NOW + 6);
        let e = r
            .redeem(&t.secret, "a5", "h", NOW + 7)
            .expect_err("revoked");
        assert!(matches!(e, TokenRefused::Revoked { .. }), "{e}");
    }

    #[test]
    fn an_expired_token_is_refused() {
        let (t, mut r) = fresh(None);
        let e = r
            .redeem(&t.secret, "a", "h", NOW + 900)
            .expect_err("expired");
        assert!(matches!(e, TokenRefused::Expired { .. }), "{e}");
        assert!(e.to_string().contains("create a new one"), "{e}");
        assert_eq!(r.used_at, None);
    }

    #[test]
    fn a_revoked_token_is_refused() {
        let (t, mut r) = fresh(None);
        r.revoke(NOW + 1);
        r.revoke(NOW + 5);
        assert_eq!(r.revoked_at, Some(NOW + 1));
        let e = r.redeem(&t.secret, "a", "h", NOW + 2).expect_err("revoked");
        assert!(matches!(e, TokenRefused::Revoked { .. }), "{e}");
        assert_eq!(r.state(NOW + 2), TokenState::Revoked);
    }

    #[test]
    fn a_wrong_secret_or_host_is_refused() {
        let (t, mut r) = fresh(Some("host1"));
        let (other, _) = fresh(None);
        assert_eq!(
            r.redeem(&other.secret, "a", "host1", NOW),
            Err(TokenRefused::Unknown)
        );
        let e = r.redeem(&t.secret, "a", "host2", NOW).expect_err("host");
        assert!(matches!(e, TokenRefused::WrongHost { .. }), "{e}");
        r.redeem(&t.secret, "a", "host1", NOW).expect("right host");
    }
}
