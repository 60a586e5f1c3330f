//! On the TLS listener, `CoordinatorService` answers only agents, each only for itself:
//! no client certificate, no call; a certificate naming one agent cannot register or
//! heartbeat as another.

use std::time::Duration;

use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use napalm_proto::v1::{HeartbeatRequest, ListAgentsRequest, RegisterAgentRequest};

use super::enrolled;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_speaks_only_for_itself_and_strangers_not_at_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, a, id) = enrolled(dir.path()).await;
    let identity = a.identity.clone().expect("identity");

    let mut mine =
        CoordinatorServiceClient::new(identity.coordinator_channel().await.expect("mutual TLS"));
    let e = mine
        .register_agent(RegisterAgentRequest {
            id: "someone-else".into(),
            name: "x".into(),
            grpc_endpoint: "https://127.0.0.1:1".into(),
            ..Default::default()
        })
        .await
        .expect_err("registering as another agent");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains(&id), "{e:?}");
    let e = mine
        .heartbeat(HeartbeatRequest {
            agent_id: "someone-else".into(),
            ..Default::default()
        })
        .await
        .expect_err("heartbeating as another agent");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(c.registry().get_agent("someone-else").await.is_err());
    // For itself it may.
    mine.heartbeat(HeartbeatRequest {
        agent_id: id.clone(),
        ..Default::default()
    })
    .await
    .expect("its own heartbeat");

    // TLS pinned to the CA but no client certificate: the listener answers nothing of
    // CoordinatorService.
    let fp = c.trust().expect("trust").fingerprint();
    let cfg = napalm_trust::tls::pinned_client_config(&fp, None).expect("pinned");
    let ch = napalm_trust::channel::connect(
        &c.trust_addr().expect("addr").to_string(),
        napalm_trust::id::COORDINATOR_DNS,
        cfg,
        Duration::from_secs(5),
    )
    .await
    .expect("TLS without a client certificate");
    let e = CoordinatorServiceClient::new(ch)
        .list_agents(ListAgentsRequest::default())
        .await
        .expect_err("no certificate, no call");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("--join"), "{e:?}");
    a.stop().await;
}
