//! The `napalm.v1.CoordinatorService` gRPC transport: each RPC traces, converts, and calls
//! one registry operation; nothing else lives here. [`RequireToken`] wraps the served
//! service with bearer-token authentication (the daemon adds it unless it runs with
//! `--insecure-no-auth`); the [`Coordinator`] itself checks no credentials, so in-process
//! tests serve it bare.

use std::pin::Pin;
use std::sync::Arc;

use napalm_proto::v1::coordinator_service_server::CoordinatorService;
use napalm_proto::v1::*;
use napalm_proto::ApiError;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::deploy::Deployer;
use crate::registry::agents::HeartbeatPolicy;
use crate::registry::clones::TokenKey;
use crate::registry::{Registry, RegistryError};
use crate::store::election::Role;

type Res<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn status(e: RegistryError) -> Status {
    Status::from(ApiError::from(e))
}

/// The coordinator's gRPC service.
#[derive(Clone)]
pub struct Coordinator {
    registry: Registry,
    heartbeats: HeartbeatPolicy,
    tokens: Arc<TokenKey>,
    deployer: Option<Deployer>,
    role: Option<tokio::sync::watch::Receiver<Role>>,
    metrics: Option<crate::metrics::Metrics>,
}

impl Coordinator {
    /// A service over `registry`; without a deployer, Deploy/Undeploy answer UNAVAILABLE.
    pub fn new(
        registry: Registry,
        heartbeats: HeartbeatPolicy,
        tokens: Arc<TokenKey>,
        deployer: Option<Deployer>,
    ) -> Self {
        Self {
            registry,
            heartbeats,
            tokens,
            deployer,
            role: None,
            metrics: None,
        }
    }

    /// Clones' boot times as they register go to `metrics` (`/metrics`).
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Only the elected leader deploys: followers answer NOT_LEADER naming the leader.
    pub fn with_election(mut self, role: tokio::sync::watch::Receiver<Role>) -> Self {
        self.role = Some(role);
        self
    }

    fn leader_only(&self) -> Result<(), Status> {
        let Some(role) = &self.role else {
            return Ok(());
        };
        let current = role.borrow().clone();
        match current {
            Role::Leader { fence } => {
                self.registry.set_fence(Some(fence));
                Ok(())
            }
            Role::Follower { leader } => Err(Status::from(ApiError::NotLeader {
                leader: leader.unwrap_or_default(),
            })),
        }
    }

    /// Fills each clone's public ssh host key (derived from its deployment's cluster
    /// identity, as its layer got it), so that known_hosts files can be made from answers.
    fn with_host_keys(&self, clones: &mut [Clone]) {
        let mut identities = std::collections::HashMap::new();
        for c in clones {
            let id = identities
                .entry(c.deployment.clone())
                .or_insert_with(|| crate::cluster_files::identity(&self.tokens, &c.deployment));
            c.ssh_host_key = id.ssh_public(&c.name);
        }
    }

    fn deployer(&self) -> Result<Deployer, Status> {
        self.deployer.clone().ok_or_else(|| {
            Status::unavailable(
                "this coordinator has no deploy pipeline configured (kernel, base image, sets)",
            )
        })
    }
}

