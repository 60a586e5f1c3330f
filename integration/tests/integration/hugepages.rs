//! Clones whose RAM comes from their host's huge page pool (`napalm-coordinator
//! --guest-hugepages`): real QEMU (TCG) clones on the grid's two agents, the pool raised
//! by the grid for them (`GridOptions::hugepage_pool`) and given back after.

use napalm_integration::grid::hugepages::meminfo;
use napalm_integration::grid::{Grid, GridOptions};

use crate::bench::{deploy_with, qemu_pid};

/// Huge pages `pid` maps, MiB (smaps_rollup's `Private_Hugetlb` and `Shared_Hugetlb`).
fn hugetlb_mib(pid: u32) -> f64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/smaps_rollup: {e}"));
    rollup
        .lines()
        .filter(|l| l.starts_with("Private_Hugetlb:") || l.starts_with("Shared_Hugetlb:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum::<f64>()
        / 1024.0
}

#[test]
fn clones_take_their_ram_from_the_huge_page_pool_and_a_short_pool_fails_in_libvirts_words() {
    let opts = GridOptions {
        hugepage_pool: Some(2 * (128 << 20)),
        ..Default::default()
    };
    let g = Grid::start(opts, "gridh").expect("starting the grid");
    // Both register (deploy_with fails the test otherwise).
    deploy_with(&g, "gridh", 2, "128M");
    for i in 1..=2 {
        let name = format!("gridh-{i:02}");
        let pid = qemu_pid(&name).unwrap_or_else(|| panic!("no pid file for {name}'s QEMU"));
        // libvirt preallocates a hugepage-backed guest's RAM: all 128 MiB at start.
        let mib = hugetlb_mib(pid);
        assert!(
            mib >= 128.0,
            "{name}'s QEMU maps {mib} MiB of huge pages, not its 128 MiB of RAM"
        );
    }

    // A clone the pool cannot hold: neither agent can start it, and the deploy says why.
    let free = meminfo("HugePages_Free:").expect("HugePages_Free in /proc/meminfo");
    let memory = format!("{}M", (2 * (free + 1)).max(128));
    let out = g
        .napalmctl(&[
            "--output",
            "json",
            "deploy",
            "--memory",
            &memory,
            "--hypervisor",
            "qemu",
            "--name",
            "gridh-big",
            "--count",
            "1",
        ])
        .expect("napalmctl deploy");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "a {memory} clone deployed with {free} huge pages free:\n{text}"
    );
    assert!(
        text.contains("unable to map backing store for guest RAM"),
        "the failure does not say the RAM could not be had:\n{text}"
    );
    // The two clones before it are still registered.
    let clones = g.clones("gridh").expect("napalmctl clones");
    assert_eq!(clones.len(), 2, "{clones:?}");
    assert!(
        clones.iter().all(|c| c["phase"]
            .as_str()
            .is_some_and(|p| p.eq_ignore_ascii_case("registered"))),
        "{clones:?}"
    );
}
