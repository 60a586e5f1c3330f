//! Contract round trip: a real tonic server and client over loopback exchange every
//! AgentService and CoordinatorService RPC with fully populated messages; both sides check
//! what arrived equals what was sent, and `coverage` checks that every field of every
//! message in the `napalm.v1` descriptor set crossed the wire. Errors travel as statuses
//! with details and decode back into the same `ApiError`.

mod coverage;
mod fixtures;

use std::fmt::Debug;
use std::net::SocketAddr;
use std::pin::Pin;

use napalm_proto::v1::agent_service_client::AgentServiceClient;
use napalm_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use napalm_proto::v1::coordinator_service_server::{CoordinatorService, CoordinatorServiceServer};
use napalm_proto::v1::*;
use napalm_proto::ApiError;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

type Res<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Records a received message and checks it equals the fixture; a mismatch becomes an
/// error status so the client test fails with the difference.
fn check<M: PartialEq + Debug + prost::Message + prost::Name>(
    got: &M,
    want: M,
) -> Result<(), Status> {
    coverage::record(got);
    if *got != want {
        return Err(Status::invalid_argument(format!(
            "{} arrived changed:\n got  {got:?}\n want {want:?}",
            M::full_name()
        )));
    }
    Ok(())
}

fn stream_of<T: Send + 'static>(items: Vec<T>) -> BoxStream<T> {
    Box::pin(tokio_stream::iter(items.into_iter().map(Ok)))
}

struct Agent;

#[tonic::async_trait]
impl AgentService for Agent {
    async fn get_capabilities(&self, r: Request<GetCapabilitiesRequest>) -> Res<Capabilities> {
        check(r.get_ref(), fixtures::get_capabilities_request())?;
        Ok(Response::new(fixtures::capabilities()))
    }
    async fn has_blobs(&self, r: Request<HasBlobsRequest>) -> Res<HasBlobsResponse> {
        check(r.get_ref(), fixtures::has_blobs_request())?;
        Ok(Response::new(fixtures::has_blobs_response()))
    }
    async fn upload_blob(
        &self,
        r: Request<Streaming<UploadBlobRequest>>,
    ) -> Res<UploadBlobResponse> {
        let mut parts = r.into_inner();
        let mut got = Vec::new();
        while let Some(part) = parts.next().await {
            got.push(part?);
        }
        let want = [fixtures::upload_header(), fixtures::upload_data()];
        if got.len() != want.len() {
            return Err(Status::invalid_argument(format!(
                "{} parts arrived",
                got.len()
            )));
        }
        for (g, w) in got.iter().zip(want) {
            check(g, w)?;
        }
        Ok(Response::new(fixtures::upload_blob_response()))
    }
    async fn create_domain(&self, r: Request<CreateDomainRequest>) -> Res<Domain> {
        check(r.get_ref(), fixtures::create_domain_request())?;
        Ok(Response::new(fixtures::domain()))
    }
    async fn get_domain(&self, r: Request<GetDomainRequest>) -> Res<Domain> {
        if r.get_ref().name == "missing" {
            return Err(ApiError::NotFound {
                kind: "domain".into(),
                name: "missing".into(),
            }
            .into());
        }
        check(r.get_ref(), fixtures::get_domain_request())?;
        Ok(Response::new(fixtures::domain()))
    }
    async fn list_domains(&self, r: Request<ListDomainsRequest>) -> Res<ListDomainsResponse> {
        check(r.get_ref(), fixtures::list_domains_request())?;
        Ok(Response::new(fixtures::list_domains_response()))
    }
    async fn set_domain_state(&self, r: Request<SetDomainStateRequest>) -> Res<Domain> {
        check(r.get_ref(), fixtures::set_domain_state_request())?;
        Ok(Response::new(fixtures::domain()))
    }
    async fn delete_domain(&self, r: Request<DeleteDomainRequest>) -> Res<DeleteDomainResponse> {
        check(r.get_ref(), fixtures::delete_domain_request())?;
        Ok(Response::new(fixtures::delete_domain_response()))
    }
    type WatchDomainEventsStream = BoxStream<DomainEvent>;
    async fn watch_domain_events(
        &self,
        r: Request<WatchDomainEventsRequest>,
    ) -> Res<Self::WatchDomainEventsStream> {
        check(r.get_ref(), fixtures::watch_domain_events_request())?;
        Ok(Response::new(stream_of(vec![fixtures::domain_event(); 3])))
    }
    async fn get_domain_console(&self, r: Request<GetDomainConsoleRequest>) -> Res<DomainConsole> {
        check(r.get_ref(), fixtures::get_domain_console_request())?;
        Ok(Response::new(fixtures::domain_console()))
    }
}

struct Coordinator;

