//! Metrics and registration: the Prometheus page parses, an unmodified Debian `gmetad`
//! polls the agent's gmond-compatible XML and shows its hosts, and the agent registers
//! with a coordinator and heartbeats its domains.

use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use napalm_proto::v1 as pb;
use pb::coordinator_service_server::{CoordinatorService, CoordinatorServiceServer};
use tonic::{Request, Response, Status};

use crate::common::*;

#[tokio::test]
async fn prometheus_text_parses() {
    let a = TestAgent::start(None).await;
    a.put("/domain/m-prom", test_archive("m-prom")).await;
    let text = a.get("/metrics").await.text().await.expect("text");
    let lines: Vec<std::io::Result<String>> = text.lines().map(|l| Ok(l.to_owned())).collect();
    let scrape =
        prometheus_parse::Scrape::parse(lines.into_iter()).expect("Prometheus text format parses");
    let find = |name: &str, domain: Option<&str>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && domain.is_none_or(|d| s.labels.get("domain") == Some(d)))
            .map(|s| s.value.clone())
    };
    assert!(
        matches!(find("napalm_host_cpus", None), Some(prometheus_parse::Value::Gauge(v)) if v > 0.0)
    );
    assert!(
        matches!(find("napalm_domain_memory_bytes", Some("m-prom")), Some(prometheus_parse::Value::Gauge(v)) if v == 64.0 * 1048576.0)
    );
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "napalm_domain_state" && s.labels.get("state") == Some("running")));
    assert!(
        matches!(find("napalm_http_requests_total", None), Some(prometheus_parse::Value::Counter(v)) if v >= 1.0)
    );
}

struct Gmetad(Child);

impl Drop for Gmetad {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn gmetad_polls_the_agent_and_shows_its_hosts() {
    let a = TestAgent::start(None).await;
    a.put("/domain/m-gmond", test_archive("m-gmond")).await;
    let gaddr = a.running().ganglia_addr.expect("ganglia");
    // Our own XML is well-formed.
    let raw = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut s = String::new();
        std::net::TcpStream::connect(gaddr)
            .expect("connect")
            .read_to_string(&mut s)
            .expect("read");
        s
    })
    .await
    .expect("join");
    roxmltree::Document::parse(&raw).expect("gmond XML parses");

    let dir = a.dir.path().join("gmetad");
    std::fs::create_dir_all(dir.join("rrds")).expect("mkdir");
    let xml_port = crate::common::free_port();
    let conf = format!(
        "data_source \"napalm\" 1 {gaddr}\ngridname \"napalm-test\"\nsetuid off\nrrd_rootdir \"{}\"\nxml_port {xml_port}\ninteractive_port {}\n",
        dir.join("rrds").display(),
        crate::common::free_port()
    );
    std::fs::write(dir.join("gmetad.conf"), conf).expect("conf");
    let child = Command::new("gmetad")
        .args(["-d", "1", "-c"])
        .arg(dir.join("gmetad.conf"))
        .arg("-p")
        .arg(dir.join("gmetad.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gmetad from Debian's gmetad package");
    let _g = Gmetad(child);
    let t0 = Instant::now();
    let seen = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        while t0.elapsed() < Duration::from_secs(30) {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", xml_port)) {
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.contains("<HOST NAME=\"m-gmond\"") {
                    return out;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        String::new()
    })
    .await
    .expect("join");
    assert!(
        seen.contains("<CLUSTER NAME=\"napalm\""),
        "gmetad never showed the agent's cluster"
    );
    assert!(
        seen.contains("<HOST NAME=\"m-gmond\""),
        "gmetad never showed the domain host"
    );
    assert!(seen.contains("NAME=\"cpu_num\""));
}

#[derive(Default)]
struct Seen {
    registered: Vec<pb::RegisterAgentRequest>,
    heartbeats: Vec<pb::HeartbeatRequest>,
}

struct FakeCoordinator(Arc<Mutex<Seen>>);

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

fn no<T>() -> Result<T, Status> {
    Err(Status::unimplemented("not part of this test double"))
}

