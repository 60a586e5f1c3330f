//! Benchmark of the deploy of real QEMU clones (ignored; prints figures): `deploy --count 8`
//! to all registered, median of 3, against `deploy --count 1` measured in the same run, and
//! where each clone's seconds go — the host side (when the coordinator reported each clone
//! scheduled, layer built, shipped, defined, running, registered: napalmctl's JSON progress
//! lines, stamped as they arrive) and the guest side (the napalm-init phases and the times
//! to /sbin/init and to the register hook that each clone reported when it registered).
//!
//! `cargo test -p napalm-integration --test integration bench_deploy -- --ignored --nocapture`
//! (`NAPALM_BENCH_RUNS=N` for N runs instead of 3; `NAPALM_BENCH_CONSOLES=DIR` copies every
//! clone's serial console to `DIR/NAME.log` for the kernel's printk times;
//! `NAPALM_BENCH_PORT_FILTER=libvirt` for the agents' `--port-filter libvirt`;
//! `NAPALM_BENCH_HUGEPAGES=1` for clones' RAM from a huge page pool (`--guest-hugepages`);
//! `NAPALM_BENCH_SETS=DIR` puts DIR's template sets before the shipped ones, e.g. a `base`
//! set with another watcher, for a baseline; `NAPALM_BENCH_COORDINATOR_ARGS` adds words to
//! the coordinator's command line). After each 8-clone deploy, the CPU its
//! registered clones' QEMUs use while idle (`NAPALM_BENCH_IDLE_S`, 10 s).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use napalm_integration::grid::{Grid, GridOptions};
use serde_json::Value;

/// The host-side phases a clone goes through, in order, as napalmctl names them, and
/// `qemu`: when libvirt started the domain's QEMU (its log under /var/log/libvirt/qemu).
const HOST_PHASES: [&str; 7] = [
    "scheduled",
    "layer",
    "shipped",
    "defined",
    "qemu",
    "running",
    "registered",
];

