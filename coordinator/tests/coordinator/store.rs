//! Both store backends give the same revision-checked, all-or-nothing semantics; etcd
//! leader election hands over when the leader goes, and fences a deposed leader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use napalm_coordinator::clock::SystemClock;
use napalm_coordinator::registry::{Registry, RegistryError};
use napalm_coordinator::store::election::{Election, Role, LEADER_KEY};
use napalm_coordinator::store::{self, Check, Durability, Store, StoreError, Txn};
use napalm_proto::v1::{Clone, ClonePhase};

use crate::etcd_harness::Etcd;

async fn semantics(s: Arc<dyn Store>) {
    // Create only if absent.
    let r1 = s
        .commit(
            Txn::new()
                .check("/t/a", Check::Absent)
                .put("/t/a", b"1".to_vec()),
        )
        .await
        .expect("first create");
    let a = s.get("/t/a").await.expect("get").expect("present");
    assert_eq!(a.value, b"1");
    assert_eq!(a.mod_revision, r1);

    // A second create of the same key conflicts and names it.
    let err = s
        .commit(
            Txn::new()
                .check("/t/a", Check::Absent)
                .put("/t/a", b"2".to_vec()),
        )
        .await
        .expect_err("second create conflicts");
    match err {
        StoreError::Conflict { key, .. } => assert_eq!(key, "/t/a"),
        other => panic!("expected conflict, got {other}"),
    }

    // Update at the right revision works; at a stale one it fails and writes nothing.
    let r2 = s
        .commit(
            Txn::new()
                .check("/t/a", Check::Revision(r1))
                .put("/t/a", b"3".to_vec()),
        )
        .await
        .expect("update");
    assert!(r2 > r1);
    let stale = s
        .commit(
            Txn::new()
                .check("/t/a", Check::Revision(r1))
                .put("/t/a", b"4".to_vec())
                .put("/t/b", b"x".to_vec()),
        )
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict { .. })));
    assert_eq!(s.get("/t/a").await.expect("get").expect("a").value, b"3");
    assert_eq!(
        s.get("/t/b").await.expect("get"),
        None,
        "half a txn was applied"
    );

    // Two racing writers at the same revision: exactly one wins.
    let (x, y) = tokio::join!(
        s.commit(
            Txn::new()
                .check("/t/a", Check::Revision(r2))
                .put("/t/a", b"x".to_vec())
        ),
        s.commit(
            Txn::new()
                .check("/t/a", Check::Revision(r2))
                .put("/t/a", b"y".to_vec())
        ),
    );
    assert_eq!(x.is_ok() as u8 + y.is_ok() as u8, 1, "{x:?} {y:?}");

    // Prefix listing is sorted and exact; deletes apply.
    s.commit(
        Txn::new()
            .put("/t/c", b"c".to_vec())
            .put("/u/z", b"z".to_vec()),
    )
    .await
    .expect("puts");
    let keys: Vec<String> = s
        .list("/t/")
        .await
        .expect("list")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["/t/a", "/t/c"]);
    s.commit(Txn::new().delete("/t/c").delete("/t/never"))
        .await
        .expect("delete");
    assert_eq!(s.get("/t/c").await.expect("get"), None);
}

/// Eventual commits are changes like any other while the store runs: visible at once,
/// revision-checked, all or nothing, ordered with immediate ones.
async fn eventual(s: Arc<dyn Store>) {
    let lazy = |t: Txn| t.durability(Durability::Eventual);
    let r1 = s
        .commit(lazy(
            Txn::new()
                .check("/e/a", Check::Absent)
                .put("/e/a", b"1".to_vec()),
        ))
        .await
        .expect("eventual create");
    let a = s.get("/e/a").await.expect("get").expect("visible at once");
    assert_eq!((a.value.as_slice(), a.mod_revision), (&b"1"[..], r1));
    let stale = s
        .commit(lazy(
            Txn::new()
                .check("/e/a", Check::Absent)
                .put("/e/b", b"x".to_vec()),
        ))
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    assert_eq!(
        s.get("/e/b").await.expect("get"),
        None,
        "half a txn applied"
    );
    let r2 = s
        .commit(Txn::new().put("/e/b", b"2".to_vec()))
        .await
        .expect("immediate after eventual");
    assert!(r2 > r1);
    let r3 = s
        .commit(lazy(
            Txn::new()
                .check("/e/a", Check::Revision(r1))
                .put("/e/a", b"3".to_vec()),
        ))
        .await
        .expect("eventual update at the right revision");
    assert!(r3 > r2);
}

