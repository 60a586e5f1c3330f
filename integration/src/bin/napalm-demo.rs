//! `napalm-demo`: the README's main job. Builds the grid of [`napalm_integration::grid`]
//! on this machine (server namespace with napalm-coordinator and nfs-ganesha, two agent
//! namespaces found by mDNS, a private bridge) on the cluster PKI (agents enrolled with
//! join tokens, mutual TLS, clones registering over HTTPS), runs `napalmctl deploy --count N` with its
//! progress bars, prints the final table (clone, agent, address, phase, boot time) and the
//! OpenMPI hostfile clone 1 was given and where to look (the coordinator's web view and
//! Ganglia's web frontend over Debian's gmetad, both on the server inside the grid), then
//! tears everything down (`--keep` waits for Enter first).
//!
//! `--hugepages`: the clones' RAM from a huge page pool the demo reserves (and touches) for
//! them before the deploy and gives back at the end (`--guest-hugepages`; README "Clones'
//! RAM from a huge page pool"). Not by default: on this machine touching the pool costs
//! more than the one deploy it serves saves (it pays off on a host that keeps its pool).
//!
//! Clones start from their agent's template (`--boot-from-template true`; README "Clones
//! started from a template"): each agent boots one guest of the clones' shape, saves it
//! once napalm-init waits for its identity, and starts each clone by restoring it.
//! `--cold`: every clone boots its kernel, as without templates.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use napalm_integration::ganglia::{Ganglia, CLONES_CLUSTER};
use napalm_integration::grid::{Grid, GridOptions, HTTPS};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let keep = args.iter().any(|a| a == "--keep");
    let hugepages = args.iter().any(|a| a == "--hugepages");
    let cold = args.iter().any(|a| a == "--cold");
    let count = args
        .iter()
        .position(|a| a == "--count")
        .and_then(|i| args.get(i + 1))
        .map(|c| {
            c.parse::<u32>()
                .with_context(|| format!("--count {c:?} is not a number"))
        })
        .transpose()?
        .unwrap_or(8);
    let t0 = Instant::now();
    println!(
        "napalm-demo: starting the grid (coordinator + nfs-ganesha, 2 agents, private bridge)..."
    );
    // The cluster PKI, as an operator runs it: agents enroll with join tokens and speak
    // mutual TLS only, napalmctl uses the admin identity the coordinator wrote, clones
    // register over HTTPS verifying the coordinator with the CA in their layer (the
    // busybox root plus the host's curl: busybox's wget cannot speak TLS to rustls).
    let defaults = GridOptions::default();
    // gmond and its metric modules too: with the `ganglia` layer each clone reports its
    // own metrics to the server's collector, as in the thesis's figure.
    let modules = napalm_integration::rootfs::gmond_modules().unwrap_or_default();
    let mut programs = vec![std::path::Path::new("/usr/bin/curl")];
    let mut layers = "base,mpi";
    if !modules.is_empty() {
        programs.push(std::path::Path::new("/usr/sbin/gmond"));
        layers = "base,mpi,ganglia";
    }
    let module_refs: Vec<&std::path::Path> = modules.iter().map(|p| p.as_path()).collect();
    let root = napalm_integration::rootfs::busybox_root_with(
        &defaults.cache,
        if modules.is_empty() {
            "curl"
        } else {
            "curl-gmond"
        },
        &programs,
        &module_refs,
    )
    .context("building the busybox root with curl and gmond")?;
    let module_signatures =
        napalm_integration::grid::module_signatures_from_env().map_err(anyhow::Error::msg)?;
    // Each clone has 256 MiB (the deploy below); 4 GiB must stay available beside them.
    let pool = u64::from(count) * (256 << 20);
    let hugepage_pool = if hugepages {
        let available = napalm_integration::grid::hugepages::meminfo("MemAvailable:")? * 1024;
        if available < pool + (4 << 30) {
            bail!(
                "--hugepages: {} MiB of huge pages for {count} clones would leave less than \
                 4 GiB of the {} MiB available; deploy fewer (--count) or leave --hugepages out",
                pool >> 20,
                available >> 20
            );
        }
        println!(
            "napalm-demo: the clones' RAM from {} MiB of huge pages, reserved and touched now, given back at the end",
            pool >> 20
        );
        Some(pool)
    } else {
        None
    };
    let mut coordinator_args = defaults.coordinator_args.clone();
    if !cold {
        coordinator_args.extend(["--boot-from-template".to_owned(), "true".to_owned()]);
    }
    let opts = GridOptions {
        // `NAPALM_KEEP_GRID`: the grid's directory (logs, agents' state) stays.
        keep: std::env::var_os("NAPALM_KEEP_GRID").is_some(),
        hugepage_pool,
        coordinator_args,
        trust_cert_ttl: Some(Duration::from_secs(24 * 3600)),
        module_signatures,
        register_over_https: true,
        insecure_plain: false,
        root: Some(root),
        ..defaults
    };
    let grid = Grid::start(opts, "demo").context("starting the grid")?;
    println!(
        "napalm-demo: grid up in {:.1} s; agents found by mDNS:",
        t0.elapsed().as_secs_f64()
    );
    print!(
        "{}",
        String::from_utf8_lossy(&grid.napalmctl(&["agents"])?.stdout)
    );
    // Ganglia watches from before the deploy, so it sees the clones come.
    let ganglia = match Ganglia::start(&grid) {
        Ok(g) => Some(g),
        Err(e) => {
            println!(
                "napalm-demo: no Ganglia dashboard ({}); scripts/setup installs gmetad, php-cli and ganglia-webfrontend",
                napalm_integration::error_chain(&e)
            );
            None
        }
    };
    let n = count.to_string();
    let t1 = Instant::now();
    println!("\n$ napalmctl deploy --count {n} --name demo --layers {layers} --hypervisor qemu --memory 256M");
    let st = grid
        .napalmctl_command()?
        .args([
            "deploy", "--count", &n, "--name", "demo", "--layers", layers,
        ])
        .args(["--hypervisor", "qemu", "--memory", "256M"])
        .stdin(Stdio::null())
        .status()
        .context("running napalmctl deploy")?;
    let took = t1.elapsed();
    println!("\n$ napalmctl clones --deployment demo");
    print!(
        "{}",
        String::from_utf8_lossy(&grid.napalmctl(&["clones", "--deployment", "demo"])?.stdout)
    );
    println!(
        "\nnapalm-demo: deploy --count {n} took {:.1} s to all registered (whole demo {:.1} s)",
        took.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    if !st.success() {
        bail!(
            "napalmctl deploy failed ({st}); logs in {}/log",
            grid.dir.display()
        );
    }
    let first = grid.clone_addr(1);
    if grid.wait_clone_shell(&first, Duration::from_secs(30)) {
        println!(
            "\nOpenMPI hostfile of the grid (/etc/openmpi/openmpi-default-hostfile on demo-01):"
        );
        print!(
            "{}",
            grid.clone_sh(
                &first,
                "grep -v '^#' /etc/openmpi/openmpi-default-hostfile",
                Duration::from_secs(20)
            )?
        );
    }
    let web = format!("https://{}:{HTTPS}/", grid.server.addr);
    let ca = grid.admin_identity().join("ca.crt");
    println!(
        "\nnapalm-demo: where to look (on the grid's private network, inside its namespaces):"
    );
    println!("  coordinator web view   {web}");
    if let Some(g) = &ganglia {
        println!("  Ganglia (gmetad + ganglia-webfrontend)   {}", g.url());
        println!(
            "    the clones, as their own gmonds report them   {}&m=load_one",
            g.cluster_url(CLONES_CLUSTER)
        );
        for i in 0..grid.agent_hosts.len() {
            println!(
                "    {} and its clones, as the hypervisor sees them   {}",
                grid.agent_cluster(i),
                g.cluster_url(&grid.agent_cluster(i))
            );
        }
    }
    println!(
        "  from this machine, e.g.: ip netns exec {} curl -s --cacert {} {web}v1/view.json",
        grid.client.ns,
        ca.display()
    );
    println!(
        "  or a screenshot:        ip netns exec {} chromium --headless --no-sandbox --ignore-certificate-errors --screenshot=/tmp/napalm.png --window-size=1280,1800 URL",
        grid.client.ns
    );
    if keep {
        println!(
            "\nnapalm-demo: grid kept running (coordinator {}); press Enter to tear it down.",
            grid.coordinator_addr()
        );
        std::io::stdout().flush().ok();
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).ok();
    }
    println!("napalm-demo: tearing down");
    drop(ganglia);
    drop(grid);
    Ok(())
}