#[tonic::async_trait]
impl CoordinatorService for Coordinator {
    async fn register_agent(&self, r: Request<RegisterAgentRequest>) -> Res<RegisterAgentResponse> {
        check(r.get_ref(), fixtures::register_agent_request())?;
        Ok(Response::new(fixtures::register_agent_response()))
    }
    async fn heartbeat(&self, r: Request<HeartbeatRequest>) -> Res<HeartbeatResponse> {
        check(r.get_ref(), fixtures::heartbeat_request())?;
        Ok(Response::new(fixtures::heartbeat_response()))
    }
    async fn list_agents(&self, r: Request<ListAgentsRequest>) -> Res<ListAgentsResponse> {
        check(r.get_ref(), fixtures::list_agents_request())?;
        Ok(Response::new(fixtures::list_agents_response()))
    }
    async fn get_agent(&self, r: Request<GetAgentRequest>) -> Res<napalm_proto::v1::Agent> {
        check(r.get_ref(), fixtures::get_agent_request())?;
        Ok(Response::new(fixtures::agent()))
    }
    async fn set_agent_state(
        &self,
        r: Request<SetAgentStateRequest>,
    ) -> Res<napalm_proto::v1::Agent> {
        check(r.get_ref(), fixtures::set_agent_state_request())?;
        Ok(Response::new(fixtures::agent()))
    }
    type DeployStream = BoxStream<DeployProgress>;
    async fn deploy(&self, r: Request<DeployRequest>) -> Res<Self::DeployStream> {
        let spec = r.get_ref().spec.as_ref();
        if spec.is_some_and(|s| s.count == 0) {
            return Err(ApiError::InvalidArgument {
                field: "spec.count".into(),
                description: "count must be at least 1, got \"0\"".into(),
            }
            .into());
        }
        check(r.get_ref(), fixtures::deploy_request())?;
        Ok(Response::new(stream_of(vec![
            fixtures::progress_clone(),
            fixtures::progress_unplaced(),
            fixtures::progress_summary(),
        ])))
    }
    type UndeployStream = BoxStream<DeployProgress>;
    async fn undeploy(&self, r: Request<UndeployRequest>) -> Res<Self::UndeployStream> {
        check(r.get_ref(), fixtures::undeploy_request())?;
        Ok(Response::new(stream_of(vec![
            fixtures::progress_clone(),
            fixtures::progress_summary(),
        ])))
    }
    async fn list_deployments(
        &self,
        r: Request<ListDeploymentsRequest>,
    ) -> Res<ListDeploymentsResponse> {
        check(r.get_ref(), ListDeploymentsRequest {})?;
        Ok(Response::new(fixtures::list_deployments_response()))
    }
    async fn get_deployment(&self, r: Request<GetDeploymentRequest>) -> Res<Deployment> {
        check(r.get_ref(), fixtures::get_deployment_request())?;
        Ok(Response::new(fixtures::deployment()))
    }
    async fn list_clones(&self, r: Request<ListClonesRequest>) -> Res<ListClonesResponse> {
        check(r.get_ref(), fixtures::list_clones_request())?;
        Ok(Response::new(fixtures::list_clones_response()))
    }
    async fn get_clone(&self, r: Request<GetCloneRequest>) -> Res<napalm_proto::v1::Clone> {
        check(r.get_ref(), fixtures::get_clone_request())?;
        Ok(Response::new(fixtures::clone()))
    }
    async fn register_clone(&self, r: Request<RegisterCloneRequest>) -> Res<RegisterCloneResponse> {
        check(r.get_ref(), fixtures::register_clone_request())?;
        Ok(Response::new(fixtures::register_clone_response()))
    }
    type WatchEventsStream = BoxStream<Event>;
    async fn watch_events(&self, r: Request<WatchEventsRequest>) -> Res<Self::WatchEventsStream> {
        check(r.get_ref(), fixtures::watch_events_request())?;
        Ok(Response::new(stream_of(fixtures::events())))
    }
    async fn rollout(&self, r: Request<RolloutRequest>) -> Res<Deployment> {
        check(r.get_ref(), fixtures::rollout_request())?;
        Ok(Response::new(fixtures::deployment()))
    }
}

/// Serves both services on an ephemeral loopback port; the server task ends with the test.
async fn serve() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(Agent))
            .add_service(CoordinatorServiceServer::new(Coordinator))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// Client-side check of a response: equal to the fixture, and recorded for coverage.
fn got<M: PartialEq + Debug + prost::Message + prost::Name>(
    r: Result<Response<M>, Status>,
    want: M,
) {
    let m = r
        .unwrap_or_else(|s| panic!("{} call failed: {s}", M::full_name()))
        .into_inner();
    coverage::record(&m);
    assert_eq!(m, want);
}

async fn collect<M: prost::Message + prost::Name>(
    r: Result<Response<Streaming<M>>, Status>,
) -> Vec<M> {
    let mut stream = r.expect("stream call").into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.next().await {
        let m = m.expect("stream item");
        coverage::record(&m);
        out.push(m);
    }
    out
}

