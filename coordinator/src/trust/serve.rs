//! The TLS listener: `TrustService` (enroll with a join token, renew with the agent's
//! certificate, administration for admin operators) and `CoordinatorService` for
//! enrolled agents and operators, every call behind the role gate ([`super::roles`]):
//! rustls checks the chain in the handshake, the gate reads who the certificate names and
//! what that caller may call, and hands an agent's id to the service as a [`PeerAgent`]
//! extension so `RegisterAgent` and `Heartbeat` can refuse an agent speaking for another.

use std::net::SocketAddr;
use std::sync::Arc;

use napalm_proto::trust_v1::trust_service_server::TrustServiceServer;
use napalm_proto::v1::coordinator_service_server::CoordinatorServiceServer;
use napalm_trust::tls::{self, ClientAuth};
use tokio::task::JoinHandle;

use super::roles::{RequireRole, COORDINATOR_RULES, TRUST_RULES};
use super::service::{Placement, TrustServer};
use super::{Trust, TrustConfig, TrustSetupError};
use crate::registry::Registry;
use crate::service::Coordinator;

/// The agent id a caller's verified certificate names, set on requests that arrived over
/// the TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAgent(pub String);

/// Checks that a request naming agent `claimed` comes from that agent when it came over
/// the TLS listener (requests over the plain listener carry no [`PeerAgent`]).
#[allow(clippy::result_large_err)]
pub fn check_peer<T>(r: &tonic::Request<T>, claimed: &str) -> Result<(), tonic::Status> {
    match r.extensions().get::<PeerAgent>() {
        Some(PeerAgent(id)) if id != claimed => Err(tonic::Status::permission_denied(format!(
            "this connection's certificate names agent {id:?}, not {claimed:?}"
        ))),
        _ => Ok(()),
    }
}

/// The running TLS listener.
pub struct TrustListener {
    /// The trust state (CA, identity) shared with the API listener's token service.
    pub trust: Trust,
    /// The bound address.
    pub addr: SocketAddr,
    /// The server task.
    pub task: JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl TrustListener {
    /// Stops accepting connections.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for TrustListener {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

/// Binds `cfg.listen`, sets up the CA and serves. `coordinator` is the same service the
/// API listener serves.
pub async fn start(
    registry: Registry,
    cfg: TrustConfig,
    coordinator: Coordinator,
) -> Result<TrustListener, StartError> {
    bind(registry, cfg).await?.serve(coordinator)
}

/// The TLS listener bound and the trust ready (CA loaded, this coordinator's certificate
/// issued, revoked agents read), not serving yet: the daemon hands [`Bound::trust`] to
/// the deploy pipeline and discovery, builds the `CoordinatorService` around them, then
/// serves it with [`Bound::serve`].
pub struct Bound {
    trust: Trust,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl Bound {
    /// The trust state (CA, identity).
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves enrollment, renewal and `coordinator` on the bound listener.
    pub fn serve(self, coordinator: Coordinator) -> Result<TrustListener, StartError> {
        let Bound {
            trust,
            listener,
            addr,
        } = self;
        serve(trust, listener, addr, coordinator)
    }
}

/// Binds `cfg.listen` and sets up the CA; see [`Bound`].
pub async fn bind(registry: Registry, cfg: TrustConfig) -> Result<Bound, StartError> {
    bind_with_names(registry, cfg, Vec::new()).await
}

/// [`bind`], the coordinator's certificate also naming `names` (host names or IP
/// addresses clones reach its HTTPS listener by; see [`Trust::open_with_names`]).
pub async fn bind_with_names(
    registry: Registry,
    cfg: TrustConfig,
    names: Vec<String>,
) -> Result<Bound, StartError> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let trust = Trust::open_with_names(registry, cfg, addr, names).await?;
    if let Err(e) = trust.refresh_revoked().await {
        tracing::warn!(error = %e, "reading revoked agents failed; retrying");
    }
    Ok(Bound {
        trust,
        listener,
        addr,
    })
}

fn serve(
    trust: Trust,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    coordinator: Coordinator,
) -> Result<TrustListener, StartError> {
    let server_cfg = tls::server_config(
        trust.ca.cert_der(),
        Arc::clone(&trust.identity),
        ClientAuth::Optional,
    )
    .map_err(|e| StartError::Setup(TrustSetupError::Ca(e)))?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let incoming = napalm_trust::channel::incoming(listener, server_cfg, None, stop_rx.clone());
    let svc = TrustServer::new(trust.clone(), Placement::Tls);
    let refresher = trust.clone();
    let mut refresh_stop = stop_rx.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(super::revoke::REFRESH) => {}
                _ = refresh_stop.wait_for(|s| *s) => return,
            }
            if let Err(e) = refresher.refresh_revoked().await {
                tracing::warn!(error = %e, "reading revoked agents failed; retrying");
            }
        }
    });
    // The coordinator's own certificate, renewed at two thirds of its lifetime.
    let own = trust.clone();
    let mut own_stop = stop_rx.clone();
    tokio::spawn(async move {
        let every = super::COORDINATOR_TTL * 2 / 3;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = own_stop.wait_for(|s| *s) => return,
            }
            match own.renew_identity() {
                Ok(not_after) => tracing::info!(not_after, "coordinator certificate renewed"),
                Err(e) => {
                    tracing::error!(error = %e, "renewing the coordinator certificate failed")
                }
            }
        }
    });
    let gated = |rules| (trust.clone(), rules);
    let (trust_gate, coordinator_gate) = (gated(TRUST_RULES), gated(COORDINATOR_RULES));
    let mut rx = stop_rx;
    let task = tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(RequireRole::new(
                TrustServiceServer::new(svc),
                trust_gate.0,
                trust_gate.1,
            ))
            .add_service(RequireRole::new(
                CoordinatorServiceServer::new(coordinator),
                coordinator_gate.0,
                coordinator_gate.1,
            ))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "TLS listener stopped");
        }
    });
    tracing::info!(%addr, fingerprint = %trust.fingerprint(), "serving enrollment and mutual-TLS CoordinatorService");
    Ok(TrustListener {
        trust,
        addr,
        task,
        stop,
    })
}

/// Why the TLS listener did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The address could not be bound.
    #[error("binding the TLS listener {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The CA or the coordinator's certificate.
    #[error(transparent)]
    Setup(#[from] TrustSetupError),
}
