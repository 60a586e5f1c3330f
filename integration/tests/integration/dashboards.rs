//! Issue #14, "watching the nodes" on a real grid: Ganglia as the thesis shows it. Eight
//! QEMU clones boot on the two agents; Debian's `gmetad` polls both agents' gmond XML and
//! Debian's `ganglia-webfrontend` (PHP's built-in server) renders it, both in the grid's
//! server namespace ([`napalm_integration::ganglia`]); headless Chromium (Debian's
//! `chromium`, in the server namespace too) loads each agent's cluster page, and every clone
//! must be on its agent's with its graph; then the coordinator's own web view of the same
//! run, with every clone, its phase and address. Screenshots are kept as artifacts.
//!
//! The clones also report themselves, as the thesis's figure has it: the root is the busybox
//! root with Debian's gmond and its metric modules added, the deploy stacks the `ganglia`
//! template set, and each clone's gmond sends to the server's collector, which gmetad polls
//! as the cluster `napalm-clones`: every clone is listed there under its own name, from its
//! own address, with the memory and boot time it measured inside.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use napalm_integration::ganglia::{Ganglia, CLONES_CLUSTER};
use napalm_integration::grid::{clone_address, Grid, GridOptions, HTTP};
use napalm_integration::proc::{wait_for, Daemon};

/// Where screenshots are copied for whoever looks at a run.
const ARTIFACTS: &str = "/tmp/napalm-artifacts";

/// Runs headless Chromium in `g`'s server namespace on `url` with `args` (`--dump-dom`,
/// `--screenshot=FILE`…); its stdout goes to `out`. Killed by PID after 90 s.
fn chromium(g: &Grid, url: &str, args: &[String], out: &Path) -> std::process::ExitStatus {
    let profile = tempfile::Builder::new()
        .prefix("chromium-")
        .tempdir_in(&g.dir)
        .expect("chromium profile dir");
    let child = g
        .server
        .command("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--disable-crash-reporter",
            "--disable-breakpad",
            "--window-size=1280,1800",
            // Time for the page's scripts and its graphs (rrdtool through graph.php).
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).expect("chromium output file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium (Debian package chromium)");
    let mut chromium = Daemon(child);
    let status = wait_for(Duration::from_secs(90), || {
        chromium.0.try_wait().ok().flatten()
    });
    match status {
        Some(s) => s,
        None => {
            chromium.kill();
            panic!("chromium did not finish within 90 s on {url}");
        }
    }
}

/// The first 3000 characters of `s`, for failure messages.
/// A screenshot of `url` by headless Chromium in `g`'s server namespace, written to
/// `dir/name`, which must be a PNG of some size; copied to [`ARTIFACTS`]. Returns the copy.
fn screenshot(g: &Grid, url: &str, dir: &Path, name: &str) -> PathBuf {
    let shot = dir.join(name);
    let st = chromium(
        g,
        url,
        &[format!("--screenshot={}", shot.display())],
        &dir.join(format!("{name}.out")),
    );
    let png = std::fs::read(&shot).unwrap_or_default();
    assert!(
        st.success() && png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "chromium ({st}) left no screenshot of {url} ({} bytes)",
        png.len()
    );
    let _ = std::fs::create_dir_all(ARTIFACTS);
    let kept = PathBuf::from(ARTIFACTS).join(name);
    let _ = std::fs::copy(&shot, &kept);
    kept
}

fn head(s: &str) -> &str {
    s.char_indices().nth(3000).map_or(s, |(i, _)| &s[..i])
}

/// `dom` without its `<script>` elements: what the page shows, not the code that built it.
fn without_scripts(dom: &str) -> String {
    let mut out = String::new();
    let mut rest = dom;
    while let Some(i) = rest.find("<script") {
        out += &rest[..i];
        match rest[i..].find("</script>") {
            Some(j) => rest = &rest[i + j + "</script>".len()..],
            None => return out,
        }
    }
    out + rest
}

