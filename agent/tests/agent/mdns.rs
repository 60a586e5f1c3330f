//! mDNS/DNS-SD, only inside two network namespaces this test creates (joined by a veth
//! pair, no other interface, no route out): the agent runs in the first and advertises on
//! its veth only; a mdns-sd browser and Avahi's `avahi-browse` (avahi-daemon on a private
//! D-Bus, both in the second namespace) see both service types with their TXT; the REST
//! endpoint is reachable there, and the goodbye arrives when the agent stops.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mdns_sd::{ServiceDaemon, ServiceEvent};

use crate::common::ip;

/// Two namespaces and a veth pair; deleted on drop.
struct Netns {
    a: String,
    b: String,
}

impl Netns {
    fn new() -> Self {
        let id = std::process::id() % 100_000;
        let n = Self {
            a: format!("napalm-t{id}a"),
            b: format!("napalm-t{id}b"),
        };
        let (va, vb) = (format!("nv{id}a"), format!("nv{id}b"));
        ip(&["netns", "add", &n.a]);
        ip(&["netns", "add", &n.b]);
        ip(&[
            "-n", &n.a, "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns", &n.b,
        ]);
        for (ns, dev, addr) in [(&n.a, &va, "10.213.7.1/24"), (&n.b, &vb, "10.213.7.2/24")] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        n
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
    }
}

/// Port, TXT and addresses of a resolved service.
type Seen = (u16, HashMap<String, String>, Vec<String>);

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private D-Bus and an avahi-daemon inside namespace `ns`, limited to interface `dev`.
struct Avahi {
    _dbus: Proc,
    _daemon: Proc,
    bus: String,
}