/// A count from the environment, `default` when unset or not a number.
pub(crate) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `--sets DIR` for the coordinator when `NAPALM_BENCH_SETS=DIR`, then the words (or the
/// lines) of `NAPALM_BENCH_COORDINATOR_ARGS`.
pub(crate) fn sets_args() -> Vec<String> {
    let mut args = match std::env::var("NAPALM_BENCH_SETS") {
        Ok(dir) if !dir.is_empty() => vec!["--sets".to_owned(), dir],
        _ => Vec::new(),
    };
    // Words, or lines when there is a newline (an argument with spaces).
    if let Ok(more) = std::env::var("NAPALM_BENCH_COORDINATOR_ARGS") {
        if more.contains('\n') {
            args.extend(more.lines().filter(|l| !l.is_empty()).map(str::to_owned));
        } else {
            args.extend(more.split_whitespace().map(str::to_owned));
        }
    }
    args
}

/// The pid of domain `name`'s QEMU, from libvirt's pid file.
pub(crate) fn qemu_pid(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// CPU seconds per second used by the QEMU of each clone `NAME-01`… of `name` over `secs`
/// (the clones idle: registered, nothing deployed beside them).
fn idle_cpu(name: &str, count: usize, secs: u64) -> Vec<f64> {
    let pids: Vec<u32> = (1..=count)
        .filter_map(|i| qemu_pid(&format!("{name}-{i:02}")))
        .collect();
    let before: Vec<f64> = pids.iter().map(|p| crate::storm::usage(*p).1).collect();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let dt = t.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .map(|(p, b)| (crate::storm::usage(*p).1 - b) / dt)
        .collect()
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One deploy: its wall time and, per clone, the seconds since the deploy started at which
/// each host phase was first reported (and `qemu`: when libvirt started its QEMU).
pub(crate) struct Deployed {
    pub(crate) took: f64,
    pub(crate) reached: BTreeMap<String, BTreeMap<String, f64>>,
    /// Per clone registered at least 2 s before the deploy ended: the CPU its QEMU used
    /// per second from its registration to the end, while the others still booted.
    pub(crate) registered_cpu: Vec<f64>,
    /// Per clone: the messages of its progress events, in order.
    pub(crate) messages: BTreeMap<String, Vec<String>>,
}

/// Samples the CPU seconds of the QEMU of each of `names` every 250 ms until `stop`:
/// (seconds since `t`, clone index in `names`, CPU seconds so far).
fn sample_qemu_cpu(
    names: Vec<String>,
    t: Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(f64, usize, f64)>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for (i, n) in names.iter().enumerate() {
                // A QEMU gone between its pid file and its stat reads as 0: left out.
                if let Some(cpu) = qemu_pid(n)
                    .map(|pid| crate::storm::usage(pid).1)
                    .filter(|c| *c > 0.0)
                {
                    out.push((t.elapsed().as_secs_f64(), i, cpu));
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        out
    })
}

/// When libvirt last started domain `name`'s QEMU (its log's `starting up` line), in seconds
/// after `since`.
fn qemu_started(name: &str, since: std::time::SystemTime) -> Option<f64> {
    let log = std::fs::read_to_string(format!("/var/log/libvirt/qemu/{name}.log")).ok()?;
    let line = log.lines().rev().find(|l| l.contains(": starting up"))?;
    // `2026-11-30 16:24:53.605+0000: starting up ...`
    let stamp = line.get(..23)?;
    let out = Command::new("date")
        .args(["-u", "-d", stamp, "+%s.%N"])
        .output()
        .ok()?;
    let at: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    let since = since
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    Some(at - since)
}

/// Copies each of `names`' serial consoles (libvirt ptys) to `dir/NAME.log` from the moment
/// its domain appears, for `within`, each line prefixed with the host's seconds since `t0`
/// (when it was read): the firmware, the kernel's decompression and the kernel's own
/// printk clock side by side.
fn capture_consoles(dir: PathBuf, names: Vec<String>, within: Duration, t0: Instant) {
    std::thread::spawn(move || {
        let mut left = names;
        while !left.is_empty() && t0.elapsed() < within {
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
                let (Ok(src), Ok(mut dst)) = (
                    std::fs::File::open(&pty),
                    std::fs::File::create(dir.join(format!("{name}.log"))),
                ) else {
                    return true;
                };
                // Ends when the domain goes (EIO on the pty).
                std::thread::spawn(move || {
                    use std::io::Write;
                    for line in BufReader::new(src).split(b'\n').map_while(Result::ok) {
                        let at = t0.elapsed().as_secs_f64();
                        let text = String::from_utf8_lossy(&line).replace('\r', "");
                        let _ = writeln!(dst, "{at:8.3} {text}");
                    }
                });
                false
            });
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

/// `napalmctl deploy --count N --name NAME` with JSON progress, each line stamped on arrival.
fn deploy(g: &Grid, name: &str, count: usize) -> Deployed {
    deploy_with(g, name, count, "256M")
}

/// [`deploy`] with clones of `memory` (`--memory`).
pub(crate) fn deploy_with(g: &Grid, name: &str, count: usize, memory: &str) -> Deployed {
    let t = Instant::now();
    if let Some(dir) = std::env::var_os("NAPALM_BENCH_CONSOLES") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("console directory");
        let names = (1..=count).map(|i| format!("{name}-{i:02}")).collect();
        capture_consoles(dir, names, Duration::from_secs(120), t);
    }
    let wall = std::time::SystemTime::now();
    let names: Vec<String> = (1..=count).map(|i| format!("{name}-{i:02}")).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_qemu_cpu(names.clone(), t, std::sync::Arc::clone(&stop));
    let mut child = g
        .napalmctl_command()
        .expect("napalmctl")
        .args(["--output", "json", "deploy", "--memory", memory])
        // KVM is listed by libvirt here but unusable (nested, no acceleration): TCG.
        .args(["--hypervisor", "qemu", "--name", name])
        .args(["--count", &count.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning napalmctl deploy");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut reached: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let mut messages: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let at = t.elapsed().as_secs_f64();
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if let (Some(c), Some(p)) = (v["clone"].as_str(), v["phase"].as_str()) {
                reached
                    .entry(c.to_owned())
                    .or_default()
                    .entry(p.to_owned())
                    .or_insert(at);
                if let Some(m) = v["message"].as_str() {
                    messages.entry(c.to_owned()).or_default().push(m.to_owned());
                }
            }
        }
        lines.push(line);
    }
    let out = child.wait_with_output().expect("napalmctl deploy");
    let took = t.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.join().unwrap_or_default();
    assert!(
        out.status.success(),
        "deploy {name} failed ({:?}): {}\n{}\nlogs in {}",
        out.status,
        lines.join("\n"),
        String::from_utf8_lossy(&out.stderr),
        g.dir.display()
    );
    for (clone, phases) in reached.iter_mut() {
        if let Some(q) = qemu_started(clone, wall) {
            phases.insert("qemu".into(), q);
        }
    }
    let mut registered_cpu = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let Some(&at) = reached.get(n).and_then(|p| p.get("registered")) else {
            continue;
        };
        let mine: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.1 == i && s.0 >= at)
            .map(|s| (s.0, s.2))
            .collect();
        if let (Some(first), Some(last)) = (mine.first(), mine.last()) {
            if last.0 - first.0 >= 2.0 {
                registered_cpu.push((last.1 - first.1) / (last.0 - first.0));
            }
        }
    }
    Deployed {
        took,
        reached,
        registered_cpu,
        messages,
    }
}

/// A console mark: its name and whether a line (host time stripped) is it.
type Mark = (&'static str, fn(&str) -> bool);

/// Console lines that mark a clone's boot, by the host's clock (the guest's own clock is
/// not trusted: without ACPI the kernel has no HPET or PM timer to calibrate the TSC and
/// keeps time in jiffies, which a descheduled TCG vCPU loses), in boot order: the firmware
/// starts, the kernel prints its first line (early: `[    0.0…]`), napalm-init hands over
/// to /sbin/init, the root's rcS runs, the register hook has reported.
const CONSOLE_MARKS: [Mark; 5] = [
    ("firmware", |l| l.contains("SeaBIOS")),
    ("kernel", |l| l.starts_with("[    0.0")),
    ("/sbin/init", |l| l.contains("transferring control to")),
    ("rcS", |l| l.starts_with("napalm-clone: ")),
    // The register hook's answer may share the line: `{…}napalm-clone: NAME ready`.
    ("hook done", |l| {
        l.contains("napalm-clone: ") && l.ends_with(" ready")
    }),
];

/// When each of [`CONSOLE_MARKS`] first appears in a console captured by
/// [`capture_consoles`] (seconds since the deploy started).
fn console_marks(log: &str) -> BTreeMap<&'static str, f64> {
    let mut at = BTreeMap::new();
    for line in log.lines() {
        let Some((t, text)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(t) = t.parse::<f64>() else { continue };
        for (mark, matches) in CONSOLE_MARKS {
            if matches(text.trim_end()) {
                at.entry(mark).or_insert(t);
            }
        }
    }
    at
}

/// Per-phase samples of the 8-clone runs, in seconds.
#[derive(Default)]
struct Samples {
    /// Host phase → seconds from the deploy's start to the clone reaching it.
    at: BTreeMap<&'static str, Vec<f64>>,
    /// Host phase → seconds from the previous host phase to it.
    step: BTreeMap<&'static str, Vec<f64>>,
    /// Guest phase (napalm-init's, `to_init_s`, `boot_s`) → seconds.
    guest: BTreeMap<String, Vec<f64>>,
    /// Console mark → seconds from the previous mark (the first: from QEMU's start), by the
    /// host's clock.
    console: BTreeMap<&'static str, Vec<f64>>,
    /// Registered − QEMU started − the clone's own kernel-start-to-hook time: QEMU's start,
    /// the firmware and the kernel's decompression before the kernel's clock starts, and
    /// the registration's way to the coordinator and back as an event.
    outside: Vec<f64>,
}

impl Samples {
    fn add(&mut self, g: &Grid, name: &str, d: &Deployed) {
        let boots: BTreeMap<String, Value> = g
            .clones(name)
            .expect("clones")
            .into_iter()
            .filter_map(|c| Some((c["clone"].as_str()?.to_owned(), c)))
            .collect();
        for (clone, phases) in &d.reached {
            let mut prev = 0.0;
            for p in HOST_PHASES {
                if let Some(&t) = phases.get(p) {
                    self.at.entry(p).or_default().push(t);
                    self.step.entry(p).or_default().push(t - prev);
                    prev = t;
                }
            }
            if let Some(dir) = std::env::var_os("NAPALM_BENCH_CONSOLES") {
                let log = std::fs::read_to_string(PathBuf::from(dir).join(format!("{clone}.log")))
                    .unwrap_or_default();
                let marks = console_marks(&log);
                let mut prev = phases.get("qemu").copied();
                for (mark, _) in CONSOLE_MARKS {
                    if let Some(&t) = marks.get(mark) {
                        if let Some(p) = prev {
                            self.console.entry(mark).or_default().push(t - p);
                        }
                        prev = Some(t);
                    }
                }
            }
            let Some(c) = boots.get(clone) else { continue };
            for p in c["boot_phases"].as_array().into_iter().flatten() {
                if let (Some(n), Some(s)) = (p["name"].as_str(), p["duration_s"].as_f64()) {
                    let key = n.split(':').next().unwrap_or(n).to_owned();
                    self.guest.entry(key).or_default().push(s);
                }
            }
            for k in ["to_init_s", "boot_s"] {
                if let Some(v) = c[k].as_f64() {
                    self.guest.entry(k.to_owned()).or_default().push(v);
                }
            }
            if let (Some(q), Some(reg), Some(boot)) = (
                phases.get("qemu"),
                phases.get("registered"),
                c["boot_s"].as_f64(),
            ) {
                self.outside.push(reg - q - boot);
            }
        }
    }

    fn print(&self) {
        println!("  host phase     reached at (median)   step from previous (median, max)");
        for p in HOST_PHASES {
            let (Some(at), Some(step)) = (self.at.get(p), self.step.get(p)) else {
                continue;
            };
            let max = step.iter().copied().fold(f64::NAN, f64::max);
            println!(
                "  {p:<14} {:>8.2} s            {:>6.2} s  {max:>6.2} s",
                median(at.clone()),
                median(step.clone()),
            );
        }
        println!(
            "  outside guest  registered - qemu - boot_s: median {:.2} s",
            median(self.outside.clone())
        );
        for (mark, _) in CONSOLE_MARKS {
            if let Some(v) = self.console.get(mark) {
                let max = v.iter().copied().fold(f64::NAN, f64::max);
                println!(
                    "  console {mark:<12} from the previous mark (host clock): median {:.2} s, max {max:.2} s",
                    median(v.clone())
                );
            }
        }
        for (k, v) in &self.guest {
            println!(
                "  guest {k:<20} median {:.3} s over {} clone boots",
                median(v.clone()),
                v.len()
            );
        }
    }
}

/// `deploy --count 8` to all registered, median of `NAPALM_BENCH_RUNS` (3), against
/// `deploy --count 1` in the same run, with the per-phase table of the 8-clone runs.
#[test]
#[ignore]
fn bench_deploy_8_median_of_3() {
    let runs = env_usize("NAPALM_BENCH_RUNS", 3);
    // `NAPALM_BENCH_PORT_FILTER=libvirt`: the agents leave clean-traffic to libvirt's
    // nwfilter, the baseline of their own nftables port filters.
    let agent_args = match std::env::var("NAPALM_BENCH_PORT_FILTER") {
        Ok(mode) => vec!["--port-filter".to_owned(), mode],
        Err(_) => Vec::new(),
    };
    let opts = GridOptions {
        keep: std::env::var_os("NAPALM_KEEP_GRID").is_some(),
        agent_args,
        coordinator_args: sets_args(),
        module_signatures: napalm_integration::grid::module_signatures_from_env()
            .unwrap_or_else(|e| panic!("{e}")),
        // `NAPALM_BENCH_HUGEPAGES=1`: the clones' RAM from a huge page pool the grid
        // reserves (and touches) for a run's clones (`--guest-hugepages`), with room for
        // one more while a run's undeployed clone is still going.
        hugepage_pool: std::env::var("NAPALM_BENCH_HUGEPAGES")
            .is_ok_and(|v| v == "1")
            .then_some(9 * (256 << 20)),
        ..Default::default()
    };
    let idle_s = env_usize("NAPALM_BENCH_IDLE_S", 10) as u64;
    let g = Grid::start(opts, "gridb").expect("starting the grid");
    let mut idle = Vec::new();
    let mut while_booting = Vec::new();
    let (mut one, mut eight) = (Vec::new(), Vec::new());
    let (mut s1, mut s8) = (Samples::default(), Samples::default());
    for r in 0..runs {
        for count in [1, 8] {
            let name = format!("gridb{count}r{r}");
            let d = deploy(&g, &name, count);
            if count == 1 {
                one.push(d.took);
                s1.add(&g, &name, &d);
            } else {
                eight.push(d.took);
                s8.add(&g, &name, &d);
                while_booting.extend(d.registered_cpu.iter().copied());
                idle.extend(idle_cpu(&name, count, idle_s));
            }
            let out = g.napalmctl(&["undeploy", &name]).expect("undeploy");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let (m1, m8) = (median(one.clone()), median(eight.clone()));
    println!("deploy --count 1: runs {one:.1?} s, median {m1:.1} s (baseline)");
    println!(
        "deploy --count 8: runs {eight:.1?} s, median {m8:.1} s = {:.2}x the single clone",
        m8 / m1
    );
    if !while_booting.is_empty() {
        let max = while_booting.iter().copied().fold(f64::NAN, f64::max);
        println!(
            "registered clones while the others still booted, QEMU CPU: median {:.3} CPU-s/s, max {max:.3} ({} clones)",
            median(while_booting.clone()),
            while_booting.len()
        );
    }
    if !idle.is_empty() {
        let max = idle.iter().copied().fold(f64::NAN, f64::max);
        println!(
            "idle registered clones, QEMU CPU over {idle_s} s after each 8-clone deploy: median {:.3} CPU-s/s, max {max:.3} ({} clones)",
            median(idle.clone()),
            idle.len()
        );
    }
    println!("per phase, deploy --count 1 ({runs} runs):");
    s1.print();
    println!("per phase, deploy --count 8 ({runs} runs x 8 clones):");
    s8.print();
}

/// What idle registered clones cost and why (ignored; prints figures): two clones deployed
/// and left alone for `NAPALM_BENCH_IDLE_S` (20 s) after they registered, then their QEMU
/// CPU over the same time, and inside the first one the interrupts, context switches and
/// processes over 10 s.
#[test]
#[ignore]
fn bench_idle_clones() {
    let secs = env_usize("NAPALM_BENCH_IDLE_S", 20) as u64;
    let opts = GridOptions {
        keep: std::env::var_os("NAPALM_KEEP_GRID").is_some(),
        coordinator_args: sets_args(),
        ..Default::default()
    };
    let g = Grid::start(opts, "gridi").expect("starting the grid");
    let name = "gridi";
    deploy(&g, name, 2);
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = idle_cpu(name, 2, secs);
    println!("idle clones, QEMU CPU over {secs} s, {secs} s after registering: {cpu:.3?} CPU-s/s");
    let clones = g.clones(name).expect("napalmctl clones");
    let addr = napalm_integration::grid::clone_address(&clones[0]);
    let script = "cat /proc/interrupts >/tmp/i1; grep -E '^(ctxt|processes)' /proc/stat >/tmp/s1\n\
                  sleep 10\n\
                  cat /proc/interrupts >/tmp/i2; grep -E '^(ctxt|processes)' /proc/stat >/tmp/s2\n\
                  echo '--- interrupts before, after'; cat /tmp/i1 /tmp/i2\n\
                  echo '--- ctxt and processes before, after'; cat /tmp/s1 /tmp/s2\n\
                  echo '--- ps'; ps\n\
                  echo '--- uptime'; cat /proc/uptime /proc/loadavg";
    let out = g
        .clone_sh(&addr, script, Duration::from_secs(60))
        .expect("the clone's shell");
    println!("inside {addr}:\n{out}");
    let out = g.napalmctl(&["undeploy", name]).expect("undeploy");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
