//! Boot slots (`napalm-coordinator --boot-concurrency`): a clone's domain is created only
//! when its agent has a slot free, and the slot is held until the clone registers. Real
//! QEMU (TCG) clones on the grid's two agents, one slot each.

use std::collections::BTreeMap;

use napalm_integration::grid::{Grid, GridOptions};

use crate::bench::deploy_with;

#[test]
fn with_one_slot_per_agent_each_clone_boots_once_the_one_before_registered() {
    let opts = GridOptions {
        coordinator_args: vec!["--boot-concurrency".into(), "1".into()],
        ..Default::default()
    };
    let g = Grid::start(opts, "gridq").expect("starting the grid");
    let d = deploy_with(&g, "gridq", 4, "128M");
    // Per agent, its clones as (QEMU started, registered), in the order they started
    // (seconds since the deploy began).
    let mut by_agent: BTreeMap<String, Vec<(String, f64, f64)>> = BTreeMap::new();
    for c in g.clones("gridq").expect("napalmctl clones") {
        let name = c["clone"].as_str().expect("a clone name").to_owned();
        let at = |phase: &str| {
            d.reached
                .get(&name)
                .and_then(|p| p.get(phase))
                .copied()
                .unwrap_or_else(|| panic!("{name}: no {phase} time in {:?}", d.reached))
        };
        let (qemu, registered) = (at("qemu"), at("registered"));
        by_agent
            .entry(c["agent"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push((name, qemu, registered));
    }
    assert!(
        by_agent.values().any(|v| v.len() >= 2),
        "no agent got two clones to order: {by_agent:?}"
    );
    for (agent, clones) in &mut by_agent {
        clones.sort_by(|a, b| a.1.total_cmp(&b.1));
        for w in clones.windows(2) {
            let ((before, _, registered), (next, started, _)) = (&w[0], &w[1]);
            // The registration is reported up to a second after it happened (the deploy
            // lists its clones once a second while others wait for a slot); without
            // slots both clones of an agent start within a second or two and register
            // 4-10 s later.
            assert!(
                *started >= registered - 1.5,
                "on agent {agent}, {next}'s QEMU started at {started:.1} s, before {before} \
                 registered at {registered:.1} s: {clones:?}"
            );
            let told = d.messages.get(next).into_iter().flatten().any(|m| {
                m.starts_with("waiting to boot: 1 clones booting on ") && m.ends_with("(1 at once)")
            });
            assert!(
                told,
                "{next} was not told it waits for a slot: {:?}",
                d.messages.get(next)
            );
        }
    }
}
