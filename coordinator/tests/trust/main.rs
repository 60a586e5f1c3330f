//! The cluster PKI end to end, against real pieces: a coordinator with its TLS listener
//! (`ServeConfig::loopback` + `TrustConfig`), agents on their own `test:///` drivers
//! started with a join token, and `openssl s_client` as an outside client.
//!
//! token → CSR → certificate → agent registered over mutual TLS; reused, expired and
//! revoked tokens refused with a message saying what to do; the agent's listeners refuse
//! clients without a CA-signed certificate; renewal with a 6 s lifetime while heartbeats
//! go on.

mod binary;
mod bootstrap;
mod ca;
mod deploy;
// The coordinator tests' etcd harness, shared as is (this binary reads fewer of its fields).
#[allow(dead_code)]
#[path = "../coordinator/etcd_harness.rs"]
mod etcd_harness;
mod impersonate;
mod outage;
mod revoke;
mod roles;
mod shared;
mod spoof;

use std::path::Path;
use std::time::Duration;

use napalm_coordinator::server::{self, Running, ServeConfig};
use napalm_coordinator::trust::TrustConfig;
use napalm_proto::trust_v1::trust_service_client::TrustServiceClient;
use napalm_proto::trust_v1::{
    CreateJoinTokenRequest, ListJoinTokensRequest, RevokeJoinTokenRequest,
};
use napalm_trust::id::OperatorRole;

async fn coordinator(dir: &Path, leaf_ttl: Duration) -> Running {
    let mut cfg = ServeConfig::loopback(dir);
    cfg.heartbeat.min_ttl = Duration::from_secs(2);
    cfg.trust = Some(TrustConfig {
        leaf_ttl,
        ..TrustConfig::loopback()
    });
    server::start(cfg).await.expect("coordinator starts")
}

async fn tokens(c: &Running) -> TrustServiceClient<tonic::transport::Channel> {
    TrustServiceClient::connect(c.endpoint())
        .await
        .expect("API listener")
}

async fn create(c: &Running, ttl: u64) -> String {
    tokens(c)
        .await
        .create_join_token(CreateJoinTokenRequest {
            ttl_seconds: ttl,
            name: String::new(),
        })
        .await
        .expect("token created")
        .into_inner()
        .token
}

/// An agent on its own test driver under `dir`, joining with `token`.
async fn agent(
    dir: &Path,
    token: &str,
) -> Result<napalm_agent::server::Running, napalm_agent::AgentError> {
    let state = dir.join("state");
    let mut cfg = napalm_coordinator::testing::agent_config(&state, None);
    cfg.rest.libvirt_uri = napalm_coordinator::testing::own_driver(&state).expect("driver");
    cfg.join = Some(token.to_owned());
    napalm_agent::server::start(cfg).await
}

/// A coordinator with the PKI (agent certificates of an hour) and one agent enrolled with
/// a token of its own and registered, under `dir`; the agent's id.
async fn enrolled(dir: &Path) -> (Running, napalm_agent::server::Running, String) {
    let c = coordinator(&dir.join("coord"), Duration::from_secs(3600)).await;
    let a = agent(&dir.join("a"), &create(&c, 0).await)
        .await
        .expect("joins");
    let id = a.agent.id().to_owned();
    wait_registered(&c, &id).await;
    (c, a, id)
}

