//! # napalm-trust — the cluster's PKI (issue 13; thesis 4.7.1, 4.7.3)
//!
//! Owns: the cluster certificate authority ([`ca::ClusterCa`]: generated once or loaded
//! from the operator's PEM files, signs short-lived leaf certificates from CSRs whose keys
//! never leave the requester), how identities are named in certificates ([`id`]: agent
//! `spiffe://napalm/agent/<id>` URI and `<id>.agent.napalm` DNS names), the requester's
//! side of enrollment ([`csr`]: key pair and CSR generated locally), single-use join
//! tokens ([`token`]: the `napalm-join-v1.` encoding, stored hashed, expiry, revocation),
//! and the rustls plumbing every listener and client shares ([`tls`]: server and client
//! configs verifying peers against the CA, a CA-fingerprint-pinned verifier for the first
//! contact, a hot-swappable certificate slot, the peer-identity check, verifiers that
//! explain why a peer was refused) plus the transport glue ([`channel`]: a tonic channel
//! over such a client connection, and a stream of accepted TLS connections for a tonic
//! server).
//!
//! Must not touch: storage (the coordinator keeps the CA and token records in its
//! registry; the agent keeps its key and certificate in its state directory), any network
//! but the connections its callers ask [`channel`] to dial or accept, or the clock (every
//! call that depends on time takes `now` in Unix seconds; only rustls reads the system
//! time while verifying a handshake). No hand-written cryptography or ASN.1: rcgen signs,
//! x509-parser reads, rustls/webpki verify, ring supplies randomness and digests.

pub mod ca;
pub mod channel;
pub mod csr;
pub mod error;
pub mod id;
pub mod tls;
pub mod token;

pub use ca::{ClusterCa, Issued};
pub use error::{Result, TrustError};
pub use token::{JoinToken, TokenRecord, TokenRefused, TokenState};

use sha2::{Digest, Sha256};

/// Lower-case hex SHA-256 of a DER certificate: the fingerprint join tokens pin and mDNS
/// advertises.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// `n` bytes from the operating system's secure random source.
pub fn random_bytes(n: usize) -> Result<Vec<u8>> {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| TrustError::Random)?;
    Ok(b)
}
