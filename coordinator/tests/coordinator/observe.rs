//! Watching the grid, with real outside tools: a `TestGrid` (two agents on libvirt's test
//! driver, in-process) deploys clones that then register (half over the HTTP twin, half
//! over gRPC, with boot times); then
//! (a) `/metrics` carries the series the dashboard needs;
//! (b) Debian's `prometheus` scrapes the coordinator and every query of
//!     `charts/napalm/dashboards/napalm.json` returns data through its HTTP API;
//! (c) headless Chromium loads the web view, which polls `/v1/view.json`, and every clone
//!     appears in the DOM (dump and screenshot kept under `target/test-artifacts/`).
//! Every process started here is killed by its process group id at the end, pass or fail.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::etcd_harness::free_port;
use napalm_coordinator::testing::{GridOptions, TestGrid};
use napalm_proto::v1::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

const DEPLOYMENT: &str = "observe";
const CLONES: u32 = 6;
/// The bearer token of the grid's agents.
const TOKEN: &str = "agent-test-token";

/// A series of `/metrics`: name, some of its labels, its value.
type Expected = (&'static str, &'static [(&'static str, &'static str)], f64);

/// A process (and its process group) killed when dropped.
struct Killed {
    pid: i32,
    what: &'static str,
}

impl Drop for Killed {
    fn drop(&mut self) {
        // The child leads its own group (`process_group(0)`): Chromium's helpers go too.
        // SAFETY: kill(2) with a group id we created; no memory is involved.
        unsafe {
            libc::kill(-self.pid, libc::SIGKILL);
        }
        eprintln!("observe: killed {} (process group {})", self.what, self.pid);
    }
}

fn spawn(what: &'static str, cmd: &mut tokio::process::Command) -> (tokio::process::Child, Killed) {
    let child = cmd
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what} failed ({e}); run scripts/setup"));
    let pid = child.id().expect("a running child has a pid") as i32;
    (child, Killed { pid, what })
}

/// GET over HTTP/1.0 (no chunking): status and body.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path, "", "").await
}

