//! The cluster certificate authority: one self-signed CA whose key signs every agent's and
//! coordinator's short-lived certificate. The coordinator generates it at first start (or
//! loads the operator's PEM files) and keeps it; [`ClusterCa::fingerprint`] is what join
//! tokens pin. Leaf certificates are built from the CA's own parameters, never from what a
//! CSR asks for: the CSR only contributes its (signature-checked) public key.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::FromDer;

use crate::error::{Result, TrustError};
use crate::id::{self, OperatorRole};

/// Default lifetime of an agent certificate.
pub const DEFAULT_LEAF_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Lifetime of a generated CA.
pub const CA_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaf certificates start this long before `now`, so a peer whose clock is slightly
/// behind still accepts them.
pub const CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(60);

/// A signed certificate as handed to its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// Not-before, Unix seconds.
    pub not_before: i64,
    /// Not-after, Unix seconds.
    pub not_after: i64,
}

/// The CA: its certificate and the key that signs with it.
pub struct ClusterCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
    /// rcgen's view of the CA for signing (same subject and key identifier as `cert_der`).
    issuer: rcgen::Certificate,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

fn at(unix: i64) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(|e| TrustError::parse("timestamp", e))
}

fn serial() -> Result<SerialNumber> {
    let mut b = crate::random_bytes(16)?;
    // A positive INTEGER.
    b[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&b))
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

