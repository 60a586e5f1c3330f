//! Issue #15, "scratch space beside the union", on real QEMU clones: `napalmctl deploy
//! --scratch /scratch=SIZE` gives each clone a tmpfs of that size at /scratch, mounted by
//! napalm-init on the assembled union (not through overlayfs), writable by anyone, full at
//! its size, and nothing of it in the union's upper layer; a clone deployed without it
//! has none; a deploy whose scratch does not fit the clone's memory, or names `/`, is
//! refused before anything is created.
//!
//! And the thesis's table 4.2 with our figures (ignored; prints them): dbench on the
//! union's upper (overlayfs: tmpfs upper over the NFS root and the clone's layer), on the
//! scratch tmpfs beside it, both inside one clone, and on a tmpfs of the host as the
//! physical limit (the clones run under TCG, so only the ratio inside the clone compares
//! with the thesis's). The clones export a root of their own: the cached busybox root with
//! the host's dbench, its libraries and its loadfile added.
//!
//! `cargo test -p napalm-integration --test integration scratch::bench -- --ignored
//! --nocapture` (`NAPALM_BENCH_RUNS=N` runs of each, default 3; `NAPALM_DBENCH_SECS`,
//! default 10).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use napalm_integration::grid::{clone_address, Grid, GridOptions};
use napalm_integration::rootfs;
use serde_json::Value;

fn grid(name: &str, root: Option<PathBuf>) -> Grid {
    let opts = GridOptions {
        keep: std::env::var_os("NAPALM_KEEP_GRID").is_some(),
        root,
        ..Default::default()
    };
    Grid::start(opts, name).expect("starting the grid")
}

/// Runs napalmctl; its output (stdout, stderr) and whether it succeeded.
fn ctl(g: &Grid, args: &[&str]) -> (bool, String) {
    let out = g.napalmctl(args).expect("napalmctl runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A deploy of one QEMU clone named `name` with `--memory memory --scratch scratch`, which
/// the coordinator must refuse: what napalmctl said.
fn refused(g: &Grid, name: &str, memory: &str, scratch: &str) -> String {
    let args = [
        "deploy",
        "--hypervisor",
        "qemu",
        "--count",
        "1",
        "--memory",
        memory,
        "--name",
        name,
        "--scratch",
        scratch,
    ];
    let (ok, out) = ctl(g, &args);
    assert!(!ok, "napalmctl {args:?} was accepted:\n{out}");
    out
}

/// Deploys one clone of deployment `name` on QEMU with `extra` arguments; returns the
/// clone. `name` starts with the grid's domain prefix, so the grid removes the domain.
fn deploy(g: &Grid, name: &str, memory: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "--output",
        "json",
        "deploy",
        "--hypervisor",
        "qemu",
        "--count",
        "1",
        "--memory",
        memory,
        "--name",
        name,
    ];
    args.extend(extra);
    let (ok, out) = ctl(g, &args);
    assert!(
        ok,
        "napalmctl {args:?}:\n{out}\nlogs in {}",
        g.dir.display()
    );
    let clones = g.clones(name).expect("clones");
    let c = clones
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{name} lists no clone"));
    assert!(
        g.wait_clone_shell(&clone_address(&c), Duration::from_secs(90)),
        "the shell of {c}; logs in {}",
        g.dir.display()
    );
    c
}

fn sh(g: &Grid, c: &Value, script: &str, timeout: Duration) -> String {
    g.clone_sh(&clone_address(c), script, timeout)
        .unwrap_or_else(|e| panic!("the shell of {c}: {e}"))
}

/// What a clone script printed between `TAG-BEGIN` and `TAG-END` (empty when absent).
fn section<'a>(out: &'a str, tag: &str) -> &'a str {
    out.split(&format!("{tag}-BEGIN"))
        .nth(1)
        .and_then(|m| m.split(&format!("{tag}-END")).next())
        .unwrap_or_default()
}

/// The KiB a clone script printed as `FILLED=` (`du -sk` of the scratch path).
fn filled_kib(out: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix("FILLED="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no FILLED= in:\n{out}"))
}

/// The `/proc/mounts` line mounted at `dir`, split in fields.
fn mount_at<'a>(mounts: &'a str, dir: &str) -> Option<Vec<&'a str>> {
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(1) == Some(&dir))
}

