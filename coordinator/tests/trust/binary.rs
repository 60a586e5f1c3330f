//! The daemon itself: `napalm-coordinator --trust-listen` (a real process, flags as an
//! operator types them) enrolls an in-process agent with a token made over its API, sees
//! it register over mutual TLS, and serves a certificate `openssl s_client` verifies
//! against the CA for `coordinator.napalm`.

use std::time::Duration;

use napalm_proto::trust_v1::trust_service_client::TrustServiceClient;
use napalm_proto::trust_v1::CreateJoinTokenRequest;
use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use napalm_proto::v1::ListAgentsRequest;

use super::agent;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn bearer<T>(mut r: tonic::Request<T>) -> tonic::Request<T> {
    r.metadata_mut()
        .insert("authorization", "Bearer op-token".parse().expect("header"));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_enrolls_agents_on_its_trust_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (api, http, tls) = (free_port(), free_port(), free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_napalm-coordinator"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{api}"))
        .arg("--http-listen")
        .arg(format!("127.0.0.1:{http}"))
        .arg("--trust-listen")
        .arg(format!("127.0.0.1:{tls}"))
        .arg("--store")
        .arg(dir.path().join("registry.redb"))
        .arg("--secret-file")
        .arg(dir.path().join("secret"))
        .args(["--api-token", "op-token", "--heartbeat-min-ttl", "2"])
        .args(["--trust-cert-ttl", "3600", "--trust-token-ttl", "600"])
        .env_remove("NAPALM_TRUST_LISTEN")
        .kill_on_drop(true)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("napalm-coordinator runs");

    let endpoint = format!("http://127.0.0.1:{api}");
    let mut tokens = None;
    for _ in 0..100 {
        if let Ok(c) = TrustServiceClient::connect(endpoint.clone()).await {
            tokens = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut tokens = tokens.expect("the daemon's API listener answers");
    let refused = tokens
        .create_join_token(CreateJoinTokenRequest::default())
        .await
        .expect_err("the operator token is required");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let token = tokens
        .create_join_token(bearer(tonic::Request::new(CreateJoinTokenRequest {
            ttl_seconds: 0,
            name: String::new(),
        })))
        .await
        .expect("token")
        .into_inner();
    let info = token.info.expect("info");
    assert_eq!(info.expires_at - info.created_at, 600, "--trust-token-ttl");
    let decoded = napalm_trust::JoinToken::decode(&token.token).expect("decodes");
    assert_eq!(decoded.addresses, vec![format!("127.0.0.1:{tls}")]);

    let a = agent(&dir.path().join("a"), &token.token)
        .await
        .expect("the agent enrolls with the daemon");
    let id = a.agent.id().to_owned();
    let leaf = a.identity.clone().expect("identity").slot.leaf();
    let life = napalm_trust::id::not_after(&leaf).expect("na")
        - napalm_trust::id::not_before(&leaf).expect("nb");
    assert_eq!(
        life,
        3600 + 60,
        "--trust-cert-ttl (plus the clock-skew allowance)"
    );

    let mut api_client = CoordinatorServiceClient::connect(endpoint)
        .await
        .expect("api");
    let mut seen = false;
    for _ in 0..100 {
        let agents = api_client
            .list_agents(bearer(tonic::Request::new(ListAgentsRequest::default())))
            .await
            .expect("list")
            .into_inner()
            .agents;
        if agents.iter().any(|x| x.id == id) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the agent registered over mutual TLS");

    // An outside client verifies the daemon's TLS listener against the CA.
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{tls}"))
        .arg("-CAfile")
        .arg(dir.path().join("a/state/tls/ca.crt"))
        .args(["-verify_return_error", "-servername", "coordinator.napalm"])
        .args(["-verify_hostname", "coordinator.napalm"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");

    a.stop().await;
    child.start_kill().expect("stop the daemon");
    let _ = child.wait().await;
}