impl ClusterCa {
    /// A new CA named `name` (its common name), valid from `now` for ten years, with an
    /// ECDSA P-256 key.
    pub fn generate(name: &str, now: i64) -> Result<Self> {
        let key = KeyPair::generate().map_err(TrustError::generate("CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "napalm");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = at(now - secs(CLOCK_SKEW))?;
        params.not_after = at(now + secs(CA_TTL))?;
        params.serial_number = Some(serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(TrustError::generate("CA certificate"))?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// Loads a CA from PEM (the operator's files, or what the coordinator stored). The
    /// certificate must be a CA certificate and the key must be its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key =
            KeyPair::from_pem(&pkcs8_pem(key_pem)?).map_err(|e| TrustError::parse("CA key", e))?;
        let cert_der = crate::tls::certs_from_pem(cert_pem.as_bytes())?
            .into_iter()
            .next()
            .ok_or_else(|| TrustError::parse("CA certificate", "no PEM certificate found"))?;
        let (_, x509) = x509_parser::certificate::X509Certificate::from_der(cert_der.as_ref())
            .map_err(|e| TrustError::parse("CA certificate", e))?;
        if !x509.is_ca() {
            return Err(TrustError::parse(
                "CA certificate",
                "it is not a CA certificate (basicConstraints CA:FALSE or absent)",
            ));
        }
        if x509.public_key().raw != key.public_key_der().as_slice() {
            return Err(TrustError::parse(
                "CA key",
                "it is not the key of the CA certificate",
            ));
        }
        let params = CertificateParams::from_ca_cert_der(&cert_der)
            .map_err(|e| TrustError::parse("CA certificate", e))?;
        let issuer = params
            .self_signed(&key)
            .map_err(TrustError::generate("CA signer"))?;
        Ok(Self {
            cert_pem: pem_of(&cert_der),
            cert_der,
            key,
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA key, PEM (PKCS#8). Whoever holds it can mint any identity: store it
    /// readable by the coordinator only.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Lower-case hex SHA-256 of the CA certificate's DER: what join tokens pin.
    pub fn fingerprint(&self) -> String {
        crate::fingerprint(self.cert_der.as_ref())
    }

    /// Signs a certificate for agent `agent_id` over the public key of `csr_pem`, valid
    /// from `now` (less [`CLOCK_SKEW`]) for `ttl`. The CSR's signature is checked (it
    /// proves the requester holds the key); whatever names or extensions it asks for are
    /// ignored: the certificate names exactly the agent, for server and client use.
    pub fn issue_agent(
        &self,
        csr_pem: &str,
        agent_id: &str,
        now: i64,
        ttl: std::time::Duration,
    ) -> Result<Issued> {
        id::check_agent_id(agent_id)?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TrustError::parse("CSR", e))?;
        let params = leaf_params(
            agent_id,
            vec![
                SanType::URI(
                    id::agent_uri(agent_id)
                        .try_into()
                        .map_err(|e| TrustError::parse("agent URI", e))?,
                ),
                SanType::DnsName(
                    id::agent_dns(agent_id)
                        .try_into()
                        .map_err(|e| TrustError::parse("agent DNS name", e))?,
                ),
            ],
            now,
            ttl,
        )?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer, &self.key)
            .map_err(TrustError::generate("agent certificate"))?;
        issued(cert.der())
    }

    /// A key pair and certificate for a coordinator (its TLS listener and its calls to
    /// agents): names [`id::COORDINATOR_DNS`], [`id::COORDINATOR_URI`] and `extra_dns`
    /// (an IP address there becomes an IP address name: what an HTTPS client dialing
    /// `https://10.0.0.1:…`, such as a clone's curl, checks). The coordinator holds the CA
    /// key, so it needs no CSR. Returns the certificate and the key, PEM.
    pub fn issue_coordinator(
        &self,
        extra_dns: &[String],
        now: i64,
        ttl: std::time::Duration,
    ) -> Result<(Issued, String)> {
        let key = KeyPair::generate().map_err(TrustError::generate("coordinator key"))?;
        let mut sans = vec![
            SanType::URI(
                id::COORDINATOR_URI
                    .try_into()
                    .map_err(|e| TrustError::parse("coordinator URI", e))?,
            ),
            SanType::DnsName(
                id::COORDINATOR_DNS
                    .try_into()
                    .map_err(|e| TrustError::parse("coordinator DNS name", e))?,
            ),
        ];
        for d in extra_dns {
            if let Ok(ip) = d.parse::<std::net::IpAddr>() {
                sans.push(SanType::IpAddress(ip));
                continue;
            }
            sans.push(SanType::DnsName(
                d.clone()
                    .try_into()
                    .map_err(|e| TrustError::parse("coordinator DNS name", e))?,
            ));
        }
        let params = leaf_params("napalm-coordinator", sans, now, ttl)?;
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(TrustError::generate("coordinator certificate"))?;
        Ok((issued(cert.der())?, key.serialize_pem()))
    }
}

impl ClusterCa {
    /// A key pair and client certificate for operator `name` in `role`
    /// ([`OperatorRole::uri`]): what napalmctl presents to agents and coordinators that
    /// require cluster certificates. Returns the certificate and the key, PEM.
    pub fn issue_operator(
        &self,
        name: &str,
        role: OperatorRole,
        now: i64,
        ttl: std::time::Duration,
    ) -> Result<(Issued, String)> {
        let key = KeyPair::generate().map_err(TrustError::generate("operator key"))?;
        let issued = self.sign_operator(&key, name, role, now, ttl)?;
        Ok((issued, key.serialize_pem()))
    }

    /// A client certificate for operator `name` in `role` over the public key of
    /// `csr_pem` (`napalmctl login`: the key stays with the operator). As for agents,
    /// the CSR's signature is checked and the names it asks for are ignored.
    pub fn issue_operator_csr(
        &self,
        csr_pem: &str,
        name: &str,
        role: OperatorRole,
        now: i64,
        ttl: std::time::Duration,
    ) -> Result<Issued> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TrustError::parse("CSR", e))?;
        self.sign_operator(&csr.public_key, name, role, now, ttl)
    }

    fn sign_operator(
        &self,
        key: &impl rcgen::PublicKeyData,
        name: &str,
        role: OperatorRole,
        now: i64,
        ttl: std::time::Duration,
    ) -> Result<Issued> {
        id::check_agent_id(name)?;
        let sans = vec![SanType::URI(
            role.uri(name)
                .try_into()
                .map_err(|e| TrustError::parse("operator URI", e))?,
        )];
        let mut params = leaf_params(name, sans, now, ttl)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(key, &self.issuer, &self.key)
            .map_err(TrustError::generate("operator certificate"))?;
        issued(cert.der())
    }
}

fn leaf_params(
    common_name: &str,
    sans: Vec<SanType>,
    now: i64,
    ttl: std::time::Duration,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "napalm");
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = at(now - secs(CLOCK_SKEW))?;
    params.not_after = at(now + secs(ttl))?;
    params.serial_number = Some(serial()?);
    Ok(params)
}

fn issued(der: &CertificateDer<'_>) -> Result<Issued> {
    let der = der.clone().into_owned();
    Ok(Issued {
        cert_pem: pem_of(&der),
        not_before: id::not_before(&der)?,
        not_after: id::not_after(&der)?,
        cert_der: der.to_vec(),
    })
}

/// `key_pem` as PKCS#8, the form rcgen reads: a SEC1 `EC PRIVATE KEY` (P-256, what Go's
/// x509 and so Helm's `genPrivateKey "ecdsa"` write) is converted; anything else is
/// returned as it is.
fn pkcs8_pem(key_pem: &str) -> Result<String> {
    if !key_pem.contains("-----BEGIN EC PRIVATE KEY-----") {
        return Ok(key_pem.to_owned());
    }
    use p256::pkcs8::EncodePrivateKey as _;
    let key = p256::SecretKey::from_sec1_pem(key_pem.trim()).map_err(|e| {
        TrustError::parse(
            "CA key",
            format!(
                "a SEC1 EC PRIVATE KEY that is not a P-256 key ({e}): give a P-256 or PKCS#8 key"
            ),
        )
    })?;
    let pem = key
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| TrustError::parse("CA key", e))?;
    Ok(pem.as_str().to_owned())
}

/// PEM text of a DER certificate.
pub fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000;

