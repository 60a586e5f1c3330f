//! A revoked agent is refused and marked: its heartbeats over mutual TLS stop being
//! accepted, it cannot renew nor enroll again under its id, and the registry shows it
//! revoked with the reason and the `napalm.trust=revoked` label.

use std::time::Duration;

use napalm_proto::trust_v1::trust_service_client::TrustServiceClient;
use napalm_proto::trust_v1::RevokeAgentRequest;
use napalm_proto::v1::AgentState;

use super::{create, enrolled};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_is_refused_and_marked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, a, id) = enrolled(dir.path()).await;
    let identity = a.identity.clone().expect("identity");

    let r = TrustServiceClient::connect(c.endpoint())
        .await
        .expect("api")
        .revoke_agent(RevokeAgentRequest {
            agent: id.clone(),
            reason: "host stolen".into(),
        })
        .await
        .expect("revoked")
        .into_inner();
    assert_eq!(r.agent_id, id);
    assert_eq!(r.reason, "host stolen");

    // Marked: revoked with the reason, and labelled.
    let rec = c.registry().get_agent(&id).await.expect("agent");
    assert_eq!(rec.state, AgentState::Revoked as i32, "{rec:?}");
    assert_eq!(rec.state_reason, "host stolen");
    assert_eq!(
        rec.labels.get("napalm.trust").map(String::as_str),
        Some("revoked")
    );

    // Heartbeats (every second) stop being accepted.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = c
        .registry()
        .get_agent(&id)
        .await
        .expect("agent")
        .last_heartbeat;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = c
        .registry()
        .get_agent(&id)
        .await
        .expect("agent")
        .last_heartbeat;
    assert_eq!(before, after, "a revoked agent's heartbeat got through");

    // No renewal, no second enrollment under the same id.
    let e = identity.renew().await.expect_err("renewal refused");
    assert!(e.to_string().contains("revoked"), "{e}");
    let e = napalm_agent::identity::Identity::join(
        &dir.path().join("again"),
        &id,
        "host",
        &create(&c, 0).await,
    )
    .await
    .expect_err("re-enrollment refused");
    assert!(e.to_string().contains("revoked"), "{e}");
    a.stop().await;
}
