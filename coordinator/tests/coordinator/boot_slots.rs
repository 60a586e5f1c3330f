//! Boot slots (`deploy::boot_slots`) seen from a client, on real agents over libvirt's
//! `test:///default` driver, where a clone never registers and so holds its agent's slot
//! for its whole boot timeout: an undeploy or a corrected deploy during a storm withdraws
//! the clones still waiting, a clone waiting for a slot holds none of the run's shipping
//! places, and the control loop restarts clones that died together a slot at a time.

use napalm_coordinator::deploy::boot_slots::BootConcurrency;
use napalm_coordinator::testing::{spec, GridOptions, TestGrid};
use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use napalm_proto::v1::*;

use crate::deploy::{run, running_on, TOKEN};

/// Two agents on the test driver whose coordinator gives each one boot slot, and `places`
/// places for shipping and creating (its default with `None`).
async fn one_slot_per_agent(places: Option<usize>) -> TestGrid {
    one_slot_per_agent_and(|cfg| {
        if let (Some(d), Some(p)) = (cfg.deploy.as_mut(), places) {
            d.concurrency = p;
        }
    })
    .await
}

/// Two agents on the test driver whose coordinator gives each one boot slot; `tune`
/// changes the rest.
async fn one_slot_per_agent_and(
    tune: impl FnOnce(&mut napalm_coordinator::server::ServeConfig),
) -> TestGrid {
    TestGrid::start_with(
        GridOptions {
            agent_token: Some(TOKEN.into()),
            ..Default::default()
        },
        |cfg| {
            if let Some(d) = cfg.deploy.as_mut() {
                d.boot_concurrency = BootConcurrency::PerAgent(1);
            }
            tune(cfg);
        },
    )
    .await
    .expect("grid starts")
}

/// A grid of [`one_slot_per_agent_and`] whose control loop runs every `every` (never with
/// `None`).
async fn one_slot_per_agent_looping(every: Option<std::time::Duration>) -> TestGrid {
    one_slot_per_agent_and(|cfg| cfg.converge_every = every).await
}

/// Destroys domain `name` on agent `i` of `t` behind everyone's back.
async fn kill(t: &TestGrid, i: usize, name: &str) {
    let hv = std::sync::Arc::clone(t.agents[i].agent.hypervisor());
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || hv.shutdown(&name, std::time::Duration::ZERO))
        .await
        .expect("join")
        .expect("destroy behind the agent's back");
}

/// Undeploys `deployment` (every clone gone), then stops `t`'s agents.
async fn undeploy_and_stop(
    t: TestGrid,
    coord: &mut CoordinatorServiceClient<tonic::transport::Channel>,
    deployment: &str,
) {
    let (_, gone) = run(coord
        .undeploy(UndeployRequest {
            request_id: format!("{deployment}-u"),
            name: deployment.into(),
            purge: true,
        })
        .await)
    .await;
    assert_eq!(gone.failed, 0, "{gone:?}");
    for a in t.agents {
        a.stop().await;
    }
}

/// The clone records of `deployment`, by name.
async fn clones_of(
    coord: &mut CoordinatorServiceClient<tonic::transport::Channel>,
    deployment: &str,
) -> Vec<Clone> {
    let mut c = coord
        .list_clones(ListClonesRequest {
            deployment: deployment.into(),
        })
        .await
        .expect("list")
        .into_inner()
        .clones;
    c.sort_by(|a, b| a.name.cmp(&b.name));
    c
}

/// Deploys `s` in a task, its clones given 300 s to boot: on the test driver a clone never
/// registers, so each holds its agent's slot that long.
fn spawn_deploy(
    coord: &CoordinatorServiceClient<tonic::transport::Channel>,
    mut s: DeploymentSpec,
) -> tokio::task::JoinHandle<(Vec<DeployProgress>, DeploySummary)> {
    s.boot_timeout = Some(napalm_proto::time::duration(
        std::time::Duration::from_secs(300),
    ));
    let mut c = coord.clone();
    tokio::spawn(async move {
        // Two deploys of one deployment are two requests.
        let request_id = format!("{}-{}-d", s.name, s.count);
        run(c
            .deploy(DeployRequest {
                request_id,
                spec: Some(s),
                dry_run: false,
            })
            .await)
        .await
    })
}

/// Until `n` of the deployment's domains run on the agents at `endpoints`, at most 60 s.
async fn until_running(endpoints: &[String], n: usize) {
    let started = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            let mut running = 0;
            for ep in endpoints {
                running += running_on(ep).await.len();
            }
            if running == n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(started.is_ok(), "{n} clones never ran");
}