#[tokio::test]
async fn every_message_of_both_services_round_trips_over_loopback() {
    let addr = serve().await;
    let url = format!("http://{addr}");
    let mut agent = AgentServiceClient::connect(url.clone())
        .await
        .expect("connect agent");
    let mut coord = CoordinatorServiceClient::connect(url)
        .await
        .expect("connect coordinator");

    for m in [fixtures::upload_header(), fixtures::upload_data()] {
        coverage::record(&m);
    }
    got(
        agent
            .get_capabilities(fixtures::get_capabilities_request())
            .await,
        fixtures::capabilities(),
    );
    got(
        agent.has_blobs(fixtures::has_blobs_request()).await,
        fixtures::has_blobs_response(),
    );
    let upload = tokio_stream::iter([fixtures::upload_header(), fixtures::upload_data()]);
    got(
        agent.upload_blob(upload).await,
        fixtures::upload_blob_response(),
    );
    got(
        agent.create_domain(fixtures::create_domain_request()).await,
        fixtures::domain(),
    );
    got(
        agent.get_domain(fixtures::get_domain_request()).await,
        fixtures::domain(),
    );
    got(
        agent.list_domains(fixtures::list_domains_request()).await,
        fixtures::list_domains_response(),
    );
    got(
        agent
            .set_domain_state(fixtures::set_domain_state_request())
            .await,
        fixtures::domain(),
    );
    got(
        agent.delete_domain(fixtures::delete_domain_request()).await,
        fixtures::delete_domain_response(),
    );
    let events = collect(
        agent
            .watch_domain_events(fixtures::watch_domain_events_request())
            .await,
    )
    .await;
    assert_eq!(events, vec![fixtures::domain_event(); 3]);
    got(
        agent
            .get_domain_console(fixtures::get_domain_console_request())
            .await,
        fixtures::domain_console(),
    );

    got(
        coord
            .register_agent(fixtures::register_agent_request())
            .await,
        fixtures::register_agent_response(),
    );
    got(
        coord.heartbeat(fixtures::heartbeat_request()).await,
        fixtures::heartbeat_response(),
    );
    got(
        coord.list_agents(fixtures::list_agents_request()).await,
        fixtures::list_agents_response(),
    );
    got(
        coord.get_agent(fixtures::get_agent_request()).await,
        fixtures::agent(),
    );
    got(
        coord
            .set_agent_state(fixtures::set_agent_state_request())
            .await,
        fixtures::agent(),
    );
    let progress = collect(coord.deploy(fixtures::deploy_request()).await).await;
    assert_eq!(
        progress,
        vec![
            fixtures::progress_clone(),
            fixtures::progress_unplaced(),
            fixtures::progress_summary()
        ]
    );
    let progress = collect(coord.undeploy(fixtures::undeploy_request()).await).await;
    assert_eq!(
        progress,
        vec![fixtures::progress_clone(), fixtures::progress_summary()]
    );
    got(
        coord.list_deployments(ListDeploymentsRequest {}).await,
        fixtures::list_deployments_response(),
    );
    got(
        coord
            .get_deployment(fixtures::get_deployment_request())
            .await,
        fixtures::deployment(),
    );
    got(
        coord.list_clones(fixtures::list_clones_request()).await,
        fixtures::list_clones_response(),
    );
    got(
        coord.get_clone(fixtures::get_clone_request()).await,
        fixtures::clone(),
    );
    got(
        coord
            .register_clone(fixtures::register_clone_request())
            .await,
        fixtures::register_clone_response(),
    );
    let events = collect(coord.watch_events(fixtures::watch_events_request()).await).await;
    assert_eq!(events, fixtures::events());
    got(
        coord.rollout(fixtures::rollout_request()).await,
        fixtures::deployment(),
    );

    let missing = coverage::missing();
    assert!(
        missing.is_empty(),
        "contract fields never exchanged (set them in tests/contract/fixtures.rs): {missing:#?}"
    );
}

#[tokio::test]
async fn errors_cross_the_wire_with_their_details() {
    let addr = serve().await;
    let url = format!("http://{addr}");
    let mut agent = AgentServiceClient::connect(url.clone())
        .await
        .expect("connect agent");
    let status = agent
        .get_domain(GetDomainRequest {
            name: "missing".into(),
            include_stats: false,
        })
        .await
        .expect_err("unknown domain is an error");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(
        ApiError::from_status(&status),
        Some(ApiError::NotFound {
            kind: "domain".into(),
            name: "missing".into()
        })
    );

    let mut coord = CoordinatorServiceClient::connect(url)
        .await
        .expect("connect coordinator");
    let mut req = fixtures::deploy_request();
    if let Some(spec) = req.spec.as_mut() {
        spec.count = 0;
    }
    let status = match coord.deploy(req).await {
        Ok(_) => panic!("count 0 was accepted"),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    match ApiError::from_status(&status) {
        Some(ApiError::InvalidArgument { field, description }) => {
            assert_eq!(field, "spec.count");
            assert!(
                description.contains("\"0\""),
                "input not quoted: {description}"
            );
        }
        other => panic!("decoded {other:?}"),
    }
}
