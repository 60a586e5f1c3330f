//! TLS for the REST and gRPC listeners, from PEM files named by the operator. The SHA-256
//! of the leaf certificate is the agent's fingerprint (advertised over mDNS, sent when
//! registering) so clients can pin it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{AgentError, Result};

/// Certificate chain and key, PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (leaf first).
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Loaded TLS material.
#[derive(Clone)]
pub struct Tls {
    /// The rustls acceptor for REST.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// PEM certificate (for tonic).
    pub cert_pem: Vec<u8>,
    /// PEM key (for tonic).
    pub key_pem: Vec<u8>,
    /// Lower-case hex SHA-256 of the leaf certificate (DER).
    pub fingerprint: String,
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| AgentError::io(p, e))
}

fn bad(p: &Path, what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::invalid("tls", format!("{}: {what}: {e}", p.display()))
}

impl Tls {
    /// Loads and checks the files.
    pub fn load(f: &TlsFiles) -> Result<Self> {
        let cert_pem = read(&f.cert)?;
        let key_pem = read(&f.key)?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| bad(&f.cert, "not a PEM certificate chain", e))?;
        let leaf = certs
            .first()
            .ok_or_else(|| bad(&f.cert, "no certificate", "empty"))?;
        let fingerprint = hex::encode(Sha256::digest(leaf.as_ref()));
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| bad(&f.key, "not a PEM private key", e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&f.cert, "TLS setup", e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad(&f.key, "key does not match the certificate", e))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
            cert_pem,
            key_pem,
            fingerprint,
        })
    }
}

/// Serves an axum router over TLS until `stop` flips; with `admit`, only to peers it
/// lets in (see `napalm_trust::channel::coordinator_or_operator`).
pub async fn serve_https(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    acceptor: tokio_rustls::TlsAcceptor,
    admit: Option<napalm_trust::channel::Admit>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let admit = admit.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) if napalm_trust::channel::admitted(admit.as_ref(), &s, peer) => s,
                Ok(mut s) => {
                    use tokio::io::AsyncWriteExt;
                    let _ = s.shutdown().await;
                    return;
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let svc = TowerToHyperService::new(app);
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
            }
        });
    }
}
