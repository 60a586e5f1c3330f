//! Renewal survives a coordinator outage: the coordinator stops just before the agent's
//! renewal point and comes back (same registry, same CA, same TLS address) before the
//! certificate expires; the agent's failed renewal is retried, succeeds, and the agent
//! registers and heartbeats again with no restart and no new token.

use std::time::Duration;

use napalm_coordinator::server::{self, ServeConfig};
use napalm_coordinator::trust::TrustConfig;

use super::{agent, create, wait_registered};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_retries_through_a_coordinator_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let cfg = || {
        let mut cfg = ServeConfig::loopback(&dir.path().join("coord"));
        cfg.heartbeat.min_ttl = Duration::from_secs(2);
        cfg.trust = Some(TrustConfig {
            listen: ([127, 0, 0, 1], port).into(),
            leaf_ttl: Duration::from_secs(9),
            ..TrustConfig::loopback()
        });
        cfg
    };
    let c = server::start(cfg()).await.expect("coordinator");
    let a = agent(&dir.path().join("a"), &create(&c, 0).await)
        .await
        .expect("joins");
    let id = a.agent.id().to_owned();
    wait_registered(&c, &id).await;
    let identity = a.identity.clone().expect("identity");
    let first = napalm_trust::id::not_after(&identity.slot.leaf()).expect("not after");
    let renew_at = identity.renew_at().expect("renew at");
    assert_eq!(first - renew_at, 3, "renewal at two thirds of 9 s");

    // Down from before the renewal point (6 s) until 1.5 s after it.
    c.shutdown().await.expect("stops");
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64()
    };
    let back_at = renew_at as f64 + 1.5;
    tokio::time::sleep(Duration::from_secs_f64((back_at - now()).max(0.0))).await;
    let c = server::start(cfg()).await.expect("coordinator back");

    // Renewed before the first certificate expired, then registered again.
    let mut renewed = None;
    for _ in 0..60 {
        let na = napalm_trust::id::not_after(&identity.slot.leaf()).expect("leaf");
        if na > first {
            renewed = Some(na);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let renewed = renewed.expect("renewed after the coordinator came back");
    assert!(renewed > first);
    assert!(
        now() < first as f64,
        "renewed in time, with {:.1} s to spare",
        first as f64 - now()
    );
    // Heartbeats arrive again (the record itself survived the restart in the registry).
    let before = c
        .registry()
        .get_agent(&id)
        .await
        .expect("agent")
        .last_heartbeat;
    let mut beating = false;
    for _ in 0..80 {
        let now_seen = c
            .registry()
            .get_agent(&id)
            .await
            .expect("agent")
            .last_heartbeat;
        if now_seen != before {
            beating = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(beating, "no heartbeat after the coordinator came back");
    a.stop().await;
}
