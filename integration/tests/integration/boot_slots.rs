//! Boot slots (`napalm-coordinator --boot-concurrency`): a clone's domain is created only
//! when its agent has a slot free, and the slot is held until the clone registers; an
//! undeploy, or a corrected deploy, meanwhile withdraws the clones still waiting. Real
//! QEMU (TCG) clones on the grid's two agents, one slot each.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use napalm_integration::grid::{Grid, GridOptions};

use crate::bench::deploy_with;

#[test]
fn with_one_slot_per_agent_each_clone_boots_once_the_one_before_registered() {
    let opts = GridOptions {
        coordinator_args: vec!["--boot-concurrency".into(), "1".into()],
        ..Default::default()
    };
    let mut g = Grid::start(opts, "gridq").expect("starting the grid");
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

    // A corrected deploy while clones wait for their slots (4 asked, then 2): the waiting
    // ones are not started by the first run, and the corrected deploy does not wait for
    // them to get slots (coordinator test `boot_slots::a_corrected_deploy_during…`).
    let (mut first, domains_of) = storm_of_4(&g, "gridq-c");
    let corrected = Instant::now();
    let out = g
        .napalmctl(&[
            "deploy",
            "--memory",
            "128M",
            "--hypervisor",
            "qemu",
            "--name",
            "gridq-c",
            "--count",
            "2",
        ])
        .expect("corrected deploy");
    let took = corrected.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "the corrected deploy failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = output_of(&mut first);
    let not_started = stdout
        .lines()
        .filter(|l| l.contains("not started: a newer deploy of the deployment took over"))
        .count();
    assert_eq!(
        not_started, 2,
        "the two waiting clones were not withdrawn (the corrected deploy took {took:.1} s):\n{stdout}"
    );
    let registered = g.clones("gridq-c").expect("napalmctl clones");
    assert_eq!(registered.len(), 2, "{registered:?}");
    assert!(
        registered.iter().all(|c| c["phase"]
            .as_str()
            .is_some_and(|p| p.eq_ignore_ascii_case("registered"))),
        "{registered:?}"
    );
    assert_eq!(domains_of().len(), 2, "{:?}", domains_of());
    eprintln!(
        "corrected deploy (4 → 2) with 2 clones booting and 2 waiting for a slot: {took:.1} s"
    );
    drop(domains_of);
    let out = g.napalmctl(&["undeploy", "gridq-c"]).expect("undeploy");
    assert!(out.status.success(), "{out:?}");

    // An undeploy while clones wait for their slots: they are not started, and the
    // undeploy does not wait for them to get slots (coordinator test
    // `boot_slots::an_undeploy_during_a_boot_storm…` has the same on the test driver).
    let (mut deploy, domains_of_gridq_w) = storm_of_4(&g, "gridq-w");
    let undeploy = Instant::now();
    let out = g.napalmctl(&["undeploy", "gridq-w"]).expect("undeploy");
    let took = undeploy.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "undeploy failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = output_of(&mut deploy);
    let not_started: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("not started: the deployment is being removed"))
        .collect();
    assert_eq!(
        not_started.len(),
        2,
        "the two waiting clones were not withdrawn (undeploy took {took:.1} s):\n{stdout}"
    );
    let left = domains_of_gridq_w();
    drop(domains_of_gridq_w);
    assert!(
        left.is_empty(),
        "domains outlived the undeploy: {left:?}\nthe deploy's output:\n{stdout}\n{}",
        g.logs()
    );
    eprintln!("undeploy with 2 clones booting and 2 waiting for a slot: {took:.1} s");
}

/// `napalmctl deploy` of 4 QEMU clones named `name` in the background, once the first two
/// run (one per agent, the two others waiting for a slot); with a listing of the
/// deployment's domains.
fn storm_of_4<'g>(
    g: &'g Grid,
    name: &'g str,
) -> (std::process::Child, impl Fn() -> Vec<String> + 'g) {
    let deploy = g
        .napalmctl_command()
        .expect("napalmctl")
        .args(["--output", "json", "deploy", "--memory", "128M"])
        .args(["--hypervisor", "qemu", "--name", name, "--count", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning napalmctl deploy");
    let prefix = format!("{name}-");
    let domains_of = move || -> Vec<String> {
        g.domains()
            .into_iter()
            .filter(|d| d.starts_with(&prefix))
            .collect()
    };
    let t = Instant::now();
    let mut seen = Vec::new();
    while seen.len() < 2 && t.elapsed() < Duration::from_secs(120) {
        seen = domains_of();
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        seen.len(),
        2,
        "one clone per agent should have started: {seen:?}"
    );
    (deploy, domains_of)
}

/// What the background `napalmctl` printed, once it ended.
fn output_of(child: &mut std::process::Child) -> String {
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut stdout)
        .expect("deploy output");
    let _ = child.wait();
    stdout
}