/// `method path` with `headers` (`Name: value\r\n` lines) and `body`.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// The value of the sample `name{labels…}` whose labels include `want`.
pub(crate) fn sample(page: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let have: HashMap<&str, &str> = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        want.iter()
            .all(|(k, v)| have.get(k) == Some(v))
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// Every PromQL expression of a Grafana dashboard (panels, nested rows).
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::String(e)) = m.get("expr") {
                out.push(e.clone());
            }
            m.values().for_each(|x| dashboard_queries(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

/// Runs an instant query; the samples' values (NaN kept as NaN).
async fn query(prom: SocketAddr, expr: &str) -> Result<Vec<f64>, String> {
    let (status, body) = get(
        prom,
        &format!(
            "/api/v1/query?query={}",
            crate::common::percent_encode(expr)
        ),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
    if v["status"] != "success" {
        return Err(format!("HTTP {status}: {body}"));
    }
    let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
    Ok(result
        .iter()
        .map(|r| {
            r["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        })
        .collect())
}

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// Deploys the clones and registers each as a booted clone would.
async fn deploy_and_register(grid: &TestGrid) {
    let mut client = grid.client().await.expect("connect to the coordinator");
    let spec = DeploymentSpec {
        name: DEPLOYMENT.into(),
        count: CLONES,
        resources: Some(Resources {
            vcpus: 1,
            memory_bytes: 128 << 20,
        }),
        ..Default::default()
    };
    let mut s = client
        .deploy(DeployRequest {
            spec: Some(spec),
            ..Default::default()
        })
        .await
        .expect("deploy accepted")
        .into_inner();
    let mut summary = None;
    while let Some(m) = s.next().await {
        if let Some(deploy_progress::Event::Summary(x)) = m.expect("progress").event {
            summary = Some(x);
        }
    }
    let summary = summary.expect("a summary");
    assert_eq!(summary.succeeded, CLONES, "{summary:?}");

    let http = grid.coordinator.http_addr();
    for i in 1..=CLONES {
        let name = format!("{DEPLOYMENT}-{i:02}");
        let token = grid.coordinator.tokens().token(&name);
        let address = format!("10.77.0.{}", 100 + i);
        let boot = 2.0 + f64::from(i) * 0.75;
        if i % 2 == 0 {
            let body = serde_json::json!({"name": name, "address": address, "uptime": boot});
            let (status, answer) = request(
                http,
                "POST",
                "/v1/clones/register",
                &format!("Authorization: Bearer {token}\r\n"),
                &body.to_string(),
            )
            .await;
            assert_eq!(status, 200, "HTTP registration of {name}: {answer}");
        } else {
            client
                .register_clone(RegisterCloneRequest {
                    name: name.clone(),
                    token,
                    addresses: vec![address],
                    boot: Some(BootTimings {
                        to_registered: Some(prost_types::Duration {
                            seconds: boot.trunc() as i64,
                            nanos: (boot.fract() * 1e9) as i32,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("gRPC registration of {name}: {e}"));
        }
    }
}

async fn wait_for<F, Fut>(what: &str, within: Duration, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !ok().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs headless Chromium on `url` with `args`; its stdout.
async fn chromium(url: &str, args: &[String]) -> String {
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let mut cmd = tokio::process::Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--disable-crash-reporter",
        "--disable-breakpad",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    let (child, _killed) = spawn("chromium", &mut cmd);
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium ran");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_prometheus_and_web_view_show_the_clones() {
    let grid = TestGrid::start(GridOptions {
        agent_token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await
    .expect("grid starts");
    let http = grid.coordinator.http_addr();

    // Prometheus scrapes from before the deploy, so rates see it happen; the agents too
    // (their per-domain series feed the dashboard's per-clone panels): `/metrics` under
    // their REST prefix, with their bearer token.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("prometheus.yml");
    let mut jobs = format!(
        "  - job_name: napalm-coordinator\n    static_configs:\n      - targets: ['{http}']\n"
    );
    for (i, a) in grid.agents.iter().enumerate() {
        // The grid's agents serve REST under `/napalm` (`ServeConfig::loopback`).
        jobs += &format!(
            "  - job_name: napalm-agent-{i}\n    metrics_path: /napalm/metrics\n    \
             authorization:\n      credentials: {TOKEN}\n    static_configs:\n      \
             - targets: ['{}']\n",
            a.http_addr
        );
    }
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n{jobs}"),
    )
    .expect("write prometheus.yml");
    let prom = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = std::fs::File::create(artifacts_dir().join("observe-prometheus.log"))
        .expect("Prometheus's log file");
    let mut cmd = tokio::process::Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={prom}"))
        .stdout(std::process::Stdio::null())
        .stderr(log);
    let (_prometheus, _killed) = spawn("prometheus", &mut cmd);
    let targets = 1.0 + grid.agents.len() as f64;
    wait_for(
        "Prometheus scraped the coordinator and the agents",
        Duration::from_secs(60),
        || async {
            tokio::net::TcpStream::connect(prom).await.is_ok()
                && query(prom, "count(up == 1)")
                    .await
                    .is_ok_and(|v| v.first() == Some(&targets))
        },
    )
    .await;

    deploy_and_register(&grid).await;

    // (a) the page itself. A deployment's state is recorded by the control loop's next
    // pass (every 2 s) once its clones registered.
    wait_for(
        "the deployment is ready on /metrics",
        Duration::from_secs(20),
        || async {
            let (_, page) = get(http, "/metrics").await;
            sample(
                &page,
                "napalm_coordinator_deployments",
                &[("state", "ready")],
            ) == Some(1.0)
        },
    )
    .await;
    let (status, page) = get(http, "/metrics").await;
    assert_eq!(status, 200);
    let want: &[Expected] = &[
        (
            "napalm_coordinator_clones",
            &[("deployment", DEPLOYMENT), ("phase", "registered")],
            f64::from(CLONES),
        ),
        ("napalm_coordinator_agents", &[("state", "ready")], 2.0),
        ("napalm_coordinator_deployments", &[("state", "ready")], 1.0),
        (
            "napalm_coordinator_placements_total",
            &[("result", "placed")],
            f64::from(CLONES),
        ),
        (
            "napalm_coordinator_clone_boot_seconds_count",
            &[],
            f64::from(CLONES),
        ),
        (
            "napalm_coordinator_run_duration_seconds_count",
            &[("kind", "deploy")],
            1.0,
        ),
        (
            "napalm_coordinator_deploy_phase_duration_seconds_count",
            &[("phase", "create")],
            f64::from(CLONES),
        ),
        (
            "napalm_coordinator_grpc_request_duration_seconds_count",
            &[("method", "Deploy")],
            1.0,
        ),
        (
            "napalm_coordinator_grpc_requests_total",
            &[("method", "RegisterClone"), ("code", "OK")],
            f64::from(CLONES / 2),
        ),
    ];
    for (name, labels, value) in want {
        assert_eq!(
            sample(&page, name, labels),
            Some(*value),
            "{name}{labels:?} on /metrics:\n{page}"
        );
    }
    let clones_per_agent: f64 = page
        .lines()
        .filter(|l| l.starts_with("napalm_coordinator_agent_allocated_clones{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(clones_per_agent, f64::from(CLONES), "{page}");
    assert!(
        sample(
            &page,
            "napalm_coordinator_converge_passes_total",
            &[("result", "ok")]
        )
        .is_some_and(|v| v >= 1.0),
        "{page}"
    );

    // (b) every dashboard query through Prometheus.
    wait_for(
        "Prometheus saw the registered clones",
        Duration::from_secs(60),
        || async {
            query(
                prom,
                &format!("sum(napalm_coordinator_clones{{phase=\"registered\"}}) == {CLONES}"),
            )
            .await
            .is_ok_and(|v| !v.is_empty())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // a few more samples for rate()
    let dashboard =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/napalm/dashboards/napalm.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dashboard).expect("read the dashboard"))
            .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(queries.len() >= 15, "{} queries", queries.len());
    let mut failed = Vec::new();
    for q in &queries {
        match query(prom, q).await {
            Ok(v) if v.iter().any(|x| x.is_finite()) => {}
            Ok(v) => failed.push(format!("{q}: no finite sample ({v:?})")),
            Err(e) => failed.push(format!("{q}: {e}")),
        }
    }
    assert!(
        failed.is_empty(),
        "dashboard queries without data:\n{}",
        failed.join("\n")
    );
    eprintln!("observe: {} dashboard queries returned data", queries.len());

    // (c) the web view: its data first. Each agent shows the vCPUs placed on it against
    // the host's CPUs (not what the agent last found free), the clones adding up to the
    // deployment's.
    let (code, body) = get(http, "/v1/view.json").await;
    assert_eq!(code, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).expect("view.json");
    let agents = view["agents"].as_array().expect("agents");
    let placed: u64 = agents
        .iter()
        .map(|a| a["vcpus"][0].as_u64().expect("allocated vCPUs"))
        .sum();
    assert_eq!(placed, u64::from(CLONES), "{body}");
    for a in agents {
        assert_eq!(a["vcpus"][1], 8, "the test driver's hosts have 8 CPUs: {a}");
        assert_eq!(a["memory_bytes"][1], 16u64 << 30, "and 16 GiB: {a}");
    }
    // Then in a real browser.
    let url = format!("http://{http}/");
    let dom = chromium(&url, &["--dump-dom".to_owned()]).await;
    let artifacts = artifacts_dir();
    std::fs::write(artifacts.join("coordinator-web-view.html"), &dom).expect("keep the DOM");
    for i in 1..=CLONES {
        let name = format!("{DEPLOYMENT}-{i:02}");
        assert!(
            dom.contains(&format!("data-clone=\"{name}\"")),
            "{name} is not in the web view's DOM:\n{dom}"
        );
    }
    assert!(dom.contains("registered"), "{dom}");
    assert!(dom.contains("10.77.0.101"), "{dom}");
    let png = artifacts.join("coordinator-web-view.png");
    let _ = std::fs::remove_file(&png);
    chromium(
        &url,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,1000".to_owned(),
            "--hide-scrollbars".to_owned(),
        ],
    )
    .await;
    let shot = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert!(
        shot.starts_with(b"\x89PNG") && shot.len() > 10_000,
        "{} bytes",
        shot.len()
    );
    eprintln!(
        "observe: DOM and screenshot kept in {}",
        artifacts.display()
    );
}
