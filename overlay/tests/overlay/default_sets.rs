//! The shipped sets render scripts that run: the register-clone script posts valid JSON.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use napalm_overlay::layer::Entry;
use napalm_overlay::LayerBuilder;

use crate::common::{cluster, identity, library};

#[test]
fn register_clone_script_posts_the_clone_as_json() {
    let c = cluster(
        "server: 10.0.0.1\nregister_url: 'https://10.0.0.1:7071/v1/clones/register'\nregister_token: t0k\nca_pem: \"-----BEGIN CERTIFICATE-----\\nQ0E=\\n-----END CERTIFICATE-----\\n\"\nhosts: { node7: { address: 10.0.1.7 } }\n",
    );
    let lib = library(&[&napalm_overlay::default_sets_dir()]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let layer = LayerBuilder::new(&c, &lib, &out)
        .identity(identity())
        .render("node7")
        .unwrap();
    let Entry::File { data, meta } = &layer.entries["usr/local/sbin/napalm-register-clone"] else {
        panic!("script missing")
    };
    assert_eq!(meta.mode, 0o755);
    let script_text = String::from_utf8(data.to_vec()).unwrap();
    assert!(
        !script_text.contains("t0k"),
        "no token in the script: {script_text}"
    );
    // The secrets are root-only files; the CA certificate is public.
    let file = |p: &str| match &layer.entries[p] {
        Entry::File { data, meta } => (
            String::from_utf8(data.to_vec()).unwrap(),
            meta.mode,
            meta.uid,
        ),
        _ => panic!("{p} is not a file"),
    };
    assert_eq!(
        file("etc/napalm/register-token"),
        ("t0k\n".into(), 0o600, 0)
    );
    assert_eq!(file("etc/ssh/ssh_host_ed25519_key").1, 0o600);
    let (ca, ca_mode, _) = file("etc/napalm/ca.crt");
    assert_eq!(
        ca,
        "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n"
    );
    assert_eq!(ca_mode, 0o644);
    // The same on disk, as NFS serves it.
    LayerBuilder::new(&c, &lib, &out)
        .identity(identity())
        .build_all()
        .unwrap()
        .into_result()
        .unwrap();
    let root = out.join("node7/root");
    let disk_mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(disk_mode("etc/napalm/register-token"), 0o600);
    assert_eq!(disk_mode("etc/napalm"), 0o755);
    let script = tmp.path().join("register");
    std::fs::write(&script, &data[..]).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A stand-in curl that prints the body, the headers from stdin (-H @-), the CA file
    // and the URL it was given.
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(
        bin.join("curl"),
        "#!/bin/sh\nwhile [ $# -gt 0 ]; do case \"$1\" in -d) echo \"$2\"; shift;; --cacert) echo \"cacert $2\"; shift;; -H) [ \"$2\" = @- ] && while read -r h; do echo \"header $h\"; done; shift;; http*) echo \"$1\";; esac; shift; done\n",
    )
    .unwrap();
    std::fs::set_permissions(bin.join("curl"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = crate::common::run(
        Command::new("sh")
            .arg(&script)
            .env("PATH", path)
            .env("NAPALM_ROOT", &root)
            .env("NAPALM_NO_WATCHER", "1"),
    );
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some(format!("cacert {}", root.join("etc/napalm/ca.crt").display()).as_str())
    );
    assert_eq!(lines.next(), Some("header Authorization: Bearer t0k"));
    let body: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(body["name"], "node7");
    assert!(
        body["kernel"].as_str().is_some_and(|k| !k.is_empty()),
        "{body}"
    );
    assert_eq!(
        lines.next(),
        Some("https://10.0.0.1:7071/v1/clones/register")
    );
    let net = match &layer.entries["etc/systemd/network/10-napalm.network"] {
        Entry::File { data, .. } => String::from_utf8(data.to_vec()).unwrap(),
        _ => panic!(),
    };
    assert!(net.contains("Address=10.0.1.7/24"), "{net}");
}

/// A stand-in curl serving `$SERVE/FILE` for `…/cluster/FILE`: 304 when `If-None-Match`
/// equals `$SERVE/FILE.etag`; every request logged to `$SERVE/requests`.
const FAKE_CURL: &str = r#"#!/bin/sh
out=""; inm=""; auth=""; url=""
while [ $# -gt 0 ]; do
	case "$1" in
	-o) out="$2"; shift ;;
	-w|-m) shift ;;
	-H) case "$2" in
		"If-None-Match: "*) inm="${2#If-None-Match: }" ;;
		"Authorization: "*) auth="argv! ${2#Authorization: }" ;;
		@-) read -r h; auth="${h#Authorization: }" ;;
		esac; shift ;;
	http*) url="$1" ;;
	esac
	shift
