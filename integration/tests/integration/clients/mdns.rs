//! mDNS: `avahi-browse` through an avahi-daemon of its own resolves the agent and the
//! coordinator.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use napalm_integration::grid::{AGENT_GRPC, AGENT_HTTP, GRPC as COORD_GRPC};
use napalm_integration::netns::Host;
use napalm_integration::proc::{wait_for, Daemon};

use super::*;

/// A private D-Bus and an avahi-daemon in `host`'s namespace, limited to its interface.
/// avahi-daemon gets a private mount namespace with its own /run, so its pid file and
/// socket never meet another avahi-daemon on this machine.
pub(crate) struct Avahi {
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
