//! The deploy pipeline end to end over real gRPC on loopback: a coordinator service and two
//! real napalm-agents on libvirt's `test:///default` driver. Deploy 8, undeploy, redeploy
//! the same name: exactly 8 domains, no duplicates; bad input refused with nothing written.
//! What the control loop does with no client connected is in `converge.rs`.

use std::collections::HashMap;

use napalm_agent::server::Running;
use napalm_coordinator::testing::{spec, GridOptions, TestGrid};
use napalm_proto::v1::agent_service_client::AgentServiceClient;
use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use napalm_proto::v1::*;
use napalm_proto::ApiError;
use tokio_stream::StreamExt;

pub const TOKEN: &str = "agent-test-token";

/// The coordinator's client, the agents and their endpoints, from the shared test grid.
struct Grid {
    coord: CoordinatorServiceClient<tonic::transport::Channel>,
    agents: Vec<Running>,
    endpoints: Vec<String>,
    _dir: tempfile::TempDir,
    _coordinator: napalm_coordinator::server::Running,
}

async fn grid() -> Grid {
    let t = TestGrid::start(GridOptions {
        agent_token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await
    .expect("grid starts");
    let coord = t.client().await.expect("connect to the coordinator");
    Grid {
        coord,
        agents: t.agents,
        endpoints: t.endpoints,
        _dir: t.dir,
        _coordinator: t.coordinator,
    }
}

pub(crate) async fn run(
    stream: Result<tonic::Response<tonic::Streaming<DeployProgress>>, tonic::Status>,
) -> (Vec<DeployProgress>, DeploySummary) {
    let mut s = stream.expect("call accepted").into_inner();
    let mut all = Vec::new();
    while let Some(m) = s.next().await {
        all.push(m.expect("stream item"));
    }
    let summary = match all.last().and_then(|m| m.event.clone()) {
        Some(deploy_progress::Event::Summary(s)) => s,
        other => panic!("stream did not end with a summary: {other:?}"),
    };
    (all, summary)
}

/// The error a deploy ends with: refused at the call, or as the stream's last item.
pub(crate) async fn refusal(
    call: Result<tonic::Response<tonic::Streaming<DeployProgress>>, tonic::Status>,
) -> tonic::Status {
    let mut s = match call {
        Ok(s) => s.into_inner(),
        Err(e) => return e,
    };
    let mut err = None;
    while let Some(m) = s.next().await {
        if let Err(e) = m {
            err = Some(e);
        }
    }
    err.expect("the stream ends with an error")
}

/// Adds the agents' bearer token to a request.
fn bearer(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("ascii"),
    );
    Ok(r)
}

/// A client of the agent at `ep`, with the agents' token.
pub(crate) async fn agent_client(
    ep: &str,
) -> AgentServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
> {
    let channel = tonic::transport::Channel::from_shared(ep.to_owned())
        .expect("uri")
        .connect()
        .await
        .expect("agent");
    AgentServiceClient::with_interceptor(channel, bearer as fn(_) -> _)
}

/// The running domains an agent owns, from the agent itself.
pub(crate) async fn running_on(ep: &str) -> Vec<Domain> {
    agent_client(ep)
        .await
        .list_domains(ListDomainsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .domains
        .into_iter()
        .filter(|d| d.state == DomainState::Running as i32)
        .collect()
}

/// Domains per agent, by name, from the agents themselves.
async fn domains(g: &Grid) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for ep in &g.endpoints {
        let mut names: Vec<String> = running_on(ep).await.into_iter().map(|d| d.name).collect();
        names.sort();
        out.push(names);
    }
    out
}

pub(crate) fn total(d: &[Vec<String>]) -> Vec<String> {
    let mut all: Vec<String> = d.iter().flatten().cloned().collect();
    all.sort();
    all
}

#[tokio::test]
async fn deploy_eight_on_two_agents_undeploy_and_redeploy_gives_exactly_eight() {
    let mut g = grid().await;
    let (events, summary) = run(g
        .coord
        .deploy(DeployRequest {
            request_id: "d1".into(),
            spec: Some(spec("grid1", 8)),
            dry_run: false,
        })
        .await)
    .await;
    assert_eq!(
        (summary.requested, summary.succeeded, summary.failed),
        (8, 8, 0),
        "{summary:?}"
    );
    let phases: Vec<i32> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(deploy_progress::Event::Clone(c)) => c.clone.as_ref().map(|c| c.phase),
            _ => None,
        })
        .collect();
    for p in [
        ClonePhase::Scheduled,
        ClonePhase::Layer,
        ClonePhase::Shipped,
        ClonePhase::Running,
    ] {
        assert_eq!(
            phases.iter().filter(|x| **x == p as i32).count(),
            8,
            "{p:?} per clone"
        );
    }
    let d = domains(&g).await;
    assert_eq!(d[0].len(), 4, "spread: {d:?}");
    assert_eq!(d[1].len(), 4, "spread: {d:?}");
    let expected: Vec<String> = (1..=8).map(|i| format!("grid1-{i:02}")).collect();
    assert_eq!(total(&d), expected);

    // Deploying again converges: nothing new.
    let (_, again) = run(g
        .coord
        .deploy(DeployRequest {
            request_id: "d2".into(),
            spec: Some(spec("grid1", 8)),
            dry_run: false,
        })
        .await)
    .await;
    assert_eq!(again.succeeded, 8);
    assert_eq!(
        total(&domains(&g).await),
        expected,
        "a re-run duplicated or lost clones"
    );

    // Undeploy removes them all, from agents and registry.
    let (_, gone) = run(g
        .coord
        .undeploy(UndeployRequest {
            request_id: "u1".into(),
            name: "grid1".into(),
            purge: true,
        })
        .await)
    .await;
    assert_eq!((gone.succeeded, gone.failed), (8, 0));
    assert!(total(&domains(&g).await).is_empty());
    let clones = g
        .coord
        .list_clones(ListClonesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(clones.clones.is_empty());

    // Redeploy the same name: exactly 8 again.
    let (_, re) = run(g
        .coord
        .deploy(DeployRequest {
            request_id: "d3".into(),
            spec: Some(spec("grid1", 8)),
            dry_run: false,
        })
        .await)
    .await;
    assert_eq!(re.succeeded, 8);
    assert_eq!(total(&domains(&g).await), expected);
    let clones = g
        .coord
        .list_clones(ListClonesRequest {
            deployment: "grid1".into(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(clones.clones.len(), 8);
    let per_agent: HashMap<&str, usize> = clones.clones.iter().fold(HashMap::new(), |mut m, c| {
        *m.entry(c.agent_id.as_str()).or_default() += 1;
        m
    });
    assert_eq!(per_agent.len(), 2);

    for a in g.agents.drain(..) {
        a.stop().await;
    }
}

#[tokio::test]
async fn bad_deploy_input_is_refused_and_nothing_is_written() {
    let mut g = grid().await;
    let cases = [
        (spec("grid2", 0), "spec.count", "\"0\""),
        (spec("Bad_Name", 2), "spec.name", "\"Bad_Name\""),
        (
            DeploymentSpec {
                layers: vec!["nosuchset".into()],
                ..spec("grid2", 2)
            },
            "spec.layers",
            "\"nosuchset\"",
        ),
    ];
    for (s, field, quoted) in cases {
        let err = match g
            .coord
            .deploy(DeployRequest {
                request_id: "x".into(),
                spec: Some(s),
                dry_run: false,
            })
            .await
        {
            Ok(_) => panic!("{field}: accepted"),
            Err(e) => e,
        };
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err}");
        match ApiError::from_status(&err) {
            Some(ApiError::InvalidArgument {
                field: f,
                description,
            }) => {
                assert_eq!(f, field);
                assert!(description.contains(quoted), "{description}");
            }
            other => panic!("{other:?}"),
        }
    }
    // More clones than capacity: refused whole before anything is written, with one
    // reason per agent (issue #9's admission; before, the deployment was recorded and its
    // clones failed).
    let mut big = spec("grid3", 3);
    big.resources = Some(Resources {
        vcpus: 1,
        memory_bytes: 1 << 40,
    });
    let err = refusal(
        g.coord
            .deploy(DeployRequest {
                request_id: "y".into(),
                spec: Some(big.clone()),
                dry_run: false,
            })
            .await,
    )
    .await;
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    let lines: Vec<&str> = err.message().lines().collect();
    assert!(
        lines[0].contains("3 clone(s) of \"grid3\" to place, 0 fit"),
        "{err}"
    );
    let reasons: Vec<&&str> = lines.iter().filter(|l| l.contains("MiB free")).collect();
    assert_eq!(reasons.len(), 2, "one reason per agent: {err}");
    assert!(total(&domains(&g).await).is_empty());
    let deps = g
        .coord
        .list_deployments(ListDeploymentsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(deps.deployments.is_empty(), "nothing recorded: {deps:?}");

    // Allowed to wait, the same clones stay pending, each with a reason per agent.
    big.allow_pending = true;
    let (events, summary) = run(g
        .coord
        .deploy(DeployRequest {
            request_id: "z".into(),
            spec: Some(big),
            dry_run: false,
        })
        .await)
    .await;
    assert_eq!((summary.succeeded, summary.failed), (0, 0), "{summary:?}");
    assert_eq!(summary.unplaced.len(), 3);
    assert_eq!(
        summary.unplaced[0].rejections.len(),
        2,
        "one reason per agent"
    );
    assert!(
        summary.unplaced[0].rejections[0]
            .reason
            .contains("MiB free"),
        "{:?}",
        summary.unplaced[0]
    );
    assert!(events
        .iter()
        .any(|e| matches!(e.event, Some(deploy_progress::Event::Unplaced(_)))));
    assert!(total(&domains(&g).await).is_empty());
    let clones = g
        .coord
        .list_clones(ListClonesRequest {
            deployment: "grid3".into(),
        })
        .await
        .expect("clones")
        .into_inner()
        .clones;
    assert!(
        clones.len() == 3
            && clones.iter().all(|c| c.phase == ClonePhase::Pending as i32
                && c.last_error.contains("waits for capacity")),
        "{clones:?}"
    );
    for a in g.agents.drain(..) {
        a.stop().await;
    }
}

#[test]
fn domain_xml_for_every_hypervisor_passes_libvirts_schema() {
    use napalm_coordinator::deploy::xml::{domain_xml, DomainParams};
    let dir = tempfile::tempdir().expect("temp dir");
    for hv in [
        Hypervisor::Qemu,
        Hypervisor::Kvm,
        Hypervisor::Xen,
        Hypervisor::Test,
    ] {
        // A firmware ROM with the state disk, libvirt's default without (the XML carries
        // it for QEMU/KVM only).
        for disk in [None, Some("state.img")] {
            let firmware = disk.map(|_| "firmware.rom");
            let xml = domain_xml(
                hv,
                &DomainParams {
                    name: "grid1-01",
                    vcpus: 2,
                    memory: 512 << 20,
                    kernel: "vmlinuz",
                    firmware,
                    cmdline:
                        "console=ttyS0 root=nfs:10.77.0.1:/:ro;layer:grid1-01:ro;tmpfs:rw ip=dhcp",
                    state_disk: disk,
                    scratch_disks: &[],
                    transient_scratch: false,
                    mac: "52:54:00:12:34:56",
                    network: Some("napalm"),
                    ip: Some(std::net::Ipv4Addr::new(10, 77, 0, 101)),
                    acpi: true,
                    hugepages: true,
                },
            );
            // Validate what libvirt gets: the agent rewrites bare artifact names to files
            // in the domain's own directory.
            let files = "/var/lib/napalm/agent/domains/grid1-01/files";
            let xml = xml
                .replace(">vmlinuz<", &format!(">{files}/vmlinuz<"))
                .replace(">initrd.img<", &format!(">{files}/initrd.img<"))
                .replace(">firmware.rom<", &format!(">{files}/firmware.rom<"))
                .replace("file='state.img'", &format!("file='{files}/state.img'"));
            let path = dir.path().join(format!("{hv:?}.xml"));
            std::fs::write(&path, &xml).expect("write xml");
            let out = std::process::Command::new("virt-xml-validate")
                .arg(&path)
                .arg("domain")
                .output()
                .expect("virt-xml-validate (libvirt-clients) runs");
            assert!(
                out.status.success(),
                "{hv:?} XML rejected by libvirt's schema:\n{xml}\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[tokio::test]
async fn deploy_with_every_agent_draining_is_refused_and_writes_nothing() {
    let mut g = grid().await;
    let agents = g
        .coord
        .list_agents(ListAgentsRequest::default())
        .await
        .expect("agents")
        .into_inner()
        .agents;
    for a in &agents {
        g.coord
            .set_agent_state(SetAgentStateRequest {
                request_id: format!("drain-{}", a.id),
                id: a.id.clone(),
                state: AgentState::Draining as i32,
            })
            .await
            .expect("drain");
    }
    // The refusal comes from the server itself, so every client (napalmctl or another)
    // gets it before anything is written.
    let err = refusal(
        g.coord
            .deploy(DeployRequest {
                request_id: "none".into(),
                spec: Some(spec("gridnone", 2)),
                dry_run: false,
            })
            .await,
    )
    .await;
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("no ready agent"), "{err}");
    let deps = g
        .coord
        .list_deployments(ListDeploymentsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(deps.deployments.is_empty(), "{deps:?}");
    assert!(total(&domains(&g).await).is_empty());
    for a in g.agents.drain(..) {
        a.stop().await;
    }
}

/// A deployment's clones: name -> (agent, layer hash), from the coordinator.
async fn layer_hashes(
    g: &mut Grid,
    deployment: &str,
) -> std::collections::BTreeMap<String, (String, String)> {
    g.coord
        .list_clones(ListClonesRequest {
            deployment: deployment.into(),
        })
        .await
        .expect("clones")
        .into_inner()
        .clones
        .into_iter()
        .map(|k| (k.name, (k.agent_id, k.layer_hash)))
        .collect()
}

/// Running domains of the grid's agents: name -> its uuid and creation time.
async fn domain_ids(g: &Grid) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for ep in &g.endpoints {
        for d in running_on(ep).await {
            out.insert(d.name, format!("{} {:?}", d.uuid, d.created_at));
        }
    }
    out
}

#[tokio::test]
async fn a_changed_layer_replaces_each_clones_domain_where_it_is() {
    let mut g = grid().await;
    let deploy = |id: &str, layers: &[&str]| DeployRequest {
        request_id: id.into(),
        spec: Some(DeploymentSpec {
            layers: layers.iter().map(|l| (*l).to_owned()).collect(),
            ..spec("relayer", 4)
        }),
        dry_run: false,
    };
    let (_, first) = run(g.coord.deploy(deploy("r1", &["base"])).await).await;
    assert_eq!((first.succeeded, first.failed), (4, 0), "{first:?}");
    let before = layer_hashes(&mut g, "relayer").await;
    let ids_before = domain_ids(&g).await;
    assert_eq!(ids_before.len(), 4);

    // The cluster identity derives from the coordinator's secret, not from files in its
    // layers directory: with them gone (or on another coordinator sharing the secret) the
    // layers are the same and nothing is touched.
    std::fs::remove_dir_all(g._dir.path().join("layers")).expect("remove layers");
    let (progress, same) = run(g.coord.deploy(deploy("r2", &["base"])).await).await;
    assert_eq!((same.succeeded, same.failed), (4, 0), "{same:?}");
    // Checking an unchanged running clone never shows it down, not even for a moment (a
    // rollout's progress and `napalmctl watch` read these phases).
    let backwards: Vec<(String, i32)> = progress
        .iter()
        .filter_map(|m| match &m.event {
            Some(deploy_progress::Event::Clone(p)) => p.clone.as_ref(),
            _ => None,
        })
        .filter(|c| c.phase < ClonePhase::Running as i32)
        .map(|c| (c.name.clone(), c.phase))
        .collect();
    assert!(
        backwards.is_empty(),
        "running clones reported down: {backwards:?}"
    );
    assert_eq!(layer_hashes(&mut g, "relayer").await, before, "same layers");
    assert_eq!(domain_ids(&g).await, ids_before, "no domain recreated");

    // Another template set changes every layer: each domain is replaced on the agent that
    // holds it, not failed over elsewhere nor duplicated.
    let (_, again) = run(g.coord.deploy(deploy("r3", &["base", "mpi"])).await).await;
    assert_eq!((again.succeeded, again.failed), (4, 0), "{again:?}");
    let after = layer_hashes(&mut g, "relayer").await;
    for (name, (agent, hash)) in &before {
        let (agent2, hash2) = &after[name];
        assert_eq!(agent, agent2, "{name} stayed on its agent");
        assert_ne!(hash, hash2, "{name} has a new layer");
    }
    let ids_after = domain_ids(&g).await;
    assert_eq!(
        ids_after.keys().collect::<Vec<_>>(),
        ids_before.keys().collect::<Vec<_>>(),
        "exactly the same clones run"
    );
    for (name, id) in &ids_after {
        assert_ne!(id, &ids_before[name], "{name}'s domain was recreated");
    }
}

/// Two shipments of one blob to one agent at once (a deploy meeting the control loop's
/// prefetch of the kernel) upload it once: the second waits, then finds it present.
#[tokio::test]
async fn one_blob_shipped_twice_at_once_to_an_agent_is_uploaded_once() {
    use napalm_coordinator::deploy::ship::{Agents, Blob};
    let g = grid().await;
    let agents = Agents::new(Some(TOKEN.into()));
    let blob = Blob::new("kernel", vec![9u8; 16 << 20]);
    let ep = &g.endpoints[0];
    let blobs = [&blob];
    let (a, b) = tokio::join!(agents.ship(ep, &blobs), agents.ship(ep, &blobs));
    let mut sent = [a.expect("first shipment"), b.expect("second shipment")];
    sent.sort_unstable();
    assert_eq!(sent, [0, 16 << 20], "bytes uploaded by each shipment");
}
