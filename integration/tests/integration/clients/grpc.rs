//! gRPC: Debian's Python grpcio with stubs generated from `proto/napalm/v1` at test time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use napalm_integration::grid::{Grid, AGENT_GRPC, AGENT_HTTP, GRPC as COORD_GRPC, TOKEN};
use serde_json::Value;

use super::*;

/// Generates Python stubs from `proto/napalm/v1` (and the google.rpc subset beside the
/// client) into `out`, with Debian's `grpc_tools.protoc`.
pub(crate) fn generate_stubs(out: &Path) {
    std::fs::create_dir_all(out).expect("mkdir");
    let root = repo_root();
    let proto = root.join("proto");
    let clients = root.join("integration/clients");
    let mut protos: Vec<PathBuf> = Vec::new();
    for dir in [proto.join("napalm/v1"), clients.join("google/rpc")] {
        for e in std::fs::read_dir(&dir).expect("proto dir") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "proto") {
                protos.push(p);
            }
        }
    }
    assert!(protos.len() >= 5, "protos missing: {protos:?}");
    let out_s = out.display().to_string();
    let status = Command::new(PYTHON)
        .args(["-c", "import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), '_proto'))"])
        .output()
        .expect("python3 runs");
    assert!(
        status.status.success(),
        "Debian's python3-grpc-tools is missing (scripts/setup installs it): {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let wkt = String::from_utf8_lossy(&status.stdout).trim().to_owned();
    let gen = Command::new(PYTHON)
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", proto.display()))
        .arg(format!("-I{}", clients.display()))
        .arg(format!("-I{wkt}"))
        .arg(format!("--python_out={out_s}"))
        .arg(format!("--grpc_python_out={out_s}"))
        .args(&protos)
        .output()
        .expect("grpc_tools.protoc runs");
    assert!(
        gen.status.success(),
        "grpc_tools.protoc failed: {}",
        String::from_utf8_lossy(&gen.stderr)
    );
    assert!(out.join("napalm/v1/agent_pb2_grpc.py").exists());
    assert!(out.join("napalm/v1/coordinator_pb2_grpc.py").exists());
}

