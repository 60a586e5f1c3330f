//! Clones whose RAM comes from their host's huge page pool (`napalm-coordinator
//! --guest-hugepages`): real QEMU (TCG) clones on the grid's two agents, the pool raised
//! by the grid for them (`GridOptions::hugepage_pool`) and given back after; each agent
//! reports the pool and the coordinator places such clones by it.

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

/// `napalmctl deploy` of one QEMU clone of `memory` named `name`: its output, stdout
/// then stderr, and whether it succeeded.
fn deploy_one(g: &Grid, name: &str, memory: &str) -> (bool, String) {
    let out = g
        .napalmctl(&[
            "--output",
            "json",
            "deploy",
            "--memory",
            memory,
            "--hypervisor",
            "qemu",
            "--name",
            name,
            "--count",
            "1",
        ])
        .expect("napalmctl deploy");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn clones_take_their_ram_from_the_huge_page_pool_are_placed_by_it_and_a_short_pool_fails_in_libvirts_words(
) {
    let opts = GridOptions {
        hugepage_pool: Some(2 * (128 << 20)),
        ..Default::default()
    };
    let g = Grid::start(opts, "gridh").expect("starting the grid");
    // Each agent reports the host's pool, as libvirt counts it.
    let pool_mib = meminfo("HugePages_Total:").expect("HugePages_Total")
        * meminfo("Hugepagesize:").expect("Hugepagesize")
        / 1024;
    assert!(pool_mib >= 256, "the grid reserved 256 MiB: {pool_mib} MiB");
    let out = g
        .napalmctl(&["--output", "json", "agents"])
        .expect("napalmctl agents");
    let agents: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("napalmctl agents prints JSON");
    assert_eq!(agents.len(), 2, "{agents:?}");
    for a in &agents {
        assert_eq!(a["hugepages_mib"], pool_mib, "{a}");
    }

    // A clone larger than the whole pool is placed nowhere: refused before anything
    // starts, saying why.
    let too_big = format!("{}M", pool_mib + 128);
    let (ok, text) = deploy_one(&g, "gridh-huge", &too_big);
    assert!(
        !ok,
        "a {too_big} clone deployed with a pool of {pool_mib} MiB:\n{text}"
    );
    for said in [
        "MiB of huge pages",
        &format!("its huge page pool holds {pool_mib} MiB"),
        "vm.nr_hugepages",
        "nothing was written",
    ] {
        assert!(
            text.contains(said),
            "the refusal does not say {said:?}:\n{text}"
        );
    }
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

    // A clone each agent's count of the pool lets through, but what is left of it cannot
    // hold (both agents share this host's pool, and the clones before took it): neither
    // agent can start it, and the deploy says why in libvirt's words.
    let free = meminfo("HugePages_Free:").expect("HugePages_Free in /proc/meminfo");
    let memory = format!("{}M", (2 * (free + 1)).max(128));
    let (ok, text) = deploy_one(&g, "gridh-big", &memory);
    assert!(
        !ok,
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
