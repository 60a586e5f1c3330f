//! The registry follows what agents run, on the libvirt test driver with the control loop
//! every 200 ms: a clone whose domain died is recorded `died` while it waits for its
//! restart, and its deployment degraded; a domain's state changed behind the control
//! plane (paused, started again outside) is recorded; a client's deploy replaces a clone
//! dead past its restart budget elsewhere.

use std::time::{Duration, Instant};

use napalm_coordinator::testing::{spec, TestGrid};
use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use napalm_proto::v1::*;

use crate::deploy::{run, running_on};
use crate::lifecycle::{clones, deploy, deployment, grid_looping, until};

type Client = CoordinatorServiceClient<tonic::transport::Channel>;

/// Two agents, the loop every 200 ms, `budget` restarts.
async fn grid(budget: u32) -> (TestGrid, Client) {
    let (g, c, _) = grid_looping(budget, Some(Duration::from_millis(200))).await;
    (g, c)
}

/// A clone's domain, as the test driver has it, changed by `f` behind the agent's back.
async fn behind_our_back(
    g: &TestGrid,
    i: usize,
    name: &str,
    f: impl FnOnce(&dyn napalm_agent::hypervisor::Hypervisor, &str) -> napalm_agent::error::Result<()>
        + Send
        + 'static,
) {
    let hv = std::sync::Arc::clone(g.agents[i].agent.hypervisor());
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || f(hv.as_ref(), &name))
        .await
        .expect("join")
        .expect("change the domain behind the agent's back");
}

/// The registry follows the domain within a pass or two: paused and resumed behind the
/// agent's back, its state is recorded; dead and waiting out its restart backoff, the
/// clone is recorded died (shut off, with what it waits for, its deployment degraded),
/// not left running; started again by someone else meanwhile, running again; and dead
/// once more, restarted when its backoff allows.
#[tokio::test]
async fn a_clone_is_recorded_as_its_domain_is_and_died_while_it_waits() {
    let (g, mut coord) = grid(2).await;
    assert_eq!(deploy(&mut coord, spec("wait1", 1)).await.succeeded, 1);
    let first = clones(&mut coord, "wait1").await.remove(0);
    let home = g
        .agents
        .iter()
        .position(|a| a.agent.id() == first.agent_id)
        .expect("placed on a grid agent");
    let state = |s: DomainState| move |c: &[Clone]| c[0].domain_state == s as i32;

    behind_our_back(&g, home, "wait1-01", |hv, n| hv.suspend(n)).await;
    until(
        &mut coord,
        "wait1",
        Duration::from_secs(5),
        "recorded paused",
        state(DomainState::Paused),
    )
    .await;
    behind_our_back(&g, home, "wait1-01", |hv, n| hv.resume(n)).await;
    until(
        &mut coord,
        "wait1",
        Duration::from_secs(5),
        "recorded running",
        state(DomainState::Running),
    )
    .await;

    let shutoff =
        |hv: &dyn napalm_agent::hypervisor::Hypervisor, n: &str| hv.shutdown(n, Duration::ZERO);
    behind_our_back(&g, home, "wait1-01", shutoff).await;
    until(
        &mut coord,
        "wait1",
        Duration::from_secs(10),
        "restarted",
        |c| c[0].restarts == 1 && c[0].phase == ClonePhase::Running as i32,
    )
    .await;
    // Dies again at once: its second restart waits 4 s after the first.
    behind_our_back(&g, home, "wait1-01", shutoff).await;
    let killed = Instant::now();
    let c = until(
        &mut coord,
        "wait1",
        Duration::from_secs(3),
        "recorded died",
        |c| c[0].phase == ClonePhase::Died as i32,
    )
    .await;
    eprintln!("recorded died {:?} after the kill", killed.elapsed());
    assert_eq!(c[0].domain_state, DomainState::Shutoff as i32, "{:?}", c[0]);
    assert_eq!(c[0].restarts, 1, "{:?}", c[0]);
    assert!(
        c[0].last_action
            .contains("restarts 4 s after its last restart (restart 2 of 2)"),
        "{:?}",
        c[0]
    );
    // The pass after records the deployment's state.
    state_until(&mut coord, "wait1", "degraded", |s| {
        s == DeploymentState::Degraded
    })
    .await;
    // Started by someone else while it waits: it runs, and is recorded so.
    behind_our_back(&g, home, "wait1-01", |hv, n| hv.start(n)).await;
    let c = until(
        &mut coord,
        "wait1",
        Duration::from_secs(5),
        "running again",
        |c| c[0].phase == ClonePhase::Running as i32,
    )
    .await;
    assert_eq!(c[0].domain_state, DomainState::Running as i32, "{:?}", c[0]);
    assert!(
        c[0].last_action.contains("its domain runs again"),
        "{:?}",
        c[0]
    );
    assert_eq!(c[0].restarts, 1, "not a restart of ours");
    // Dead again: restarted by the loop once the backoff allows.
    behind_our_back(&g, home, "wait1-01", shutoff).await;
    let c = until(
        &mut coord,
        "wait1",
        Duration::from_secs(10),
        "restarted again",
        |c| c[0].restarts == 2 && c[0].phase == ClonePhase::Running as i32,
    )
    .await;
    assert!(c[0].last_action.contains("restarted on"), "{:?}", c[0]);
    assert_eq!(running_on(&g.endpoints[home]).await.len(), 1);
    state_until(&mut coord, "wait1", "up again", |s| {
        s != DeploymentState::Degraded
    })
    .await;
}

