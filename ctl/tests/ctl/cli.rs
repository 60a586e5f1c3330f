//! `napalmctl` as an operator runs it: the Clone tool on the thesis's annex IV clones.conf,
//! and exit codes and messages on bad input or an unreachable coordinator. Against a
//! `napalm-coordinator` process: its API token (refused without it, for napalmctl and for
//! registering agents alike) and static agents that start after it.

use std::path::PathBuf;
use std::process::{Command, Output};

use napalm_coordinator::testing::agent_config;

use crate::support::TOKEN;

/// The `napalm-coordinator` binary (another package's: built on first use).
fn coordinator_bin() -> PathBuf {
    napalm_integration::bins::coordinator().expect("napalm-coordinator binary")
}

fn annex_iv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../overlay/examples/clones.conf")
}

fn ctl(args: &[&str], out: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_napalmctl"))
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("napalmctl runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn clone_tool_on_the_annex_iv_configuration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = annex_iv();
    let conf = conf.to_str().expect("utf-8");
    let o = ctl(&["clones", "--config", conf, "--format", "mpi"], dir.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(out.lines().count(), 24, "{out}");
    assert_eq!(out.lines().next(), Some("clone01"));

    let o = ctl(
        &["clone", "--config", conf, "show", "clone07", "--explain"],
        dir.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("name = \"clone07\""), "{out}");
    assert!(
        out.contains("clones.conf:5:1 (global)"),
        "no file:line origin: {out}"
    );

    let o = ctl(&["clone", "--config", conf, "build", "--all"], dir.path());
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.starts_with("24 built"), "{}", text(&o).0);
    let o = ctl(&["clone", "--config", conf, "build", "--all"], dir.path());
    assert!(
        text(&o).0.starts_with("0 built, 24 unchanged"),
        "{}",
        text(&o).0
    );

    let o = ctl(
        &["clone", "--config", conf, "render", "clone07"],
        dir.path(),
    );
    assert!(text(&o).0.contains("/etc/hostname"), "{}", text(&o).0);
}

#[test]
fn bad_input_gives_clear_messages_and_exit_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = annex_iv();
    let conf = conf.to_str().expect("utf-8");
    let o = ctl(&["clone", "--config", conf, "show", "clone99"], dir.path());
    assert_eq!(o.status.code(), Some(4));
    assert!(text(&o).1.contains("\"clone99\""), "{}", text(&o).1);

    let o = ctl(
        &["clones", "--config", "/nonexistent.conf", "--format", "mpi"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("/nonexistent.conf"), "{}", text(&o).1);

    let o = ctl(&["clones", "--config", conf, "--format", "xml"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("xml"), "{}", text(&o).1);

    let o = Command::new(env!("CARGO_BIN_EXE_napalmctl"))
        .args([
            "--coordinator",
            "http://127.0.0.1:9",
            "deploy",
            "--count",
            "8",
        ])
        .output()
        .expect("napalmctl runs");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o).1);
    assert!(
        text(&o).1.contains("cannot reach the coordinator"),
        "{}",
        text(&o).1
    );

    let o = Command::new(env!("CARGO_BIN_EXE_napalmctl"))
        .args(["deploy", "--count", "2", "--memory", "12X"])
        .output()
        .expect("napalmctl runs");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    assert!(text(&o).1.contains("\"12X\""), "{}", text(&o).1);
}

#[test]
fn an_unreachable_etcd_stops_the_coordinator_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Nothing listens on port 9 of loopback.
    let o = Command::new(coordinator_bin())
        .args(["--store", "etcd://127.0.0.1:9", "--insecure-no-auth"])
        .args(["--insecure-plain", "--listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0"])
        .arg("--secret-file")
        .arg(dir.path().join("secret"))
        .arg("--layers-dir")
        .arg(dir.path().join("layers"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("napalm-coordinator runs");
    let err = text(&o).1;
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("\"etcd://127.0.0.1:9\""), "{err}");
    assert!(err.contains("--store"), "{err}");
    assert!(
        !dir.path().join("layers").exists(),
        "nothing written before the store opened"
    );
}

/// The API token of the coordinator processes below (not the agents' `TOKEN`).
const API_TOKEN: &str = "coordinator-api-token-7d2e";

