//! Clones and deployments as records: lookups, and a booted clone reporting in.
//!
//! A clone proves who it is with a per-clone token: HMAC-SHA256 of its name under the
//! coordinator's secret, written into its layer at build time. Nothing per clone needs
//! storing, and one clone's token is useless for another name.

use std::collections::HashMap;

use hmac::{Hmac, KeyInit, Mac};
use napalm_proto::v1::{
    Clone, ClonePhase, Deployment, RegisterCloneRequest, RegisterCloneResponse, Resources,
};
use napalm_proto::ApiError;
use sha2::Sha256;

use super::{check_name, Registry, RegistryError, CLONES, DEPLOYMENTS};
use crate::clock::timestamp;

/// Derives clone tokens from the coordinator's secret.
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl TokenKey {
    /// A key from secret bytes (at least 16).
    pub fn new(secret: &[u8]) -> Result<Self, ApiError> {
        if secret.len() < 16 {
            return Err(ApiError::InvalidArgument {
                field: "secret".into(),
                description: format!(
                    "the token secret has {} bytes; use at least 16",
                    secret.len()
                ),
            });
        }
        Ok(Self(secret.to_vec()))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; this cannot fail.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!())
    }

    /// The token of clone `name`, lower-case hex.
    pub fn token(&self, name: &str) -> String {
        let mut mac = self.mac();
        mac.update(name.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// A 32-byte secret for `purpose`, derived from the key (HMAC with a label no clone
    /// name can take, so no clone's token is ever one of these). Coordinators sharing the
    /// secret file derive the same bytes.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut mac = self.mac();
        mac.update(b"napalm-derived\0");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `token` is clone `name`'s (constant-time comparison).
    pub fn verify(&self, name: &str, token: &str) -> bool {
        let Ok(bytes) = hex::decode(token) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(name.as_bytes());
        mac.verify_slice(&bytes).is_ok()
    }
}

fn clone_key(name: &str) -> String {
    format!("{CLONES}{name}")
}

impl Registry {
    /// Per-deployment clone size, for allocation arithmetic.
    pub async fn deployment_sizes(&self) -> Result<HashMap<String, Resources>, RegistryError> {
        Ok(self
            .list::<Deployment>(DEPLOYMENTS)
            .await?
            .into_iter()
            .filter_map(|d| d.spec.map(|s| (s.name, s.resources.unwrap_or_default())))
            .collect())
    }

    /// Deployments sorted by name (without clones).
    pub async fn list_deployments(&self) -> Result<Vec<Deployment>, RegistryError> {
        self.list(DEPLOYMENTS).await
    }

    /// One deployment with its clones.
    pub async fn get_deployment(&self, name: &str) -> Result<Deployment, RegistryError> {
        let (mut d, _) = self
            .get::<Deployment>(&format!("{DEPLOYMENTS}{name}"))
            .await?
            .ok_or_else(|| ApiError::NotFound {
                kind: "deployment".into(),
                name: name.into(),
            })?;
        d.clones = self.list_clones(name).await?;
        Ok(d)
    }

    /// Clones of one deployment (all when empty), sorted by deployment then index.
    pub async fn list_clones(&self, deployment: &str) -> Result<Vec<Clone>, RegistryError> {
        let mut clones: Vec<Clone> = self
            .list::<Clone>(CLONES)
            .await?
            .into_iter()
            .filter(|c| deployment.is_empty() || c.deployment == deployment)
            .collect();
        clones.sort_by(|a, b| a.deployment.cmp(&b.deployment).then(a.index.cmp(&b.index)));
        Ok(clones)
    }

    /// Every clone record, read once, by deployment (each deployment's sorted by index):
    /// for a reader that looks at every deployment, which would otherwise read every
    /// record once per deployment ([`Self::list_clones`] cannot narrow by key).
    pub async fn clones_by_deployment(&self) -> Result<HashMap<String, Vec<Clone>>, RegistryError> {
        let mut by: HashMap<String, Vec<Clone>> = HashMap::new();
        for c in self.list::<Clone>(CLONES).await? {
            by.entry(c.deployment.clone()).or_default().push(c);
        }
        for clones in by.values_mut() {
            clones.sort_by_key(|c| c.index);
        }
        Ok(by)
    }

    /// One clone.
    pub async fn get_clone(&self, name: &str) -> Result<Clone, RegistryError> {
        self.get::<Clone>(&clone_key(name))
            .await?
            .map(|(c, _)| c)
            .ok_or_else(|| {
                ApiError::NotFound {
                    kind: "clone".into(),
                    name: name.into(),
                }
                .into()
            })
    }

    /// A booted clone reports its addresses and boot timings.
    pub async fn register_clone(
        &self,
        req: RegisterCloneRequest,
        key: &TokenKey,
    ) -> Result<RegisterCloneResponse, RegistryError> {
        check_name("name", &req.name)?;
        if !key.verify(&req.name, &req.token) {
            return Err(ApiError::Unauthenticated {
                description: format!("wrong or missing token for clone {:?}", req.name),
            }
            .into());
        }
        for a in &req.addresses {
            if a.parse::<std::net::IpAddr>().is_err() && !is_cidr(a) {
                return Err(ApiError::InvalidArgument {
                    field: "addresses".into(),
                    description: format!("{a:?} is not an IP address or CIDR"),
                }
                .into());
            }
        }
        let now = timestamp(self.clock().now());
        let name = req.name.clone();
        let updated = self
            .update::<Clone, _>(&clone_key(&name), |cur| {
                let Some(mut c) = cur else {
                    return Err(ApiError::NotFound {
                        kind: "clone".into(),
                        name: name.clone(),
                    }
                    .into());
                };
                // Only the domain the registry placed the clone in may register it: a
                // domain left on another agent (before a move, a crash) is stale.
                if !req.agent_id.is_empty() && req.agent_id != c.agent_id {
                    return Err(ApiError::Conflict {
                        description: format!(
                            "clone {name:?} registered from a domain on agent {:?}, but it \
                             is placed on agent {:?}; that domain is stale and will be removed",
                            req.agent_id, c.agent_id
                        ),
                    }
                    .into());
                }
                c.addresses = req.addresses.clone();
                c.boot = req.boot.clone();
                c.registered_at = Some(now);
                c.phase = ClonePhase::Registered as i32;
                // Up at last: the next failure starts a new count of retries.
                c.failures = 0;
                c.last_error.clear();
                Ok(Some(c))
            })
            .await?;
        tracing::info!(clone = %name, addresses = ?req.addresses, "clone registered");
        Ok(RegisterCloneResponse { clone: updated })
    }
}

fn is_cidr(s: &str) -> bool {
    match s.split_once('/') {
        Some((ip, len)) => {
            let max = match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => 32,
                Ok(std::net::IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            len.parse::<u8>().is_ok_and(|l| l <= max)
        }
        None => false,
    }
}
