//! The `napalm.v1.AgentService` gRPC server: a thin translation onto the same core
//! operations as REST. Authentication: `authorization: Bearer TOKEN` metadata, checked by
//! [`auth_interceptor`] unless the agent runs with `--insecure-no-auth`.

pub mod convert;
pub mod trace;

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use napalm_proto::v1 as pb;
use napalm_proto::ApiError;
use pb::agent_service_server::AgentService;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::core::{Agent, ArtifactSpec, CreateSpec};
use crate::error::AgentError;

/// `napalm.v1.AgentService` over the agent's core: each RPC converts, calls one core
/// operation and converts back.
pub struct Service {
    agent: Arc<Agent>,
    /// Turns true as the agent stops: event streams end then, or the server's graceful
    /// shutdown would wait for watchers that never hang up.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl Service {
    /// Serves `agent` until `stopping` turns true.
    pub fn new(agent: Arc<Agent>, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { agent, stopping }
    }
}

/// The tonic server (wrap it with [`auth_interceptor`]); its event streams end once
/// `stopping` turns true.
pub fn server(
    agent: Arc<Agent>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> pb::agent_service_server::AgentServiceServer<Service> {
    pb::agent_service_server::AgentServiceServer::new(Service::new(agent, stopping))
        .max_decoding_message_size(16 << 20)
}

/// Checks the bearer token of a gRPC request.
pub fn auth_interceptor(
    token: Option<String>,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let Some(t) = &token else { return Ok(req) };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(napalm_proto::auth::bearer)
            .unwrap_or("");
        if napalm_proto::auth::token_matches(t, given) {
            Ok(req)
        } else {
            Err(ApiError::Unauthenticated {
                description: "missing or wrong bearer token in `authorization` metadata".into(),
            }
            .into())
        }
    }
}

