//! Issue #13, "clones that cannot impersonate each other", on real QEMU clones: each clone's
//! interface is bound to its MAC and pool address (the coordinator asks for libvirt's
//! `clean-traffic`; the agent enforces it with its own nftables port filter), so a
//! clone that takes another clone's address reaches nothing with it — not the server, not
//! the other clone's layer or state export (restricted to that address) — while it still
//! works with its own address, and the clone it impersonated is undisturbed.
//!
//! The mounts are the kernel's NFSv4 client driven by busybox `mount -t nfs4` with the
//! options napalm-init uses (`addr=`, `clientaddr=`): busybox hands them to the kernel as
//! they are. The clone proves the command works by mounting its own layer.

use std::time::Duration;

use napalm_integration::grid::{clone_address, Grid, GridOptions, HTTP};
use serde_json::Value;

fn grid() -> Grid {
    let opts = GridOptions {
        keep: std::env::var_os("NAPALM_KEEP_GRID").is_some(),
        ..Default::default()
    };
    Grid::start(opts, "spoof").expect("starting the grid")
}

/// The `Path` of the export whose path ends with `suffix` (e.g. `/spoof/spoof-01/root`).
fn export_path(exports: &str, suffix: &str) -> String {
    exports
        .split("EXPORT {")
        .find_map(|b| {
            b.lines()
                .map(str::trim)
                .find_map(|l| l.strip_prefix("Path = \""))
                .and_then(|p| p.strip_suffix("\";"))
                .filter(|p| p.ends_with(suffix))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no export ending in {suffix}:\n{exports}"))
}

/// A shell function for the clone: runs its arguments in the background for at most
/// SECONDS, then prints `WHAT=rc<N>` or `WHAT=timeout` (the command SIGKILLed).
const BOUNDED: &str = r#"bounded() { what=$1; secs=$2; shift 2
  "$@" >/tmp/bounded.out 2>&1 & p=$!
  i=0; while [ $i -lt $secs ] && kill -0 $p 2>/dev/null; do sleep 1; i=$((i+1)); done
  if kill -0 $p 2>/dev/null; then kill -9 $p; wait $p 2>/dev/null; echo "$what=timeout"
  else wait $p; echo "$what=rc$?"; fi
  sed "s/^/  $what: /" /tmp/bounded.out
}
"#;

/// The NFSv4.`minor` mount napalm-init does, of `path` on `server`, from `from`, onto
/// `dir`, bounded and reported as `what`. The kernel shares one client (one TCP connection)
/// per server and minor version: 4.1 rides on the clone's root mount, from its own
/// address; 4.0 opens a connection of its own, from the address routing picks.
fn mount_cmd(what: &str, minor: u8, server: &str, path: &str, from: &str, dir: &str) -> String {
    format!(
        "mkdir -p {dir}; bounded {what} 25 mount -t nfs4 -o ro,vers=4.{minor},addr={server},clientaddr={from},proto=tcp {server}:{path} {dir}"
    )
}

/// What `bounded` reported for `what`: `rc<N>` or `timeout` (empty if it did not run).
fn result<'a>(out: &'a str, what: &str) -> &'a str {
    let key = format!("{what}=");
    out.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_default()
        .trim()
}