    #[test]
    fn a_loaded_ca_signs_like_the_generated_one() {
        let ca = ClusterCa::generate("test", NOW).expect("ca");
        let again = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).expect("reload");
        assert_eq!(ca.fingerprint(), again.fingerprint());
        assert_eq!(ca.fingerprint().len(), 64);
        let (key, csr) = crate::csr::generate("abc").expect("csr");
        let leaf = again
            .issue_agent(&csr, "abc", NOW, DEFAULT_LEAF_TTL)
            .expect("issue");
        assert_eq!(leaf.not_after - NOW, 24 * 3600);
        let chain = crate::tls::certs_from_pem(leaf.cert_pem.as_bytes()).expect("pem");
        crate::tls::verify_agent(ca.cert_der(), &chain, "abc", NOW + 10).expect("verifies");
        assert!(!key.is_empty());
    }

    /// The Helm chart generates its cluster CA with Sprig's `genCAWithKey` and
    /// `genPrivateKey "ecdsa"` (Go's x509: a SEC1 `EC PRIVATE KEY`); the fixture is one
    /// such pair, rendered by `charts/napalm`'s template.
    #[test]
    fn a_ca_made_by_the_helm_chart_loads_and_signs() {
        let cert = include_str!("../tests/fixtures/helm-ca.crt");
        let key = include_str!("../tests/fixtures/helm-ca.key");
        assert!(key.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let ca = ClusterCa::from_pem(cert, key).expect("a Helm-made CA loads");
        let (_, csr) = crate::csr::generate("abc").expect("csr");
        let leaf = ca
            .issue_agent(&csr, "abc", NOW, DEFAULT_LEAF_TTL)
            .expect("issue");
        let chain = crate::tls::certs_from_pem(leaf.cert_pem.as_bytes()).expect("pem");
        crate::tls::verify_agent(ca.cert_der(), &chain, "abc", NOW + 10).expect("verifies");
        // The key round-trips in the form the registry stores.
        ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).expect("reload");
    }

    #[test]
    fn coordinator_names_given_as_addresses_are_ip_names() {
        let ca = ClusterCa::generate("test", NOW).expect("ca");
        let (cert, _) = ca
            .issue_coordinator(
                &["10.0.0.1".into(), "::1".into(), "server.example".into()],
                NOW,
                DEFAULT_LEAF_TTL,
            )
            .expect("issue");
        let der = CertificateDer::from(cert.cert_der);
        let (_, x) = x509_parser::certificate::X509Certificate::from_der(&der).expect("parse");
        let san = x
            .subject_alternative_name()
            .expect("extension")
            .expect("SANs");
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect();
        assert!(
            names.iter().any(|n| n.contains("IPAddress([10, 0, 0, 1])")),
            "{names:?}"
        );
        assert!(
            names
                .iter()
                .any(|n| n.contains("IPAddress([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])")),
            "{names:?}"
        );
        assert!(
            names.iter().any(|n| n == "DNSName(\"server.example\")"),
            "{names:?}"
        );
        assert!(
            names.iter().any(|n| n == "DNSName(\"coordinator.napalm\")"),
            "{names:?}"
        );
    }

    #[test]
    fn a_key_that_is_not_the_cas_is_refused() {
        let a = ClusterCa::generate("a", NOW).expect("ca");
        let b = ClusterCa::generate("b", NOW).expect("ca");
        let e = ClusterCa::from_pem(a.cert_pem(), &b.key_pem()).expect_err("mismatch");
        assert!(e.to_string().contains("not the key"), "{e}");
    }

    #[test]
    fn a_leaf_is_not_a_ca() {
        let ca = ClusterCa::generate("a", NOW).expect("ca");
        let (_, csr) = crate::csr::generate("x").expect("csr");
        let leaf = ca
            .issue_agent(&csr, "x", NOW, DEFAULT_LEAF_TTL)
            .expect("issue");
        let (key, _) = crate::csr::generate("y").expect("key");
        let e = ClusterCa::from_pem(&leaf.cert_pem, &key).expect_err("leaf");
        assert!(e.to_string().contains("not a CA"), "{e}");
    }

    #[test]
    fn a_tampered_csr_is_refused() {
        let ca = ClusterCa::generate("a", NOW).expect("ca");
        let e = ca
            .issue_agent(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                "x",
                NOW,
                DEFAULT_LEAF_TTL,
            )
            .expect_err("garbage");
        assert!(e.to_string().contains("CSR"), "{e}");
    }
}
