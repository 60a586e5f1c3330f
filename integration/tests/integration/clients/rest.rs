//! REST: `curl` drives the agent's thesis API.

use serde_json::Value;

use super::*;

#[test]
fn curl_drives_the_agent_rest_api() {
    let mut g = start(false);
    let about = g.rest("/about");

    // No token, a wrong token: 401 with the Bearer challenge and an error document.
    let r = curl(&g, &[], &about);
    assert_eq!(r.code, 401, "{}", r.body);
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{}",
        r.headers
    );
    // The error document names the problem. (Its <status> says 400 and its reason
    // INVALID_ARGUMENT although the HTTP status is 401: an agent inconsistency, reported.)
    assert!(
        r.body.contains("<error>") && r.body.contains("missing or wrong bearer token"),
        "{}",
        r.body
    );
    let r = curl(&g, &["-H", "Authorization: Bearer wrong"], &about);
    assert_eq!(r.code, 401);
    let r = curl(&g, &["-H", &auth()], &about);
    assert_eq!(r.code, 200);
    assert!(r.body.contains("<name>napalm-agent</name>"), "{}", r.body);
    assert!(r
        .body
        .contains("<libvirt-uri>test:///default</libvirt-uri>"));

    // Create (table 4.3: one PUT of the archive).
    create_with_curl(&g, "c-rest");

    // Read it back as XML (default) and JSON.
    let r = curl(&g, &["-H", &auth()], &g.rest("/domain/c-rest"));
    assert_eq!(r.code, 200);
    assert!(r.body.contains("<state>running</state>"), "{}", r.body);
    assert!(r.body.contains("<vcpus>1</vcpus>"), "{}", r.body);
    assert!(
        r.body
            .contains("/napalm/domain/c-rest/vmlinuz\">vmlinuz</file>"),
        "{}",
        r.body
    );
    let r = curl(
        &g,
        &["-H", &auth(), "-H", "Accept: application/json"],
        &g.rest("/domain/c-rest"),
    );
    assert_eq!(r.code, 200);
    assert!(r.headers.contains("application/json"), "{}", r.headers);
    let v: Value = serde_json::from_str(&r.body).expect("domain JSON");
    assert_eq!(v["name"], "c-rest");
    assert_eq!(v["state"], "running");
    assert_eq!(v["owned"], true);
    assert_eq!(v["vcpus"], 1);
    assert_eq!(v["memory_bytes"], 64 * 1024 * 1024);
    let files: Vec<&str> = v["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        files.contains(&"vmlinuz") && files.contains(&"initrd.img"),
        "{files:?}"
    );

    // A file referenced by config.xml comes back byte for byte.
    let r = curl(&g, &["-H", &auth()], &g.rest("/domain/c-rest/vmlinuz"));
    assert_eq!((r.code, r.body.as_str()), (200, "kernel of c-rest\n"));

    // Change state: one PUT of status.xml; a nonsense state is a 400 naming it.
    let status = g.rest("/domain/c-rest/status.xml");
    let r = curl(
        &g,
        &[
            "-H",
            &auth(),
            "-X",
            "PUT",
            "--data-binary",
            "<status><state>flying</state></status>",
        ],
        &status,
    );
    assert_eq!(r.code, 400, "{}", r.body);
    assert!(r.body.contains("flying"), "{}", r.body);
    let r = curl(
        &g,
        &[
            "-H",
            &auth(),
            "-X",
            "PUT",
            "--data-binary",
            "<status><state>shutoff</state></status>",
        ],
        &status,
    );
    assert_eq!(r.code, 200, "{}", r.body);
    assert!(
        r.body.contains("<status><state>shutoff</state></status>"),
        "{}",
        r.body
    );
    let r = curl(&g, &["-H", &auth()], &g.rest("/domain/c-rest/status.json"));
    assert_eq!(r.code, 200);
    let v: Value = serde_json::from_str(&r.body).expect("status JSON");
    assert_eq!(v["state"], "shutoff");

    // The listing has it, with the shutoff state.
    let r = curl(&g, &["-H", &auth()], &g.rest("/domains.xml"));
    assert_eq!(r.code, 200);
    assert!(
        r.body
            .contains("<domain name=\"c-rest\" href=\"/napalm/domain/c-rest\">"),
        "{}",
        r.body
    );

    // Delete: 204, then 404 for the domain and for a second delete.
    let r = curl(
        &g,
        &["-H", &auth(), "-X", "DELETE"],
        &g.rest("/domain/c-rest"),
    );
    assert_eq!(r.code, 204, "{}", r.body);
    let r = curl(&g, &["-H", &auth()], &g.rest("/domain/c-rest"));
    assert_eq!(r.code, 404, "{}", r.body);
    let r = curl(
        &g,
        &["-H", &auth(), "-X", "DELETE"],
        &g.rest("/domain/c-rest"),
    );
    assert_eq!(r.code, 404, "{}", r.body);
    let r = curl(
        &g,
        &["-H", &auth(), "-H", "Accept: application/json"],
        &g.rest("/domains.json"),
    );
    assert_eq!(r.code, 200);
    assert!(!r.body.contains("c-rest"), "{}", r.body);
    let alive = g.agent_running(0);
    g.check(alive, || "the agent exited".into());
}
