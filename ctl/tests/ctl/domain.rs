//! `napalmctl domain` as a process against a real napalm-agent on the libvirt test driver:
//! the thesis's `napalm` tool, every REST operation and its errors.

use std::path::Path;
use std::process::Output;

use napalm_proto::v1::*;
use serde_json::Value;

use crate::support::*;

fn test_xml(name: &str) -> String {
    format!(
        "<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='i686'>hvm</type><kernel>vmlinuz</kernel><initrd>initrd.img</initrd>\
         </os></domain>"
    )
}

/// `napalmctl domain --agent URL --token TOKEN ARGS…`
async fn domain(home: &Path, agent: &str, args: &[&str]) -> Output {
    let mut c = ctl(home);
    c.args(["domain", "--agent", agent, "--token", TOKEN])
        .args(args);
    run(c).await
}

#[tokio::test]
async fn domain_crud_against_a_real_agent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let mut coord = Grid::start(1).await;
    let a = &coord.grid.agents[0];
    let url = rest(a);
    let h = home.as_path();
    let xml = dir.path().join("domcli-a.xml");
    std::fs::write(&xml, test_xml("domcli-a")).expect("xml");
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"kernel").expect("kernel");
    let initrd = dir.path().join("initrd.img");
    std::fs::write(&initrd, b"initrd").expect("initrd");
    let (xml, kernel, initrd) = (
        xml.to_str().expect("utf-8"),
        kernel.to_str().expect("utf-8"),
        initrd.to_str().expect("utf-8"),
    );

    // Create = one PUT of an archive napalmctl packs from the XML and its files.
    let puts = a.counters.put.load(std::sync::atomic::Ordering::Relaxed);
    let o = domain(
        h,
        &url,
        &[
            "create", "domcli-a", "--xml", xml, "--file", kernel, "--file", initrd,
        ],
    )
    .await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(out, "domcli-a: created, running\n");
    assert_eq!(
        a.counters.put.load(std::sync::atomic::Ordering::Relaxed) - puts,
        1,
        "create = 1 PUT"
    );

    let o = domain(h, &url, &["--output", "json", "list"]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).expect("JSON list");
    let row = rows
        .iter()
        .find(|r| r["name"] == "domcli-a")
        .unwrap_or_else(|| panic!("domcli-a not listed: {out}"));
    assert_eq!(row["state"], "running");
    assert_eq!(row["memory_mib"], 64);

    let o = domain(h, &url, &["show", "domcli-a"]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.starts_with("FIELD"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("state") && l.ends_with("running")),
        "{out}"
    );
    assert!(out.contains("vmlinuz,initrd.img") || out.contains("initrd.img,vmlinuz"));

    for (cmd, want) in [
        ("stop", "shutoff"),
        ("start", "running"),
        ("pause", "paused"),
        ("start", "running"),
    ] {
        let o = domain(h, &url, &[cmd, "domcli-a"]).await;
        let (out, err) = text(&o);
        assert!(o.status.success(), "{cmd}: {err}");
        assert_eq!(out, format!("domcli-a: {want}\n"), "{cmd}");
        let o = domain(h, &url, &["status", "domcli-a"]).await;
        assert_eq!(text(&o).0, format!("{want}\n"), "status after {cmd}");
    }

    let o = domain(h, &url, &["config", "domcli-a"]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("<name>domcli-a</name>"), "{out}");

    let archive = dir.path().join("domcli-a.tar.gz");
    let o = domain(
        h,
        &url,
        &[
            "archive",
            "domcli-a",
            "--out",
            archive.to_str().expect("utf-8"),
        ],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o).1);
    let bytes = std::fs::read(&archive).expect("archive written");
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip");

    // The same definition again is idempotent.
    let o = domain(
        h,
        &url,
        &[
            "create", "domcli-a", "--xml", xml, "--file", kernel, "--file", initrd,
        ],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(text(&o).0, "domcli-a: unchanged (it existed), running\n");

    // Delete, then bring it back from the downloaded archive, defined only.
    let o = domain(h, &url, &["delete", "domcli-a"]).await;
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(text(&o).0, "domcli-a: deleted\n");
    let o = domain(
        h,
        &url,
        &[
            "create",
            "domcli-a",
            "--archive",
            archive.to_str().expect("utf-8"),
            "--no-start",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(text(&o).0, "domcli-a: created, shutoff\n");
    let o = domain(h, &url, &["delete", "domcli-a", "--purge"]).await;
    assert!(o.status.success(), "{}", text(&o).1);
    let o = domain(h, &url, &["status", "domcli-a"]).await;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o).1);
    assert!(text(&o).1.contains("domcli-a"), "{}", text(&o).1);

    // Bad input: each a message quoting it and the documented exit code.
    let o = domain(h, &url, &["show", "../etc"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("\"../etc\""), "{}", text(&o).1);

    let o = domain(
        h,
        &url,
        &["create", "domcli-b", "--xml", "/nonexistent/b.xml"],
    )
    .await;
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("/nonexistent/b.xml"), "{}", text(&o).1);

    // config.xml names another domain: the agent refuses with 400, napalmctl exits 2.
    let o = domain(
        h,
        &url,
        &[
            "create", "domcli-b", "--xml", xml, "--file", kernel, "--file", initrd,
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    assert!(text(&o).1.contains("400"), "{}", text(&o).1);

    let mut c = ctl(h);
    c.args(["domain", "--agent", &url, "list"]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("NAPALM_AGENT_TOKEN"), "{}", text(&o).1);

    let o = domain(h, "http://127.0.0.1:9/napalm", &["list"]).await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o).1);
    assert!(text(&o).1.contains("127.0.0.1:9"), "{}", text(&o).1);

    let o = domain(h, "ftp://example/napalm", &["list"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("\"ftp://example/napalm\""),
        "{}",
        text(&o).1
    );

    let mut c = ctl(h);
    c.args(["domain", "list"]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--agent"), "{}", text(&o).1);

    // An agent named by the name it registered with: its REST endpoint comes from the
    // coordinator.
    coord
        .client
        .register_agent(RegisterAgentRequest {
            id: "domcli-host".into(),
            name: "domcli-host".into(),
            grpc_endpoint: format!("http://{}", a.grpc_addr.expect("grpc")),
            rest_endpoint: url.clone(),
            ..Default::default()
        })
        .await
        .expect("register");
    let mut c = ctl(h);
    c.args([
        "--coordinator",
        &coord.endpoint(),
        "domain",
        "--agent",
        "domcli-host",
        "--token",
        TOKEN,
        "list",
    ]);
    let o = run(c).await;
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.starts_with("NAME"), "{}", text(&o).0);
    assert_eq!(
        coord.last_auth().as_deref(),
        Some(""),
        "the agent's --token must not reach the coordinator"
    );
    let mut c = ctl(h);
    c.args([
        "--coordinator",
        &coord.endpoint(),
        "domain",
        "--agent",
        "nosuchhost",
        "list",
    ]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o).1);
    assert!(text(&o).1.contains("\"nosuchhost\""), "{}", text(&o).1);
}
