//! Errors of the trust layer. Each message says what was being done and, where the
//! caller can act, what to do.

use crate::token::TokenRefused;

/// Result with [`TrustError`].
pub type Result<T, E = TrustError> = std::result::Result<T, E>;

/// What went wrong building, reading or verifying trust material.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// Signing or generating a key or certificate failed (rcgen).
    #[error("{what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// What rcgen said.
        #[source]
        source: rcgen::Error,
    },
    /// PEM or DER input that does not parse as what it should be.
    #[error("{what} is not valid: {detail}")]
    Parse {
        /// What was being read (`CA certificate`, `CSR`…).
        what: &'static str,
        /// Why it does not parse.
        detail: String,
    },
    /// An identity (agent id) that cannot name a certificate.
    #[error(
        "agent id {id:?} cannot name a certificate: use 1 to 63 lower-case letters, digits \
         or '-', not starting or ending with '-'"
    )]
    BadId {
        /// The id given.
        id: String,
    },
    /// An operator role other than `admin` or `viewer`.
    #[error("role {role:?} is not one of admin, viewer")]
    BadRole {
        /// The role given.
        role: String,
    },
    /// A certificate that does not chain to the cluster CA, is expired, or is not usable
    /// for the purpose.
    #[error("certificate refused: {0}")]
    Untrusted(String),
    /// A certificate that chains to the CA but names another identity than expected.
    #[error("certificate names {found:?}, expected agent {expected:?}")]
    WrongIdentity {
        /// The agent id expected.
        expected: String,
        /// What the certificate names (empty when it names no agent).
        found: String,
    },
    /// rustls refused a configuration (a key that does not match, no usable protocol…).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A verifier could not be built from the roots.
    #[error("TLS verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    /// A join token that does not decode.
    #[error(
        "not a napalm join token ({0}): copy the whole line printed by \
         `napalmctl agent token create`, starting with napalm-join-v1."
    )]
    BadToken(String),
    /// A join token that decodes but may not be used.
    #[error(transparent)]
    Refused(#[from] TokenRefused),
    /// The operating system's random source failed.
    #[error("the system random source failed")]
    Random,
    /// Dialing or handshaking with a peer failed.
    #[error("connecting to {endpoint}: {detail}")]
    Connect {
        /// The endpoint dialed.
        endpoint: String,
        /// What failed.
        detail: String,
    },
}

impl TrustError {
    pub(crate) fn parse(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Parse {
            what,
            detail: detail.to_string(),
        }
    }

    pub(crate) fn generate(what: &'static str) -> impl FnOnce(rcgen::Error) -> Self {
        move |source| Self::Generate { what, source }
    }
}
