//! The daemon itself: `napalm-coordinator --trust-listen` (a real process, flags as an
//! operator types them) enrolls an in-process agent with a token made over its API, sees
//! it register over mutual TLS, and serves a certificate `openssl s_client` verifies
//! against the CA for `coordinator.napalm`. Without `--insecure-plain` it serves no
//! plain listener at all: the API to certificate holders on the TLS listener, starting
//! from the admin identity it writes at first start.

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
        .arg("--insecure-plain")
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

/// `napalm-coordinator ARGS` on a fresh state in `dir`, its stderr kept in `dir/log`.
fn daemon(dir: &std::path::Path, args: &[String]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_napalm-coordinator"));
    c.arg("--store")
        .arg(dir.join("registry.redb"))
        .arg("--secret-file")
        .arg(dir.join("secret"))
        .args(args)
        .env_remove("NAPALM_TRUST_LISTEN")
        .env_remove("NAPALM_HTTPS_LISTEN")
        .env_remove("NAPALM_INSECURE_PLAIN")
        .env_remove("NAPALM_TRUST_ADMIN_DIR")
        .kill_on_drop(true);
    c
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
fn listens(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A mutual-TLS channel to `https://127.0.0.1:port` with the identity in `admin`.
async fn as_admin(admin: &std::path::Path, port: u16) -> tonic::transport::Channel {
    let read = |f: &str| std::fs::read(admin.join(f)).expect(f);
    let ca = napalm_trust::tls::certs_from_pem(&read("ca.crt"))
        .expect("ca")
        .remove(0);
    let slot = napalm_trust::tls::CertSlot::new(&read("operator.crt"), &read("operator.key"))
        .expect("the admin certificate and key match");
    let cfg = napalm_trust::tls::client_config(&ca, Some(slot)).expect("client config");
    napalm_trust::channel::connect_with(
        &format!("https://127.0.0.1:{port}"),
        napalm_trust::id::COORDINATOR_DNS,
        cfg,
        Duration::from_secs(10),
        None,
    )
    .await
    .expect("the TLS listener takes the admin identity")
}

/// Without `--insecure-plain` the daemon needs no API token (there is no plain API to
/// guard), refuses to start with no TLS listener to serve (saying what to add), serves
/// neither `--listen` nor `--http-listen`, writes an admin
/// identity at first start (key 0600 in a 0700 directory, a napalmctl.yaml naming the TLS
/// endpoint) that the API on the TLS listener accepts while a client without a
/// certificate gets nothing, and keeps that identity across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_insecure_plain_only_tls_serves_and_the_admin_identity_is_written() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let (api, http, tls, https) = (free_port(), free_port(), free_port(), free_port());
    let plain = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{api}"),
        "--http-listen".to_owned(),
        format!("127.0.0.1:{http}"),
    ];

    // Nothing to serve: refused, with what to do.
    let out = daemon(dir.path(), &plain).output().await.expect("runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("--trust-listen") && said.contains("--insecure-plain"),
        "{said}"
    );
    // The TLS API but nowhere for clones to register: refused too.
    let mut args = plain.clone();
    args.extend(["--trust-listen".to_owned(), format!("127.0.0.1:{tls}")]);
    let out = daemon(dir.path(), &args).output().await.expect("runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("--https-listen"),
        "{said}"
    );

    args.extend(["--https-listen".to_owned(), format!("127.0.0.1:{https}")]);
    let mut child = daemon(dir.path(), &args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("napalm-coordinator runs");
    let admin = dir.path().join("admin");
    let mut up = false;
    for _ in 0..150 {
        if listens(tls) && admin.join("napalmctl.yaml").exists() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the TLS listener and the admin identity");
    assert!(listens(https), "the HTTPS endpoint serves");
    assert!(!listens(api), "no plain gRPC API without --insecure-plain");
    assert!(!listens(http), "no plain HTTP without --insecure-plain");
    let mode = |f: &str| {
        std::fs::metadata(admin.join(f))
            .expect(f)
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("operator.key"), 0o600);
    assert_eq!(
        std::fs::metadata(&admin).expect("dir").permissions().mode() & 0o777,
        0o700
    );
    let yaml = std::fs::read_to_string(admin.join("napalmctl.yaml")).expect("yaml");
    assert!(
        yaml.contains(&format!("coordinator: https://127.0.0.1:{tls}")),
        "{yaml}"
    );
    assert!(
        yaml.contains(&format!("identity: {}", admin.display())),
        "{yaml}"
    );
    let cert = std::fs::read(admin.join("operator.crt")).expect("cert");

    // The admin identity may do everything on the TLS listener: list, and make a token.
    let ch = as_admin(&admin, tls).await;
    CoordinatorServiceClient::new(ch.clone())
        .list_agents(ListAgentsRequest::default())
        .await
        .expect("the admin lists agents over mutual TLS");
    TrustServiceClient::new(ch)
        .create_join_token(CreateJoinTokenRequest::default())
        .await
        .expect("the admin makes a join token");
    // A client with the CA but no certificate of its own gets nothing.
    let ca = napalm_trust::tls::certs_from_pem(&std::fs::read(admin.join("ca.crt")).expect("ca"))
        .expect("ca")
        .remove(0);
    let anonymous = napalm_trust::channel::connect_with(
        &format!("https://127.0.0.1:{tls}"),
        napalm_trust::id::COORDINATOR_DNS,
        napalm_trust::tls::client_config(&ca, None).expect("cfg"),
        Duration::from_secs(10),
        None,
    )
    .await
    .expect("the handshake (joining hosts have no certificate yet)");
    let refused = CoordinatorServiceClient::new(anonymous)
        .list_agents(bearer(tonic::Request::new(ListAgentsRequest::default())))
        .await
        .expect_err("no certificate, no API, token or not");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // A restart keeps the identity it wrote.
    child.start_kill().expect("stop");
    let _ = child.wait().await;
    let mut child = daemon(dir.path(), &args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("napalm-coordinator runs again");
    let mut up = false;
    for _ in 0..150 {
        if listens(tls) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the TLS listener again");
    assert_eq!(
        std::fs::read(admin.join("operator.crt")).expect("cert"),
        cert,
        "a good admin identity is kept across restarts"
    );
    CoordinatorServiceClient::new(as_admin(&admin, tls).await)
        .list_agents(ListAgentsRequest::default())
        .await
        .expect("and still works");
    child.start_kill().expect("stop");
    let _ = child.wait().await;
}