/// Runs `work` in the background, streaming its progress and then its summary.
fn stream<F>(
    work: impl FnOnce(crate::deploy::report::Progress) -> F + Send + 'static,
) -> BoxStream<DeployProgress>
where
    F: std::future::Future<Output = Result<DeploySummary, ApiError>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        let done = tx.clone();
        match work(tx).await {
            Ok(summary) => {
                let _ = done
                    .send(Ok(DeployProgress {
                        event: Some(deploy_progress::Event::Summary(summary)),
                    }))
                    .await;
            }
            Err(e) => {
                let _ = done.send(Err(Status::from(e))).await;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl CoordinatorService for Coordinator {
    async fn register_agent(&self, r: Request<RegisterAgentRequest>) -> Res<RegisterAgentResponse> {
        crate::trust::serve::check_peer(&r, &r.get_ref().id)?;
        let req = r.into_inner();
        tracing::debug!(id = %req.id, "RegisterAgent");
        self.registry
            .register_agent(req, AgentSource::Registration, &self.heartbeats)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn heartbeat(&self, r: Request<HeartbeatRequest>) -> Res<HeartbeatResponse> {
        crate::trust::serve::check_peer(&r, &r.get_ref().agent_id)?;
        self.registry
            .heartbeat(r.into_inner(), &self.heartbeats)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn list_agents(&self, r: Request<ListAgentsRequest>) -> Res<ListAgentsResponse> {
        let states: Vec<AgentState> = r
            .into_inner()
            .states
            .into_iter()
            .filter_map(|s| AgentState::try_from(s).ok())
            .collect();
        self.registry
            .list_agents(&states)
            .await
            .map(|agents| Response::new(ListAgentsResponse { agents }))
            .map_err(status)
    }

    async fn get_agent(&self, r: Request<GetAgentRequest>) -> Res<Agent> {
        self.registry
            .get_agent(&r.into_inner().id)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn set_agent_state(&self, r: Request<SetAgentStateRequest>) -> Res<Agent> {
        let req = r.into_inner();
        let state = AgentState::try_from(req.state).unwrap_or(AgentState::Unspecified);
        self.registry
            .set_agent_state(&req.id, state)
            .await
            .map(Response::new)
            .map_err(status)
    }

    type DeployStream = BoxStream<DeployProgress>;
    async fn deploy(&self, r: Request<DeployRequest>) -> Res<Self::DeployStream> {
        self.leader_only()?;
        let deployer = self.deployer()?;
        let mut req = r.into_inner();
        // Bad input is refused before anything is written or streamed.
        req.spec = Some(deployer.normalize(req.spec.take()).map_err(Status::from)?);
        let name = req.spec.as_ref().map_or("", |s| s.name.as_str());
        tracing::info!(deployment = %name, "Deploy");
        // The root of the deploy's trace (see crate::telemetry).
        let span = tracing::info_span!("deploy", napalm.deployment = %name);
        Ok(Response::new(stream(move |tx| {
            tracing::Instrument::instrument(async move { deployer.deploy(req, tx).await }, span)
        })))
    }

    type UndeployStream = BoxStream<DeployProgress>;
    async fn undeploy(&self, r: Request<UndeployRequest>) -> Res<Self::UndeployStream> {
        self.leader_only()?;
        let deployer = self.deployer()?;
        let req = r.into_inner();
        // Unknown deployments are refused up front.
        self.registry
            .get_deployment(&req.name)
            .await
            .map_err(status)?;
        Ok(Response::new(stream(move |tx| async move {
            deployer.undeploy(req, tx).await
        })))
    }

    async fn list_deployments(
        &self,
        _r: Request<ListDeploymentsRequest>,
    ) -> Res<ListDeploymentsResponse> {
        self.registry
            .list_deployments()
            .await
            .map(|deployments| Response::new(ListDeploymentsResponse { deployments }))
            .map_err(status)
    }

    async fn get_deployment(&self, r: Request<GetDeploymentRequest>) -> Res<Deployment> {
        self.registry
            .get_deployment(&r.into_inner().name)
            .await
            .map(|d| {
                let clones = d.clones.clone();
                Response::new(crate::deploy::rollout::with_counts(d, &clones))
            })
            .map_err(status)
    }

    async fn list_clones(&self, r: Request<ListClonesRequest>) -> Res<ListClonesResponse> {
        self.registry
            .list_clones(&r.into_inner().deployment)
            .await
            .map(|mut clones| {
                self.with_host_keys(&mut clones);
                Response::new(ListClonesResponse { clones })
            })
            .map_err(status)
    }

    async fn get_clone(&self, r: Request<GetCloneRequest>) -> Res<Clone> {
        self.registry
            .get_clone(&r.into_inner().name)
            .await
            .map(|c| {
                let mut one = [c];
                self.with_host_keys(&mut one);
                let [c] = one;
                Response::new(c)
            })
            .map_err(status)
    }

    async fn register_clone(&self, r: Request<RegisterCloneRequest>) -> Res<RegisterCloneResponse> {
        let r = self
            .registry
            .register_clone(r.into_inner(), &self.tokens)
            .await
            .map_err(status)?;
        if let Some(m) = &self.metrics {
            let boot = r.clone.as_ref().and_then(|c| c.boot.as_ref());
            m.clone_booted(boot.and_then(|b| b.to_registered.as_ref()));
        }
        Ok(Response::new(r))
    }

    async fn rollout(&self, r: Request<RolloutRequest>) -> Res<Deployment> {
        let req = r.into_inner();
        // A status is a read any coordinator answers; a change goes to the leader.
        if req.action != RolloutAction::Status as i32 {
            self.leader_only()?;
        }
        self.deployer()?
            .rollout(req)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    type WatchEventsStream = BoxStream<Event>;
    async fn watch_events(&self, r: Request<WatchEventsRequest>) -> Res<Self::WatchEventsStream> {
        let req = r.into_inner();
        tracing::debug!(deployment = %req.deployment, "WatchEvents");
        crate::events::watch(self.registry.clone(), req, crate::events::POLL_INTERVAL)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }
}

/// gRPC methods served without the API token: a booted clone proves itself with its own
/// HMAC clone token in `RegisterClone` (as over the plain HTTP twin), and never holds the
/// operators' token.
pub const OPEN_METHODS: &[&str] = &["RegisterClone"];

/// Wraps a gRPC service (`CoordinatorServiceServer`) so that every call but the
/// [`OPEN_METHODS`] needs `authorization: Bearer TOKEN`; others are answered
/// UNAUTHENTICATED with a `google.rpc.ErrorInfo` (reason `UNAUTHENTICATED`) before they
/// reach the service. Operators (`napalmctl --token`) and agents (`RegisterAgent`,
/// `Heartbeat`) present the same token.
///
/// Roles (issue 13): that token is the `admin` role (everything); a second, `viewer`
/// token ([`Self::with_viewer`]) may call only [`READ_METHODS`], and any other call with
/// it is answered PERMISSION_DENIED saying so.
#[derive(Clone)]
pub struct RequireToken<S> {
    inner: S,
    token: Arc<str>,
    viewer: Option<Arc<str>>,
}

/// Methods the `viewer` role may call: listings, lookups and the event stream of
/// `CoordinatorService`, and the join-token listing of `TrustService` (ids and states,
/// never secrets). Nothing that changes the cluster.
pub const READ_METHODS: &[&str] = &[
    "ListAgents",
    "GetAgent",
    "ListDeployments",
    "GetDeployment",
    "ListClones",
    "GetClone",
    "WatchEvents",
    "ListJoinTokens",
];

/// What a caller's bearer token lets it do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// The call proceeds.
    Allowed,
    /// No token, or a wrong one.
    Unauthenticated,
    /// The viewer token on a method that changes something.
    ViewerWrite,
}

impl<S> RequireToken<S> {
    /// Requires `token` (the admin role) in front of `inner`.
    pub fn new(inner: S, token: impl Into<Arc<str>>) -> Self {
        Self {
            inner,
            token: token.into(),
            viewer: None,
        }
    }

    /// Also accepts `viewer` (the viewer role), for [`READ_METHODS`] only.
    pub fn with_viewer(mut self, viewer: Option<impl Into<Arc<str>>>) -> Self {
        self.viewer = viewer.map(Into::into);
        self
    }

    /// What a call to `path` (`/package.Service/Method`) with `headers` may do.
    fn access(&self, path: &str, headers: &tonic::codegen::http::HeaderMap) -> Access
    where
        S: tonic::server::NamedService,
    {
        let method = path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(S::NAME))
            .and_then(|p| p.strip_prefix('/'));
        if method.is_some_and(|m| OPEN_METHODS.contains(&m)) {
            return Access::Allowed;
        }
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(napalm_proto::auth::bearer)
            .unwrap_or("");
        if napalm_proto::auth::token_matches(&self.token, given) {
            return Access::Allowed;
        }
        match &self.viewer {
            Some(v) if napalm_proto::auth::token_matches(v, given) => {
                if method.is_some_and(|m| READ_METHODS.contains(&m)) {
                    Access::Allowed
                } else {
                    Access::ViewerWrite
                }
            }
            _ => Access::Unauthenticated,
        }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for RequireToken<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for RequireToken<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
        > + tonic::server::NamedService,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        let refused = match self.access(req.uri().path(), req.headers()) {
            Access::Allowed => return Box::pin(self.inner.call(req)),
            Access::Unauthenticated => {
                tracing::debug!(path = %req.uri().path(), "refused: missing or wrong bearer token");
                Status::from(ApiError::Unauthenticated {
                    description: "missing or wrong bearer token in `authorization` metadata; \
                                  pass napalmctl --token (or NAPALM_TOKEN), or napalm-agent \
                                  --coordinator-token-file"
                        .into(),
                })
            }
            Access::ViewerWrite => {
                tracing::info!(path = %req.uri().path(), "refused: the viewer role only reads");
                Status::permission_denied(format!(
                    "{} changes the cluster, and this token has the viewer role, which only \
                     reads ({}); use the admin token",
                    req.uri().path().rsplit('/').next().unwrap_or_default(),
                    READ_METHODS.join(", ")
                ))
            }
        };
        Box::pin(std::future::ready(Ok(refused.into_http())))
    }
}
