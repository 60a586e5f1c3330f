//! How identities are written into certificates. An agent's certificate carries two
//! subject alternative names: the URI `spiffe://napalm/agent/<id>` (what [`agent_id_of`]
//! reads back) and the DNS name `<id>.agent.napalm` (what a TLS client dialing the agent
//! asks for as server name, so webpki itself checks the agent is the one expected). The
//! coordinator's certificate names `spiffe://napalm/coordinator` and
//! [`COORDINATOR_DNS`].

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::error::{Result, TrustError};

/// URI prefix of an agent's identity.
pub const AGENT_URI_PREFIX: &str = "spiffe://napalm/agent/";
/// URI of the coordinator's identity.
pub const COORDINATOR_URI: &str = "spiffe://napalm/coordinator";
/// DNS name every coordinator certificate carries; clients ask for it as server name.
pub const COORDINATOR_DNS: &str = "coordinator.napalm";
/// URI prefix of an operator's identity (`spiffe://napalm/operator/<name>`): the
/// `admin` role, allowed everything.
pub const OPERATOR_URI_PREFIX: &str = "spiffe://napalm/operator/";
/// URI prefix of a read-only operator's identity (`spiffe://napalm/viewer/<name>`): the
/// `viewer` role, allowed listings, lookups and the event stream.
pub const VIEWER_URI_PREFIX: &str = "spiffe://napalm/viewer/";

/// What an operator's certificate lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorRole {
    /// Everything.
    Admin,
    /// Read only.
    Viewer,
}

impl OperatorRole {
    /// `admin` or `viewer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Viewer => "viewer",
        }
    }

    /// The URI naming operator `name` in this role.
    pub fn uri(self, name: &str) -> String {
        match self {
            Self::Admin => format!("{OPERATOR_URI_PREFIX}{name}"),
            Self::Viewer => format!("{VIEWER_URI_PREFIX}{name}"),
        }
    }
}

impl std::str::FromStr for OperatorRole {
    type Err = TrustError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "admin" => Ok(Self::Admin),
            "viewer" => Ok(Self::Viewer),
            other => Err(TrustError::BadRole {
                role: other.to_owned(),
            }),
        }
    }
}

/// Who a (verified) certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A coordinator.
    Coordinator,
    /// An operator with the `admin` role (napalmctl with a client certificate), by name.
    Operator(String),
    /// An operator with the `viewer` role (read only), by name.
    Viewer(String),
    /// An enrolled agent, by id.
    Agent(String),
}

/// The role a DER certificate names (its first napalm URI), if any. Only meaningful for
/// a certificate already verified against the CA.
pub fn role_of(cert: &CertificateDer<'_>) -> Result<Option<Role>> {
    Ok(uris_of(cert)?.into_iter().find_map(|u| {
        if u == COORDINATOR_URI {
            Some(Role::Coordinator)
        } else if let Some(n) = u.strip_prefix(OPERATOR_URI_PREFIX) {
            Some(Role::Operator(n.to_owned()))
        } else if let Some(n) = u.strip_prefix(VIEWER_URI_PREFIX) {
            Some(Role::Viewer(n.to_owned()))
        } else {
            u.strip_prefix(AGENT_URI_PREFIX)
                .map(|i| Role::Agent(i.to_owned()))
        }
    }))
}

/// Checks that `id` can be used in a DNS label and a URI path segment.
pub fn check_agent_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && !id.starts_with('-')
        && !id.ends_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(TrustError::BadId { id: id.to_owned() })
    }
}

/// The SPIFFE-style URI naming agent `id`.
pub fn agent_uri(id: &str) -> String {
    format!("{AGENT_URI_PREFIX}{id}")
}

/// The DNS name naming agent `id` (the server name to dial it by).
pub fn agent_dns(id: &str) -> String {
    format!("{id}.agent.napalm")
}

/// The URI subject alternative names of a DER certificate.
pub fn uris_of(cert: &CertificateDer<'_>) -> Result<Vec<String>> {
    let (_, x509) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
        .map_err(|e| TrustError::parse("certificate", e))?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(u) = name {
                out.push((*u).to_owned());
            }
        }
    }
    Ok(out)
}

/// The agent id a certificate names (its `spiffe://napalm/agent/<id>` URI), if any.
pub fn agent_id_of(cert: &CertificateDer<'_>) -> Result<Option<String>> {
    Ok(uris_of(cert)?
        .into_iter()
        .find_map(|u| u.strip_prefix(AGENT_URI_PREFIX).map(str::to_owned)))
}

/// Not-after of a DER certificate, Unix seconds.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<i64> {
    let (_, x509) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
        .map_err(|e| TrustError::parse("certificate", e))?;
    Ok(x509.validity().not_after.timestamp())
}

/// Not-before of a DER certificate, Unix seconds.
pub fn not_before(cert: &CertificateDer<'_>) -> Result<i64> {
    let (_, x509) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
        .map_err(|e| TrustError::parse("certificate", e))?;
    Ok(x509.validity().not_before.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_must_fit_a_dns_label() {
        for good in ["a", "0123abcd4567ef89", "host-1"] {
            check_agent_id(good).expect(good);
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a/b", &"x".repeat(64)] {
            assert!(check_agent_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(agent_uri("ab"), "spiffe://napalm/agent/ab");
        assert_eq!(agent_dns("ab"), "ab.agent.napalm");
    }
}
