//! A deployment's cluster files over HTTP, as running clones fetch them
//! (`GET /v1/clones/NAME/cluster/FILE`, `crate::cluster_files`): they follow the
//! deployment as it scales, surviving clones' domains are left alone, the clone's own token
//! is required in a header, and an unchanged file costs a 304; the index of a clone's files
//! answers a held request when one changes (`GET /v1/clones/NAME/cluster?…`,
//! `crate::cluster_index`). The clones' watcher script against it: `cluster_watcher`.

use std::collections::HashMap;
use std::net::SocketAddr;

use napalm_coordinator::testing::{spec, GridOptions, TestGrid};
use napalm_proto::v1::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::deploy::{run, running_on, TOKEN};

pub(crate) const DEPLOYMENT: &str = "cfiles";

/// An HTTP/1.0 answer: status, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// `GET path` with `headers`, over HTTP/1.0.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut head = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// `POST /v1/clones/register` as clone `name`'s hook does.
async fn register(grid: &TestGrid, name: &str, address: &str) {
    let token = grid.coordinator.tokens().token(name);
    let body = serde_json::json!({"name": name, "address": address}).to_string();
    let addr = grid.coordinator.http_addr();
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST /v1/clones/register HTTP/1.0\r\nHost: {addr}\r\n\
         Authorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    assert!(raw.starts_with("HTTP/1.0 200"), "registering {name}: {raw}");
}

pub(crate) fn name(i: u32) -> String {
    format!("{DEPLOYMENT}-{i:02}")
}

pub(crate) fn address(i: u32) -> String {
    format!("10.77.0.{}", 100 + i)
}

/// Clone `of`'s file, with its own token.
async fn file(grid: &TestGrid, of: &str, file: &str) -> Answer {
    let bearer = format!("Bearer {}", grid.coordinator.tokens().token(of));
    get(
        grid.coordinator.http_addr(),
        &format!("/v1/clones/{of}/cluster/{file}"),
        &[("Authorization", &bearer)],
    )
    .await
}

/// The `ADDRESS\tNAME` lines of a hosts body.
fn hosts_lines(body: &str) -> Vec<String> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The running domains of the deployment by name: (uuid, created_at) — a domain that was
/// replaced has a new creation time.
async fn domains(grid: &TestGrid) -> HashMap<String, (String, Option<prost_types::Timestamp>)> {
    let mut out = HashMap::new();
    for ep in &grid.endpoints {
        for d in running_on(ep).await {
            if d.name.starts_with(DEPLOYMENT) {
                out.insert(d.name, (d.uuid, d.created_at));
            }
        }
    }
    out
}

/// A grid with one agent and a pool of static addresses for the clones.
async fn grid() -> TestGrid {
    TestGrid::start_with(
        GridOptions {
            agents: 1,
            agent_token: Some(TOKEN.into()),
            ..Default::default()
        },
        |c| {
            if let Some(d) = c.deploy.as_mut() {
                d.addresses = Some("10.77.0.101/24".parse().expect("pool"));
            }
        },
    )
    .await
    .expect("grid starts")
}

