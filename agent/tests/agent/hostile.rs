//! Hostile inputs, each refused with its own test: traversal, absolute paths, symlink and
//! hardlink escapes, device nodes, archive bombs, config.xml reaching host files or
//! devices, oversized bodies, bad XML. After each, nothing of the domain exists.

use crate::common::*;
use tar::EntryType;

async fn refused(a: &TestAgent, name: &str, body: Vec<u8>, status: u16, needle: &str) {
    let r = a.put(&format!("/domain/{name}"), body).await;
    let code = r.status().as_u16();
    let text = r.text().await.expect("body");
    assert_eq!(code, status, "{name}: {text}");
    assert!(
        text.contains(needle),
        "{name}: expected {needle:?} in {text}"
    );
    assert!(!libvirt_has(name), "{name} must not be defined");
    let dirs = std::fs::read_dir(a.dir.path().join("state/domains"))
        .expect("domains")
        .count();
    assert_eq!(dirs, 0, "{name}: no domain directory may remain");
    let staging = a.dir.path().join("state/staging");
    let left = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "{name}: staging must be cleaned");
}

fn with_config(name: &str, extra: Vec<Raw<'_>>) -> Vec<u8> {
    let xml = test_xml(name);
    let mut v = vec![
        Raw {
            name: b"config.xml",
            kind: EntryType::Regular,
            link: b"",
            data: xml.as_bytes(),
        },
        Raw {
            name: b"vmlinuz",
            kind: EntryType::Regular,
            link: b"",
            data: b"k",
        },
    ];
    v.extend(extra);
    raw_tar(&v)
}

#[tokio::test]
async fn traversal_in_archive() {
    let a = TestAgent::start(None).await;
    let body = with_config(
        "h-trav",
        vec![Raw {
            name: b"../../escaped-by-napalm-test",
            kind: EntryType::Regular,
            link: b"",
            data: b"x",
        }],
    );
    refused(&a, "h-trav", body, 403, "..").await;
    assert!(!a.dir.path().join("escaped-by-napalm-test").exists());
    assert!(!a.dir.path().join("state/escaped-by-napalm-test").exists());
}

#[tokio::test]
async fn absolute_path_in_archive() {
    let a = TestAgent::start(None).await;
    let target = a.dir.path().join("abs-target");
    let name = target.to_string_lossy().into_owned();
    let body = with_config(
        "h-abs",
        vec![Raw {
            name: name.as_bytes(),
            kind: EntryType::Regular,
            link: b"",
            data: b"x",
        }],
    );
    refused(&a, "h-abs", body, 403, "absolute path").await;
    assert!(!target.exists());
}

#[tokio::test]
async fn symlink_escape() {
    let a = TestAgent::start(None).await;
    let body = with_config(
        "h-sym",
        vec![
            Raw {
                name: b"etc",
                kind: EntryType::Symlink,
                link: b"/etc",
                data: b"",
            },
            Raw {
                name: b"etc/napalm-test-written",
                kind: EntryType::Regular,
                link: b"",
                data: b"x",
            },
        ],
    );
    refused(&a, "h-sym", body, 403, "symbolic link").await;
    assert!(!std::path::Path::new("/etc/napalm-test-written").exists());
}

#[tokio::test]
async fn hardlink_escape() {
    let a = TestAgent::start(None).await;
    let body = with_config(
        "h-hard",
        vec![Raw {
            name: b"shadow",
            kind: EntryType::Link,
            link: b"/etc/shadow",
            data: b"",
        }],
    );
    refused(&a, "h-hard", body, 403, "hard link").await;
}

#[tokio::test]
async fn device_node() {
    let a = TestAgent::start(None).await;
    let body = with_config(
        "h-dev",
        vec![Raw {
            name: b"sda",
            kind: EntryType::Block,
            link: b"",
            data: b"",
        }],
    );
    refused(&a, "h-dev", body, 403, "device node").await;
    let body = with_config(
        "h-dev",
        vec![Raw {
            name: b"mem",
            kind: EntryType::Char,
            link: b"",
            data: b"",
        }],
    );
    refused(&a, "h-dev", body, 403, "device node").await;
}