#[test]
fn a_clone_deployed_with_scratch_has_a_tmpfs_of_that_size_beside_the_union() {
    let g = grid("scr", None);

    // Refused before anything is created, quoting the input.
    let out = refused(&g, "scr-toobig", "256M", "/scratch=200M,/var/tmp=100M");
    assert!(
        out.contains("\"/scratch:tmpfs:200M,/var/tmp:tmpfs:100M\"")
            && out.contains("300 MiB")
            && out.contains("256 MiB"),
        "{out}"
    );
    let out = refused(&g, "scr-root", "256M", "/=1M");
    assert!(
        out.contains("\"/:tmpfs:1M\"") && out.contains("root itself"),
        "{out}"
    );
    assert!(
        g.domains().is_empty(),
        "a refused deploy created {:?}",
        g.domains()
    );

    let with = deploy(&g, "scr", "256M", &["--scratch", "/scratch=64M"]);
    let script = "cat /proc/cmdline; echo MOUNTS-BEGIN; cat /proc/mounts; echo MOUNTS-END\n\
         echo MODE=$(stat -c %a /scratch)\n\
         echo hello > /scratch/hello && echo WROTE=$(cat /scratch/hello)\n\
         dd if=/dev/zero of=/scratch/fill bs=1M count=100 >/dd.log 2>&1; echo DD=$?; cat /dd.log\n\
         echo FILLED=$(du -sk /scratch | cut -f1)\n\
         echo UPPER-BEGIN; ls -a /.unions/*/upper/scratch 2>&1; echo UPPER-END\n\
         rm /scratch/fill; echo CLEANED=$(du -sk /scratch | cut -f1)\n";
    let out = sh(&g, &with, script, Duration::from_secs(60));
    eprintln!("clone with scratch:\n{out}");
    assert!(
        out.contains("napalm.scratch=/scratch:tmpfs:64M"),
        "the command line has no napalm.scratch=:\n{out}"
    );
    let mounts = section(&out, "MOUNTS");
    let scratch = mount_at(mounts, "/scratch").unwrap_or_else(|| panic!("no /scratch:\n{out}"));
    let root = mount_at(mounts, "/").unwrap_or_else(|| panic!("no /:\n{out}"));
    assert_eq!(root[2], "overlay", "/ is the union:\n{out}");
    // Its own tmpfs (napalm-init's source name), not the overlay, of the size asked for.
    assert_eq!(scratch[0], "napalm-scratch", "{scratch:?}");
    assert_eq!(scratch[2], "tmpfs", "{scratch:?}");
    let opts: Vec<&str> = scratch[3].split(',').collect();
    assert!(
        opts.contains(&"rw") && opts.contains(&"size=65536k"),
        "{scratch:?}"
    );
    // 1777 is tmpfs's own default, which /proc/mounts leaves out: the directory says it.
    assert!(out.contains("MODE=1777"), "{out}");
    assert!(
        out.contains("WROTE=hello"),
        "/scratch is not writable:\n{out}"
    );
    // Full at 64 MiB: dd fails short of its 100 MiB.
    assert!(
        out.contains("DD=1") && out.contains("No space left on device"),
        "{out}"
    );
    let filled: u64 = filled_kib(&out);
    assert!(
        (60 * 1024..=65536).contains(&filled),
        "filled {filled} KiB:\n{out}"
    );
    // Nothing written there went to the union's upper layer: only the mount point is there.
    let upper = section(&out, "UPPER");
    let entries: Vec<&str> = upper.split_whitespace().collect();
    assert_eq!(
        entries,
        [".", ".."],
        "the union's upper holds scratch files:\n{out}"
    );
    assert!(
        out.contains("CLEANED=4") || out.contains("CLEANED=0"),
        "{out}"
    );

    let without = deploy(&g, "scr-plain", "256M", &[]);
    let out = sh(
        &g,
        &without,
        "cat /proc/cmdline; cat /proc/mounts",
        Duration::from_secs(30),
    );
    assert!(
        !out.contains("napalm.scratch") && !out.contains("napalm-scratch"),
        "a clone without --scratch has scratch:\n{out}"
    );
    assert!(mount_at(&out, "/scratch").is_none(), "{out}");
    assert!(
        mount_at(&out, "/").is_some_and(|r| r[2] == "overlay"),
        "{out}"
    );
}

