//! Reconciliation on `test:///default`, in-process: an agent restarted on the same state
//! directory adopts its running domains (nothing restarted, duplicated or lost), redefines
//! what libvirt lost, restarts per policy, finishes a change it was killed during, and
//! leaves foreign domains alone.

use napalm_agent::hypervisor::RunState;

use crate::common::*;

#[tokio::test]
async fn restart_adopts_and_repairs() {
    let mut a = TestAgent::start(None).await;
    for n in ["c-one", "c-two"] {
        assert_eq!(
            a.put(&format!("/domain/{n}"), test_archive(n))
                .await
                .status()
                .as_u16(),
            201
        );
    }
    let before: serde_json::Value = a.get("/domains.json").await.json().await.expect("json");
    let dir = a.stop().await;
    // The agent is gone; its domains keep running.
    assert_eq!(
        test_driver().state("c-one").expect("s"),
        Some(RunState::Running)
    );

    let b = TestAgent::start_in(dir, None).await;
    let after: serde_json::Value = b.get("/domains.json").await.json().await.expect("json");
    assert_eq!(after.as_array().expect("arr").len(), 2);
    for i in 0..2 {
        assert_eq!(
            after[i]["uuid"], before[i]["uuid"],
            "same domain, not a duplicate"
        );
        assert_eq!(after[i]["state"], "running");
    }
    let (replay, _rx) = b.running().agent.events.subscribe(0);
    assert!(replay.is_empty(), "since 0 means only new events");

    // libvirt loses a domain (undefined behind the agent's back): it is defined again and,
    // under the default on-failure policy, started again with the same uuid.
    let hv = test_driver();
    hv.undefine("c-two").expect("undefine");
    let rep = b.running().agent.reconcile(false).await.expect("reconcile");
    assert_eq!(rep.redefined, ["c-two"]);
    assert_eq!(rep.restarted, ["c-two"]);
    assert_eq!(hv.state("c-two").expect("s"), Some(RunState::Running));
    let again: serde_json::Value = b.get("/domains.json").await.json().await.expect("json");
    assert_eq!(again[1]["uuid"], before[1]["uuid"]);

    // Desired shutoff, but started by someone else: the agent converges to its desired state.
    b.put(
        "/domain/c-one/status.xml",
        "<status><state>shutoff</state></status>",
    )
    .await;
    hv.start("c-one").expect("start");
    b.running().agent.reconcile(false).await.expect("reconcile");
    assert_eq!(hv.state("c-one").expect("s"), Some(RunState::Shutoff));

    // A crash mid-delete (record marked deleting) is finished, not undone.
    let rec = b.dir.path().join("state/domains/c-two/record.json");
    let mut r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&rec).expect("read")).expect("json");
    r["deleting"] = true.into();
    std::fs::write(&rec, serde_json::to_vec(&r).expect("ser")).expect("write");
    let rep = b.running().agent.reconcile(false).await.expect("reconcile");
    assert_eq!(rep.deleted, ["c-two"]);
    assert!(!libvirt_has("c-two"));

    // The foreign "test" domain was never touched.
    assert_eq!(hv.state("test").expect("s"), Some(RunState::Running));
}

#[tokio::test]
async fn adoption_is_reported_on_first_pass() {
    let mut a = TestAgent::start(None).await;
    a.put("/domain/c-adopt", test_archive("c-adopt")).await;
    let dir = a.stop().await;
    let cfg = config(&dir.path().join("state"), None);
    let agent = napalm_agent::core::Agent::open(cfg.core, test_driver())
        .await
        .expect("open");
    let rep = agent.reconcile(true).await.expect("reconcile");
    assert_eq!(rep.adopted, ["c-adopt"]);
    assert!(rep.restarted.is_empty() && rep.redefined.is_empty());
    // A half-finished create (directory without record) is discarded on the first pass.
    std::fs::create_dir_all(dir.path().join("state/domains/c-half/files")).expect("mkdir");
    let rep = agent.reconcile(true).await.expect("reconcile");
    assert_eq!(rep.discarded, ["c-half"]);
    let _ = test_driver().undefine("c-adopt");
}