#[tokio::test]
async fn archive_bomb_by_size() {
    let a = TestAgent::start(None).await;
    // 64 MiB of zeros compress to ~64 KiB; the agent's limit is 16 MiB unpacked.
    let zeros = vec![0u8; 64 << 20];
    let xml = test_xml("h-bomb");
    let body = tar_gz(&[("config.xml", xml.as_bytes()), ("disk.img", &zeros)]);
    assert!(
        body.len() < 1 << 20,
        "the bomb itself fits the body limit ({} bytes)",
        body.len()
    );
    refused(&a, "h-bomb", body, 413, "more than").await;
}

#[tokio::test]
async fn archive_bomb_by_entries() {
    let a = TestAgent::start(None).await;
    let names: Vec<String> = (0..200).map(|i| format!("f{i}")).collect();
    let xml = test_xml("h-many");
    let mut files: Vec<(&str, &[u8])> = vec![("config.xml", xml.as_bytes())];
    files.extend(names.iter().map(|n| (n.as_str(), &b"x"[..])));
    refused(&a, "h-many", tar_gz(&files), 413, "entries").await;
}

async fn bad_config(name: &str, xml: &str, status: u16, needle: &str) {
    let a = TestAgent::start(None).await;
    let body = tar_gz(&[
        ("config.xml", xml.as_bytes()),
        ("vmlinuz", b"k"),
        ("initrd.img", b"i"),
    ]);
    refused(&a, name, body, status, needle).await;
}

fn xml_with(name: &str, os: &str, devices: &str) -> String {
    format!("<domain type='test'><name>{name}</name><memory>65536</memory><os><type>hvm</type>{os}</os><devices>{devices}</devices></domain>")
}

#[tokio::test]
async fn config_points_at_etc_shadow() {
    bad_config(
        "h-shadow",
        &xml_with("h-shadow", "<kernel>/etc/shadow</kernel>", ""),
        403,
        "/etc/shadow",
    )
    .await;
    bad_config(
        "h-shadow2",
        &xml_with("h-shadow2", "<kernel>../../../../etc/shadow</kernel>", ""),
        403,
        "outside",
    )
    .await;
    bad_config("h-shadow3", &xml_with("h-shadow3", "", "<disk type='file' device='disk'><source file='/etc/shadow'/><target dev='vda'/></disk>"), 403, "/etc/shadow").await;
    bad_config(
        "h-shadow4",
        &xml_with(
            "h-shadow4",
            "",
            "<serial type='file'><source path='/etc/cron.d/x'/></serial>",
        ),
        403,
        "outside",
    )
    .await;
}

#[tokio::test]
async fn config_points_at_host_disk() {
    bad_config(
        "h-blk",
        &xml_with(
            "h-blk",
            "",
            "<disk type='block' device='disk'><source dev='/dev/sda'/><target dev='vda'/></disk>",
        ),
        403,
        "block",
    )
    .await;
    bad_config(
        "h-blk2",
        &xml_with(
            "h-blk2",
            "",
            "<disk type='file' device='disk'><source dev='/dev/sda'/><target dev='vda'/></disk>",
        ),
        403,
        "host device",
    )
    .await;
    bad_config("h-qcow", &xml_with("h-qcow", "", "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='vmlinuz'/><target dev='vda'/></disk>"), 403, "raw").await;
    bad_config(
        "h-evdev",
        &xml_with(
            "h-evdev",
            "",
            "<input type='passthrough' bus='virtio'><source evdev='/dev/input/event0'/></input>",
        ),
        403,
        "host device",
    )
    .await;
    bad_config(
        "h-acpi",
        &xml_with(
            "h-acpi",
            "<acpi><table type='slic'>/etc/shadow</table></acpi>",
            "",
        ),
        403,
        "/etc/shadow",
    )
    .await;
    bad_config("h-hostdev", &xml_with("h-hostdev", "", "<hostdev mode='subsystem' type='pci'><source><address bus='0' slot='1'/></source></hostdev>"), 403, "hostdev").await;
}

