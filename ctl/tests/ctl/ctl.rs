//! `napalmctl` as a process against real services on loopback: `domain` against a real
//! napalm-agent on `test:///default`, `watch` following a real deploy, settings precedence
//! (flag > environment > file), and `deploy` refused when no agent can take clones.
//!
//! Domain and deployment names here start with `domcli-`/`watchcli`/`noagents`: the test
//! driver's state is shared by every test of this process.

use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use napalm_coordinator::registry::{Registry, CLONES, DEPLOYMENTS};
use napalm_coordinator::server::ApiAuth;
use napalm_coordinator::testing::{spec, GridOptions, TestGrid};
use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use napalm_proto::v1::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_stream::StreamExt;

use crate::support::TOKEN;

/// Variables napalmctl reads; every run starts without them.
const VARS: [&str; 7] = [
    "NAPALM_COORDINATOR",
    "NAPALM_TOKEN",
    "NAPALM_OUTPUT",
    "NAPALM_AGENT",
    "NAPALM_AGENT_TOKEN",
    "NAPALM_CONFIG",
    "XDG_CONFIG_HOME",
];

/// napalmctl with a clean environment: no settings variables, an empty user config dir.
fn ctl(home: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_napalmctl"));
    for v in VARS {
        c.env_remove(v);
    }
    c.env("XDG_CONFIG_HOME", home).env("HOME", home);
    c.kill_on_drop(true);
    c
}