fn rid(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

impl Service {
    fn domain(&self, d: &crate::core::DomainView) -> pb::Domain {
        convert::domain(
            d,
            self.agent.config(&d.name).unwrap_or_default(),
            self.agent.clock().unix_ms(),
        )
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::DomainEvent, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Service {
    async fn get_capabilities(
        &self,
        req: Request<pb::GetCapabilitiesRequest>,
    ) -> Result<Response<pb::Capabilities>, Status> {
        let c = self.agent.capabilities().await?;
        Ok(Response::new(convert::capabilities(
            &c,
            req.get_ref().include_raw_xml,
            self.agent.id(),
        )))
    }

    async fn has_blobs(
        &self,
        req: Request<pb::HasBlobsRequest>,
    ) -> Result<Response<pb::HasBlobsResponse>, Status> {
        let (mut present, mut missing) = (Vec::new(), Vec::new());
        for b in &req.get_ref().blobs {
            if self.agent.blobs().has(&convert::blob(Some(b))) {
                present.push(b.clone());
            } else {
                missing.push(b.clone());
            }
        }
        Ok(Response::new(pb::HasBlobsResponse { present, missing }))
    }

    async fn upload_blob(
        &self,
        req: Request<tonic::Streaming<pb::UploadBlobRequest>>,
    ) -> Result<Response<pb::UploadBlobResponse>, Status> {
        use pb::upload_blob_request::Part;
        let mut s = req.into_inner();
        let header = match s.next().await {
            Some(Ok(pb::UploadBlobRequest {
                part: Some(Part::Header(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(AgentError::invalid(
                    "header",
                    "the first message of an upload must be its header",
                )
                .into())
            }
        };
        let id = convert::blob(header.blob.as_ref());
        id.validate()?;
        if self.agent.blobs().has(&id) {
            return Ok(Response::new(pb::UploadBlobResponse {
                blob: Some(convert::blob_ref(&id)),
                already_present: true,
            }));
        }
        let mut w = self.agent.blobs().writer(id)?;
        while let Some(m) = s.next().await {
            match m?.part {
                Some(Part::Data(d)) => {
                    w = tokio::task::spawn_blocking(move || w.write(&d).map(|()| w))
                        .await
                        .map_err(|e| Status::internal(e.to_string()))??;
                }
                _ => {
                    return Err(AgentError::invalid(
                        "part",
                        "only data chunks may follow the header",
                    )
                    .into())
                }
            }
        }
        let id = tokio::task::spawn_blocking(move || w.finish())
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        tracing::info!(blob = %id, name = %header.name, "blob stored");
        Ok(Response::new(pb::UploadBlobResponse {
            blob: Some(convert::blob_ref(&id)),
            already_present: false,
        }))
    }

    async fn create_domain(
        &self,
        req: Request<pb::CreateDomainRequest>,
    ) -> Result<Response<pb::Domain>, Status> {
        let r = req.into_inner();
        let spec = CreateSpec {
            name: r.name.clone(),
            config_xml: r.config_xml,
            artifacts: r
                .artifacts
                .iter()
                .map(|a| ArtifactSpec {
                    name: a.name.clone(),
                    blob: convert::blob(a.blob.as_ref()),
                    writable: a.writable,
                })
                .collect(),
            start: r.start,
            restart: convert::restart(r.restart_policy),
            labels: r.labels.into_iter().collect(),
            scratch_disks: r
                .scratch_disks
                .into_iter()
                .map(|d| crate::scratch_disk::ScratchDiskSpec {
                    name: d.name,
                    size_bytes: d.size_bytes,
                    label: d.label,
                })
                .collect(),
            boot_from_template: r.boot_from_template,
        };
        let d = self
            .agent
            .create_from_blobs(spec, rid(&r.request_id))
            .await?;
        Ok(Response::new(self.domain(&d)))
    }

    async fn get_domain(
        &self,
        req: Request<pb::GetDomainRequest>,
    ) -> Result<Response<pb::Domain>, Status> {
        let r = req.get_ref();
        let d = self.agent.get(&r.name, r.include_stats).await?;
        Ok(Response::new(self.domain(&d)))
    }

    async fn list_domains(
        &self,
        req: Request<pb::ListDomainsRequest>,
    ) -> Result<Response<pb::ListDomainsResponse>, Status> {
        let r = req.get_ref();
        let ds = self.agent.list(r.include_foreign).await?;
        let domains = ds
            .iter()
            .filter(|d| {
                r.label_selector
                    .iter()
                    .all(|(k, v)| d.labels.get(k) == Some(v))
            })
            .map(|d| {
                if d.owned && !r.omit_config {
                    self.domain(d)
                } else {
                    convert::domain(d, String::new(), self.agent.clock().unix_ms())
                }
            })
            .collect();
        Ok(Response::new(pb::ListDomainsResponse { domains }))
    }

    async fn set_domain_state(
        &self,
        req: Request<pb::SetDomainStateRequest>,
    ) -> Result<Response<pb::Domain>, Status> {
        let r = req.get_ref();
        let target = convert::target(r.state).ok_or_else(|| {
            AgentError::invalid(
                "state",
                "use DOMAIN_STATE_RUNNING, DOMAIN_STATE_SHUTOFF or DOMAIN_STATE_PAUSED",
            )
        })?;
        let d = self
            .agent
            .set_state(
                &r.name,
                target,
                convert::duration(r.shutdown_timeout.as_ref()),
                rid(&r.request_id),
            )
            .await?;
        Ok(Response::new(self.domain(&d)))
    }

    async fn delete_domain(
        &self,
        req: Request<pb::DeleteDomainRequest>,
    ) -> Result<Response<pb::DeleteDomainResponse>, Status> {
        let r = req.get_ref();
        let existed = self
            .agent
            .delete(
                &r.name,
                r.purge,
                convert::duration(r.shutdown_timeout.as_ref()),
                rid(&r.request_id),
            )
            .await?;
        Ok(Response::new(pb::DeleteDomainResponse {
            name: r.name.clone(),
            existed,
        }))
    }

    type WatchDomainEventsStream = EventStream;

    async fn watch_domain_events(
        &self,
        req: Request<pb::WatchDomainEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let r = req.into_inner();
        let (replay, rx) = self.agent.events.subscribe(r.since_sequence);
        let names = r.names;
        let keep = move |e: &crate::events::Event| names.is_empty() || names.contains(&e.name);
        let keep2 = keep.clone();
        let replay = tokio_stream::iter(
            replay
                .into_iter()
                .filter(keep)
                .map(|e| Ok(convert::event(&e))),
        );
        let live = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |e| match e {
            Ok(e) if keep2(&e) => Some(Ok(convert::event(&e))),
            Ok(_) => None,
            Err(_) => Some(Err(Status::data_loss(
                "the watcher fell behind; resume with since_sequence",
            ))),
        });
        let mut stopping = self.stopping.clone();
        let stopped = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        Ok(Response::new(Box::pin(
            futures_util::StreamExt::take_until(replay.chain(live), stopped),
        )))
    }

    async fn get_domain_console(
        &self,
        req: Request<pb::GetDomainConsoleRequest>,
    ) -> Result<Response<pb::DomainConsole>, Status> {
        let r = req.get_ref();
        let c = self
            .agent
            .console(&r.name, usize::try_from(r.lines).unwrap_or(usize::MAX))
            .await?;
        Ok(Response::new(pb::DomainConsole {
            name: c.name,
            lines: c.lines,
            logged: c.logged,
        }))
    }
}
