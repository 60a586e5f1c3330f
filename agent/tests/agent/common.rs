//! Shared helpers: an in-process agent on `test:///default`, archives (honest and hostile).

use std::sync::Arc;

use napalm_agent::hypervisor::libvirt::Libvirt;
use napalm_agent::hypervisor::Hypervisor;
use napalm_agent::server::{self, Running, ServeConfig};

pub const TOKEN: &str = "test-token-0123456789";

/// `ip ARGS` (iproute2), which must succeed: the network namespaces tests build.
pub fn ip(args: &[&str]) {
    let st = std::process::Command::new("ip")
        .args(args)
        .status()
        .expect("ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// `test:///default` keeps its state only while a connection is open: tests hold one.
pub fn test_driver() -> Arc<dyn Hypervisor> {
    use std::sync::OnceLock;
    static HV: OnceLock<Arc<dyn Hypervisor>> = OnceLock::new();
    Arc::clone(
        HV.get_or_init(|| {
            Arc::new(Libvirt::open("test:///default").expect("open test:///default"))
        }),
    )
}

pub struct TestAgent {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub client: reqwest::Client,
    pub token: Option<String>,
    /// Whose domains to undefine on drop (cleared when the state is handed on).
    pub agent_id: Option<String>,
}

/// [`ServeConfig::loopback`] with the given REST/gRPC token.
pub fn config(state: &std::path::Path, token: Option<&str>) -> ServeConfig {
    let mut cfg = ServeConfig::loopback(state);
    cfg.rest.token = token.map(str::to_owned);
    cfg
}

impl TestAgent {
    pub async fn start(token: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, token).await
    }

    pub async fn start_in(dir: tempfile::TempDir, token: Option<&str>) -> Self {
        let cfg = config(&dir.path().join("state"), token);
        let running = server::start_with(cfg, test_driver())
            .await
            .expect("agent starts");
        let base = format!("http://{}/napalm", running.http_addr);
        let agent_id = Some(running.agent.id().to_owned());
        Self {
            running: Some(running),
            dir,
            base,
            client: reqwest::Client::new(),
            token: token.map(str::to_owned),
            agent_id,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(m, self.url(path));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.req(reqwest::Method::GET, path)
            .send()
            .await
            .expect("GET")
    }

    pub async fn put(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.req(reqwest::Method::PUT, path)
            .body(body)
            .send()
            .await
            .expect("PUT")
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.req(reqwest::Method::DELETE, path)
            .send()
            .await
            .expect("DELETE")
    }

    /// Stops serving; the state directory is kept.
    pub async fn stop(&mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        self.agent_id = None;
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        // Undefine this agent's domains from the shared test driver.
        if let Some(id) = &self.agent_id {
            let hv = test_driver();
            for d in hv.list().unwrap_or_default() {
                let xml = hv.find(&d.name).ok().flatten().map(|(_, x)| x);
                if xml
                    .and_then(|x| napalm_agent::policy::owner_of(&x))
                    .as_deref()
                    == Some(id.as_str())
                {
                    let _ = hv.undefine(&d.name);
                }
            }
        }
    }
}

/// A `test` domain XML referencing a kernel and initrd.
pub fn test_xml(name: &str) -> String {
    format!(
        "<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='i686'>hvm</type><kernel>vmlinuz</kernel><initrd>initrd.img</initrd></os>\
         <devices><serial type='file'><source path='console.log'/><target port='0'/></serial></devices></domain>"
    )
}

/// A gzip-compressed tar of regular files.
pub fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).expect("append");
    }
    b.into_inner().expect("tar").finish().expect("gzip")
}

/// An archive for a test domain.
pub fn test_archive(name: &str) -> Vec<u8> {
    let xml = test_xml(name);
    tar_gz(&[
        ("config.xml", xml.as_bytes()),
        ("vmlinuz", b"kernel"),
        ("initrd.img", b"initrd"),
    ])
}

/// One raw tar entry with any name, type and link target (for hostile archives).
pub struct Raw<'a> {
    pub name: &'a [u8],
    pub kind: tar::EntryType,
    pub link: &'a [u8],
    pub data: &'a [u8],
}

/// A plain tar of raw entries, the names written byte for byte (no sanitising).
pub fn raw_tar(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        {
            let g = h.as_gnu_mut().expect("gnu");
            g.name[..e.name.len()].copy_from_slice(e.name);
            g.linkname[..e.link.len()].copy_from_slice(e.link);
        }
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, e.data).expect("append");
    }
    b.into_inner().expect("tar")
}

/// Whether the shared test driver has a domain.
pub fn libvirt_has(name: &str) -> bool {
    test_driver().state(name).ok().flatten().is_some()
}

/// A loopback port free now (another process may take it before it is bound).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