async fn run(mut c: tokio::process::Command) -> Output {
    tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .expect("napalmctl finishes within 60 s")
        .expect("napalmctl runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `agents` agents on `test:///default` (with `TOKEN`) and a coordinator with the deploy
/// pipeline that knows them, whose API accepts every call and records its `authorization`.
struct Grid {
    grid: TestGrid,
    client: CoordinatorServiceClient<tonic::transport::Channel>,
    /// The `authorization` metadata of every call, in order ("" when absent).
    auth: Arc<Mutex<Vec<String>>>,
}

impl Grid {
    async fn start(agents: usize) -> Self {
        let auth = Arc::new(Mutex::new(Vec::new()));
        let opts = GridOptions {
            agents,
            agent_token: Some(TOKEN.into()),
            ..Default::default()
        };
        let record = ApiAuth::Record(Arc::clone(&auth));
        let grid = TestGrid::start_with(opts, |c| c.api_auth = record)
            .await
            .expect("agents and coordinator start on loopback");
        let client = grid.client().await.expect("connect to the coordinator");
        Self { grid, client, auth }
    }

    fn endpoint(&self) -> String {
        self.grid.coordinator.endpoint()
    }

    fn registry(&self) -> &Registry {
        self.grid.coordinator.registry()
    }

    fn last_auth(&self) -> Option<String> {
        self.auth.lock().expect("lock").last().cloned()
    }
}

fn rest(a: &napalm_agent::server::Running) -> String {
    format!("http://{}/napalm", a.http_addr)
}

fn test_xml(name: &str) -> String {
    format!(
        "<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='i686'>hvm</type><kernel>vmlinuz</kernel><initrd>initrd.img</initrd>\
         </os></domain>"
    )
}

/// `napalmctl domain --agent URL --token TOKEN ARGS…`
async fn domain(home: &Path, agent: &str, args: &[&str]) -> Output {
    let mut c = ctl(home);
    c.args(["domain", "--agent", agent, "--token", TOKEN])
        .args(args);
    run(c).await
}

#[tokio::test]
async fn domain_crud_against_a_real_agent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let mut coord = Grid::start(1).await;
    let a = &coord.grid.agents[0];
    let url = rest(a);
    let h = home.as_path();
    let xml = dir.path().join("domcli-a.xml");
    std::fs::write(&xml, test_xml("domcli-a")).expect("xml");
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"kernel").expect("kernel");
    let initrd = dir.path().join("initrd.img");
    std::fs::write(&initrd, b"initrd").expect("initrd");
    let (xml, kernel, initrd) = (
        xml.to_str().expect("utf-8"),
        kernel.to_str().expect("utf-8"),
        initrd.to_str().expect("utf-8"),
    );

    // Create = one PUT of an archive napalmctl packs from the XML and its files.
    let puts = a.counters.put.load(std::sync::atomic::Ordering::Relaxed);
    let o = domain(
        h,
        &url,
        &[
            "create", "domcli-a", "--xml", xml, "--file", kernel, "--file", initrd,
        ],
    )
    .await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(out, "domcli-a: created, running\n");
    assert_eq!(
        a.counters.put.load(std::sync::atomic::Ordering::Relaxed) - puts,
        1,
        "create = 1 PUT"
    );

    let o = domain(h, &url, &["--output", "json", "list"]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).expect("JSON list");
    let row = rows
        .iter()
        .find(|r| r["name"] == "domcli-a")
        .unwrap_or_else(|| panic!("domcli-a not listed: {out}"));
    assert_eq!(row["state"], "running");
    assert_eq!(row["memory_mib"], 64);

    let o = domain(h, &url, &["show", "domcli-a"]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.starts_with("FIELD"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("state") && l.ends_with("running")),
        "{out}"
    );
    assert!(out.contains("vmlinuz,initrd.img") || out.contains("initrd.img,vmlinuz"));

    for (cmd, want) in [
        ("stop", "shutoff"),
        ("start", "running"),
        ("pause", "paused"),
        ("start", "running"),
    ] {
        let o = domain(h, &url, &[cmd, "domcli-a"]).await;
        let (out, err) = text(&o);
        assert!(o.status.success(), "{cmd}: {err}");
        assert_eq!(out, format!("domcli-a: {want}\n"), "{cmd}");
        let o = domain(h, &url, &["status", "domcli-a"]).await;
        assert_eq!(text(&o).0, format!("{want}\n"), "status after {cmd}");
    }

    let o = domain(h, &url, &["config", "domcli-a"]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("<name>domcli-a</name>"), "{out}");

    let archive = dir.path().join("domcli-a.tar.gz");
    let o = domain(
        h,
        &url,
        &[
            "archive",
            "domcli-a",
            "--out",
            archive.to_str().expect("utf-8"),
        ],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o).1);
    let bytes = std::fs::read(&archive).expect("archive written");
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip");

    // The same definition again is idempotent.
    let o = domain(
        h,
        &url,
        &[
            "create", "domcli-a", "--xml", xml, "--file", kernel, "--file", initrd,
        ],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(text(&o).0, "domcli-a: unchanged (it existed), running\n");

    // Delete, then bring it back from the downloaded archive, defined only.
    let o = domain(h, &url, &["delete", "domcli-a"]).await;
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(text(&o).0, "domcli-a: deleted\n");
    let o = domain(
        h,
        &url,
        &[
            "create",
            "domcli-a",
            "--archive",
            archive.to_str().expect("utf-8"),
            "--no-start",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(text(&o).0, "domcli-a: created, shutoff\n");
    let o = domain(h, &url, &["delete", "domcli-a", "--purge"]).await;
    assert!(o.status.success(), "{}", text(&o).1);
    let o = domain(h, &url, &["status", "domcli-a"]).await;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o).1);
    assert!(text(&o).1.contains("domcli-a"), "{}", text(&o).1);

    // Bad input: each a message quoting it and the documented exit code.
    let o = domain(h, &url, &["show", "../etc"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("\"../etc\""), "{}", text(&o).1);

    let o = domain(
        h,
        &url,
        &["create", "domcli-b", "--xml", "/nonexistent/b.xml"],
    )
    .await;
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("/nonexistent/b.xml"), "{}", text(&o).1);

    // config.xml names another domain: the agent refuses with 400, napalmctl exits 2.
    let o = domain(
        h,
        &url,
        &[
            "create", "domcli-b", "--xml", xml, "--file", kernel, "--file", initrd,
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    assert!(text(&o).1.contains("400"), "{}", text(&o).1);

    let mut c = ctl(h);
    c.args(["domain", "--agent", &url, "list"]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("NAPALM_AGENT_TOKEN"), "{}", text(&o).1);

    let o = domain(h, "http://127.0.0.1:9/napalm", &["list"]).await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o).1);
    assert!(text(&o).1.contains("127.0.0.1:9"), "{}", text(&o).1);

    let o = domain(h, "ftp://example/napalm", &["list"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("\"ftp://example/napalm\""),
        "{}",
        text(&o).1
    );

    let mut c = ctl(h);
    c.args(["domain", "list"]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--agent"), "{}", text(&o).1);

    // An agent named by the name it registered with: its REST endpoint comes from the
    // coordinator.
    coord
        .client
        .register_agent(RegisterAgentRequest {
            id: "domcli-host".into(),
            name: "domcli-host".into(),
            grpc_endpoint: format!("http://{}", a.grpc_addr.expect("grpc")),
            rest_endpoint: url.clone(),
            ..Default::default()
        })
        .await
        .expect("register");
    let mut c = ctl(h);
    c.args([
        "--coordinator",
        &coord.endpoint(),
        "domain",
        "--agent",
        "domcli-host",
        "--token",
        TOKEN,
        "list",
    ]);
    let o = run(c).await;
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.starts_with("NAME"), "{}", text(&o).0);
    assert_eq!(
        coord.last_auth().as_deref(),
        Some(""),
        "the agent's --token must not reach the coordinator"
    );
    let mut c = ctl(h);
    c.args([
        "--coordinator",
        &coord.endpoint(),
        "domain",
        "--agent",
        "nosuchhost",
        "list",
    ]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o).1);
    assert!(text(&o).1.contains("\"nosuchhost\""), "{}", text(&o).1);
}

