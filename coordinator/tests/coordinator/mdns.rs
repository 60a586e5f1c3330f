//! Agents are found over mDNS only, inside network namespaces this test creates: a real
//! agent (test:///default) advertises on its veth in one namespace; the coordinator's
//! browser in another records it with its gRPC endpoint on the private network.

use std::sync::Arc;
use std::time::Duration;

use napalm_coordinator::clock::SystemClock;
use napalm_coordinator::deploy::ship::Agents;
use napalm_coordinator::mdns::Browser;
use napalm_coordinator::registry::agents::HeartbeatPolicy;
use napalm_coordinator::registry::Registry;
use napalm_coordinator::store;
use napalm_integration::netns::{Host, Network};
use napalm_proto::v1::AgentSource;

use crate::deploy::TOKEN;

/// Runs a real agent (test:///default, no coordinator configured) inside `host`'s namespace,
/// advertising on its interface only, gRPC on :7701 and REST on :7702, until `stop`.
fn spawn_agent(
    host: &Host,
    state: std::path::PathBuf,
    stop: std::sync::mpsc::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    let a = host.clone();
    host.spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async move {
            let mut cfg = napalm_coordinator::testing::agent_config(&state, Some(TOKEN.into()));
            cfg.grpc_listen = Some(format!("{}:7701", a.addr).parse().expect("addr"));
            cfg.http_listen = format!("{}:7702", a.addr).parse().expect("addr");
            cfg.mdns_interfaces = vec![a.iface.clone()];
            cfg.coordinator = None;
            let running = napalm_agent::server::start(cfg)
                .await
                .expect("agent starts");
            let _ = tokio::task::spawn_blocking(move || stop.recv()).await;
            running.stop().await;
        })
    })
    .expect("agent thread")
}

#[test]
fn the_coordinator_finds_an_agent_by_mdns_alone() {
    let mut net = Network::new().expect("private network");
    let agent_host = net.host(1).expect("agent host");
    let coord_host = net.host(2).expect("coordinator host");
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("agent");
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();

    let agent = spawn_agent(&agent_host, state, stop_rx);

    let iface = coord_host.iface.clone();
    let db = dir.path().join("registry.redb");
    let found = coord_host
        .spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let s = store::open(db.to_str().expect("utf-8"))
                    .await
                    .expect("store");
                let registry = Registry::new(s, Arc::new(SystemClock));
                let _browser = Browser::start(
                    &[iface],
                    registry.clone(),
                    Agents::new(Some(TOKEN.into())),
                    HeartbeatPolicy::default(),
                )
                .expect("browser");
                for _ in 0..300 {
                    let agents = registry.list_agents(&[]).await.expect("list");
                    if !agents.is_empty() {
                        return agents;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Vec::new()
            })
        })
        .expect("coordinator thread")
        .join()
        .expect("coordinator thread ends");
    let _ = stop_tx.send(());
    agent.join().expect("agent thread ends");

    assert_eq!(found.len(), 1, "agent not found over mDNS within 30 s");
    let a = &found[0];
    assert_eq!(a.source, AgentSource::Mdns as i32);
    assert_eq!(a.grpc_endpoint, format!("http://{}:7701", agent_host.addr));
    assert_eq!(
        a.rest_endpoint,
        format!("http://{}:7702/napalm", agent_host.addr)
    );
    assert!(a
        .capabilities
        .as_ref()
        .is_some_and(|c| !c.hypervisors.is_empty()));
}

