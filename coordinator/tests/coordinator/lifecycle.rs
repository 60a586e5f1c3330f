//! A deployment's life after its first deploy, on the libvirt test driver, with the control
//! loop running every 200 ms and no client following: a clones.conf declares the clones
//! and an edited file converges; a changed spec rolls clones in batches and a broken one
//! pauses the rollout with the old clones running; a clone whose domain dies is restarted
//! on its agent, then replaced elsewhere past its restart budget (how it is recorded
//! meanwhile: `died`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use napalm_coordinator::testing::{spec, GridOptions, TestGrid};
use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use napalm_proto::v1::*;

use crate::deploy::{run, running_on, TOKEN};

type Client = CoordinatorServiceClient<tonic::transport::Channel>;

/// A template set `probe` whose one file prints the value `probe` (strict: a clone
/// without it does not build).
fn probe_set(dir: &Path) -> PathBuf {
    let sets = dir.join("sets");
    let etc = sets.join("probe/root/etc");
    std::fs::create_dir_all(&etc).expect("mkdir");
    std::fs::write(etc.join("probe.tmpl"), "{{probe}}\n").expect("write template");
    sets
}

/// Two agents, a loop every 200 ms, the `probe` set beside the shipped ones; returns the
/// grid, a client and the directory layers are written to.
async fn grid(budget: u32) -> (TestGrid, Client, PathBuf) {
    grid_looping(budget, Some(Duration::from_millis(200))).await
}

/// [`grid`] with the control loop running `every` (never: `None`).
pub(crate) async fn grid_looping(
    budget: u32,
    every: Option<Duration>,
) -> (TestGrid, Client, PathBuf) {
    let mut layers = PathBuf::new();
    let g = TestGrid::start_with(
        GridOptions {
            agent_token: Some(TOKEN.into()),
            ..Default::default()
        },
        |cfg| {
            cfg.converge_every = every;
            if let Some(d) = cfg.deploy.as_mut() {
                // Inside the grid's own directory, removed with it.
                let dir = d
                    .artifacts
                    .layers_dir
                    .parent()
                    .expect("the grid's directory");
                d.artifacts.sets.push(probe_set(dir));
                d.restart_budget = budget;
                layers = d.artifacts.layers_dir.clone();
            }
        },
    )
    .await
    .expect("grid starts");
    let coord = g.client().await.expect("connect");
    (g, coord, layers)
}

pub(crate) async fn clones(coord: &mut Client, deployment: &str) -> Vec<Clone> {
    let mut c = coord
        .list_clones(ListClonesRequest {
            deployment: deployment.into(),
        })
        .await
        .expect("clones")
        .into_inner()
        .clones;
    c.sort_by_key(|c| c.index);
    c
}

pub(crate) async fn deployment(coord: &mut Client, name: &str) -> Deployment {
    coord
        .get_deployment(GetDeploymentRequest { name: name.into() })
        .await
        .expect("deployment")
        .into_inner()
}