#[tokio::test]
async fn settings_come_from_flag_then_environment_then_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join("napalm")).expect("config dir");
    let coord = Grid::start(1).await;
    let url = rest(&coord.grid.agents[0]);
    let dead = "http://127.0.0.1:9";
    // The user file (found through XDG_CONFIG_HOME) points at the real coordinator and
    // agent with the right agent token, and asks for JSON.
    let file = home.join("napalm").join("napalmctl.yaml");
    std::fs::write(
        &file,
        format!(
            "# napalmctl test\ncoordinator: {}\ntoken: filetok\noutput: json\nagent: {url}\n\
             agent_token: {TOKEN}\n",
            coord.endpoint()
        ),
    )
    .expect("write config");

    // File only: everything from the file.
    let mut c = ctl(&home);
    c.args(["deployments"]);
    let o = run(c).await;
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(text(&o).0.trim(), "[]", "JSON from `output: json`");
    assert_eq!(coord.last_auth().as_deref(), Some("Bearer filetok"));
    let mut c = ctl(&home);
    c.args(["domain", "list"]);
    let o = run(c).await;
    assert!(
        o.status.success(),
        "file agent + agent_token: {}",
        text(&o).1
    );

    // Environment beats the file.
    let mut c = ctl(&home);
    c.env("NAPALM_COORDINATOR", dead).args(["deployments"]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o).1);
    let err = text(&o).1;
    assert!(
        err.contains(dead) && err.contains("NAPALM_COORDINATOR"),
        "{err}"
    );
    let mut c = ctl(&home);
    c.env("NAPALM_AGENT_TOKEN", "wrong")
        .args(["domain", "list"]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(1), "env token beats the file's");
    assert!(text(&o).1.contains("401"), "{}", text(&o).1);
    let mut c = ctl(&home);
    c.env("NAPALM_OUTPUT", "yaml")
        .env("NAPALM_TOKEN", "envtok")
        .args(["deployments"]);
    let o = run(c).await;
    assert_eq!(text(&o).0.trim(), "[]", "{}", text(&o).1);
    assert_eq!(coord.last_auth().as_deref(), Some("Bearer envtok"));

    // A flag beats both.
    let mut c = ctl(&home);
    c.env("NAPALM_COORDINATOR", dead)
        .env("NAPALM_TOKEN", "envtok")
        .args(["--coordinator", &coord.endpoint(), "-o", "table"])
        .args(["--token", "flagtok", "deployments"]);
    let o = run(c).await;
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.starts_with("NAME"), "{}", text(&o).0);
    assert_eq!(coord.last_auth().as_deref(), Some("Bearer flagtok"));
    let mut c = ctl(&home);
    c.env("NAPALM_AGENT_TOKEN", "wrong")
        .args(["domain", "--token", TOKEN, "list"]);
    let o = run(c).await;
    assert!(o.status.success(), "flag token: {}", text(&o).1);
    let mut c = ctl(&home);
    c.args(["domain", "--agent", "http://127.0.0.1:9/napalm", "list"]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(3), "--agent beats `agent:`");

    // NAPALM_CONFIG beats the user file; a malformed file names itself and the line.
    let other = dir.path().join("other.yaml");
    std::fs::write(&other, format!("coordinator: {dead}\noutput: table\n")).expect("write");
    let mut c = ctl(&home);
    c.env("NAPALM_CONFIG", &other).args(["deployments"]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o).1);
    assert!(text(&o).1.contains("other.yaml:1"), "{}", text(&o).1);
    std::fs::write(&other, "coordinator: x\noutput: json\n  bad indent: [\n").expect("write");
    let mut c = ctl(&home);
    c.env("NAPALM_CONFIG", &other).args(["deployments"]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    let err = text(&o).1;
    assert!(err.contains(&format!("{}:", other.display())), "{err}");
    assert!(err.contains(":3:"), "line of the error: {err}");

    // --help documents the precedence.
    let mut c = ctl(&home);
    c.arg("--help");
    let o = run(c).await;
    let out = text(&o).0;
    for s in [
        "NAPALM_COORDINATOR",
        "NAPALM_TOKEN",
        "NAPALM_AGENT_TOKEN",
        "NAPALM_CONFIG",
        "/etc/napalm/napalmctl.yaml",
        "first found wins",
    ] {
        assert!(out.contains(s), "--help lacks {s}: {out}");
    }
}