#[tokio::test]
async fn config_pass_through_and_network_refused() {
    let cmdline = "<domain type='test' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>h-qemu</name><memory>65536</memory><os><type>hvm</type></os><qemu:commandline><qemu:arg value='-hda'/><qemu:arg value='/dev/sda'/></qemu:commandline></domain>";
    bad_config("h-qemu", cmdline, 403, "qemu:commandline").await;
    bad_config(
        "h-net",
        &xml_with(
            "h-net",
            "",
            "<interface type='network'><source network='default'/></interface>",
        ),
        403,
        "interface",
    )
    .await;
    bad_config(
        "h-emu",
        &xml_with("h-emu", "", "<emulator>/bin/sh</emulator>"),
        403,
        "emulator",
    )
    .await;
    bad_config(
        "h-meta",
        &xml_with("h-meta", "", "").replace("</domain>", "<metadata><x/></metadata></domain>"),
        403,
        "metadata",
    )
    .await;
}

#[tokio::test]
async fn bad_xml_is_400_naming_the_problem() {
    bad_config(
        "h-bad",
        "<domain type='test'><name>h-bad</name>",
        400,
        "malformed XML",
    )
    .await;
    let bomb = "<?xml version='1.0'?><!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>]><domain><name>h-dtd</name>&b;</domain>";
    bad_config("h-dtd", bomb, 400, "malformed XML").await;
    bad_config(
        "h-root",
        "<vm><name>h-root</name></vm>",
        400,
        "expected a libvirt",
    )
    .await;
    bad_config("h-name", &test_xml("other-name"), 400, "other-name").await;
    // No config.xml at all, and a body that is not a tar.
    let a = TestAgent::start(None).await;
    refused(
        &a,
        "h-nocfg",
        tar_gz(&[("vmlinuz", b"k")]),
        400,
        "config.xml",
    )
    .await;
    refused(
        &a,
        "h-notar",
        b"this is not an archive at all, not even close................".repeat(20),
        400,
        "archive",
    )
    .await;
    // Bad status documents.
    assert_eq!(
        a.put("/domain/h-cfg", test_archive("h-cfg"))
            .await
            .status()
            .as_u16(),
        201
    );
    for (body, needle) in [
        ("<status><state>flying</state></status>", "unknown state"),
        ("<status>", "malformed XML"),
        ("<nope/>", "nope"),
    ] {
        let r = a.put("/domain/h-cfg/status.xml", body).await;
        assert_eq!(r.status().as_u16(), 400);
        let t = r.text().await.expect("text");
        assert!(t.contains(needle), "{t}");
    }
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let a = TestAgent::start(None).await;
    let big = vec![7u8; 2 << 20];
    let r = a.put("/domain/h-big", big.clone()).await;
    assert_eq!(r.status().as_u16(), 413);
    assert!(!libvirt_has("h-big"));
    assert_eq!(
        a.put("/domain/h-ok", test_archive("h-ok"))
            .await
            .status()
            .as_u16(),
        201
    );
    assert_eq!(
        a.put("/domain/h-ok/status.xml", vec![b' '; 128 << 10])
            .await
            .status()
            .as_u16(),
        413
    );
    assert_eq!(
        a.put("/domain/h-ok/vmlinuz", big).await.status().as_u16(),
        413
    );
}

#[tokio::test]
async fn only_referenced_files_are_served_or_accepted() {
    let a = TestAgent::start(None).await;
    assert_eq!(
        a.put("/domain/h-files", test_archive("h-files"))
            .await
            .status()
            .as_u16(),
        201
    );
    // Not referenced by config.xml: 404 for GET and PUT; the agent's own record is not a file.
    assert_eq!(
        a.get("/domain/h-files/record.json").await.status().as_u16(),
        404
    );
    assert_eq!(
        a.put("/domain/h-files/evil.sh", "x")
            .await
            .status()
            .as_u16(),
        404
    );
    assert!(!a
        .dir
        .path()
        .join("state/domains/h-files/files/evil.sh")
        .exists());
    // Encoded traversal in the file part.
    let r = a.get("/domain/h-files/..%2F..%2F..%2Fagent-id").await;
    assert!(matches!(r.status().as_u16(), 403 | 404), "{}", r.status());
    // Unknown domain.
    assert_eq!(
        a.get("/domain/nope/status.xml").await.status().as_u16(),
        404
    );
    assert_eq!(
        a.get("/domain/nope/config.xml").await.status().as_u16(),
        404
    );
    assert_eq!(a.delete("/domain/nope").await.status().as_u16(), 404);
    assert_eq!(
        a.get("/domain/..%2Fx/status.xml").await.status().as_u16(),
        400
    );
}
