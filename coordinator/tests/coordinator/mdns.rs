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