/// `virsh` on the grid's libvirtd; its stdout (the test fails when it fails).
fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh")
        .args(["-q", "-c", "qemu:///system"])
        .args(args)
        .output()
        .expect("virsh runs");
    assert!(
        out.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The host file of a domain's scratch disk, from its inactive XML.
fn scratch_file(domain: &str) -> PathBuf {
    let xml = virsh(&["dumpxml", "--inactive", domain]);
    xml.split("<source file='")
        .skip(1)
        .filter_map(|r| r.split('\'').next())
        .find(|f| f.ends_with("/scratch0.img"))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no scratch0.img in {domain}'s XML:\n{xml}"))
}

/// Bytes the host's file system holds for `path` (a sparse file holds less than its size).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_scratch_disk_is_an_ext4_beside_the_union_fresh_when_stateless_kept_when_stateful() {
    let g = grid("scrd", None);
    let out = refused(&g, "scrd-small", "256M", "/scratch=disk:1M");
    assert!(
        out.contains("\"/scratch:disk:1M\"") && out.contains("at least 16M"),
        "{out}"
    );
    assert!(g.domains().is_empty(), "refused, yet {:?}", g.domains());

    let disk = ["--scratch", "/scratch=disk:256M,/tmp=32M"];
    let less = deploy(&g, "scrd", "256M", &disk);
    let full = deploy(
        &g,
        "scrdk",
        "256M",
        &[&disk[..], &["--mode", "stateful"]].concat(),
    );
    let write = "cat /proc/cmdline; echo MOUNTS-BEGIN; cat /proc/mounts; echo MOUNTS-END\n\
         echo MODE=$(stat -c %a /scratch)\n\
         echo marker > /scratch/marker && sync && echo WROTE=$(cat /scratch/marker)\n\
         dd if=/dev/zero of=/scratch/fill bs=1M count=300 >/dd.log 2>&1; echo DD=$?; cat /dd.log\n\
         echo FILLED=$(du -sk /scratch | cut -f1)\n\
         echo UPPER-BEGIN; ls -a /.unions/*/upper/scratch 2>&1; echo UPPER-END\n\
         rm /scratch/fill; sync; cat /proc/sys/kernel/random/boot_id\n";
    let mut boots = Vec::new();
    for c in [&less, &full] {
        let out = sh(&g, c, write, Duration::from_secs(120));
        eprintln!("{c}:\n{out}");
        assert!(
            out.contains("napalm.scratch=/scratch:disk:256M,/tmp:tmpfs:32M"),
            "{out}"
        );
        let mounts = section(&out, "MOUNTS");
        let m = mount_at(mounts, "/scratch").unwrap_or_else(|| panic!("no /scratch:\n{out}"));
        // The agent's disk, an ext4 of its own, not the union; /tmp stays a tmpfs.
        assert!(m[0].starts_with("/dev/vd") && m[2] == "ext4", "{m:?}");
        assert!(m[3].split(',').any(|o| o == "rw"), "{m:?}");
        assert_eq!(
            mount_at(mounts, "/tmp").map(|t| t[2]),
            Some("tmpfs"),
            "{out}"
        );
        assert_eq!(
            mount_at(mounts, "/").map(|r| r[2]),
            Some("overlay"),
            "{out}"
        );
        assert!(
            out.contains("MODE=1777") && out.contains("WROTE=marker"),
            "{out}"
        );
        // Full at its size, less ext4's own metadata and journal.
        assert!(
            out.contains("DD=1") && out.contains("No space left on device"),
            "{out}"
        );
        let filled: u64 = filled_kib(&out);
        assert!(
            (200 << 10..=256 << 10).contains(&filled),
            "filled {filled} KiB:\n{out}"
        );
        let upper = section(&out, "UPPER");
        assert_eq!(
            upper.split_whitespace().collect::<Vec<_>>(),
            [".", ".."],
            "the union's upper holds scratch files:\n{out}"
        );
        boots.push(out.lines().last().unwrap_or_default().trim().to_owned());
    }
    // On the host: the stateless clone's writes went to libvirt's transient overlay, so its
    // disk file is still the blank, sparse one the agent made; the stateful one holds them.
    let (less_file, full_file) = (scratch_file("scrd-01"), scratch_file("scrdk-01"));
    assert!(virsh(&["dumpxml", "scrd-01"]).contains("<transient/>"));
    assert!(!virsh(&["dumpxml", "scrdk-01"]).contains("<transient/>"));
    assert!(
        allocated(&less_file) < 16 << 20,
        "{} holds {} bytes: the stateless clone wrote through its transient disk",
        less_file.display(),
        allocated(&less_file)
    );
    assert!(
        allocated(&full_file) > 128 << 20,
        "{} holds {} bytes after the clone filled it",
        full_file.display(),
        allocated(&full_file)
    );

    // A reboot from inside: napalm-init empties the stateless clone's disk, keeps the other's.
    for c in [&less, &full] {
        sh(
            &g,
            c,
            "sync; (sleep 1; reboot -f) >/dev/null 2>&1 &",
            Duration::from_secs(10),
        );
    }
    std::thread::sleep(Duration::from_secs(5));
    let look = "cat /scratch/marker 2>/dev/null || echo absent; ls /scratch; \
                grep ' /scratch ' /proc/mounts; cat /proc/sys/kernel/random/boot_id";
    for (c, boot, want) in [(&less, &boots[0], "absent"), (&full, &boots[1], "marker")] {
        assert!(
            g.wait_clone_shell(&clone_address(c), Duration::from_secs(180)),
            "{c} back after reboot; logs in {}",
            g.dir.display()
        );
        let out = sh(&g, c, look, Duration::from_secs(30));
        assert_ne!(
            out.lines().last().map(str::trim),
            Some(boot.as_str()),
            "{c} did not reboot"
        );
        assert!(out.lines().next() == Some(want), "{c} after reboot:\n{out}");
        assert!(out.contains(" ext4 "), "{out}");
    }
}

