//! rustls configurations for every Napalm listener and client, all verifying peers
//! against the cluster CA (webpki through rustls; nothing verified by hand):
//!
//! - [`server_config`]: a listener presenting the certificate in a [`CertSlot`] and
//!   verifying client certificates against the CA, required or optional
//!   ([`ClientAuth`]);
//! - [`client_config`]: a client verifying the server against the CA (and presenting its
//!   own certificate when given one);
//! - [`pinned_client_config`]: the first contact of a joining host, which has no CA
//!   certificate yet, only its fingerprint from the join token: the server must present
//!   the CA in its chain, that CA must have the pinned fingerprint, and the server's leaf
//!   must verify against it;
//! - [`CertSlot`]: the certificate and key a listener or client presents, swapped
//!   atomically on renewal so connections opened afterwards use the new one without a
//!   restart (connections already open keep theirs);
//! - [`verify_agent`]: the whole check of a presented agent certificate chain: chains to
//!   the CA, valid now, client usage, and names the expected agent id.

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::error::{Result, TrustError};

/// The crypto provider every config uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM text, in order.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| TrustError::parse("PEM certificate", e))?;
    if certs.is_empty() {
        return Err(TrustError::parse("PEM certificate", "no certificate found"));
    }
    Ok(certs)
}

/// The private key in a PEM text.
pub fn key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TrustError::parse("PEM private key", e))
}

/// A root store holding only the CA.
pub fn roots(ca: &CertificateDer<'_>) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone().into_owned())
        .map_err(|e| TrustError::parse("CA certificate", e))?;
    Ok(Arc::new(roots))
}

/// The certificate (chain, leaf first) and key a party presents, replaceable at run time.
#[derive(Debug)]
pub struct CertSlot {
    current: RwLock<Arc<CertifiedKey>>,
}

fn certified(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>> {
    let chain = certs_from_pem(chain_pem)?;
    let key = key_from_pem(key_pem)?;
    Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider())?))
}

impl CertSlot {
    /// A slot holding `chain_pem` (leaf first; include the CA so pinning clients find it)
    /// and its key; the key must match the leaf.
    pub fn new(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            current: RwLock::new(certified(chain_pem, key_pem)?),
        }))
    }

    /// Replaces what the slot presents; handshakes from now on use the new certificate.
    /// On error the old one stays.
    pub fn replace(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<()> {
        let new = certified(chain_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }

    /// What the slot presents now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The leaf certificate presented now.
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current().cert[0].clone()
    }
}

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Whether a listener insists on a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// The handshake fails without a CA-signed client certificate.
    Required,
    /// A client certificate, when presented, must chain to the CA; without one the
    /// handshake succeeds and the application decides (enrollment with a join token).
    Optional,
}

/// A server config presenting `slot` and verifying clients against `ca`. ALPN offers h2
/// and http/1.1 (gRPC and REST).
pub fn server_config(
    ca: &CertificateDer<'_>,
    slot: Arc<CertSlot>,
    auth: ClientAuth,
) -> Result<Arc<ServerConfig>> {
    let p = provider();
    let mut verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, Arc::clone(&p));
    if auth == ClientAuth::Optional {
        verifier = verifier.allow_unauthenticated();
    }
    let mut cfg = ServerConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier.build()?)
        .with_cert_resolver(slot);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client config verifying servers against `ca`, presenting `identity` when given. ALPN
/// asks for h2 (gRPC).
pub fn client_config(
    ca: &CertificateDer<'_>,
    identity: Option<Arc<CertSlot>>,
) -> Result<Arc<ClientConfig>> {
    let p = provider();
    let verifier =
        WebPkiServerVerifier::builder_with_provider(roots(ca)?, Arc::clone(&p)).build()?;
    finish_client(p, verifier, identity)
}

/// A client config for a host that knows only the CA's fingerprint (from its join token):
/// the server must send the CA certificate in its chain, its SHA-256 must be `fingerprint`,
/// and the leaf must verify against it for the server name dialed.
pub fn pinned_client_config(
    fingerprint: &str,
    identity: Option<Arc<CertSlot>>,
) -> Result<Arc<ClientConfig>> {
    let p = provider();
    let verifier = Arc::new(PinnedCa {
        fingerprint: fingerprint.to_ascii_lowercase(),
        provider: Arc::clone(&p),
    });
    finish_client(p, verifier, identity)
}

fn finish_client(
    p: Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
    identity: Option<Arc<CertSlot>>,
) -> Result<Arc<ClientConfig>> {
    let b = ClientConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match identity {
        Some(slot) => b.with_client_cert_resolver(slot),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Verifies a server against the CA found in its own chain with the pinned fingerprint.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| crate::fingerprint(c.as_ref()) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the server did not present the CA pinned by the join token (sha256 {})",
                    self.fingerprint
                ))
            })?;
        let roots = roots(ca).map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&self.provider))
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why the last server a config dialed failed verification, in words an operator can act
/// on (filled in by the verifier of [`agent_client_config`]).
#[derive(Debug, Default)]
pub struct Diagnosis(std::sync::Mutex<Option<String>>);

impl Diagnosis {
    /// The reason of the last refusal, if any.
    pub fn reason(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, reason: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }
}

/// A client config for dialing agent `expected_id` (ask for server name
/// [`crate::id::agent_dns`]`(expected_id)`): the agent must present a certificate chaining
/// to `ca` that names it; `identity` is presented as client certificate. When the agent
/// is refused, the returned [`Diagnosis`] says why (no chain to the CA, another agent's
/// certificate, expired).
pub fn agent_client_config(
    ca: &CertificateDer<'_>,
    identity: Option<Arc<CertSlot>>,
    expected_id: &str,
) -> Result<(Arc<ClientConfig>, Arc<Diagnosis>)> {
    let p = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(roots(ca)?, Arc::clone(&p)).build()?;
    let diagnosis = Arc::new(Diagnosis::default());
    let verifier = Arc::new(Expecting {
        inner,
        ca: ca.clone().into_owned(),
        expected: expected_id.to_owned(),
        diagnosis: Arc::clone(&diagnosis),
    });
    Ok((finish_client(p, verifier, identity)?, diagnosis))
}

