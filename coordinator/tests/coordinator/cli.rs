//! `napalmctl` as an operator runs it: the Clone tool on the thesis's annex IV clones.conf,
//! and exit codes and messages on bad input or an unreachable coordinator.

use std::path::PathBuf;
use std::process::{Command, Output};

fn annex_iv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../overlay/examples/clones.conf")
}

fn ctl(args: &[&str], out: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_napalmctl"))
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("napalmctl runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn clone_tool_on_the_annex_iv_configuration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = annex_iv();
    let conf = conf.to_str().expect("utf-8");
    let o = ctl(&["clones", "--config", conf, "--format", "mpi"], dir.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(out.lines().count(), 24, "{out}");
    assert_eq!(out.lines().next(), Some("clone01"));

    let o = ctl(
        &["clone", "--config", conf, "show", "clone07", "--explain"],
        dir.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("name = \"clone07\""), "{out}");
    assert!(
        out.contains("clones.conf:5:1 (global)"),
        "no file:line origin: {out}"
    );

    let o = ctl(&["clone", "--config", conf, "build", "--all"], dir.path());
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.starts_with("24 built"), "{}", text(&o).0);
    let o = ctl(&["clone", "--config", conf, "build", "--all"], dir.path());
    assert!(
        text(&o).0.starts_with("0 built, 24 unchanged"),
        "{}",
        text(&o).0
    );

    let o = ctl(
        &["clone", "--config", conf, "render", "clone07"],
        dir.path(),
    );
    assert!(text(&o).0.contains("/etc/hostname"), "{}", text(&o).0);
}

#[test]
fn bad_input_gives_clear_messages_and_exit_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = annex_iv();
    let conf = conf.to_str().expect("utf-8");
    let o = ctl(&["clone", "--config", conf, "show", "clone99"], dir.path());
    assert_eq!(o.status.code(), Some(4));
    assert!(text(&o).1.contains("\"clone99\""), "{}", text(&o).1);

    let o = ctl(
        &["clones", "--config", "/nonexistent.conf", "--format", "mpi"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("/nonexistent.conf"), "{}", text(&o).1);

    let o = ctl(&["clones", "--config", conf, "--format", "xml"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("xml"), "{}", text(&o).1);

    let o = Command::new(env!("CARGO_BIN_EXE_napalmctl"))
        .args([
            "--coordinator",
            "http://127.0.0.1:9",
            "deploy",
            "--count",
            "8",
        ])
        .output()
        .expect("napalmctl runs");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o).1);
    assert!(
        text(&o).1.contains("cannot reach the coordinator"),
        "{}",
        text(&o).1
    );

    let o = Command::new(env!("CARGO_BIN_EXE_napalmctl"))
        .args(["deploy", "--count", "2", "--memory", "12X"])
        .output()
        .expect("napalmctl runs");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    assert!(text(&o).1.contains("\"12X\""), "{}", text(&o).1);
}
