//! Registry behaviour over a real embedded store: agent registration, heartbeats and TTL,
//! draining, clone registration with tokens, and the same through gRPC on loopback.

use std::sync::Arc;
use std::time::Duration;

use napalm_coordinator::clock::ManualClock;
use napalm_coordinator::registry::agents::HeartbeatPolicy;
use napalm_coordinator::registry::clones::TokenKey;
use napalm_coordinator::registry::{Registry, RegistryError, CLONES};
use napalm_coordinator::service::Coordinator;
use napalm_coordinator::store;
use napalm_proto::v1::*;
use napalm_proto::ApiError;

struct Fixture {
    registry: Registry,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = store::open(dir.path().join("r.redb").to_str().expect("utf-8"))
        .await
        .expect("open store");
    let clock = Arc::new(ManualClock::at(1_795_000_000_000));
    Fixture {
        registry: Registry::new(s, clock.clone()),
        clock,
        _dir: dir,
    }
}

fn req(id: &str) -> RegisterAgentRequest {
    RegisterAgentRequest {
        request_id: format!("r-{id}"),
        id: id.into(),
        name: format!("host-{id}"),
        grpc_endpoint: "http://10.77.0.2:7701".into(),
        rest_endpoint: "http://10.77.0.2:7702/napalm".into(),
        version: "0.1.0".into(),
        ..Default::default()
    }
}

fn api(e: RegistryError) -> ApiError {
    ApiError::from(e)
}

#[tokio::test]
async fn agents_register_once_heartbeat_and_go_down_after_their_ttl() {
    let f = fixture().await;
    let policy = HeartbeatPolicy::default();
    let r = &f.registry;
    r.register_agent(req("a1"), AgentSource::Registration, &policy)
        .await
        .expect("a1");
    r.register_agent(req("a2"), AgentSource::Mdns, &policy)
        .await
        .expect("a2");
    r.register_agent(req("a1"), AgentSource::Registration, &policy)
        .await
        .expect("a1 again");
    let agents = r.list_agents(&[]).await.expect("list");
    assert_eq!(agents.len(), 2, "re-registration duplicated an agent");
    assert!(agents.iter().all(|a| a.state == AgentState::Ready as i32));

    // a1 keeps beating, a2 goes silent past the TTL.
    f.clock.advance(Duration::from_secs(8));
    let hb = r
        .heartbeat(
            HeartbeatRequest {
                agent_id: "a1".into(),
                ..Default::default()
            },
            &policy,
        )
        .await
        .expect("beat");
    assert!(!hb.reregister);
    f.clock.advance(Duration::from_secs(5));
    assert_eq!(r.sweep_agents().await.expect("sweep"), ["a2"]);
    assert_eq!(
        r.get_agent("host-a2").await.expect("by name").state,
        AgentState::Down as i32
    );
    // It comes back with its next heartbeat.
    r.heartbeat(
        HeartbeatRequest {
            agent_id: "a2".into(),
            ..Default::default()
        },
        &policy,
    )
    .await
    .expect("beat");
    assert_eq!(
        r.get_agent("a2").await.expect("a2").state,
        AgentState::Ready as i32
    );

    // An unknown agent is told to register again.
    let hb = r
        .heartbeat(
            HeartbeatRequest {
                agent_id: "ghost".into(),
                ..Default::default()
            },
            &policy,
        )
        .await
        .expect("beat");
    assert!(hb.reregister);
}