/// `update_many` changes every record, one batch per 64, and keeps the order of its keys;
/// a batch that loses a race is redone record by record, so no change is lost. (The racing
/// write blocks in place: the test runtimes are multi-threaded.)
async fn update_many(s: Arc<dyn Store>) {
    let reg = Registry::new(s.clone(), Arc::new(SystemClock));
    let keys: Vec<String> = (0..150).map(|i| format!("/m/c{i:03}")).collect();
    // Seeded 50 per transaction: etcd refuses more than 128 operations in one.
    for (n, chunk) in keys.chunks(50).enumerate() {
        let mut txn = Txn::new();
        for (j, k) in chunk.iter().enumerate() {
            let i = n * 50 + j;
            let c = Clone {
                name: format!("c{i:03}"),
                index: i as u32,
                ..Default::default()
            };
            txn = txn.put(k.as_str(), prost::Message::encode_to_vec(&c));
        }
        s.commit(txn).await.expect("seed");
    }
    let before = s.get("/m/c000").await.expect("get").expect("seeded");
    let mut raced = false;
    let out = reg
        .update_many::<Clone, _>(&keys, Durability::Immediate, |j, cur| {
            // Someone else changes a record of the second batch while it is being read.
            if j == 70 && !raced {
                raced = true;
                let other = Clone {
                    name: "c070".into(),
                    index: 70,
                    last_error: "changed by another writer".into(),
                    ..Default::default()
                };
                let write =
                    s.commit(Txn::new().put("/m/c070", prost::Message::encode_to_vec(&other)));
                tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(write))
                    .expect("racing write");
            }
            Ok(cur.map(|mut c| {
                c.phase = ClonePhase::Scheduled as i32;
                c.agent_id = format!("agent-{j}");
                c
            }))
        })
        .await
        .expect("update_many");
    assert_eq!(out.len(), keys.len());
    for (j, (k, c)) in keys.iter().zip(&out).enumerate() {
        let c = c.as_ref().expect("present");
        assert_eq!(c.index as usize, j, "results in key order");
        let (stored, _) = reg.get::<Clone>(k).await.expect("get").expect("stored");
        assert_eq!(&stored, c);
        assert_eq!(stored.agent_id, format!("agent-{j}"));
        assert_eq!(stored.phase, ClonePhase::Scheduled as i32);
    }
    let (c070, _) = reg
        .get::<Clone>("/m/c070")
        .await
        .expect("get")
        .expect("c070");
    assert_eq!(
        c070.last_error, "changed by another writer",
        "the racing change was overwritten instead of re-read"
    );
    let after = s.get("/m/c000").await.expect("get").expect("present");
    assert!(after.mod_revision > before.mod_revision);
    // An error of `change` stops it.
    let err = reg
        .update_many::<Clone, _>(&keys[..3], Durability::Eventual, |j, _| {
            if j == 1 {
                Err(napalm_proto::ApiError::Conflict {
                    description: "no".into(),
                }
                .into())
            } else {
                Ok(None)
            }
        })
        .await;
    assert!(matches!(err, Err(RegistryError::Api(_))), "{err:?}");
    assert!(
        s.get(&keys[0]).await.expect("get").is_some(),
        "half a batch applied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_store_semantics_and_persistence() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("sub/registry.redb");
    let s = store::open(path.to_str().expect("utf-8 path"))
        .await
        .expect("open");
    semantics(s.clone()).await;
    eventual(s.clone()).await;
    update_many(s.clone()).await;
    let before = s.get("/t/a").await.expect("get");
    // The last commit is eventual: closing the store makes it durable.
    s.commit(
        Txn::new()
            .put("/e/last", b"eventual".to_vec())
            .durability(Durability::Eventual),
    )
    .await
    .expect("eventual");
    drop(s);
    let reopened = store::open(path.to_str().expect("utf-8 path"))
        .await
        .expect("reopen");
    assert_eq!(
        reopened.get("/t/a").await.expect("get"),
        before,
        "lost on reopen"
    );
    for (k, v) in [
        ("/e/a", &b"3"[..]),
        ("/e/b", b"2"),
        ("/e/last", b"eventual"),
    ] {
        let got = reopened.get(k).await.expect("get").map(|v| v.value);
        assert_eq!(got.as_deref(), Some(v), "{k} lost on reopen");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_store_semantics() {
    let etcd = Etcd::start();
    let s = store::open(&etcd.store_url()).await.expect("connect etcd");
    semantics(s.clone()).await;
    eventual(s.clone()).await;
    update_many(s).await;
}

/// etcd serving clients over TLS with `--client-cert-auth` (issue 13): the same
/// semantics through a coordinator's client certificate; refused without TLS, without a
/// client certificate, and with one from another CA.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_over_tls_with_client_certificates() {
    use napalm_coordinator::store::etcd::EtcdTls;
    let etcd = Etcd::start_tls();
    let tls = etcd.tls.clone().expect("tls");
    let pki = etcd.pki().expect("pki");
    let s = store::open_with(&etcd.store_url(), Some(&tls))
        .await
        .expect("connect etcd over TLS with the client certificate");
    semantics(s.clone()).await;
    eventual(s.clone()).await;
    update_many(s).await;

    let refused = |r: Result<Arc<dyn Store>, StoreError>, what: &str| {
        let e = r.err().unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(matches!(e, StoreError::Unavailable { .. }), "{what}: {e}");
    };
    refused(store::open(&etcd.store_url()).await, "plain http");
    refused(
        store::open_with(
            &etcd.store_url(),
            Some(&EtcdTls {
                ca: tls.ca.clone(),
                identity: None,
            }),
        )
        .await,
        "no client certificate",
    );
    refused(
        store::open_with(
            &etcd.store_url(),
            Some(&EtcdTls {
                ca: tls.ca.clone(),
                identity: Some(pki.foreign_client.clone()),
            }),
        )
        .await,
        "a client certificate of another CA",
    );
    let e = store::open_with(
        &etcd.store_url(),
        Some(&EtcdTls {
            ca: tls.ca.with_file_name("missing.crt"),
            identity: None,
        }),
    )
    .await
    .err()
    .expect("missing CA file");
    assert!(e.to_string().contains("missing.crt"), "{e}");
}

#[tokio::test]
async fn bad_store_urls_and_unreachable_etcd_are_clear_errors() {
    let err = store::open("mysql://x").await.err().expect("refused");
    assert!(err.to_string().contains("\"mysql://x\""), "{err}");
    assert!(err.to_string().contains("etcd://"), "{err}");
    let started = Instant::now();
    // Nothing listens on port 9 of loopback.
    let err = store::open("etcd://127.0.0.1:9")
        .await
        .err()
        .expect("unreachable");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:9"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

async fn wait_role(e: &Election, want: impl Fn(&Role) -> bool, secs: u64) -> Role {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = e.role();
        if want(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "role stayed {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn etcd_leader_election_hands_over_and_fences_the_old_leader() {
    let etcd = Etcd::start();
    let store = store::etcd::EtcdStore::connect(std::slice::from_ref(&etcd.client_url))
        .await
        .expect("connect");
    let ttl = Duration::from_secs(2);
    let a = Election::start(store.client(), "coord-a".into(), ttl);
    let Role::Leader { fence } = wait_role(&a, |r| matches!(r, Role::Leader { .. }), 10).await
    else {
        unreachable!()
    };
    let b = Election::start(store.client(), "coord-b".into(), ttl);
    wait_role(
        &b,
        |r| {
            *r == Role::Follower {
                leader: Some("coord-a".into()),
            }
        },
        10,
    )
    .await;

    // The leader's fenced write works.
    store
        .commit(
            Txn::new()
                .check(LEADER_KEY, Check::Revision(fence))
                .put("/n/x", b"a".to_vec()),
        )
        .await
        .expect("fenced write by the leader");

    // Leader goes away (its lease is no longer kept alive); b takes over.
    let gone = Instant::now();
    drop(a);
    wait_role(&b, |r| matches!(r, Role::Leader { .. }), 15).await;
    let takeover = gone.elapsed();
    eprintln!("leader takeover took {takeover:?} with a {ttl:?} lease");

    // a's old fencing token no longer writes.
    let stale = store
        .commit(
            Txn::new()
                .check(LEADER_KEY, Check::Revision(fence))
                .put("/n/x", b"old".to_vec()),
        )
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
}
