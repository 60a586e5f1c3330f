//! The network edge to agents: a gRPC `AgentService` client with the bearer token, and
//! content-addressed shipping (ask which blobs the agent lacks, upload only those).
//!
//! With the cluster trust ([`Agents::with_trust`]), an `https://` endpoint is dialed over
//! mutual TLS only: the agent's certificate must chain to the CA, the agent id it names
//! must be the one the registry records at that endpoint and must not be revoked, and the
//! cached channel is then pinned to that id, so a reconnection to another host answering
//! on the same address fails its handshake instead of receiving blobs or clones.

use std::collections::HashMap;
use std::sync::Arc;

use napalm_proto::v1::agent_service_client::AgentServiceClient;
use napalm_proto::v1::{
    upload_blob_request, BlobHeader, BlobRef, CreateDomainRequest, DeleteDomainRequest, Domain,
    DomainState, HasBlobsRequest, ListDomainsRequest, SetDomainStateRequest, UploadBlobRequest,
};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// A blob held in memory with its reference.
#[derive(Clone, Debug)]
pub struct Blob {
    /// sha256 and size.
    pub r: BlobRef,
    /// Content.
    pub bytes: Arc<Vec<u8>>,
    /// Human name for logs.
    pub name: String,
}

impl Blob {
    /// Hashes `bytes`.
    pub fn new(name: &str, bytes: Vec<u8>) -> Self {
        Self {
            r: BlobRef {
                sha256: hex::encode(Sha256::digest(&bytes)),
                size: bytes.len() as u64,
            },
            bytes: Arc::new(bytes),
            name: name.into(),
        }
    }
}

type Intercepted = InterceptedService<Channel, Auth>;

/// Adds `authorization: Bearer TOKEN` to every call, and the W3C `traceparent` of the
/// span the call is made in (see [`crate::telemetry`]), so the agent's spans join the
/// caller's trace.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        crate::telemetry::inject_current(req.metadata_mut());
        Ok(req)
    }
}

/// Connections to agents, one per endpoint, reused.
#[derive(Clone, Default)]
pub struct Agents {
    token: Option<String>,
    trust: Option<crate::trust::Trust>,
    conns: Arc<Mutex<HashMap<String, Conn>>>,
    /// Shipments in progress by (endpoint, blob digest): a second shipment of a blob to
    /// the same agent (a deploy meeting the prefetch of its kernel) waits for the first,
    /// then finds it present, instead of uploading the same bytes beside it.
    uploads: Arc<std::sync::Mutex<Uploads>>,
}

type Uploads = HashMap<(String, String), Arc<Mutex<()>>>;

/// A cached connection and, over mutual TLS, the agent id its certificate proved.
#[derive(Clone)]
struct Conn {
    client: AgentServiceClient<Intercepted>,
    proven: Option<String>,
}

/// Upload chunk size.
const CHUNK: usize = 1 << 20;

/// How many agents a question to all of them ([`Agents::running`]) asks at once.
pub(super) const ASK_AT_ONCE: usize = 64;

impl Agents {
    /// Connections that present `token` to agents.
    pub fn new(token: Option<String>) -> Self {
        Self {
            token,
            trust: None,
            conns: Arc::default(),
            uploads: Arc::default(),
        }
    }

    /// The same connections, dialing `https://` agents over mutual TLS with `trust`'s CA
    /// and certificate (`None`: no trust, `https://` endpoints are refused).
    pub fn with_trust(mut self, trust: Option<crate::trust::Trust>) -> Self {
        self.trust = trust;
        self
    }

    /// The cluster trust these connections use, if any.
    pub fn trust(&self) -> Option<&crate::trust::Trust> {
        self.trust.as_ref()
    }

    /// The agent id the certificate of the agent at `endpoint` proved, once connected
    /// over mutual TLS (`None`: not connected, or a plain connection).
    pub async fn proven_id(&self, endpoint: &str) -> Option<String> {
        self.conns
            .lock()
            .await
            .get(endpoint)
            .and_then(|c| c.proven.clone())
    }