async fn wait_registered(c: &Running, id: &str) -> napalm_proto::v1::Agent {
    for _ in 0..100 {
        if let Ok(a) = c.registry().get_agent(id).await {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("agent {id} never registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_enrolls_an_agent_once_and_its_listeners_need_a_cluster_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = coordinator(&dir.path().join("coord"), Duration::from_secs(3600)).await;
    let fingerprint = c.trust().expect("trust on").fingerprint();
    let token = create(&c, 0).await;
    let decoded = napalm_trust::JoinToken::decode(&token).expect("decodes");
    assert_eq!(decoded.ca_fingerprint, fingerprint);
    assert_eq!(
        decoded.addresses,
        vec![c.trust_addr().expect("tls listener").to_string()]
    );

    // Enrolled: key generated and kept locally, certificate naming the agent.
    let a = agent(&dir.path().join("a1"), &token)
        .await
        .expect("agent joins");
    let identity = a.identity.clone().expect("enrolled");
    let id = a.agent.id().to_owned();
    assert_eq!(identity.agent_id, id);
    let tls_dir = dir.path().join("a1/state/tls");
    for f in ["ca.crt", "agent.crt", "agent.key", "coordinator"] {
        assert!(tls_dir.join(f).exists(), "{f}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&tls_dir)
        .expect("tls dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "identity directory private: {mode:o}");

    // Registered over mutual TLS, with the certificate's fingerprint and https endpoints.
    let rec = wait_registered(&c, &id).await;
    assert!(rec.grpc_endpoint.starts_with("https://"), "{rec:?}");
    assert_eq!(
        rec.cert_fingerprint,
        napalm_trust::fingerprint(identity.slot.leaf().as_ref())
    );

    // The token is spent: a second host presenting it is refused, saying what to do.
    let e = agent(&dir.path().join("a2"), &token)
        .await
        .err()
        .expect("reused token refused");
    let msg = e.to_string();
    assert!(msg.contains("already used"), "{msg}");
    assert!(msg.contains("napalmctl agent token create"), "{msg}");
    assert!(!dir.path().join("a2/state/tls/agent.crt").exists());

    // Listed as used, by that agent.
    let list = tokens(&c)
        .await
        .list_join_tokens(ListJoinTokensRequest {})
        .await
        .expect("list")
        .into_inner()
        .tokens;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].state, "used");
    assert_eq!(list[0].used_by, id);

    // openssl as an outside client: the served chain verifies against the CA and names
    // the agent; an operator's certificate gets an answer; another agent's certificate
    // (chained to the CA too) gets none; without a client certificate the agent's REST
    // and gRPC listeners refuse the handshake.
    let ca = tls_dir.join("ca.crt");
    let (op_cert, op_key) = c
        .trust()
        .expect("trust")
        .issue_operator("alice", OperatorRole::Admin, Duration::from_secs(3600))
        .expect("operator certificate");
    let (op_cert_file, op_key_file) = (dir.path().join("op.crt"), dir.path().join("op.key"));
    std::fs::write(&op_cert_file, op_cert).expect("write");
    std::fs::write(&op_key_file, op_key).expect("write");
    let operator = Some((op_cert_file.as_path(), op_key_file.as_path()));
    let (ag_cert, ag_key) = (tls_dir.join("agent.crt"), tls_dir.join("agent.key"));
    let another_agent = Some((ag_cert.as_path(), ag_key.as_path()));
    let rest = s_client(a.http_addr.port(), &ca, &id, operator).await;
    assert!(
        rest.contains("HTTP/1.1 200"),
        "REST answers an operator:\n{rest}"
    );
    let rest = s_client(a.http_addr.port(), &ca, &id, another_agent).await;
    assert!(
        rest.contains("Verify return code: 0 (ok)") && !rest.contains("HTTP/1.1"),
        "an agent's certificate drove another agent:\n{rest}"
    );
    for port in [a.http_addr.port(), a.grpc_addr.expect("grpc").port()] {
        let with = s_client(port, &ca, &id, operator).await;
        assert!(with.contains("Verify return code: 0 (ok)"), "{with}");
        let without = s_client(port, &ca, &id, None).await;
        assert!(
            without.contains("Verify return code: 0 (ok)")
                && without.contains("alert certificate required"),
            "a client without a certificate got through on {port}:\n{without}"
        );
        assert!(!without.contains("HTTP/1.1 200"), "{without}");
    }
    a.stop().await;
}

/// `openssl s_client` to 127.0.0.1:`port`, verifying against `ca` for the agent's DNS
/// name, presenting `identity` (certificate and key files) when given; sends one HTTP
/// request and returns stdout and stderr.
async fn s_client(port: u16, ca: &Path, id: &str, identity: Option<(&Path, &Path)>) -> String {
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error", "-servername"])
        .arg(napalm_trust::id::agent_dns(id))
        .args(["-verify_hostname"])
        .arg(napalm_trust::id::agent_dns(id))
        .args(["-alpn", "http/1.1"]);
    if let Some((cert, key)) = identity {
        cmd.arg("-cert").arg(cert).arg("-key").arg(key);
    }
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("openssl runs");
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        let _ = stdin
            .write_all(b"GET /napalm/about HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        // Keep stdin open a moment so the answer (or the alert) arrives before EOF.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("openssl finishes")
        .expect("openssl output");
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_revoked_tokens_are_refused_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = coordinator(&dir.path().join("coord"), Duration::from_secs(3600)).await;

    let short = create(&c, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let e = agent(&dir.path().join("late"), &short)
        .await
        .err()
        .expect("expired token refused");
    let msg = e.to_string();
    assert!(msg.contains("expired"), "{msg}");
    assert!(msg.contains("napalmctl agent token create"), "{msg}");

    let revoked = create(&c, 0).await;
    let id = napalm_trust::JoinToken::decode(&revoked)
        .expect("decodes")
        .id();
    let info = tokens(&c)
        .await
        .revoke_join_token(RevokeJoinTokenRequest { id: id.clone() })
        .await
        .expect("revoke")
        .into_inner();
    assert_eq!(info.state, "revoked");
    let e = agent(&dir.path().join("rev"), &revoked)
        .await
        .err()
        .expect("revoked token refused");
    let msg = e.to_string();
    assert!(msg.contains("revoked"), "{msg}");

    // A token of another cluster (other CA): the pinned handshake fails before any
    // secret is sent.
    let other = coordinator(&dir.path().join("other"), Duration::from_secs(3600)).await;
    let mut foreign = napalm_trust::JoinToken::decode(&create(&other, 0).await).expect("decodes");
    foreign.addresses = vec![c.trust_addr().expect("addr").to_string()];
    let e = agent(&dir.path().join("foreign"), &foreign.encode())
        .await
        .err()
        .expect("foreign CA refused");
    assert!(e.to_string().contains("pinned"), "{e}");

    // A token made for another host is refused, naming both hosts; the token stays
    // unspent.
    let for_other = tokens(&c)
        .await
        .create_join_token(CreateJoinTokenRequest {
            ttl_seconds: 0,
            name: "some-other-host".into(),
        })
        .await
        .expect("token")
        .into_inner()
        .token;
    let e = agent(&dir.path().join("wrong-host"), &for_other)
        .await
        .err()
        .expect("token of another host refused");
    let msg = e.to_string();
    assert!(msg.contains("some-other-host"), "{msg}");
    assert!(msg.contains("--name"), "{msg}");
    let listed = tokens(&c)
        .await
        .list_join_tokens(ListJoinTokensRequest {})
        .await
        .expect("list")
        .into_inner()
        .tokens;
    let id = napalm_trust::JoinToken::decode(&for_other)
        .expect("decodes")
        .id();
    let state = listed.iter().find(|t| t.id == id).map(|t| t.state.clone());
    assert_eq!(state.as_deref(), Some("active"), "{listed:?}");

    // Enrollment is not served in clear on the API listener.
    let e = TrustServiceClient::connect(c.endpoint())
        .await
        .expect("api")
        .enroll(napalm_proto::trust_v1::EnrollRequest::default())
        .await
        .expect_err("no enrollment in clear");
    assert!(e.message().contains("TLS listener"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_certificate_is_renewed_while_heartbeats_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = coordinator(&dir.path().join("coord"), Duration::from_secs(6)).await;
    let token = create(&c, 0).await;
    let a = agent(&dir.path().join("a"), &token).await.expect("joins");
    let identity = a.identity.clone().expect("enrolled");
    let id = a.agent.id().to_owned();
    let first = identity.slot.leaf();
    let first_after = napalm_trust::id::not_after(&first).expect("not after");
    wait_registered(&c, &id).await;

    // Two renewals (at 4 s and 8 s) within 12 s; the original certificate is expired by
    // then, yet heartbeats keep arriving.
    let mut seen = vec![first_after];
    let start = std::time::Instant::now();
    let mut beats = Vec::new();
    while start.elapsed() < Duration::from_secs(12) {
        let now = napalm_trust::id::not_after(&identity.slot.leaf()).expect("leaf");
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        let rec = c.registry().get_agent(&id).await.expect("agent");
        if let Some(t) = rec.last_heartbeat {
            if beats.last() != Some(&t.seconds) {
                beats.push(t.seconds);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        seen.len() >= 3,
        "renewals seen (not-after values): {seen:?}"
    );
    // The agent swaps the certificate it serves, then writes it: renewals go on every 4 s,
    // so the file may trail the served one by one write (one read of each could straddle
    // a renewal, as one suite run did). It must catch up at once.
    let mut last = None;
    for _ in 0..20 {
        let served = identity.slot.leaf();
        let on_disk = std::fs::read(dir.path().join("a/state/tls/agent.crt")).expect("cert file");
        let disk_leaf = napalm_trust::tls::certs_from_pem(&on_disk).expect("pem")[0].clone();
        if disk_leaf == served {
            last = None;
            break;
        }
        last = Some((disk_leaf, served));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        last.is_none(),
        "renewed certificate not written within 2 s: {last:?}"
    );
    assert!(
        beats.len() >= 8,
        "heartbeats kept coming through the renewals: {beats:?}"
    );
    let rec = c.registry().get_agent(&id).await.expect("agent");
    assert_eq!(
        rec.state,
        napalm_proto::v1::AgentState::Ready as i32,
        "{rec:?}"
    );
    // A new connection with the renewed certificate still works (the first one expired).
    assert!(
        napalm_trust::id::not_after(&first).expect("na")
            < napalm_trust::id::not_after(&identity.slot.leaf()).expect("na")
    );
    identity
        .renew()
        .await
        .expect("renewal over a fresh mutual-TLS connection");
    // Renewals at once on different threads (a caller's beside the background one, as
    // this test's own renewal above may have been): all succeed, and what is stored is
    // what is served.
    let renewals: Vec<_> = (0..4)
        .map(|_| {
            let identity = identity.clone();
            tokio::spawn(async move { identity.renew().await })
        })
        .collect();
    for (i, r) in renewals.into_iter().enumerate() {
        r.await
            .expect("renewal task")
            .unwrap_or_else(|e| panic!("renewal {i} of 4 at once: {e}"));
    }
    // Read once the agent stopped: its own renewals, every 4 s, write these files too.
    a.stop().await;
    let stored = napalm_agent::identity::Identity::load(&dir.path().join("a/state"), &id)
        .expect("the stored pair loads")
        .expect("enrolled");
    assert_eq!(stored.slot.leaf(), identity.slot.leaf());
}