fn probe(layers: &Path, deployment: &str, clone: &str) -> String {
    std::fs::read_to_string(layers.join(format!("{deployment}/{clone}/root/etc/probe")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Names of the domains every agent runs, sorted.
async fn domains(g: &TestGrid) -> Vec<String> {
    let mut all = Vec::new();
    for ep in &g.endpoints {
        all.extend(running_on(ep).await.into_iter().map(|d| d.name));
    }
    all.sort();
    all
}

fn conf_spec(name: &str, conf: &str) -> DeploymentSpec {
    DeploymentSpec {
        clones_conf: conf.into(),
        clones_conf_file: "lab.conf".into(),
        count: 0,
        ..spec(name, 0)
    }
}

pub(crate) async fn deploy(coord: &mut Client, s: DeploymentSpec) -> DeploySummary {
    let (_, summary) = run(coord
        .deploy(DeployRequest {
            request_id: format!("{}-{}", s.name, s.clones_conf.len()),
            spec: Some(s),
            dry_run: false,
        })
        .await)
    .await;
    summary
}

/// Waits until `ok` holds of the deployment's clones, or fails with them.
pub(crate) async fn until(
    coord: &mut Client,
    deployment: &str,
    within: Duration,
    what: &str,
    ok: impl Fn(&[Clone]) -> bool,
) -> Vec<Clone> {
    let deadline = Instant::now() + within;
    loop {
        let c = clones(coord, deployment).await;
        if ok(&c) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}: {:#?}",
            c.iter()
                .map(|c| (&c.name, c.phase, &c.agent_id, &c.last_action, &c.last_error))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const LAB: &str = "\
layers: [base, probe]
probe: v1
groups:
  attack of the clones:
    hosts:
      lab01:
      lab02:
      lab03:
        probe: own
";

/// The file's hosts are the clones, with their group's sets and their own values; the
/// stored spec keeps the file; an edited file converges (added, removed, changed).
#[tokio::test]
async fn a_clones_conf_declares_the_clones_and_an_edited_file_converges() {
    let (g, mut coord, layers) = grid(3).await;
    let s = deploy(&mut coord, conf_spec("lab", LAB)).await;
    assert_eq!((s.requested, s.succeeded, s.failed), (3, 3, 0), "{s:?}");
    let c = clones(&mut coord, "lab").await;
    let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["lab01", "lab02", "lab03"]);
    assert_eq!(probe(&layers, "lab", "lab01"), "v1");
    assert_eq!(
        probe(&layers, "lab", "lab03"),
        "own",
        "the host's value wins"
    );
    assert_eq!(domains(&g).await, ["lab01", "lab02", "lab03"]);
    let d = deployment(&mut coord, "lab").await;
    let stored = d.spec.clone().expect("spec");
    assert_eq!((d.spec_revision, stored.count), (1, 3));
    assert_eq!(stored.clones_conf, LAB, "the file is stored as sent");
    assert_eq!(stored.clone_names, ["lab01", "lab02", "lab03"]);

    // Edit: lab02 goes, lab04 comes, lab03 changes its value.
    let edited = LAB
        .replace("      lab02:\n", "")
        .replace("probe: own", "probe: changed")
        + "      lab04:\n";
    let lab01 = c[0].clone();
    let s = deploy(&mut coord, conf_spec("lab", &edited)).await;
    assert_eq!((s.requested, s.failed), (3, 0), "{s:?}");
    let c = clones(&mut coord, "lab").await;
    let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["lab01", "lab03", "lab04"]);
    assert_eq!(domains(&g).await, ["lab01", "lab03", "lab04"]);
    assert_eq!(probe(&layers, "lab", "lab03"), "changed");
    let d = deployment(&mut coord, "lab").await;
    assert_eq!(d.spec_revision, 2);
    assert_eq!(d.previous_spec.map(|p| p.clones_conf).as_deref(), Some(LAB));
    assert_eq!(
        d.rollout.map(|r| r.state),
        Some(RolloutState::Complete as i32)
    );
    // The unchanged clone was not touched: same layer, same agent.
    assert_eq!(c[0].layer_hash, lab01.layer_hash);
    assert_eq!(c[0].agent_id, lab01.agent_id);
    assert!(c.iter().all(|c| c.spec_revision == 2), "{c:?}");

    // A name another deployment holds is refused, nothing written.
    let clash = deploy_refused(&mut coord, conf_spec("other", &edited)).await;
    assert!(
        clash.contains("\"lab01\"") && clash.contains("already a clone of deployment \"lab\""),
        "{clash}"
    );
    assert!(coord
        .get_deployment(GetDeploymentRequest {
            name: "other".into()
        })
        .await
        .is_err());
    // A malformed file is refused quoting where.
    let bad = deploy_refused(&mut coord, conf_spec("lab", "groups: [oops\n")).await;
    assert!(bad.contains("lab.conf"), "{bad}");
    assert_eq!(deployment(&mut coord, "lab").await.spec_revision, 2);
}

async fn deploy_refused(coord: &mut Client, s: DeploymentSpec) -> String {
    let status = crate::deploy::refusal(
        coord
            .deploy(DeployRequest {
                request_id: "refused".into(),
                spec: Some(s),
                dry_run: false,
            })
            .await,
    )
    .await;
    status.message().to_owned()
}

/// A changed value rolls the clones at most two down at once, with no client after the
/// deploy; a template that does not build pauses the rollout and the old clones keep
/// running; undo goes back.
#[tokio::test]
async fn a_changed_spec_rolls_in_batches_and_a_broken_one_pauses() {
    let (_g, mut coord, layers) = grid(3).await;
    let conf = |v: &str| {
        let mut s = format!("layers: [base, probe]\nprobe: {v}\nhosts:\n");
        for i in 1..=6 {
            s += &format!("  roll0{i}:\n");
        }
        s
    };
    let mut s = conf_spec("roll", &conf("v1"));
    s.max_unavailable = 2;
    assert_eq!(deploy(&mut coord, s.clone()).await.succeeded, 6);

    // Watch every clone change while the rollout runs.
    let mut events = coord
        .watch_events(WatchEventsRequest {
            deployment: "roll".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let worst = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&worst);
    let sampler = tokio::spawn(async move {
        // One registry listing's changes share their `at`: count between listings.
        let mut phase = std::collections::HashMap::new();
        let mut last_at = None;
        while let Ok(Some(e)) = events.message().await {
            if let Some(event::Payload::Clone(c)) = e.payload {
                if c.deployment == "roll" {
                    if last_at.is_some() && e.at != last_at {
                        let down = phase
                            .values()
                            .filter(|p| **p != ClonePhase::Running as i32)
                            .count();
                        seen.fetch_max(down, std::sync::atomic::Ordering::Relaxed);
                    }
                    last_at = e.at;
                    phase.insert(c.name.clone(), c.phase);
                }
            }
        }
    });
    s.clones_conf = conf("v2");
    let summary = deploy(&mut coord, s.clone()).await;
    // The control loop replaces batches beside the client's runs; the client's answer
    // still waits for every clone.
    assert_eq!((summary.succeeded, summary.failed), (6, 0), "{summary:?}");
    let done = until(&mut coord, "roll", Duration::from_secs(20), "rolled", |c| {
        c.len() == 6
            && c.iter()
                .all(|c| c.spec_revision == 2 && c.phase == ClonePhase::Running as i32)
    })
    .await;
    for c in &done {
        assert_eq!(probe(&layers, "roll", &c.name), "v2");
    }
    let d = deployment(&mut coord, "roll").await;
    assert_eq!(
        d.rollout.as_ref().map(|r| (r.state, r.updated, r.total)),
        Some((RolloutState::Complete as i32, 6, 6)),
        "{d:?}"
    );
    sampler.abort();
    let worst = worst.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("at most {worst} clones down at once (sampled between registry listings)");
    assert!(
        worst <= 2,
        "{worst} clones down at once with max-unavailable 2"
    );

    // A broken template: `probe` unset. The rollout pauses; nothing is replaced.
    let before = clones(&mut coord, "roll").await;
    let mut broken = s.clone();
    broken.clones_conf = conf("v2").replace("probe: v2\n", "");
    let _ = deploy(&mut coord, broken).await;
    let d = deployment(&mut coord, "roll").await;
    let r = d.rollout.clone().expect("rollout");
    assert_eq!(r.state, RolloutState::Paused as i32, "{d:?}");
    assert!(
        r.message.contains("does not build") && r.message.contains("probe"),
        "{}",
        r.message
    );
    let after = clones(&mut coord, "roll").await;
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(
            (&a.name, &a.layer_hash, a.phase),
            (&b.name, &b.layer_hash, b.phase),
            "the old clones keep running"
        );
    }
    let status = coord
        .rollout(RolloutRequest {
            name: "roll".into(),
            action: RolloutAction::Status as i32,
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(
        status.rollout.map(|r| r.state),
        Some(RolloutState::Paused as i32)
    );

    // Undo: back to the v2 spec, a new revision, complete again by itself.
    let undone = coord
        .rollout(RolloutRequest {
            name: "roll".into(),
            action: RolloutAction::Undo as i32,
        })
        .await
        .expect("undo")
        .into_inner();
    assert_eq!(undone.spec_revision, 4);
    until(&mut coord, "roll", Duration::from_secs(20), "undone", |c| {
        c.iter().all(|c| c.spec_revision == 4)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = deployment(&mut coord, "roll").await;
        if d.rollout.as_ref().map(|r| r.state) == Some(RolloutState::Complete as i32) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the undo does not complete: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in clones(&mut coord, "roll").await {
        assert_eq!(probe(&layers, "roll", &c.name), "v2");
    }
    // Pausing a complete rollout says there is none.
    let none = coord
        .rollout(RolloutRequest {
            name: "roll".into(),
            action: RolloutAction::Pause as i32,
        })
        .await
        .expect_err("nothing to pause");
    assert!(none.message().contains("no rollout under way"), "{none:?}");
}

/// A clone whose domain dies behind everyone's back is started again on its agent; past
/// its restart budget (1 here) it is replaced on the other agent and the dead domain goes.
#[tokio::test]
async fn a_clone_that_dies_is_restarted_then_replaced() {
    let (g, mut coord, _) = grid(1).await;
    let s = spec("die1", 1);
    assert_eq!(deploy(&mut coord, s).await.succeeded, 1);
    let first = clones(&mut coord, "die1").await.remove(0);
    let agent_of = |id: &str| {
        g.agents
            .iter()
            .position(|a| a.agent.id() == id)
            .expect("placed on a grid agent")
    };
    let home = agent_of(&first.agent_id);
    let kill = |i: usize| {
        let hv = std::sync::Arc::clone(g.agents[i].agent.hypervisor());
        async move {
            tokio::task::spawn_blocking(move || hv.shutdown("die1-01", Duration::ZERO))
                .await
                .expect("join")
                .expect("destroy behind the agent's back");
        }
    };
    kill(home).await;
    let killed = Instant::now();
    let c = until(
        &mut coord,
        "die1",
        Duration::from_secs(10),
        "restarted",
        |c| c[0].restarts == 1 && c[0].phase == ClonePhase::Running as i32,
    )
    .await;
    eprintln!("restarted {:?} after the kill", killed.elapsed());
    assert_eq!(c[0].agent_id, first.agent_id, "restarted where it was");
    assert!(c[0].last_action.contains("restarted on"), "{:?}", c[0]);
    assert_eq!(running_on(&g.endpoints[home]).await.len(), 1);

    // Dies again: the budget of 1 is spent, it is replaced on the other agent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill(home).await;
    let killed = Instant::now();
    let c = until(
        &mut coord,
        "die1",
        Duration::from_secs(20),
        "replaced",
        |c| c[0].agent_id != first.agent_id && c[0].phase == ClonePhase::Running as i32,
    )
    .await;
    eprintln!("replaced {:?} after the second kill", killed.elapsed());
    assert_eq!(c[0].restarts, 0, "a fresh budget on the new agent");
    assert!(c[0].failed_agents.contains(&first.agent_id), "{:?}", c[0]);
    assert!(
        c[0].last_action.contains("it died past its restart budget"),
        "{:?}",
        c[0]
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !running_on(&g.endpoints[home]).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the dead domain stays on its old agent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(running_on(&g.endpoints[1 - home]).await.len(), 1);
}
