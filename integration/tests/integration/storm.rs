//! A boot storm (issue 15; ignored, prints figures): `NAPALM_STORM_CLONES` (32) real QEMU
//! clones of 128 MiB deployed at once from one nfs-ganesha, layers over NFS; then, on a
//! fresh grid, the same storm with each clone's layer appended to its initramfs
//! (`--layers-in-initramfs`), the baseline. For each: the time to the last clone
//! registered, what went through the server's interface (the root, the layers and the
//! state over NFS, registrations), what nfs-ganesha itself counted over the storm (NFSv4
//! operations in all, per clone and the most frequent, bytes READ from the root export and
//! from the others, bytes written; read over its private D-Bus,
//! `napalm_integration::ganesha`), and the peak RSS and CPU of the coordinator, the agents
//! and ganesha. Every clone must register: a storm that loses one fails.
//!
//! `cargo test -p napalm-integration --test integration storm -- --ignored --nocapture`
//! (`NAPALM_STORM_MODES=nfs` or `initramfs` runs one of the two; `NAPALM_BENCH_SETS=DIR`
//! as for `bench_deploy_8_median_of_3`).

use std::collections::BTreeMap;

use napalm_integration::ganesha::NfsStats;
use napalm_integration::grid::{Grid, GridOptions};

use crate::bench::{deploy_with, env_usize};

/// Bytes and packets through the server's interface, as counted in its namespace.
#[derive(Default, Clone, Copy)]
struct Link {
    rx_bytes: u64,
    tx_bytes: u64,
    rx_packets: u64,
    tx_packets: u64,
}

fn link(g: &Grid) -> Link {
    let read = |what: &str| -> u64 {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &g.server.ns, "cat"])
            .arg(format!(
                "/sys/class/net/{}/statistics/{what}",
                g.server.iface
            ))
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    Link {
        rx_bytes: read("rx_bytes"),
        tx_bytes: read("tx_bytes"),
        rx_packets: read("rx_packets"),
        tx_packets: read("tx_packets"),
    }
}

/// Peak RSS (MiB) and CPU seconds used so far of process `pid`.
pub(crate) fn usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are the 14th and
    // 15th fields of the line, the 12th and 13th after it.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: sysconf reads a constant of the system.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (hwm / 1024.0, (ticks(11) + ticks(12)) / tick)
}

/// The export the coordinator gives the reference root (`coordinator/src/exports.rs`).
const ROOT_EXPORT: u16 = 1;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// ganesha's counters now; the storm's figures are the difference of two.
fn nfs(g: &Grid) -> NfsStats {
    g.nfs_stats()
        .unwrap_or_else(|e| panic!("{}", napalm_integration::error_chain(&e)))
}

/// What ganesha counted over the storm: its NFSv4 operations in all and per clone (by
/// minor version), the most frequent, and the bytes READ (root export and the others:
/// layers and state) and written.
fn print_nfs(d: &NfsStats, count: usize) {
    let ops = d.nfs4_ops_total();
    let versions: Vec<String> = d
        .nfs4_ops_by_version()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(v, n)| format!("{v} {n}"))
        .collect();
    println!(
        "  server NFS (ganesha): {ops} NFSv4 operations ({:.0} per clone; {})",
        ops as f64 / count as f64,
        versions.join(", ")
    );
    let top: Vec<String> = d
        .top_nfs4_ops(8)
        .into_iter()
        .map(|(op, n)| format!("{op} {n} ({:.0}%)", n as f64 * 100.0 / ops.max(1) as f64))
        .collect();
    println!("    top operations: {}", top.join(", "));
    let (read, root, write) = (d.read(), d.read_of(ROOT_EXPORT), d.write());
    println!(
        "    READ {:.1} MiB in {} READs ({:.2} MiB per clone): {:.1} MiB of the root, {:.1} MiB of layers and state; WRITE {:.1} MiB in {} WRITEs",
        mib(read.transferred),
        read.ops,
        mib(read.transferred) / count as f64,
        mib(root.transferred),
        mib(read.transferred.saturating_sub(root.transferred)),
        mib(write.transferred),
        write.ops,
    );
}

