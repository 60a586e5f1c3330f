//! Benchmarks for the closing note, run on demand (they take a while and want a release
//! build): `cargo test -p napalm-agent --release --test agent bench -- --ignored --nocapture`.
//! The agent runs as its own process on `test:///default`; each asserts a floor so a
//! collapse fails rather than prints.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::test_archive;

/// The agent process, its base URL, and its state directory (kept alive with it).
struct Agent(Child, String, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn spawn() -> Agent {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let gport = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_napalm-agent"))
        .args([
            "--uri",
            "test:///default",
            "--insecure-no-auth",
            "--insecure-plain",
            "--http-listen",
            &format!("127.0.0.1:{port}"),
            "--grpc-listen",
            &format!("127.0.0.1:{gport}"),
        ])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let base = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::new();
    for _ in 0..200 {
        if c.get(format!("{base}/about")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Agent(child, base, dir)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --release"]
async fn bench_status_xml_throughput() {
    let a = spawn().await;
    let c = reqwest::Client::new();
    assert_eq!(
        c.put(format!("{}/domain/b-status", a.1))
            .body(test_archive("b-status"))
            .send()
            .await
            .expect("put")
            .status()
            .as_u16(),
        201
    );
    let n = Arc::new(AtomicU64::new(0));
    let dur = Duration::from_secs(5);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (c, n, url) = (
            c.clone(),
            Arc::clone(&n),
            format!("{}/domain/b-status/status.xml", a.1),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while t0.elapsed() < dur {
                let s = Instant::now();
                let r = c.get(&url).send().await.expect("get");
                assert_eq!(r.status().as_u16(), 200);
                r.bytes().await.expect("body");
                lat.push(s.elapsed());
                n.fetch_add(1, Ordering::Relaxed);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    let rps = n.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
    eprintln!("GET status.xml: {rps:.0} req/s with 16 connections over {dur:?}; latency p50 {:?} p99 {:?}", pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    let _ = c.delete(format!("{}/domain/b-status", a.1)).send().await;
    assert!(
        rps > 200.0,
        "status.xml throughput collapsed: {rps:.0} req/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --release"]
async fn bench_create_to_running_latency() {
    let a = spawn().await;
    let c = reqwest::Client::new();
    let mut lat = Vec::new();
    for i in 0..100 {
        let name = format!("b-create-{i}");
        let body = test_archive(&name);
        let s = Instant::now();
        let r = c
            .put(format!("{}/domain/{name}", a.1))
            .header("accept", "application/json")
            .body(body)
            .send()
            .await
            .expect("put");
        assert_eq!(r.status().as_u16(), 201);
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v["state"], "running", "PUT returns once the domain runs");
        lat.push(s.elapsed());
    }
    let mean = lat.iter().sum::<Duration>() / lat.len() as u32;
    eprintln!("create-to-running (PUT archive, test:///default, 100 sequential): mean {mean:?} p50 {:?} p99 {:?}", pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    for i in 0..100 {
        let _ = c
            .delete(format!("{}/domain/b-create-{i}", a.1))
            .send()
            .await;
    }
    assert!(mean < Duration::from_millis(500));
}
