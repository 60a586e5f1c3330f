//! `napalmctl agent token create|list|revoke` against a real coordinator with its trust
//! listener, behind an operator token: create prints one token line, list shows it
//! active then used/revoked, revoke by id, and the operator token is required.

use std::time::Duration;

use napalm_coordinator::server::{self, ApiAuth, ServeConfig};
use napalm_coordinator::trust::TrustConfig;

/// napalmctl with none of the caller's settings, `home` as its home.
fn bare(home: &std::path::Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_napalmctl"));
    for v in [
        "NAPALM_COORDINATOR",
        "NAPALM_TOKEN",
        "NAPALM_OUTPUT",
        "NAPALM_CONFIG",
        "NAPALM_IDENTITY",
        "XDG_CONFIG_HOME",
    ] {
        c.env_remove(v);
    }
    c.env("XDG_CONFIG_HOME", home)
        .env("HOME", home)
        .kill_on_drop(true);
    c
}

fn ctl(home: &std::path::Path, endpoint: &str) -> tokio::process::Command {
    let mut c = bare(home);
    c.args(["--coordinator", endpoint]);
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
    assert_eq!(
        (&rows[0]["kind"], &rows[0]["uses"]),
        (&"single".into(), &0.into())
    );
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

/// napalmctl with only `NAPALM_CONFIG` (what `login` prints to export).
fn ctl_with_config(home: &std::path::Path, config: &std::path::Path) -> tokio::process::Command {
    let mut c = bare(home);
    c.env("NAPALM_CONFIG", config);
    c
}

#[tokio::test]
async fn login_writes_a_client_certificate_whose_role_decides_over_mutual_tls() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = ServeConfig::loopback(dir.path());
    cfg.api_auth = ApiAuth::Token("op-token".into());
    cfg.trust = Some(TrustConfig::loopback());
    let c = server::start(cfg).await.expect("coordinator");
    let ep = c.endpoint();
    let home = dir.path().join("home");
    let tls_ep = c.trust_addr().expect("TLS listener").to_string();

    // An admin logs in with the operator token; the key is written 0600 and never sent.
    let admin_dir = dir.path().join("alice");
    let mut login = ctl(&home, &ep);
    login.args(["--token", "op-token", "login", "--name", "alice", "--dir"]);
    login.arg(&admin_dir);
    let (ok, out, err) = run(login).await;
    assert!(ok, "{err}");
    let config = admin_dir.join("napalmctl.yaml");
    assert!(
        out.contains(&format!("NAPALM_CONFIG={}", config.display())),
        "{out}"
    );
    assert!(out.contains("alice (admin)"), "{out}");
    let key = admin_dir.join("operator.key");
    let mode = std::fs::metadata(&key).expect("key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key is the operator's alone");
    let written = std::fs::read_to_string(&config).expect("config");
    assert!(
        written.contains(&format!("coordinator: https://{tls_ep}")),
        "{written}"
    );

    // With only that config (no token anywhere): reads and changes over mutual TLS.
    let mut agents = ctl_with_config(&home, &config);
    agents.args(["-o", "json", "agents"]);
    let (ok, out, err) = run(agents).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[]", "{out}");
    let mut create = ctl_with_config(&home, &config);
    create.args(["agent", "token", "create", "--ttl", "5m"]);
    let (ok, out, err) = run(create).await;
    assert!(ok, "an admin mints join tokens over mutual TLS: {err}");
    assert!(out.trim().starts_with("napalm-join-v1."), "{out}");

    // A viewer reads and is refused changes, saying why.
    let viewer_dir = dir.path().join("bob");
    let mut login = ctl(&home, &ep);
    login.args([
        "--token", "op-token", "login", "--name", "bob", "--role", "viewer", "--dir",
    ]);
    login.arg(&viewer_dir);
    let (ok, _, err) = run(login).await;
    assert!(ok, "{err}");
    let viewer = viewer_dir.join("napalmctl.yaml");
    let mut list = ctl_with_config(&home, &viewer);
    list.args(["deployments"]);
    let (ok, _, err) = run(list).await;
    assert!(ok, "a viewer lists deployments: {err}");
    let mut undeploy = ctl_with_config(&home, &viewer);
    undeploy.args(["undeploy", "web"]);
    let (ok, _, err) = run(undeploy).await;
    assert!(!ok);
    assert!(err.contains("viewer role"), "{err}");
    let mut create = ctl_with_config(&home, &viewer);
    create.args(["agent", "token", "create"]);
    let (ok, _, err) = run(create).await;
    assert!(!ok);
    assert!(
        err.contains("CreateJoinToken") && err.contains("viewer role"),
        "{err}"
    );

    // Without the operator token no certificate; a role that does not exist is quoted;
    // an https:// endpoint without an identity says to log in.
    let mut anon = ctl(&home, &ep);
    anon.args(["login", "--name", "eve", "--dir"]);
    anon.arg(dir.path().join("eve"));
    let (ok, _, err) = run(anon).await;
    assert!(!ok);
    assert!(err.contains("bearer token"), "{err}");
    assert!(
        !dir.path().join("eve").exists(),
        "nothing written when refused"
    );
    let mut bad = ctl(&home, &ep);
    bad.args([
        "--token", "op-token", "login", "--name", "eve", "--role", "root",
    ]);
    let (ok, _, err) = run(bad).await;
    assert!(!ok);
    assert!(err.contains("\"root\""), "{err}");
    let mut bare = ctl(&home, &format!("https://{tls_ep}"));
    bare.args(["agents"]);
    let (ok, _, err) = run(bare).await;
    assert!(!ok);
    assert!(err.contains("napalmctl login"), "{err}");
    drop(c);
}
