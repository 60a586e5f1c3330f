//! The Helm chart: strict lint, schema, render and validation of every values file.

use std::process::{Command, Stdio};

use serde_json::Value;

use super::*;
use crate::repo_root;

#[test]
fn helm_chart_lints_strict_renders_and_validates_for_every_values_file() {
    let root = repo_root();
    let out = Command::new("python3")
        .arg(root.join("charts/validate.py"))
        .arg(root.join("charts/napalm"))
        .arg("--json")
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
}
