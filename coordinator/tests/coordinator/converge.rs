//! The control loop with no client connected (deploy/converge.rs): a lost agent's clones
//! move, a deploy that does not fit is refused whole or waits pending for capacity, and a
//! draining agent is emptied. Each test runs the loop every 200 ms.

use std::collections::HashMap;
use std::time::Duration;

use napalm_coordinator::server::ServeConfig;
use napalm_coordinator::testing::{spec, GridOptions, TestGrid};
use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use napalm_proto::v1::*;

use crate::deploy::{refusal, run, running_on, total, TOKEN};

type Client = CoordinatorServiceClient<tonic::transport::Channel>;

/// Two agents and a coordinator whose loop runs every 200 ms; `tune` changes the rest.
async fn grid_with_a_fast_loop(tune: impl FnOnce(&mut ServeConfig)) -> (TestGrid, Client) {
    let g = TestGrid::start_with(
        GridOptions {
            agent_token: Some(TOKEN.into()),
            ..Default::default()
        },
        |cfg| {
            cfg.converge_every = Some(Duration::from_millis(200));
            tune(cfg);
        },
    )
    .await
    .expect("grid starts");
    let coord = g.client().await.expect("connect");
    (g, coord)
}

/// The registered agent serving gRPC at `endpoint`.
async fn agent_at(coord: &mut Client, endpoint: &str) -> Agent {
    coord
        .list_agents(ListAgentsRequest::default())
        .await
        .expect("agents")
        .into_inner()
        .agents
        .into_iter()
        .find(|a| a.grpc_endpoint == endpoint)
        .expect("the agent is registered")
}