    /// The client for `endpoint`, connecting on first use. `https://` endpoints need the
    /// trust and are refused (`UNAVAILABLE`, with the reason) when the agent's certificate
    /// does not chain to the CA, names another agent than the registry records there, or
    /// names a revoked agent.
    pub async fn client(&self, endpoint: &str) -> Result<AgentServiceClient<Intercepted>, Status> {
        // Its own statement: the guard goes at the `;`, not at the end of an `if let`.
        let cached = self.conns.lock().await.get(endpoint).cloned();
        if let Some(c) = cached {
            // An open connection to an agent revoked since is dropped, not reused.
            match (&self.trust, &c.proven) {
                (Some(trust), Some(id)) if trust.is_revoked(id) => {
                    self.conns.lock().await.remove(endpoint);
                    return Err(Status::unavailable(format!(
                        "agent at {endpoint} untrusted: agent {id:?} is revoked"
                    )));
                }
                _ => return Ok(c.client),
            }
        }
        // Dialed without holding the cache: one slow or unreachable agent (up to the 5 s
        // connect timeout) must not hold up calls to every other agent.
        let (channel, proven) = if endpoint.starts_with("https://") {
            let (channel, id) = self.dial_trusted(endpoint).await?;
            (channel, Some(id))
        } else {
            let channel = Channel::from_shared(endpoint.to_owned())
                .map_err(|e| Status::invalid_argument(format!("agent endpoint {endpoint:?}: {e}")))?
                .connect_timeout(std::time::Duration::from_secs(5))
                .connect()
                .await
                .map_err(|e| Status::unavailable(format!("agent {endpoint} unreachable: {e}")))?;
            (channel, None)
        };
        let auth = Auth(
            self.token
                .as_ref()
                .and_then(|t| format!("Bearer {t}").parse().ok()),
        );
        let client =
            AgentServiceClient::with_interceptor(channel, auth).max_decoding_message_size(64 << 20);
        // Two callers may have dialed at once: the first connection cached is kept.
        Ok(self
            .conns
            .lock()
            .await
            .entry(endpoint.to_owned())
            .or_insert(Conn { client, proven })
            .client
            .clone())
    }

    /// A mutual-TLS channel to the enrolled agent at `endpoint` and the id it proved.
    async fn dial_trusted(&self, endpoint: &str) -> Result<(Channel, String), Status> {
        let Some(trust) = &self.trust else {
            return Err(Status::unavailable(format!(
                "agent {endpoint} serves mutual TLS but this coordinator has no cluster \
                 trust: start it with --trust-listen"
            )));
        };
        let (_, proven) = trust
            .dial_enrolled(endpoint)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if trust.is_revoked(&proven) {
            return Err(Status::unavailable(format!(
                "agent at {endpoint} untrusted: its certificate names agent {proven:?}, \
                 which is revoked"
            )));
        }
        // First contact (discovery) has no record yet; afterwards the certificate must
        // name an agent the registry records at this endpoint.
        let recorded = trust
            .recorded_at(endpoint)
            .await
            .map_err(|e| Status::unavailable(format!("reading the registry: {e}")))?;
        if !recorded.is_empty() && !recorded.contains(&proven) {
            return Err(Status::unavailable(format!(
                "agent at {endpoint} untrusted: its certificate names agent {proven:?}, but \
                 the registry records {} there",
                recorded.join(", ")
            )));
        }
        // Pinned to the proven id: a reconnection must present the same agent's
        // certificate.
        let channel = trust
            .dial_agent(endpoint, &proven)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::debug!(%endpoint, agent = %proven, "agent connected over mutual TLS");
        Ok((channel, proven))
    }

    /// Forgets a connection (after the agent failed), so the next call reconnects.
    pub async fn forget(&self, endpoint: &str) {
        self.conns.lock().await.remove(endpoint);
    }

