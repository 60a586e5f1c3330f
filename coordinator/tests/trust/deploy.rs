//! The deploy pipeline over mutual TLS: an agent enrolled with a join token (no bearer
//! token anywhere) receives blobs and domains from the coordinator's deployer, which
//! dials its `https://` endpoint with the cluster CA and checks the agent id the
//! certificate proves against the registry's record. Refused with the reason, and sent
//! nothing: a self-signed impostor, an agent whose certificate names another id than the
//! registry records at that endpoint, and a revoked agent (even over a connection opened
//! before the revocation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use napalm_coordinator::deploy::ship::Agents;
use napalm_coordinator::server::{self, Running, ServeConfig};
use napalm_coordinator::testing::{deploy_config, spec, GridOptions};
use napalm_coordinator::trust::TrustConfig;
use napalm_proto::v1::agent_service_client::AgentServiceClient;
use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use napalm_proto::v1::{
    deploy_progress, Agent, AgentSource, AgentState, DeployRequest, DomainState,
    GetCapabilitiesRequest, ListDomainsRequest, RegisterAgentRequest,
};
use napalm_trust::tls::{self, CertSlot, ClientAuth};
use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;

use super::{agent, create, wait_registered};

/// A coordinator with its TLS listener and the deploy pipeline (stand-in kernel and
/// image, no bearer token for agents).
async fn coordinator(dir: &std::path::Path) -> Running {
    std::fs::create_dir_all(dir).expect("dir");
    let mut cfg = ServeConfig::loopback(dir);
    cfg.heartbeat.min_ttl = Duration::from_secs(2);
    cfg.trust = Some(TrustConfig::loopback());
    cfg.agent_token = None;
    cfg.deploy = Some(
        deploy_config(
            dir,
            &GridOptions {
                agent_token: None,
                ..Default::default()
            },
        )
        .expect("deploy config"),
    );
    server::start(cfg).await.expect("coordinator starts")
}

