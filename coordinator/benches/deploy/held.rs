//! Requests held on the cluster index, one per deployed clone, as each running clone's
//! watcher holds one (`GET /v1/clones/NAME/cluster?files=hosts,known-hosts&index=TAG
//! &wait=5m`, [`napalm_coordinator::cluster_index`]): the coordinator's memory and CPU per
//! held request while nothing changes, and how long one change (a clone registering)
//! takes to answer them all and what it costs. The requests come from a child process
//! (this bench started again with `NAPALM_BENCH_HOLDERS_CHILD=ADDR`), so the figures are
//! the coordinator's alone.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FILES: &str = "hosts,known-hosts";

/// How long the held requests wait at most (the coordinator's longest).
const WAIT: &str = "5m";

/// The index path of clone `name`, held on `tag` when given.
fn index_path(name: &str, tag: Option<&str>) -> String {
    match tag {
        Some(t) => format!("/v1/clones/{name}/cluster?files={FILES}&index={t}&wait={WAIT}"),
        None => format!("/v1/clones/{name}/cluster?files={FILES}"),
    }
}

/// One request on a connection of its own (`Connection: close`), as clone `token`'s:
/// the answer's status and head. `on_sent` runs once the request is written.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
    on_sent: impl FnOnce(),
) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    on_sent();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, head))
}

/// The `ETag` header of an answer's head, unquoted.
fn etag(head: &str) -> Option<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("etag"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
}

/// Raises this process's open-files limit to its hard limit (a socket per held request).
fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Holder mode: reads the index tag, then `NAME TOKEN` lines up to an empty line, holds
/// one request per clone, prints `held N` once all are sent; at `wake` on stdin, waits
/// for every answer and prints when they came, measured from the `wake`.
pub fn child(addr: &str) {
    raise_open_files();
    let addr: SocketAddr = addr.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut lines = std::io::stdin().lock().lines().map(Result::unwrap);
    let tag = lines.next().unwrap();
    let clones: Vec<(String, String)> = lines
        .by_ref()
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let (n, t) = l.split_once(' ').unwrap();
            (n.to_owned(), t.to_owned())
        })
        .collect();
    let sent = Arc::new(AtomicUsize::new(0));
    // Answers so far, with the first one's head (none should come before the change).
    let so_far = Arc::new(std::sync::Mutex::new((0usize, String::new())));
    let tasks: Vec<_> = clones
        .iter()
        .map(|(name, token)| {
            let (path, token) = (index_path(name, Some(&tag)), token.clone());
            let (sent, so_far) = (sent.clone(), so_far.clone());
            rt.spawn(async move {
                let got = request(addr, "GET", &path, &token, "", || {
                    sent.fetch_add(1, Ordering::Relaxed);
                })
                .await;
                let at = Instant::now();
                let status = match got {
                    Ok((status, head)) => {
                        let mut e = so_far.lock().unwrap();
                        e.0 += 1;
                        if e.1.is_empty() {
                            e.1 = head.replace("\r\n", " | ");
                        }
                        status
                    }
                    Err(_) => 0,
                };
                (at, status)
            })
        })
        .collect();
    while sent.load(Ordering::Relaxed) < tasks.len() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "held {}", tasks.len()).unwrap();
    out.flush().unwrap();
    // "check": how many answered so far (none should, nothing changed).
    if lines.next().is_none() {
        return;
    }
    let (n, first) = so_far.lock().unwrap().clone();
    writeln!(out, "{n} {first}").unwrap();
    out.flush().unwrap();
    if lines.next().is_none() {
        return;
    }
    let woke = Instant::now();
    // Requests still held a minute after the change count as failed (status 0).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let answers: Vec<(Instant, u16)> = rt.block_on(async {
        let mut v = Vec::new();
        for t in tasks {
            match tokio::time::timeout_at(deadline, t).await {
                Ok(Ok(a)) => v.push(a),
                _ => v.push((Instant::now(), 0)),
            }
        }
        v
    });
    let early = answers.iter().filter(|(at, _)| *at < woke).count();
    let ok = answers.iter().filter(|(_, s)| *s == 200).count();
    let after: Vec<Duration> = answers
        .iter()
        .map(|(at, _)| at.saturating_duration_since(woke))
        .collect();
    let first = after.iter().min().copied().unwrap_or_default();
    let last = after.iter().max().copied().unwrap_or_default();
    writeln!(
        out,
        "answered {} {ok} {early} {:.3} {:.3}",
        answers.len(),
        first.as_secs_f64(),
        last.as_secs_f64()
    )
    .unwrap();
}

