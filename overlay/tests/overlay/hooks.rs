//! `setup.d/` hooks: JSON on stdin, layer dir as argument, timeout, failure with stderr.

use std::time::{Duration, Instant};

use napalm_overlay::{BuildError, LayerBuilder, Limits, SetLibrary};

use crate::common::{cluster, identity, write_set};

fn build(hook: &str, timeout: Duration) -> (tempfile::TempDir, napalm_overlay::BuildReport) {
    let tmp = tempfile::tempdir().unwrap();
    write_set(
        tmp.path(),
        "s",
        &[("root/etc/base", "b\n"), ("setup.d/10-hook@755", hook)],
    );
    let c = cluster("layers: [s]\nrole: compute\nhosts: { c1: , c2: }\n");
    let lib = SetLibrary::with_limits(
        vec![tmp.path().to_path_buf()],
        Limits {
            hook_timeout: timeout,
            ..Limits::default()
        },
    );
    let report = LayerBuilder::new(&c, &lib, tmp.path().join("out"))
        .identity(identity())
        .build_all()
        .unwrap();
    (tmp, report)
}

#[test]
fn hook_gets_values_on_stdin_and_adds_files_to_every_output() {
    let (tmp, report) = build(
        "#!/bin/sh\nset -e\ncat > \"$1/etc/values.json\"\necho \"$NAPALM_CLONE\" > \"$1/etc/from-hook\"\nmkdir -p \"$1/var/cache\"\n: > \"$1/var/cache/.wh..wh..opq\"\n",
        Duration::from_secs(20),
    );
    assert_eq!(report.built.len(), 2, "{:?}", report.failed);
    let root = tmp.path().join("out/c2/root");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("etc/values.json")).unwrap()).unwrap();
    assert_eq!(v["name"], "c2");
    assert_eq!(v["role"], "compute");
    assert_eq!(v["index"], 1);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/from-hook")).unwrap(),
        "c2\n"
    );
    let listing = crate::common::run(
        std::process::Command::new("tar")
            .arg("-tzf")
            .arg(tmp.path().join("out/c2/layer.tar.gz")),
    );
    assert!(listing.contains("etc/from-hook"), "{listing}");
    assert!(listing.contains("var/cache/.wh..wh..opq"), "{listing}");
}

#[test]
fn failing_hook_fails_the_clone_with_its_stderr() {
    let (tmp, report) = build(
        "#!/bin/sh\necho \"cannot configure $NAPALM_CLONE\" >&2\nexit 3\n",
        Duration::from_secs(20),
    );
    assert_eq!(report.failed.len(), 2);
    let (_, e) = &report.failed[0];
    assert!(matches!(e, BuildError::Hook { .. }));
    let m = e.to_string();
    assert!(
        m.contains("cannot configure c1") && m.contains("exit status: 3"),
        "{m}"
    );
    assert!(!tmp.path().join("out/c1").exists(), "no half-built layer");
}

#[test]
fn hanging_hook_is_killed_at_the_timeout() {
    let start = Instant::now();
    let (_tmp, report) = build(
        "#!/bin/sh\necho started >&2\nsleep 30\n",
        Duration::from_millis(300),
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(report.failed.len(), 2);
    let m = report.failed[0].1.to_string();
    assert!(
        m.contains("timed out after 0.3 s") && m.contains("started"),
        "{m}"
    );
}
