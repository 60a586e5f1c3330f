//! The trust layer against real rustls handshakes over loopback: who is accepted, who is
//! refused and why, the pinned first contact, and a certificate swapped while serving.

use std::sync::Arc;
use std::time::Duration;

use napalm_trust::id::OperatorRole;
use napalm_trust::tls::{self, CertSlot, ClientAuth};
use napalm_trust::{csr, id, ClusterCa, TrustError};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// An agent identity signed by `ca`: (chain PEM with the CA, key PEM).
fn agent(ca: &ClusterCa, agent_id: &str, ttl: Duration) -> (String, String) {
    let (key, req) = csr::generate(agent_id).expect("csr");
    let leaf = ca.issue_agent(&req, agent_id, now(), ttl).expect("issue");
    (format!("{}{}", leaf.cert_pem, ca.cert_pem()), key)
}

fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
    tls::certs_from_pem(pem.as_bytes()).expect("pem")
}

/// A self-signed certificate naming `agent_id` the way ours do (same SANs).
fn self_signed(agent_id: &str) -> String {
    let mut p = rcgen::CertificateParams::new(vec![id::agent_dns(agent_id)]).expect("params");
    p.subject_alt_names.push(rcgen::SanType::URI(
        id::agent_uri(agent_id).try_into().expect("uri"),
    ));
    let key = rcgen::KeyPair::generate().expect("key");
    p.self_signed(&key).expect("self-signed").pem()
}

#[test]
fn verify_agent_refuses_self_signed_foreign_expired_and_wrong_id() {
    let ca = ClusterCa::generate("cluster", now()).expect("ca");
    let (good, _) = agent(&ca, "a1", Duration::from_secs(3600));
    tls::verify_agent(ca.cert_der(), &chain(&good), "a1", now()).expect("good");

    let e = tls::verify_agent(ca.cert_der(), &chain(&self_signed("a1")), "a1", now())
        .expect_err("self-signed");
    assert!(matches!(e, TrustError::Untrusted(_)), "{e}");

    let foreign = ClusterCa::generate("cluster", now()).expect("other ca");
    let (theirs, _) = agent(&foreign, "a1", Duration::from_secs(3600));
    let e = tls::verify_agent(ca.cert_der(), &chain(&theirs), "a1", now()).expect_err("foreign");
    assert!(matches!(e, TrustError::Untrusted(_)), "{e}");

    let e = tls::verify_agent(ca.cert_der(), &chain(&good), "a2", now()).expect_err("wrong id");
    assert!(
        matches!(e, TrustError::WrongIdentity { ref found, .. } if found == "a1"),
        "{e}"
    );

    let e =
        tls::verify_agent(ca.cert_der(), &chain(&good), "a1", now() + 7200).expect_err("expired");
    assert!(e.to_string().contains("xpired"), "{e}");

    let e = tls::verify_agent(ca.cert_der(), &[], "a1", now()).expect_err("nothing");
    assert!(e.to_string().contains("no certificate"), "{e}");
}

/// Serves one TLS echo per connection with `cfg`; returns the address.
async fn echo_server(cfg: Arc<rustls::ServerConfig>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = acceptor.accept(tcp).await {
                    let peer = s
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first().cloned())
                        .and_then(|c| id::agent_id_of(&c).ok().flatten())
                        .unwrap_or_else(|| "-".into());
                    let mut b = [0u8; 4];
                    if s.read_exact(&mut b).await.is_ok() {
                        let _ = s.write_all(peer.as_bytes()).await;
                        let _ = s.shutdown().await;
                    }
                }
            });
        }
    });
    addr
}

