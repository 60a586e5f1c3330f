//! `napalmctl agent token create|list|revoke` against a real coordinator with its trust
//! listener, behind an operator token: create prints one token line, list shows it
//! active then used/revoked, revoke by id, and the operator token is required.

use std::time::Duration;

use napalm_coordinator::server::{self, ApiAuth, ServeConfig};
use napalm_coordinator::trust::TrustConfig;

fn ctl(home: &std::path::Path, endpoint: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_napalmctl"));
    for v in [
        "NAPALM_COORDINATOR",
        "NAPALM_TOKEN",
        "NAPALM_OUTPUT",
        "NAPALM_CONFIG",
        "XDG_CONFIG_HOME",
    ] {
        c.env_remove(v);
    }
    c.env("XDG_CONFIG_HOME", home)
        .env("HOME", home)
        .args(["--coordinator", endpoint])
        .kill_on_drop(true);
    c
}

async fn run(mut c: tokio::process::Command) -> (bool, String, String) {
    let o = tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .expect("napalmctl finishes")
        .expect("napalmctl runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test]
async fn tokens_are_created_listed_and_revoked_by_the_operator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = ServeConfig::loopback(dir.path());
    cfg.api_auth = ApiAuth::Token("op-token".into());
    cfg.trust = Some(TrustConfig::loopback());
    let c = server::start(cfg).await.expect("coordinator");
    let ep = c.endpoint();
    let home = dir.path().join("home");

    let mut create = ctl(&home, &ep);
    create.args([
        "--token", "op-token", "agent", "token", "create", "--ttl", "15m", "--name", "host1",
    ]);
    let (ok, out, err) = run(create).await;
    assert!(ok, "{err}");
    let token = out.trim();
    assert!(token.starts_with("napalm-join-v1."), "{out}");
    assert_eq!(out.lines().count(), 1, "only the token on stdout: {out}");

    let mut list = ctl(&home, &ep);
    list.args([
        "--token", "op-token", "-o", "json", "agent", "token", "list",
    ]);
    let (ok, out, err) = run(list).await;
    assert!(ok, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).expect("json");
    let rows = rows.as_array().expect("array");
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["state"], "active");
    assert_eq!(rows[0]["name"], "host1");
    assert!(!out.contains(token), "the secret is never listed");
    let id = rows[0]["id"].as_str().expect("id").to_owned();

    let mut revoke = ctl(&home, &ep);
    revoke.args(["--token", "op-token", "agent", "token", "revoke", &id]);
    let (ok, out, err) = run(revoke).await;
    assert!(ok, "{err}");
    assert!(out.contains("revoked"), "{out}");

    // An agent identity revoked by id.
    let mut revoke = ctl(&home, &ep);
    revoke.args([
        "--token",
        "op-token",
        "agent",
        "revoke",
        "0123456789abcdef",
        "--reason",
        "host stolen",
    ]);
    let (ok, out, err) = run(revoke).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("0123456789abcdef") && out.contains("revoked"),
        "{out}"
    );
    assert!(out.contains("host stolen"), "{out}");

    // Without the operator token: refused.
    let mut anon = ctl(&home, &ep);
    anon.args(["agent", "token", "list"]);
    let (ok, _, err) = run(anon).await;
    assert!(!ok);
    assert!(err.contains("token"), "{err}");

    // Bad lifetimes are refused before anything is sent.
    let mut bad = ctl(&home, &ep);
    bad.args([
        "--token", "op-token", "agent", "token", "create", "--ttl", "5w",
    ]);
    let (ok, _, err) = run(bad).await;
    assert!(!ok);
    assert!(err.contains("unknown unit"), "{err}");
    drop(c);
}

#[tokio::test]
async fn a_coordinator_without_trust_says_how_to_enable_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = server::start(ServeConfig::loopback(dir.path()))
        .await
        .expect("coordinator");
    let mut create = ctl(&dir.path().join("home"), &c.endpoint());
    create.args(["agent", "token", "create"]);
    let (ok, _, err) = run(create).await;
    assert!(!ok);
    assert!(err.contains("--trust-listen"), "{err}");
}
