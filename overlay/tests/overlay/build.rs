//! Incremental, parallel and atomic builds.

use napalm_overlay::{BuildError, Config, LayerBuilder, TemplateError};

use crate::common::{cluster, identity, library, write_set};

const CONF: &str = "server: 10.0.0.1\nlayers: [s]\naddress_pool: 10.0.1.1\nhosts:\n  c[1-6]:\n";

#[test]
fn unchanged_inputs_are_not_rebuilt_and_changes_rebuild_only_what_they_touch() {
    let tmp = tempfile::tempdir().unwrap();
    write_set(
        tmp.path(),
        "s",
        &[(
            "root/etc/role.tmpl",
            "{{name}} {{#if role}}{{role}}{{/if}}\n",
        )],
    );
    let lib = library(&[tmp.path()]);
    let out = tmp.path().join("out");
    let c = cluster(CONF);
    let b = LayerBuilder::new(&c, &lib, &out).identity(identity());
    assert_eq!(b.build_all().unwrap().built.len(), 6);
    let stamp = std::fs::metadata(out.join("c1/layer.cpio"))
        .unwrap()
        .modified()
        .unwrap();
    let again = b.build_all().unwrap();
    assert_eq!((again.built.len(), again.unchanged.len()), (0, 6));
    assert_eq!(
        std::fs::metadata(out.join("c1/layer.cpio"))
            .unwrap()
            .modified()
            .unwrap(),
        stamp,
        "an unchanged clone is not rewritten"
    );
    // One host value changes: only that clone is rebuilt (no cluster template in set s).
    let c2 = cluster(&format!("{CONF}  c7: {{ role: db }}\n"));
    let r = LayerBuilder::new(&c2, &lib, &out)
        .identity(identity())
        .build_all()
        .unwrap();
    assert_eq!(r.built, ["c7"]);
    // A set change rebuilds every clone using it.
    write_set(tmp.path(), "s", &[("root/etc/extra", "new\n")]);
    let lib2 = library(&[tmp.path()]);
    let r = LayerBuilder::new(&c2, &lib2, &out)
        .identity(identity())
        .build_all()
        .unwrap();
    assert_eq!(r.built.len(), 7);
    // A different identity changes every clone.
    let r = LayerBuilder::new(&c2, &lib2, &out)
        .identity(napalm_overlay::Identity::from_secret(b"other"))
        .threads(2)
        .build(&["c1", "c2"])
        .unwrap();
    assert_eq!(r.built.len(), 2);
}