/// Connects with `cfg` asking for `name`, sends "ping", returns what the server says the
/// client is, or the handshake/read error.
async fn call(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<(String, CertificateDer<'static>), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let mut s = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let served = s.get_ref().1.peer_certificates().expect("server certs")[0].clone();
    s.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    if out.is_empty() {
        return Err("closed without an answer".into());
    }
    Ok((out, served))
}

#[tokio::test]
async fn mutual_tls_accepts_only_cluster_identities() {
    let ca = ClusterCa::generate("cluster", now()).expect("ca");
    let (server_pem, server_key) = agent(&ca, "srv", Duration::from_secs(3600));
    let slot = CertSlot::new(server_pem.as_bytes(), server_key.as_bytes()).expect("slot");
    let addr = echo_server(
        tls::server_config(ca.cert_der(), slot, ClientAuth::Required).expect("server cfg"),
    )
    .await;

    // A cluster client is accepted and identified.
    let (c_pem, c_key) = agent(&ca, "client1", Duration::from_secs(3600));
    let me = CertSlot::new(c_pem.as_bytes(), c_key.as_bytes()).expect("client slot");
    let cfg = tls::client_config(ca.cert_der(), Some(me)).expect("client cfg");
    let (who, _) = call(addr, cfg, &id::agent_dns("srv"))
        .await
        .expect("accepted");
    assert_eq!(who, "client1");

    // No client certificate: refused.
    let cfg = tls::client_config(ca.cert_der(), None).expect("cfg");
    call(addr, cfg, &id::agent_dns("srv"))
        .await
        .expect_err("no client certificate");

    // A client certificate from a foreign CA: refused.
    let foreign = ClusterCa::generate("cluster", now()).expect("foreign");
    let (f_pem, f_key) = agent(&foreign, "client1", Duration::from_secs(3600));
    let them = CertSlot::new(f_pem.as_bytes(), f_key.as_bytes()).expect("slot");
    let cfg = tls::client_config(ca.cert_der(), Some(them)).expect("cfg");
    call(addr, cfg, &id::agent_dns("srv"))
        .await
        .expect_err("foreign client");

    // Dialing the server as another agent: the client refuses (it names "srv").
    let me = CertSlot::new(c_pem.as_bytes(), c_key.as_bytes()).expect("slot");
    let cfg = tls::client_config(ca.cert_der(), Some(me)).expect("cfg");
    let e = call(addr, cfg, &id::agent_dns("other"))
        .await
        .expect_err("wrong server identity");
    assert!(e.contains("certificate"), "{e}");
}

#[tokio::test]
async fn a_pinned_first_contact_needs_the_pinned_ca() {
    let ca = ClusterCa::generate("cluster", now()).expect("ca");
    let (coord, key) = ca
        .issue_coordinator(&[], now(), Duration::from_secs(3600))
        .expect("coordinator cert");
    let served = format!("{}{}", coord.cert_pem, ca.cert_pem());
    let slot = CertSlot::new(served.as_bytes(), key.as_bytes()).expect("slot");
    let addr =
        echo_server(tls::server_config(ca.cert_der(), slot, ClientAuth::Optional).expect("cfg"))
            .await;

    let cfg = tls::pinned_client_config(&ca.fingerprint(), None).expect("pinned");
    let (who, _) = call(addr, cfg, id::COORDINATOR_DNS)
        .await
        .expect("pinned ok");
    assert_eq!(who, "-", "no client certificate, optional");

    let other = ClusterCa::generate("cluster", now()).expect("other");
    let cfg = tls::pinned_client_config(&other.fingerprint(), None).expect("pinned");
    let e = call(addr, cfg, id::COORDINATOR_DNS)
        .await
        .expect_err("wrong pin");
    assert!(e.contains("pinned"), "{e}");
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections() {
    let ca = ClusterCa::generate("cluster", now()).expect("ca");
    let (first, key1) = agent(&ca, "srv", Duration::from_secs(3600));
    let slot = CertSlot::new(first.as_bytes(), key1.as_bytes()).expect("slot");
    let addr = echo_server(
        tls::server_config(ca.cert_der(), Arc::clone(&slot), ClientAuth::Optional).expect("cfg"),
    )
    .await;
    let cfg = tls::client_config(ca.cert_der(), None).expect("cfg");
    let (_, served) = call(addr, Arc::clone(&cfg), &id::agent_dns("srv"))
        .await
        .expect("first");
    assert_eq!(served, chain(&first)[0]);

    let (second, key2) = agent(&ca, "srv", Duration::from_secs(7200));
    // A key that is not the certificate's is refused and the old pair stays.
    slot.replace(second.as_bytes(), key1.as_bytes())
        .expect_err("mismatched key");
    assert_eq!(slot.leaf(), chain(&first)[0]);
    slot.replace(second.as_bytes(), key2.as_bytes())
        .expect("swap");
    // A fresh client: one that resumes its TLS session would not see a certificate again.
    drop(cfg);
    let cfg = tls::client_config(ca.cert_der(), None).expect("cfg");
    let (_, served) = call(addr, cfg, &id::agent_dns("srv"))
        .await
        .expect("second");
    assert_eq!(served, chain(&second)[0]);
}

#[test]
fn agents_admit_only_coordinators_and_operators() {
    let ca = ClusterCa::generate("cluster", now()).expect("ca");
    let admit = napalm_trust::channel::coordinator_or_operator();
    let (op, _) = ca
        .issue_operator("alice", OperatorRole::Admin, now(), Duration::from_secs(60))
        .expect("operator");
    let op = chain(&op.cert_pem);
    assert_eq!(
        id::role_of(&op[0]).expect("role"),
        Some(id::Role::Operator("alice".into()))
    );
    admit(Some(&op)).expect("an operator is admitted");
    let (viewer, _) = ca
        .issue_operator("bob", OperatorRole::Viewer, now(), Duration::from_secs(60))
        .expect("viewer");
    let viewer = chain(&viewer.cert_pem);
    assert_eq!(
        id::role_of(&viewer[0]).expect("role"),
        Some(id::Role::Viewer("bob".into()))
    );
    let refused = admit(Some(&viewer)).expect_err("a viewer may not drive an agent");
    assert!(refused.contains("viewer role"), "{refused}");
    let (co, _) = ca
        .issue_coordinator(&[], now(), Duration::from_secs(60))
        .expect("coordinator");
    let co = chain(&co.cert_pem);
    assert_eq!(
        id::role_of(&co[0]).expect("role"),
        Some(id::Role::Coordinator)
    );
    admit(Some(&co)).expect("a coordinator is admitted");
    let (ag, _) = agent(&ca, "a1", Duration::from_secs(60));
    let e = admit(Some(&chain(&ag))).expect_err("an agent is not");
    assert!(e.contains("a1"), "{e}");
    admit(None).expect_err("nobody is not");
    // An operator certificate is for clients only.
    let e = tls::verify_agent(ca.cert_der(), &op, "alice", now()).expect_err("not an agent");
    assert!(e.to_string().contains("names"), "{e}");
}