#[test]
fn an_agent_without_a_configured_coordinator_finds_it_by_mdns_and_registers() {
    use napalm_coordinator::mdns::{Advert, Advertiser};
    use napalm_coordinator::registry::clones::TokenKey;
    use napalm_coordinator::service::Coordinator;
    use napalm_proto::v1::coordinator_service_server::CoordinatorServiceServer;

    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mut net = Network::new().expect("private network");
    let agent_host = net.host(1).expect("agent host");
    let coord_host = net.host(2).expect("coordinator host");
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("agent");
    let db = dir.path().join("registry.redb");
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();

    // The coordinator serves gRPC on the private network and only advertises itself (it
    // does not browse), so an agent in its registry can only have registered itself.
    let c = coord_host.clone();
    let coord = coord_host
        .spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let s = store::open(db.to_str().expect("utf-8"))
                    .await
                    .expect("store");
                let registry = Registry::new(s, Arc::new(SystemClock));
                let key = TokenKey::new(b"0123456789abcdef0123").expect("key");
                let svc = Coordinator::new(
                    registry.clone(),
                    HeartbeatPolicy::default(),
                    Arc::new(key),
                    None,
                );
                let addr: std::net::SocketAddr = format!("{}:7700", c.addr).parse().expect("addr");
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(CoordinatorServiceServer::new(svc))
                        .serve(addr),
                );
                let _adv = Advertiser::start(
                    std::slice::from_ref(&c.iface),
                    &Advert {
                        id: "coord-test".into(),
                        hostname: "coord-test".into(),
                        grpc_port: 7700,
                        http_port: 7780,
                    },
                )
                .expect("advertise");
                let _ = ready_tx.send(());
                for _ in 0..300 {
                    let agents = registry.list_agents(&[]).await.expect("list");
                    if !agents.is_empty() {
                        return agents;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Vec::new()
            })
        })
        .expect("coordinator thread");
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("coordinator ready");

    let agent = spawn_agent(&agent_host, state, stop_rx);

    let found = coord.join().expect("coordinator thread ends");
    let _ = stop_tx.send(());
    agent.join().expect("agent thread ends");
    assert_eq!(found.len(), 1, "the agent did not register within 30 s");
    assert_eq!(found[0].source, AgentSource::Registration as i32);
    assert_eq!(
        found[0].grpc_endpoint,
        format!("http://{}:7701", agent_host.addr)
    );
}

/// A second process's advertisement of `_napalm._tcp` for agent `id` at `host`:7701,
/// saying `tls`, made with the agent's own advertiser (instance `instance`).
fn advertise_as(
    host: &Host,
    instance: &str,
    id: &str,
    tls: &'static str,
) -> napalm_agent::mdns::Advertiser {
    napalm_agent::mdns::Advertiser::start(
        &napalm_agent::mdns::Advert {
            instance: instance.into(),
            hostname: instance.into(),
            http_port: 7702,
            grpc_port: 7701,
            hypervisors: "test".into(),
            arch: "x86_64".into(),
            cpus: 8,
            memory_bytes: 16 << 30,
            agent_id: id.into(),
            fingerprint: "none".into(),
            path: "/napalm".into(),
            tls,
        },
        std::slice::from_ref(&host.iface),
    )
    .expect("spoofed advertisement")
}

/// What a spoofer received: application bytes after a TLS handshake (self-signed
/// certificate naming `id`), or every byte on plain TCP (`id` empty), on `host`:7701 and
/// :7702, until `stop`.
fn spawn_spoofer(
    host: &Host,
    instance: &'static str,
    id: String,
    tls: &'static str,
    got: Arc<std::sync::Mutex<Vec<u8>>>,
    stop: std::sync::mpsc::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    use tokio::io::AsyncReadExt;
    let h = host.clone();
    host.spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async move {
            let acceptor = (tls == "mutual").then(|| {
                let mut p = rcgen::CertificateParams::new(vec![napalm_trust::id::agent_dns(&id)])
                    .expect("params");
                p.subject_alt_names.push(rcgen::SanType::URI(
                    napalm_trust::id::agent_uri(&id).try_into().expect("uri"),
                ));
                let key = rcgen::KeyPair::generate().expect("key");
                let cert = p.self_signed(&key).expect("self-signed");
                let (chain, key) = (cert.pem(), key.serialize_pem());
                let slot = napalm_trust::tls::CertSlot::new(chain.as_bytes(), key.as_bytes())
                    .expect("slot");
                let anchor =
                    napalm_trust::tls::certs_from_pem(chain.as_bytes()).expect("pem")[0].clone();
                tokio_rustls::TlsAcceptor::from(
                    napalm_trust::tls::server_config(
                        &anchor,
                        slot,
                        napalm_trust::tls::ClientAuth::Optional,
                    )
                    .expect("cfg"),
                )
            });
            for port in [7701, 7702] {
                let l = tokio::net::TcpListener::bind(format!("{}:{port}", h.addr))
                    .await
                    .expect("bind");
                let (acceptor, got) = (acceptor.clone(), Arc::clone(&got));
                tokio::spawn(async move {
                    while let Ok((mut tcp, _)) = l.accept().await {
                        let mut buf = Vec::new();
                        match &acceptor {
                            Some(a) => {
                                if let Ok(mut s) = a.accept(tcp).await {
                                    let _ = tokio::time::timeout(
                                        Duration::from_secs(2),
                                        s.read_to_end(&mut buf),
                                    )
                                    .await;
                                }
                            }
                            None => {
                                let _ = tokio::time::timeout(
                                    Duration::from_secs(2),
                                    tcp.read_to_end(&mut buf),
                                )
                                .await;
                            }
                        }
                        got.lock().expect("lock").extend(buf);
                    }
                });
            }
            let adv = advertise_as(&h, instance, &id, tls);
            let _ = tokio::task::spawn_blocking(move || stop.recv()).await;
            adv.stop();
        })
    })
    .expect("spoofer thread")
}