#[test]
fn failed_build_keeps_the_previous_good_layer() {
    let tmp = tempfile::tempdir().unwrap();
    write_set(tmp.path(), "s", &[("root/etc/role.tmpl", "{{name}}\n")]);
    let out = tmp.path().join("out");
    let c = cluster(CONF);
    LayerBuilder::new(&c, &library(&[tmp.path()]), &out)
        .identity(identity())
        .build_all()
        .unwrap()
        .into_result()
        .unwrap();
    let before = std::fs::read(out.join("c3/layer.cpio")).unwrap();
    // The template now needs a value that only c1 has.
    write_set(
        tmp.path(),
        "s",
        &[("root/etc/role.tmpl", "{{name}} {{role}}\n")],
    );
    let c = cluster(&CONF.replace("c[1-6]:\n", "c[2-6]:\n  c1: { role: head }\n"));
    let report = LayerBuilder::new(&c, &library(&[tmp.path()]), &out)
        .identity(identity())
        .build_all()
        .unwrap();
    assert_eq!(report.built, ["c1"]);
    assert_eq!(report.failed.len(), 5);
    let (name, err) = &report.failed[0];
    let msg = err.to_string();
    assert!(
        matches!(err, BuildError::Template(TemplateError::Render { .. })),
        "{msg}"
    );
    assert!(
        msg.contains("role.tmpl:1") && msg.contains(&format!("clone `{name}`")),
        "{msg}"
    );
    assert_eq!(std::fs::read(out.join("c3/layer.cpio")).unwrap(), before);
    assert_eq!(
        std::fs::read_to_string(out.join("c3/root/etc/role")).unwrap(),
        "c3\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-") || n.contains(".old-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn annex_iv_mpi_hostfile_is_rendered_into_layers_once_per_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::load(crate::common::annex_iv()).unwrap();
    config
        .global()
        .set("layers", serde_json::json!(["base", "mpi"]));
    let c = config.resolve().unwrap();
    let lib = library(&[&napalm_overlay::default_sets_dir()]);
    let r = LayerBuilder::new(&c, &lib, tmp.path())
        .identity(identity())
        .build_all()
        .unwrap();
    assert_eq!(r.built.len(), 24);
    let hostfile = std::fs::read_to_string(
        tmp.path()
            .join("clone05/root/etc/openmpi/openmpi-default-hostfile"),
    )
    .unwrap();
    let hosts: Vec<&str> = hostfile.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(hosts.len(), 24);
    assert_eq!(hosts[23], "clone24");
}

#[test]
fn prune_removes_layers_of_clones_that_left_the_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    write_set(tmp.path(), "s", &[("root/etc/x.tmpl", "{{name}}\n")]);
    let lib = library(&[tmp.path()]);
    let out = tmp.path().join("out");
    let c = cluster(CONF);
    LayerBuilder::new(&c, &lib, &out)
        .identity(identity())
        .build_all()
        .unwrap();
    std::fs::create_dir(out.join(".c9.tmp-1-2")).unwrap();
    std::fs::create_dir(out.join("not-a-layer")).unwrap();
    let fewer = cluster(&CONF.replace("c[1-6]", "c[1-4]"));
    let removed = LayerBuilder::new(&fewer, &lib, &out).prune().unwrap();
    assert_eq!(removed, [".c9.tmp-1-2", "c5", "c6"]);
    assert!(out.join("c4/layer.cpio").exists());
    assert!(
        out.join("not-a-layer").exists(),
        "only our layers are pruned"
    );
}

#[test]
fn shared_cluster_layer_holds_cluster_files_once() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(&[&napalm_overlay::default_sets_dir()]);
    let conf = "server: 10.0.0.1\nlayers: [base, mpi]\naddress_pool: 10.0.1.1\nhosts:\n  c[1-4]:\n";
    let c = cluster(conf);
    let build = |c: &napalm_overlay::Cluster| {
        LayerBuilder::new(c, &lib, tmp.path())
            .identity(identity())
            .shared_cluster_layer(true)
            .build_all()
            .unwrap()
            .into_result()
            .unwrap()
    };
    let r = build(&c);
    assert_eq!((r.built.len(), r.cluster_layers.len()), (4, 1));
    let cl = std::fs::read_to_string(tmp.path().join("c2/cluster-layer")).unwrap();
    let cl = tmp.path().join(cl.trim());
    assert!(cl
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("_cluster-"));
    assert!(
        !tmp.path().join("c2/root/etc/hosts").exists(),
        "not in the clone's layer"
    );
    assert!(tmp.path().join("c2/root/etc/hostname").exists());
    let hosts = std::fs::read_to_string(cl.join("root/etc/hosts")).unwrap();
    assert!(hosts.contains("10.0.1.4\tc4"), "{hosts}");
    let listing = crate::common::run(
        std::process::Command::new("tar")
            .arg("-tzf")
            .arg(cl.join("layer.tar.gz")),
    );
    assert!(
        listing.contains("etc/openmpi/openmpi-default-hostfile"),
        "{listing}"
    );
    // Nothing changed: nothing rebuilt.
    let r = build(&c);
    assert_eq!((r.built.len(), r.cluster_layers.len()), (0, 0));
    // A new clone: only it and the cluster layer are rebuilt.
    let r = build(&cluster(&format!("{conf}  c5:\n")));
    assert_eq!(r.built, ["c5"]);
    assert_eq!(r.cluster_layers.len(), 1);
    let hostfile =
        std::fs::read_to_string(cl.join("root/etc/openmpi/openmpi-default-hostfile")).unwrap();
    assert!(hostfile.contains("c5"), "{hostfile}");
    // Prune keeps the cluster layer.
    let removed = LayerBuilder::new(&cluster(conf), &lib, tmp.path())
        .prune()
        .unwrap();
    assert_eq!(removed, ["c5"]);
    assert!(cl.join("inputs.sha256").exists());
}

