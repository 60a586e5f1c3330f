//! The REST/CRUD contract on `test:///default`: lifecycle, table 4.3 request counts,
//! content negotiation, ETags, authentication, idempotency, foreign domains untouched.

use std::sync::atomic::Ordering;

use crate::common::*;

fn counts(a: &TestAgent) -> [u64; 4] {
    let c = &a.running().counters;
    [
        c.get.load(Ordering::Relaxed),
        c.put.load(Ordering::Relaxed),
        c.delete.load(Ordering::Relaxed),
        c.post.load(Ordering::Relaxed),
    ]
}

fn delta(before: [u64; 4], after: [u64; 4]) -> [u64; 4] {
    [
        after[0] - before[0],
        after[1] - before[1],
        after[2] - before[2],
        after[3] - before[3],
    ]
}

#[tokio::test]
async fn lifecycle_with_table_4_3_request_counts() {
    let a = TestAgent::start(None).await;
    // [GET, PUT, DELETE, POST] per operation, as thesis table 4.3 lists them.
    let c0 = counts(&a);
    let r = a.put("/domain/r-life", test_archive("r-life")).await;
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(delta(c0, counts(&a)), [0, 1, 0, 0], "create = 1 PUT");

    let c0 = counts(&a);
    let t = a
        .get("/domain/r-life/status.xml")
        .await
        .text()
        .await
        .expect("text");
    assert_eq!(delta(c0, counts(&a)), [1, 0, 0, 0], "status = 1 GET");
    assert!(t.contains("<status><state>running</state></status>"), "{t}");

    let c0 = counts(&a);
    let r = a
        .put(
            "/domain/r-life/status.xml",
            "<status><state>shutoff</state></status>",
        )
        .await;
    assert_eq!(delta(c0, counts(&a)), [0, 1, 0, 0], "change state = 1 PUT");
    assert!(r
        .text()
        .await
        .expect("t")
        .contains("<state>shutoff</state>"));
    assert_eq!(
        test_driver().state("r-life").expect("state"),
        Some(napalm_agent::hypervisor::RunState::Shutoff)
    );

    let c0 = counts(&a);
    let f = a
        .get("/domain/r-life/vmlinuz")
        .await
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(delta(c0, counts(&a)), [1, 0, 0, 0], "get file = 1 GET");
    assert_eq!(&f[..], b"kernel");

    let c0 = counts(&a);
    assert_eq!(
        a.put("/domain/r-life/vmlinuz", "kernel-2")
            .await
            .status()
            .as_u16(),
        204
    );
    assert_eq!(delta(c0, counts(&a)), [0, 1, 0, 0], "send file = 1 PUT");
    assert_eq!(
        &a.get("/domain/r-life/vmlinuz")
            .await
            .bytes()
            .await
            .expect("b")[..],
        b"kernel-2"
    );

    let c0 = counts(&a);
    let ar = a
        .get("/domain/r-life/archive.tar.gz")
        .await
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(delta(c0, counts(&a)), [1, 0, 0, 0], "get archive = 1 GET");
    let mut names: Vec<String> = tar::Archive::new(flate2::read::GzDecoder::new(&ar[..]))
        .entries()
        .expect("entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["config.xml", "initrd.img", "vmlinuz"]);

    // POST works for a state change too (thesis: PUT or POST), and paused/running.
    let r = a
        .req(reqwest::Method::POST, "/domain/r-life/status.xml")
        .body("<status><state>paused</state></status>")
        .send()
        .await
        .expect("post");
    assert!(r.text().await.expect("t").contains("paused"));
    a.put(
        "/domain/r-life/status.xml",
        "<status><state>running</state></status>",
    )
    .await;
    assert_eq!(
        test_driver().state("r-life").expect("state"),
        Some(napalm_agent::hypervisor::RunState::Running)
    );

    let c0 = counts(&a);
    assert_eq!(a.delete("/domain/r-life").await.status().as_u16(), 204);
    assert_eq!(delta(c0, counts(&a)), [0, 0, 1, 0], "delete = 1 DELETE");
    assert!(!libvirt_has("r-life"));
    assert_eq!(
        a.get("/domain/r-life/status.xml").await.status().as_u16(),
        404
    );
    assert!(!a.dir.path().join("state/domains/r-life").exists());
}

#[tokio::test]
async fn listing_negotiation_and_etags() {
    let a = TestAgent::start(None).await;
    a.put("/domain/r-neg", test_archive("r-neg")).await;
    let xml = a.get("/domains.xml").await.text().await.expect("t");
    assert!(xml.contains("<domain name=\"r-neg\" href=\"/napalm/domain/r-neg\"><config href=\"/napalm/domain/r-neg/config.xml\"/>"), "{xml}");
    let json: serde_json::Value = a.get("/domains.json").await.json().await.expect("json");
    assert_eq!(json[0]["name"], "r-neg");
    assert_eq!(json[0]["state"], "running");
    let r = a
        .req(reqwest::Method::GET, "/domains.xml")
        .header("accept", "application/json")
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["content-type"], "application/json");
    let r = a
        .req(reqwest::Method::GET, "/domain/r-neg")
        .header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )
        .send()
        .await
        .expect("get");
    assert!(r.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/html"));
    let page = r.text().await.expect("t");
    assert!(
        page.contains("<h1>Domain r-neg</h1>")
            && page.contains("href=\"/napalm/domain/r-neg/vmlinuz\""),
        "{page}"
    );
    let about = a.get("/about").await.text().await.expect("t");
    assert!(about.contains("<name>napalm-agent</name>"));
    let caps = a.get("/capabilities.xml").await.text().await.expect("t");
    assert!(caps.contains("<capabilities>"), "{caps}");
    let cj: serde_json::Value = a
        .get("/capabilities.json")
        .await
        .json()
        .await
        .expect("json");
    assert!(cj["hypervisors"]
        .as_array()
        .expect("arr")
        .iter()
        .any(|h| h == "test"));

    // Conditional GET on config.xml, a file and status.xml.
    for path in [
        "/domain/r-neg/config.xml",
        "/domain/r-neg/vmlinuz",
        "/domain/r-neg/status.xml",
    ] {
        let r = a.get(path).await;
        let tag = r.headers()["etag"].to_str().expect("etag").to_owned();
        let r = a
            .req(reqwest::Method::GET, path)
            .header("if-none-match", &tag)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 304, "{path}");
        let r = a
            .req(reqwest::Method::GET, path)
            .header("if-none-match", "\"other\"")
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    // The file's ETag changes when the file does.
    let t1 = a.get("/domain/r-neg/vmlinuz").await.headers()["etag"].clone();
    a.put("/domain/r-neg/vmlinuz", "new kernel").await;
    let t2 = a.get("/domain/r-neg/vmlinuz").await.headers()["etag"].clone();
    assert_ne!(t1, t2);
    // If-Match on config.xml PUT.
    let cfg = a
        .get("/domain/r-neg/config.xml")
        .await
        .text()
        .await
        .expect("t");
    let r = a
        .req(reqwest::Method::PUT, "/domain/r-neg/config.xml")
        .header("if-match", "\"stale\"")
        .body(cfg.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status().as_u16(), 409);
    let changed = cfg.replace("<vcpu>1</vcpu>", "<vcpu>2</vcpu>");
    assert_eq!(
        a.put("/domain/r-neg/config.xml", changed.clone())
            .await
            .status()
            .as_u16(),
        204
    );
    assert_eq!(
        a.get("/domain/r-neg/config.xml")
            .await
            .text()
            .await
            .expect("t"),
        changed
    );
    let json: serde_json::Value = a.get("/domains.json").await.json().await.expect("json");
    assert_eq!(json[0]["vcpus"], 2);
}