#[tokio::test]
async fn cluster_files_follow_scaling_with_the_clones_token_and_cost_a_304_when_unchanged() {
    let grid = grid().await;
    let http = grid.coordinator.http_addr();
    let mut last_etag = String::new();
    let mut before: HashMap<String, (String, Option<prost_types::Timestamp>)> = HashMap::new();
    for count in [2u32, 3, 1] {
        let started = std::time::Instant::now();
        scale(&grid, count).await;
        // Every clone's files list exactly the clones there are now.
        for i in 1..=count {
            let a = file(&grid, &name(i), "hosts").await;
            assert_eq!(a.status, 200, "{}", a.body);
            let want: Vec<String> = (1..=count)
                .map(|j| format!("{}\t{}", address(j), name(j)))
                .collect();
            assert_eq!(
                hosts_lines(&a.body),
                want,
                "hosts of {} at {count}",
                name(i)
            );
            let mpi = file(&grid, &name(i), "mpi").await;
            let want: Vec<String> = (1..=count).map(name).collect();
            assert_eq!(hosts_lines(&mpi.body), want, "mpi at {count}");
        }
        tracing::info!(count, took = ?started.elapsed(), "scaled");
        // The survivors' domains were not replaced (a new clone must not rebuild them).
        let now = domains(&grid).await;
        assert_eq!(now.len(), count as usize, "{now:?}");
        for (n, d) in &now {
            if let Some(was) = before.get(n) {
                assert_eq!(was, d, "{n} was replaced by scaling to {count}");
            }
        }
        before = now;
        // Unchanged: a 304 with the same ETag, and no body; a stale ETag gets the file.
        let a = file(&grid, &name(1), "hosts").await;
        let etag = a.headers.get("etag").cloned().expect("an ETag");
        assert_ne!(etag, last_etag, "the ETag follows the content");
        let bearer = format!("Bearer {}", grid.coordinator.tokens().token(&name(1)));
        let path = format!("/v1/clones/{}/cluster/hosts", name(1));
        let same = get(
            http,
            &path,
            &[("Authorization", &bearer), ("If-None-Match", &etag)],
        )
        .await;
        assert_eq!((same.status, same.body.as_str()), (304, ""));
        assert_eq!(same.headers.get("etag"), Some(&etag));
        if !last_etag.is_empty() {
            let stale = get(
                http,
                &path,
                &[("Authorization", &bearer), ("If-None-Match", &last_etag)],
            )
            .await;
            assert_eq!(stale.status, 200);
        }
        last_etag = etag;
    }

    // known_hosts: `name,address ssh-ed25519 KEY`, the very key in the clone's layer.
    let kh = file(&grid, &name(1), "known-hosts").await;
    assert_eq!(kh.status, 200, "{}", kh.body);
    let lines = hosts_lines(&kh.body);
    assert_eq!(lines.len(), 1, "{}", kh.body);
    let layer_key = std::fs::read_to_string(
        grid.dir
            .path()
            .join("layers")
            .join(DEPLOYMENT)
            .join(name(1))
            .join("root/etc/ssh/ssh_host_ed25519_key.pub"),
    )
    .expect("the clone's public host key in its layer");
    let key: Vec<&str> = layer_key.split_whitespace().take(2).collect();
    assert_eq!(
        lines[0],
        format!("{},{} {}", name(1), address(1), key.join(" "))
    );
    let json = file(&grid, &name(1), "json").await;
    let rows: serde_json::Value = serde_json::from_str(&json.body).expect("json");
    assert_eq!(rows[0]["name"], name(1));
    assert_eq!(rows[0]["phase"], "registered");

    // Refusals: no token, a token in the URL, another clone's token, a removed clone,
    // an unknown file.
    let path = format!("/v1/clones/{}/cluster/hosts", name(1));
    let none = get(http, &path, &[]).await;
    assert_eq!(none.status, 401, "{}", none.body);
    assert!(none.body.contains("Authorization: Bearer"), "{}", none.body);
    assert!(none.headers.contains_key("www-authenticate"));
    let t1 = grid.coordinator.tokens().token(&name(1));
    let in_url = get(http, &format!("{path}?token={t1}"), &[]).await;
    assert_eq!(in_url.status, 401, "the URL is no place for a token");
    let other = format!("Bearer {}", grid.coordinator.tokens().token(&name(2)));
    let wrong = get(http, &path, &[("Authorization", &other)]).await;
    assert_eq!(wrong.status, 403, "{}", wrong.body);
    assert!(wrong.body.contains(&name(1)), "{}", wrong.body);
    let alt = get(http, &path, &[("X-Napalm-Clone-Token", &t1)]).await;
    assert_eq!(alt.status, 200, "{}", alt.body);
    let gone = file(&grid, &name(3), "hosts").await;
    assert_eq!(gone.status, 404, "{}", gone.body);
    let bad = file(&grid, &name(1), "passwd").await;
    assert_eq!(bad.status, 404, "{}", bad.body);
    assert!(bad.body.contains("known-hosts"), "{}", bad.body);
}

/// `GET /v1/clones/NAME/cluster?files=…` as clone `of`, with its own token.
async fn index(grid: &TestGrid, of: &str, query: &str) -> Answer {
    let bearer = format!("Bearer {}", grid.coordinator.tokens().token(of));
    get(
        grid.coordinator.http_addr(),
        &format!("/v1/clones/{of}/cluster?{query}"),
        &[("Authorization", &bearer)],
    )
    .await
}

/// A grid with one agent, deployment `cfiles` of `count` registered clones.
pub(crate) async fn registered_grid(count: u32) -> TestGrid {
    let grid = grid().await;
    scale(&grid, count).await;
    grid
}

/// Deploys `cfiles` at `count` clones and registers them all.
pub(crate) async fn scale(grid: &TestGrid, count: u32) {
    let mut coord = grid.client().await.expect("connect");
    let (_, summary) = run(coord
        .deploy(DeployRequest {
            request_id: format!("scale-{count}"),
            spec: Some(spec(DEPLOYMENT, count)),
            dry_run: false,
        })
        .await)
    .await;
    assert_eq!(summary.requested, count, "{summary:?}");
    for i in 1..=count {
        register(grid, &name(i), &address(i)).await;
    }
}

