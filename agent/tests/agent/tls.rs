//! TLS: with a certificate configured, REST and gRPC are served only over TLS, the token is
//! still required, and the fingerprint is the certificate's SHA-256.

use std::process::Command;

use napalm_proto::v1 as pb;
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::common::*;

// curl blocks a thread: the in-process agent needs another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_grpc_over_tls() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("write");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write");
    let mut cfg = config(&dir.path().join("state"), Some(TOKEN));
    cfg.tls = Some(napalm_agent::tls::TlsFiles {
        cert: cert.clone(),
        key,
    });
    let running = napalm_agent::server::start_with(cfg, test_driver())
        .await
        .expect("start");
    assert_eq!(
        running.fingerprint.as_deref(),
        Some(hex::encode(Sha256::digest(ck.cert.der())).as_str())
    );

    let port = running.http_addr.port();
    let curl = |extra: &[&str], url: String| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--resolve",
                &format!("localhost:{port}:127.0.0.1"),
                "--cacert",
            ])
            .arg(&cert)
            .args(extra)
            .arg(url)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let auth = format!("Authorization: Bearer {TOKEN}");
    assert_eq!(
        curl(
            &["-H", &auth],
            format!("https://localhost:{port}/napalm/about")
        ),
        "200"
    );
    assert_eq!(
        curl(&[], format!("https://localhost:{port}/napalm/about")),
        "401"
    );
    // Plain HTTP on the TLS port gets no answer.
    assert_ne!(
        curl(
            &["-H", &auth],
            format!("http://localhost:{port}/napalm/about")
        ),
        "200"
    );

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ck.cert.pem()))
        .domain_name("localhost");
    let addr = running.grpc_addr.expect("grpc");
    let ch = Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("TLS connect");
    let mut c = pb::agent_service_client::AgentServiceClient::new(ch);
    let mut req = tonic::Request::new(pb::ListDomainsRequest::default());
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("meta"),
    );
    c.list_domains(req).await.expect("list over TLS");
    running.stop().await;
}