#[tokio::test]
async fn draining_survives_re_registration_and_bad_input_is_refused() {
    let f = fixture().await;
    let policy = HeartbeatPolicy::default();
    let r = &f.registry;
    r.register_agent(req("a1"), AgentSource::Static, &policy)
        .await
        .expect("a1");
    r.set_agent_state("a1", AgentState::Draining)
        .await
        .expect("drain");
    r.register_agent(req("a1"), AgentSource::Registration, &policy)
        .await
        .expect("again");
    assert_eq!(
        r.get_agent("a1").await.expect("a1").state,
        AgentState::Draining as i32
    );

    match api(r
        .set_agent_state("a1", AgentState::Down)
        .await
        .expect_err("down by hand"))
    {
        ApiError::InvalidArgument { field, .. } => assert_eq!(field, "state"),
        other => panic!("{other}"),
    }
    let mut bad = req("a/../b");
    let e = api(r
        .register_agent(bad.clone(), AgentSource::Static, &policy)
        .await
        .expect_err("id"));
    assert!(e.to_string().contains("\"a/../b\""), "{e}");
    bad = req("ok");
    bad.grpc_endpoint = "10.0.0.1:7701".into();
    let e = api(r
        .register_agent(bad, AgentSource::Static, &policy)
        .await
        .expect_err("url"));
    assert!(e.to_string().contains("\"10.0.0.1:7701\""), "{e}");
    assert!(matches!(
        api(r.get_agent("nope").await.expect_err("unknown")),
        ApiError::NotFound { .. }
    ));
    assert_eq!(
        r.list_agents(&[]).await.expect("list").len(),
        1,
        "bad input was stored"
    );
}

#[test]
fn heartbeat_ttl_grows_with_the_cluster() {
    let p = HeartbeatPolicy::default();
    assert_eq!(p.ttl(10), Duration::from_secs(10));
    assert_eq!(p.ttl(5_000), Duration::from_secs(100));
    assert_eq!(p.interval(5_000), Duration::from_secs(50));
}

/// Untrusted advertisements are recorded beside the agent they claim to be, never over
/// it; untrusted and revoked agents keep their state and reason through the sweep and a
/// re-registration, cannot be set ready by hand, and take no placements.
#[tokio::test]
async fn untrusted_and_revoked_agents_keep_their_state_and_reason() {
    let f = fixture().await;
    let policy = HeartbeatPolicy::default();
    let r = &f.registry;
    r.register_agent(req("a1"), AgentSource::Registration, &policy)
        .await
        .expect("a1");
    let rec = r
        .record_untrusted(
            "a1",
            "https://10.77.0.66:7701",
            None,
            "its certificate does not chain to the cluster CA",
        )
        .await
        .expect("untrusted recorded");
    assert_eq!(rec, "untrusted:10.77.0.66:7701");
    let a1 = r.get_agent("a1").await.expect("a1");
    assert_eq!(
        a1.state,
        AgentState::Ready as i32,
        "the real record is left alone"
    );
    assert_eq!(a1.grpc_endpoint, "http://10.77.0.2:7701");
    let u = r.get_agent(&rec).await.expect("untrusted record");
    assert_eq!(u.state, AgentState::Untrusted as i32);
    assert_eq!(u.name, "a1");
    assert_eq!(
        u.state_reason,
        "its certificate does not chain to the cluster CA"
    );

    // Revoked (as Trust::revoke_agent marks it).
    let key = format!("{}a1", napalm_coordinator::registry::AGENTS);
    r.update::<Agent, _>(&key, |cur| {
        Ok(cur.map(|mut a| {
            a.state = AgentState::Revoked as i32;
            a.state_reason = "host stolen".into();
            a
        }))
    })
    .await
    .expect("revoked");
    r.register_agent(req("a1"), AgentSource::Registration, &policy)
        .await
        .expect("re-registration");
    let a1 = r.get_agent("a1").await.expect("a1");
    assert_eq!(a1.state, AgentState::Revoked as i32, "{a1:?}");
    assert_eq!(a1.state_reason, "host stolen");

    // Long past every TTL: neither goes down (down would hide why).
    f.clock.advance(Duration::from_secs(3600));
    let downed = r.sweep_agents().await.expect("sweep");
    assert!(downed.is_empty(), "{downed:?}");
    assert_eq!(
        r.get_agent(&rec).await.expect("u").state,
        AgentState::Untrusted as i32
    );

    for id in ["a1", rec.as_str()] {
        let e = api(r
            .set_agent_state(id, AgentState::Ready)
            .await
            .expect_err("not settable by hand"));
        assert!(e.to_string().contains("cannot be set ready"), "{e}");
    }
    assert!(r
        .list_agents(&[AgentState::Ready])
        .await
        .expect("list")
        .is_empty());

    // An agent verified at that address clears the untrusted record.
    r.forget_untrusted("https://10.77.0.66:7701")
        .await
        .expect("forget");
    assert!(r.get_agent(&rec).await.is_err());
}

