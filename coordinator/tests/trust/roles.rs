//! Roles on the TLS listener: an agent's certificate registers and heartbeats and nothing
//! else (it cannot deploy, read the cluster or mint tokens); an operator's certificate,
//! issued over a CSR whose key never left the operator (what `napalmctl login` does), in
//! the `viewer` role reads and is refused every change, in the `admin` role does both.

use std::sync::Arc;
use std::time::Duration;

use napalm_coordinator::server::Running;
use napalm_proto::trust_v1::trust_service_client::TrustServiceClient;
use napalm_proto::trust_v1::{
    CreateJoinTokenRequest, IssueOperatorCertificateRequest, ListJoinTokensRequest,
};
use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use napalm_proto::v1::{DeployRequest, DeploymentSpec, ListAgentsRequest, UndeployRequest};
use napalm_trust::tls::CertSlot;
use tonic::transport::Channel;

use super::{enrolled, tokens};

/// A mutual-TLS channel to `c`'s TLS listener presenting `identity`.
async fn tls(c: &Running, identity: Option<Arc<CertSlot>>) -> Channel {
    let fp = c.trust().expect("trust").fingerprint();
    let cfg = napalm_trust::tls::pinned_client_config(&fp, identity).expect("client config");
    napalm_trust::channel::connect(
        &c.trust_addr().expect("addr").to_string(),
        napalm_trust::id::COORDINATOR_DNS,
        cfg,
        Duration::from_secs(5),
    )
    .await
    .expect("TLS listener")
}

/// An operator certificate for `name` in `role`, over a key made here.
async fn login(c: &Running, name: &str, role: &str) -> Arc<CertSlot> {
    let (key, csr) = napalm_trust::csr::generate(name).expect("key and CSR");
    let issued = tokens(c)
        .await
        .issue_operator_certificate(IssueOperatorCertificateRequest {
            name: name.into(),
            role: role.into(),
            csr_pem: csr,
            ttl_seconds: 600,
        })
        .await
        .expect("operator certificate")
        .into_inner();
    assert_eq!(
        issued.endpoints,
        [c.trust_addr().expect("addr").to_string()]
    );
    let cert = issued.certificate.expect("certificate");
    let chain = format!("{}{}", cert.cert_pem, cert.ca_pem);
    assert!(!chain.contains("PRIVATE KEY"), "no key crosses the wire");
    CertSlot::new(chain.as_bytes(), key.as_bytes()).expect("identity")
}

fn dry_run(name: &str) -> DeployRequest {
    DeployRequest {
        request_id: String::new(),
        spec: Some(DeploymentSpec {
            name: name.into(),
            count: 1,
            ..Default::default()
        }),
        dry_run: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_only_heartbeat_viewers_only_read_admins_do_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, a, id) = enrolled(dir.path()).await;

    // The agent's own certificate: registration and heartbeats only.
    let agent_ch = a
        .identity
        .as_ref()
        .expect("identity")
        .coordinator_channel()
        .await
        .expect("mutual TLS");
    let mut as_agent = CoordinatorServiceClient::new(agent_ch.clone());
    let e = as_agent
        .deploy(dry_run("stolen"))
        .await
        .expect_err("an agent cannot deploy");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains(&id) && e.message().contains("RegisterAgent, Heartbeat"),
        "{e:?}"
    );
    let e = as_agent
        .list_agents(ListAgentsRequest::default())
        .await
        .expect_err("an agent cannot read the cluster");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = TrustServiceClient::new(agent_ch)
        .create_join_token(CreateJoinTokenRequest::default())
        .await
        .expect_err("an agent cannot mint join tokens");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // A viewer reads and changes nothing.
    let viewer_ch = tls(&c, Some(login(&c, "bob", "viewer").await)).await;
    let mut viewer = CoordinatorServiceClient::new(viewer_ch.clone());
    let agents = viewer
        .list_agents(ListAgentsRequest::default())
        .await
        .expect("a viewer lists agents")
        .into_inner()
        .agents;
    assert!(agents.iter().any(|x| x.id == id), "{agents:?}");
    let e = viewer
        .deploy(dry_run("web"))
        .await
        .expect_err("a viewer cannot deploy");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("Deploy") && e.message().contains("viewer role"),
        "{e:?}"
    );
    let e = viewer
        .undeploy(UndeployRequest {
            name: "web".into(),
            ..Default::default()
        })
        .await
        .expect_err("a viewer cannot undeploy");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let mut viewer_trust = TrustServiceClient::new(viewer_ch);
    viewer_trust
        .list_join_tokens(ListJoinTokensRequest {})
        .await
        .expect("a viewer lists join tokens");
    let e = viewer_trust
        .create_join_token(CreateJoinTokenRequest::default())
        .await
        .expect_err("a viewer cannot mint join tokens");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // An admin does both, over the same listener.
    let admin_ch = tls(&c, Some(login(&c, "alice", "admin").await)).await;
    let mut admin = CoordinatorServiceClient::new(admin_ch.clone());
    admin
        .list_agents(ListAgentsRequest::default())
        .await
        .expect("an admin lists agents");
    // This coordinator has no deploy pipeline: the service itself answers, so the gate let
    // the admin's change through.
    let e = admin
        .deploy(dry_run("web"))
        .await
        .expect_err("no pipeline here");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("no deploy pipeline"), "{e:?}");
    let e = admin
        .undeploy(UndeployRequest {
            name: "web".into(),
            ..Default::default()
        })
        .await
        .expect_err("no pipeline here");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    let made = TrustServiceClient::new(admin_ch)
        .create_join_token(CreateJoinTokenRequest {
            ttl_seconds: 60,
            name: String::new(),
        })
        .await
        .expect("an admin mints a join token over mutual TLS")
        .into_inner();
    assert!(made.token.starts_with("napalm-join-v1."), "{made:?}");

    // A role that does not exist is refused, quoting it.
    let (_, csr) = napalm_trust::csr::generate("eve").expect("csr");
    let e = tokens(&c)
        .await
        .issue_operator_certificate(IssueOperatorCertificateRequest {
            name: "eve".into(),
            role: "root".into(),
            csr_pem: csr,
            ttl_seconds: 0,
        })
        .await
        .expect_err("no such role");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("\"root\""), "{e:?}");
    a.stop().await;
}