/// The control loop, with no client: an agent stops for good; once it is down past the
/// grace period, its clones boot on the other agent and the registry says so.
#[tokio::test]
async fn a_lost_agents_clones_move_to_another_agent_with_no_client() {
    let (g, mut coord) = grid_with_a_fast_loop(|cfg| {
        cfg.heartbeat.min_ttl = Duration::from_secs(1);
        if let Some(d) = cfg.deploy.as_mut() {
            d.lost_grace = Duration::from_secs(1);
        }
    })
    .await;
    let (_, summary) = run(coord
        .deploy(DeployRequest {
            request_id: "lost".into(),
            spec: Some(spec("lost1", 4)),
            dry_run: false,
        })
        .await)
    .await;
    assert_eq!(summary.succeeded, 4, "{summary:?}");
    let mut agents = g.agents;
    let survivor = g.endpoints[0].clone();
    assert_eq!(
        running_on(&survivor).await.len(),
        2,
        "spread before the loss"
    );
    let survivor_id = agent_at(&mut coord, &survivor).await.id;
    let lost = agents.remove(1);
    let stopped = std::time::Instant::now();
    lost.stop().await;

    let deadline = stopped + Duration::from_secs(30);
    loop {
        let clones = coord
            .list_clones(ListClonesRequest {
                deployment: "lost1".into(),
            })
            .await
            .expect("clones")
            .into_inner()
            .clones;
        let mut on_survivor: Vec<String> = running_on(&survivor)
            .await
            .into_iter()
            .map(|d| d.name)
            .collect();
        on_survivor.sort();
        let moved = clones.len() == 4
            && clones
                .iter()
                .all(|c| c.agent_id == survivor_id && c.phase == ClonePhase::Running as i32);
        if moved && on_survivor == ["lost1-01", "lost1-02", "lost1-03", "lost1-04"] {
            eprintln!(
                "4 clones on the survivor {:?} after the loss",
                stopped.elapsed()
            );
            // The moved clones' records say why they moved.
            let moved_why = clones
                .iter()
                .filter(|c| c.last_action.contains("its agent is lost"))
                .count();
            assert_eq!(moved_why, 2, "{clones:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not moved 30 s after the loss: on the survivor {on_survivor:?}, clones {:?}",
            clones
                .iter()
                .map(|c| (&c.name, &c.agent_id, c.phase, &c.last_error))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for a in agents {
        a.stop().await;
    }
}

/// Admission: a deploy that does not fit is refused whole, with the shortfall, before
/// anything is written; with `allow_pending` the clones that do not fit wait, and are
/// placed by the control loop when a third agent registers.
#[tokio::test]
async fn over_capacity_is_refused_whole_or_waits_pending_for_a_new_agent() {
    let (g, mut coord) = grid_with_a_fast_loop(|_| {}).await;
    let mut big = spec("admit1", 5000);
    big.resources = Some(Resources {
        vcpus: 1,
        memory_bytes: 64 << 20,
    });
    let err = refusal(
        coord
            .deploy(DeployRequest {
                request_id: "admit-refused".into(),
                spec: Some(big),
                dry_run: false,
            })
            .await,
    )
    .await;
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    let msg = err.message();
    assert!(
        msg.contains("5000 clone(s) of \"admit1\" to place, 64 fit, 4936 do not")
            && msg.contains("nothing was written")
            && msg.contains("--allow-pending"),
        "{msg}"
    );
    let deps = coord
        .list_deployments(ListDeploymentsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(deps.deployments.is_empty(), "{deps:?}");
    assert!(total(&domains_of(&g.endpoints).await).is_empty());

    // Allowed to wait: 64 fit (2 agents x 8 CPUs x 4 vCPUs each), 6 wait.
    let mut wait = spec("admit2", 70);
    wait.allow_pending = true;
    let (_, summary) = run(coord
        .deploy(DeployRequest {
            request_id: "admit-pending".into(),
            spec: Some(wait),
            dry_run: false,
        })
        .await)
    .await;
    assert_eq!((summary.succeeded, summary.failed), (64, 0), "{summary:?}");
    let phases = |clones: &[Clone]| {
        let mut by: HashMap<i32, usize> = HashMap::new();
        for c in clones {
            *by.entry(c.phase).or_default() += 1;
        }
        by
    };
    let clones = coord
        .list_clones(ListClonesRequest {
            deployment: "admit2".into(),
        })
        .await
        .expect("clones")
        .into_inner()
        .clones;
    assert_eq!(
        phases(&clones).get(&(ClonePhase::Pending as i32)),
        Some(&6),
        "{:?}",
        phases(&clones)
    );

    // A third agent registers itself: the loop places the pending clones on it.
    let state = g.dir.path().join("agent-late");
    let mut cfg = napalm_coordinator::testing::agent_config(&state, Some(TOKEN.into()));
    cfg.rest.libvirt_uri = napalm_coordinator::testing::own_driver(&state).expect("driver");
    cfg.coordinator = Some(g.coordinator.endpoint());
    let late = napalm_agent::server::start(cfg).await.expect("late agent");
    let late_ep = format!("http://{}", late.grpc_addr.expect("grpc"));
    let joined = std::time::Instant::now();
    let deadline = joined + Duration::from_secs(30);
    loop {
        let clones = coord
            .list_clones(ListClonesRequest {
                deployment: "admit2".into(),
            })
            .await
            .expect("clones")
            .into_inner()
            .clones;
        let by = phases(&clones);
        if by.get(&(ClonePhase::Running as i32)) == Some(&70) {
            eprintln!(
                "pending clones placed {:?} after the agent joined",
                joined.elapsed()
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pending clones not placed 30 s after a new agent joined: {by:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(running_on(&late_ep).await.len(), 6);
    late.stop().await;
    for a in g.agents {
        a.stop().await;
    }
}

/// Domains per agent endpoint, by name.
async fn domains_of(endpoints: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for ep in endpoints {
        out.push(running_on(ep).await.into_iter().map(|d| d.name).collect());
    }
    out
}

/// Draining an agent moves its clones off with no other command: each stops there, then
/// boots on the other agent; nothing new goes to the drained agent.
#[tokio::test]
async fn draining_an_agent_moves_its_clones_off() {
    let (g, mut coord) = grid_with_a_fast_loop(|_| {}).await;
    let (_, summary) = run(coord
        .deploy(DeployRequest {
            request_id: "drain".into(),
            spec: Some(spec("drain1", 4)),
            dry_run: false,
        })
        .await)
    .await;
    assert_eq!(summary.succeeded, 4, "{summary:?}");
    let (keep, drained) = (g.endpoints[0].clone(), g.endpoints[1].clone());
    assert_eq!(
        running_on(&drained).await.len(),
        2,
        "spread before the drain"
    );
    let agent = agent_at(&mut coord, &drained).await;
    coord
        .set_agent_state(SetAgentStateRequest {
            request_id: "drain-1".into(),
            // By id: every agent of this process has the same host name.
            id: agent.id.clone(),
            state: AgentState::Draining as i32,
        })
        .await
        .expect("drain");
    let t = std::time::Instant::now();
    loop {
        let on_keep = running_on(&keep).await.len();
        let on_drained = running_on(&drained).await.len();
        if on_keep == 4 && on_drained == 0 {
            eprintln!("drained in {:?}", t.elapsed());
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "not drained after 30 s: {on_keep} on the other agent, {on_drained} left"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let clones = coord
        .list_clones(ListClonesRequest {
            deployment: "drain1".into(),
        })
        .await
        .expect("clones")
        .into_inner()
        .clones;
    assert!(
        clones
            .iter()
            .all(|c| c.agent_id != agent.id && c.phase == ClonePhase::Running as i32),
        "{clones:?}"
    );
    assert_eq!(
        clones
            .iter()
            .filter(|c| c.last_action.contains("its agent is draining"))
            .count(),
        2,
        "{clones:?}"
    );
    for a in g.agents {
        a.stop().await;
    }
}

/// A clone whose bring-up failed everywhere (libvirt already had a domain of its name
/// that no agent manages, as when a lost host's domain lingers) is placed again by the
/// loop, with no client, once the obstacle is gone; its record counts the failures and
/// says why it was placed again; the waits between tries double and never stop, and an
/// operator's deploy starts them over. Both agents share the process's
/// `test:///default` driver, so the test can define the foreign domains itself.
#[tokio::test]
async fn a_clone_that_failed_to_come_up_is_retried_by_the_loop_after_a_backoff() {
    use napalm_agent::hypervisor::libvirt::Libvirt;
    use napalm_agent::hypervisor::Hypervisor;
    let g = TestGrid::start_with(
        GridOptions {
            agent_token: Some(TOKEN.into()),
            own_drivers: false,
            ..Default::default()
        },
        |cfg| cfg.converge_every = Some(Duration::from_millis(200)),
    )
    .await
    .expect("grid starts");
    let coord = g.client().await.expect("connect");
    let libvirt = Libvirt::open("test:///default").expect("the shared test driver");
    let squat = |name: &str| {
        libvirt
            .define(&format!(
                "<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>\
                 <vcpu>1</vcpu><os><type arch='i686'>hvm</type></os></domain>"
            ))
            .expect("someone else's domain");
    };
    let get = |name: &'static str| {
        let mut coord = coord.clone();
        async move {
            coord
                .get_clone(GetCloneRequest { name: name.into() })
                .await
                .expect("clone")
                .into_inner()
        }
    };
    let deploy = |name: &'static str| {
        let mut coord = coord.clone();
        async move {
            run(coord
                .deploy(DeployRequest {
                    request_id: name.into(),
                    spec: Some(spec(name, 1)),
                    dry_run: false,
                })
                .await)
            .await
            .1
        }
    };

    squat("retry1-01");
    let summary = deploy("retry1").await;
    assert_eq!(summary.failed, 1, "{summary:?}");
    let failed = get("retry1-01").await;
    assert_eq!(failed.phase, ClonePhase::Failed as i32, "{failed:?}");
    assert_eq!(failed.failures, 1, "{failed:?}");
    assert!(failed.last_error.contains("does not manage"), "{failed:?}");

    // The loop tries again and again, each wait twice the one before (2 s, 4 s, 8 s,
    // from each failure's `failed_at`), past any restart budget: a failed clone is never
    // left for an operator.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut seen = vec![failed.clone()];
    while seen.len() < 4 {
        let c = get("retry1-01").await;
        if c.failures != seen[seen.len() - 1].failures {
            seen.push(c);
            continue;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the loop did not retry a failed clone: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (n, pair) in seen.windows(2).enumerate() {
        let (before, after) = (&pair[0], &pair[1]);
        assert_eq!(
            after.failures,
            before.failures + 1,
            "one retry at a time: {after:?}"
        );
        assert_eq!(after.phase, ClonePhase::Failed as i32, "{after:?}");
        let waited = napalm_proto::time::from_timestamp(after.failed_at.as_ref())
            .duration_since(napalm_proto::time::from_timestamp(
                before.failed_at.as_ref(),
            ))
            .expect("failed_at moves forward");
        let backoff = Duration::from_secs(2 << n);
        assert!(
            waited >= backoff,
            "retry {} came {waited:?} after the failure before it, not after {backoff:?}",
            n + 1
        );
    }
    // An operator's deploy starts the backoff over: the count is 1 again at once.
    let summary = deploy("retry1").await;
    assert_eq!(summary.failed, 1, "{summary:?}");
    let again = get("retry1-01").await;
    assert_eq!(again.failures, 1, "the count did not start over: {again:?}");

    // A second clone fails the same way; once the foreign domain is gone, the loop's
    // next retry brings it up, and its record says why it was placed again.
    squat("retry2-01");
    let summary = deploy("retry2").await;
    assert_eq!(summary.failed, 1, "{summary:?}");
    libvirt
        .undefine("retry2-01")
        .expect("the foreign domain goes");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = get("retry2-01").await;
        if c.phase == ClonePhase::Running as i32 {
            assert!(
                c.last_action.contains("it failed to come up"),
                "the record says why it was placed again: {c:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the loop did not place the failed clone again: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = libvirt.undefine("retry1-01");
    for a in g.agents {
        a.stop().await;
    }
}

/// Whether the agent at `ep` holds `blob`, by its own answer.
async fn agent_has(ep: &str, blob: &BlobRef) -> bool {
    let mut c = crate::deploy::agent_client(ep).await;
    let blob = blob.clone();
    let r = c
        .has_blobs(HasBlobsRequest { blobs: vec![blob] })
        .await
        .expect("HasBlobs")
        .into_inner();
    r.missing.is_empty() && r.present.len() == 1
}

/// The control loop ships the kernel to every ready agent before any deploy asks for it,
/// and the agents' own answers say they hold it.
#[tokio::test]
async fn agents_hold_the_kernel_before_the_first_deploy() {
    let (g, _coord) = grid_with_a_fast_loop(|_| {}).await;
    let kernel = napalm_coordinator::deploy::ship::Blob::new(
        "vmlinuz",
        std::fs::read(g.dir.path().join("vmlinuz")).expect("the grid's kernel"),
    )
    .r;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for ep in &g.endpoints {
        while !agent_has(ep, &kernel).await {
            assert!(
                std::time::Instant::now() < deadline,
                "agent {ep} still lacks the kernel 20 s after the grid started, with no deploy"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Passes of the control loop, and reads of every clone record at once, as `/metrics`
/// counts them (the count includes this scrape's own read).
async fn passes_and_reads(g: &TestGrid) -> (f64, f64) {
    let (status, page) = crate::observe::get(g.coordinator.http_addr(), "/metrics").await;
    assert_eq!(status, 200, "{page}");
    let value = |name: &str, labels: &[(&str, &str)]| {
        crate::observe::sample(&page, name, labels)
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{page}"))
    };
    (
        value(
            "napalm_coordinator_converge_passes_total",
            &[("result", "ok")],
        ),
        value("napalm_coordinator_registry_clone_listings_total", &[]),
    )
}

/// A pass of the control loop reads every clone record once, however many deployments
/// there are: clone names need not start with their deployment's, so reading one
/// deployment's clones reads them all, and a pass that did so per deployment (and once
/// more for the agents' allocations) read 7 times 6 deployments' clones.
#[tokio::test]
async fn a_pass_reads_the_clone_records_once_whatever_the_number_of_deployments() {
    let (g, mut coord) = grid_with_a_fast_loop(|_| {}).await;
    for n in 0..6 {
        let (_, summary) = run(coord
            .deploy(DeployRequest {
                request_id: format!("reads{n}"),
                spec: Some(spec(&format!("reads{n}"), 1)),
                dry_run: false,
            })
            .await)
        .await;
        assert_eq!(summary.succeeded, 1, "{summary:?}");
    }
    // Settled: the deployments' states recorded, the agents' listings kept.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (passes0, reads0) = passes_and_reads(&g).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (passes1, reads1) = passes_and_reads(&g).await;
    // The second scrape read once itself.
    let (passes, reads) = (passes1 - passes0, reads1 - reads0 - 1.0);
    eprintln!("over 2 s: {passes} passes, {reads} reads of every clone record");
    assert!(
        passes >= 5.0,
        "the loop runs every 200 ms: {passes} passes in 2 s"
    );
    // A pass under way at either scrape may count its read but not its end, or the
    // other way round.
    assert!(
        reads <= passes + 1.0,
        "{reads} reads of every clone record in {passes} passes over 6 deployments"
    );
}
