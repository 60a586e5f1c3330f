//! The role gate of the TLS listener: every call's verified client certificate says who
//! calls ([`Caller`]) and the method decides whether that caller may. An agent may only
//! register and heartbeat (and renew its own certificate): a stolen or compromised agent
//! host cannot deploy, undeploy or read the cluster. An operator's certificate in the
//! `admin` role may call everything, in the `viewer` role only the read methods of
//! [`crate::service::READ_METHODS`]. A call the gate refuses never reaches the service.
//!
//! rustls already checked the chain in the handshake (the listener asks for a client
//! certificate but lets joining hosts in without one); this gate reads the names.

use napalm_proto::ApiError;
use napalm_trust::id::{role_of, Role};
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use super::serve::PeerAgent;
use super::Trust;
use crate::service::READ_METHODS;

/// Who a call on the TLS listener comes from, as its certificate names it; set on every
/// call the gate lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An enrolled agent, by id.
    Agent(String),
    /// An operator with the admin role, by name.
    Admin(String),
    /// An operator with the viewer role, by name.
    Viewer(String),
    /// No client certificate (a joining host, for the open methods only).
    Anonymous,
}

/// Which methods of one service each kind of caller may call.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Callable without a certificate (enrollment proves itself with its join token).
    pub open: &'static [&'static str],
    /// Callable by agents.
    pub agent: &'static [&'static str],
}

/// `CoordinatorService` on the TLS listener: agents register and heartbeat.
pub const COORDINATOR_RULES: Rules = Rules {
    open: &[],
    agent: &["RegisterAgent", "Heartbeat"],
};

/// `TrustService` on the TLS listener: anyone with a join token enrolls; agents renew.
pub const TRUST_RULES: Rules = Rules {
    open: &["Enroll"],
    agent: &["Renew"],
};

/// Wraps a gRPC service of the TLS listener with the gate.
#[derive(Clone)]
pub struct RequireRole<S> {
    inner: S,
    trust: Trust,
    rules: Rules,
}

impl<S> RequireRole<S> {
    /// `inner` gated by `rules`; `trust` knows the revoked agents.
    pub fn new(inner: S, trust: Trust, rules: Rules) -> Self {
        Self {
            inner,
            trust,
            rules,
        }
    }
}

/// Who presented `certs` (the verified chain, leaf first).
fn caller(certs: Option<&[rustls_pki_types::CertificateDer<'static>]>) -> Result<Caller, Status> {
    let Some(leaf) = certs.and_then(|c| c.first()) else {
        return Ok(Caller::Anonymous);
    };
    match role_of(leaf) {
        Ok(Some(Role::Agent(id))) => Ok(Caller::Agent(id)),
        Ok(Some(Role::Operator(name))) => Ok(Caller::Admin(name)),
        Ok(Some(Role::Viewer(name))) => Ok(Caller::Viewer(name)),
        Ok(Some(Role::Coordinator)) => Err(Status::permission_denied(
            "a coordinator's certificate calls agents, not coordinators",
        )),
        Ok(None) => Err(Status::permission_denied(
            "the client certificate names no napalm identity",
        )),
        Err(e) => Err(Status::unauthenticated(e.to_string())),
    }
}

impl<S> RequireRole<S> {
    /// The caller of `method`, if it may call it.
    fn admit(
        &self,
        method: &str,
        certs: Option<&[rustls_pki_types::CertificateDer<'static>]>,
    ) -> Result<Caller, Status> {
        let who = caller(certs)?;
        if self.rules.open.contains(&method) {
            return Ok(who);
        }
        let allowed = match &who {
            Caller::Admin(_) => true,
            Caller::Viewer(_) => READ_METHODS.contains(&method),
            Caller::Agent(id) => {
                if self.trust.is_revoked(id) {
                    return Err(Status::permission_denied(format!(
                        "agent {id} is revoked: the operator must enroll this host again \
                         under a new id (remove its state directory's tls/ and agent-id, \
                         then napalm-agent --join NEW_TOKEN)"
                    )));
                }
                self.rules.agent.contains(&method)
            }
            Caller::Anonymous => {
                return Err(ApiError::Unauthenticated {
                    description: format!(
                        "{method} needs a client certificate of the cluster CA: an agent \
                         enrolls with napalm-agent --join TOKEN; an operator uses the admin \
                         identity the coordinator writes at start (--trust-admin-dir, \
                         NAPALM_CONFIG=DIR/napalmctl.yaml) or one from napalmctl login"
                    ),
                }
                .into())
            }
        };
        if allowed {
            return Ok(who);
        }
        Err(Status::permission_denied(match &who {
            Caller::Viewer(name) => format!(
                "{method} changes the cluster, and operator {name}'s certificate has the \
                 viewer role, which only reads ({}); log in as an admin",
                READ_METHODS.join(", ")
            ),
            Caller::Agent(id) => format!(
                "agent {id}'s certificate may only call {}, not {method}",
                self.rules.agent.join(", ")
            ),
            _ => format!("{method} is not allowed"),
        }))
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for RequireRole<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for RequireRole<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + tonic::server::NamedService,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(S::NAME))
            .and_then(|p| p.strip_prefix('/'))
            .unwrap_or_default()
            .to_owned();
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs());
        match self.admit(&method, certs.as_deref().map(Vec::as_slice)) {
            Ok(who) => {
                if let Caller::Agent(id) = &who {
                    req.extensions_mut().insert(PeerAgent(id.clone()));
                }
                req.extensions_mut().insert(who);
                Box::pin(self.inner.call(req))
            }
            Err(status) => {
                tracing::info!(%method, reason = %status.message(), "refused on the TLS listener");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