/// The clones `events` reports with a message containing `says`.
fn told(events: &[DeployProgress], says: &str) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(deploy_progress::Event::Clone(p)) if p.message.contains(says) => {
                p.clone.as_ref().map(|c| c.name.clone())
            }
            _ => None,
        })
        .collect()
}

/// Clones of a deployment waiting for a boot slot are not started once an undeploy of it
/// comes: the undeploy does not wait for them to get their slots (a storm of 32 TCG
/// clones takes a minute to), and every clone, started or not, is gone after it.
#[tokio::test]
async fn an_undeploy_during_a_boot_storm_withdraws_the_clones_waiting_for_a_slot() {
    let t = one_slot_per_agent(None).await;
    let mut coord = t.client().await.expect("connect to the coordinator");
    // Clones on the test driver never register: each holds its agent's one slot for the
    // whole boot timeout, so without the withdrawal the undeploy would wait 2 × 300 s.
    let deploy = spawn_deploy(&coord, spec("storm", 6));
    // One clone started on each agent, the four others waiting.
    until_running(&t.endpoints, 2).await;

    let undeploy = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        run(coord
            .undeploy(UndeployRequest {
                request_id: "storm-u".into(),
                name: "storm".into(),
                purge: true,
            })
            .await),
    )
    .await;
    let (_, gone) = undeploy.expect("the undeploy waited for the clones' boot slots");
    assert_eq!(
        (gone.requested, gone.succeeded, gone.failed),
        (6, 6, 0),
        "{gone:?}"
    );
    let (events, summary) = tokio::time::timeout(std::time::Duration::from_secs(60), deploy)
        .await
        .expect("the deploy ends after the undeploy")
        .expect("deploy task");
    let withdrawn = told(&events, "not started: the deployment is being removed");
    assert_eq!(
        withdrawn.len(),
        4,
        "withdrawn: {withdrawn:?}; summary {summary:?}"
    );
    let started: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(deploy_progress::Event::Clone(p))
                if p.clone.as_ref().map(|c| c.phase) == Some(ClonePhase::Running as i32) =>
            {
                p.clone.as_ref().map(|c| c.name.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(started.len(), 2, "started: {started:?}");
    assert!(started.iter().all(|s| !withdrawn.contains(s)));
    for ep in &t.endpoints {
        assert!(
            running_on(ep).await.is_empty(),
            "a domain outlived the undeploy on {ep}"
        );
    }
    let clones = coord
        .list_clones(ListClonesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(clones.clones.is_empty(), "{:?}", clones.clones);
    for a in t.agents {
        a.stop().await;
    }
}

/// A client deploy during a storm takes over from the run still starting the deployment's
/// clones: the clones waiting for a boot slot are not started by that run, and the newer
/// spec (here fewer clones, as an operator corrects a count too large) is carried out at
/// once instead of after the old run's last slot.
#[tokio::test]
async fn a_corrected_deploy_during_a_boot_storm_does_not_wait_for_the_old_runs_slots() {
    let t = one_slot_per_agent(None).await;
    let mut coord = t.client().await.expect("connect to the coordinator");
    let first = spawn_deploy(&coord, spec("storm", 6));
    until_running(&t.endpoints, 2).await;

    // Without the withdrawal this deploy waits for the first run's hold, which waits for
    // the four clones' slots: 2 × 300 s.
    let corrected = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        spawn_deploy(&coord, spec("storm", 2)),
    )
    .await
    .expect("the corrected deploy waited for the first run's boot slots")
    .expect("deploy task");
    let (_, summary) = corrected;
    assert_eq!(
        (summary.requested, summary.succeeded, summary.failed),
        (2, 2, 0),
        "{summary:?}"
    );
    let (events, first) = tokio::time::timeout(std::time::Duration::from_secs(60), first)
        .await
        .expect("the first deploy ends once the corrected one is done")
        .expect("deploy task");
    let withdrawn = told(
        &events,
        "not started: a newer deploy of the deployment took over",
    );
    assert_eq!(
        withdrawn.len(),
        4,
        "withdrawn: {withdrawn:?}; first {first:?}"
    );
    // Two clones in all, both running; the four withdrawn were never started anywhere.
    let clones = clones_of(&mut coord, "storm").await;
    assert_eq!(clones.len(), 2, "{clones:?}");
    assert!(
        clones.iter().all(|c| c.phase == ClonePhase::Running as i32),
        "{clones:?}"
    );
    let mut domains = Vec::new();
    for ep in &t.endpoints {
        domains.extend(running_on(ep).await.into_iter().map(|d| d.name));
    }
    domains.sort();
    let mut names: Vec<String> = clones.iter().map(|c| c.name.clone()).collect();
    names.sort();
    assert_eq!(domains, names);
    undeploy_and_stop(t, &mut coord, "storm").await;
}

/// A clone waiting for its agent's boot slot holds none of the run's shipping places: with
/// one place, the clones of a busy agent queue for its slot while a clone placed on an idle
/// agent ships and starts there.
#[tokio::test]
async fn a_clone_waiting_for_a_boot_slot_holds_no_shipping_place() {
    let t = one_slot_per_agent(Some(1)).await;
    let mut coord = t.client().await.expect("connect to the coordinator");
    let (_, s) = spawn_deploy(&coord, spec("busy", 1))
        .await
        .expect("deploy task");
    assert_eq!(s.succeeded, 1, "{s:?}");
    let mut per_agent = Vec::new();
    for ep in &t.endpoints {
        per_agent.push(running_on(ep).await.len());
    }
    let idle = match per_agent.as_slice() {
        [1, 0] => &t.endpoints[1],
        [0, 1] => &t.endpoints[0],
        other => panic!("one busy agent expected: {other:?}"),
    };
    // Two clones on the busy agent (binpack fills it first, two at most), the third on
    // the idle one; the first two are brought up first and wait for the busy slot.
    let mut next = spec("next", 3);
    next.strategy = PlacementStrategy::Binpack as i32;
    next.max_per_agent = 2;
    let deploy = spawn_deploy(&coord, next);
    let started = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let on_idle: Vec<String> = running_on(idle).await.into_iter().map(|d| d.name).collect();
            if !on_idle.is_empty() {
                return on_idle;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    let on_idle = started.expect("the idle agent's clone waited behind the busy agent's");
    assert_eq!(on_idle.len(), 1, "{on_idle:?}");
    assert!(on_idle[0].starts_with("next-"), "{on_idle:?}");

    for name in ["next", "busy"] {
        let (_, gone) = run(coord
            .undeploy(UndeployRequest {
                request_id: format!("{name}-u"),
                name: name.into(),
                purge: true,
            })
            .await)
        .await;
        assert_eq!(gone.failed, 0, "{gone:?}");
    }
    deploy.await.expect("deploy task");
    for ep in &t.endpoints {
        assert!(running_on(ep).await.is_empty(), "left on {ep}");
    }
    for a in t.agents {
        a.stop().await;
    }
}

/// Clones that die together on one agent (its host restarted, say) are started again by
/// the control loop one boot slot at a time: restarting them all at once would be the very
/// storm the slots keep off. A clone waiting for the slot says so.
#[tokio::test]
async fn clones_that_die_together_restart_a_boot_slot_at_a_time() {
    use std::time::{Duration, Instant};
    let t = one_slot_per_agent_looping(Some(Duration::from_millis(200))).await;
    let mut coord = t.client().await.expect("connect to the coordinator");
    // A clone on the test driver never registers: each start holds its agent's one slot
    // for the whole boot timeout, 2 s here.
    let boot_timeout = Duration::from_secs(2);
    let mut s = spec("phoenix", 4);
    s.boot_timeout = Some(napalm_proto::time::duration(boot_timeout));
    let (_, summary) = run(coord
        .deploy(DeployRequest {
            request_id: "phoenix-d".into(),
            spec: Some(s),
            dry_run: false,
        })
        .await)
    .await;
    assert_eq!(summary.succeeded, 4, "{summary:?}");
    // The last clones' slots are free once their boot timeout passed.
    tokio::time::sleep(boot_timeout + Duration::from_millis(500)).await;

    // Both clones of one agent die at once, behind everyone's back.
    let home = 0;
    let dead: Vec<String> = running_on(&t.endpoints[home])
        .await
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(
        dead.len(),
        2,
        "spread places two clones per agent: {dead:?}"
    );
    for name in &dead {
        kill(&t, home, name).await;
    }

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut waited = Vec::new();
    let restarted = loop {
        let clones: Vec<Clone> = clones_of(&mut coord, "phoenix")
            .await
            .into_iter()
            .filter(|c| dead.contains(&c.name))
            .collect();
        for c in &clones {
            if c.last_action
                .starts_with("waiting to restart: 1 clones booting on")
                && !waited.contains(&c.name)
            {
                waited.push(c.name.clone());
            }
        }
        if clones
            .iter()
            .all(|c| c.restarts == 1 && c.phase == ClonePhase::Running as i32)
        {
            break clones;
        }
        assert!(
            Instant::now() < deadline,
            "not both restarted within 20 s: {:#?}",
            clones
                .iter()
                .map(|c| (&c.name, c.phase, c.restarts, &c.last_action, &c.last_error))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let at: Vec<std::time::SystemTime> = restarted
        .iter()
        .map(|c| napalm_proto::time::from_timestamp(c.restarted_at.as_ref()))
        .collect();
    let apart = at[0]
        .duration_since(at[1])
        .or_else(|_| at[1].duration_since(at[0]))
        .unwrap_or_default();
    eprintln!("restarts {apart:?} apart; told to wait: {waited:?}");
    // The second restart waited for the first one's slot: its boot timeout, less a pass.
    assert!(
        apart >= boot_timeout - Duration::from_millis(300),
        "both restarted {apart:?} apart, within one agent's single boot slot"
    );
    assert_eq!(waited.len(), 1, "told to wait: {waited:?}");
    assert_eq!(running_on(&t.endpoints[home]).await.len(), 2);
    for a in t.agents {
        a.stop().await;
    }
}

/// A re-run of a deploy finds a clone recorded up whose domain died behind everyone's back
/// (no control loop here to restart it): the clone boots again as a new boot, not a replay
/// of the agent's answers to the boot that died, with a fresh boot timeout, counted as a
/// restart, and on the boot slot its dead boot held.
#[tokio::test]
async fn a_rerun_boots_a_clone_whose_domain_died_on_the_slot_its_dead_boot_held() {
    use std::time::Duration;
    let t = one_slot_per_agent_looping(None).await;
    let mut coord = t.client().await.expect("connect to the coordinator");
    // One clone per agent, each holding its agent's one slot for 300 s.
    let (_, s) = spawn_deploy(&coord, spec("lazarus", 2))
        .await
        .expect("deploy task");
    assert_eq!(s.succeeded, 2, "{s:?}");
    let before = clones_of(&mut coord, "lazarus").await;
    let home = 0;
    let dead = running_on(&t.endpoints[home])
        .await
        .pop()
        .expect("a clone on the first agent")
        .name;
    kill(&t, home, &dead).await;
    assert!(running_on(&t.endpoints[home]).await.is_empty());
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Without the dead boot's slot let go this waits 300 s for it.
    let (events, s) = tokio::time::timeout(
        Duration::from_secs(60),
        spawn_deploy(&coord, spec("lazarus", 2)),
    )
    .await
    .expect("the re-run waited for the slot of the boot that died")
    .expect("deploy task");
    assert_eq!((s.succeeded, s.failed), (2, 0), "{s:?}");
    assert_eq!(
        told(&events, "its domain was not running: it boots again"),
        vec![dead.clone()]
    );
    assert_eq!(running_on(&t.endpoints[home]).await.len(), 1);
    let after = clones_of(&mut coord, "lazarus").await;
    for (b, a) in before.iter().zip(&after) {
        let renewed = napalm_proto::time::from_timestamp(a.started_at.as_ref())
            > napalm_proto::time::from_timestamp(b.started_at.as_ref());
        assert_eq!(
            renewed,
            a.name == dead,
            "only the clone that died boots again, with a fresh boot timeout: {a:?}"
        );
        // A restart like the control loop's: it counts against the restart budget.
        assert_eq!(a.restarts, u32::from(a.name == dead), "{a:?}");
    }
    undeploy_and_stop(t, &mut coord, "lazarus").await;
}

/// A clone that dies while it still boots holds its agent's only slot by its record; the
/// control loop's restart lets that boot's slot go and takes it, instead of waiting for
/// the dead boot's timeout (300 s here).
#[tokio::test]
async fn a_clone_that_dies_while_booting_restarts_on_its_own_slot() {
    use std::time::{Duration, Instant};
    let t = one_slot_per_agent_looping(Some(Duration::from_millis(200))).await;
    let mut coord = t.client().await.expect("connect to the coordinator");
    let (_, s) = spawn_deploy(&coord, spec("icarus", 2))
        .await
        .expect("deploy task");
    assert_eq!(s.succeeded, 2, "{s:?}");
    let home = 0;
    let dead = running_on(&t.endpoints[home])
        .await
        .pop()
        .expect("a clone on the first agent")
        .name;
    kill(&t, home, &dead).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = clones_of(&mut coord, "icarus")
            .await
            .into_iter()
            .find(|c| c.name == dead)
            .expect("the clone stays recorded");
        if c.restarts == 1 && c.phase == ClonePhase::Running as i32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not restarted within 20 s: {:?} {:?} {:?}",
            c.phase,
            c.last_action,
            c.last_error
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(running_on(&t.endpoints[home]).await.len(), 1);
    for a in t.agents {
        a.stop().await;
    }
}