#[tokio::test]
async fn a_clone_registers_only_with_its_own_token() {
    let f = fixture().await;
    let key = TokenKey::new(b"0123456789abcdef-secret").expect("key");
    let r = &f.registry;
    // A placed clone record, as the deploy pipeline leaves it.
    r.update::<Clone, _>(&format!("{CLONES}grid1-01"), |_| {
        Ok(Some(Clone {
            name: "grid1-01".into(),
            deployment: "grid1".into(),
            index: 1,
            phase: ClonePhase::Running as i32,
            agent_id: "agent-a".into(),
            ..Default::default()
        }))
    })
    .await
    .expect("seed clone");
    let mut req = RegisterCloneRequest {
        name: "grid1-01".into(),
        token: key.token("grid1-02"),
        addresses: vec!["10.77.0.101/24".into()],
        ..Default::default()
    };
    assert!(matches!(
        api(r
            .register_clone(req.clone(), &key)
            .await
            .expect_err("other clone's token")),
        ApiError::Unauthenticated { .. }
    ));
    req.token = key.token("grid1-01");
    req.addresses = vec!["10.77.0.300".into()];
    let e = api(r
        .register_clone(req.clone(), &key)
        .await
        .expect_err("bad address"));
    assert!(e.to_string().contains("\"10.77.0.300\""), "{e}");
    req.addresses = vec!["10.77.0.101/24".into()];
    // A domain of the clone on another agent than the registry places it on is stale: its
    // registration is refused and changes nothing.
    req.agent_id = "agent-b".into();
    let e = api(r
        .register_clone(req.clone(), &key)
        .await
        .expect_err("stale domain"));
    assert!(
        matches!(e, ApiError::Conflict { .. }) && e.to_string().contains("\"agent-b\""),
        "{e}"
    );
    req.agent_id = "agent-a".into();
    let c = r
        .register_clone(req, &key)
        .await
        .expect("registers")
        .clone
        .expect("clone");
    assert_eq!(c.phase, ClonePhase::Registered as i32);
    assert_eq!(c.addresses, ["10.77.0.101/24"]);
    assert!(c.registered_at.is_some());
}

#[tokio::test]
async fn the_grpc_service_serves_the_registry_over_loopback() {
    let f = fixture().await;
    let key = TokenKey::new(b"0123456789abcdef-secret").expect("key");
    let svc = Coordinator::new(
        f.registry.clone(),
        HeartbeatPolicy::default(),
        Arc::new(key),
        None,
    );
    let mut c = crate::common::serve(svc).await;
    let resp = c
        .register_agent(req("a1"))
        .await
        .expect("register")
        .into_inner();
    assert_eq!(resp.heartbeat_interval.map(|d| d.seconds), Some(5));
    let agents = c
        .list_agents(ListAgentsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(agents.agents.len(), 1);
    assert_eq!(agents.agents[0].source, AgentSource::Registration as i32);
    let err = c
        .get_agent(GetAgentRequest { id: "zz".into() })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(
        ApiError::from_status(&err).is_some(),
        "no napalm error details"
    );
    let err = match c.deploy(DeployRequest::default()).await {
        Ok(_) => panic!("deploy without a configured pipeline must be refused"),
        Err(e) => e,
    };
    assert_eq!(err.code(), tonic::Code::Unavailable);
}
