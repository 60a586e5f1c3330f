//! A real single-member etcd on loopback, started per test in its own temp dir and killed
//! (by PID, on drop) even when the test fails.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    child: Child,
    pub client_url: String,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free loopback port")
}

impl Etcd {
    /// Starts etcd on fresh loopback ports; tries again on other ports when it exits at
    /// once (a port picked free was taken meanwhile, by a parallel test or anyone else).
    pub fn start() -> Self {
        let mut last_log = String::new();
        for _ in 0..4 {
            match Self::try_start() {
                Ok(e) => return e,
                Err(log) => last_log = log,
            }
        }
        panic!("etcd did not start on loopback after 4 attempts; last log:\n{last_log}");
    }

    fn try_start() -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log_path = dir.path().join("etcd.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new("etcd")
            .args(["--name", "n1", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("n1={peer_url}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts (scripts/setup installs etcd-server)");
        let mut etcd = Self {
            child,
            endpoint: format!("127.0.0.1:{client}"),
            client_url,
            _dir: dir,
        };
        let addr: SocketAddr = etcd.endpoint.parse().expect("socket addr");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Ok(Some(status)) = etcd.child.try_wait() {
                return Err(format!("etcd exited ({status}):\n{}", log()));
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not listen on {addr} within 20 s; log:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(etcd)
    }

    /// `etcd://127.0.0.1:PORT`, as `--store` takes it.
    pub fn store_url(&self) -> String {
        format!("etcd://{}", self.endpoint)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
