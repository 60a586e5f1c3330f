//! `clone render` (listing) and `clone diff` (against a server root).

use napalm_overlay::inspect::{self, Change};
use napalm_overlay::LayerBuilder;

use crate::common::{cluster, identity, library, write_set};

#[test]
fn listing_and_diff_against_a_server_root() {
    let tmp = tempfile::tempdir().unwrap();
    write_set(
        tmp.path(),
        "s",
        &[
            ("root/etc/hostname.tmpl", "{{name}}\n"),
            ("root/etc/same", "same\n"),
            ("root/etc/.wh.motd", ""),
            ("root/etc/.wh.absent", ""),
            ("root/etc/new.conf", "n\n"),
            ("root/tmp/.wh..wh..opq", ""),
            ("root/tmp/kept", "k"),
            ("root/etc/rc", "->/etc/init.d/x"),
        ],
    );
    let server = tmp.path().join("server");
    write_set(
        &server,
        "",
        &[
            ("etc/hostname", "server\n"),
            ("etc/same", "same\n"),
            ("etc/motd", "hello\n"),
            ("tmp/junk", "j"),
            ("tmp/kept", "old"),
        ],
    );
    let c = cluster("layers: [s]\nhosts: { c1: }\n");
    let lib = library(&[tmp.path()]);
    let layer = LayerBuilder::new(&c, &lib, tmp.path().join("out"))
        .identity(identity())
        .render("c1")
        .unwrap();
    let listing: Vec<String> = inspect::listing(&layer)
        .iter()
        .map(|l| l.to_string())
        .collect();
    assert!(
        listing
            .iter()
            .any(|l| l.starts_with("whiteout") && l.contains("/etc/motd")),
        "{listing:?}"
    );
    assert!(
        listing
            .iter()
            .any(|l| l.starts_with("opaque-dir") && l.contains("/tmp")),
        "{listing:?}"
    );
    assert!(
        listing
            .iter()
            .any(|l| l.starts_with("link") && l.contains("-> /etc/init.d/x")),
        "{listing:?}"
    );
    // The set's files are the test's umask; compare modes of `same` with the server copy.
    let changes = inspect::diff(&layer, &server).unwrap();
    let shown: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
    assert!(
        changes.contains(&Change::Modified("etc/hostname".into())),
        "{shown:?}"
    );
    assert!(
        changes.contains(&Change::Removed("etc/motd".into())),
        "{shown:?}"
    );
    assert!(
        changes.contains(&Change::Added("etc/new.conf".into())),
        "{shown:?}"
    );
    assert!(
        changes.contains(&Change::Hidden("tmp/junk".into())),
        "{shown:?}"
    );
    assert!(
        changes.contains(&Change::Modified("tmp/kept".into())),
        "{shown:?}"
    );
    assert!(!shown.iter().any(|s| s.contains("etc/same")), "{shown:?}");
    assert!(
        !shown.iter().any(|s| s.contains("absent")),
        "whiteout of a missing file is no change"
    );
    assert!(shown.contains(&"D /etc/motd".to_string()));
}