/// The busybox root with dbench added: the host's binary, the libraries `ldd` names and
/// the loadfile, cached beside the busybox root.
fn dbench_root(cache: &Path) -> PathBuf {
    rootfs::busybox_root_with(
        cache,
        "dbench",
        &[Path::new("/usr/bin/dbench")],
        &[Path::new("/usr/share/dbench/client.txt")],
    )
    .expect("the busybox root with dbench (scripts/setup installs dbench)")
}

/// dbench's throughput in MB/s from its last line (`Throughput 734.257 MB/sec  2 clients`).
fn throughput(out: &str) -> Option<f64> {
    out.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("Throughput "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn dbench_cmd(dir: &str, secs: u64) -> String {
    format!(
        "rm -rf {dir}/d; mkdir -p {dir}/d && dbench -t {secs} -c /usr/share/dbench/client.txt -D {dir}/d 2 2>&1 | tail -3; rm -rf {dir}/d"
    )
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

#[test]
#[ignore = "benchmark: prints the thesis's table 4.2 with our figures"]
fn bench_dbench_union_scratch_host() {
    let runs: usize = std::env::var("NAPALM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let secs: u64 = std::env::var("NAPALM_DBENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let root = dbench_root(&GridOptions::default().cache);
    let g = grid("scrb", Some(root));
    let c = deploy(
        &g,
        "scrb",
        "1G",
        &["--scratch", "/scratch=384M,/disk=disk:2G"],
    );
    // The bare tmpfs the scratch tmpfs sits on: one mounted by hand in the clone.
    sh(
        &g,
        &c,
        "mkdir -p /mnt/bare && mount -t tmpfs -o size=384M bare /mnt/bare",
        Duration::from_secs(30),
    );

    // The host's tmpfs: a fresh one, mounted for this run; and its disk (the root ext4).
    let host = tempfile::tempdir().expect("temp dir");
    let hd = host.path().to_string_lossy().into_owned();
    let m = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1G", "napalm-dbench", &hd])
        .status()
        .expect("mount");
    assert!(m.success(), "mount -t tmpfs on {hd}");
    let disk_dir = tempfile::tempdir_in("/var/tmp").expect("temp dir on the host's disk");
    let dd = disk_dir.path().to_string_lossy().into_owned();

    let rows: [(&str, Option<&str>); 6] = [
        ("host tmpfs", Some(hd.as_str())),
        ("host disk", Some(dd.as_str())),
        ("bare tmpfs in the clone", None),
        ("--scratch tmpfs", None),
        ("--scratch disk", None),
        ("union upper", None),
    ];
    let clone_dir = ["", "", "/mnt/bare", "/scratch", "/disk", "/bench"];
    let mut got: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    // Interleaved, so that a change of the host's load touches every row alike.
    for i in 0..runs {
        for (k, (what, host_dir)) in rows.iter().enumerate() {
            let out = match host_dir {
                Some(dir) => {
                    let out = Command::new("sh")
                        .args(["-c", &dbench_cmd(dir, secs)])
                        .output()
                        .expect("dbench on the host");
                    String::from_utf8_lossy(&out.stdout).into_owned()
                }
                None => sh(
                    &g,
                    &c,
                    &dbench_cmd(clone_dir[k], secs),
                    Duration::from_secs(secs * 6 + 120),
                ),
            };
            let t = throughput(&out).unwrap_or_else(|| panic!("{what}, run {i}:\n{out}"));
            eprintln!("run {i}: {what}: {t:.2} MB/s");
            got[k].push(t);
        }
    }
    let _ = Command::new("umount").arg(&hd).status();

    let ms: Vec<(f64, f64)> = got.iter().map(|v| mean_sd(v)).collect();
    let pct = |(m, sd): (f64, f64)| 100.0 * sd / m;
    let (host_t, host_d, bare, scr, scr_disk, union) = (ms[0], ms[1], ms[2], ms[3], ms[4], ms[5]);
    println!(
        "\nTable 4.2 (thesis: dbench on tmpfs, Xen, UnionFS; here: dbench {secs} s, 2 clients, \
         mean of {runs}; clone under QEMU TCG, 1 vCPU, 1 GiB, overlayfs)\n"
    );
    println!("| test | thesis MB/s | thesis sd % | ours MB/s | ours sd % | ours vs bare tmpfs in the clone |");
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, thesis: &str, v: (f64, f64)| {
        println!(
            "| {name} | {thesis} | {:.2} | {:.2} | {:.0} % |",
            v.0,
            pct(v),
            100.0 * v.0 / bare.0
        )
    };
    row(
        "tmpfs rw direct (thesis) / host tmpfs, physical limit, no TCG (ours)",
        "424.03 | 1.11",
        host_t,
    );
    row(
        "host's disk (ext4), physical limit of the disk kind, no TCG (ours)",
        "— | —",
        host_d,
    );
    row(
        "tmpfs rw direct in the clone, mounted by hand (ours)",
        "— | —",
        bare,
    );
    row(
        "`--scratch /scratch=384M`: tmpfs beside the union (ours)",
        "— | —",
        scr,
    );
    row(
        "`--scratch /disk=disk:2G`: the agent's ext4 disk, transient (ours)",
        "— | —",
        scr_disk,
    );
    row(
        "one tmpfs rw in a union (thesis) / the clone's union upper: tmpfs over NFS root + layer (ours)",
        "332.77 | 1.24",
        union,
    );
    println!("| one tmpfs rw over 6 tmpfs ro (thesis) | 330.43 | 1.58 | — | — | — |");
    println!(
        "\nunion cost: thesis {:.1} % (UnionFS), ours {:.1} % (overlayfs, in the clone); \
         scratch tmpfs is {:.1} % of the bare tmpfs it sits on and gains {:.1} % over the \
         union; the scratch disk is {:.1} % of the union's upper",
        100.0 * (1.0 - 332.77 / 424.03),
        100.0 * (1.0 - union.0 / bare.0),
        100.0 * scr.0 / bare.0,
        100.0 * (scr.0 / union.0 - 1.0),
        100.0 * scr_disk.0 / union.0
    );
}