/// Waits until the coordinator lists the agent, found by mDNS (or by the agent's own
/// registration with the coordinator it found by mDNS).
pub(crate) fn wait_until_listed(g: &mut Grid, stubs: &Path, script: &Path) -> Value {
    let t0 = Instant::now();
    loop {
        let v = run_client(
            g,
            stubs,
            script,
            &format!("c-grpc-{}", t0.elapsed().as_millis()),
        );
        if v["coordinator_agents"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            return v;
        }
        if t0.elapsed() > Duration::from_secs(45) {
            g.fail(&format!("the coordinator never listed the agent: {v}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub(crate) fn run_client(g: &mut Grid, stubs: &Path, script: &Path, domain: &str) -> Value {
    let agent = g.agent_addr(AGENT_GRPC).to_string();
    let coord = g.coord_addr(COORD_GRPC).to_string();
    let out = exec(
        &g.client,
        90,
        PYTHON,
        &[
            &script.display().to_string(),
            &stubs.display().to_string(),
            &agent,
            &coord,
            TOKEN,
            domain,
        ],
    );
    if !out.status.success() {
        g.fail(&format!(
            "grpc_client.py failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).expect("grpc_client.py prints JSON")
}

#[test]
fn python_grpcio_stubs_from_proto_talk_to_agent_and_coordinator() {
    let mut g = start(true);
    let stubs = g.dir.join("stubs");
    generate_stubs(&stubs);
    let script = repo_root().join("integration/clients/grpc_client.py");
    let id = agent_id(&g);

    let v = wait_until_listed(&mut g, &stubs, &script);

    // Agent: capabilities.
    let caps = &v["capabilities"];
    assert_eq!(caps["agent_id"], id.as_str(), "{v}");
    assert_eq!(caps["libvirt_uri"], "test:///default");
    assert_eq!(caps["hypervisors"], serde_json::json!(["HYPERVISOR_TEST"]));
    assert!(caps["cpus"].as_u64().is_some_and(|c| c > 0), "{caps}");
    assert_eq!(caps["raw_xml_has_capabilities"], true);
    let version = caps["agent_version"].as_str().expect("version");
    assert!(!version.is_empty());

    // Client-streamed upload, then a domain built from the blob, stopped and deleted.
    let blob = &v["blob"];
    let sha = blob["uploaded"].as_str().expect("sha256");
    assert_eq!(sha.len(), 64);
    assert_eq!(blob["missing_before"], serde_json::json!([sha]), "{blob}");
    assert_eq!(blob["present_after"], serde_json::json!([sha]), "{blob}");
    assert_eq!(blob["already_present"], false);
    assert_eq!(blob["second_upload_already_present"], true, "{blob}");
    let created = &v["created"];
    let name = created["name"].as_str().expect("name").to_owned();
    assert!(name.starts_with("c-grpc-"));
    assert_eq!(created["state"], "DOMAIN_STATE_RUNNING", "{created}");
    assert_eq!(created["owned"], true);
    assert_eq!(created["vcpus"], 2);
    assert_eq!(created["memory_bytes"], 64 * 1024 * 1024);
    assert_eq!(created["labels"]["client"], "python-grpcio");
    assert_eq!(created["artifacts"], serde_json::json!(["vmlinuz"]));
    assert!(
        v["listed"]
            .as_array()
            .expect("listed")
            .iter()
            .any(|n| n == name.as_str()),
        "{v}"
    );
    assert_eq!(v["stopped"]["state"], "DOMAIN_STATE_SHUTOFF");
    assert_eq!(v["stopped"]["uuid"], created["uuid"]);
    assert_eq!(
        v["deleted"],
        serde_json::json!({"name": name, "existed": true})
    );

    // Errors cross with their google.rpc details.
    let missing = &v["missing_domain"];
    assert_eq!(missing["code"], "NOT_FOUND", "{missing}");
    assert_eq!(missing["status_code"], 5);
    let details = missing["details"].as_array().expect("details");
    assert!(
        details.iter().any(|d| d["type"] == "google.rpc.ErrorInfo"
            && d["reason"] == "ERROR_REASON_NOT_FOUND"
            && d["domain"] == "napalm.v1"),
        "{missing}"
    );
    assert!(
        details
            .iter()
            .any(|d| d["type"] == "google.rpc.ResourceInfo"
                && d["resource_type"] == "domain"
                && d["resource_name"] == name.as_str()),
        "{missing}"
    );
    for case in ["bad_token", "no_token"] {
        let e = &v[case];
        assert_eq!(e["code"], "UNAUTHENTICATED", "{case}: {e}");
        assert!(
            e["details"]
                .as_array()
                .expect("details")
                .iter()
                .any(|d| d["reason"] == "ERROR_REASON_UNAUTHENTICATED"),
            "{case}: {e}"
        );
    }

    // Coordinator: the agent it found on the private network.
    let agents = v["coordinator_agents"].as_array().expect("agents");
    assert_eq!(agents.len(), 1, "{v}");
    let a = &agents[0];
    assert_eq!(a["id"], id.as_str(), "{a}");
    assert_eq!(
        a["grpc_endpoint"],
        format!("http://{}", g.agent_addr(AGENT_GRPC)).as_str(),
        "{a}"
    );
    assert_eq!(
        a["rest_endpoint"],
        format!("http://{}/napalm", g.agent_addr(AGENT_HTTP)).as_str(),
        "{a}"
    );
    assert!(
        a["source"] == "AGENT_SOURCE_MDNS" || a["source"] == "AGENT_SOURCE_REGISTRATION",
        "{a}"
    );
    assert_eq!(a["state"], "AGENT_STATE_READY", "{a}");
    assert_eq!(a["version"], version);
    assert_eq!(a["hypervisors"], serde_json::json!(["HYPERVISOR_TEST"]));
    let e = &v["missing_agent"];
    assert_eq!(e["code"], "NOT_FOUND", "{e}");
    assert!(
        e["details"]
            .as_array()
            .expect("details")
            .iter()
            .any(|d| d["reason"] == "ERROR_REASON_NOT_FOUND"),
        "{e}"
    );
}
