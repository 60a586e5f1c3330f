//! The base set's cluster-files watcher, the real script the layer builder renders, run
//! on the host against a real coordinator (with curl, and with busybox ash and wget as in
//! the grid's busybox clones), behind a proxy that logs each request: idle, it only holds
//! index requests; when the deployment grows, the clone's /etc/hosts follows within moments.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster_files::{address, name, registered_grid, scale, DEPLOYMENT};

/// A process group killed when dropped: the watcher and the curl it waits on.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// Waits up to `secs` for `path` to contain `needle`.
async fn until_contains(path: &std::path::Path, needle: &str, secs: u64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let now = std::fs::read_to_string(path).unwrap_or_default();
        if now.contains(needle) || std::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The HTTP client a clone's watcher finds: curl, or busybox's wget (with its ash and
/// `timeout`, and nothing else, as in the grid's busybox clones).
#[derive(Clone, Copy, PartialEq)]
enum Client {
    Curl,
    Busybox,
}

#[tokio::test]
async fn the_clones_watcher_sleeps_in_one_request_and_follows_a_scale_with_curl() {
    watcher_follows_a_scale(Client::Curl).await;
}

#[tokio::test]
async fn the_clones_watcher_sleeps_in_one_request_and_follows_a_scale_with_busybox_wget() {
    watcher_follows_a_scale(Client::Busybox).await;
}

/// Clone 1's real watcher, on a copy of its layer, against the coordinator of a grid of 2
/// registered clones: idle, it only holds index requests; when a third clone comes, its
/// /etc/hosts follows within moments.
async fn watcher_follows_a_scale(client: Client) {
    let grid = registered_grid(2).await;
    // Clone 1's layer as the builder made it, pointed at this coordinator.
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let layer = grid
        .dir
        .path()
        .join("layers")
        .join(DEPLOYMENT)
        .join(name(1))
        .join("root");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&layer)
        .arg(&root)
        .status()
        .expect("cp");
    assert!(cp.success());
    let watcher = root.join("usr/local/sbin/napalm-cluster-files");
    let script = std::fs::read_to_string(&watcher).expect("the base set's watcher");
    let url = "URL=\"http://10.77.0.1:7780/v1/clones/register\"";
    assert!(script.contains(url), "{script}");
    // The watcher talks to the coordinator through a proxy that logs each request.
    let requests: Requests = Arc::default();
    let proxy = logging_proxy(grid.coordinator.http_addr(), Arc::clone(&requests)).await;
    let here = format!("URL=\"http://{proxy}/v1/clones/register\"");
    std::fs::write(&watcher, script.replace(url, &here)).expect("write watcher");
    let (shell, path) = match client {
        Client::Curl => (
            std::path::PathBuf::from("sh"),
            std::env::var("PATH").unwrap_or_default(),
        ),
        Client::Busybox => {
            let busybox = ["/usr/bin/busybox", "/bin/busybox"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .expect("busybox on this machine (scripts/setup installs it)");
            let bin = tmp.path().join("bin");
            std::fs::create_dir(&bin).expect("bin");
            for applet in [
                "sh",
                "wget",
                "sha256sum",
                "cut",
                "head",
                "grep",
                "cmp",
                "mv",
                "rm",
                "cp",
                "cat",
                "mkdir",
                "chmod",
                "sleep",
                "timeout",
                "awk",
            ] {
                std::os::unix::fs::symlink(busybox, bin.join(applet)).expect("applet");
            }
            (bin.join("sh"), bin.display().to_string())
        }
    };
    let stderr = tmp.path().join("stderr");
    let child = std::process::Command::new(&shell)
        .arg(&watcher)
        .env("PATH", path)
        .env("NAPALM_ROOT", &root)
        .env("NAPALM_CLUSTER_FILES_WAIT", "2")
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .process_group(0)
        .spawn()
        .expect("start the watcher");
    let _group = Group(child);
    let hosts = root.join("etc/hosts");
    let line = |i: u32| format!("{}\t{}", address(i), name(i));
    let said = || std::fs::read_to_string(&stderr).unwrap_or_default();
    let log = || requests.lock().expect("log").join("\n");
    let until_logged = |needle: &'static str| {
        let log = &log;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            while !log().contains(needle) && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            log()
        }
    };

    // A first round, then held requests only (one per 2 s wait): no file fetched while
    // nothing changes.
    let seen = until_logged("&index=").await;
    assert!(
        seen.contains("/cluster/hosts ") && seen.contains("&index="),
        "a round, then a held request: {seen}\nwatcher said: {}",
        said()
    );
    requests.lock().expect("log").clear();
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let idle = log();
    let index_requests = idle.lines().filter(|l| l.contains("/cluster?")).count();
    assert!(
        (1..=4).contains(&index_requests)
            && idle
                .lines()
                .all(|l| l.contains("&index=") && l.contains("&wait=2s")),
        "idle for 5 s, only held index requests: {idle}"
    );

    // The deployment grows: the file follows within moments.
    let started = std::time::Instant::now();
    scale(&grid, 3).await;
    let now = until_contains(&hosts, &line(3), 10).await;
    assert!(
        now.contains(&line(3)),
        "after the scale: {now}\nwatcher said: {}",
        said()
    );
    tracing::info!(took = ?started.elapsed(), "the watcher followed the scale");
    assert!(log().contains("/cluster/hosts "), "{}", log());
}

/// Request lines seen by [`logging_proxy`].
type Requests = Arc<std::sync::Mutex<Vec<String>>>;

/// A TCP proxy to `to` on loopback that logs the request line of each connection (the
/// watcher's clients make one request per connection).
async fn logging_proxy(to: SocketAddr, requests: Requests) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let addr = listener.local_addr().expect("proxy address");
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let requests = Arc::clone(&requests);
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n") && head.len() < 8192 {
                    match client.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                if let Ok(mut r) = requests.lock() {
                    r.push(String::from_utf8_lossy(&head).trim_end().to_owned());
                }
                if server.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}