/// Holds one index request per clone of `deployment` (from the holders' process), then
/// prints the coordinator's CPU and memory per held request against `before` (its idle
/// CPU per second and RSS with the clones and no held request), and what answering them
/// all after one clone registers costs.
pub async fn measure(
    grid: &napalm_coordinator::testing::TestGrid,
    c: &mut napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient<
        tonic::transport::Channel,
    >,
    deployment: &str,
    before: (f64, f64),
) {
    let clones = c
        .list_clones(napalm_proto::v1::ListClonesRequest {
            deployment: deployment.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .clones;
    let addr = grid.coordinator.http_addr();
    let tokens = grid.coordinator.tokens();
    let first = &clones[0];
    let (status, head) = request(
        addr,
        "GET",
        &index_path(&first.name, None),
        &tokens.token(&first.name),
        "",
        || {},
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "the index of {}: {head}", first.name);
    let tag = etag(&head).expect("an ETag");
    raise_open_files();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("NAPALM_BENCH_HOLDERS_CHILD", addr.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_child = child.stdin.take().unwrap();
    let mut from_child = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut list = format!("{tag}\n");
    for k in &clones {
        list.push_str(&format!("{} {}\n", k.name, tokens.token(&k.name)));
    }
    list.push('\n');
    to_child.write_all(list.as_bytes()).unwrap();
    to_child.flush().unwrap();
    let t = Instant::now();
    let held = from_child.next().unwrap().unwrap();
    assert_eq!(held, format!("held {}", clones.len()));
    // Each request is read, authenticated and parked after it is sent; give them time.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let sent_in = t.elapsed();
    writeln!(to_child, "check").unwrap();
    to_child.flush().unwrap();
    let answered = from_child.next().unwrap().unwrap();
    assert!(
        answered.starts_with("0 "),
        "held requests answered with nothing changed (how many, the first's head): {answered}"
    );
    let (cpu, rss) = super::machine::idle(super::machine::idle_secs()).await;
    let n = clones.len() as f64;
    println!(
        "    {} held index requests (sent and parked in {:.1} s): coordinator idle {:.1} ms CPU/s, \
         {rss:.0} MiB; per held request {:.2} us CPU/s, {:.1} KiB",
        clones.len(),
        sent_in.as_secs_f64(),
        cpu * 1e3,
        (cpu - before.0) * 1e6 / n,
        (rss - before.1) * 1024.0 / n,
    );
    // One clone registers with an address other than the one it was given (as a clone
    // on DHCP would; 198.51.100.0/24 is for documentation): its line in every clone's
    // hosts changes, so every held request answers.
    let cpu0 = super::machine::cpu_used();
    let woke = Instant::now();
    writeln!(to_child, "wake").unwrap();
    to_child.flush().unwrap();
    let body = serde_json::json!({"name": first.name, "address": "198.51.100.1"}).to_string();
    let (status, head) = request(
        addr,
        "POST",
        "/v1/clones/register",
        &tokens.token(&first.name),
        &body,
        || {},
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "registering {}: {head}", first.name);
    let answered = from_child.next().unwrap().unwrap();
    let cpu = (super::machine::cpu_used() - cpu0).as_secs_f64();
    let f: Vec<&str> = answered.split_whitespace().collect();
    assert_eq!(f.first(), Some(&"answered"), "{answered}");
    println!(
        "    one clone registers: {} of {} held requests answered 200 ({} before the change), \
         the first {} s and the last {} s after it; the coordinator used {cpu:.2} CPU-s \
         in {:.2} s ({:.1} us per held request)",
        f[2],
        f[1],
        f[3],
        f[4],
        f[5],
        woke.elapsed().as_secs_f64(),
        cpu * 1e6 / n,
    );
    assert_eq!(f[1], f[2], "every held request answered 200: {answered}");
    assert_eq!(f[3], "0", "no held request answered before the change");
    drop(to_child);
    let _ = child.wait();
}