done
f="$SERVE/${url##*/}"
if [ ! -f "$f" ]; then code=404
elif [ "$inm" = "$(cat "$f.etag")" ]; then code=304
else cp "$f" "$out"; code=200; fi
echo "$url [$auth] $code" >>"$SERVE/requests"
printf %s "$code"
"#;

#[test]
fn cluster_files_watcher_replaces_changed_files_and_keeps_local_lines() {
    let c = cluster(
        "server: 10.0.0.1\nlayers: [base, mpi]\nregister_url: 'http://10.0.0.1:7070/v1/clones/register'\nregister_token: t0k\nhosts: { node7: { address: 10.0.1.7 }, node8: { address: 10.0.1.8 } }\n",
    );
    let lib = library(&[&napalm_overlay::default_sets_dir()]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    LayerBuilder::new(&c, &lib, &out)
        .identity(identity())
        .build_all()
        .unwrap()
        .into_result()
        .unwrap();
    let root = out.join("node7/root");
    let watcher = root.join("usr/local/sbin/napalm-cluster-files");
    let mode = std::fs::metadata(&watcher).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let seed = std::fs::read_to_string(root.join("etc/hosts")).unwrap();
    assert!(seed.contains("10.0.1.8\tnode8"), "{seed}");
    // An admin's line above the mark survives every update.
    std::fs::write(
        root.join("etc/hosts"),
        seed.replacen("# napalm:", "192.0.2.9\tprinter\n# napalm:", 1),
    )
    .unwrap();
    let serve = tmp.path().join("serve");
    std::fs::create_dir(&serve).unwrap();
    let publish = |file: &str, body: &str| {
        std::fs::write(serve.join(file), body).unwrap();
        std::fs::write(
            serve.join(format!("{file}.etag")),
            napalm_overlay::live::etag(body),
        )
        .unwrap();
    };
    let head = "# clones of deployment d (napalm registry)\n";
    publish(
        "hosts",
        &format!("{head}10.0.1.7\tnode7\n10.0.1.9\tnode9\n"),
    );
    publish("mpi", &format!("{head}node7\nnode9\n"));
    publish(
        "known-hosts",
        &format!("{head}node7,10.0.1.7 ssh-ed25519 AAAA7\nnode9,10.0.1.9 ssh-ed25519 AAAA9\n"),
    );
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("curl"), FAKE_CURL).unwrap();
    std::fs::set_permissions(bin.join("curl"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let pass = || {
        crate::common::run(
            Command::new("sh")
                .arg(&watcher)
                .env("PATH", &path)
                .env("SERVE", &serve)
                .env("NAPALM_ROOT", &root)
                .env("NAPALM_CLUSTER_FILES_ONCE", "1"),
        )
    };
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    pass();
    let hosts = read("etc/hosts");
    assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"), "{hosts}");
    assert!(hosts.contains("10.0.0.1\tnapalm-server\n"), "{hosts}");
    assert!(hosts.contains("192.0.2.9\tprinter\n"), "{hosts}");
    assert!(hosts.contains("10.0.1.9\tnode9\n"), "{hosts}");
    assert!(
        !hosts.contains("node8"),
        "node8 left the deployment: {hosts}"
    );
    assert_eq!(
        hosts.matches("# napalm: the lines below").count(),
        1,
        "{hosts}"
    );
    assert_eq!(
        read("etc/openmpi/openmpi-default-hostfile"),
        format!("{head}node7\nnode9\n")
    );
    assert!(read("etc/ssh/ssh_known_hosts").contains("node9,10.0.1.9 ssh-ed25519 AAAA9"));
    let requests = std::fs::read_to_string(serve.join("requests")).unwrap();
    assert!(
        requests
            .lines()
            .all(|l| l.contains("[Bearer t0k] 200") && !l.contains("t0k ")),
        "the token travels in a header: {requests}"
    );
    assert!(
        requests.contains("http://10.0.0.1:7070/v1/clones/node7/cluster/hosts "),
        "{requests}"
    );
    // Nothing changed: every file answers 304 and nothing is rewritten.
    let stamp = std::fs::metadata(root.join("etc/hosts"))
        .unwrap()
        .modified()
        .unwrap();
    std::fs::remove_file(serve.join("requests")).unwrap();
    pass();
    let requests = std::fs::read_to_string(serve.join("requests")).unwrap();
    assert_eq!(requests.matches(" 304").count(), 3, "{requests}");
    assert_eq!(
        std::fs::metadata(root.join("etc/hosts"))
            .unwrap()
            .modified()
            .unwrap(),
        stamp
    );
    // The deployment shrinks: the files follow, the local lines stay.
    publish("hosts", &format!("{head}10.0.1.7\tnode7\n"));
    pass();
    let hosts = read("etc/hosts");
    assert!(
        !hosts.contains("node9") && hosts.contains("192.0.2.9\tprinter\n"),
        "{hosts}"
    );
    assert!(hosts.contains("10.0.1.7\tnode7\n"), "{hosts}");
    // A body without the coordinator's header (cut short, an error page) is ignored, and
    // the round says it failed (the watcher does it again later).
    publish("hosts", "<html>proxy error</html>\n");
    let failed = Command::new("sh")
        .arg(&watcher)
        .env("PATH", &path)
        .env("SERVE", &serve)
        .env("NAPALM_ROOT", &root)
        .env("NAPALM_CLUSTER_FILES_ONCE", "1")
        .status()
        .unwrap();
    assert!(!failed.success(), "a round with a bad body fails");
    assert_eq!(read("etc/hosts"), hosts);
}

/// A stand-in wget like busybox's: `-O FILE`, `--header=H`, exit 1 on anything but 200
/// (so on a 304) and on `-T`, which crashes busybox 1.35's static wget.
const FAKE_WGET: &str = r#"#!/bin/sh
out=""; inm=""; auth=""; url=""
while [ $# -gt 0 ]; do
	case "$1" in
	-O) out="$2"; shift ;;
	-T) echo "wget -T segfaults on busybox 1.35" >&2; exit 139 ;;
	--header=If-None-Match:*) inm="${1#--header=If-None-Match: }" ;;
	--header=Authorization:*) auth="${1#--header=Authorization: }" ;;
	http*) url="$1" ;;
	esac
	shift
