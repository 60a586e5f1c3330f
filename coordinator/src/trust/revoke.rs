//! Revoked agent identities. Certificates are short-lived, so revocation is a list the
//! coordinator checks rather than a CRL every party fetches: the TLS listener refuses
//! every call of a revoked agent ([`super::roles`]), renewal and
//! re-enrollment under its id are refused, and the agent is marked revoked (state
//! `AGENT_STATE_REVOKED` with the operator's reason, and the label `napalm.trust=revoked`)
//! so `napalmctl agents` shows it, the scheduler places nothing on it and the deploy
//! pipeline no longer dials it. The list lives in the registry
//! (`/napalm/trust/revoked/<id>`, shared by coordinators on etcd) and each coordinator
//! re-reads it every [`REFRESH`].

use std::time::Duration;

use napalm_proto::v1::{Agent, AgentState};

use super::store::{self, Revoked};
use super::{unix_now, Trust};
use crate::registry::RegistryError;

/// How often the in-memory list is re-read from the registry.
pub const REFRESH: Duration = Duration::from_secs(2);

/// The label a revoked agent carries.
pub const LABEL: (&str, &str) = ("napalm.trust", "revoked");

impl Trust {
    /// Whether agent `id` is revoked (as of the last refresh or local revocation).
    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// Re-reads the revoked list from the registry.
    pub async fn refresh_revoked(&self) -> Result<(), crate::store::StoreError> {
        let all = store::revoked(&self.registry).await?;
        let mut set = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        set.clear();
        set.extend(all.into_iter().map(|r| r.agent_id));
        Ok(())
    }

    /// Revokes `agent` (an id, or a name the registry knows): recorded, refused at once by
    /// this coordinator, marked revoked with `reason` and labelled.
    pub async fn revoke_agent(&self, agent: &str, reason: &str) -> Result<Revoked, RegistryError> {
        let known = self.registry.get_agent(agent).await.ok();
        let agent_id = match &known {
            Some(a) => a.id.clone(),
            None => {
                napalm_trust::id::check_agent_id(agent).map_err(|e| {
                    napalm_proto::ApiError::NotFound {
                        kind: "agent".into(),
                        name: format!("{agent} ({e})"),
                    }
                })?;
                agent.to_owned()
            }
        };
        let record = store::put_revoked(
            &self.registry,
            &Revoked {
                agent_id: agent_id.clone(),
                revoked_at: unix_now(&self.registry),
                reason: reason.to_owned(),
            },
        )
        .await?;
        self.revoked
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(agent_id.clone());
        if known.is_some() {
            let key = format!("{}{agent_id}", crate::registry::AGENTS);
            self.registry
                .update::<Agent, _>(&key, |cur| {
                    Ok(cur.map(|mut a| {
                        a.state = AgentState::Revoked as i32;
                        a.state_reason = if reason.is_empty() {
                            "revoked by an operator".into()
                        } else {
                            reason.to_owned()
                        };
                        a.labels.insert(LABEL.0.into(), LABEL.1.into());
                        a
                    }))
                })
                .await?;
        }
        tracing::warn!(%agent_id, %reason, "agent identity revoked");
        Ok(record)
    }
}