impl Avahi {
    fn start(ns: &str, dev: &str, dir: &std::path::Path) -> Self {
        let bus = format!("unix:path={}", dir.join("bus").display());
        let conf = format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
             <busconfig><type>system</type><listen>{bus}</listen><auth>EXTERNAL</auth>\
             <policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/><allow send_destination=\"*\"/><allow receive_sender=\"*\"/></policy></busconfig>\n"
        );
        std::fs::write(dir.join("bus.conf"), conf).expect("bus.conf");
        let avahi = format!("[server]\nuse-ipv4=yes\nuse-ipv6=no\nallow-interfaces={dev}\nenable-dbus=yes\n[publish]\npublish-addresses=no\npublish-hinfo=no\npublish-workstation=no\npublish-domain=no\n");
        std::fs::write(dir.join("avahi.conf"), avahi).expect("avahi.conf");
        let dbus = Command::new("ip")
            .args(["netns", "exec", ns, "dbus-daemon", "--nofork"])
            .arg(format!("--config-file={}", dir.join("bus.conf").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon");
        let dbus = Proc(dbus);
        let t0 = Instant::now();
        while !dir.join("bus").exists() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let daemon = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "avahi-daemon",
                "--no-drop-root",
                "--no-chroot",
                "--no-rlimits",
                "-f",
            ])
            .arg(dir.join("avahi.conf"))
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("avahi-daemon");
        Self {
            _dbus: dbus,
            _daemon: Proc(daemon),
            bus,
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns` (threads it spawns,
/// such as mdns-sd's daemon, inherit it).
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let fd = std::fs::File::open(&path).expect("netns handle");
        // SAFETY: setns on this thread only, with a valid namespace fd we own.
        let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns({path}) failed");
        f()
    })
}

#[test]
fn advertised_in_namespace_seen_from_another() {
    let ns = Netns::new();
    let id = std::process::id() % 100_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = Command::new("ip")
        .args(["netns", "exec", &ns.a, env!("CARGO_BIN_EXE_napalm-agent")])
        .args([
            "--uri",
            "test:///default",
            "--insecure-no-auth",
            "--insecure-plain",
            "--http-listen",
            "10.213.7.1:8480",
            "--grpc-listen",
            "10.213.7.1:8481",
        ])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--mdns-interface", &format!("nv{id}a")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("agent.log")).expect("log"))
        .spawn()
        .expect("spawn agent in namespace");
    let mut agent = Proc(agent);
    let pid = agent.0.id();

    let avahi = Avahi::start(&ns.b, &format!("nv{id}b"), dir.path());
    let bus = avahi.bus.clone();
    let browser = in_netns(&ns.b, move || {
        let d = ServiceDaemon::new().expect("mdns daemon");
        let http = d.browse("_napalm-http._tcp.local.").expect("browse");
        let grpc = d.browse("_napalm._tcp.local.").expect("browse");
        let mut found: HashMap<String, Seen> = HashMap::new();
        let t0 = Instant::now();
        // mdns-sd resolves an instance as soon as it has one address, and again as
        // more arrive: the IPv6 link-local answer may come before the IPv4 one.
        // Keep reading until the REST service carries the address a coordinator
        // dials (its browser likewise skips resolutions without IPv4).
        let resolved = |found: &HashMap<String, Seen>| {
            found.contains_key("_napalm._tcp.local.")
                && found
                    .get("_napalm-http._tcp.local.")
                    .is_some_and(|(_, _, addrs)| addrs.iter().any(|a| a == "10.213.7.1"))
        };
        while !resolved(&found) && t0.elapsed() < Duration::from_secs(20) {
            for rx in [&http, &grpc] {
                while let Ok(ev) = rx.try_recv() {
                    if let ServiceEvent::ServiceResolved(s) = ev {
                        let txt = s
                            .txt_properties
                            .iter()
                            .map(|p| (p.key().to_owned(), p.val_str().to_owned()))
                            .collect();
                        let addrs = s.addresses.iter().map(|a| a.to_string()).collect();
                        found.insert(s.ty_domain.clone(), (s.port, txt, addrs));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Avahi, in the same namespace, sees the REST service with its TXT.
        let mut avahi_seen = String::new();
        let t0 = Instant::now();
        while !avahi_seen.contains("10.213.7.1;8480;") && t0.elapsed() < Duration::from_secs(20) {
            let out = Command::new("timeout")
                .args(["8", "avahi-browse", "-rpt", "_napalm-http._tcp"])
                .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
                .output()
                .expect("avahi-browse");
            avahi_seen = String::from_utf8_lossy(&out.stdout).into_owned();
        }
        // Reachable over the namespace link.
        let about = Command::new("curl")
            .args(["-sS", "http://10.213.7.1:8480/about"])
            .output()
            .expect("curl");
        let about = String::from_utf8_lossy(&about.stdout).into_owned();
        // Goodbye: stop the agent (SIGTERM) and wait for the removal.
        // SAFETY: signalling the child process this test spawned.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        let mut removed = false;
        while !removed && t0.elapsed() < Duration::from_secs(10) {
            if let Ok(ServiceEvent::ServiceRemoved(ty, _)) =
                http.recv_timeout(Duration::from_millis(200))
            {
                removed = ty == "_napalm-http._tcp.local.";
            }
        }
        let _ = d.shutdown();
        (found, about, removed, avahi_seen)
    });
    let (found, about, removed, avahi_seen) = browser.join().expect("browser thread");
    let line = avahi_seen
        .lines()
        .find(|l| l.starts_with("=;") && l.contains("10.213.7.1;8480;"))
        .unwrap_or_else(|| panic!("avahi-browse did not resolve the agent: {avahi_seen:?}"));
    for k in [
        "\"version=",
        "\"hypervisors=",
        "\"fingerprint=",
        "\"grpc_port=8481\"",
    ] {
        assert!(line.contains(k), "avahi-browse TXT lacks {k}: {line}");
    }
    drop(avahi);
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let (port, txt, addrs) = found
        .get("_napalm-http._tcp.local.")
        .unwrap_or_else(|| panic!("REST service not seen; agent log:\n{log}"));
    assert_eq!(*port, 8480);
    assert!(addrs.iter().any(|a| a == "10.213.7.1"), "{addrs:?}");
    for k in [
        "version",
        "http_port",
        "grpc_port",
        "hypervisors",
        "arch",
        "cpus",
        "memory",
        "fingerprint",
        "id",
    ] {
        assert!(txt.contains_key(k), "TXT lacks {k}: {txt:?}");
    }
    assert_eq!(txt["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(txt["grpc_port"], "8481");
    // Plain listeners (this agent has no TLS): a browser knows to dial http://.
    assert_eq!(txt.get("tls").map(String::as_str), Some("none"), "{txt:?}");
    assert!(txt["hypervisors"].split(',').any(|h| h == "test"));
    assert!(txt["cpus"].parse::<u32>().expect("cpus") > 0);
    let (gport, _, _) = found.get("_napalm._tcp.local.").expect("gRPC service seen");
    assert_eq!(*gport, 8481);
    assert!(about.contains("<name>napalm-agent</name>"), "{about}");
    assert!(removed, "no goodbye seen after SIGTERM");
    let st = agent.0.wait().expect("wait");
    assert!(st.success(), "agent exited with {st}");
    // The veth ends never existed in this (the root) namespace.
    let links = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&format!("nv{id}")));
}
