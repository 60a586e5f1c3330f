//! `napalm.trust.v1.TrustService`. One implementation, two placements ([`Placement`]): on
//! the TLS listener it enrolls (join token) and renews (the caller's verified client
//! certificate names the agent), and administers join tokens and operator certificates
//! for callers whose certificate names an admin operator (the role gate,
//! [`super::roles`], let them through); on the plain API listener, behind the operator's
//! bearer token, it administers but refuses to enroll or renew (a token secret must not
//! cross in clear).

use napalm_proto::trust_v1::trust_service_server::TrustService;
use napalm_proto::trust_v1::*;
use napalm_trust::id::OperatorRole;
use napalm_trust::{JoinToken, TokenRecord, TrustError};
use tonic::{Request, Response, Status};

use super::roles::Caller;
use super::{store, unix_now, Trust};

/// Lifetime of an operator certificate unless the request asks for another.
pub const OPERATOR_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

type Res<T> = Result<Response<T>, Status>;

/// Where the service is served, which decides what it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The TLS listener: Enroll and Renew.
    Tls,
    /// The API listener (operator bearer token): token administration.
    Api,
}

/// The service over the coordinator's [`Trust`].
#[derive(Clone)]
pub struct TrustServer {
    trust: Trust,
    placement: Placement,
}

impl TrustServer {
    /// The service as served at `placement`.
    pub fn new(trust: Trust, placement: Placement) -> Self {
        Self { trust, placement }
    }

    fn only(&self, placement: Placement) -> Result<(), Status> {
        if self.placement == placement {
            return Ok(());
        }
        Err(Status::failed_precondition(match placement {
            Placement::Tls => {
                "enrollment and renewal are served only on the coordinator's TLS listener \
                 (--trust-listen), never in clear"
            }
            Placement::Api => {
                "join tokens are administered on the coordinator's API listener with the \
                 operator token (napalmctl agent token …)"
            }
        }))
    }

    /// Operator calls: on the API listener the bearer-token layer admitted the caller; on
    /// the TLS listener the role gate must have named an admin operator.
    fn operator<T>(&self, r: &Request<T>) -> Result<(), Status> {
        match (self.placement, r.extensions().get::<Caller>()) {
            (Placement::Api, _) | (Placement::Tls, Some(Caller::Admin(_))) => Ok(()),
            _ => Err(Status::permission_denied(
                "administering join tokens and certificates needs an admin operator's \
                 certificate (napalmctl login) or the operator token on the API listener",
            )),
        }
    }

    /// Whether the registry knows an agent with exactly this id.
    async fn known_agent(&self, agent_id: &str) -> Result<bool, Status> {
        let agents = self
            .trust
            .registry
            .list_agents(&[])
            .await
            .map_err(|e| Status::unavailable(format!("registry: {e}")))?;
        Ok(agents.iter().any(|a| a.id == agent_id))
    }

    fn certificate(&self, issued: napalm_trust::Issued) -> Certificate {
        Certificate {
            cert_pem: issued.cert_pem,
            ca_pem: self.trust.ca_pem().to_owned(),
            not_before: issued.not_before,
            not_after: issued.not_after,
        }
    }
}

fn store_err(e: crate::store::StoreError) -> Status {
    Status::unavailable(format!("registry store: {e}"))
}