fn ctl(g: &Grid, args: &[&str]) -> String {
    let out = g.napalmctl(args).expect("napalmctl runs");
    assert!(
        out.status.success(),
        "napalmctl {args:?}: {}{}\nlogs in {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        g.dir.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_clone_that_takes_anothers_address_reaches_neither_the_server_nor_its_exports() {
    let g = grid();
    ctl(
        &g,
        &[
            "--output",
            "json",
            "deploy",
            "--memory",
            "256M",
            "--hypervisor",
            "qemu",
            "--mode",
            "stateful",
            "--count",
            "2",
            "--name",
            "spoof",
        ],
    );
    let clones: Vec<Value> = g.clones("spoof").expect("clones");
    let addr = |name: &str| {
        clones
            .iter()
            .find(|c| c["clone"] == name)
            .map(clone_address)
            .unwrap_or_else(|| panic!("{name} not listed: {clones:?}"))
    };
    let (a1, a2) = (addr("spoof-01"), addr("spoof-02"));
    assert!(!a1.is_empty() && !a2.is_empty() && a1 != a2, "{a1} {a2}");
    let server = g.server.addr.clone();

    // Each clone's interface is bound to its MAC and address: the coordinator asks for
    // clean-traffic, and the agent enforces it with its own nftables port filter (the
    // domain's tap, named by the agent, has a chain in the host's `bridge napalm` table).
    let table = std::process::Command::new("nft")
        .args(["list", "table", "bridge", "napalm"])
        .output()
        .expect("nft list table");
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    for (name, a) in [("spoof-01", &a1), ("spoof-02", &a2)] {
        let out = std::process::Command::new("virsh")
            .args(["-q", "-c", "qemu:///system", "dumpxml", name])
            .output()
            .expect("virsh dumpxml");
        let xml = String::from_utf8_lossy(&out.stdout);
        let field = |pat: &str| {
            xml.split(pat)
                .nth(1)
                .and_then(|r| r.split('\'').next())
                .unwrap_or_else(|| panic!("{name}: no {pat} in\n{xml}"))
                .to_owned()
        };
        let (port, mac) = (field("<target dev='"), field("<mac address='"));
        assert!(
            port.starts_with("np"),
            "{name}'s tap {port} is not the agent's"
        );
        assert!(
            !xml.contains("<filterref"),
            "{name} left to libvirt's nwfilter:\n{xml}"
        );
        let chain = table
            .split(&format!("chain port-{port} {{"))
            .nth(1)
            .and_then(|r| r.split('}').next())
            .unwrap_or_else(|| panic!("{name}: no chain for {port} in\n{table}"));
        assert!(
            chain.contains(&format!("ether saddr != {mac} drop"))
                && chain.contains(&format!("ip saddr != {a} drop"))
                && table.contains(&format!("\"{port}\" : jump port-{port}")),
            "{name} ({port}, {mac}, {a}) is not bound by the table:\n{table}"
        );
    }

    let exports =
        std::fs::read_to_string(g.dir.join("ganesha/napalm-exports.conf")).expect("exports");
    let layer1 = export_path(&exports, "/spoof/spoof-01/root");
    let state1 = export_path(&exports, "/spoof/spoof-01");
    for a in [&a1, &a2] {
        assert!(
            g.wait_clone_shell(a, Duration::from_secs(90)),
            "the shell of {a}; logs in {}",
            g.dir.display()
        );
    }

    // Clone 1 mounts its own layer with the very command clone 2 will try.
    let own = format!(
        "{BOUNDED}{}\nls /mnt/own | head -3\numount /mnt/own\n",
        mount_cmd("OWN", 0, &server, &layer1, &a1, "/mnt/own")
    );
    let out = g
        .clone_sh(&a1, &own, Duration::from_secs(60))
        .expect("clone 1's shell");
    assert_eq!(
        result(&out, "OWN"),
        "rc0",
        "clone 1 cannot mount its own layer {server}:{layer1}:\n{out}"
    );

    // From its own address clone 2 is refused clone 1's export (restricted by address).
    // Then it takes clone 1's address (as a second address: its own stays for the test
    // shell's connection) and routes to the server from it.
    let steal = format!(
        "{BOUNDED}{}\n\
         ip addr add {a1}/24 dev eth0\n\
         ip route add {server}/32 dev eth0 src {a1}\n\
         ip route get {server}\n\
         bounded PING 10 ping -c 3 -W 2 {server}\n\
         bounded HTTP 15 wget -q -O /dev/null http://{server}:{HTTP}/\n\
         {}\n{}\n\
         ls /mnt/layer /mnt/state 2>/dev/null | head -5\n\
         umount /mnt/other /mnt/layer /mnt/state 2>/dev/null\n\
         ip route del {server}/32 dev eth0 src {a1}\n\
         ip addr del {a1}/24 dev eth0\n\
         bounded OWNPING 10 ping -c 3 -W 2 {server}\n\
         bounded OWNHTTP 15 wget -q -O /dev/null http://{server}:{HTTP}/\n",
        mount_cmd("OTHER", 1, &server, &layer1, &a2, "/mnt/other"),
        mount_cmd("LAYER", 0, &server, &layer1, &a1, "/mnt/layer"),
        mount_cmd("STATE", 0, &server, &state1, &a1, "/mnt/state"),
    );
    let out = g
        .clone_sh(&a2, &steal, Duration::from_secs(150))
        .expect("clone 2's shell");
    eprintln!("clone 2, then clone 2 as {a1}:\n{out}");
    assert!(
        out.contains(&format!("src {a1}")),
        "clone 2 did not route from the stolen address:\n{out}"
    );
    let r = result(&out, "OTHER");
    assert!(
        !r.is_empty() && r != "rc0",
        "clone 2 mounted clone 1's layer from its own address ({r}):\n{out}"
    );
    // With the stolen address nothing answers at all (the host drops the frames): no
    // refusal, no error, only silence until the command is killed.
    assert_eq!(result(&out, "PING"), "rc1", "ping as {a1}:\n{out}");
    for what in ["HTTP", "LAYER", "STATE"] {
        assert_eq!(
            result(&out, what),
            "timeout",
            "{what} as {a1} got an answer:\n{out}"
        );
    }
    // wget's exit status is 0 for any answer, 1 for an HTTP error status: either means
    // the coordinator was reached.
    let reached = |r: &str| matches!(r, "rc0" | "rc1");
    assert!(
        result(&out, "OWNPING") == "rc0" && reached(result(&out, "OWNHTTP")),
        "clone 2 no longer reaches the server with its own address:\n{out}"
    );

    // Clone 1 was not disturbed: it still reaches the server and its exports.
    let after = format!(
        "{BOUNDED}bounded PING 10 ping -c 2 -W 2 {server}\n{}\numount /mnt/own\n",
        mount_cmd("OWN", 0, &server, &layer1, &a1, "/mnt/own")
    );
    let out = g
        .clone_sh(&a1, &after, Duration::from_secs(60))
        .expect("clone 1's shell afterwards");
    assert!(
        result(&out, "PING") == "rc0" && result(&out, "OWN") == "rc0",
        "clone 1 was disturbed:\n{out}"
    );
    let listed = g.clones("spoof").expect("clones");
    for c in &listed {
        assert_eq!(
            c["phase"].as_str().unwrap_or_default().to_lowercase(),
            "registered",
            "{c}"
        );
    }
}