#[test]
fn per_clone_templates_may_list_all_clones() {
    let tmp = tempfile::tempdir().unwrap();
    write_set(
        tmp.path(),
        "s",
        &[(
            "root/etc/peers.tmpl",
            "{{name}} #{{index}} of {{cluster.size}} on {{cluster.server}}:{{#each clones}} {{name}}={{address}}{{/each}}\n",
        )],
    );
    let lib = library(&[tmp.path()]);
    let out = tmp.path().join("out");
    let r = LayerBuilder::new(&cluster(CONF), &lib, &out)
        .identity(identity())
        .build_all()
        .unwrap();
    assert_eq!(r.built.len(), 6);
    assert_eq!(
        std::fs::read_to_string(out.join("c2/root/etc/peers")).unwrap(),
        "c2 #1 of 6 on 10.0.0.1: c1=10.0.1.1 c2=10.0.1.2 c3=10.0.1.3 c4=10.0.1.4 c5=10.0.1.5 c6=10.0.1.6\n"
    );
    // Templates that list the clones depend on every clone: a new clone rebuilds them all.
    let r = LayerBuilder::new(&cluster(&format!("{CONF}  c7:\n")), &lib, &out)
        .identity(identity())
        .build_all()
        .unwrap();
    assert_eq!(r.built.len(), 7);
    assert!(std::fs::read_to_string(out.join("c1/root/etc/peers"))
        .unwrap()
        .ends_with(" c7=10.0.1.7\n"));
}

#[test]
fn manifest_is_only_a_cache_of_the_stamps() {
    let tmp = tempfile::tempdir().unwrap();
    write_set(tmp.path(), "s", &[("root/etc/x.tmpl", "{{name}}\n")]);
    let lib = library(&[tmp.path()]);
    let out = tmp.path().join("out");
    let c = cluster(CONF);
    let b = LayerBuilder::new(&c, &lib, &out).identity(identity());
    b.build_all().unwrap();
    let manifest = std::fs::read_to_string(out.join(".napalm-manifest")).unwrap();
    assert_eq!(manifest.lines().count(), 6, "{manifest}");
    // A deleted layer is rebuilt although the manifest lists it.
    std::fs::remove_dir_all(out.join("c3")).unwrap();
    assert_eq!(b.build_all().unwrap().built, ["c3"]);
    // A garbled or missing manifest falls back to the stamps: nothing is rebuilt.
    std::fs::write(out.join(".napalm-manifest"), "garbage\nzzz c1\n").unwrap();
    let r = b.build_all().unwrap();
    assert_eq!((r.built.len(), r.unchanged.len()), (0, 6));
    std::fs::remove_file(out.join(".napalm-manifest")).unwrap();
    assert_eq!(b.build_all().unwrap().unchanged.len(), 6);
    assert!(
        out.join(".napalm-manifest").exists(),
        "rewritten after a stamp check"
    );
}