/// mDNS is only a hint (thesis 4.7.3): a real agent enrolled with a join token is found
/// over mDNS and used over mutual TLS, while two spoofers advertising `_napalm._tcp` with
/// the same agent id — one with a self-signed certificate (`tls=mutual`), one with no TLS
/// (`tls=none`) — are recorded untrusted with the reason, never overwrite the real
/// agent's record, and receive nothing: no GetCapabilities, no token, no blob.
#[test]
fn spoofed_advertisements_are_recorded_untrusted_and_receive_nothing() {
    use napalm_coordinator::server::{self, ServeConfig};
    use napalm_coordinator::trust::TrustConfig;
    use napalm_proto::trust_v1::trust_service_client::TrustServiceClient;
    use napalm_proto::trust_v1::CreateJoinTokenRequest;
    use napalm_proto::v1::AgentState;

    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mut net = Network::new().expect("private network");
    let agent_host = net.host(1).expect("agent host");
    let coord_host = net.host(2).expect("coordinator host");
    let tls_spoofer = net.host(3).expect("spoofer host");
    let plain_spoofer = net.host(4).expect("spoofer host");
    let dir = tempfile::tempdir().expect("temp dir");
    let (token_tx, token_rx) = std::sync::mpsc::channel::<String>();
    let (id_tx, id_rx) = std::sync::mpsc::channel::<String>();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (found_tx, found_rx) = std::sync::mpsc::channel::<()>();

    // The coordinator: trust listener, mDNS browsing and advertising on the private
    // network only; it makes the join token and waits for the records to settle.
    let c = coord_host.clone();
    let coord_dir = dir.path().join("coord");
    let coord = coord_host
        .spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                std::fs::create_dir_all(&coord_dir).expect("dir");
                let mut cfg = ServeConfig::loopback(&coord_dir);
                cfg.listen = format!("{}:7700", c.addr).parse().expect("addr");
                cfg.http_listen = format!("{}:7780", c.addr).parse().expect("addr");
                cfg.agent_token = Some(TOKEN.into());
                cfg.mdns_interfaces = vec![c.iface.clone()];
                cfg.trust = Some(TrustConfig {
                    listen: format!("{}:7443", c.addr).parse().expect("addr"),
                    ..TrustConfig::loopback()
                });
                let running = server::start(cfg).await.expect("coordinator starts");
                let token = TrustServiceClient::connect(running.endpoint())
                    .await
                    .expect("API")
                    .create_join_token(CreateJoinTokenRequest {
                        ttl_seconds: 0,
                        name: String::new(),
                    })
                    .await
                    .expect("token")
                    .into_inner()
                    .token;
                token_tx.send(token).expect("send token");
                let mut last = Vec::new();
                for _ in 0..400 {
                    last = running.registry().list_agents(&[]).await.expect("list");
                    let untrusted = last
                        .iter()
                        .filter(|a| a.state == AgentState::Untrusted as i32)
                        .count();
                    let ready = last
                        .iter()
                        .filter(|a| a.state == AgentState::Ready as i32)
                        .count();
                    if untrusted >= 2 && ready >= 1 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // Let the browser see the spoofers again (re-announcements) before judging.
                tokio::time::sleep(Duration::from_secs(3)).await;
                let _ = found_tx.send(());
                let after = running.registry().list_agents(&[]).await.expect("list");
                (last, after)
            })
        })
        .expect("coordinator thread");

    // The real agent joins with the token, then advertises tls=mutual.
    let token = token_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("join token");
    let a = agent_host.clone();
    let state = dir.path().join("agent");
    let agent = agent_host
        .spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let mut cfg = napalm_coordinator::testing::agent_config(&state, None);
                cfg.rest.libvirt_uri =
                    napalm_coordinator::testing::own_driver(&state).expect("driver");
                cfg.grpc_listen = Some(format!("{}:7701", a.addr).parse().expect("addr"));
                cfg.http_listen = format!("{}:7702", a.addr).parse().expect("addr");
                cfg.mdns_interfaces = vec![a.iface.clone()];
                cfg.join = Some(token);
                let running = napalm_agent::server::start(cfg).await.expect("agent joins");
                id_tx.send(running.agent.id().to_owned()).expect("send id");
                let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                running.stop().await;
            })
        })
        .expect("agent thread");
    let real_id = id_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("agent id");

    // Two spoofers claim the real agent's id.
    let (tls_got, plain_got) = (Arc::default(), Arc::default());
    let (stop_tls_tx, stop_tls) = std::sync::mpsc::channel::<()>();
    let (stop_plain_tx, stop_plain) = std::sync::mpsc::channel::<()>();
    let s1 = spawn_spoofer(
        &tls_spoofer,
        "spoof-tls",
        real_id.clone(),
        "mutual",
        Arc::clone(&tls_got),
        stop_tls,
    );
    let s2 = spawn_spoofer(
        &plain_spoofer,
        "spoof-plain",
        real_id.clone(),
        "none",
        Arc::clone(&plain_got),
        stop_plain,
    );

    let _ = found_rx.recv_timeout(Duration::from_secs(90));
    let (settled, after) = coord.join().expect("coordinator thread ends");
    for tx in [stop_tx, stop_tls_tx, stop_plain_tx] {
        let _ = tx.send(());
    }
    agent.join().expect("agent thread ends");
    s1.join().expect("spoofer ends");
    s2.join().expect("spoofer ends");

    // The real agent: ready, at its own https endpoint, under its own id.
    let real = after
        .iter()
        .find(|a| a.id == real_id)
        .unwrap_or_else(|| panic!("real agent missing: {settled:?}"));
    assert_eq!(real.state, AgentState::Ready as i32, "{real:?}");
    assert_eq!(
        real.grpc_endpoint,
        format!("https://{}:7701", agent_host.addr)
    );
    // Found by mDNS too (after registering itself): verified, asked over mutual TLS,
    // recorded with its certificate's fingerprint.
    assert_eq!(real.source, AgentSource::Mdns as i32, "{real:?}");
    assert_eq!(real.cert_fingerprint.len(), 64, "{real:?}");
    assert!(real.capabilities.is_some());
    // The spoofers: untrusted, under ids of their own, saying why.
    let spoof = |h: &Host| {
        after
            .iter()
            .find(|a| a.grpc_endpoint.contains(&format!("//{}:7701", h.addr)))
            .unwrap_or_else(|| panic!("spoofer {} not recorded: {after:?}", h.addr))
            .clone()
    };
    let t = spoof(&tls_spoofer);
    assert_eq!(t.state, AgentState::Untrusted as i32, "{t:?}");
    assert_eq!(t.id, format!("untrusted:{}:7701", tls_spoofer.addr));
    assert_eq!(t.name, real_id);
    assert!(
        t.state_reason.contains("does not chain to the cluster CA"),
        "{t:?}"
    );
    let p = spoof(&plain_spoofer);
    assert_eq!(p.state, AgentState::Untrusted as i32, "{p:?}");
    assert!(p.state_reason.contains("tls=none"), "{p:?}");
    assert!(p.capabilities.is_none() && t.capabilities.is_none());
    assert_eq!(
        after.len(),
        3,
        "one real agent and two untrusted records: {after:?}"
    );

    // What the spoofers received: nothing after the handshake, nothing at all in clear.
    let tls_bytes = tls_got.lock().expect("lock").clone();
    assert!(
        tls_bytes.is_empty(),
        "the TLS spoofer received {tls_bytes:?}"
    );
    let plain_bytes = plain_got.lock().expect("lock").clone();
    assert!(
        plain_bytes.is_empty(),
        "the plain spoofer received {:?}",
        String::from_utf8_lossy(&plain_bytes)
    );
}