#[tokio::test]
async fn deploy_with_no_ready_agent_fails_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut coord = Grid::start(0).await;
    let mut c = ctl(dir.path());
    c.args([
        "--coordinator",
        &coord.endpoint(),
        "deploy",
        "--count",
        "2",
        "--name",
        "noagents",
    ]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o).1);
    let err = text(&o).1;
    assert!(
        err.contains("no agent can take clones (none is registered)")
            && err.contains("nothing was deployed")
            && err.contains("napalmctl agents"),
        "{err}"
    );
    let nothing = |r: &Registry| {
        let r = r.clone();
        async move {
            let s = r.store();
            (
                s.list(DEPLOYMENTS).await.expect("list").len(),
                s.list(CLONES).await.expect("list").len(),
            )
        }
    };
    assert_eq!(nothing(coord.registry()).await, (0, 0));

    // An agent that exists but is draining cannot take clones either.
    coord
        .client
        .register_agent(RegisterAgentRequest {
            id: "noagents-host".into(),
            name: "noagents-host".into(),
            grpc_endpoint: "http://127.0.0.1:9".into(),
            ..Default::default()
        })
        .await
        .expect("register");
    coord
        .client
        .set_agent_state(SetAgentStateRequest {
            request_id: "drain-1".into(),
            id: "noagents-host".into(),
            state: AgentState::Draining as i32,
        })
        .await
        .expect("drain");
    let mut c = ctl(dir.path());
    c.args([
        "--coordinator",
        &coord.endpoint(),
        "deploy",
        "--count",
        "2",
        "--name",
        "noagents",
    ]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o).1);
    assert!(
        text(&o).1.contains("noagents-host draining"),
        "{}",
        text(&o).1
    );
    assert_eq!(nothing(coord.registry()).await, (0, 0));
}

/// Reads JSON lines from `lines` until `done` holds for what was read (or 30 s pass).
async fn read_until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: &mut Vec<Value>,
    done: impl Fn(&[Value]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(seen) {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("watch did not show it within 30 s; saw {seen:#?}"))
            .expect("read watch output")
            .unwrap_or_else(|| panic!("watch ended; saw {seen:#?}"));
        seen.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
    }
}

