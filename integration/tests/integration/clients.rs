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

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use napalm_integration::error_chain;
use napalm_integration::grid::{
    Grid, GridOptions, Hypervisor, AGENT_GANGLIA, AGENT_GRPC, AGENT_HTTP, GRPC as COORD_GRPC, TOKEN,
};
use napalm_integration::netns::Host;
use napalm_integration::proc::{wait_for, Daemon};
use serde_json::Value;

/// Debian's interpreter: python3-grpcio and python3-grpc-tools install for it (a pyenv or
/// venv `python3` earlier on PATH would not see them).
const PYTHON: &str = "/usr/bin/python3";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// Runs `program args` inside `host`'s namespace under `timeout` (killed after `secs`).
fn exec(host: &Host, secs: u32, program: &str, args: &[&str]) -> Output {
    host.command("timeout")
        .args(["-k", "5", &secs.to_string(), program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", host.ns))
}

/// Everything `addr` sends before closing, read from inside `from`'s namespace.
fn read_all(from: &Host, addr: SocketAddr) -> Option<String> {
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
fn start(with_coordinator: bool) -> Grid {
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
trait ClientsGrid {
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

fn log(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).expect("log file")
}

/// One curl exchange.
struct Reply {
    code: u16,
    headers: String,
    body: String,
}

static CURL_N: AtomicU32 = AtomicU32::new(0);

/// Runs `curl` in the client namespace; `args` come before the URL.
fn curl(g: &Grid, args: &[&str], url: &str) -> Reply {
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
fn auth() -> String {
    format!("Authorization: Bearer {TOKEN}")
}

/// The agent's id, as `/about.json` tells it.
fn agent_id(g: &Grid) -> String {
    let r = curl(g, &["-H", &auth()], &g.rest("/about.json"));
    assert_eq!(r.code, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).expect("about.json is JSON");
    let id = v["agent_id"].as_str().expect("agent_id").to_owned();
    assert!(!id.is_empty());
    id
}

/// A `tar.gz` of a `test:///default` domain named `name` (config.xml, vmlinuz, initrd.img),
/// made with GNU tar.
fn domain_archive(dir: &Path, name: &str) -> PathBuf {
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
fn create_with_curl(g: &Grid, name: &str) {
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

#[test]
fn curl_drives_the_agent_rest_api() {
    let mut g = start(false);
    let about = g.rest("/about");

    // No token, a wrong token: 401 with the Bearer challenge and an error document.
    let r = curl(&g, &[], &about);
    assert_eq!(r.code, 401, "{}", r.body);
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{}",
        r.headers
    );
    // The error document names the problem. (Its <status> says 400 and its reason
    // INVALID_ARGUMENT although the HTTP status is 401: an agent inconsistency, reported.)
    assert!(
        r.body.contains("<error>") && r.body.contains("missing or wrong bearer token"),
        "{}",
        r.body
    );
    let r = curl(&g, &["-H", "Authorization: Bearer wrong"], &about);
    assert_eq!(r.code, 401);
    let r = curl(&g, &["-H", &auth()], &about);
    assert_eq!(r.code, 200);
    assert!(r.body.contains("<name>napalm-agent</name>"), "{}", r.body);
    assert!(r
        .body
        .contains("<libvirt-uri>test:///default</libvirt-uri>"));

    // Create (table 4.3: one PUT of the archive).
    create_with_curl(&g, "c-rest");

    // Read it back as XML (default) and JSON.
    let r = curl(&g, &["-H", &auth()], &g.rest("/domain/c-rest"));
    assert_eq!(r.code, 200);
    assert!(r.body.contains("<state>running</state>"), "{}", r.body);
    assert!(r.body.contains("<vcpus>1</vcpus>"), "{}", r.body);
    assert!(
        r.body
            .contains("/napalm/domain/c-rest/vmlinuz\">vmlinuz</file>"),
        "{}",
        r.body
    );
    let r = curl(
        &g,
        &["-H", &auth(), "-H", "Accept: application/json"],
        &g.rest("/domain/c-rest"),
    );
    assert_eq!(r.code, 200);
    assert!(r.headers.contains("application/json"), "{}", r.headers);
    let v: Value = serde_json::from_str(&r.body).expect("domain JSON");
    assert_eq!(v["name"], "c-rest");
    assert_eq!(v["state"], "running");
    assert_eq!(v["owned"], true);
    assert_eq!(v["vcpus"], 1);
    assert_eq!(v["memory_bytes"], 64 * 1024 * 1024);
    let files: Vec<&str> = v["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        files.contains(&"vmlinuz") && files.contains(&"initrd.img"),
        "{files:?}"
    );

    // A file referenced by config.xml comes back byte for byte.
    let r = curl(&g, &["-H", &auth()], &g.rest("/domain/c-rest/vmlinuz"));
    assert_eq!((r.code, r.body.as_str()), (200, "kernel of c-rest\n"));

    // Change state: one PUT of status.xml; a nonsense state is a 400 naming it.
    let status = g.rest("/domain/c-rest/status.xml");
    let r = curl(
        &g,
        &[
            "-H",
            &auth(),
            "-X",
            "PUT",
            "--data-binary",
            "<status><state>flying</state></status>",
        ],
        &status,
    );
    assert_eq!(r.code, 400, "{}", r.body);
    assert!(r.body.contains("flying"), "{}", r.body);
    let r = curl(
        &g,
        &[
            "-H",
            &auth(),
            "-X",
            "PUT",
            "--data-binary",
            "<status><state>shutoff</state></status>",
        ],
        &status,
    );
    assert_eq!(r.code, 200, "{}", r.body);
    assert!(
        r.body.contains("<status><state>shutoff</state></status>"),
        "{}",
        r.body
    );
    let r = curl(&g, &["-H", &auth()], &g.rest("/domain/c-rest/status.json"));
    assert_eq!(r.code, 200);
    let v: Value = serde_json::from_str(&r.body).expect("status JSON");
    assert_eq!(v["state"], "shutoff");

    // The listing has it, with the shutoff state.
    let r = curl(&g, &["-H", &auth()], &g.rest("/domains.xml"));
    assert_eq!(r.code, 200);
    assert!(
        r.body
            .contains("<domain name=\"c-rest\" href=\"/napalm/domain/c-rest\">"),
        "{}",
        r.body
    );

    // Delete: 204, then 404 for the domain and for a second delete.
    let r = curl(
        &g,
        &["-H", &auth(), "-X", "DELETE"],
        &g.rest("/domain/c-rest"),
    );
    assert_eq!(r.code, 204, "{}", r.body);
    let r = curl(&g, &["-H", &auth()], &g.rest("/domain/c-rest"));
    assert_eq!(r.code, 404, "{}", r.body);
    let r = curl(
        &g,
        &["-H", &auth(), "-X", "DELETE"],
        &g.rest("/domain/c-rest"),
    );
    assert_eq!(r.code, 404, "{}", r.body);
    let r = curl(
        &g,
        &["-H", &auth(), "-H", "Accept: application/json"],
        &g.rest("/domains.json"),
    );
    assert_eq!(r.code, 200);
    assert!(!r.body.contains("c-rest"), "{}", r.body);
    let alive = g.agent_running(0);
    g.check(alive, || "the agent exited".into());
}

/// Generates Python stubs from `proto/napalm/v1` (and the google.rpc subset beside the
/// client) into `out`, with Debian's `grpc_tools.protoc`.
fn generate_stubs(out: &Path) {
    std::fs::create_dir_all(out).expect("mkdir");
    let root = repo_root();
    let proto = root.join("proto");
    let clients = root.join("integration/clients");
    let mut protos: Vec<PathBuf> = Vec::new();
    for dir in [proto.join("napalm/v1"), clients.join("google/rpc")] {
        for e in std::fs::read_dir(&dir).expect("proto dir") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "proto") {
                protos.push(p);
            }
        }
    }
    assert!(protos.len() >= 5, "protos missing: {protos:?}");
    let out_s = out.display().to_string();
    let status = Command::new(PYTHON)
        .args(["-c", "import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), '_proto'))"])
        .output()
        .expect("python3 runs");
    assert!(
        status.status.success(),
        "Debian's python3-grpc-tools is missing (scripts/setup installs it): {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let wkt = String::from_utf8_lossy(&status.stdout).trim().to_owned();
    let gen = Command::new(PYTHON)
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", proto.display()))
        .arg(format!("-I{}", clients.display()))
        .arg(format!("-I{wkt}"))
        .arg(format!("--python_out={out_s}"))
        .arg(format!("--grpc_python_out={out_s}"))
        .args(&protos)
        .output()
        .expect("grpc_tools.protoc runs");
    assert!(
        gen.status.success(),
        "grpc_tools.protoc failed: {}",
        String::from_utf8_lossy(&gen.stderr)
    );
    assert!(out.join("napalm/v1/agent_pb2_grpc.py").exists());
    assert!(out.join("napalm/v1/coordinator_pb2_grpc.py").exists());
}

/// Waits until the coordinator lists the agent, found by mDNS (or by the agent's own
/// registration with the coordinator it found by mDNS).
fn wait_until_listed(g: &mut Grid, stubs: &Path, script: &Path) -> Value {
    let t0 = Instant::now();
    loop {
        let v = run_client(
            g,
            stubs,
            script,
            &format!("c-grpc-{}", t0.elapsed().as_millis()),
        );
        if v["coordinator_agents"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            return v;
        }
        if t0.elapsed() > Duration::from_secs(45) {
            g.fail(&format!("the coordinator never listed the agent: {v}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn run_client(g: &mut Grid, stubs: &Path, script: &Path, domain: &str) -> Value {
    let agent = g.agent_addr(AGENT_GRPC).to_string();
    let coord = g.coord_addr(COORD_GRPC).to_string();
    let out = exec(
        &g.client,
        90,
        PYTHON,
        &[
            &script.display().to_string(),
            &stubs.display().to_string(),
            &agent,
            &coord,
            TOKEN,
            domain,
        ],
    );
    if !out.status.success() {
        g.fail(&format!(
            "grpc_client.py failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).expect("grpc_client.py prints JSON")
}

#[test]
fn python_grpcio_stubs_from_proto_talk_to_agent_and_coordinator() {
    let mut g = start(true);
    let stubs = g.dir.join("stubs");
    generate_stubs(&stubs);
    let script = repo_root().join("integration/clients/grpc_client.py");
    let id = agent_id(&g);

    let v = wait_until_listed(&mut g, &stubs, &script);

    // Agent: capabilities.
    let caps = &v["capabilities"];
    assert_eq!(caps["agent_id"], id.as_str(), "{v}");
    assert_eq!(caps["libvirt_uri"], "test:///default");
    assert_eq!(caps["hypervisors"], serde_json::json!(["HYPERVISOR_TEST"]));
    assert!(caps["cpus"].as_u64().is_some_and(|c| c > 0), "{caps}");
    assert_eq!(caps["raw_xml_has_capabilities"], true);
    let version = caps["agent_version"].as_str().expect("version");
    assert!(!version.is_empty());

    // Client-streamed upload, then a domain built from the blob, stopped and deleted.
    let blob = &v["blob"];
    let sha = blob["uploaded"].as_str().expect("sha256");
    assert_eq!(sha.len(), 64);
    assert_eq!(blob["missing_before"], serde_json::json!([sha]), "{blob}");
    assert_eq!(blob["present_after"], serde_json::json!([sha]), "{blob}");
    assert_eq!(blob["already_present"], false);
    assert_eq!(blob["second_upload_already_present"], true, "{blob}");
    let created = &v["created"];
    let name = created["name"].as_str().expect("name").to_owned();
    assert!(name.starts_with("c-grpc-"));
    assert_eq!(created["state"], "DOMAIN_STATE_RUNNING", "{created}");
    assert_eq!(created["owned"], true);
    assert_eq!(created["vcpus"], 2);
    assert_eq!(created["memory_bytes"], 64 * 1024 * 1024);
    assert_eq!(created["labels"]["client"], "python-grpcio");
    assert_eq!(created["artifacts"], serde_json::json!(["vmlinuz"]));
    assert!(
        v["listed"]
            .as_array()
            .expect("listed")
            .iter()
            .any(|n| n == name.as_str()),
        "{v}"
    );
    assert_eq!(v["stopped"]["state"], "DOMAIN_STATE_SHUTOFF");
    assert_eq!(v["stopped"]["uuid"], created["uuid"]);
    assert_eq!(
        v["deleted"],
        serde_json::json!({"name": name, "existed": true})
    );

    // Errors cross with their google.rpc details.
    let missing = &v["missing_domain"];
    assert_eq!(missing["code"], "NOT_FOUND", "{missing}");
    assert_eq!(missing["status_code"], 5);
    let details = missing["details"].as_array().expect("details");
    assert!(
        details.iter().any(|d| d["type"] == "google.rpc.ErrorInfo"
            && d["reason"] == "ERROR_REASON_NOT_FOUND"
            && d["domain"] == "napalm.v1"),
        "{missing}"
    );
    assert!(
        details
            .iter()
            .any(|d| d["type"] == "google.rpc.ResourceInfo"
                && d["resource_type"] == "domain"
                && d["resource_name"] == name.as_str()),
        "{missing}"
    );
    for case in ["bad_token", "no_token"] {
        let e = &v[case];
        assert_eq!(e["code"], "UNAUTHENTICATED", "{case}: {e}");
        assert!(
            e["details"]
                .as_array()
                .expect("details")
                .iter()
                .any(|d| d["reason"] == "ERROR_REASON_UNAUTHENTICATED"),
            "{case}: {e}"
        );
    }

    // Coordinator: the agent it found on the private network.
    let agents = v["coordinator_agents"].as_array().expect("agents");
    assert_eq!(agents.len(), 1, "{v}");
    let a = &agents[0];
    assert_eq!(a["id"], id.as_str(), "{a}");
    assert_eq!(
        a["grpc_endpoint"],
        format!("http://{}", g.agent_addr(AGENT_GRPC)).as_str(),
        "{a}"
    );
    assert_eq!(
        a["rest_endpoint"],
        format!("http://{}/napalm", g.agent_addr(AGENT_HTTP)).as_str(),
        "{a}"
    );
    assert!(
        a["source"] == "AGENT_SOURCE_MDNS" || a["source"] == "AGENT_SOURCE_REGISTRATION",
        "{a}"
    );
    assert_eq!(a["state"], "AGENT_STATE_READY", "{a}");
    assert_eq!(a["version"], version);
    assert_eq!(a["hypervisors"], serde_json::json!(["HYPERVISOR_TEST"]));
    let e = &v["missing_agent"];
    assert_eq!(e["code"], "NOT_FOUND", "{e}");
    assert!(
        e["details"]
            .as_array()
            .expect("details")
            .iter()
            .any(|d| d["reason"] == "ERROR_REASON_NOT_FOUND"),
        "{e}"
    );
}

/// A private D-Bus and an avahi-daemon in `host`'s namespace, limited to its interface.
/// avahi-daemon gets a private mount namespace with its own /run, so its pid file and
/// socket never meet another avahi-daemon on this machine.
struct Avahi {
    _daemon: Daemon,
    _dbus: Daemon,
    bus: String,
}

impl Avahi {
    fn start(host: &Host, dir: &Path) -> Self {
        let sock = dir.join("dbus.sock");
        let bus = format!("unix:path={}", sock.display());
        let conf = format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
             \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
             <busconfig><type>system</type><listen>{bus}</listen><auth>EXTERNAL</auth>\
             <policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/>\
             <allow send_destination=\"*\"/><allow receive_sender=\"*\"/></policy></busconfig>\n"
        );
        std::fs::write(dir.join("bus.conf"), conf).expect("bus.conf");
        let avahi = format!(
            "[server]\nuse-ipv4=yes\nuse-ipv6=no\nallow-interfaces={}\nenable-dbus=yes\n\
             [publish]\npublish-addresses=no\npublish-hinfo=no\npublish-workstation=no\npublish-domain=no\n",
            host.iface
        );
        std::fs::write(dir.join("avahi.conf"), avahi).expect("avahi.conf");
        let dbus = host
            .command("dbus-daemon")
            .arg("--nofork")
            .arg(format!("--config-file={}", dir.join("bus.conf").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log(dir, "dbus.log"))
            .spawn()
            .expect("dbus-daemon");
        let dbus = Daemon(dbus);
        assert!(
            wait_for(Duration::from_secs(10), || sock.exists().then_some(())).is_some(),
            "private dbus-daemon did not create its socket"
        );
        let script = format!(
            "mount -t tmpfs napalm-avahi-run /run && mkdir /run/avahi-daemon && \
             exec avahi-daemon --no-drop-root --no-chroot --no-rlimits -f {}",
            dir.join("avahi.conf").display()
        );
        let daemon = host
            .command("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log(dir, "avahi.log"))
            .spawn()
            .expect("avahi-daemon");
        Self {
            _daemon: Daemon(daemon),
            _dbus: dbus,
            bus,
        }
    }

    /// `avahi-browse -rpt TYPE` until a resolved (`=`) line matches `want`, for up to `secs`.
    fn resolve(&self, host: &Host, ty: &str, want: &str, secs: u64) -> Option<String> {
        let t0 = Instant::now();
        let mut last = String::new();
        while t0.elapsed() < Duration::from_secs(secs) {
            let out = host
                .command("timeout")
                .args(["-k", "2", "8", "avahi-browse", "-rpt", ty])
                .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
                .stdin(Stdio::null())
                .output()
                .expect("avahi-browse");
            last = String::from_utf8_lossy(&out.stdout).into_owned();
            if let Some(l) = last
                .lines()
                .find(|l| l.starts_with("=;") && l.contains(want))
            {
                return Some(l.to_owned());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        eprintln!("avahi-browse {ty} last saw:\n{last}");
        None
    }
}

#[test]
fn avahi_browse_sees_the_agent_and_the_coordinator() {
    let mut g = start(true);
    let id = agent_id(&g);
    let avahi_dir = g.dir.join("avahi");
    std::fs::create_dir_all(&avahi_dir).expect("mkdir");
    let avahi = Avahi::start(&g.client, &avahi_dir);

    // `=;IFACE;IPv4;NAME;TYPE;DOMAIN;HOST;ADDRESS;PORT;"k=v" "k=v"...`
    let grpc = format!(";{};{AGENT_GRPC};", g.agent_hosts[0].addr);
    let line = avahi.resolve(&g.client, "_napalm._tcp", &grpc, 40);
    let Some(line) = line else {
        let avahi_log = std::fs::read_to_string(avahi_dir.join("avahi.log")).unwrap_or_default();
        g.fail(&format!(
            "avahi-browse never resolved the agent's _napalm._tcp\n{avahi_log}"
        ));
    };
    assert!(
        line.starts_with(&format!("=;{};IPv4;", g.client.iface)),
        "{line}"
    );
    for kv in [
        format!("\"id={id}\""),
        format!("\"grpc_port={AGENT_GRPC}\""),
        format!("\"http_port={AGENT_HTTP}\""),
        "\"hypervisors=test\"".to_owned(),
        "\"fingerprint=none\"".to_owned(),
    ] {
        assert!(line.contains(&kv), "TXT lacks {kv}: {line}");
    }
    for k in ["\"version=", "\"arch=", "\"cpus=", "\"memory="] {
        assert!(line.contains(k), "TXT lacks {k}: {line}");
    }

    let http = format!(";{};{AGENT_HTTP};", g.agent_hosts[0].addr);
    let line = avahi.resolve(&g.client, "_napalm-http._tcp", &http, 20);
    g.check(line.is_some(), || {
        "avahi-browse never resolved _napalm-http._tcp".into()
    });

    let coord = format!(";{};{COORD_GRPC};", g.server.addr);
    let line = avahi.resolve(&g.client, "_napalm-coord._tcp", &coord, 20);
    g.check(line.is_some(), || {
        "avahi-browse never resolved the coordinator's _napalm-coord._tcp".into()
    });

    // What avahi resolved is the real endpoint: curl it from the same host.
    let r = curl(
        &g,
        &["-H", &auth()],
        &format!("http://{}:{AGENT_HTTP}/napalm/about", g.agent_hosts[0].addr),
    );
    assert_eq!(r.code, 200);
    assert!(
        r.body.contains(&format!("<agent-id>{id}</agent-id>")),
        "{}",
        r.body
    );

    // Goodbye: when the agent stops, avahi drops its services.
    g.stop_agent(0, Duration::from_secs(10));
    let gone = wait_for(Duration::from_secs(20), || {
        let out = g
            .client
            .command("timeout")
            .args(["-k", "2", "8", "avahi-browse", "-rpt", "_napalm._tcp"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &avahi.bus)
            .stdin(Stdio::null())
            .output()
            .expect("avahi-browse");
        (!String::from_utf8_lossy(&out.stdout).contains(&grpc)).then_some(())
    });
    g.check(gone.is_some(), || {
        "avahi still lists the agent 20 s after it stopped".into()
    });
}

#[test]
fn gmetad_polls_the_agent_ganglia_xml() {
    let mut g = start(false);
    create_with_curl(&g, "c-gmond");

    let dir = g.dir.join("gmetad");
    std::fs::create_dir_all(dir.join("rrds")).expect("mkdir");
    let conf = format!(
        "data_source \"napalm\" 1 {}\ngridname \"napalm-clients\"\nsetuid off\n\
         rrd_rootdir \"{}\"\nxml_port 8651\ninteractive_port 8652\n",
        g.agent_addr(AGENT_GANGLIA),
        dir.join("rrds").display()
    );
    std::fs::write(dir.join("gmetad.conf"), conf).expect("gmetad.conf");
    let gmetad = g
        .client
        .command("gmetad")
        .args(["-d", "1", "-c"])
        .arg(dir.join("gmetad.conf"))
        .arg("-p")
        .arg(dir.join("gmetad.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log(&dir, "gmetad.log"))
        .spawn()
        .expect("gmetad (Debian package gmetad)");
    let mut gmetad = Daemon(gmetad);

    let xml_port: SocketAddr = "127.0.0.1:8651".parse().expect("addr");
    let client = g.client.clone();
    let seen = wait_for(Duration::from_secs(40), || {
        read_all(&client, xml_port).filter(|x| x.contains("<HOST NAME=\"c-gmond\""))
    });
    let Some(xml) = seen else {
        let log = std::fs::read_to_string(dir.join("gmetad.log")).unwrap_or_default();
        let state = gmetad.0.try_wait();
        g.fail(&format!(
            "gmetad never showed the agent's domain ({state:?}):\n{log}"
        ));
    };
    assert!(xml.contains("<GRID NAME=\"napalm-clients\""), "{xml}");
    assert!(xml.contains("<CLUSTER NAME=\"napalm\""), "{xml}");
    // The agent's own host carries the standard gmond metrics; the domain its own.
    assert!(xml.contains("TAGS=\"napalm-agent\""), "{xml}");
    assert!(xml.contains("TAGS=\"napalm-domain\""), "{xml}");
    let domain = &xml[xml.find("<HOST NAME=\"c-gmond\"").expect("domain host")..];
    let domain = &domain[..domain.find("</HOST>").expect("host ends")];
    assert!(
        domain.contains("<METRIC NAME=\"cpu_num\" VAL=\"1\""),
        "{domain}"
    );
    // gmetad's interactive port answers a query for just that host.
    let client = g.client.clone();
    let q = client
        .spawn(|| {
            use std::io::Write;
            let mut s = TcpStream::connect_timeout(
                &"127.0.0.1:8652".parse().expect("addr"),
                Duration::from_secs(2),
            )
            .ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            s.write_all(b"/napalm/c-gmond\n").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        })
        .expect("enter namespace")
        .join()
        .ok()
        .flatten()
        .unwrap_or_default();
    assert!(
        q.contains("<HOST NAME=\"c-gmond\""),
        "interactive query: {q}"
    );
    assert!(
        !q.contains("TAGS=\"napalm-agent\""),
        "query not filtered: {q}"
    );
    gmetad.kill();
}
