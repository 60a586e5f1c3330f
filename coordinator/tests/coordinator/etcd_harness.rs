//! A real single-member etcd on loopback, started per test in its own temp dir and killed
//! (by PID, on drop) even when the test fails.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    child: Child,
    pub client_url: String,
    pub endpoint: String,
    /// With [`Etcd::start_tls`]: the CA and a client certificate etcd accepts.
    pub tls: Option<napalm_coordinator::store::etcd::EtcdTls>,
    _dir: tempfile::TempDir,
}

/// PEM files of a TLS set-up for etcd, written under a directory: a CA, etcd's server
/// certificate for 127.0.0.1, and a client certificate, all signed by the CA; plus a
/// client certificate from another CA, which etcd must refuse.
pub struct EtcdPki {
    pub ca: std::path::PathBuf,
    pub server: (std::path::PathBuf, std::path::PathBuf),
    pub client: (std::path::PathBuf, std::path::PathBuf),
    pub foreign_client: (std::path::PathBuf, std::path::PathBuf),
}

impl EtcdPki {
    pub fn write(dir: &std::path::Path) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose, SanType,
        };
        let ca_of = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            p.distinguished_name
                .push(rcgen::DnType::CommonName, name.to_owned());
            let key = KeyPair::generate().expect("key");
            let cert = p.self_signed(&key).expect("ca");
            (cert, key)
        };
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write pem");
            path
        };
        let leaf = |ca: &(rcgen::Certificate, KeyPair), usage, name: &str| {
            let mut p = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
            p.subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
            p.extended_key_usages = vec![usage];
            p.distinguished_name
                .push(rcgen::DnType::CommonName, name.to_owned());
            let key = KeyPair::generate().expect("key");
            let cert = p.signed_by(&key, &ca.0, &ca.1).expect("leaf");
            (
                write(&format!("{name}.crt"), cert.pem()),
                write(&format!("{name}.key"), key.serialize_pem()),
            )
        };
        let ca = ca_of("etcd test CA");
        let foreign = ca_of("another CA");
        Self {
            ca: write("ca.crt", ca.0.pem()),
            server: leaf(&ca, ExtendedKeyUsagePurpose::ServerAuth, "server"),
            client: leaf(&ca, ExtendedKeyUsagePurpose::ClientAuth, "coordinator"),
            foreign_client: leaf(&foreign, ExtendedKeyUsagePurpose::ClientAuth, "stranger"),
        }
    }
}

/// A loopback port free now, for a daemon started later (and restarted on it). Picked
/// below the kernel's ephemeral range (`ip_local_port_range`), which the kernel hands to
/// every `bind(:0)` and outgoing connection of the parallel tests: a port taken from that
/// range could be given to one of them before the daemon binds it ("Address already in
/// use", seen once in the coordinator's `crash::` tests). Below it only an explicit bind
/// to the same number collides, and each call moves on to the next number.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    const FIRST: u32 = 10_000;
    let span = ephemeral_low.saturating_sub(FIRST).max(1);
    // Test processes that run at once start at different places.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + (start + n) % span;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
            drop(l);
            return port as u16;
        }
    }
    panic!("no free loopback port between {FIRST} and {ephemeral_low}")
}

impl Etcd {
    /// Starts etcd on fresh loopback ports; tries again on other ports when it exits at
    /// once (a port picked free was taken meanwhile, by a parallel test or anyone else).
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// [`Etcd::start`], serving clients over TLS only and requiring a client certificate
    /// signed by its CA (`--client-cert-auth`); [`Etcd::tls`] holds what a coordinator
    /// needs, [`Etcd::pki`] every file.
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let mut last_log = String::new();
        for _ in 0..4 {
            match Self::try_start(tls) {
                Ok(e) => return e,
                Err(log) => last_log = log,
            }
        }
        panic!("etcd did not start on loopback after 4 attempts; last log:\n{last_log}");
    }

    fn try_start(tls: bool) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (client, peer) = (free_port(), free_port());
        let scheme = if tls { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log_path = dir.path().join("etcd.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "n1", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("n1={peer_url}")]);
        let tls = tls.then(|| {
            let pki = EtcdPki::write(dir.path());
            cmd.arg("--cert-file")
                .arg(&pki.server.0)
                .arg("--key-file")
                .arg(&pki.server.1)
                .arg("--trusted-ca-file")
                .arg(&pki.ca)
                .arg("--client-cert-auth");
            napalm_coordinator::store::etcd::EtcdTls {
                ca: pki.ca,
                identity: Some(pki.client),
            }
        });
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts (scripts/setup installs etcd-server)");
        let mut etcd = Self {
            child,
            endpoint: format!("127.0.0.1:{client}"),
            client_url,
            tls,
            _dir: dir,
        };
        let addr: SocketAddr = etcd.endpoint.parse().expect("socket addr");
        let deadline = Instant::now() + Duration::from_secs(20);
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        // Ours serves, not merely something on the port: `free_port` lets the port go
        // before etcd binds it, and another test's etcd may take it meanwhile (then ours
        // exits with "address already in use" and a TLS client meets a plain server).
        // etcd 3.4: "serving [insecure ]client requests on 127.0.0.1:PORT".
        let serving_line = format!("client requests on {addr}");
        let serving = || log().contains(&serving_line);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() || !serving() {
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

    /// The napalm-coordinator flags that reach this etcd: `--store`, and with TLS
    /// `--etcd-ca`, `--etcd-cert`, `--etcd-key`.
    pub fn coordinator_args(&self) -> Vec<String> {
        let mut a = vec!["--store".to_owned(), self.store_url()];
        if let Some(t) = &self.tls {
            a.push("--etcd-ca".into());
            a.push(t.ca.display().to_string());
            if let Some((cert, key)) = &t.identity {
                a.push("--etcd-cert".into());
                a.push(cert.display().to_string());
                a.push("--etcd-key".into());
                a.push(key.display().to_string());
            }
        }
        a
    }

    /// Every PEM file of a TLS etcd (the files [`EtcdPki::write`] made in its directory).
    pub fn pki(&self) -> Option<EtcdPki> {
        self.tls.as_ref().map(|_| {
            let d = self._dir.path();
            let pair = |n: &str| (d.join(format!("{n}.crt")), d.join(format!("{n}.key")));
            EtcdPki {
                ca: d.join("ca.crt"),
                server: pair("server"),
                client: pair("coordinator"),
                foreign_client: pair("stranger"),
            }
        })
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