    /// Sends the blobs the agent lacks; returns how many bytes were uploaded. Each blob
    /// waits for any other shipment of it to the same agent first; one at a time, so that
    /// a clone's own image never waits behind another's.
    pub async fn ship(&self, endpoint: &str, blobs: &[&Blob]) -> Result<u64, Status> {
        let mut sent = 0;
        for (i, blob) in blobs.iter().enumerate() {
            if blobs[..i].iter().any(|b| b.r.sha256 == blob.r.sha256) {
                continue;
            }
            let key = (endpoint.to_owned(), blob.r.sha256.clone());
            let lock = Arc::clone(
                self.uploads
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(key)
                    .or_default(),
            );
            let held = lock.lock().await;
            let r = self.ship_held(endpoint, &[blob]).await;
            drop(held);
            drop(lock);
            // Forget the locks no other shipment holds or waits for.
            self.uploads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, l| Arc::strong_count(l) > 1);
            sent += r?;
        }
        Ok(sent)
    }

    async fn ship_held(&self, endpoint: &str, blobs: &[&Blob]) -> Result<u64, Status> {
        let mut c = self.client(endpoint).await?;
        let missing = c
            .has_blobs(HasBlobsRequest {
                blobs: blobs.iter().map(|b| b.r.clone()).collect(),
            })
            .await?
            .into_inner()
            .missing;
        let mut sent = 0;
        for m in missing {
            let Some(blob) = blobs.iter().find(|b| b.r.sha256 == m.sha256) else {
                continue;
            };
            let header = UploadBlobRequest {
                part: Some(upload_blob_request::Part::Header(BlobHeader {
                    request_id: format!("upload-{}", blob.r.sha256),
                    blob: Some(blob.r.clone()),
                    name: blob.name.clone(),
                })),
            };
            let bytes = Arc::clone(&blob.bytes);
            let chunks = (0..bytes.len().div_ceil(CHUNK)).map(move |i| UploadBlobRequest {
                part: Some(upload_blob_request::Part::Data(
                    bytes[i * CHUNK..((i + 1) * CHUNK).min(bytes.len())].to_vec(),
                )),
            });
            let stream = tokio_stream::iter(std::iter::once(header).chain(chunks));
            c.upload_blob(stream).await?;
            sent += blob.r.size;
        }
        Ok(sent)
    }

    /// Defines and starts a domain.
    pub async fn create(&self, endpoint: &str, req: CreateDomainRequest) -> Result<Domain, Status> {
        Ok(self
            .client(endpoint)
            .await?
            .create_domain(req)
            .await?
            .into_inner())
    }

    /// Starts a defined domain.
    pub async fn start(
        &self,
        endpoint: &str,
        name: &str,
        request_id: String,
    ) -> Result<Domain, Status> {
        Ok(self
            .client(endpoint)
            .await?
            .set_domain_state(SetDomainStateRequest {
                request_id,
                name: name.into(),
                state: DomainState::Running as i32,
                shutdown_timeout: None,
            })
            .await?
            .into_inner())
    }

    /// Deletes a domain (absent is fine).
    pub async fn delete(
        &self,
        endpoint: &str,
        name: &str,
        request_id: String,
    ) -> Result<(), Status> {
        self.client(endpoint)
            .await?
            .delete_domain(DeleteDomainRequest {
                request_id,
                name: name.into(),
                shutdown_timeout: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                }),
                purge: true,
            })
            .await?;
        Ok(())
    }

    /// Domains on an agent carrying all of `labels`, without their configuration (their
    /// names, states and labels are what the callers compare with the registry).
    pub async fn domains_labelled(
        &self,
        endpoint: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Domain>, Status> {
        Ok(self
            .client(endpoint)
            .await?
            .list_domains(ListDomainsRequest {
                include_foreign: false,
                label_selector: labels,
                omit_config: true,
            })
            .await?
            .into_inner()
            .domains)
    }

    /// The domains of `deployment` each agent that may be dialed (not down, untrusted or
    /// revoked) runs (agent id → its domains); agents that do not answer are left out.
    pub async fn running(
        &self,
        agents: &[napalm_proto::v1::Agent],
        deployment: &str,
    ) -> Vec<(String, Vec<Domain>)> {
        // Asked together: one agent after the other cost 13 s of each deploy over 500
        // agents, before any clone's layer was built.
        let at_once = tokio::sync::Semaphore::new(ASK_AT_ONCE);
        let asks = agents
            .iter()
            .filter(|a| crate::registry::agents::reachable(a))
            .map(|a| {
                let at_once = &at_once;
                async move {
                    let _turn = at_once.acquire().await.ok()?;
                    let labels = HashMap::from([("deployment".to_owned(), deployment.to_owned())]);
                    let domains = self.domains_labelled(&a.grpc_endpoint, labels).await.ok()?;
                    Some((a.id.clone(), domains))
                }
            });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The end of domain `name`'s serial console on the agent at `endpoint`, as a note
    /// for a failure message: `console: LINE | LINE | …` (its last `lines` lines, each
    /// cut at 200 characters), `console: (empty)` when the guest printed nothing,
    /// `console: (not kept by the agent)` for a domain whose console the agent does not
    /// keep, `console: (unavailable: WHY)` when the agent does not answer within 5 s.
    pub async fn console_note(&self, endpoint: &str, name: &str, lines: u32) -> String {
        let ask = async {
            self.client(endpoint)
                .await?
                .get_domain_console(napalm_proto::v1::GetDomainConsoleRequest {
                    name: name.to_owned(),
                    lines,
                })
                .await
                .map(tonic::Response::into_inner)
        };
        match tokio::time::timeout(std::time::Duration::from_secs(5), ask).await {
            Ok(Ok(c)) if !c.lines.is_empty() => {
                let cut: Vec<String> = c
                    .lines
                    .iter()
                    .map(|l| match l.char_indices().nth(200) {
                        Some((i, _)) => format!("{}…", &l[..i]),
                        None => l.clone(),
                    })
                    .collect();
                format!("console: {}", cut.join(" | "))
            }
            Ok(Ok(c)) if !c.logged => "console: (not kept by the agent)".into(),
            Ok(Ok(_)) => "console: (empty)".into(),
            Ok(Err(e)) => format!("console: (unavailable: {})", e.message()),
            Err(_) => "console: (unavailable: the agent did not answer within 5 s)".into(),
        }
    }
}
