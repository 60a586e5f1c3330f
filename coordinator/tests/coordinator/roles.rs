//! API roles (issue 13): the admin token does everything; the viewer token lists and
//! watches but every call that changes the cluster is refused PERMISSION_DENIED, over
//! gRPC and through napalmctl as a real process; no token gets nothing.

use std::process::Command;

use napalm_coordinator::server::ApiAuth;
use napalm_coordinator::testing::{spec, GridOptions, TestGrid};
use napalm_coordinator::trust::TrustConfig;
use napalm_proto::trust_v1::trust_service_client::TrustServiceClient;
use napalm_proto::trust_v1::{CreateJoinTokenRequest, ListJoinTokensRequest};
use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use napalm_proto::v1::*;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const ADMIN: &str = "admin-token-roles";
const VIEWER: &str = "viewer-token-roles";

type Authed = InterceptedService<Channel, Bearer>;

#[derive(Clone)]
struct Bearer(Option<&'static str>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = self.0 {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("ascii"),
            );
        }
        Ok(r)
    }
}

async fn channel(g: &TestGrid) -> Channel {
    Channel::from_shared(g.coordinator.endpoint())
        .expect("uri")
        .connect()
        .await
        .expect("coordinator")
}

async fn coord(g: &TestGrid, token: Option<&'static str>) -> CoordinatorServiceClient<Authed> {
    CoordinatorServiceClient::with_interceptor(channel(g).await, Bearer(token))
}

async fn trust(g: &TestGrid, token: Option<&'static str>) -> TrustServiceClient<Authed> {
    TrustServiceClient::with_interceptor(channel(g).await, Bearer(token))
}

fn denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) {
    let e = r.expect_err(what);
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{what}: {e:?}");
    assert!(e.message().contains("viewer role"), "{what}: {e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_reads_and_cannot_change_anything_the_admin_can() {
    let g = TestGrid::start_with(GridOptions::default(), |c| {
        c.api_auth = ApiAuth::Token(ADMIN.into());
        c.viewer_token = Some(VIEWER.into());
        c.trust = Some(TrustConfig::loopback());
    })
    .await
    .expect("grid");

    // No token: nothing, not even a listing.
    let e = coord(&g, None)
        .await
        .list_agents(ListAgentsRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");

    // The admin deploys.
    let mut admin = coord(&g, Some(ADMIN)).await;
    let mut s = admin
        .deploy(DeployRequest {
            request_id: "roles-1".into(),
            spec: Some(spec("roles", 2)),
            dry_run: false,
        })
        .await
        .expect("the admin deploys")
        .into_inner();
    while let Some(m) = tokio_stream::StreamExt::next(&mut s).await {
        m.expect("progress");
    }

    // The viewer reads all of it.
    let mut viewer = coord(&g, Some(VIEWER)).await;
    let agents = viewer
        .list_agents(ListAgentsRequest::default())
        .await
        .expect("viewer lists agents")
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 2);
    let deps = viewer
        .list_deployments(ListDeploymentsRequest::default())
        .await
        .expect("viewer lists deployments")
        .into_inner()
        .deployments;
    assert!(
        deps.iter()
            .any(|d| d.spec.as_ref().is_some_and(|s| s.name == "roles")),
        "{deps:?}"
    );
    viewer
        .get_deployment(GetDeploymentRequest {
            name: "roles".into(),
        })
        .await
        .expect("viewer reads a deployment");
    let clones = viewer
        .list_clones(ListClonesRequest {
            deployment: "roles".into(),
        })
        .await
        .expect("viewer lists clones")
        .into_inner()
        .clones;
    assert_eq!(clones.len(), 2);
    trust(&g, Some(VIEWER))
        .await
        .list_join_tokens(ListJoinTokensRequest {})
        .await
        .expect("viewer lists join tokens");

    // …and changes nothing.
    denied(
        viewer
            .deploy(DeployRequest {
                request_id: "roles-v".into(),
                spec: Some(spec("roles-viewer", 1)),
                dry_run: false,
            })
            .await,
        "viewer deploys",
    );
    denied(
        viewer
            .undeploy(UndeployRequest {
                request_id: "roles-u".into(),
                name: "roles".into(),
                purge: true,
            })
            .await,
        "viewer undeploys",
    );
    denied(
        viewer
            .set_agent_state(SetAgentStateRequest {
                request_id: "roles-d".into(),
                id: agents[0].id.clone(),
                state: AgentState::Draining as i32,
            })
            .await,
        "viewer drains",
    );
    denied(
        trust(&g, Some(VIEWER))
            .await
            .create_join_token(CreateJoinTokenRequest::default())
            .await,
        "viewer makes a join token",
    );
    assert_eq!(
        g.coordinator
            .registry()
            .get_agent(&agents[0].id)
            .await
            .expect("agent")
            .state,
        AgentState::Ready as i32
    );
    trust(&g, Some(ADMIN))
        .await
        .create_join_token(CreateJoinTokenRequest::default())
        .await
        .expect("the admin makes a join token");

    // napalmctl as a real process with the viewer token: lists, cannot deploy.
    let ctl = napalm_integration::bins::napalmctl().expect("napalmctl");
    let run = |token: &str, args: &[&str]| {
        Command::new(&ctl)
            .args(["--coordinator", &g.coordinator.endpoint(), "--token", token])
            .args(args)
            .output()
            .expect("napalmctl runs")
    };
    let o = run(VIEWER, &["agents"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(VIEWER, &["deploy", "--count", "1", "--name", "roles-ctl"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the viewer deployed through napalmctl");
    assert!(err.contains("viewer role"), "{err}");
    let deps = g
        .coordinator
        .registry()
        .list::<Deployment>(napalm_coordinator::registry::DEPLOYMENTS)
        .await
        .expect("deployments");
    assert!(
        deps.iter().all(|d| d
            .spec
            .as_ref()
            .is_some_and(|s| s.name != "roles-viewer" && s.name != "roles-ctl")),
        "the viewer wrote a deployment: {deps:?}"
    );
    for a in g.agents {
        a.stop().await;
    }
}
