//! A bootstrap token, as the Helm chart deploys the PKI: the CA is one Sprig's
//! `genCAWithKey` made (a SEC1 P-256 key, the fixture in `trust/tests/fixtures`), the
//! token is rendered outside the coordinator and handed to it with
//! `TrustConfig::bootstrap_token` (`--trust-bootstrap-token-file`) and to every agent of
//! the DaemonSet. Agents enrolling at once with it each get their own certificate; it
//! cannot take a registered agent's id; it stops at revocation (kept across a restart);
//! a token pinning another CA stops the coordinator at start with what to do.

use std::time::Duration;

use napalm_coordinator::deploy::chain;
use napalm_coordinator::server::{self, Running, ServeConfig};
use napalm_coordinator::trust::TrustConfig;
use napalm_proto::trust_v1::RevokeJoinTokenRequest;
use napalm_trust::{ClusterCa, JoinToken};

use super::{agent, tokens, wait_registered};

const CERT: &str = include_str!("../../../trust/tests/fixtures/helm-ca.crt");
const KEY: &str = include_str!("../../../trust/tests/fixtures/helm-ca.key");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A coordinator under `dir` with the Helm-made CA and the bootstrap token in `token`.
async fn coordinator(
    dir: &std::path::Path,
    port: u16,
    token: &std::path::Path,
) -> Result<Running, napalm_coordinator::server::ServeError> {
    std::fs::create_dir_all(dir).expect("mkdir");
    let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    std::fs::write(&cert, CERT).expect("write");
    std::fs::write(&key, KEY).expect("write");
    let mut cfg = ServeConfig::loopback(dir);
    cfg.heartbeat.min_ttl = Duration::from_secs(2);
    cfg.trust = Some(TrustConfig {
        listen: ([127, 0, 0, 1], port).into(),
        ca_files: Some((cert, key)),
        bootstrap_token: Some(token.to_owned()),
        ..TrustConfig::loopback()
    });
    server::start(cfg).await
}

/// A token for 127.0.0.1:`port` pinning `fingerprint`, valid an hour from `now`, as the
/// chart renders one.
fn bootstrap_token(port: u16, fingerprint: &str, now: i64) -> JoinToken {
    JoinToken::create(
        vec![format!("127.0.0.1:{port}")],
        fingerprint.to_owned(),
        None,
        now,
        Duration::from_secs(3600),
    )
    .expect("token")
    .0
}

/// Why a coordinator under `dir` with the bootstrap token in `token` refuses to start (it
/// must), with the error's sources.
async fn refused_start(dir: &std::path::Path, token: &std::path::Path) -> String {
    let e = coordinator(dir, free_port(), token)
        .await
        .err()
        .expect("the coordinator refuses to start");
    chain(&e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_token_enrolls_a_fleet_of_new_agents_until_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let ca = ClusterCa::from_pem(CERT, KEY).expect("the Helm-made CA loads");
    let token = bootstrap_token(port, &ca.fingerprint(), now);
    let token_file = dir.path().join("join-token");
    std::fs::write(&token_file, format!("{}\n", token.encode())).expect("write");
    let c = coordinator(&dir.path().join("coord"), port, &token_file)
        .await
        .expect("starts with the bootstrap token");
    assert_eq!(c.trust().expect("trust").fingerprint(), ca.fingerprint());

    // Three hosts of a DaemonSet start at once with the same token.
    let text = token.encode();
    let homes = ["a1", "a2", "a3"].map(|h| dir.path().join(h));
    let (a1, a2, a3) = tokio::join!(
        agent(&homes[0], &text),
        agent(&homes[1], &text),
        agent(&homes[2], &text),
    );
    let agents = [
        a1.expect("a1 enrolls"),
        a2.expect("a2 enrolls"),
        a3.expect("a3 enrolls"),
    ];
    let mut ids = Vec::new();
    for a in &agents {
        let id = a.agent.id().to_owned();
        let leaf = a.identity.clone().expect("enrolled").slot.leaf();
        assert_eq!(
            napalm_trust::id::agent_id_of(&leaf).expect("parse"),
            Some(id.clone()),
            "each host's certificate names its own id"
        );
        wait_registered(&c, &id).await;
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three identities: {ids:?}");
    let records = napalm_coordinator::trust::store::tokens(c.registry())
        .await
        .expect("tokens");
    let rec = records
        .iter()
        .find(|r| r.id == token.id())
        .expect("recorded");
    assert!(rec.reusable);
    assert_eq!(rec.uses, 3, "{rec:?}");
    assert!(rec.used_at.is_none(), "still active: {rec:?}");
    // Listed as an operator sees it: active, reusable, 3 uses, the last agent.
    let listed = tokens(&c)
        .await
        .list_join_tokens(napalm_proto::trust_v1::ListJoinTokensRequest {})
        .await
        .expect("list")
        .into_inner()
        .tokens;
    let t = listed.iter().find(|t| t.id == token.id()).expect("listed");
    assert_eq!(
        (t.state.as_str(), t.reusable, t.uses),
        ("active", true, 3),
        "{t:?}"
    );
    assert!(ids.contains(&t.used_by), "{t:?}");

    // The token cannot take a registered agent's identity: a host that kept a1's
    // agent-id but not its certificate is refused.
    let thief = dir.path().join("thief/state");
    std::fs::create_dir_all(&thief).expect("mkdir");
    std::fs::copy(dir.path().join("a1/state/agent-id"), thief.join("agent-id"))
        .expect("copy the id");
    let e = agent(&dir.path().join("thief"), &text)
        .await
        .err()
        .expect("a registered id is refused");
    let msg = e.to_string();
    assert!(msg.contains("already registered"), "{msg}");
    assert!(msg.contains("only new agents"), "{msg}");

    // Revoked: new hosts are refused; enrolled ones keep their certificates.
    let info = tokens(&c)
        .await
        .revoke_join_token(RevokeJoinTokenRequest { id: token.id() })
        .await
        .expect("revoke")
        .into_inner();
    assert_eq!(info.state, "revoked");
    let e = agent(&dir.path().join("late"), &text)
        .await
        .err()
        .expect("revoked");
    assert!(e.to_string().contains("revoked"), "{e}");
    for a in agents {
        a.stop().await;
    }

    // A restart with the same file keeps the revocation.
    c.shutdown().await.expect("stops");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = coordinator(&dir.path().join("coord"), port, &token_file)
        .await
        .expect("restarts");
    let e = agent(&dir.path().join("later"), &text)
        .await
        .err()
        .expect("still revoked");
    assert!(e.to_string().contains("revoked"), "{e}");
    c.shutdown().await.expect("stops");

    // A token pinning another CA stops a coordinator at start, saying what to do.
    let other = ClusterCa::generate("other", now).expect("ca");
    let foreign = bootstrap_token(port, &other.fingerprint(), now);
    let bad = dir.path().join("foreign-token");
    std::fs::write(&bad, foreign.encode()).expect("write");
    let all = refused_start(&dir.path().join("coord2"), &bad).await;
    assert!(all.contains("pins the CA"), "{all}");
    assert!(all.contains("--trust-ca-cert"), "{all}");
    // Not a token at all: the file is named.
    std::fs::write(&bad, "hello\n").expect("write");
    let all = refused_start(&dir.path().join("coord3"), &bad).await;
    assert!(all.contains("napalm-join-v1."), "{all}");
    assert!(all.contains("foreign-token"), "{all}");
}
