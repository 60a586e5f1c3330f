//! The Helm chart: strict lint, schema, render and validation of every values file; then
//! the PKI the default values render, run by the real daemons with the chart's own
//! arguments: the coordinator imports the chart's CA and bootstrap token, two agents
//! enroll with that one token (each its own key and certificate) and register over mutual
//! TLS, and the admin identity the coordinator writes lists them.

use std::path::Path;
use std::process::{Command, Stdio};

use napalm_integration::proc::Daemon;
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::repo_root;

#[test]
fn helm_chart_lints_strict_renders_and_validates_for_every_values_file() {
    let root = repo_root();
    let dump = tempfile::tempdir().expect("tempdir");
    let out = Command::new("python3")
        .arg(root.join("charts/validate.py"))
        .arg(root.join("charts/napalm"))
        .arg("--json")
        .arg("--dump-trust")
        .arg(dump.path())
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs (scripts/setup installs helm-python-sdk, kubernetes-validate)");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "charts/validate.py failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .expect("a JSON summary last");
    let mut sets: Vec<String> = std::fs::read_dir(root.join("charts/napalm/ci"))
        .expect("charts/napalm/ci")
        .filter_map(|e| e.ok())
        .map(|e| format!("ci/{}", e.file_name().to_string_lossy()))
        .filter(|n| n.ends_with("-values.yaml"))
        .collect();
    sets.push("default".into());
    for set in &sets {
        assert!(summary[set]["kinds"].is_array(), "{set} was not validated");
    }
    // The default values run the images packaging/build-images tags.
    let version = version();
    let images = summary["default"]["images"].to_string();
    for image in ["napalm-agent", "napalm-coordinator"] {
        assert!(
            images.contains(&format!("\"{image}:{version}\"")),
            "{images}"
        );
    }
    let kinds = summary["default"]["kinds"].to_string();
    for kind in [
        "StatefulSet/",
        "DaemonSet/",
        "Service/",
        "Secret/",
        "NetworkPolicy/",
    ] {
        assert!(
            kinds.contains(kind),
            "no {kind} in the default render: {kinds}"
        );
    }
    the_charts_pki_runs_the_real_daemons(dump.path());
}

/// The chart's container `args` (a JSON list in `dump`) with its in-pod paths mapped to
/// files under `dir` and its listeners moved to loopback ports `ports` (in order).
fn chart_args(dump: &Path, file: &str, paths: &[(&str, &Path)], ports: &[u16]) -> Vec<String> {
    let text = std::fs::read_to_string(dump.join(file)).expect("dumped args");
    let args: Vec<String> = serde_json::from_str(&text).expect("a JSON list");
    let mut ports = ports.iter();
    args.into_iter()
        .map(|a| {
            let mut a = a;
            for (from, to) in paths {
                a = a.replace(from, &to.display().to_string());
            }
            if let Some((flag, _)) = a.split_once("=0.0.0.0:") {
                let port = ports.next().expect("a port for each listener");
                a = format!("{flag}=127.0.0.1:{port}");
            }
            a
        })
        .collect()
}

