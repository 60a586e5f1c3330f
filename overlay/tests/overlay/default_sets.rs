//! The shipped sets render scripts that run: the register-clone script posts valid JSON.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use napalm_overlay::layer::Entry;
use napalm_overlay::LayerBuilder;

use crate::common::{cluster, identity, library};

#[test]
fn register_clone_script_posts_the_clone_as_json() {
    let c = cluster(
        "server: 10.0.0.1\nregister_url: 'http://10.0.0.1:7070/v1/clones/register?token=t0k'\nhosts: { node7: { address: 10.0.1.7 } }\n",
    );
    let lib = library(&[&napalm_overlay::default_sets_dir()]);
    let tmp = tempfile::tempdir().unwrap();
    let layer = LayerBuilder::new(&c, &lib, tmp.path().join("o"))
        .identity(identity())
        .render("node7")
        .unwrap();
    let Entry::File { data, meta } = &layer.entries["usr/local/sbin/napalm-register-clone"] else {
        panic!("script missing")
    };
    assert_eq!(meta.mode, 0o755);
    let script = tmp.path().join("register");
    std::fs::write(&script, &data[..]).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A stand-in curl that prints the body and the URL it was given.
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(
        bin.join("curl"),
        "#!/bin/sh\nwhile [ $# -gt 0 ]; do case \"$1\" in -d) echo \"$2\"; shift;; http*) echo \"$1\";; esac; shift; done\n",
    )
    .unwrap();
    std::fs::set_permissions(bin.join("curl"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = crate::common::run(Command::new("sh").arg(&script).env("PATH", path));
    let mut lines = out.lines();
    let body: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(body["name"], "node7");
    assert!(
        body["kernel"].as_str().is_some_and(|k| !k.is_empty()),
        "{body}"
    );
    assert_eq!(
        lines.next(),
        Some("http://10.0.0.1:7070/v1/clones/register?token=t0k")
    );
    let net = match &layer.entries["etc/systemd/network/10-napalm.network"] {
        Entry::File { data, .. } => String::from_utf8(data.to_vec()).unwrap(),
        _ => panic!(),
    };
    assert!(net.contains("Address=10.0.1.7/24"), "{net}");
}
