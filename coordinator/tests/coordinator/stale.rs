//! A lost agent that comes back removes its stale clone domains itself: the coordinator's
//! heartbeat answer names the domains the registry placed elsewhere meanwhile
//! (`HeartbeatResponse.stale_domains`) and the agent's own reconcile deletes them. And
//! the note a clone's boot-timeout failure carries: the end of its console, from its
//! agent (`Agents::console_note`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use napalm_agent::events::EventKind;
use napalm_coordinator::deploy::ship::Agents;
use napalm_coordinator::testing::{agent_config, own_driver, spec, GridOptions, TestGrid};
use napalm_proto::v1::*;

use crate::deploy::{run, running_on, TOKEN};

/// Two agents and a coordinator whose loop runs every 200 ms, with a 1 s heartbeat TTL
/// and a 1 s grace before a down agent is lost.
async fn grid() -> TestGrid {
    TestGrid::start_with(
        GridOptions {
            agent_token: Some(TOKEN.into()),
            ..Default::default()
        },
        |cfg| {
            cfg.converge_every = Some(Duration::from_millis(200));
            cfg.heartbeat.min_ttl = Duration::from_secs(1);
            if let Some(d) = cfg.deploy.as_mut() {
                d.lost_grace = Duration::from_secs(1);
            }
        },
    )
    .await
    .expect("grid starts")
}

