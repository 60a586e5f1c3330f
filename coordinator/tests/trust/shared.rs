//! Coordinators sharing etcd share the PKI: one CA (the first to start stores it, the
//! others load it) and one set of join tokens (a token made on one is redeemed once,
//! on any).

use std::time::Duration;

use napalm_coordinator::server::{self, ServeConfig};
use napalm_coordinator::trust::TrustConfig;

use super::etcd_harness::Etcd;
use super::{agent, create};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_on_one_etcd_share_the_ca_and_the_tokens() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let start = |name: &str| {
        let mut cfg = ServeConfig::loopback(&dir.path().join(name));
        cfg.store = etcd.store_url();
        cfg.id = Some(name.to_owned());
        cfg.trust = Some(TrustConfig::loopback());
        server::start(cfg)
    };
    let a = start("c1").await.expect("c1");
    let b = start("c2").await.expect("c2");
    let fa = a.trust().expect("trust").fingerprint();
    assert_eq!(fa, b.trust().expect("trust").fingerprint(), "one CA");

    // Made on c1, redeemed through c2's TLS listener; then spent for both.
    let mut token = napalm_trust::JoinToken::decode(&create(&a, 0).await).expect("token");
    token.addresses = vec![b.trust_addr().expect("addr").to_string()];
    let agent1 = agent(&dir.path().join("a1"), &token.encode())
        .await
        .expect("enrolled through c2");
    token.addresses = vec![a.trust_addr().expect("addr").to_string()];
    let e = agent(&dir.path().join("a2"), &token.encode())
        .await
        .err()
        .expect("spent on c1 too");
    assert!(e.to_string().contains("already used"), "{e}");
    agent1.stop().await;
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(100)).await;
}
