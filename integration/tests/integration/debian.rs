//! Issue #7 with a real distribution: the grid exports a debootstrapped, systemd-based
//! Debian bookworm root (`rootfs::debian_root`); two QEMU clones boot it through
//! napalm-init (NFS root + their layer), systemd runs as PID 1, the base set's
//! `napalm-register-clone.service` registers them, and they reach each other by name.
//! Then issue #12 on them: the deployment scales 2 → 3 → 1 and the survivors' cluster
//! files follow without a reboot, their watcher running as its systemd unit (GNU wget).
//! One grid for both: Debian clones are the slowest boots of the suite.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use napalm_integration::grid::{clone_address, Grid, GridOptions};
use napalm_integration::{error_chain, rootfs};
use serde_json::Value;

use crate::scale::{files_list, scale_steps, Dep};

fn phase(c: &Value) -> String {
    c["phase"].as_str().unwrap_or_default().to_lowercase()
}

/// Copies each clone's serial console (the libvirt pty, raw) to `dir/console-NAME.log`
/// from the moment its domain appears (within `within`): systemd's boot status lines.
fn capture_consoles(dir: PathBuf, names: Vec<String>, within: Duration) {
    std::thread::spawn(move || {
        let t = Instant::now();
        let mut left = names;
        while !left.is_empty() && t.elapsed() < within {
            left.retain(|name| {
                let out = Command::new("virsh")
                    .args(["-q", "-c", "qemu:///system", "ttyconsole", name])
                    .output();
                let pty = match out {
                    Ok(o) if o.status.success() => {
                        String::from_utf8_lossy(&o.stdout).trim().to_owned()
                    }
                    _ => return true,
                };
                let (Ok(mut src), Ok(mut dst)) = (
                    File::open(&pty),
                    File::create(dir.join(format!("console-{name}.log"))),
                ) else {
                    return true;
                };
                // Ends when the domain goes (EIO on the pty).
                std::thread::spawn(move || std::io::copy(&mut src, &mut dst));
                false
            });
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}

/// The last lines of a captured console, without terminal colours.
fn console_tail(dir: &Path, name: &str) -> String {
    let text = std::fs::read(dir.join(format!("console-{name}.log"))).unwrap_or_default();
    let text = String::from_utf8_lossy(&text).replace('\r', "");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// What systemd in each clone says (for a failure message): pending jobs, failed units,
/// the end of the journal.
fn diagnose(g: &Grid) -> String {
    let mut s = String::new();
    for i in 1..=2 {
        let a = g.clone_addr(i);
        let out = g.clone_sh(
            &a,
            "systemctl is-system-running; systemctl list-jobs --no-pager; \
             systemctl --failed --no-pager; journalctl -b --no-pager | tail -n 40",
            Duration::from_secs(20),
        );
        s += &format!("--- clone {i} ({a}):\n");
        s += &out.unwrap_or_else(|e| format!("(no shell: {})\n", error_chain(&e)));
        s += &format!(
            "--- console of debsd-0{i}:\n{}\n",
            console_tail(&g.dir.join("log"), &format!("debsd-0{i}"))
        );
    }
    s
}

#[test]
fn debian_systemd_clones_boot_register_reach_each_other_and_follow_a_scale_2_3_1() {
    let cache = GridOptions::default().cache;
    let t = Instant::now();
    let root = rootfs::debian_root(&cache).expect("the Debian reference root");
    let size = Command::new("du")
        .args(["-sh"])
        .arg(&root)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    eprintln!(
        "debian root ready in {:.1} s: {size}",
        t.elapsed().as_secs_f64()
    );

    let opts = GridOptions {
        root: Some(root),
        keep: std::env::var_os("NAPALM_KEEP_GRID").is_some(),
        ..Default::default()
    };
    let g = Grid::start(opts, "debsd").expect("starting the grid");
    capture_consoles(
        g.dir.join("log"),
        vec!["debsd-01".into(), "debsd-02".into(), "debsd-03".into()],
        Duration::from_secs(300),
    );
    let t = Instant::now();
    let out = g
        .napalmctl(&[
            "--output",
            "json",
            "deploy",
            "--memory",
            "256M",
            "--hypervisor",
            "qemu",
            // As `scale::scale_steps` deploys: the same spec, so a scale, not an update.
            "--layers",
            "base,mpi",
            "--count",
            "2",
            "--name",
            "debsd",
        ])
        .expect("napalmctl deploy");
    let took = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "deploy failed ({:?}): {stdout}\n{}\nlogs in {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        g.dir.display(),
        diagnose(&g)
    );
    eprintln!(
        "deploy --count 2 (Debian, systemd): {:.1} s to all registered",
        took.as_secs_f64()
    );

    let clones = g.clones("debsd").expect("clones");
    assert_eq!(clones.len(), 2, "{clones:?}");
    for c in &clones {
        let name = c["clone"].as_str().unwrap_or_default();
        assert_eq!(phase(c), "registered", "{name}: {c}");
        let idx: u32 = name
            .rsplit('-')
            .next()
            .and_then(|i| i.parse().ok())
            .expect("index");
        assert_eq!(
            clone_address(c),
            g.clone_addr(idx),
            "{name} registered its own address: {c}"
        );
        eprintln!("{name}: {c}");
    }

    let first = g.clone_addr(1);
    assert!(
        g.wait_clone_shell(&first, Duration::from_secs(120)),
        "clone 1's test shell (napalm-test-shell.socket) on {first}"
    );
    let script = "\
echo pid1=$(cat /proc/1/comm) exe=$(readlink /proc/1/exe)
echo state=$(timeout 150 systemctl is-system-running --wait)
systemctl --no-pager --failed --plain --no-legend | sed 's/^/failed: /'
echo host=$(uname -n) etc=$(cat /etc/hostname)
if ping -c 1 -W 3 debsd-02 >/dev/null 2>&1; then echo ping=ok; else echo ping=FAIL; fi
getent hosts debsd-02
echo registered=$(systemctl show -p ActiveState,Result --value napalm-register-clone.service | tr '\\n' ' ')
echo networkd=$(systemctl is-active systemd-networkd.service)
ip -4 -o addr show dev eth0
echo uptime=$(cut -d' ' -f1 /proc/uptime)
systemd-analyze 2>/dev/null | head -n 1
test -s /run/napalm/boot.json && echo bootjson=present || echo bootjson=absent
stat -c 'root owner seen over NFS: %u:%g (/usr/bin/mount %A)' /usr/bin/mount
";
    let out = g
        .clone_sh(&first, script, Duration::from_secs(200))
        .expect("clone 1 shell");
    eprintln!("clone 1 says:\n{out}");
    let exe = out
        .lines()
        .find_map(|l| l.strip_prefix("pid1="))
        .unwrap_or_default();
    assert!(
        exe.starts_with("systemd ") && exe.contains("exe=/usr/lib/systemd/systemd"),
        "PID 1 is not systemd:\n{out}"
    );
    let state = out
        .lines()
        .find_map(|l| l.strip_prefix("state="))
        .unwrap_or_default();
    // Every unit started (ganesha serves numeric owners, so setuid-root helpers such as
    // mount(8) work over the NFS root).
    assert_eq!(
        state,
        "running",
        "systemctl is-system-running; failed units:\n{}\n{out}",
        out.lines()
            .filter(|l| l.starts_with("failed: "))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        out.contains("host=debsd-01 etc=debsd-01"),
        "hostname:\n{out}"
    );
    assert!(out.contains("ping=ok"), "debsd-02 by name:\n{out}");
    // napalm-init moved its /run into the new root; systemd keeps a mounted /run.
    assert!(
        out.contains("bootjson=present"),
        "/run/napalm/boot.json hidden under systemd:\n{out}"
    );
    assert!(
        out.contains(&format!("inet {first}/")),
        "eth0 kept napalm-init's address under systemd-networkd:\n{out}"
    );

    // Scale 2 → 3 → 1: survivors keep running, their cluster files follow.
    let dep = Dep("debsd");
    files_list(&g, dep, 2);
    scale_steps(&g, dep, &[2, 3, 1]);
    let out = g
        .clone_sh(
            &first,
            "echo unit=$(systemctl is-active napalm-cluster-files.service)\n\
             echo pid1=$(cat /proc/1/comm)",
            Duration::from_secs(30),
        )
        .expect("clone 1 shell");
    assert!(out.contains("pid1=systemd"), "{out}");
    assert!(out.contains("unit=active"), "the watcher's unit: {out}");
}
