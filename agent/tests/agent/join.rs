//! `napalm-agent --join/--join-file` as an operator runs it: what a bad token, an
//! unreachable coordinator or a missing credential make the daemon say before it serves
//! anything. (Enrollment against a real coordinator is in the coordinator's `trust`
//! tests.)

use std::time::Duration;

async fn agent(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_napalm-agent"));
    c.args(["--uri", "test:///default", "--state-dir"])
        .arg(dir.join("state"))
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .env_remove("NAPALM_AGENT_TOKEN")
        .env_remove("NAPALM_JOIN_TOKEN")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .expect("napalm-agent gives up within 60 s")
        .expect("napalm-agent runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_bad_join_token_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("join.token");
    std::fs::write(&file, "hello\n").expect("write");
    let (ok, err) = agent(dir.path(), &["--join-file", file.to_str().expect("utf8")]).await;
    assert!(!ok);
    assert!(err.contains("not a napalm join token"), "{err}");
    assert!(err.contains("napalmctl agent token create"), "{err}");
    assert!(!dir.path().join("state/tls").exists(), "nothing enrolled");
}

#[tokio::test]
async fn an_unreachable_coordinator_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let (token, _) = napalm_trust::JoinToken::create(
        vec![closed.to_string()],
        "ab".repeat(32),
        None,
        i64::MAX / 4,
        Duration::from_secs(60),
    )
    .expect("token");
    let (ok, err) = agent(dir.path(), &["--join", &token.encode()]).await;
    assert!(!ok);
    assert!(
        err.contains("no coordinator address of the join token answered"),
        "{err}"
    );
    assert!(err.contains(&closed.to_string()), "{err}");
}

/// With neither TLS nor `--insecure-plain` the agent refuses to serve in plain text and
/// names the ways to TLS; in plain text it wants a token, or a join.
#[tokio::test]
async fn without_tls_or_a_token_the_agent_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, err) = agent(dir.path(), &[]).await;
    assert!(!ok);
    for way in ["--join TOKEN", "--tls-cert", "--insecure-plain"] {
        assert!(err.contains(way), "{way}: {err}");
    }
    let (ok, err) = agent(dir.path(), &["--insecure-plain"]).await;
    assert!(!ok);
    assert!(err.contains("--join TOKEN"), "{err}");
    assert!(err.contains("--token-file"), "{err}");
}
