//! Where the CA comes from and how the coordinator's own certificate is served: an
//! operator's CA files are imported at first start and kept in the registry (later
//! starts use the stored CA, whatever the flags say); the coordinator's certificate is
//! renewed in place and new connections see the new one, chained to the same CA.

use std::time::Duration;

use napalm_coordinator::server::{self, ServeConfig};
use napalm_coordinator::trust::TrustConfig;
use napalm_trust::{id, tls, ClusterCa};

async fn served_leaf(addr: std::net::SocketAddr, fingerprint: &str) -> Vec<u8> {
    let cfg = tls::pinned_client_config(fingerprint, None).expect("pinned");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let name = rustls_pki_types::ServerName::try_from(id::COORDINATOR_DNS).expect("name");
    let s = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .expect("pinned handshake");
    s.get_ref().1.peer_certificates().expect("certs")[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_ca_is_imported_once_and_the_coordinator_certificate_renews() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let mine = ClusterCa::generate("site CA", now).expect("ca");
    let (cert, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    std::fs::write(&cert, mine.cert_pem()).expect("write");
    std::fs::write(&key, mine.key_pem()).expect("write");

    let start = |files: Option<(std::path::PathBuf, std::path::PathBuf)>| {
        let mut cfg = ServeConfig::loopback(dir.path());
        cfg.trust = Some(TrustConfig {
            ca_files: files,
            ..TrustConfig::loopback()
        });
        server::start(cfg)
    };
    let c = start(Some((cert.clone(), key.clone())))
        .await
        .expect("starts with the operator CA");
    let trust = c.trust().expect("trust").clone();
    assert_eq!(trust.fingerprint(), mine.fingerprint());
    assert_eq!(trust.ca_pem(), mine.cert_pem());

    // Served chain: verified by a client that pins the operator CA.
    let addr = c.trust_addr().expect("addr");
    let first = served_leaf(addr, &mine.fingerprint()).await;
    trust.renew_identity().expect("renewed");
    let second = served_leaf(addr, &mine.fingerprint()).await;
    assert_ne!(first, second, "new connections get the renewed certificate");
    // The trust state holds the registry open: let go of it before restarting.
    drop(trust);
    c.shutdown().await.expect("stops");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Restart without the files, then with other files: the stored CA stays.
    let c = start(None).await.expect("restarts");
    assert_eq!(c.trust().expect("trust").fingerprint(), mine.fingerprint());
    c.shutdown().await.expect("stops");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = ClusterCa::generate("other", now).expect("ca");
    std::fs::write(&cert, other.cert_pem()).expect("write");
    std::fs::write(&key, other.key_pem()).expect("write");
    let c = start(Some((cert, key))).await.expect("restarts");
    assert_eq!(
        c.trust().expect("trust").fingerprint(),
        mine.fingerprint(),
        "the registry's CA wins over later files"
    );

    // A key that is not the CA's is refused with what is wrong.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let (c2, k2) = (dir2.path().join("ca.crt"), dir2.path().join("ca.key"));
    std::fs::write(&c2, mine.cert_pem()).expect("write");
    std::fs::write(&k2, other.key_pem()).expect("write");
    let mut cfg = ServeConfig::loopback(dir2.path());
    cfg.trust = Some(TrustConfig {
        ca_files: Some((c2, k2)),
        ..TrustConfig::loopback()
    });
    let e = server::start(cfg)
        .await
        .err()
        .expect("mismatched key refused");
    let chain = napalm_trust::channel::error_chain(&e);
    assert!(
        chain.contains("not the key of the CA certificate"),
        "{chain}"
    );
}