#[test]
fn clones_with_live_cluster_files_are_not_rebuilt_when_the_cluster_changes() {
    let tmp = tempfile::tempdir().unwrap();
    write_set(
        tmp.path(),
        "s",
        &[
            ("root/etc/hosts.ctmpl", "{{cluster_files.hosts}}"),
            ("root/etc/hostname.tmpl", "{{name}}\n"),
        ],
    );
    let lib = library(&[tmp.path()]);
    let build = |conf: &str, out: &str| {
        LayerBuilder::new(&cluster(conf), &lib, tmp.path().join(out))
            .identity(identity())
            .build_all()
            .unwrap()
    };
    // Without a coordinator the cluster files live in the layer: a new clone rebuilds all.
    assert_eq!(build(CONF, "offline").built.len(), 6);
    assert_eq!(build(&format!("{CONF}  c7:\n"), "offline").built.len(), 7);
    // A clone that registers with a coordinator gets them live: its layer keeps the
    // boot-time seed, so only the new clone is built (and running clones are not replaced).
    let live = format!("register_url: http://10.0.0.1:7780/v1/clones/register\n{CONF}");
    assert_eq!(build(&live, "live").built.len(), 6);
    let r = build(&format!("{live}  c7:\n"), "live");
    assert_eq!(r.built, ["c7"]);
    let seed = std::fs::read_to_string(tmp.path().join("live/c7/root/etc/hosts")).unwrap();
    assert!(
        seed.contains("10.0.1.1\tc1") && seed.contains("c7"),
        "{seed}"
    );
}

#[test]
fn files_the_layers_share_are_written_once_and_linked_into_each() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(&[&napalm_overlay::default_sets_dir()]);
    let conf = "server: 10.0.0.1\nlayers: [base, mpi]\naddress_pool: 10.0.1.1\nhosts:\n  c[1-4]:\n";
    let out = tmp.path().join("out");
    let build = |conf: &str| {
        LayerBuilder::new(&cluster(conf), &lib, &out)
            .identity(identity())
            .build_all()
            .unwrap()
            .into_result()
            .unwrap()
    };
    assert_eq!(build(conf).built.len(), 4);
    let md = |clone: &str, file: &str| std::fs::metadata(out.join(clone).join(file)).unwrap();
    // The cluster files (listing every clone) and a set's static file: one inode for all 4.
    for f in [
        "root/etc/hosts",
        "root/etc/ssh/ssh_known_hosts",
        "root/etc/openmpi/openmpi-default-hostfile",
        "root/etc/systemd/system/napalm-register-clone.service",
        "root/etc/profile.d/napalm-mpi.sh",
    ] {
        let (a, b) = (md("c1", f), md("c4", f));
        assert_eq!(a.ino(), b.ino(), "{f} shared");
        assert_eq!(
            a.nlink(),
            4,
            "{f}: one link per layer, the build's own name gone"
        );
    }
    // Each clone's own files are its own.
    for f in ["root/etc/hostname", "root/etc/ssh/ssh_host_ed25519_key"] {
        let (a, b) = (md("c1", f), md("c2", f));
        assert_ne!(a.ino(), b.ino(), "{f} is per clone");
        assert_eq!(a.nlink(), 1, "{f}");
    }
    let key = md("c1", "root/etc/ssh/ssh_host_ed25519_key");
    assert_eq!(key.mode() & 0o777, 0o600);
    // A new clone: every layer's cluster files change, and the old layers' links (as a kept
    // version holds them) still read the old content: no file was changed in place.
    let kept = tmp.path().join("kept-hosts");
    std::fs::hard_link(out.join("c1/root/etc/hosts"), &kept).unwrap();
    assert_eq!(build(&format!("{conf}  c5:\n")).built.len(), 5);
    let now = std::fs::read_to_string(out.join("c1/root/etc/hosts")).unwrap();
    assert!(now.contains("\tc5"), "{now}");
    let old = std::fs::read_to_string(&kept).unwrap();
    assert!(!old.contains("\tc5") && old.contains("\tc4"), "{old}");
    assert_eq!(
        md("c5", "root/etc/hosts").ino(),
        md("c1", "root/etc/hosts").ino()
    );
    // No scratch name of the build is left in the output directory.
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != ".napalm-manifest")
        .collect();
    assert!(names.is_empty(), "{names:?}");
}
