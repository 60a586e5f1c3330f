//! The requester's side of enrollment: a key pair generated here (it never leaves the
//! host) and a certificate signing request over it. The CA ignores the names a CSR asks
//! for, so the CSR only carries the agent id as common name for the operator's logs.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

use crate::error::{Result, TrustError};

/// Generates an ECDSA P-256 key and a CSR for agent `agent_id`. Returns `(key PEM, CSR
/// PEM)`.
pub fn generate(agent_id: &str) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(TrustError::generate("agent key"))?;
    let csr = request(agent_id, &key)?;
    Ok((key.serialize_pem(), csr))
}

/// A CSR over an existing key (PEM), e.g. to renew without changing keys.
pub fn request_for_key(agent_id: &str, key_pem: &str) -> Result<String> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| TrustError::parse("agent key", e))?;
    request(agent_id, &key)
}

fn request(agent_id: &str, key: &KeyPair) -> Result<String> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, agent_id);
    params.distinguished_name = dn;
    params
        .serialize_request(key)
        .map_err(TrustError::generate("CSR"))?
        .pem()
        .map_err(TrustError::generate("CSR PEM"))
}
