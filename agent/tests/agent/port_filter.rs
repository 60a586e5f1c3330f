//! The agent's port filters ([`napalm_agent::port_filter::nft::Nft`]) against the real
//! kernel and the real `nft`, without QEMU: a bridge in a namespace of its own (the
//! "host"), two "guests" in two more namespaces, each on a veth whose host end is a bridge
//! port, as a tap is. With guest A's port filtered to its MAC and address, A reaches B with
//! them and reaches nothing with another address or MAC, and its ARP claiming another
//! address never arrives; once the filter is removed, the same spoofed traffic passes
//! (so the filter was what dropped it). All namespaces go when the test ends.

use std::process::Command;

use napalm_agent::port_filter::nft::Nft;
use napalm_agent::port_filter::{Firewall, PortFilter};

use crate::common::ip;

/// The host, A and B namespaces; deleted on drop.
struct Lan {
    host: String,
    a: String,
    b: String,
    port_a: String,
}

impl Lan {
    const MAC_A: &'static str = "52:54:00:0f:00:01";
    const MAC_B: &'static str = "52:54:00:0f:00:02";

    fn new() -> Self {
        let id = std::process::id() % 100_000;
        let lan = Self {
            host: format!("napalm-pf{id}h"),
            a: format!("napalm-pf{id}a"),
            b: format!("napalm-pf{id}b"),
            port_a: format!("nppf{id}a"),
        };
        let port_b = format!("nppf{id}b");
        for ns in [&lan.host, &lan.a, &lan.b] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let h = lan.host.as_str();
        ip(&["-n", h, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", h, "link", "set", "br0", "up"]);
        for (port, ns, mac, addr) in [
            (&lan.port_a, &lan.a, Self::MAC_A, "10.213.8.1/24"),
            (&port_b, &lan.b, Self::MAC_B, "10.213.8.2/24"),
        ] {
            ip(&[
                "-n", h, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            ip(&["-n", h, "link", "set", port, "master", "br0", "up"]);
            ip(&["-n", ns, "link", "set", "eth0", "address", mac, "up"]);
            ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"]);
        }
        lan
    }

    /// Whether `ns` gets an answer to one ping of `to` within a second.
    fn pings(&self, ns: &str, to: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", to])
            .output()
            .expect("ping")
            .status
            .success()
    }

    /// Gives A the address `addr` instead of the one it had (and forgets B's MAC on both
    /// sides, so the next ping starts with ARP).
    fn readdress_a(&self, addr: &str) {
        ip(&["-n", &self.a, "addr", "flush", "dev", "eth0"]);
        ip(&["-n", &self.a, "addr", "add", addr, "dev", "eth0"]);
        for ns in [&self.a, &self.b] {
            ip(&["-n", ns, "neigh", "flush", "dev", "eth0"]);
        }
    }

    /// What B's neighbour table says of `addr`.
    fn b_neighbour(&self, addr: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.b, "neigh", "show", addr])
            .output()
            .expect("ip neigh");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn nft_table(&self) -> String {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.host, "nft", "list", "table", "bridge", "napalm",
            ])
            .output()
            .expect("nft list");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in [&self.host, &self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn a_filtered_port_reaches_nothing_with_another_address_or_mac() {
    let lan = Lan::new();
    let nft = Nft {
        netns: Some(format!("/run/netns/{}", lan.host).into()),
    };
    let filter = PortFilter {
        port: lan.port_a.clone(),
        mac: Lan::MAC_A.into(),
        ipv4: "10.213.8.1".parse().expect("address"),
    };
    let filters = std::slice::from_ref(&filter);
    assert!(
        lan.pings(&lan.a, "10.213.8.2"),
        "no filter yet: A reaches B"
    );

    nft.apply(filters).expect("apply");
    nft.apply(filters).expect("apply again (idempotent)");
    let table = lan.nft_table();
    assert!(
        table.contains(&format!("\"{}\" : jump port-{}", lan.port_a, lan.port_a))
            && table.contains(&format!("ether saddr != {} drop", Lan::MAC_A))
            && table.contains("ip saddr != 10.213.8.1 drop"),
        "{table}"
    );
    lan.readdress_a("10.213.8.1/24");
    assert!(
        lan.pings(&lan.a, "10.213.8.2"),
        "A with its own MAC and address"
    );

    // Another address: its ARP never reaches B (B never learns it), and with the
    // neighbours set by hand (no ARP needed) the IPv4 packets are dropped too.
    lan.readdress_a("10.213.8.3/24");
    assert!(!lan.pings(&lan.a, "10.213.8.2"), "A with a spoofed address");
    let seen = lan.b_neighbour("10.213.8.3");
    assert!(
        !seen.contains(Lan::MAC_A),
        "B learnt the spoofed address: {seen}"
    );
    ip(&[
        "-n",
        &lan.a,
        "neigh",
        "replace",
        "10.213.8.2",
        "lladdr",
        Lan::MAC_B,
        "dev",
        "eth0",
    ]);
    ip(&[
        "-n",
        &lan.b,
        "neigh",
        "replace",
        "10.213.8.3",
        "lladdr",
        Lan::MAC_A,
        "dev",
        "eth0",
    ]);
    assert!(!lan.pings(&lan.a, "10.213.8.2"), "spoofed IPv4 with no ARP");

    // Its own address from another MAC.
    lan.readdress_a("10.213.8.1/24");
    ip(&[
        "-n",
        &lan.a,
        "link",
        "set",
        "eth0",
        "address",
        "52:54:00:0f:00:99",
    ]);
    assert!(!lan.pings(&lan.a, "10.213.8.2"), "A with a spoofed MAC");
    ip(&["-n", &lan.a, "link", "set", "eth0", "address", Lan::MAC_A]);

    // Without the filter the same spoofed traffic passes: the filter dropped it.
    nft.remove(&[&lan.port_a]).expect("remove");
    nft.remove(&[&lan.port_a])
        .expect("remove again (idempotent)");
    let table = lan.nft_table();
    assert!(!table.contains(&lan.port_a), "{table}");
    lan.readdress_a("10.213.8.3/24");
    assert!(
        lan.pings(&lan.a, "10.213.8.2"),
        "unfiltered, the spoofed address passes"
    );
}

#[test]
fn nft_that_cannot_run_is_a_clear_error() {
    let nft = Nft {
        netns: Some("/nonexistent/netns".into()),
    };
    let e = nft
        .apply(&[PortFilter {
            port: "np0".into(),
            mac: "52:54:00:0f:00:01".into(),
            ipv4: "10.213.8.1".parse().expect("address"),
        }])
        .expect_err("no such namespace");
    let msg = e.to_string();
    assert!(
        msg.contains("nsenter") && msg.contains("/nonexistent/netns"),
        "{msg}"
    );
}