fn phases(seen: &[Value], clone: &str) -> Vec<String> {
    seen.iter()
        .filter(|e| e["kind"] == "clone" && e["name"] == clone && e["deleted"] == false)
        .filter_map(|e| e["phase"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn watch_follows_a_deploy_registration_and_undeploy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut coord = Grid::start(1).await;
    let mut c = ctl(dir.path());
    c.args([
        "--coordinator",
        &coord.endpoint(),
        "--output",
        "json",
        "watch",
        "--deployment",
        "watchcli",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("napalmctl watch starts");
    let mut err = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), err.next_line())
        .await
        .expect("watch starts within 30 s")
        .expect("stderr")
        .unwrap_or_default();
    assert!(first.contains("watching"), "{first}");
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();

    // Another deployment's changes are filtered out.
    let other = coord
        .client
        .deploy(DeployRequest {
            request_id: "watch-other".into(),
            spec: Some(spec("watchother", 1)),
            dry_run: false,
        })
        .await
        .expect("deploy accepted");
    drain(other.into_inner()).await;
    let mut s = coord
        .client
        .deploy(DeployRequest {
            request_id: "watch-1".into(),
            spec: Some(spec("watchcli", 2)),
            dry_run: false,
        })
        .await
        .expect("deploy accepted")
        .into_inner();
    drain_ok(&mut s).await;

    let mut seen = Vec::new();
    // Within one poll the deployment's last change (its state) may come after its clones'.
    read_until(&mut out, &mut seen, |s| {
        ["watchcli-01", "watchcli-02"]
            .iter()
            .all(|c| phases(s, c).last().map(String::as_str) == Some("running"))
            && s.iter().any(|e| {
                e["kind"] == "deployment" && e["name"] == "watchcli" && e["deleted"] == false
            })
    })
    .await;
    let order = [
        "pending",
        "scheduled",
        "layer",
        "shipped",
        "defined",
        "running",
    ];
    for c in ["watchcli-01", "watchcli-02"] {
        let p = phases(&seen, c);
        let idx: Vec<usize> = p
            .iter()
            .map(|x| {
                order
                    .iter()
                    .position(|o| o == x)
                    .unwrap_or_else(|| panic!("{c}: unexpected phase {x}: {p:?}"))
            })
            .collect();
        assert!(
            idx.windows(2).all(|w| w[0] < w[1]),
            "{c}: phases out of order or repeated: {p:?}"
        );
    }

    // The clone reports in: watch shows running -> registered.
    coord
        .client
        .register_clone(RegisterCloneRequest {
            name: "watchcli-01".into(),
            token: coord.grid.coordinator.tokens().token("watchcli-01"),
            addresses: vec!["10.77.0.11/24".into()],
            ..Default::default()
        })
        .await
        .expect("register clone");
    read_until(&mut out, &mut seen, |s| {
        phases(s, "watchcli-01").last().map(String::as_str) == Some("registered")
    })
    .await;
    let reg = seen
        .iter()
        .rev()
        .find(|e| e["name"] == "watchcli-01")
        .expect("event");
    assert_eq!(reg["addresses"][0], "10.77.0.11/24");

    // Undeploy: both clones and the deployment are seen going away.
    let mut s = coord
        .client
        .undeploy(UndeployRequest {
            request_id: "watch-u".into(),
            name: "watchcli".into(),
            purge: true,
        })
        .await
        .expect("undeploy accepted")
        .into_inner();
    drain_ok(&mut s).await;
    read_until(&mut out, &mut seen, |s| {
        let gone = |k: &str, n: &str| {
            s.iter()
                .any(|e| e["kind"] == k && e["name"] == n && e["deleted"] == true)
        };
        gone("clone", "watchcli-01")
            && gone("clone", "watchcli-02")
            && gone("deployment", "watchcli")
    })
    .await;
    assert!(
        seen.iter().all(|e| e["deployment"] == "watchcli"
            || (e["kind"] == "deployment" && e["name"] == "watchcli")),
        "--deployment filter: {seen:#?}"
    );
    let revs: Vec<u64> = seen.iter().filter_map(|e| e["revision"].as_u64()).collect();
    assert!(revs.iter().all(|r| *r > 0), "{revs:?}");
    child.kill().await.expect("stop watch");

    // Over the wire: since_revision replays the current records (the one deployment left,
    // its kind alone), and a bad filter is refused with the name quoted (napalmctl exits 2).
    let mut replay = coord
        .client
        .watch_events(WatchEventsRequest {
            kinds: vec![EventKind::Deployment as i32],
            deployment: String::new(),
            since_revision: 1,
        })
        .await
        .expect("watch accepted")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), replay.next())
        .await
        .expect("replayed at once")
        .expect("an event")
        .expect("not an error");
    assert!(
        matches!(&first.payload, Some(event::Payload::Deployment(d))
            if d.spec.as_ref().map(|s| s.name.as_str()) == Some("watchother")),
        "{first:?}"
    );
    drop(replay);
    let mut c = ctl(dir.path());
    c.args([
        "--coordinator",
        &coord.endpoint(),
        "watch",
        "--deployment",
        "Bad_Name",
    ]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    assert!(text(&o).1.contains("\"Bad_Name\""), "{}", text(&o).1);

    let mut s = coord
        .client
        .undeploy(UndeployRequest {
            request_id: "watch-u2".into(),
            name: "watchother".into(),
            purge: true,
        })
        .await
        .expect("undeploy accepted")
        .into_inner();
    drain_ok(&mut s).await;
}

async fn drain(mut s: tonic::Streaming<DeployProgress>) {
    drain_ok(&mut s).await;
}

/// Runs a deploy/undeploy stream to its summary; every clone must have succeeded.
async fn drain_ok(s: &mut tonic::Streaming<DeployProgress>) {
    let mut summary = None;
    while let Some(m) = s.next().await {
        if let Some(deploy_progress::Event::Summary(x)) = m.expect("stream item").event {
            summary = Some(x);
        }
    }
    let summary = summary.expect("summary");
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert_eq!(summary.succeeded, summary.requested, "{summary:?}");
}

/// A live deployment's cluster files come from the registry and follow its scaling.
#[tokio::test]
async fn cluster_files_of_a_live_deployment_follow_scaling() {
    let opts = GridOptions {
        agents: 1,
        agent_token: Some(TOKEN.into()),
        ..Default::default()
    };
    let grid = TestGrid::start_with(opts, |c| {
        if let Some(d) = c.deploy.as_mut() {
            d.addresses = Some("10.77.0.101/24".parse().expect("pool"));
        }
    })
    .await
    .expect("grid starts");
    let home = tempfile::tempdir().expect("home");
    let endpoint = grid.coordinator.endpoint();
    for (count, want) in [(2, 2), (3, 3), (1, 1)] {
        let mut c = ctl(home.path());
        c.args(["--coordinator", &endpoint, "--output", "json", "deploy"])
            .args([
                "--name",
                "files",
                "--memory",
                "128M",
                "--count",
                &count.to_string(),
            ]);
        let o = run(c).await;
        assert!(o.status.success(), "deploy {count}: {}", text(&o).1);
        let mut c = ctl(home.path());
        c.args([
            "--coordinator",
            &endpoint,
            "clones",
            "--deployment",
            "files",
        ])
        .args(["--format", "hosts"]);
        let o = run(c).await;
        assert!(o.status.success(), "{}", text(&o).1);
        let hosts: Vec<String> = text(&o)
            .0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        let expected: Vec<String> = (1..=want)
            .map(|i| format!("10.77.0.{}\tfiles-{i:02}", 100 + i))
            .collect();
        assert_eq!(hosts, expected, "hosts at count {count}");
    }
    let mut c = ctl(home.path());
    c.args([
        "--coordinator",
        &endpoint,
        "clones",
        "--deployment",
        "files",
    ])
    .args(["--format", "known-hosts"]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    assert!(text(&o).1.contains("clones.conf"), "{}", text(&o).1);
}
