//! `napalmctl` as a process against real services on loopback: settings precedence (flag >
//! environment > file), `deploy` refused when no agent can take clones, and a live
//! deployment's cluster files.

use napalm_coordinator::registry::{Registry, CLONES, DEPLOYMENTS};
use napalm_coordinator::testing::{GridOptions, TestGrid};
use napalm_proto::v1::*;

use crate::support::*;

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
        // What running clones install comes from the coordinator by the same rules.
        let served = clone_file(&grid, "files-01", "hosts").await;
        assert_eq!(
            served,
            text(&o).0,
            "the endpoint and napalmctl agree at {count}"
        );
    }
    // The MPI hostfile by the coordinator's rules: only registered clones are hosts (on
    // the test driver none boots, so the one clone is a comment).
    let mut c = ctl(home.path());
    c.args([
        "--coordinator",
        &endpoint,
        "clones",
        "--deployment",
        "files",
    ])
    .args(["--format", "mpi"]);
    let o = run(c).await;
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(
        text(&o).0,
        "# clones of deployment files (napalm registry)\n# files-01 (running)\n"
    );
    // known_hosts: the host keys the coordinator derives for each clone, the same lines
    // the clone's watcher installs.
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
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let served = clone_file(&grid, "files-01", "known-hosts").await;
    assert!(
        served.contains("files-01") && served.contains("ssh-ed25519 "),
        "{served}"
    );
    assert_eq!(
        text(&o).0,
        served,
        "napalmctl and the clone's endpoint agree"
    );
}

/// Clone `name`'s cluster `file` as its watcher fetches it (HTTP/1.0, its own token).
async fn clone_file(grid: &TestGrid, name: &str, file: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = grid.coordinator.http_addr();
    let token = grid.coordinator.tokens().token(name);
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET /v1/clones/{name}/cluster/{file} HTTP/1.0\r\nHost: {addr}\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    assert!(head.starts_with("HTTP/1.0 200"), "{raw}");
    body.to_owned()
}
