//! Real clients that no Napalm code wrote, one per interface, against the real daemons:
//! the library's [`Grid`] with [`Hypervisor::Test`]: `napalm-agent` (libvirt `test:///default`,
//! REST under `/napalm`) and `napalm-coordinator` (embedded store, agents found over mDNS)
//! run as processes in their own network namespaces on a private bridge (an agent host and
//! the server); every client runs in the grid's client namespace, so all traffic, multicast
//! included, crosses that private network and nothing touches a real interface.
//!
//! - REST: `curl` creates a domain from a `tar`-made archive, reads it as XML and JSON,
//!   fetches a file, changes its state, deletes it; wrong or missing tokens get 401.
//! - gRPC: Debian's Python grpcio with stubs that `grpc_tools.protoc` generates from
//!   `proto/napalm/v1` at test time (`integration/clients/grpc_client.py`) uploads a blob,
//!   creates, stops and deletes a domain, lists the coordinator's agents, and decodes the
//!   `google.rpc` details of NOT_FOUND and UNAUTHENTICATED errors.
//! - mDNS: `avahi-browse`, through an `avahi-daemon` on a private D-Bus, resolves the
//!   agent's `_napalm._tcp`/`_napalm-http._tcp` and the coordinator's `_napalm-coord._tcp`.
//! - Ganglia: Debian's `gmetad` polls the agent's gmond XML; its own XML port shows the
//!   agent's cluster, host and domains.
//!
//! Every daemon is killed by PID on drop, every client command runs under `timeout`, and
//! the namespaces are deleted on drop, also when an assertion fails.

mod ganglia;
mod grpc;
mod mdns;
mod rest;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use napalm_integration::error_chain;
use napalm_integration::grid::{Grid, GridOptions, Hypervisor, TOKEN};
use napalm_integration::netns::Host;
use serde_json::Value;

/// Debian's interpreter: python3-grpcio and python3-grpc-tools install for it (a pyenv or
/// venv `python3` earlier on PATH would not see them).
pub(crate) const PYTHON: &str = "/usr/bin/python3";

pub(crate) use crate::repo_root;

/// Runs `program args` inside `host`'s namespace under `timeout` (killed after `secs`).
pub(crate) fn exec(host: &Host, secs: u32, program: &str, args: &[&str]) -> Output {
    host.command("timeout")
        .args(["-k", "5", &secs.to_string(), program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", host.ns))
}

/// Everything `addr` sends before closing, read from inside `from`'s namespace.
pub(crate) fn read_all(from: &Host, addr: SocketAddr) -> Option<String> {
    from.spawn(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .expect("enter namespace")
    .join()
    .ok()
    .flatten()
}

/// The grid these tests need: one agent on libvirt's test driver with its REST API under
/// `/napalm`, the coordinator if asked, and the client host every client runs in.
pub(crate) fn start(with_coordinator: bool) -> Grid {
    let opts = GridOptions {
        agents: 1,
        hypervisor: Hypervisor::Test,
        coordinator: with_coordinator,
        rest_prefix: "/napalm".into(),
        ..Default::default()
    };
    Grid::start(opts, "c-").unwrap_or_else(|e| panic!("starting the grid: {}", error_chain(&e)))
}

/// What these tests ask of the grid, in their words.
pub(crate) trait ClientsGrid {
    /// The agent's address with `port`.
    fn agent_addr(&self, port: u16) -> SocketAddr;
    /// The coordinator's address with `port`.
    fn coord_addr(&self, port: u16) -> SocketAddr;
    /// The agent's REST URL of `path`.
    fn rest(&self, path: &str) -> String;
    /// Fails the test with `why` and the daemons' logs.
    fn fail(&mut self, why: &str) -> !;
    /// Checks a condition, showing the daemons' logs when it does not hold.
    fn check(&mut self, ok: bool, why: impl FnOnce() -> String);
}

impl ClientsGrid for Grid {
    fn agent_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.agent_http(0).ip(), port)
    }

    fn coord_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.coordinator_grpc().ip(), port)
    }

    fn rest(&self, path: &str) -> String {
        format!("{}{path}", self.agent_rest(0))
    }

    fn fail(&mut self, why: &str) -> ! {
        panic!("{why}\n{}", self.logs())
    }

    fn check(&mut self, ok: bool, why: impl FnOnce() -> String) {
        if !ok {
            let why = why();
            self.fail(&why);
        }
    }
}