/// The agent id the last server a config dialed proved it is (see
/// [`enrolled_agent_client_config`]).
#[derive(Debug, Default)]
pub struct Named(std::sync::Mutex<Option<String>>);

impl Named {
    /// The id the verified certificate names, once a handshake succeeded.
    pub fn id(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A client config for dialing an agent whose id the caller does not know (only its
/// endpoint): the agent must present a certificate chaining to `ca`, and it is verified
/// for the agent id that certificate names (server name `<id>.agent.napalm`), which
/// [`Named`] then holds so the caller can compare it with what it expected. Refusals are
/// explained in the [`Diagnosis`].
pub fn enrolled_agent_client_config(
    ca: &CertificateDer<'_>,
    identity: Option<Arc<CertSlot>>,
) -> Result<(Arc<ClientConfig>, Arc<Diagnosis>, Arc<Named>)> {
    let p = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(roots(ca)?, Arc::clone(&p)).build()?;
    let diagnosis = Arc::new(Diagnosis::default());
    let named = Arc::new(Named::default());
    let verifier = Arc::new(AnyAgent {
        inner,
        ca: ca.clone().into_owned(),
        diagnosis: Arc::clone(&diagnosis),
        named: Arc::clone(&named),
    });
    Ok((finish_client(p, verifier, identity)?, diagnosis, named))
}

/// webpki verification against the CA for the agent id the certificate itself names.
#[derive(Debug)]
struct AnyAgent {
    inner: Arc<WebPkiServerVerifier>,
    ca: CertificateDer<'static>,
    diagnosis: Arc<Diagnosis>,
    named: Arc<Named>,
}

impl ServerCertVerifier for AnyAgent {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let id = match crate::id::agent_id_of(end_entity) {
            Ok(Some(id)) if crate::id::check_agent_id(&id).is_ok() => id,
            _ => {
                self.diagnosis.set("its certificate names no agent".into());
                return Err(rustls::Error::General("certificate names no agent".into()));
            }
        };
        let name = ServerName::try_from(crate::id::agent_dns(&id))
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let r = self
            .inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now);
        match &r {
            Ok(_) => *self.named.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(id),
            Err(_) => {
                let mut chain = vec![end_entity.clone()];
                chain.extend(intermediates.iter().cloned());
                let secs = i64::try_from(now.as_secs()).unwrap_or(0);
                self.diagnosis.set(explain(&self.ca, &chain, &id, secs));
            }
        }
        r
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// webpki verification against the CA, explaining refusals.
#[derive(Debug)]
struct Expecting {
    inner: Arc<WebPkiServerVerifier>,
    ca: CertificateDer<'static>,
    expected: String,
    diagnosis: Arc<Diagnosis>,
}

/// Words for why `chain` is not agent `expected`'s certificate from `ca`.
pub fn explain(
    ca: &CertificateDer<'_>,
    chain: &[CertificateDer<'_>],
    expected: &str,
    now: i64,
) -> String {
    match verify_agent(ca, chain, expected, now) {
        Ok(()) => "its certificate is valid for this agent, yet the handshake failed".into(),
        Err(TrustError::WrongIdentity { found, .. }) if found.is_empty() => {
            format!("its certificate names no agent (expected {expected:?})")
        }
        Err(TrustError::WrongIdentity { found, .. }) => {
            format!("its certificate names agent {found:?}, not the advertised {expected:?}")
        }
        // Another CA with the same name as ours fails on the signature.
        Err(TrustError::Untrusted(m))
            if m.contains("UnknownIssuer") || m.contains("BadSignature") =>
        {
            "its certificate does not chain to the cluster CA (self-signed, or signed by \
             another CA)"
                .into()
        }
        Err(TrustError::Untrusted(m)) if m.contains("Expired") => {
            "its certificate has expired".into()
        }
        Err(e) => e.to_string(),
    }
}

impl ServerCertVerifier for Expecting {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let r = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if r.is_err() {
            let mut chain = vec![end_entity.clone()];
            chain.extend(intermediates.iter().cloned());
            let secs = i64::try_from(now.as_secs()).unwrap_or(0);
            self.diagnosis
                .set(explain(&self.ca, &chain, &self.expected, secs));
        }
        r
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Checks a presented agent chain (leaf first) at `now` (Unix seconds): it chains to
/// `ca`, is within its validity, is usable as a client certificate, and names agent
/// `expected_id`. A self-signed certificate, one from a foreign CA, an expired one or one
/// naming another agent is refused with the reason.
pub fn verify_agent(
    ca: &CertificateDer<'_>,
    chain: &[CertificateDer<'_>],
    expected_id: &str,
    now: i64,
) -> Result<()> {
    let (leaf, rest) = chain
        .split_first()
        .ok_or_else(|| TrustError::Untrusted("no certificate presented".into()))?;
    let p = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, p).build()?;
    let when = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now).unwrap_or(0),
    ));
    verifier
        .verify_client_cert(leaf, rest, when)
        .map_err(|e| TrustError::Untrusted(e.to_string()))?;
    let found = crate::id::agent_id_of(leaf)?.unwrap_or_default();
    if found != expected_id {
        return Err(TrustError::WrongIdentity {
            expected: expected_id.to_owned(),
            found,
        });
    }
    Ok(())
}