/// Waits up to 2 s (10 passes) until `ok` holds of deployment `name`'s state.
async fn state_until(
    coord: &mut Client,
    name: &str,
    what: &str,
    ok: impl Fn(DeploymentState) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let d = deployment(coord, name).await;
        if ok(DeploymentState::try_from(d.state).unwrap_or_default()) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within 2 s: {d:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client's deploy finds a clone whose domain died past its restart budget (0 here, no
/// control loop): it replaces it on the other agent, as the loop would, rather than
/// start it again where it died.
#[tokio::test]
async fn a_deploy_replaces_a_clone_dead_past_its_budget_elsewhere() {
    let (g, mut coord, _) = grid_looping(0, None).await;
    let s = spec("die0", 1);
    assert_eq!(deploy(&mut coord, s.clone()).await.succeeded, 1);
    let first = clones(&mut coord, "die0").await.remove(0);
    let home = g
        .agents
        .iter()
        .position(|a| a.agent.id() == first.agent_id)
        .expect("placed on a grid agent");
    behind_our_back(&g, home, "die0-01", |hv, n| hv.shutdown(n, Duration::ZERO)).await;
    let (_, again) = run(coord
        .deploy(DeployRequest {
            request_id: "die0-again".into(),
            spec: Some(s),
            dry_run: false,
        })
        .await)
    .await;
    assert_eq!((again.succeeded, again.failed), (1, 0), "{again:?}");
    let c = clones(&mut coord, "die0").await.remove(0);
    assert_ne!(c.agent_id, first.agent_id, "replaced elsewhere: {c:?}");
    assert!(c.failed_agents.contains(&first.agent_id), "{c:?}");
    assert_eq!(c.phase, ClonePhase::Running as i32, "{c:?}");
    assert!(running_on(&g.endpoints[home]).await.is_empty());
    assert_eq!(running_on(&g.endpoints[1 - home]).await.len(), 1);
}

/// The control loop's looks at what agents run, as `/metrics` counts them: (answered from
/// a kept listing, by listing the agent).
async fn looks(g: &TestGrid) -> (u64, u64) {
    let (status, page) = crate::observe::get(g.coordinator.http_addr(), "/metrics").await;
    assert_eq!(status, 200, "{page}");
    let count = |answer: &str| {
        let series =
            format!("napalm_coordinator_converge_agent_looks_total{{answer=\"{answer}\"}} ");
        page.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or_else(|| panic!("no {series} in /metrics:\n{page}"), |v| v as u64)
    };
    (count("kept"), count("listed"))
}

/// The control loop keeps what agents run from their domain events (an informer): pass
/// after pass it lists no agent again, yet a clone killed behind its agent's back is
/// restarted within a few passes, and one undefined behind it (its agent's `undefined`
/// event drops the kept listing) is seen gone and started again where it was (its agent
/// defines it again from its record).
#[tokio::test]
async fn the_loop_keeps_what_agents_run_from_their_events_and_still_sees_deaths() {
    let (g, mut coord) = grid(3).await;
    assert_eq!(deploy(&mut coord, spec("kept1", 2)).await.succeeded, 2);
    let on = |c: &Clone| {
        g.agents
            .iter()
            .position(|a| a.agent.id() == c.agent_id)
            .expect("placed on a grid agent")
    };
    // Settled: the first passes after the deploy list the agents (its creates were
    // events the kept listings could not follow).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (kept, listed) = looks(&g).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (kept2, listed2) = looks(&g).await;
    eprintln!(
        "over 2 s of passes: {} looks kept, {} listed",
        kept2 - kept,
        listed2 - listed
    );
    assert!(
        kept2 - kept >= 10,
        "2 agents, 10 passes: {} kept",
        kept2 - kept
    );
    assert_eq!(
        listed2, listed,
        "an agent listed again with nothing changed"
    );

    // Killed behind the agent's back: restarted.
    let c = clones(&mut coord, "kept1").await;
    behind_our_back(&g, on(&c[0]), "kept1-01", |hv, n| {
        hv.shutdown(n, Duration::ZERO)
    })
    .await;
    let killed = Instant::now();
    until(
        &mut coord,
        "kept1",
        Duration::from_secs(5),
        "restarted",
        |c| c[0].restarts == 1 && c[0].phase == ClonePhase::Running as i32,
    )
    .await;
    eprintln!("restarted {:?} after the kill", killed.elapsed());

    // Undefined behind it: seen gone (listed again), and dealt with as dead: its agent,
    // which keeps its record, defines it again when asked to start it.
    let (_, listed) = looks(&g).await;
    let placed = c[1].agent_id.clone();
    behind_our_back(&g, on(&c[1]), "kept1-02", |hv, n| {
        hv.shutdown(n, Duration::ZERO)?;
        hv.undefine(n).map(|_| ())
    })
    .await;
    let undefined = Instant::now();
    let c = until(
        &mut coord,
        "kept1",
        Duration::from_secs(5),
        "restarted after its undefinition",
        |c| c[1].restarts == 1 && c[1].phase == ClonePhase::Running as i32,
    )
    .await;
    eprintln!(
        "kept1-02 undefined, running again {:?} later: {:?}",
        undefined.elapsed(),
        (c[1].phase, &c[1].last_action, &c[1].last_error)
    );
    assert_eq!(c[1].domain_state, DomainState::Running as i32, "{:?}", c[1]);
    assert_eq!(
        c[1].agent_id, placed,
        "restarted where it was, not replaced"
    );
    assert!(
        looks(&g).await.1 > listed,
        "the undefinition did not drop the kept listing"
    );
}