#[tokio::test]
async fn token_is_required() {
    let a = TestAgent::start(Some(TOKEN)).await;
    let anon = reqwest::Client::new();
    let r = anon.get(a.url("/domains.xml")).send().await.expect("get");
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    // The error document agrees with the HTTP status.
    let body = r.text().await.expect("body");
    assert!(
        body.contains("<status>401</status>")
            && body.contains("<reason>UNAUTHENTICATED</reason>")
            && body.contains("missing or wrong bearer token"),
        "{body}"
    );
    let r = anon
        .get(a.url("/about"))
        .header("accept", "application/json")
        .bearer_auth("wrong")
        .send()
        .await
        .expect("get json");
    assert_eq!(r.status().as_u16(), 401);
    let v: serde_json::Value = r.json().await.expect("json error");
    assert_eq!(v["error"]["status"], 401, "{v}");
    assert_eq!(v["error"]["reason"], "UNAUTHENTICATED", "{v}");
    let r = anon
        .put(a.url("/domain/r-auth"))
        .bearer_auth("wrong")
        .body(test_archive("r-auth"))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status().as_u16(), 401);
    assert!(!libvirt_has("r-auth"));
    assert_eq!(a.get("/domains.xml").await.status().as_u16(), 200);
    assert_eq!(
        a.put("/domain/r-auth", test_archive("r-auth"))
            .await
            .status()
            .as_u16(),
        201
    );
}