/// A TLS server presenting a self-signed certificate naming `agent_id`; records every
/// application byte it receives after a handshake.
async fn self_signed_agent(agent_id: &str) -> (String, Arc<Mutex<Vec<u8>>>) {
    let id = napalm_trust::id::agent_dns(agent_id);
    let mut p = rcgen::CertificateParams::new(vec![id]).expect("params");
    p.subject_alt_names.push(rcgen::SanType::URI(
        napalm_trust::id::agent_uri(agent_id)
            .try_into()
            .expect("uri"),
    ));
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = p.self_signed(&key).expect("self-signed");
    let (chain, key) = (cert.pem(), key.serialize_pem());
    let slot = CertSlot::new(chain.as_bytes(), key.as_bytes()).expect("slot");
    let anchor = tls::certs_from_pem(chain.as_bytes()).expect("pem")[0].clone();
    let cfg = tls::server_config(&anchor, slot, ClientAuth::Optional).expect("cfg");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let got: Arc<Mutex<Vec<u8>>> = Arc::default();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_agent_gets_a_deploy_over_mutual_tls_and_impostors_get_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = coordinator(&dir.path().join("coord")).await;
    let trust = c.trust().expect("trust on").clone();
    let a = agent(&dir.path().join("a"), &create(&c, 0).await)
        .await
        .expect("agent joins");
    let id = a.agent.id().to_owned();
    let rec = wait_registered(&c, &id).await;
    let endpoint = rec.grpc_endpoint.clone();
    assert!(endpoint.starts_with("https://"), "{rec:?}");

    // Deploy: the pipeline ships the blobs and creates the domains over mutual TLS.
    let mut coord = CoordinatorServiceClient::connect(c.endpoint())
        .await
        .expect("API");
    let mut s = coord
        .deploy(DeployRequest {
            request_id: "mtls-1".into(),
            spec: Some(spec("mtls", 2)),
            dry_run: false,
        })
        .await
        .expect("deploy accepted")
        .into_inner();
    let mut last = None;
    while let Some(m) = s.next().await {
        last = Some(m.expect("progress"));
    }
    let Some(deploy_progress::Event::Summary(summary)) = last.and_then(|m| m.event) else {
        panic!("the deploy did not end with a summary");
    };
    assert_eq!(
        (summary.requested, summary.succeeded, summary.failed),
        (2, 2, 0),
        "{summary:?}"
    );

    // The clones run on the enrolled agent, as the agent itself says (asked over mutual
    // TLS with the coordinator's certificate: agents admit coordinators and operators).
    let ch = trust.dial_agent(&endpoint, &id).await.expect("mutual TLS");
    let mut names: Vec<String> = AgentServiceClient::new(ch)
        .list_domains(ListDomainsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .domains
        .into_iter()
        .filter(|d| d.state == DomainState::Running as i32)
        .map(|d| d.name)
        .collect();
    names.sort();
    assert_eq!(names, ["mtls-01", "mtls-02"]);

    // Connections as the deployer makes them: trust set, no bearer token.
    let links = Agents::new(None).with_trust(Some(trust.clone()));
    links
        .client(&endpoint)
        .await
        .expect("the enrolled agent")
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .expect("answers");
    assert_eq!(
        links.proven_id(&endpoint).await.as_deref(),
        Some(id.as_str())
    );

    // A self-signed impostor naming the real id: refused with the reason, sent nothing.
    let (spoof, got) = self_signed_agent(&id).await;
    let e = links.client(&spoof).await.expect_err("impostor refused");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("does not chain to the cluster CA"),
        "{e:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        got.lock().expect("lock").is_empty(),
        "the impostor received data"
    );

    // The registry records another agent at the real agent's endpoint: the certificate
    // proves an id the registry does not place there, so the channel is refused.
    let key = format!("{}{id}", napalm_coordinator::registry::AGENTS);
    c.registry()
        .update::<Agent, _>(&key, |cur| {
            Ok(cur.map(|mut a| {
                a.grpc_endpoint = "https://127.0.0.1:9".into();
                a
            }))
        })
        .await
        .expect("moved");
    c.registry()
        .register_agent(
            RegisterAgentRequest {
                request_id: "other".into(),
                id: "00000000000000aa".into(),
                grpc_endpoint: endpoint.clone(),
                ..Default::default()
            },
            AgentSource::Static,
            &Default::default(),
        )
        .await
        .expect("other record");
    c.registry()
        .set_agent_state("00000000000000aa", AgentState::Draining)
        .await
        .expect("no placements on the fake record");
    let fresh = Agents::new(None).with_trust(Some(trust.clone()));
    let e = fresh
        .client(&endpoint)
        .await
        .expect_err("another agent than the registry records");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains(&format!("names agent {id:?}"))
            && e.message().contains("00000000000000aa"),
        "{e:?}"
    );
    c.registry()
        .update::<Agent, _>(&key, |cur| {
            Ok(cur.map(|mut a| {
                a.grpc_endpoint = endpoint.clone();
                a
            }))
        })
        .await
        .expect("restored");

    // Revoked: refused on a new connection and on the one opened before.
    trust.revoke_agent(&id, "test").await.expect("revoked");
    let e = links
        .client(&endpoint)
        .await
        .expect_err("open connection to a revoked agent dropped");
    assert!(e.message().contains("revoked"), "{e:?}");
    let e = Agents::new(None)
        .with_trust(Some(trust.clone()))
        .client(&endpoint)
        .await
        .expect_err("new connection to a revoked agent refused");
    assert!(e.message().contains("revoked"), "{e:?}");
    let states: HashMap<String, i32> = c
        .registry()
        .list_agents(&[])
        .await
        .expect("list")
        .into_iter()
        .map(|a| (a.id, a.state))
        .collect();
    assert_eq!(states.get(&id), Some(&(AgentState::Revoked as i32)));
    a.stop().await;
}