fn storm(count: usize, initramfs: bool) {
    let mode = if initramfs {
        "layers in initramfs"
    } else {
        "layers over NFS"
    };
    let opts = GridOptions {
        keep: std::env::var_os("NAPALM_KEEP_GRID").is_some(),
        // Two agents on this machine's 2 cores offer 8 vCPUs each by default; a storm of
        // TCG guests waits on the CPU rather than being refused.
        coordinator_args: [
            vec!["--cpu-overcommit".to_owned(), "32".to_owned()],
            crate::bench::sets_args(),
            if initramfs {
                vec!["--layers-in-initramfs".to_owned()]
            } else {
                Vec::new()
            },
        ]
        .concat(),
        ..Default::default()
    };
    let g = Grid::start(opts, "grids").expect("starting the grid");
    let before: BTreeMap<String, (f64, f64)> = g
        .daemon_pids()
        .into_iter()
        .map(|(role, pid)| (role, usage(pid)))
        .collect();
    let l0 = link(&g);
    let n0 = nfs(&g);
    let d = deploy_with(&g, "grids", count, "128M");
    let l1 = link(&g);
    let n1 = nfs(&g);
    let registered: Vec<f64> = d
        .reached
        .values()
        .filter_map(|p| p.get("registered").copied())
        .collect();
    assert_eq!(
        registered.len(),
        count,
        "every clone of the storm registers ({mode}); logs in {}",
        g.dir.display()
    );
    let first = registered.iter().copied().fold(f64::INFINITY, f64::min);
    let last = registered.iter().copied().fold(0.0, f64::max);
    println!(
        "storm of {count} x 128 MiB, {mode}: all registered in {:.1} s (first {first:.1} s, last {last:.1} s; {:.1} clones/min)",
        d.took,
        count as f64 * 60.0 / d.took
    );
    println!(
        "  server interface: {:.1} MiB out in {} packets, {:.1} MiB in in {} packets ({:.2} MiB out per clone)",
        (l1.tx_bytes - l0.tx_bytes) as f64 / f64::from(1 << 20),
        l1.tx_packets - l0.tx_packets,
        (l1.rx_bytes - l0.rx_bytes) as f64 / f64::from(1 << 20),
        l1.rx_packets - l0.rx_packets,
        (l1.tx_bytes - l0.tx_bytes) as f64 / f64::from(1 << 20) / count as f64,
    );
    if !d.registered_cpu.is_empty() {
        let v = &d.registered_cpu;
        println!(
            "  registered clones while the others still booted: QEMU CPU median {:.3} CPU-s/s, max {:.3} ({} clones)",
            crate::bench::median(v.clone()),
            v.iter().copied().fold(f64::NAN, f64::max),
            v.len()
        );
    }
    print_nfs(&n1.since(&n0), count);
    for (role, pid) in g.daemon_pids() {
        let (hwm, cpu) = usage(pid);
        let cpu0 = before.get(&role).map_or(0.0, |b| b.1);
        println!(
            "  {role:<12} peak RSS {hwm:>7.1} MiB, CPU during the storm {:>6.2} s",
            cpu - cpu0
        );
    }
    let out = g.napalmctl(&["undeploy", "grids"]).expect("undeploy");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore]
fn storm_of_clones_from_one_nfs_server() {
    let count = env_usize("NAPALM_STORM_CLONES", 32);
    let modes = std::env::var("NAPALM_STORM_MODES").unwrap_or_else(|_| "nfs,initramfs".into());
    for m in modes.split(',') {
        match m.trim() {
            "nfs" => storm(count, false),
            "initramfs" => storm(count, true),
            other => {
                panic!("NAPALM_STORM_MODES: unknown mode {other:?}; use nfs, initramfs or both")
            }
        }
    }
}