#[tokio::test]
async fn changes_behind_the_agents_back_become_events() {
    let a = TestAgent::start(None).await;
    a.put("/domain/c-watch", test_archive("c-watch")).await;
    let agent = &a.running().agent;
    let (_, mut rx) = agent.events.subscribe(0);
    test_driver().suspend("c-watch").expect("suspend");
    agent.watch_once().await.expect("watch");
    agent.watch_once().await.expect("watch");
    let ev = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .expect("in time")
        .expect("event");
    assert_eq!(
        (ev.name.as_str(), ev.kind, ev.state),
        (
            "c-watch",
            napalm_agent::events::EventKind::Suspended,
            RunState::Paused
        )
    );
    assert!(rx.try_recv().is_err(), "one change, one event");
}

/// A domain undefined behind the agent's back becomes one `undefined` event, seen by the
/// running watcher: a watcher keeping the agent's listing (the coordinator's informer)
/// must not keep a domain that is gone.
#[tokio::test]
async fn a_domain_undefined_behind_the_agents_back_becomes_an_undefined_event() {
    use napalm_agent::events::EventKind;
    let a = TestAgent::start(None).await;
    a.put("/domain/c-gone", test_archive("c-gone")).await;
    let agent = &a.running().agent;
    let (_, mut rx) = agent.events.subscribe(0);
    let hv = test_driver();
    hv.shutdown("c-gone", std::time::Duration::ZERO)
        .expect("destroy");
    hv.undefine("c-gone").expect("undefine");
    let gone = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Ok(e) if e.name == "c-gone" && e.kind == EventKind::Undefined => break e,
                Ok(_) => continue,
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await
    .expect("the undefinition became an event");
    assert!(gone.detail.contains("gone from libvirt"), "{gone:?}");
    // Said once.
    agent.watch_once().await.expect("watch");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    while let Ok(e) = rx.try_recv() {
        assert!(
            !(e.name == "c-gone" && e.kind == EventKind::Undefined),
            "said twice: {e:?}"
        );
    }
    // Asked to run it (the coordinator restarting a clone it saw die): the agent defines
    // it again from its record and starts it, instead of refusing `not found` until its
    // next reconcile pass.
    let v = agent
        .set_state("c-gone", RunState::Running, None, None)
        .await
        .expect("a domain libvirt lost is started again from the agent's record");
    assert_eq!(v.state, RunState::Running, "{v:?}");
    assert_eq!(hv.state("c-gone").expect("state"), Some(RunState::Running));
    let mut kinds = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if e.name == "c-gone" {
            kinds.push((e.kind, e.detail));
        }
    }
    assert!(
        matches!(&kinds[..], [(EventKind::Defined, d), (EventKind::Started, _)] if d.contains("redefined")),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn the_watcher_looks_at_what_libvirt_reports_changed_instead_of_polling_every_domain() {
    let a = TestAgent::start(None).await;
    a.put("/domain/c-event", test_archive("c-event")).await;
    let agent = &a.running().agent;
    let (_, mut rx) = agent.events.subscribe(0);
    let full = || {
        agent
            .watch_counts
            .full
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // The running server's watcher subscribed to libvirt's events and made its first
    // full pass at start; the next is 30 s away.
    let t = std::time::Instant::now();
    while full() == 0 && t.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let before = full();
    assert!(before >= 1, "the watcher made no pass");
    test_driver().suspend("c-event").expect("suspend");
    let ev = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Ok(e)
                    if e.name == "c-event"
                        && e.kind == napalm_agent::events::EventKind::Suspended =>
                {
                    break e
                }
                Ok(_) => continue,
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await
    .expect("the suspension became an event");
    assert_eq!(ev.state, RunState::Paused);
    // Seen through an event-driven look, not a full pass.
    assert_eq!(
        full(),
        before,
        "a full pass ran: the change was polled, not reported"
    );
    assert!(
        agent
            .watch_counts
            .looks
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    test_driver().resume("c-event").expect("resume");
}

/// libvirt's test driver, except that `resume` behaves as when libvirtd finishes a start
/// an agent killed mid-create had asked for: the domain resumes by itself, then the
/// agent's own resume is refused (`already running`). With `stuck`, resume is refused
/// and the domain stays paused.
struct ResumedBehindTheAgent {
    inner: std::sync::Arc<dyn napalm_agent::hypervisor::Hypervisor>,
    stuck: bool,
}

impl napalm_agent::hypervisor::Hypervisor for ResumedBehindTheAgent {
    fn define(&self, xml: &str) -> napalm_agent::error::Result<String> {
        self.inner.define(xml)
    }
    fn start(&self, name: &str) -> napalm_agent::error::Result<()> {
        self.inner.start(name)
    }
    fn shutdown(
        &self,
        name: &str,
        deadline: std::time::Duration,
    ) -> napalm_agent::error::Result<()> {
        self.inner.shutdown(name, deadline)
    }
    fn suspend(&self, name: &str) -> napalm_agent::error::Result<()> {
        self.inner.suspend(name)
    }
    fn resume(&self, name: &str) -> napalm_agent::error::Result<()> {
        if !self.stuck {
            self.inner.resume(name)?;
        }
        Err(napalm_agent::error::AgentError::Hypervisor(
            "Requested operation is not valid: domain is already running".into(),
        ))
    }
    fn undefine(&self, name: &str) -> napalm_agent::error::Result<bool> {
        self.inner.undefine(name)
    }
    fn state(&self, name: &str) -> napalm_agent::error::Result<Option<RunState>> {
        self.inner.state(name)
    }
    fn list(&self) -> napalm_agent::error::Result<Vec<napalm_agent::hypervisor::DomainSummary>> {
        self.inner.list()
    }
    fn find(
        &self,
        name: &str,
    ) -> napalm_agent::error::Result<Option<(napalm_agent::hypervisor::DomainSummary, String)>>
    {
        self.inner.find(name)
    }
    fn capabilities_xml(&self) -> napalm_agent::error::Result<String> {
        self.inner.capabilities_xml()
    }
    fn host(&self) -> napalm_agent::error::Result<napalm_agent::hypervisor::HostFacts> {
        self.inner.host()
    }
    fn free_pages(&self, size_kib: u32, cells: u32) -> napalm_agent::error::Result<Vec<u64>> {
        self.inner.free_pages(size_kib, cells)
    }
    fn stats(&self, name: &str) -> napalm_agent::error::Result<napalm_agent::hypervisor::Stats> {
        self.inner.stats(name)
    }
}

/// An agent killed while libvirt started one of its domains finds it paused (QEMU starts
/// paused until libvirt resumes it) and, as it resumes it, libvirt has done so already:
/// the agent starts, the domain counts as adopted and running. A domain libvirt really
/// refuses to resume is reported as failed, and the agent still starts with the others.
#[tokio::test]
async fn a_domain_libvirt_finishes_starting_behind_a_restarted_agent_does_not_stop_it() {
    let mut a = TestAgent::start(None).await;
    for n in ["c-midstart", "c-stuck", "c-fine"] {
        a.put(&format!("/domain/{n}"), test_archive(n)).await;
    }
    let dir = a.stop().await;
    let hv = test_driver();
    hv.suspend("c-midstart").expect("paused as mid-start");
    // The agent started again on its state, over libvirt as `ResumedBehindTheAgent`.
    let restarted = |stuck: bool| {
        let cfg = config(&dir.path().join("state"), None);
        let hv = std::sync::Arc::new(ResumedBehindTheAgent {
            inner: test_driver(),
            stuck,
        });
        napalm_agent::core::Agent::open(cfg.core, hv)
    };
    let agent = restarted(false).await.expect("open");
    let rep = agent.reconcile(true).await.expect("the first pass");
    assert!(rep.failed.is_empty(), "{rep:?}");
    assert!(rep.adopted.contains(&"c-midstart".to_owned()), "{rep:?}");
    assert_eq!(hv.state("c-midstart").expect("s"), Some(RunState::Running));

    hv.suspend("c-stuck").expect("paused");
    let agent = restarted(true).await.expect("open");
    let rep = agent
        .reconcile(true)
        .await
        .expect("one refusal is not the pass's");
    assert_eq!(rep.failed.len(), 1, "{rep:?}");
    assert_eq!(rep.failed[0].0, "c-stuck", "{rep:?}");
    assert!(rep.failed[0].1.contains("already running"), "{rep:?}");
    assert!(
        rep.adopted.contains(&"c-fine".to_owned()),
        "the others: {rep:?}"
    );
    for n in ["c-midstart", "c-stuck", "c-fine"] {
        let _ = hv.shutdown(n, std::time::Duration::from_secs(1));
        let _ = hv.undefine(n);
    }
}