fn refused(e: TrustError) -> Status {
    match e {
        TrustError::Refused(r) => Status::permission_denied(r.to_string()),
        TrustError::BadToken(_)
        | TrustError::Parse { .. }
        | TrustError::BadId { .. }
        | TrustError::BadRole { .. } => Status::invalid_argument(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

fn info(r: &TokenRecord, now: i64) -> JoinTokenInfo {
    JoinTokenInfo {
        id: r.id.clone(),
        name: r.name.clone().unwrap_or_default(),
        created_at: r.created_at,
        expires_at: r.expires_at,
        state: r.state(now).as_str().into(),
        used_by: r.used_by.clone().unwrap_or_default(),
        reusable: r.reusable,
        uses: r.uses,
    }
}

/// The agent id the caller's verified client certificate names, or why there is none.
pub(crate) fn peer_agent<T>(r: &Request<T>) -> Result<String, Status> {
    let certs = r.peer_certs().ok_or_else(|| {
        Status::unauthenticated(
            "this call needs the agent's certificate (mutual TLS); enroll first with \
             napalm-agent --join TOKEN",
        )
    })?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate presented"))?;
    napalm_trust::id::agent_id_of(leaf)
        .map_err(|e| Status::unauthenticated(e.to_string()))?
        .ok_or_else(|| Status::permission_denied("the client certificate names no agent"))
}

#[tonic::async_trait]
impl TrustService for TrustServer {
    async fn enroll(&self, r: Request<EnrollRequest>) -> Res<Certificate> {
        self.only(Placement::Tls)?;
        let req = r.into_inner();
        let token = JoinToken::decode(&req.token).map_err(refused)?;
        if self.trust.is_revoked(&req.agent_id) {
            return Err(Status::permission_denied(format!(
                "agent id {} is revoked and cannot enroll again: remove the host's \
                 agent-id and tls/ from its state directory to enroll under a new id",
                req.agent_id
            )));
        }
        let registry = &self.trust.registry;
        // Agents of a DaemonSet enroll at once with one bootstrap token: a lost race on
        // its use count is retried; a single-use token lost to another agent is refused.
        let mut tries = 0;
        let (record, issued) = loop {
            tries += 1;
            let now = unix_now(registry);
            let (mut record, revision) = store::token(registry, &token.id())
                .await
                .map_err(store_err)?
                .ok_or_else(|| refused(napalm_trust::TokenRefused::Unknown.into()))?;
            if record.reusable && self.known_agent(&req.agent_id).await? {
                // A token the hosts of a DaemonSet share must not let one of them take
                // another's identity (and so its clones).
                return Err(Status::permission_denied(format!(
                    "agent id {} is already registered: bootstrap token {} enrolls only \
                     new agents; renew over mutual TLS with the certificate in the host's \
                     state directory, or remove its agent-id and tls/ to enroll under a \
                     new id",
                    req.agent_id, record.id
                )));
            }
            record
                .redeem(&token.secret, &req.agent_id, &req.hostname, now)
                .map_err(|e| refused(e.into()))?;
            // Sign before spending the token: a bad CSR must not burn it.
            let issued = self
                .trust
                .ca
                .issue_agent(&req.csr_pem, &req.agent_id, now, self.trust.cfg.leaf_ttl)
                .map_err(refused)?;
            match store::put_token(registry, &record, Some(revision)).await {
                Ok(()) => break (record, issued),
                Err(crate::store::StoreError::Conflict { .. }) if record.reusable && tries < 16 => {
                    continue
                }
                Err(crate::store::StoreError::Conflict { .. }) => {
                    return Err(Status::permission_denied(format!(
                        "join token {} was used by another agent at the same moment: tokens \
                         are single use; create a new one with `napalmctl agent token create`",
                        record.id
                    )))
                }
                Err(e) => return Err(store_err(e)),
            }
        };
        tracing::info!(agent_id = %req.agent_id, token = %record.id, not_after = issued.not_after, "agent enrolled");
        Ok(Response::new(self.certificate(issued)))
    }

    async fn renew(&self, r: Request<RenewRequest>) -> Res<Certificate> {
        self.only(Placement::Tls)?;
        let agent_id = peer_agent(&r)?;
        if self.trust.is_revoked(&agent_id) {
            return Err(Status::permission_denied(format!(
                "agent {agent_id} is revoked: no new certificate"
            )));
        }
        let now = unix_now(&self.trust.registry);
        let issued = self
            .trust
            .ca
            .issue_agent(
                &r.get_ref().csr_pem,
                &agent_id,
                now,
                self.trust.cfg.leaf_ttl,
            )
            .map_err(refused)?;
        tracing::info!(%agent_id, not_after = issued.not_after, "agent certificate renewed");
        Ok(Response::new(self.certificate(issued)))
    }

    async fn create_join_token(
        &self,
        r: Request<CreateJoinTokenRequest>,
    ) -> Res<CreateJoinTokenResponse> {
        self.operator(&r)?;
        let req = r.into_inner();
        let ttl = match req.ttl_seconds {
            0 => self.trust.cfg.token_ttl,
            s => std::time::Duration::from_secs(s),
        };
        let name = (!req.name.is_empty()).then_some(req.name);
        let now = unix_now(&self.trust.registry);
        let (token, record) = JoinToken::create(
            self.trust.addresses.clone(),
            self.trust.fingerprint(),
            name,
            now,
            ttl,
        )
        .map_err(refused)?;
        store::put_token(&self.trust.registry, &record, None)
            .await
            .map_err(store_err)?;
        tracing::info!(token = %record.id, expires_at = record.expires_at, "join token created");
        Ok(Response::new(CreateJoinTokenResponse {
            token: token.encode(),
            info: Some(info(&record, now)),
        }))
    }

    async fn list_join_tokens(
        &self,
        r: Request<ListJoinTokensRequest>,
    ) -> Res<ListJoinTokensResponse> {
        // A viewer's certificate reads the list too (ids and states, never secrets).
        if !matches!(r.extensions().get::<Caller>(), Some(Caller::Viewer(_))) {
            self.operator(&r)?;
        }
        let now = unix_now(&self.trust.registry);
        let mut tokens = store::tokens(&self.trust.registry)
            .await
            .map_err(store_err)?;
        tokens.sort_by_key(|t| t.created_at);
        Ok(Response::new(ListJoinTokensResponse {
            tokens: tokens.iter().map(|t| info(t, now)).collect(),
        }))
    }

    async fn revoke_join_token(&self, r: Request<RevokeJoinTokenRequest>) -> Res<JoinTokenInfo> {
        self.operator(&r)?;
        let id = r.into_inner().id;
        let registry = &self.trust.registry;
        for _ in 0..4 {
            let (mut record, revision) = store::token(registry, &id)
                .await
                .map_err(store_err)?
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "no join token {id:?}: see `napalmctl agent token list`"
                    ))
                })?;
            let now = unix_now(registry);
            record.revoke(now);
            match store::put_token(registry, &record, Some(revision)).await {
                Ok(()) => {
                    tracing::info!(token = %id, "join token revoked");
                    return Ok(Response::new(info(&record, now)));
                }
                Err(crate::store::StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(Status::aborted("the token kept changing; try again"))
    }

    async fn revoke_agent(&self, r: Request<RevokeAgentRequest>) -> Res<RevokedAgent> {
        self.operator(&r)?;
        let req = r.into_inner();
        let rec = self
            .trust
            .revoke_agent(&req.agent, &req.reason)
            .await
            .map_err(|e| Status::from(napalm_proto::ApiError::from(e)))?;
        Ok(Response::new(RevokedAgent {
            agent_id: rec.agent_id,
            revoked_at: rec.revoked_at,
            reason: rec.reason,
        }))
    }

    async fn issue_operator_certificate(
        &self,
        r: Request<IssueOperatorCertificateRequest>,
    ) -> Res<OperatorCertificate> {
        self.operator(&r)?;
        let req = r.into_inner();
        let role: OperatorRole = req.role.parse().map_err(refused)?;
        let ttl = match req.ttl_seconds {
            0 => OPERATOR_TTL,
            s => std::time::Duration::from_secs(s),
        };
        let issued = self
            .trust
            .issue_operator_csr(&req.csr_pem, &req.name, role, ttl)
            .map_err(refused)?;
        tracing::info!(operator = %req.name, role = role.as_str(), not_after = issued.not_after, "operator certificate issued");
        Ok(Response::new(OperatorCertificate {
            certificate: Some(self.certificate(issued)),
            endpoints: self.trust.addresses.clone(),
        }))
    }
}