pub(crate) fn log(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).expect("log file")
}

/// One curl exchange.
pub(crate) struct Reply {
    code: u16,
    headers: String,
    body: String,
}

pub(crate) static CURL_N: AtomicU32 = AtomicU32::new(0);

/// Runs `curl` in the client namespace; `args` come before the URL.
pub(crate) fn curl(g: &Grid, args: &[&str], url: &str) -> Reply {
    let n = CURL_N.fetch_add(1, Ordering::SeqCst);
    let body = g.dir.join(format!("curl-{n}.body"));
    let headers = g.dir.join(format!("curl-{n}.headers"));
    let (b, h) = (body.display().to_string(), headers.display().to_string());
    let mut all = vec![
        "-sS",
        "--max-time",
        "20",
        "-o",
        &b,
        "-D",
        &h,
        "-w",
        "%{http_code}",
    ];
    all.extend_from_slice(args);
    all.push(url);
    let out = exec(&g.client, 30, "curl", &all);
    assert!(
        out.status.success(),
        "curl {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Reply {
        code: String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("curl prints the status code"),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        body: std::fs::read_to_string(&body).unwrap_or_default(),
    }
}

/// The header that carries the grid's token.
pub(crate) fn auth() -> String {
    format!("Authorization: Bearer {TOKEN}")
}

/// The agent's id, as `/about.json` tells it.
pub(crate) fn agent_id(g: &Grid) -> String {
    let r = curl(g, &["-H", &auth()], &g.rest("/about.json"));
    assert_eq!(r.code, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).expect("about.json is JSON");
    let id = v["agent_id"].as_str().expect("agent_id").to_owned();
    assert!(!id.is_empty());
    id
}

/// A `tar.gz` of a `test:///default` domain named `name` (config.xml, vmlinuz, initrd.img),
/// made with GNU tar.
pub(crate) fn domain_archive(dir: &Path, name: &str) -> PathBuf {
    let src = dir.join(format!("{name}-src"));
    std::fs::create_dir_all(&src).expect("mkdir");
    let xml = format!(
        "<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='i686'>hvm</type><kernel>vmlinuz</kernel><initrd>initrd.img</initrd></os></domain>"
    );
    std::fs::write(src.join("config.xml"), xml).expect("config.xml");
    std::fs::write(src.join("vmlinuz"), format!("kernel of {name}\n")).expect("vmlinuz");
    std::fs::write(src.join("initrd.img"), b"initrd\n").expect("initrd");
    let archive = dir.join(format!("{name}.tar.gz"));
    let st = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-czf")
        .arg(&archive)
        .args(["config.xml", "vmlinuz", "initrd.img"])
        .status()
        .expect("tar");
    assert!(st.success(), "tar failed");
    archive
}

/// Creates domain `name` with `curl -T` and checks the 201 answer.
pub(crate) fn create_with_curl(g: &Grid, name: &str) {
    let archive = domain_archive(&g.dir, name);
    let archive = archive.display().to_string();
    let r = curl(
        g,
        &["-H", &auth(), "-T", &archive],
        &g.rest(&format!("/domain/{name}")),
    );
    assert_eq!(r.code, 201, "create: {}", r.body);
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains(&format!("location: /napalm/domain/{name}")),
        "no Location header: {}",
        r.headers
    );
    assert!(
        r.body.contains(&format!("<domain name=\"{name}\"")),
        "{}",
        r.body
    );
    assert!(r.body.contains("<state>running</state>"), "{}", r.body);
}