#[tokio::test]
async fn create_is_idempotent_and_request_ids_run_once() {
    let a = TestAgent::start(None).await;
    let r1: serde_json::Value = a
        .req(reqwest::Method::PUT, "/domain/r-idem")
        .header("accept", "application/json")
        .body(test_archive("r-idem"))
        .send()
        .await
        .expect("put")
        .json()
        .await
        .expect("json");
    // The same archive again: no error, same domain.
    let r = a
        .req(reqwest::Method::PUT, "/domain/r-idem")
        .header("accept", "application/json")
        .body(test_archive("r-idem"))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status().as_u16(), 200);
    let r2: serde_json::Value = r.json().await.expect("json");
    assert_eq!(r1["uuid"], r2["uuid"]);
    // A different definition under the same name is a conflict.
    let other = tar_gz(&[
        (
            "config.xml",
            test_xml("r-idem").replace("64", "32").as_bytes(),
        ),
        ("vmlinuz", b"k"),
        ("initrd.img", b"i"),
    ]);
    assert_eq!(a.put("/domain/r-idem", other).await.status().as_u16(), 409);
    // A request id replays its first result and cannot be reused for another operation.
    let stop = |id: &'static str| {
        a.req(reqwest::Method::PUT, "/domain/r-idem/status.xml")
            .header("x-request-id", id)
            .body("<status><state>shutoff</state></status>")
    };
    assert_eq!(
        stop("req-1").send().await.expect("put").status().as_u16(),
        200
    );
    // Someone starts it behind the agent's back; the retry must not stop it again.
    test_driver().start("r-idem").expect("start");
    assert_eq!(
        stop("req-1").send().await.expect("put").status().as_u16(),
        200
    );
    assert_eq!(
        test_driver().state("r-idem").expect("s"),
        Some(napalm_agent::hypervisor::RunState::Running)
    );
    let r = a
        .req(reqwest::Method::DELETE, "/domain/r-idem")
        .header("x-request-id", "req-1")
        .send()
        .await
        .expect("del");
    assert_eq!(r.status().as_u16(), 409);
    assert!(libvirt_has("r-idem"));
}

#[tokio::test]
async fn foreign_domains_are_never_touched() {
    // `test:///default` comes with a running domain "test" that no agent owns.
    let a = TestAgent::start(None).await;
    assert!(libvirt_has("test"));
    let listed = a.get("/domains.xml").await.text().await.expect("t");
    assert!(!listed.contains("name=\"test\""));
    assert_eq!(
        a.get("/domain/test/status.xml").await.status().as_u16(),
        404
    );
    assert_eq!(a.delete("/domain/test").await.status().as_u16(), 404);
    assert_eq!(
        a.put(
            "/domain/test/status.xml",
            "<status><state>shutoff</state></status>"
        )
        .await
        .status()
        .as_u16(),
        404
    );
    let r = a.put("/domain/test", test_archive("test")).await;
    assert_eq!(r.status().as_u16(), 409, "{}", r.text().await.expect("t"));
    assert_eq!(
        test_driver().state("test").expect("s"),
        Some(napalm_agent::hypervisor::RunState::Running)
    );
    assert!(!a.dir.path().join("state/domains/test").exists());
    a.running().agent.reconcile(false).await.expect("reconcile");
    assert_eq!(
        test_driver().state("test").expect("s"),
        Some(napalm_agent::hypervisor::RunState::Running)
    );
}

#[tokio::test]
async fn archives_plain_gzip_and_zstd() {
    let a = TestAgent::start(None).await;
    let plain = |name: &str| {
        let xml = test_xml(name);
        raw_tar(&[
            Raw {
                name: b"config.xml",
                kind: tar::EntryType::Regular,
                link: b"",
                data: xml.as_bytes(),
            },
            Raw {
                name: b"vmlinuz",
                kind: tar::EntryType::Regular,
                link: b"",
                data: b"k",
            },
        ])
    };
    assert_eq!(
        a.put("/domain/r-tar", plain("r-tar"))
            .await
            .status()
            .as_u16(),
        201
    );
    let zst = zstd::encode_all(&plain("r-zst")[..], 3).expect("zstd");
    assert_eq!(a.put("/domain/r-zst", zst).await.status().as_u16(), 201);
    assert_eq!(
        a.put("/domain/r-gz", test_archive("r-gz"))
            .await
            .status()
            .as_u16(),
        201
    );
    assert_eq!(
        &a.get("/domain/r-zst/vmlinuz")
            .await
            .bytes()
            .await
            .expect("b")[..],
        b"k"
    );
}