/// An agent is lost (stopped: heartbeats stop, and its test driver forgets its domains),
/// the loop moves its clones to the other agent; then it starts again on the same state
/// directory, which defines its old domains again, and registers and heartbeats with the
/// coordinator itself. Its API token is not the one the coordinator presents, so the
/// coordinator cannot list or delete its domains: only the agent's own reconcile,
/// handed the heartbeat's stale domains, can remove them, and its events say so.
#[tokio::test]
async fn a_returning_agent_removes_the_domains_of_its_moved_clones_itself() {
    let g = grid().await;
    let mut coord = g.client().await.expect("connect");
    let (_, summary) = run(coord
        .deploy(DeployRequest {
            request_id: "stale".into(),
            spec: Some(spec("stale1", 4)),
            dry_run: false,
        })
        .await)
    .await;
    assert_eq!(summary.succeeded, 4, "{summary:?}");
    let survivor = g.endpoints[0].clone();
    let mut agents = g.agents;
    let lost = agents.remove(1);
    let lost_id = lost.agent.id().to_owned();
    let mut held: Vec<String> = lost
        .agent
        .list(false)
        .await
        .expect("list")
        .into_iter()
        .map(|d| d.name)
        .collect();
    held.sort();
    assert_eq!(held.len(), 2, "spread before the loss: {held:?}");
    lost.stop().await;

    // The loop moves its clones.
    let registry = g.coordinator.registry().clone();
    let survivor_id = registry
        .list_agents(&[])
        .await
        .expect("agents")
        .into_iter()
        .find(|a| a.grpc_endpoint == survivor)
        .expect("survivor registered")
        .id;
    let t0 = Instant::now();
    loop {
        let clones = registry.list_clones("stale1").await.expect("clones");
        let on_survivor = running_on(&survivor).await.len();
        if clones.len() == 4 && clones.iter().all(|c| c.agent_id == survivor_id) && on_survivor == 4
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "not moved 30 s after the loss: {:?}",
            clones
                .iter()
                .map(|c| (&c.name, &c.agent_id, c.phase))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("the lost agent's clones moved after {:?}", t0.elapsed());

    // It comes back on the same state directory, heartbeating itself.
    let state = g.dir.path().join("agent1");
    let mut cfg = agent_config(&state, Some("not-the-coordinators-token".into()));
    cfg.rest.libvirt_uri = own_driver(&state).expect("driver");
    cfg.coordinator = Some(g.coordinator.endpoint());
    let back = napalm_agent::server::start(cfg)
        .await
        .expect("the agent starts again");
    assert_eq!(back.agent.id(), lost_id, "the same agent");
    let back_endpoint = format!("http://{}", back.grpc_addr.expect("grpc"));

    // Its own events say it removed them, and why (sequence 1 is one of the redefinitions
    // at its start, before it reached the coordinator).
    let t1 = Instant::now();
    let removed: HashMap<String, String> = loop {
        let left = back.agent.list(false).await.expect("list");
        let (events, _) = back.agent.events.subscribe(1);
        let removed: HashMap<String, String> = events
            .iter()
            .filter(|e| e.kind == EventKind::Undefined)
            .map(|e| (e.name.clone(), e.detail.clone()))
            .collect();
        if left.is_empty() && removed.len() >= held.len() {
            break removed;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(20),
            "the returning agent still holds {:?}; its events: {events:?}",
            left.iter().map(|d| &d.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "the returning agent removed its stale domains {:?} after it started",
        t1.elapsed()
    );
    let mut names: Vec<&String> = removed.keys().collect();
    names.sort();
    assert_eq!(names, held.iter().collect::<Vec<_>>(), "{removed:?}");
    for (name, detail) in &removed {
        assert!(
            detail.starts_with("stale: placed on ")
                && detail.contains(&format!("({survivor_id}) by the registry")),
            "{name}: {detail}"
        );
    }
    // The coordinator never reached it (wrong token): the removal was the agent's.
    let theirs = Agents::new(Some(TOKEN.into()))
        .console_note(&back_endpoint, &held[0], 5)
        .await;
    assert!(theirs.contains("unavailable"), "{theirs}");
    // The registry knows it again, and the moved clones still run once, on the survivor.
    let a = registry
        .list_agents(&[])
        .await
        .expect("agents")
        .into_iter()
        .find(|a| a.id == lost_id)
        .expect("known");
    assert_eq!(a.state, AgentState::Ready as i32);
    assert_eq!(running_on(&survivor).await.len(), 4);

    back.stop().await;
    for a in agents {
        a.stop().await;
    }
}

/// What the registry tells a heartbeating agent: its clone domains placed on another
/// agent, and (to be confirmed by the agent) those no deployment declares any more; not
/// its own placements, unlabelled domains, or clones of a deployment it has no record of.
#[tokio::test]
async fn the_heartbeat_names_only_clone_domains_the_registry_places_elsewhere() {
    let g = grid().await;
    let mut coord = g.client().await.expect("connect");
    let (_, summary) = run(coord
        .deploy(DeployRequest {
            request_id: "hb".into(),
            spec: Some(spec("staleb", 2)),
            dry_run: false,
        })
        .await)
    .await;
    assert_eq!(summary.succeeded, 2, "{summary:?}");
    let registry = g.coordinator.registry().clone();
    let clones = registry.list_clones("staleb").await.expect("clones");
    let one = &clones[0];
    let other_agent = g
        .agents
        .iter()
        .map(|a| a.agent.id().to_owned())
        .find(|id| *id != one.agent_id)
        .expect("another agent");
    let domain = |name: &str, dep: &str, clone: Option<&str>| DomainSummary {
        name: name.into(),
        state: DomainState::Running as i32,
        labels: [("deployment", dep)]
            .into_iter()
            .chain(clone.map(|c| ("clone", c)))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    };
    let listed = vec![
        // Where the registry places it: not stale.
        domain(&one.name, "staleb", Some(&one.name)),
        // No clone label: not a napalm clone domain.
        domain("staleb-99", "staleb", None),
        // Declared nowhere, deployment known.
        domain("staleb-77", "staleb", Some("staleb-77")),
        // Declared nowhere, deployment unknown: never (a registry that lost its records).
        domain("ghost-01", "ghost", Some("ghost-01")),
    ];
    let stale = registry
        .stale_domains(&one.agent_id, &listed)
        .await
        .expect("stale");
    assert_eq!(
        stale,
        [StaleDomain {
            name: "staleb-77".into(),
            reason: "no longer declared by deployment staleb".into(),
            placed_on_agent_id: String::new(),
        }]
    );
    // The same domain listed by another agent: placed elsewhere.
    let stale = registry
        .stale_domains(&other_agent, &listed[..1])
        .await
        .expect("stale");
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert_eq!(stale[0].name, one.name);
    assert_eq!(stale[0].placed_on_agent_id, one.agent_id);
    assert!(
        stale[0].reason.starts_with("placed on ")
            && stale[0]
                .reason
                .ends_with(&format!("({}) by the registry", one.agent_id)),
        "{}",
        stale[0].reason
    );
    // Over the wire, for a known agent.
    let r = coord
        .heartbeat(HeartbeatRequest {
            agent_id: other_agent.clone(),
            domains: listed[..1].to_vec(),
            available: None,
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(!r.reregister);
    assert_eq!(r.stale_domains.len(), 1, "{r:?}");
    for a in g.agents {
        a.stop().await;
    }
}

/// The note a boot-timeout failure carries: `console: (empty)` for a guest that printed
/// nothing (libvirt's test driver boots nothing), its last lines once it printed some,
/// and why not when the agent cannot say.
#[tokio::test]
async fn a_failure_note_carries_the_end_of_the_clones_console() {
    let g = grid().await;
    let mut coord = g.client().await.expect("connect");
    let (_, summary) = run(coord
        .deploy(DeployRequest {
            request_id: "note".into(),
            spec: Some(spec("stalec", 1)),
            dry_run: false,
        })
        .await)
    .await;
    assert_eq!(summary.succeeded, 1, "{summary:?}");
    let registry = g.coordinator.registry().clone();
    let c = registry.list_clones("stalec").await.expect("clones")[0].clone();
    let i = g
        .agents
        .iter()
        .position(|a| a.agent.id() == c.agent_id)
        .expect("its agent");
    let agents = Agents::new(Some(TOKEN.into()));
    let ep = &g.endpoints[i];
    // The test hypervisor's domains have no serial device: nothing is kept.
    assert_eq!(
        agents.console_note(ep, &c.name, 15).await,
        "console: (not kept by the agent)"
    );
    // One with a serial console, whose guest printed nothing yet.
    let agent = &g.agents[i].agent;
    let kernel = agent.blobs().put_bytes(b"kernel").expect("blob");
    agent
        .create_from_blobs(
            napalm_agent::core::CreateSpec {
                name: "stalec-serial".into(),
                config_xml: "<domain type='test'><name>stalec-serial</name>\
                    <memory unit='MiB'>64</memory><vcpu>1</vcpu>\
                    <os><type arch='x86_64'>hvm</type><kernel>vmlinuz</kernel></os>\
                    <devices><serial type='pty'><target port='0'/></serial></devices></domain>"
                    .into(),
                artifacts: vec![napalm_agent::core::ArtifactSpec {
                    name: "vmlinuz".into(),
                    blob: kernel,
                    writable: false,
                }],
                start: true,
                restart: napalm_agent::domain_store::RestartPolicy::Never,
                labels: Default::default(),
                scratch_disks: Vec::new(),
                boot_from_template: false,
            },
            None,
        )
        .await
        .expect("create");
    assert_eq!(
        agents.console_note(ep, "stalec-serial", 15).await,
        "console: (empty)"
    );
    agent
        .delete("stalec-serial", true, None, None)
        .await
        .expect("delete");
    let log = g
        .dir
        .path()
        .canonicalize()
        .expect("dir")
        .join(format!("agent{i}/domains/{}/console.log", c.name));
    let text: String = (0..30).map(|n| format!("line {n}\r\n")).collect::<String>()
        + "Kernel panic - not syncing: VFS: Unable to mount root fs\r\n";
    std::fs::write(&log, text).expect("write the console");
    assert_eq!(
        agents.console_note(ep, &c.name, 3).await,
        "console: line 28 | line 29 | Kernel panic - not syncing: VFS: Unable to mount root fs"
    );
    let none = agents.console_note(ep, "stalec-99", 3).await;
    assert!(none.starts_with("console: (unavailable: "), "{none}");
    for a in g.agents {
        a.stop().await;
    }
}
