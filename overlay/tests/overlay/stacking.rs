//! Template sets stacked in the order a clone lists them, with whiteouts and opaque dirs.

use napalm_overlay::layer::Entry;
use napalm_overlay::{Layer, LayerBuilder};

use crate::common::{cluster, identity, library, write_set};

fn sets(dir: &std::path::Path) {
    write_set(
        dir,
        "a",
        &[
            ("root/etc/a.conf", "A\n"),
            ("root/etc/shared.conf", "from A\n"),
            ("root/etc/motd", "motd\n"),
            ("root/opt/app/x", "x"),
            ("root/srv/data/keep", "k"),
            ("root/etc/runlevels/boot", "->clone-boot"),
            ("root/etc/runlevels/clone-boot/", ""),
        ],
    );
    write_set(
        dir,
        "b",
        &[
            ("root/etc/shared.conf.tmpl", "from B for {{name}}\n"),
            ("root/etc/.wh.motd", ""),
            ("root/opt/app/.wh..wh..opq", ""),
            ("root/opt/app/y", "y"),
            ("root/srv/.wh.data", ""),
            // The thesis's UnionFS spelling.
            ("root/var/cache/.wh.__dir_opaque", ""),
        ],
    );
}

fn render(layers: &str) -> Layer {
    let tmp = tempfile::tempdir().unwrap();
    sets(tmp.path());
    let c = cluster(&format!("layers: [{layers}]\nhosts: {{ c1: }}\n"));
    let lib = library(&[tmp.path()]);
    let out = tmp.path().join("out");
    LayerBuilder::new(&c, &lib, &out)
        .identity(identity())
        .render("c1")
        .unwrap()
}

fn file(l: &Layer, p: &str) -> String {
    match &l.entries[p] {
        Entry::File { data, .. } => String::from_utf8(data.to_vec()).unwrap(),
        other => panic!("{p} is {other:?}"),
    }
}

fn opaque(l: &Layer, p: &str) -> bool {
    matches!(l.entries[p], Entry::Dir { opaque: true, .. })
}

#[test]
fn later_set_wins_and_whites_out_earlier_sets() {
    let l = render("a, b");
    assert_eq!(file(&l, "etc/a.conf"), "A\n");
    assert_eq!(file(&l, "etc/shared.conf"), "from B for c1\n");
    assert_eq!(l.entries["etc/motd"], Entry::Whiteout);
    assert!(opaque(&l, "opt/app"));
    assert!(
        !l.entries.contains_key("opt/app/x"),
        "opaque dir drops a's files"
    );
    assert_eq!(file(&l, "opt/app/y"), "y");
    assert_eq!(l.entries["srv/data"], Entry::Whiteout);
    assert!(!l.entries.contains_key("srv/data/keep"));
    assert!(
        opaque(&l, "var/cache"),
        ".wh.__dir_opaque is an opaque marker"
    );
    assert!(
        matches!(&l.entries["etc/runlevels/boot"], Entry::Symlink { target, .. } if target == "clone-boot")
    );
}

#[test]
fn reversed_order_reverses_the_winner() {
    let l = render("b, a");
    assert_eq!(file(&l, "etc/shared.conf"), "from A\n");
    assert_eq!(
        file(&l, "etc/motd"),
        "motd\n",
        "a's file replaces b's whiteout"
    );
    assert!(opaque(&l, "opt/app"), "stays opaque over server files");
    assert_eq!(file(&l, "opt/app/x"), "x");
    assert_eq!(file(&l, "opt/app/y"), "y");
    assert!(
        opaque(&l, "srv/data"),
        "a directory over a whiteout becomes opaque (rmdir + mkdir)"
    );
    assert_eq!(file(&l, "srv/data/keep"), "k");
}

#[test]
fn default_sets_stack_for_annex_iv() {
    let c = napalm_overlay::Config::load(crate::common::annex_iv())
        .unwrap()
        .resolve()
        .unwrap();
    let lib = library(&[&napalm_overlay::default_sets_dir()]);
    let tmp = tempfile::tempdir().unwrap();
    let l = LayerBuilder::new(&c, &lib, tmp.path())
        .identity(identity())
        .render("clone07")
        .unwrap();
    assert_eq!(file(&l, "etc/hostname"), "clone07\n");
    let fstab = file(&l, "etc/fstab");
    assert!(
        fstab.contains("10.0.0.1:/\t/\tnfs\tro,nfsvers=3,noatime\t0 0"),
        "{fstab}"
    );
    assert!(
        fstab.contains("10.0.0.1:/home\t/home\tnfs\trw,nfsvers=3\t0 0"),
        "{fstab}"
    );
    for d in ["tmp", "var/tmp", "var/log", "run"] {
        assert!(opaque(&l, d), "{d} must be opaque");
    }
    assert!(matches!(l.entries["tmp"], Entry::Dir { meta, .. } if meta.mode == 0o1777));
    assert!(
        matches!(l.entries["etc/ssh/ssh_host_ed25519_key"], Entry::File { meta, .. } if meta.mode == 0o600)
    );
    assert_eq!(file(&l, "etc/machine-id").len(), 33);
    assert!(file(&l, "etc/systemd/network/10-napalm.network").contains("DHCP=yes"));
    assert!(file(&l, "etc/hosts").contains("10.0.0.1\tnapalm-server"));
    assert!(file(&l, "usr/local/sbin/napalm-register-clone").contains("no register_url"));
}