#[test]
fn ganglia_web_frontend_shows_the_8_clones_in_chromium() {
    let t0 = Instant::now();
    // The busybox root with gmond (its libraries follow by ldd) and the metric modules
    // it loads at start.
    let modules = napalm_integration::rootfs::gmond_modules()
        .unwrap_or_else(|e| panic!("{}", napalm_integration::error_chain(&e)));
    let module_refs: Vec<&Path> = modules.iter().map(PathBuf::as_path).collect();
    let defaults = GridOptions::default();
    let root = napalm_integration::rootfs::busybox_root_with(
        &defaults.cache,
        "gmond",
        &[Path::new("/usr/sbin/gmond")],
        &module_refs,
    )
    .expect("the busybox root with gmond");
    let opts = GridOptions {
        keep: std::env::var_os("NAPALM_KEEP_GRID").is_some(),
        root: Some(root),
        ..defaults
    };
    let mut g = Grid::start(opts, "gweb").expect("starting the grid");
    println!(
        "dashboards: grid up in {:.1} s (dir {})",
        t0.elapsed().as_secs_f64(),
        g.dir.display()
    );
    // Ganglia first, as an operator would run it: it sees the clones come.
    let ganglia = match Ganglia::start(&g) {
        Ok(x) => x,
        Err(e) => panic!(
            "starting gmetad and the web frontend: {}",
            napalm_integration::error_chain(&e)
        ),
    };

    let t1 = Instant::now();
    // The wall clock when the deploy began, read then: the clones' boot times are wall
    // clock readings too (the RTC QEMU gives them is the host's).
    let began_wall = unix_seconds(SystemTime::now());
    let out = g
        .napalmctl(&[
            "--output",
            "json",
            "deploy",
            "--memory",
            "256M",
            "--hypervisor",
            "qemu",
            "--layers",
            "base,ganglia",
            "--name",
            "gweb",
            "--count",
            "8",
        ])
        .expect("napalmctl deploy");
    assert!(
        out.status.success(),
        "deploy failed ({:?}): {}\n{}\nlogs in {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        g.dir.display()
    );
    println!(
        "dashboards: 8 clones registered in {:.1} s",
        t1.elapsed().as_secs_f64()
    );
    let clones = g.clones("gweb").expect("napalmctl clones");
    let names: Vec<String> = (1..=8).map(|i| format!("gweb-{i:02}")).collect();
    assert_eq!(clones.len(), 8, "{clones:#?}");
    for c in &clones {
        assert!(
            c["phase"]
                .as_str()
                .is_some_and(|p| p.eq_ignore_ascii_case("registered")),
            "{c}"
        );
        assert!(
            names.iter().any(|n| c["clone"] == n.as_str()),
            "unexpected clone {c}"
        );
    }

    let cluster_of = |xml: &str, cluster: &str| -> Option<String> {
        let c = xml.split(&format!("<CLUSTER NAME=\"{cluster}\"")).nth(1)?;
        Some(c.split("</CLUSTER>").next()?.to_owned())
    };
    // gmetad's tree gets every clone from the agent that runs it, each agent a cluster
    // of its own named after its host (polled every 5 s).
    let agent_clusters: Vec<String> = (0..2).map(|i| g.agent_cluster(i)).collect();
    let agents_tree = |xml: &str| -> String {
        agent_clusters
            .iter()
            .filter_map(|c| cluster_of(xml, c))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let seen = wait_for(Duration::from_secs(60), || {
        let xml = ganglia.xml();
        let tree = agents_tree(&xml);
        names
            .iter()
            .all(|n| tree.contains(&format!("<HOST NAME=\"{n}\"")))
            .then_some(xml)
    });
    let Some(xml) = seen else {
        let xml = ganglia.xml();
        let logs = ganglia.logs();
        panic!(
            "gmetad never listed the 8 clones under the agents' clusters:\n{xml}\n{logs}\n{}",
            g.logs()
        );
    };
    // Each agent's cluster holds the agent itself and the clones it runs.
    let mut cluster_of_clone = std::collections::BTreeMap::new();
    for c in &agent_clusters {
        let tree = cluster_of(&xml, c).unwrap_or_else(|| panic!("no cluster {c} in {xml}"));
        assert!(
            tree.contains(&format!("<HOST NAME=\"{c}\"")),
            "agent {c} not in its cluster: {tree}"
        );
        for n in &names {
            if tree.contains(&format!("<HOST NAME=\"{n}\"")) {
                assert!(
                    cluster_of_clone.insert(n.clone(), c.clone()).is_none(),
                    "{n} reported by both agents"
                );
            }
        }
    }
    // The clones' own gmonds, through the collector: each clone under its own name, from
    // its own address, with what it measured inside (its memory, not the host's 24 GB; its
    // boot, after the deploy began).
    // 5 s of slack: the RTC counts whole seconds and btime is rounded down.
    let deploy_began = began_wall as u64 - 5;
    let host_of = |tree: &str, n: &str| -> Option<String> {
        let h = tree.split(&format!("<HOST NAME=\"{n}\"")).nth(1)?;
        Some(h.split("</HOST>").next()?.to_owned())
    };
    let metric = |host: &str, m: &str| -> Option<String> {
        let v = host.split(&format!("<METRIC NAME=\"{m}\" VAL=\"")).nth(1)?;
        v.split('"').next().map(str::to_owned)
    };
    let reported = wait_for(Duration::from_secs(120), || {
        let xml = ganglia.xml();
        let tree = cluster_of(&xml, CLONES_CLUSTER)?;
        names
            .iter()
            .all(|n| {
                host_of(&tree, n).is_some_and(|h| {
                    metric(&h, "mem_total").is_some() && metric(&h, "boottime").is_some()
                })
            })
            .then_some(tree)
    });
    let Some(tree) = reported else {
        let xml = ganglia.xml();
        panic!(
            "the clones' own gmonds did not all report to the collector within 120 s:\n{}\n{}",
            cluster_of(&xml, CLONES_CLUSTER)
                .unwrap_or_else(|| format!("no {CLONES_CLUSTER} in {xml}")),
            ganglia.logs()
        );
    };
    let mut boots = Vec::new();
    for c in &clones {
        let name = c["clone"].as_str().expect("clone name");
        let host = host_of(&tree, name).expect("listed");
        let addr = clone_address(c);
        assert!(
            host.contains(&format!("IP=\"{addr}\"")),
            "{name} reported from another address than {addr}: {host}"
        );
        let mem_kb: f64 = metric(&host, "mem_total")
            .and_then(|v| v.parse().ok())
            .expect("mem_total");
        assert!(
            (100_000.0..=262_144.0).contains(&mem_kb),
            "{name}'s own mem_total is {mem_kb} KiB: not a 256 MiB guest"
        );
        let boot: u64 = metric(&host, "boottime")
            .and_then(|v| v.parse().ok())
            .expect("boottime");
        boots.push((name.to_owned(), boot));
    }
    if let Some((name, boot)) = boots.iter().find(|(_, b)| *b < deploy_began) {
        // How far the host's wall clock moved apart from its monotonic clock since the
        // deploy began (0 unless something stepped it).
        let step = unix_seconds(SystemTime::now()) - began_wall - t1.elapsed().as_secs_f64();
        // The clone's own view of its clock: what the kernel said when it set it.
        let addr = clones
            .iter()
            .find(|c| c["clone"] == name.as_str())
            .map(clone_address)
            .unwrap_or_default();
        let inside = g
            .clone_sh(
                &addr,
                "date +%s; cat /proc/uptime; grep btime /proc/stat; \
                 dmesg | grep -i -E 'clock|rtc|tsc|jiffies'",
                Duration::from_secs(20),
            )
            .unwrap_or_else(|e| napalm_integration::error_chain(&e));
        let all: Vec<String> = boots
            .iter()
            .map(|(n, b)| format!("{n} {:+.0} s", *b as f64 - began_wall))
            .collect();
        panic!(
            "{name} says it booted at {boot}, before the deploy began ({began_wall:.0}, less \
             5 s); the clones' boot times from the deploy's start: {}; the host's wall clock \
             stepped by {step:+.1} s since (host now {:.0}); inside {name}:\n{inside}",
            all.join(", "),
            unix_seconds(SystemTime::now())
        );
    }
    let first = clone_address(&clones[0]);
    crate::clone_machine::keeps_time_off_its_tsc(&g, &first);
    crate::clone_machine::runs_the_shipped_qboot(&names[0]);
    crate::clone_machine::is_a_q35_with_msix(&g, &first, &names[0]);
    let after: Vec<f64> = boots.iter().map(|(_, b)| *b as f64 - began_wall).collect();
    println!(
        "dashboards: the 8 clones report their own metrics through the collector \
         ({CLONES_CLUSTER}); they booted {:+.0} to {:+.0} s after the deploy began",
        after.iter().copied().fold(f64::INFINITY, f64::min),
        after.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    );
    // Each clone's host.image.id (OpenTelemetry's host resource) is the shared root's
    // digest: one value for the 8, and not the image they boot (base.img, with layers
    // over NFS).
    // (in the agents' clusters: the clones' own gmonds send no such attribute)
    let hypervisor_view = agents_tree(&xml);
    let image_id = |n: &str| {
        let host = hypervisor_view
            .split(&format!("<HOST NAME=\"{n}\""))
            .nth(1)?;
        let host = host.split("</HOST>").next()?;
        let v = host.split("NAME=\"host.image.id\" VAL=\"").nth(1)?;
        v.split('"').next().map(str::to_owned)
    };
    let ids: std::collections::BTreeSet<Option<String>> =
        names.iter().map(|n| image_id(n)).collect();
    let base = std::process::Command::new("sha256sum")
        .arg(g.dir.join("base.img"))
        .output()
        .expect("sha256sum");
    let base = String::from_utf8_lossy(&base.stdout)
        .split_whitespace()
        .next()
        .map(|h| format!("sha256:{h}"));
    assert_eq!(ids.len(), 1, "one root, one host.image.id: {ids:?}");
    let id = ids.into_iter().next().flatten();
    assert!(
        id.as_deref()
            .is_some_and(|i| i.starts_with("sha256:") && i.len() == 71),
        "host.image.id: {id:?}"
    );
    assert_ne!(
        id, base,
        "host.image.id is the root's digest, not the boot image's"
    );
    // gmetad writes an RRD per host and numeric metric (15 s steps): wait until every
    // clone's CPU time has a value in it, so the page graphs measured data.
    let rrd = |n: &str| {
        let cluster = cluster_of_clone.get(n).map_or("?", String::as_str);
        ganglia
            .dir
            .join(format!("rrds/{cluster}/{n}/vm_cpu_time.rrd"))
    };
    let measured = |n: &str| {
        let out = std::process::Command::new("rrdtool")
            .arg("fetch")
            .arg(rrd(n))
            .args(["AVERAGE", "--start", "-300"])
            .output();
        out.ok().is_some_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_once(": ").map(|(_, v)| v.trim()))
                .any(|v| !v.is_empty() && !v.contains("nan"))
        })
    };
    if wait_for(Duration::from_secs(90), || {
        names.iter().all(|n| measured(n)).then_some(())
    })
    .is_none()
    {
        let unmeasured: Vec<&String> = names.iter().filter(|n| !measured(n)).collect();
        panic!(
            "no CPU time in the RRDs of {unmeasured:?} within 90 s ({}):\n{}",
            rrd("NAME").display(),
            ganglia.logs()
        );
    }

    // Each agent's cluster page in a real browser: every clone it runs has its graph,
    // named, linked. Graphs since Ganglia started: the clones' boot shows, not an hour of
    // nothing. The first agent's page is the one kept as a screenshot.
    let mut pages = Vec::new();
    for c in &agent_clusters {
        let url = ganglia.cluster_url_since_start(c);
        let dom_file = ganglia.dir.join(format!("cluster-{c}-dom.html"));
        let st = chromium(&g, &url, &["--dump-dom".into()], &dom_file);
        let dom = std::fs::read_to_string(&dom_file).unwrap_or_default();
        let shown = without_scripts(&dom);
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| cluster_of_clone.get(*n) == Some(c))
            .filter(|n| {
                !(shown.contains(&format!("h={n}&amp;"))
                    && shown.contains(&format!("title=\"{n}\"")))
            })
            .collect();
        if !missing.is_empty() || !st.success() {
            let logs = ganglia.logs();
            panic!(
                "chromium ({st}) did not show {missing:?} on {url}; DOM in {}:\n{}\n{logs}\n{}",
                dom_file.display(),
                head(&dom),
                g.logs()
            );
        }
        assert!(
            shown.contains(&format!("{c} Cluster Report")),
            "not the cluster page: {}",
            head(&dom)
        );
        assert!(
            !shown.contains("There was an error collecting ganglia data"),
            "{shown}"
        );
        pages.push((url, shown));
    }
    let (url, shown) = pages.swap_remove(0);
    // One writer per cluster summary: gmetad refused no update for a second write in the
    // same second (two sources of one cluster name did that every second).
    let gmetad_log = std::fs::read_to_string(ganglia.dir.join("gmetad.log")).unwrap_or_default();
    let refused = gmetad_log
        .lines()
        .filter(|l| l.contains("illegal attempt to update"))
        .count();
    assert_eq!(
        refused,
        0,
        "gmetad refused {refused} RRD updates, e.g. {:?}",
        gmetad_log
            .lines()
            .find(|l| l.contains("illegal attempt to update"))
    );

    // The stacked graph of the page is an image rrdtool drew.
    let stacked = shown
        .split("src=\"stacked.php?")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .map(|q| format!("{}stacked.php?{}", ganglia.url(), q.replace("&amp;", "&")))
        .expect("the cluster page has its stacked graph");
    let stacked_png = ganglia.dir.join("stacked.png");
    let st = g
        .server
        .command("curl")
        .args(["-s", "--max-time", "60", "-o"])
        .arg(&stacked_png)
        .arg(&stacked)
        .stdin(Stdio::null())
        .status()
        .expect("curl runs");
    let png = std::fs::read(&stacked_png).unwrap_or_default();
    if !(st.success() && png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000) {
        // stacked.php prints the rrdtool command it would run with debug=1.
        let command = g
            .server
            .command("curl")
            .args(["-s", "--max-time", "60"])
            .arg(format!("{stacked}&debug=1"))
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!(
            "the stacked graph {stacked} is not an image (curl {st}, {} bytes: {:?}); \
             its command: {command}\n{}",
            png.len(),
            String::from_utf8_lossy(&png[..png.len().min(300)]),
            ganglia.logs()
        );
    }

    // The clones' own cluster page lists the 8 too, as reported by themselves, graphed by
    // a metric they report (load_one, Ganglia's usual one).
    let own_url = format!(
        "{}&m=load_one",
        ganglia.cluster_url_since_start(CLONES_CLUSTER)
    );
    let own_file = ganglia.dir.join("clones-dom.html");
    let st = chromium(&g, &own_url, &["--dump-dom".into()], &own_file);
    let own = without_scripts(&std::fs::read_to_string(&own_file).unwrap_or_default());
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !own.contains(&format!("h={n}&amp;")))
        .collect();
    if !(st.success() && missing.is_empty()) {
        let body = own.split("<body").nth(1).unwrap_or(&own);
        panic!(
            "chromium ({st}) did not show {missing:?} on {own_url} (DOM in {}):\n{}\n\
             gmetad's {CLONES_CLUSTER}:\n{}\n{}",
            own_file.display(),
            &body[..body.len().min(6000)],
            cluster_of(&ganglia.xml(), CLONES_CLUSTER).unwrap_or_default(),
            ganglia.logs()
        );
    }
    assert!(
        own.contains(&format!("{CLONES_CLUSTER} Cluster Report"))
            && !own.contains("There was an error collecting ganglia data"),
        "{}",
        head(&own)
    );
    screenshot(&g, &own_url, &ganglia.dir, "ganglia-clones.png");
    let kept = screenshot(&g, &url, &ganglia.dir, "ganglia-cluster.png");
    println!(
        "dashboards: Ganglia's pages with the 8 clones: screenshots {} and ganglia-clones.png",
        kept.display(),
    );

    // The coordinator's own web view of the same run, in the same browser: every clone
    // with its phase and address (the page polls the coordinator's view.json).
    let web = format!("http://{}:{HTTP}/", g.server.addr);
    let web_file = ganglia.dir.join("web-view-dom.html");
    let st = chromium(&g, &web, &["--dump-dom".into()], &web_file);
    let dom = std::fs::read_to_string(&web_file).unwrap_or_default();
    for c in &clones {
        let name = c["clone"].as_str().expect("clone name");
        let addr = clone_address(c);
        assert!(
            st.success() && dom.contains(&format!("data-clone=\"{name}\"")) && dom.contains(&addr),
            "chromium ({st}): {name} ({addr}) is not in the coordinator's web view {web} \
             (DOM in {}):\n{}",
            web_file.display(),
            head(&dom)
        );
    }
    assert!(dom.contains("registered"), "{}", head(&dom));
    let web_shot = screenshot(&g, &web, &ganglia.dir, "coordinator-web-view-grid.png");
    println!(
        "dashboards: the coordinator's web view lists the 8 clones: screenshot {}, {:.1} s in all",
        web_shot.display(),
        t0.elapsed().as_secs_f64()
    );
    drop(ganglia);
}

/// `t` as seconds since the Unix epoch.
fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}
