//! `napalmctl watch` following a real deploy, its registration and undeploy.

use std::time::Duration;

use napalm_coordinator::testing::spec;
use napalm_proto::v1::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_stream::StreamExt;

use crate::support::*;

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
