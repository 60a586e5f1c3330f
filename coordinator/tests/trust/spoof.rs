//! mDNS is only a hint: an advertised agent is trusted only if its TLS certificate chains
//! to the cluster CA and names the advertised id. Spoofers (a self-signed certificate, a
//! foreign CA's, no TLS at all, a real agent advertised under another id) are refused
//! with the reason, and receive nothing but a TLS ClientHello.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use napalm_proto::v1::agent_service_client::AgentServiceClient;
use napalm_proto::v1::GetCapabilitiesRequest;
use napalm_trust::tls::{self, CertSlot, ClientAuth};
use napalm_trust::{id, ClusterCa};
use tokio::io::AsyncReadExt;

use super::{agent, coordinator, create};

/// What a spoofer received after the handshake (TLS) or at all (plain TCP).
type Received = Arc<Mutex<Vec<u8>>>;

/// A TLS server presenting `chain_pem`/`key_pem`; records application bytes received.
async fn spoof_tls(chain_pem: &str, key_pem: &str) -> (String, Received) {
    let slot = CertSlot::new(chain_pem.as_bytes(), key_pem.as_bytes()).expect("slot");
    let anchor = tls::certs_from_pem(chain_pem.as_bytes()).expect("pem")[0].clone();
    let cfg = tls::server_config(&anchor, slot, ClientAuth::Optional).expect("cfg");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let got: Received = Arc::default();
    let rec = Arc::clone(&got);
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            if let Ok(mut s) = acceptor.accept(tcp).await {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf).await;
                rec.lock().expect("lock").extend(buf);
            }
        }
    });
    (format!("https://{addr}"), got)
}

/// A plain TCP server recording every byte.
async fn spoof_plain() -> (String, Received) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let got: Received = Arc::default();
    let rec = Arc::clone(&got);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            let mut buf = vec![0u8; 4096];
            // Answer like an HTTP/2 server would not: say nothing, read what comes.
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf)).await
            {
                rec.lock().expect("lock").extend(&buf[..n]);
            }
        }
    });
    (format!("http://{addr}"), got)
}

fn self_signed(agent_id: &str) -> (String, String) {
    let mut p = rcgen::CertificateParams::new(vec![id::agent_dns(agent_id)]).expect("params");
    p.subject_alt_names.push(rcgen::SanType::URI(
        id::agent_uri(agent_id).try_into().expect("uri"),
    ));
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = p.self_signed(&key).expect("self-signed");
    (cert.pem(), key.serialize_pem())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertised_agents_are_trusted_only_with_a_cluster_certificate_naming_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = coordinator(&dir.path().join("coord"), Duration::from_secs(3600)).await;
    let trust = c.trust().expect("trust").clone();
    let a = agent(&dir.path().join("a1"), &create(&c, 0).await)
        .await
        .expect("joins");
    let real_id = a.agent.id().to_owned();
    let real = format!("https://{}", a.grpc_addr.expect("grpc"));

    // The real agent, as advertised: trusted, with its certificate's fingerprint.
    let fp = trust
        .verify_advertised(&real, &real_id)
        .await
        .expect("the enrolled agent is trusted");
    let identity = a.identity.clone().expect("identity");
    assert_eq!(fp, napalm_trust::fingerprint(identity.slot.leaf().as_ref()));

    // The real agent advertised under another id: refused, naming both.
    let e = trust
        .verify_advertised(&real, "0000000000000000")
        .await
        .expect_err("wrong id");
    assert!(
        e.reason.contains(&format!("names agent {real_id:?}")),
        "{e}"
    );

    // A self-signed certificate naming the real id.
    let (cert, key) = self_signed(&real_id);
    let (ep, got) = spoof_tls(&cert, &key).await;
    let e = trust
        .verify_advertised(&ep, &real_id)
        .await
        .expect_err("self-signed");
    assert!(e.reason.contains("does not chain to the cluster CA"), "{e}");
    let e = trust
        .dial_agent(&ep, &real_id)
        .await
        .expect_err("no channel to a self-signed agent");
    assert!(e.reason.contains("does not chain to the cluster CA"), "{e}");
    let e = trust
        .dial_enrolled(&ep)
        .await
        .expect_err("no channel to a self-signed agent, by endpoint only");
    assert!(e.reason.contains("does not chain to the cluster CA"), "{e}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        got.lock().expect("lock").is_empty(),
        "the spoofer received data"
    );

    // Another cluster's CA, same id.
    let foreign = ClusterCa::generate("napalm cluster CA", 1_790_000_000).expect("ca");
    let (fkey, csr) = napalm_trust::csr::generate(&real_id).expect("csr");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let leaf = foreign
        .issue_agent(&csr, &real_id, now, Duration::from_secs(3600))
        .expect("foreign leaf");
    let (ep, got) = spoof_tls(&format!("{}{}", leaf.cert_pem, foreign.cert_pem()), &fkey).await;
    let e = trust
        .verify_advertised(&ep, &real_id)
        .await
        .expect_err("foreign CA");
    assert!(e.reason.contains("does not chain to the cluster CA"), "{e}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        got.lock().expect("lock").is_empty(),
        "the spoofer received data"
    );

    // No TLS at all: it sees a ClientHello, never a token or a call.
    let (ep, got) = spoof_plain().await;
    let e = trust
        .verify_advertised(&ep, &real_id)
        .await
        .expect_err("no TLS");
    assert!(e.reason.contains("TLS"), "{e}");
    let bytes = got.lock().expect("lock").clone();
    assert_eq!(
        bytes.first(),
        Some(&0x16),
        "a TLS handshake record: {bytes:?}"
    );
    for secret in [&b"authorization"[..], b"Bearer", b"napalm.v1"] {
        assert!(!contains(&bytes, secret), "the spoofer saw {secret:?}");
    }

    // The real agent over mutual TLS: the coordinator's certificate gets it to answer.
    let ch = trust.dial_agent(&real, &real_id).await.expect("mutual TLS");
    let caps = AgentServiceClient::new(ch)
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .expect("an enrolled agent answers the coordinator")
        .into_inner();
    assert_eq!(caps.agent_id, real_id);
    // By endpoint only (the deploy pipeline's view): the id the certificate proves.
    let (ch, named) = trust.dial_enrolled(&real).await.expect("mutual TLS");
    assert_eq!(named, real_id);
    AgentServiceClient::new(ch)
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .expect("answers");
    a.stop().await;
}