fn the_charts_pki_runs_the_real_daemons(dump: &Path) {
    let bins = super::bin_dir();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(
        d.join("cluster-secret"),
        "chart-test-cluster-secret-0123456789",
    )
    .expect("write");
    let (tls, https) = (super::free_port(), super::free_port());
    let coord_args = chart_args(
        dump,
        "coordinator-args.json",
        &[
            ("/etc/napalm/ca/tls.crt", &dump.join("ca.crt")),
            ("/etc/napalm/ca/tls.key", &dump.join("ca.key")),
            ("/etc/napalm/join/join-token", &dump.join("join-token")),
            ("/etc/napalm/auth/cluster-secret", &d.join("cluster-secret")),
            ("/var/lib/napalm/admin", &d.join("admin")),
        ],
        &[tls, https],
    );
    let log = std::fs::File::create(d.join("coordinator.log")).expect("log");
    let _coordinator = Daemon(
        Command::new(bins.join("napalm-coordinator"))
            .args(&coord_args)
            .arg("--store")
            .arg(d.join("registry.redb"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("napalm-coordinator runs"),
    );
    let coord_log = || std::fs::read_to_string(d.join("coordinator.log")).unwrap_or_default();
    let config = d.join("admin/napalmctl.yaml");
    assert!(
        napalm_integration::proc::wait_for(Duration::from_secs(30), || config
            .exists()
            .then_some(()))
        .is_some(),
        "the coordinator did not start on the chart's PKI:\n{}",
        coord_log()
    );

    // The token the chart rendered, dialled on loopback instead of the Service's name:
    // the secret and the pinned CA are the chart's.
    let rendered = std::fs::read_to_string(dump.join("join-token")).expect("token");
    let mut token = napalm_trust::JoinToken::decode(&rendered).expect("the chart's token decodes");
    assert_eq!(
        token.addresses,
        vec!["napalm-coordinator.napalm-ci.svc:8490".to_owned()]
    );
    token.addresses = vec![format!("127.0.0.1:{tls}")];
    std::fs::write(d.join("join-token"), token.encode()).expect("write");

    let mut agents = Vec::new();
    for n in ["node1", "node2"] {
        let state = d.join(n);
        std::fs::create_dir_all(&state).expect("mkdir");
        let node = state.join("node.xml");
        std::fs::write(
            &node,
            "<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads>\
             <active>4</active><mhz>2000</mhz><model>x86_64</model></cpu>\
             <memory>8388608</memory></node>\n",
        )
        .expect("write");
        let args = chart_args(
            dump,
            "agent-args.json",
            &[("/etc/napalm/join/join-token", &d.join("join-token"))],
            &[],
        );
        let log = std::fs::File::create(d.join(format!("{n}.log"))).expect("log");
        agents.push(Daemon(
            Command::new(bins.join("napalm-agent"))
                .args(&args)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("NAPALM_STATE_DIR", &state)
                .env("NAPALM_LIBVIRT_URI", format!("test://{}", node.display()))
                .env(
                    "NAPALM_HTTP_LISTEN",
                    format!("127.0.0.1:{}", super::free_port()),
                )
                .env(
                    "NAPALM_GRPC_LISTEN",
                    format!("127.0.0.1:{}", super::free_port()),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("napalm-agent runs"),
        ));
    }
    let logs = || {
        let mut s = format!("coordinator:\n{}", coord_log());
        for n in ["node1", "node2"] {
            s.push_str(&format!(
                "\n{n}:\n{}",
                std::fs::read_to_string(d.join(format!("{n}.log"))).unwrap_or_default()
            ));
        }
        s
    };
    let mut last = String::new();
    let listed = napalm_integration::proc::wait_for(Duration::from_secs(60), || {
        let out = Command::new(bins.join("napalmctl"))
            // As NOTES.txt says: the identity directory, and the listener the
            // port-forward reaches (the written config names the Service).
            .arg("--identity")
            .arg(d.join("admin"))
            .args(["--coordinator", &format!("https://127.0.0.1:{tls}")])
            .args(["-o", "json", "agents"])
            .env_remove("NAPALM_CONFIG")
            .stdin(Stdio::null())
            .output()
            .ok()?;
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let agents = v.as_array().or_else(|| v["agents"].as_array())?.clone();
        (agents.len() == 2
            && agents
                .iter()
                .all(|a| a.to_string().contains("https://") && a.to_string().contains("ready")))
        .then_some(agents)
    });
    let Some(listed) = listed else {
        panic!(
            "the chart's agents did not both enroll and register; napalmctl agents: \
             {last}\n{}",
            logs()
        );
    };
    // Each enrolled with the one token under its own id, with a key that stayed home.
    for n in ["node1", "node2"] {
        let tls_dir = d.join(n).join("tls");
        for f in ["agent.crt", "agent.key", "ca.crt"] {
            assert!(tls_dir.join(f).exists(), "{n}: no {f}\n{}", logs());
        }
        let ca = std::fs::read_to_string(tls_dir.join("ca.crt")).expect("ca");
        let chart_ca = std::fs::read_to_string(dump.join("ca.crt")).expect("ca");
        assert_eq!(ca.trim(), chart_ca.trim(), "{n} pinned the chart's CA");
    }
    let ids: std::collections::BTreeSet<String> = listed
        .iter()
        .filter_map(|a| a["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 2, "{listed:?}");
    println!(
        "the chart's PKI: coordinator on its CA and bootstrap token, 2 agents enrolled with \
         the one token and registered over mutual TLS: {ids:?}"
    );
    drop(agents);
}
