//! `napalm_agent::client` against a real agent on `test:///default`: every operation of
//! the REST contract through the typed client, and its errors sorted into classes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use napalm_agent::client::{
    build_archive, AgentClient, ClientError, ErrorClass, Transport, UrlProblem,
};
use napalm_agent::hypervisor::RunState;

use crate::common::*;

/// `name`'s XML and its two files written to `dir`, packed by the client's builder.
fn archive_from_files(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let xml = dir.join(format!("{name}.xml"));
    std::fs::write(&xml, test_xml(name)).expect("write xml");
    let files = [dir.join("vmlinuz"), dir.join("initrd.img")];
    std::fs::write(&files[0], "kernel").expect("write kernel");
    std::fs::write(&files[1], "initrd").expect("write initrd");
    build_archive(&xml, &files).expect("archive")
}

#[tokio::test]
async fn every_operation_through_the_typed_client() {
    let a = TestAgent::start(Some(TOKEN)).await;
    let c = AgentClient::new(&format!("{}/", a.base), Some(TOKEN.into())).expect("client");
    assert_eq!(c.base_url(), a.base, "the trailing / is dropped");

    let body = archive_from_files(a.dir.path(), "cl-life");
    let made = c
        .create("cl-life", body.clone(), false)
        .await
        .expect("create");
    assert!(made.created);
    assert_eq!(
        made.state,
        Some(RunState::Shutoff),
        "start=false only defines"
    );
    let again = c.create("cl-life", body, false).await.expect("same again");
    assert!(!again.created, "the same archive again changes nothing");

    let all = c.list().await.expect("list");
    let d = all.iter().find(|d| d.name == "cl-life").expect("listed");
    assert!(d.owned);
    let d = c.show("cl-life").await.expect("show");
    assert_eq!(d.desired, Some(RunState::Shutoff));
    assert!(d.files.iter().any(|f| f == "vmlinuz"), "{:?}", d.files);
    assert!(c
        .config("cl-life")
        .await
        .expect("config")
        .contains("<name>cl-life</name>"));

    assert_eq!(c.start("cl-life").await.expect("start"), RunState::Running);
    assert_eq!(
        c.status("cl-life").await.expect("status"),
        RunState::Running
    );
    assert_eq!(c.pause("cl-life").await.expect("pause"), RunState::Paused);
    assert_eq!(
        c.stop("cl-life", Some(Duration::from_millis(500)))
            .await
            .expect("stop"),
        RunState::Shutoff
    );
    assert_eq!(
        test_driver().state("cl-life").expect("state"),
        Some(RunState::Shutoff)
    );

    let gz = c.archive("cl-life").await.expect("archive");
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip");

    c.delete("cl-life", true).await.expect("delete");
    assert!(!libvirt_has("cl-life"));

    // Gone: 404 with the agent's message naming it, class NotFound.
    let e = c.show("cl-life").await.expect_err("deleted");
    assert_eq!(e.class(), ErrorClass::NotFound, "{e}");
    assert_eq!(e.status(), Some(404));
    assert!(e.to_string().contains("cl-life"), "{e}");
    let e = c.delete("cl-life", false).await.expect_err("deleted");
    assert_eq!(e.class(), ErrorClass::NotFound, "{e}");
}

#[tokio::test]
async fn client_errors_say_what_failed_and_sort_into_classes() {
    let a = TestAgent::start(Some(TOKEN)).await;

    // A name that would change the path: refused before any request.
    let c = AgentClient::new(&a.base, Some(TOKEN.into())).expect("client");
    let gets = a.running().counters.get.load(Ordering::Relaxed);
    for bad in ["../x", "a/b", ".h", "-x", ""] {
        let e = c.show(bad).await.expect_err(bad);
        assert!(matches!(e, ClientError::BadName { .. }), "{bad}: {e}");
        assert_eq!(e.class(), ErrorClass::BadInput);
        assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
    }
    assert_eq!(a.running().counters.get.load(Ordering::Relaxed), gets);

    // A wrong token: the agent's 401, class Failed.
    let wrong = AgentClient::new(&a.base, Some("wrong".into())).expect("client");
    let e = wrong.list().await.expect_err("wrong token");
    assert_eq!(e.status(), Some(401), "{e}");
    assert_eq!(e.class(), ErrorClass::Failed);

    // A bad archive: the agent's 400 with its message, class BadInput.
    let e = c
        .create("cl-bad", b"not an archive".to_vec(), true)
        .await
        .expect_err("garbage");
    assert_eq!(e.class(), ErrorClass::BadInput, "{e}");
    assert!(!libvirt_has("cl-bad"));

    // Nothing listens: Unreachable, naming the address.
    let dead = AgentClient::new("http://127.0.0.1:9/napalm", None).expect("client");
    let e = dead.list().await.expect_err("nothing listens");
    assert!(
        matches!(
            e,
            ClientError::Unreachable {
                transport: Transport::Connect | Transport::Timeout,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.class(), ErrorClass::Unreachable);
    assert!(e.to_string().contains("127.0.0.1:9"), "{e}");

    // Unusable base URLs.
    for (url, want) in [
        ("ftp://example/napalm", UrlProblem::Scheme("ftp".into())),
        ("https://example/napalm", UrlProblem::Tls),
        ("http://example/napalm?x=1", UrlProblem::QueryOrFragment),
    ] {
        match AgentClient::new(url, None) {
            Err(ClientError::BadUrl { problem, .. }) => assert_eq!(problem, want, "{url}"),
            other => panic!("{url}: {other:?}"),
        }
    }
    assert!(matches!(
        AgentClient::new("not a url", None),
        Err(ClientError::BadUrl {
            problem: UrlProblem::Parse(_),
            ..
        })
    ));
}

#[tokio::test]
async fn timestamps_come_from_the_agents_clock() {
    use napalm_agent::clock::ManualClock;
    use std::sync::Arc;

    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::at(1_700_000_000_000));
    let running = napalm_agent::server::start_with_clock(
        config(&dir.path().join("state"), None),
        test_driver(),
        clock.clone(),
    )
    .await
    .expect("agent starts");
    let c =
        AgentClient::new(&format!("http://{}/napalm", running.http_addr), None).expect("client");
    clock.advance(Duration::from_secs(60));
    let body = archive_from_files(dir.path(), "cl-clock");
    c.create("cl-clock", body, false).await.expect("create");
    let d = c.show("cl-clock").await.expect("show");
    assert_eq!(d.created_at_ms, 1_700_000_060_000);
    c.delete("cl-clock", true).await.expect("delete");
    running.stop().await;
}
