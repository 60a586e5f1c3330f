//! The agent keeps each domain's serial console in `STATE/domains/NAME/console.log` and
//! serves its last lines over REST, gRPC and the typed client; and it removes the stale
//! clone domains a heartbeat answer names. On `test:///default`, which boots nothing, the
//! console's content is written by the test (a real guest's is checked in `qemu`).

use std::collections::{BTreeMap, HashMap};

use napalm_agent::client::AgentClient;
use napalm_agent::core::{Agent, ArtifactSpec, CreateSpec, StaleDomain};
use napalm_agent::domain_store::RestartPolicy;
use napalm_agent::events::EventKind;
use napalm_agent::hypervisor::RunState;
use napalm_proto::v1 as pb;
use pb::agent_service_client::AgentServiceClient;

use crate::common::*;

fn console_file(a: &TestAgent, name: &str) -> std::path::PathBuf {
    // The agent names paths under its canonical state directory.
    a.dir
        .path()
        .canonicalize()
        .expect("dir")
        .join("state/domains")
        .join(name)
        .join("console.log")
}

#[tokio::test]
async fn the_console_is_kept_in_the_domain_dir_and_served_by_rest_grpc_and_the_client() {
    let a = TestAgent::start(Some(TOKEN)).await;
    let r = a.put("/domain/con-one", test_archive("con-one")).await;
    assert_eq!(r.status().as_u16(), 201);
    let log = console_file(&a, "con-one");
    // libvirt was told to write the console there, afresh at each start.
    let (_, live) = test_driver()
        .find("con-one")
        .expect("find")
        .expect("defined");
    assert!(
        live.contains(&format!("<log file='{}' append='off'/>", log.display())),
        "{live}"
    );

    // Nothing printed yet: no lines, but the console is kept.
    let client = AgentClient::new(&a.base, Some(TOKEN.into())).expect("client");
    let c = client.console("con-one", 5).await.expect("console");
    assert!(c.lines.is_empty() && c.logged, "{c:?}");

    // What a guest prints (here: written for it), with a terminal's escapes.
    let mut text = String::new();
    for i in 0..30 {
        text.push_str(&format!("[    {i}.000000] line {i}\r\n"));
    }
    text.push_str("\u{1b}[0;31mVFS: Unable to mount root fs\u{1b}[0m\r\n");
    std::fs::write(&log, &text).expect("write console");

    let r = a.get("/domain/con-one/console?lines=3").await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/plain"));
    assert_eq!(
        r.text().await.expect("text"),
        "[    28.000000] line 28\n[    29.000000] line 29\nVFS: Unable to mount root fs\n"
    );
    let j: serde_json::Value = a
        .req(reqwest::Method::GET, "/domain/con-one/console")
        .header("accept", "application/json")
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(j["lines"].as_array().expect("lines").len(), 20, "{j}");
    assert_eq!(j["logged"], true);
    let c = client.console("con-one", 2).await.expect("console");
    assert_eq!(
        c.lines,
        ["[    29.000000] line 29", "VFS: Unable to mount root fs"]
    );

    let addr = a.running().grpc_addr.expect("grpc");
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let token: tonic::metadata::MetadataValue<_> = format!("Bearer {TOKEN}").parse().expect("meta");
    let mut g = AgentServiceClient::with_interceptor(ch, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", token.clone());
        Ok(r)
    });
    let c = g
        .get_domain_console(pb::GetDomainConsoleRequest {
            name: "con-one".into(),
            lines: 100_000,
        })
        .await
        .expect("grpc console")
        .into_inner();
    assert_eq!(c.lines.len(), 31, "all there is, within the cap");
    assert!(c.logged);
    let e = g
        .get_domain_console(pb::GetDomainConsoleRequest {
            name: "con-none".into(),
            lines: 1,
        })
        .await
        .expect_err("no such domain");
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert_eq!(
        a.get("/domain/con-none/console").await.status().as_u16(),
        404
    );
    assert_eq!(
        a.get("/domain/con-one/console?lines=many")
            .await
            .status()
            .as_u16(),
        400
    );

    // A guest that floods its console: the file is cut down to its end, the end served.
    let mut flood = String::new();
    let mut i = 0;
    while flood.len() < (1 << 20) + 4096 {
        flood.push_str(&format!(
            "flood line {i:07} ..............................\n"
        ));
        i += 1;
    }
    std::fs::write(&log, &flood).expect("flood");
    let cut = a.running().agent.bound_consoles().expect("bound");
    assert_eq!(cut, ["con-one"]);
    let kept = std::fs::metadata(&log).expect("meta").len();
    assert!(kept <= 128 << 10, "{kept} bytes kept");
    let c = client.console("con-one", 1).await.expect("console");
    assert_eq!(
        c.lines,
        [format!(
            "flood line {:07} ..............................",
            i - 1
        )]
    );
    assert!(a
        .running()
        .agent
        .bound_consoles()
        .expect("bound")
        .is_empty());

    assert_eq!(a.delete("/domain/con-one").await.status().as_u16(), 204);
    assert!(!log.exists(), "the console goes with the domain");
}