done
f="$SERVE/${url##*/}"
if [ ! -f "$f" ]; then code=404
elif [ "$inm" = "$(cat "$f.etag")" ]; then code=304
else cp "$f" "$out"; code=200; fi
echo "$url [$auth] $code" >>"$SERVE/requests"
[ "$code" = 200 ]
"#;

#[test]
fn cluster_files_watcher_works_with_wget_alone() {
    let c = cluster(
        "server: 10.0.0.1\nregister_url: 'http://10.0.0.1:7070/v1/clones/register'\nregister_token: t0k\nhosts: { node7: { address: 10.0.1.7 } }\n",
    );
    let lib = library(&[&napalm_overlay::default_sets_dir()]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    LayerBuilder::new(&c, &lib, &out)
        .identity(identity())
        .build_all()
        .unwrap()
        .into_result()
        .unwrap();
    let root = out.join("node7/root");
    let serve = tmp.path().join("serve");
    std::fs::create_dir(&serve).unwrap();
    let body = "# clones of deployment d (napalm registry)\n10.0.1.7\tnode7\n10.0.1.9\tnode9\n";
    std::fs::write(serve.join("hosts"), body).unwrap();
    std::fs::write(serve.join("hosts.etag"), napalm_overlay::live::etag(body)).unwrap();
    let known = "# clones of deployment d (napalm registry)\nnode7,10.0.1.7 ssh-ed25519 AAAA7\n";
    std::fs::write(serve.join("known-hosts"), known).unwrap();
    std::fs::write(
        serve.join("known-hosts.etag"),
        napalm_overlay::live::etag(known),
    )
    .unwrap();
    // PATH: the fake wget and the few tools the watcher uses, no curl.
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("wget"), FAKE_WGET).unwrap();
    std::fs::set_permissions(bin.join("wget"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for tool in [
        "sh",
        "cat",
        "cp",
        "mv",
        "rm",
        "mkdir",
        "chmod",
        "cmp",
        "grep",
        "head",
        "awk",
        "cut",
        "sha256sum",
        "printf",
        "timeout",
    ] {
        let found = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(tool))
            .find(|p| p.exists());
        if let Some(p) = found {
            std::os::unix::fs::symlink(p, bin.join(tool)).unwrap();
        }
    }
    let pass = || {
        crate::common::run(
            Command::new(bin.join("sh"))
                .arg(root.join("usr/local/sbin/napalm-cluster-files"))
                .env("PATH", &bin)
                .env("SERVE", &serve)
                .env("NAPALM_ROOT", &root)
                .env("NAPALM_CLUSTER_FILES_ONCE", "1"),
        )
    };
    pass();
    let hosts = std::fs::read_to_string(root.join("etc/hosts")).unwrap();
    assert!(hosts.contains("10.0.1.9\tnode9\n"), "{hosts}");
    assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"), "{hosts}");
    // An install renames a new file over the old one: the inode tells.
    let inode =
        || std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(root.join("etc/hosts")).unwrap());
    let before = inode();
    pass();
    assert_eq!(inode(), before, "an unchanged file is not rewritten");
    let requests = std::fs::read_to_string(serve.join("requests")).unwrap();
    // wget fails on a 304 as on an error, so it asks for whole files (a round only
    // follows a change); an unchanged file is not rewritten.
    assert_eq!(
        requests
            .lines()
            .filter(|l| l.contains("/cluster/hosts"))
            .map(|l| l.rsplit(' ').next().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["200", "200"],
        "{requests}"
    );
    assert!(
        requests.lines().all(|l| l.contains("[Bearer t0k]")),
        "{requests}"
    );
}