#[tonic::async_trait]
impl CoordinatorService for FakeCoordinator {
    async fn register_agent(
        &self,
        r: Request<pb::RegisterAgentRequest>,
    ) -> Result<Response<pb::RegisterAgentResponse>, Status> {
        assert_eq!(
            r.metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        self.0.lock().expect("lock").registered.push(r.into_inner());
        Ok(Response::new(pb::RegisterAgentResponse {
            agent: None,
            heartbeat_interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 200_000_000,
            }),
        }))
    }
    async fn heartbeat(
        &self,
        r: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let mut s = self.0.lock().expect("lock");
        s.heartbeats.push(r.into_inner());
        // Ask for one re-registration after the third heartbeat.
        let reregister = s.heartbeats.len() == 3;
        Ok(Response::new(pb::HeartbeatResponse {
            heartbeat_interval: None,
            reregister,
            stale_domains: Vec::new(),
        }))
    }
    async fn list_agents(
        &self,
        _: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        no()
    }
    async fn get_agent(
        &self,
        _: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        no()
    }
    async fn set_agent_state(
        &self,
        _: Request<pb::SetAgentStateRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        no()
    }
    type DeployStream = Stream<pb::DeployProgress>;
    async fn deploy(
        &self,
        _: Request<pb::DeployRequest>,
    ) -> Result<Response<Self::DeployStream>, Status> {
        no()
    }
    type UndeployStream = Stream<pb::DeployProgress>;
    async fn undeploy(
        &self,
        _: Request<pb::UndeployRequest>,
    ) -> Result<Response<Self::UndeployStream>, Status> {
        no()
    }
    async fn list_deployments(
        &self,
        _: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        no()
    }
    async fn get_deployment(
        &self,
        _: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        no()
    }
    async fn list_clones(
        &self,
        _: Request<pb::ListClonesRequest>,
    ) -> Result<Response<pb::ListClonesResponse>, Status> {
        no()
    }
    async fn get_clone(
        &self,
        _: Request<pb::GetCloneRequest>,
    ) -> Result<Response<pb::Clone>, Status> {
        no()
    }
    async fn register_clone(
        &self,
        _: Request<pb::RegisterCloneRequest>,
    ) -> Result<Response<pb::RegisterCloneResponse>, Status> {
        no()
    }
    type WatchEventsStream = Stream<pb::Event>;
    async fn watch_events(
        &self,
        _: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        no()
    }
    async fn rollout(
        &self,
        _: Request<pb::RolloutRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        no()
    }
}

#[tokio::test]
async fn registers_with_the_coordinator_and_heartbeats() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let svc = CoordinatorServiceServer::new(FakeCoordinator(Arc::clone(&seen)));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&dir.path().join("state"), Some(TOKEN));
    cfg.coordinator = Some(format!("http://{addr}"));
    let running = napalm_agent::server::start_with(cfg, test_driver())
        .await
        .expect("start");
    let client = reqwest::Client::new();
    let r = client
        .put(format!("http://{}/napalm/domain/m-reg", running.http_addr))
        .bearer_auth(TOKEN)
        .body(test_archive("m-reg"))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status().as_u16(), 201);
    let t0 = Instant::now();
    loop {
        {
            let s = seen.lock().expect("lock");
            if s.registered.len() >= 2
                && s.heartbeats
                    .iter()
                    .any(|h| h.domains.iter().any(|d| d.name == "m-reg"))
            {
                let reg = &s.registered[0];
                assert_eq!(reg.id, running.agent.id());
                assert!(reg.grpc_endpoint.starts_with("http://127.0.0.1:"));
                assert!(reg.rest_endpoint.ends_with("/napalm"));
                let caps = reg.capabilities.as_ref().expect("capabilities");
                assert!(caps.hypervisors.contains(&(pb::Hypervisor::Test as i32)));
                let hb = s
                    .heartbeats
                    .iter()
                    .rev()
                    .find(|h| h.domains.iter().any(|d| d.name == "m-reg"))
                    .expect("hb");
                assert_eq!(hb.agent_id, running.agent.id());
                assert!(hb.available.is_some());
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no registration, re-registration and heartbeat with the domain"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = test_driver().undefine("m-reg");
    running.stop().await;
}