/// A `napalm-coordinator` process on loopback ports, with its files in a temp dir.
struct CoordProc {
    grpc: String,
    _daemon: napalm_integration::proc::Daemon,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl CoordProc {
    /// Starts it with `args` (besides listen addresses and files) and waits until it listens.
    fn start(args: &[&str]) -> Self {
        use crate::support::free_port;
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let log = dir.path().join("coordinator.log");
        let child = Command::new(coordinator_bin())
            .arg("--insecure-plain")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--store")
            .arg(dir.path().join("registry.redb"))
            .arg("--secret-file")
            .arg(dir.path().join("secret"))
            .arg("--layers-dir")
            .arg(dir.path().join("layers"))
            .args(args)
            .env_remove("NAPALM_API_TOKEN")
            .env_remove("NAPALM_AGENTS")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("napalm-coordinator starts");
        let daemon = napalm_integration::proc::Daemon(child);
        let addr = format!("127.0.0.1:{port}");
        let up = napalm_integration::proc::wait_for(std::time::Duration::from_secs(20), || {
            std::net::TcpStream::connect(&addr).ok()
        });
        assert!(
            up.is_some(),
            "coordinator did not listen; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Self {
            grpc: format!("http://{addr}"),
            _daemon: daemon,
            log,
            dir,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `napalmctl --coordinator THIS ARGS`, without settings from the environment or files.
    async fn ctl(&self, args: &[&str]) -> Output {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_napalmctl"));
        for v in [
            "NAPALM_COORDINATOR",
            "NAPALM_TOKEN",
            "NAPALM_OUTPUT",
            "NAPALM_CONFIG",
        ] {
            c.env_remove(v);
        }
        c.env("XDG_CONFIG_HOME", self.dir.path())
            .env("HOME", self.dir.path())
            .args(["--coordinator", &self.grpc])
            .args(args)
            .kill_on_drop(true);
        tokio::time::timeout(std::time::Duration::from_secs(60), c.output())
            .await
            .expect("napalmctl finishes within 60 s")
            .expect("napalmctl runs")
    }

    /// The ids of the agents `napalmctl agents` lists (with the API token).
    async fn agent_ids(&self, token: &str) -> Vec<String> {
        let o = self
            .ctl(&["--token", token, "--output", "json", "agents"])
            .await;
        assert!(o.status.success(), "napalmctl agents: {}", text(&o).1);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("agents JSON");
        v.as_array()
            .expect("array")
            .iter()
            .filter_map(|a| a["id"].as_str().map(str::to_owned))
            .collect()
    }
}

/// The first agent's state as napalmctl shows it.
async fn agent_state(c: &CoordProc) -> String {
    let o = c.ctl(&["--output", "json", "agents"]).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("agents JSON");
    v[0]["state"].as_str().unwrap_or_default().to_owned()
}

/// Polls `agent_ids` until `id` shows up or `timeout` passes.
async fn wait_listed(c: &CoordProc, token: &str, id: &str, timeout: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if c.agent_ids(token).await.iter().any(|a| a == id) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    false
}

#[test]
fn the_coordinator_refuses_to_start_without_a_token_unless_told_to() {
    let dir = tempfile::tempdir().expect("temp dir");
    let o = Command::new(coordinator_bin())
        .args(["--insecure-plain", "--listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0"])
        .arg("--store")
        .arg(dir.path().join("registry.redb"))
        .arg("--secret-file")
        .arg(dir.path().join("secret"))
        .env_remove("NAPALM_API_TOKEN")
        .output()
        .expect("napalm-coordinator runs");
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("an API token is required")
            && text(&o).1.contains("--insecure-no-auth"),
        "{}",
        text(&o).1
    );
    let empty = dir.path().join("empty.token");
    std::fs::write(&empty, "\n").expect("token file");
    let o = Command::new(coordinator_bin())
        .arg("--insecure-plain")
        .arg("--api-token-file")
        .arg(&empty)
        .env_remove("NAPALM_API_TOKEN")
        .output()
        .expect("napalm-coordinator runs");
    assert!(!o.status.success());
    assert!(text(&o).1.contains("API token is empty"), "{}", text(&o).1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_token_is_required_of_napalmctl_and_of_registering_agents() {
    use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
    use napalm_proto::v1::{ListAgentsRequest, RegisterCloneRequest};
    use napalm_proto::ApiError;

    let files = tempfile::tempdir().expect("temp dir");
    let token_file = files.path().join("api.token");
    std::fs::write(&token_file, format!("{API_TOKEN}\n")).expect("token file");
    let c = CoordProc::start(&["--api-token-file", token_file.to_str().expect("utf-8")]);

    // napalmctl without a token, or with a wrong one: refused, exit code 1, and says why.
    for args in [&["agents"][..], &["--token", "wrong", "agents"][..]] {
        let o = c.ctl(args).await;
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("unauthenticated") && err.contains("bearer token"),
            "{args:?}: {err}"
        );
    }
    // With it: served.
    let o = c
        .ctl(&["--token", API_TOKEN, "--output", "json", "agents"])
        .await;
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(text(&o).0.trim(), "[]");

    // On the wire: UNAUTHENTICATED with the google.rpc ErrorInfo a client can act on.
    let mut raw = CoordinatorServiceClient::connect(c.grpc.clone())
        .await
        .expect("connect");
    let e = raw
        .list_agents(ListAgentsRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(
        matches!(
            ApiError::from_status(&e),
            Some(ApiError::Unauthenticated { .. })
        ),
        "{e:?}"
    );
    // Booted clones hold no API token: RegisterClone is judged by the clone's own token.
    let e = raw
        .register_clone(RegisterCloneRequest {
            name: "nobody-01".into(),
            token: "forged".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown clone");
    assert!(
        e.message().contains("\"nobody-01\"") && !e.message().contains("bearer"),
        "RegisterClone did not reach the registry: {e:?}"
    );

    // Agents: one presenting its own (agent) token is refused, one with the API token
    // registers.
    let register = |state: &std::path::Path, token: Option<&str>| {
        let mut cfg = agent_config(state, Some(TOKEN.into()));
        cfg.coordinator = Some(c.grpc.clone());
        cfg.coordinator_token = token.map(str::to_owned);
        cfg
    };
    let refused = napalm_agent::server::start(register(&files.path().join("a1"), None))
        .await
        .expect("agent 1 starts");
    let accepted = napalm_agent::server::start(register(&files.path().join("a2"), Some(API_TOKEN)))
        .await
        .expect("agent 2 starts");
    assert!(
        wait_listed(
            &c,
            API_TOKEN,
            accepted.agent.id(),
            std::time::Duration::from_secs(30)
        )
        .await,
        "the agent with the API token never registered; log:\n{}",
        c.log_text()
    );
    // Agent 1 tried first and retries every 3 s: still not registered.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let ids = c.agent_ids(API_TOKEN).await;
    assert!(
        !ids.iter().any(|i| i == refused.agent.id()),
        "an agent without the API token registered: {ids:?}"
    );
    assert_eq!(ids.len(), 1, "{ids:?}");
    refused.stop().await;
    accepted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_agent_started_after_the_coordinator_is_registered() {
    let files = tempfile::tempdir().expect("temp dir");
    let port = crate::support::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let c = CoordProc::start(&[
        "--insecure-no-auth",
        "--agent",
        &endpoint,
        "--agent-token",
        TOKEN,
        "--heartbeat-min-ttl",
        "2",
    ]);
    // Nobody answers there yet.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(c.agent_ids("any").await, Vec::<String>::new());

    let mut cfg = agent_config(&files.path().join("late"), Some(TOKEN.into()));
    cfg.grpc_listen = Some(format!("127.0.0.1:{port}").parse().expect("addr"));
    let agent = napalm_agent::server::start(cfg)
        .await
        .expect("late agent starts");
    assert!(
        wait_listed(
            &c,
            "any",
            agent.agent.id(),
            std::time::Duration::from_secs(45)
        )
        .await,
        "the late static agent was never registered; log:\n{}",
        c.log_text()
    );
    assert!(
        c.log_text().contains("static agent registered"),
        "{}",
        c.log_text()
    );
    // It never heartbeats itself (no --coordinator): the coordinator's probes keep it
    // ready well past its 2 s TTL; once it is gone it goes down.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert_eq!(agent_state(&c).await, "ready", "{}", c.log_text());
    agent.stop().await;
    let mut down = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if agent_state(&c).await == "down" {
            down = true;
            break;
        }
    }
    assert!(
        down,
        "a silent static agent must go down; log:\n{}",
        c.log_text()
    );
}
