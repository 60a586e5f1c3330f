//! Layer build benchmark (issue 3): 1,000 clones with the default sets `base`, `ganglia`,
//! `mpi`, full build (goal < 1 s on 2 cores) and no-change rebuild (goal < 50 ms), with
//! baselines measured in the same run:
//! - sequential: the same full build on one thread;
//! - I/O floor: writing the very same directories, files, links and archives with the fewest
//!   `std::fs` calls (2 threads), no config, no templates: what the filesystem alone costs;
//! - engine only: the same build rendered and archived in memory (`render_all` + cpio +
//!   tar.gz), nothing written: what the engine costs without the filesystem.
//!
//! The same build with the shared cluster layer (`shared_cluster_layer(true)`: cluster files
//! once in `_cluster-*` instead of in each of the 1,000 layers) is shown too, and so is the
//! archives-only build (`Outputs { dir: false, .. }`: cpio + tar.gz, what a stateless
//! clone boots from).
//!
//! Run: `CARGO_TARGET_DIR=/work/target-overlay cargo bench -p napalm-overlay --bench build`
//! (`NAPALM_BENCH_CLONES=N` changes the clone count).

// A benchmark harness: a failed step should stop it loudly.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use napalm_overlay::{Config, Identity, LayerBuilder, Limits, Outputs, SetLibrary};
use rayon::prelude::*;

fn conf(n: usize) -> String {
    format!(
        "server: 10.0.0.1\nos_root_device: 10.0.0.1:/\nos_root_fs_type: nfs\nos_root_fs_options: nfsvers=3\n\
         layers: [base, ganglia, mpi]\ngroups:\n  bench:\n    address_pool: 10.1.0.1\n    slots: 2\n    hosts:\n      clone[{:04}-{:04}]:\n",
        1, n
    )
}

/// Everything a `napalmctl clone build --all` does: load, resolve, load sets, build.
fn build(conf: &str, out: &Path, threads: Option<usize>) -> napalm_overlay::BuildReport {
    build_with(conf, out, threads, Outputs::default())
}

fn build_with(
    conf: &str,
    out: &Path,
    threads: Option<usize>,
    outputs: Outputs,
) -> napalm_overlay::BuildReport {
    build_full(conf, out, threads, outputs, false)
}

fn build_full(
    conf: &str,
    out: &Path,
    threads: Option<usize>,
    outputs: Outputs,
    shared: bool,
) -> napalm_overlay::BuildReport {
    let cluster = Config::parse("bench.conf", conf, &Limits::default())
        .and_then(|c| c.resolve())
        .expect("config");
    let sets = SetLibrary::new(vec![napalm_overlay::default_sets_dir()]);
    let mut b = LayerBuilder::new(&cluster, &sets, out)
        .identity(Identity::from_secret(b"bench"))
        .outputs(outputs)
        .shared_cluster_layer(shared);
    if let Some(t) = threads {
        b = b.threads(t);
    }
    let report = b.build_all().expect("build");
    assert!(report.failed.is_empty(), "{:?}", report.failed.first());
    report
}

enum Item {
    Dir(PathBuf),
    File(PathBuf, Vec<u8>),
    Link(PathBuf, PathBuf),
}

/// Every entry under `dir`, parents first.
fn items_of(dir: &Path) -> Vec<Item> {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| {
            let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
            if e.file_type().is_dir() {
                Item::Dir(rel)
            } else if e.file_type().is_symlink() {
                Item::Link(rel, std::fs::read_link(e.path()).unwrap())
            } else {
                Item::File(rel, std::fs::read(e.path()).unwrap())
            }
        })
        .collect()
}