/// Creates a domain through the core, with `labels`; returns its creation time.
async fn create(agent: &Agent, name: &str, labels: &[(&str, &str)]) -> u64 {
    let kernel = agent.blobs().put_bytes(b"kernel").expect("blob");
    let initrd = agent.blobs().put_bytes(b"initrd").expect("blob");
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let spec = CreateSpec {
        name: name.into(),
        config_xml: test_xml(name),
        artifacts: vec![
            ArtifactSpec {
                name: "vmlinuz".into(),
                blob: kernel,
                writable: false,
            },
            ArtifactSpec {
                name: "initrd.img".into(),
                blob: initrd,
                writable: false,
            },
        ],
        start: true,
        restart: RestartPolicy::Never,
        labels,
        scratch_disks: Vec::new(),
        boot_from_template: false,
    };
    agent
        .create_from_blobs(spec, None)
        .await
        .expect("create")
        .created_at_ms
}

fn stale(name: &str, placed_on: &str, created_at_ms: u64) -> StaleDomain {
    StaleDomain {
        name: name.into(),
        reason: if placed_on.is_empty() {
            "no longer declared by deployment st".into()
        } else {
            format!("placed on other-host ({placed_on}) by the registry")
        },
        placed_on: placed_on.into(),
        created_at_ms,
    }
}

#[tokio::test]
async fn stale_clone_domains_are_removed_only_when_they_are_exactly_the_ones_reported() {
    let a = TestAgent::start(None).await;
    let agent = &a.running().agent;
    let (_, mut events) = agent.events.subscribe(0);
    let clone = |n: &'static str| [("deployment", "st"), ("clone", n)];
    let moved = create(agent, "st-moved", &clone("st-moved")).await;
    let gone = create(agent, "st-gone", &clone("st-gone")).await;
    let again = create(agent, "st-again", &clone("st-again")).await;
    let plain = create(agent, "st-plain", &[("deployment", "st")]).await;

    let rep = agent
        .remove_stale(&[
            stale("st-moved", "a1b2", moved),
            stale("st-gone", "", gone),
            // Listed before it was created again (placed back here meanwhile).
            stale("st-again", "a1b2", again.saturating_sub(1)),
            // Not a napalm clone domain: never removed on a heartbeat's word.
            stale("st-plain", "a1b2", plain),
            stale("../etc", "a1b2", 1),
            stale("st-absent", "a1b2", 1),
        ])
        .await;
    assert_eq!(rep.removed, ["st-moved"]);
    assert_eq!(rep.waiting, ["st-gone"]);
    let kept: HashMap<&str, &str> = rep
        .kept
        .iter()
        .map(|(n, w)| (n.as_str(), w.as_str()))
        .collect();
    assert!(kept["st-again"].contains("created again"), "{kept:?}");
    assert!(kept["st-plain"].contains("not a napalm clone"), "{kept:?}");
    assert!(kept["../etc"].contains("not a domain name"), "{kept:?}");
    assert!(
        kept["st-absent"].contains("not a domain of this agent"),
        "{kept:?}"
    );
    assert!(!libvirt_has("st-moved"));
    for n in ["st-gone", "st-again", "st-plain"] {
        assert_eq!(
            test_driver().state(n).expect("state"),
            Some(RunState::Running),
            "{n}"
        );
    }
    // The removal is the agent's own, and says why.
    let mut removal = None;
    while let Ok(e) = events.try_recv() {
        if e.name == "st-moved" && e.kind == EventKind::Undefined {
            removal = Some(e.detail);
        }
    }
    let detail = removal.expect("an undefined event for st-moved");
    assert!(
        detail.starts_with("stale: placed on other-host (a1b2) by the registry"),
        "{detail}"
    );

    // Declared nowhere: removed when the next answer says so again, not before; an
    // answer without it in between starts over.
    let rep = agent.remove_stale(&[]).await;
    assert!(rep.removed.is_empty());
    let rep = agent.remove_stale(&[stale("st-gone", "", gone)]).await;
    assert_eq!(rep.waiting, ["st-gone"]);
    assert!(libvirt_has("st-gone"));
    let rep = agent.remove_stale(&[stale("st-gone", "", gone)]).await;
    assert_eq!(rep.removed, ["st-gone"]);
    assert!(!libvirt_has("st-gone"));

    for n in ["st-again", "st-plain"] {
        agent.delete(n, true, None, None).await.expect("delete");
    }
}
