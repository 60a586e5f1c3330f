//! Issue #7, end to end: the grid in its own namespaces (server: coordinator + nfs-ganesha;
//! two agent hosts; a private bridge), agents found by mDNS only, real QEMU clones booting
//! through napalm-init from the NFS root plus their layer, registering, reaching each other
//! by the names of the generated /etc/hosts.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use napalm_integration::grid::{Grid, GridOptions};
use serde_json::Value;

/// Grids run one at a time (2 cores; TCG guests).
fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|p| p.into_inner())
}

fn grid(prefix: &str) -> Grid {
    let opts = GridOptions {
        keep: std::env::var_os("NAPALM_KEEP_GRID").is_some(),
        ..Default::default()
    };
    Grid::start(opts, prefix).expect("starting the grid")
}

fn deploy(g: &Grid, args: &[&str]) -> (Value, Duration) {
    let t = Instant::now();
    // KVM is listed by libvirt here but unusable (nested, no acceleration): TCG.
    let mut a = vec![
        "--output",
        "json",
        "deploy",
        "--memory",
        "256M",
        "--hypervisor",
        "qemu",
    ];
    a.extend_from_slice(args);
    let out = g.napalmctl(&a).expect("napalmctl deploy");
    let took = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "deploy {args:?} failed ({:?}): {stdout}\n{}\nlogs in {}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        g.dir.display()
    );
    let summary = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .last()
        .unwrap_or(Value::Null);
    (summary, took)
}

fn phase(c: &Value) -> String {
    c["phase"].as_str().unwrap_or_default().to_lowercase()
}

fn address(c: &Value) -> String {
    c["addresses"][0]
        .as_str()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn deploy_8_over_two_agents_found_by_mdns_boot_register_and_reach_each_other() {
    let _s = serial();
    let g = grid("gridp");
    let (summary, took) = deploy(&g, &["--count", "8", "--name", "gridp"]);
    eprintln!(
        "deploy --count 8: {:.1} s to all registered; summary {summary}",
        took.as_secs_f64()
    );
    let clones = g.clones("gridp").expect("clones");
    assert_eq!(clones.len(), 8, "{clones:?}");
    let mut agents = std::collections::BTreeSet::new();
    for c in &clones {
        let name = c["clone"].as_str().unwrap_or_default();
        assert_eq!(phase(c), "registered", "{name}: {c}");
        let idx: u32 = name
            .rsplit('-')
            .next()
            .and_then(|i| i.parse().ok())
            .expect("index");
        assert_eq!(
            address(c),
            g.clone_addr(idx),
            "{name} registered its own address"
        );
        agents.insert(c["agent"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(agents.len(), 2, "spread over both agents: {agents:?}");
    assert_eq!(g.domains().len(), 8, "exactly 8 domains: {:?}", g.domains());

    // From clone 1: its own hostname, and every other clone by name (/etc/hosts).
    let first = g.clone_addr(1);
    assert!(
        g.wait_clone_shell(&first, Duration::from_secs(60)),
        "clone 1's shell"
    );
    let mut script = String::from("echo host=$(hostname)\n");
    for i in 2..=8 {
        script += &format!(
            "if ping -c 1 -W 3 gridp-0{i} >/dev/null 2>&1; then echo ok gridp-0{i}; else echo FAIL gridp-0{i}; fi\n"
        );
    }
    script += "grep gridp-08 /etc/hosts\n";
    let out = g
        .clone_sh(&first, &script, Duration::from_secs(60))
        .expect("clone 1 shell");
    assert!(out.contains("host=gridp-01"), "{out}");
    for i in 2..=8 {
        assert!(
            out.contains(&format!("ok gridp-0{i}")),
            "gridp-0{i} unreachable:\n{out}"
        );
    }
    assert!(
        out.contains(&g.clone_addr(8)),
        "/etc/hosts lists clone 8's address:\n{out}"
    );
}