#[tokio::test]
async fn a_held_index_request_answers_when_a_file_changes_and_not_before() {
    let grid = registered_grid(2).await;
    let first = index(&grid, &name(1), "files=hosts,known-hosts").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let lines: Vec<&str> = first.body.lines().collect();
    assert_eq!(
        lines[0],
        "# cluster files of deployment cfiles (napalm registry)"
    );
    let hosts = file(&grid, &name(1), "hosts").await;
    let content: String = hosts
        .body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| [l, "\n"])
        .collect();
    assert_eq!(
        lines[1],
        format!("hosts {}", napalm_overlay::live::etag(&content)),
        "the index tags each file's lines but comments"
    );
    assert!(lines[2].starts_with("known-hosts \""), "{}", first.body);
    assert_eq!(lines.len(), 3, "only the files asked for: {}", first.body);
    let tag = first.headers.get("etag").cloned().expect("an ETag");
    let bare = tag.trim_matches('"').to_owned();

    // Nothing changes: held for the whole wait, then the same index.
    let started = std::time::Instant::now();
    let same = index(
        &grid,
        &name(1),
        &format!("files=hosts,known-hosts&index={bare}&wait=2s"),
    )
    .await;
    let held = started.elapsed();
    assert_eq!(same.status, 200, "{}", same.body);
    assert_eq!(same.headers.get("etag"), Some(&tag));
    assert!(held >= std::time::Duration::from_secs(2), "held {held:?}");

    // A third clone changes both files: a request held for a minute answers at once.
    let quoted = tag.clone();
    let held = {
        let bearer = format!("Bearer {}", grid.coordinator.tokens().token(&name(1)));
        let addr = grid.coordinator.http_addr();
        let path = format!(
            "/v1/clones/{}/cluster?files=hosts,known-hosts&index={}&wait=60s",
            name(1),
            crate::common::percent_encode(&quoted)
        );
        tokio::spawn(async move { get(addr, &path, &[("Authorization", &bearer)]).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "answered with nothing changed");
    let started = std::time::Instant::now();
    scale(&grid, 3).await;
    let changed = tokio::time::timeout(std::time::Duration::from_secs(10), held)
        .await
        .expect("the held request answers once the files change")
        .expect("request task");
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_ne!(changed.headers.get("etag"), Some(&tag));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_ne!(
        changed.body.lines().nth(1),
        lines.get(1).copied(),
        "hosts changed: {}",
        changed.body
    );

    // All four files without `files`; refusals quote what was wrong.
    let all = index(&grid, &name(1), "").await;
    assert_eq!(all.body.lines().count(), 5, "{}", all.body);
    let bad = index(&grid, &name(1), "files=hosts,passwd").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("\"passwd\""), "{}", bad.body);
    let bad = index(&grid, &name(1), &format!("index={bare}&wait=1h")).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(
        bad.body.contains("\"1h\"") && bad.body.contains("5m"),
        "{}",
        bad.body
    );
    // A clone holds a few requests at most; one more is refused while they wait.
    let tag2 = index(&grid, &name(2), "files=hosts").await.headers["etag"].clone();
    let holding: Vec<_> = (0..4)
        .map(|_| {
            let tag2 = tag2.clone();
            let bearer = format!("Bearer {}", grid.coordinator.tokens().token(&name(2)));
            let addr = grid.coordinator.http_addr();
            let path = format!(
                "/v1/clones/{}/cluster?files=hosts&index={}&wait=3s",
                name(2),
                crate::common::percent_encode(&tag2)
            );
            tokio::spawn(async move { get(addr, &path, &[("Authorization", &bearer)]).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let fifth = index(
        &grid,
        &name(2),
        &format!(
            "files=hosts&index={}&wait=3s",
            crate::common::percent_encode(&tag2)
        ),
    )
    .await;
    assert_eq!(fifth.status, 429, "{}", fifth.body);
    assert!(fifth.body.contains(&name(2)), "{}", fifth.body);
    for h in holding {
        assert_eq!(h.await.expect("task").status, 200);
    }
    let none = get(
        grid.coordinator.http_addr(),
        &format!("/v1/clones/{}/cluster?files=hosts", name(1)),
        &[],
    )
    .await;
    assert_eq!(none.status, 401, "{}", none.body);
    let other = format!("Bearer {}", grid.coordinator.tokens().token(&name(2)));
    let wrong = get(
        grid.coordinator.http_addr(),
        &format!("/v1/clones/{}/cluster?files=hosts", name(1)),
        &[("Authorization", &other)],
    )
    .await;
    assert_eq!(wrong.status, 403, "{}", wrong.body);
}