/// CPU time (user + system) of this process so far, from /proc/self/stat (10 ms ticks).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat are utime and stime; `after` starts at field 3.
    let field = |i: usize| {
        f.get(i - 3)
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let ticks = field(14) + field(15);
    Duration::from_millis(ticks * 10)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

fn ms(d: Duration) -> String {
    format!("{:8.1} ms", d.as_secs_f64() * 1000.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::var("NAPALM_BENCH_CLONES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let conf = conf(n);
    let tmp = tempfile::tempdir_in(
        std::env::var_os("NAPALM_BENCH_DIR").unwrap_or_else(|| std::env::temp_dir().into()),
    )
    .expect("tempdir");
    println!("napalm-overlay build benchmark: {n} clones, sets base+ganglia+mpi, {} threads, output in {}, load average at start {}",
        rayon::current_num_threads(), tmp.path().display(), load());

    // Warm-up (page cache, allocator), not counted.
    build(&conf, &tmp.path().join("warm"), None);
    std::fs::remove_dir_all(tmp.path().join("warm")).unwrap();

    let runs = 3;
    // Parallel and sequential runs interleaved, each output removed after it is timed, so
    // neither order nor a filling tmpfs favours one of them.
    let mut full = Vec::new();
    let mut full_cpu = Vec::new();
    let mut prepare = Vec::new();
    let mut seq = Vec::new();
    for i in 0..runs {
        let out = tmp.path().join(format!("full{i}"));
        let (t, c) = (Instant::now(), cpu());
        let r = build(&conf, &out, None);
        full.push(t.elapsed());
        full_cpu.push(cpu() - c);
        prepare.push(r.prepare);
        assert_eq!(r.built.len(), n);
        if i > 0 {
            std::fs::remove_dir_all(&out).unwrap();
        }
        let out = tmp.path().join(format!("seq{i}"));
        let t = Instant::now();
        build(&conf, &out, Some(1));
        seq.push(t.elapsed());
        std::fs::remove_dir_all(&out).unwrap();
    }
    let mut nochange = Vec::new();
    let mut nochange_cpu = Vec::new();
    for _ in 0..7 {
        let (t, c) = (Instant::now(), cpu());
        let r = build(&conf, &tmp.path().join("full0"), None);
        nochange.push(t.elapsed());
        nochange_cpu.push(cpu() - c);
        assert_eq!((r.built.len(), r.unchanged.len()), (0, n));
    }
    // I/O floor: the same entries written with the fewest calls.
    let per_clone: Vec<(String, Vec<Item>)> = (1..=n)
        .map(|i| {
            let name = format!("clone{i:04}");
            let items = items_of(&tmp.path().join("full0").join(&name));
            (name, items)
        })
        .collect();
    let files_per_clone = per_clone[0].1.len();
    let mut floor = Vec::new();
    for i in 0..runs {
        let out = tmp.path().join(format!("floor{i}"));
        std::fs::create_dir(&out).unwrap();
        let t = Instant::now();
        per_clone.par_iter().for_each(|(name, items)| {
            let d = out.join(name);
            std::fs::create_dir(&d).unwrap();
            for item in items {
                match item {
                    Item::Dir(rel) => std::fs::create_dir(d.join(rel)).unwrap(),
                    Item::File(rel, data) => std::fs::write(d.join(rel), data).unwrap(),
                    Item::Link(rel, target) => {
                        std::os::unix::fs::symlink(target, d.join(rel)).unwrap()
                    }
                }
            }
        });
        floor.push(t.elapsed());
        std::fs::remove_dir_all(&out).unwrap();
    }
    let mut shared = Vec::new();
    for i in 0..runs {
        let out = tmp.path().join(format!("shared{i}"));
        let t = Instant::now();
        build_full(&conf, &out, None, Outputs::default(), true);
        shared.push(t.elapsed());
        if i > 0 {
            std::fs::remove_dir_all(&out).unwrap();
        }
    }
    let mut shared_noch = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let r = build_full(
            &conf,
            &tmp.path().join("shared0"),
            None,
            Outputs::default(),
            true,
        );
        shared_noch.push(t.elapsed());
        assert_eq!(r.built.len(), 0);
    }
    let mut archives = Vec::new();
    for i in 0..runs {
        let out = tmp.path().join(format!("arch{i}"));
        let t = Instant::now();
        build_with(
            &conf,
            &out,
            None,
            Outputs {
                dir: false,
                cpio: true,
                tar_gz: true,
            },
        );
        archives.push(t.elapsed());
        std::fs::remove_dir_all(&out).unwrap();
    }
    let mut engine = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let cluster = Config::parse("bench.conf", &conf, &Limits::default())
            .and_then(|c| c.resolve())
            .expect("config");
        let sets = SetLibrary::new(vec![napalm_overlay::default_sets_dir()]);
        let layers = LayerBuilder::new(&cluster, &sets, tmp.path().join("unused"))
            .identity(Identity::from_secret(b"bench"))
            .render_all()
            .expect("render");
        // Cluster files compressed once, as the builder does.
        let first = layers[0].1.as_ref().expect("layer");
        let shared: Vec<_> = [
            "etc/hosts",
            "etc/ssh/ssh_known_hosts",
            "etc/openmpi/openmpi-default-hostfile",
        ]
        .iter()
        .filter_map(|p| match first.entries.get(*p) {
            Some(napalm_overlay::layer::Entry::File { meta, data }) => {
                Some((p.to_string(), *meta, data.clone()))
            }
            _ => None,
        })
        .collect();
        let tail = napalm_overlay::tarball::SharedTail::new(shared).expect("tail");
        let bytes: usize = layers
            .par_iter()
            .map(|(_, l)| {
                let l = l.as_ref().expect("layer");
                napalm_overlay::cpio::to_vec(l).len()
                    + napalm_overlay::tarball::to_vec_with(l, Some(&tail))
                        .expect("tar")
                        .len()
            })
            .sum();
        assert!(bytes > 0);
        engine.push(t.elapsed());
    }
    let one_clone = {
        let out = tmp.path().join("one");
        let c = conf.replace(&format!("clone[{:04}-{:04}]", 1, n), "clone0001");
        let t = Instant::now();
        build(&c, &out, Some(1));
        t.elapsed()
    };

    let (full_m, seq_m, noch_m, floor_m) =
        (median(full), median(seq), median(nochange), median(floor));
    println!(
        "entries per clone (dirs, files, links of the directory form + 3 files): {files_per_clone}"
    );
    println!(
        "full build, parallel          {}  (median of {runs}; prepare {})  goal < 1000 ms: {}",
        ms(full_m),
        ms(median(prepare)),
        if full_m < Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  CPU time of it (user+sys)   {}  (over 2 cores: >= {} wall on an idle machine)",
        ms(median(full_cpu.clone())),
        ms(median(full_cpu) / 2)
    );
    println!(
        "  baseline: sequential        {}  (1 thread; parallel speed-up x{:.2})",
        ms(seq_m),
        seq_m.as_secs_f64() / full_m.as_secs_f64()
    );
    println!(
        "  baseline: I/O floor         {}  (same bytes, std::fs only; engine overhead x{:.2})",
        ms(floor_m),
        full_m.as_secs_f64() / floor_m.as_secs_f64()
    );
    println!(
        "  engine only, in memory      {}  (render + cpio + tar.gz, nothing written)",
        ms(median(engine))
    );
    println!(
        "  archives only (cpio+tar.gz) {}  (no directory form)",
        ms(median(archives))
    );
    println!(
        "  one clone, from scratch     {}  (thesis listing 4.1: 370 ms for one clone)",
        ms(one_clone)
    );
    println!(
        "  per clone in the full build {:8.3} ms",
        full_m.as_secs_f64() * 1000.0 / n as f64
    );
    println!("full build, shared cluster layer {}  (all 3 forms; /etc/hosts, known_hosts, hostfile once in _cluster-*)  goal < 1000 ms: {}",
        ms(median(shared.clone())), if median(shared) < Duration::from_secs(1) { "met" } else { "MISSED" });
    println!("  its no-change rebuild       {}", ms(median(shared_noch)));
    println!(
        "no-change rebuild CPU time   {}  (user+sys, 10 ms ticks, median of 7)",
        ms(median(nochange_cpu))
    );
    println!("load average at end {}", load());
    println!("no-change rebuild             {}  (median of 7; load+resolve+hash+compare)  goal < 50 ms: {}",
        ms(noch_m), if noch_m < Duration::from_millis(50) { "met" } else { "MISSED" });
}
