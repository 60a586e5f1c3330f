//! Agents seen through the PKI: the coordinator dials an agent over mutual TLS only if the
//! agent's certificate chains to the CA and names the id it is expected to have, and
//! checks an mDNS advertisement the same way before anything else is sent
//! ([`Trust::verify_advertised`]): mDNS is only a hint. A spoofed advertisement (no TLS,
//! a self-signed or foreign certificate, another agent's certificate) gets a TLS
//! ClientHello and nothing else — no token, no blob, no clone — and an [`Untrusted`]
//! reason to show.

use std::time::Duration;

use napalm_trust::{id, tls};
use tonic::transport::Channel;

use super::Trust;

/// How long a probe or a dial may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why an agent is not trusted, in words for `napalmctl agents`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent at {endpoint} untrusted: {reason}")]
pub struct Untrusted {
    /// The endpoint probed.
    pub endpoint: String,
    /// Why.
    pub reason: String,
}

impl Trust {
    /// Ids of the agents the registry records at gRPC `endpoint` (untrusted records,
    /// which are only what an advertisement claimed, left out).
    pub async fn recorded_at(
        &self,
        endpoint: &str,
    ) -> Result<Vec<String>, crate::registry::RegistryError> {
        let agents = self
            .registry
            .list::<napalm_proto::v1::Agent>(crate::registry::AGENTS)
            .await?;
        Ok(agents
            .into_iter()
            .filter(|a| {
                a.grpc_endpoint == endpoint
                    && a.state != napalm_proto::v1::AgentState::Untrusted as i32
            })
            .map(|a| a.id)
            .collect())
    }

    fn untrusted(endpoint: &str, reason: impl Into<String>) -> Untrusted {
        Untrusted {
            endpoint: endpoint.to_owned(),
            reason: reason.into(),
        }
    }

    /// Checks the agent advertised as `advertised_id` at `endpoint` (`[https://]host:port`)
    /// with a TLS handshake only: it must present a certificate chaining to the CA that
    /// names `advertised_id`. Returns the SHA-256 of its certificate. Nothing but the
    /// handshake is sent either way.
    pub async fn verify_advertised(
        &self,
        endpoint: &str,
        advertised_id: &str,
    ) -> Result<String, Untrusted> {
        id::check_agent_id(advertised_id)
            .map_err(|e| Self::untrusted(endpoint, format!("advertised id: {e}")))?;
        let (cfg, diagnosis) = tls::agent_client_config(
            self.ca.cert_der(),
            Some(std::sync::Arc::clone(&self.identity)),
            advertised_id,
        )
        .map_err(|e| Self::untrusted(endpoint, e.to_string()))?;
        let addr = napalm_trust::channel::authority(endpoint).to_owned();
        let name = rustls_pki_types::ServerName::try_from(id::agent_dns(advertised_id))
            .map_err(|e| Self::untrusted(endpoint, e.to_string()))?;
        let tcp = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| Self::untrusted(endpoint, "no TCP answer within 5 s"))?
            .map_err(|e| Self::untrusted(endpoint, format!("unreachable: {e}")))?;
        let handshake = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp);
        let stream = match tokio::time::timeout(TIMEOUT, handshake).await {
            Err(_) => return Err(Self::untrusted(endpoint, "no TLS handshake within 5 s")),
            Ok(Err(e)) => {
                return Err(Self::untrusted(
                    endpoint,
                    diagnosis.reason().unwrap_or_else(|| {
                        format!(
                            "it did not complete a TLS handshake ({e}): no TLS, or not an agent"
                        )
                    }),
                ))
            }
            Ok(Ok(s)) => s,
        };
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or_else(|| Self::untrusted(endpoint, "no certificate presented"))?;
        Ok(napalm_trust::fingerprint(leaf.as_ref()))
    }

    /// A gRPC channel to agent `agent_id` at `endpoint` over mutual TLS: the coordinator
    /// presents its certificate; the agent's must chain to the CA and name `agent_id`.
    pub async fn dial_agent(&self, endpoint: &str, agent_id: &str) -> Result<Channel, Untrusted> {
        let (cfg, diagnosis) = tls::agent_client_config(
            self.ca.cert_der(),
            Some(std::sync::Arc::clone(&self.identity)),
            agent_id,
        )
        .map_err(|e| Self::untrusted(endpoint, e.to_string()))?;
        napalm_trust::channel::connect(endpoint, &id::agent_dns(agent_id), cfg, TIMEOUT)
            .await
            .map_err(|e| Self::untrusted(endpoint, diagnosis.reason().unwrap_or(e.to_string())))
    }

    /// A gRPC channel over mutual TLS to whichever enrolled agent serves `endpoint`, for
    /// callers that know only the endpoint (the deploy pipeline's connection pool): its
    /// certificate must chain to the CA and is verified for the agent id it names, which
    /// is returned so the caller can compare it with the registry's record. The channel
    /// connects at once, so a refused agent is known before anything is sent.
    pub async fn dial_enrolled(&self, endpoint: &str) -> Result<(Channel, String), Untrusted> {
        let (cfg, diagnosis, named) = tls::enrolled_agent_client_config(
            self.ca.cert_der(),
            Some(std::sync::Arc::clone(&self.identity)),
        )
        .map_err(|e| Self::untrusted(endpoint, e.to_string()))?;
        let channel = napalm_trust::channel::connect(endpoint, "agent.napalm", cfg, TIMEOUT)
            .await
            .map_err(|e| Self::untrusted(endpoint, diagnosis.reason().unwrap_or(e.to_string())))?;
        let id = named
            .id()
            .ok_or_else(|| Self::untrusted(endpoint, "no verified certificate"))?;
        Ok((channel, id))
    }
}
