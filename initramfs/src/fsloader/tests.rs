//! Mount logic through the recording syscall implementation.

use super::*;
use crate::rootspec::RootSpec;
use crate::syscall::RecordingSyscall;
use crate::union::{assemble, validate, UnionError};

/// The first 4 KiB of an ext4 filesystem labelled `label` (magic, label, a fixed UUID).
pub(crate) fn ext4_image(label: &str) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    b[1024 + 56] = 0x53;
    b[1024 + 57] = 0xEF;
    b[1024 + 120..1024 + 120 + label.len()].copy_from_slice(label.as_bytes());
    for (i, x) in b[1024 + 104..1024 + 120].iter_mut().enumerate() {
        *x = i as u8;
    }
    b
}

fn squashfs_image() -> Vec<u8> {
    let mut b = b"hsqs".to_vec();
    b.resize(4096, 0);
    b
}

fn run(
    base: &Path,
    root: &str,
) -> (
    Result<crate::union::Assembled, UnionError>,
    Vec<String>,
    Vec<String>,
) {
    let sys = RecordingSyscall::new(Some(base));
    let mut ctx = MountCtx::new(&sys, base, Duration::from_millis(50));
    ctx.client_ip = Some("10.0.2.15".parse().unwrap());
    let spec = RootSpec::parse(root).unwrap();
    let r = assemble(&mut ctx, &spec, &base.join("rootfs"));
    let log = ctx.log.clone();
    (r, sys.calls(), log)
}

#[test]
fn stateless_clone_nfs_layer_tmpfs() {
    let t = tempfile::tempdir().unwrap();
    let layer = t.path().join("napalm/layers/clone01/etc");
    std::fs::create_dir_all(&layer).unwrap();
    std::fs::write(layer.join("hostname"), "clone01\n").unwrap();
    std::fs::write(layer.join(".wh.secret"), "").unwrap();
    let (r, calls, _) = run(t.path(), "nfs:10.0.2.100::ro;layer:clone01;tmpfs:rw");
    let a = r.unwrap();
    assert_eq!(
        calls,
        vec![
            "mkdir /mnt/unions",
            "mount tmpfs /mnt/unions tmpfs [mode=0755]",
            "mkdir /mnt/unions/0-nfs",
            "mount 10.0.2.100:/ /mnt/unions/0-nfs nfs4 ro [vers=4.1,addr=10.0.2.100,clientaddr=10.0.2.15,proto=tcp]",
            "mkdir /mnt/unions/1-layer",
            "mount tmpfs /mnt/unions/1-layer tmpfs [mode=0755]",
            "mknod /mnt/unions/1-layer/etc/secret c 0 0 600",
            "mkdir /mnt/unions/2-tmpfs",
            "mount tmpfs /mnt/unions/2-tmpfs tmpfs [mode=0755]",
            "mkdir /mnt/unions/2-tmpfs/upper",
            "mkdir /mnt/unions/2-tmpfs/work",
            "mkdir /rootfs",
            // Rightmost wins: the layer comes first in lowerdir.
            "mount overlay /rootfs overlay [lowerdir=/mnt/unions/1-layer:/mnt/unions/0-nfs,upperdir=/mnt/unions/2-tmpfs/upper,workdir=/mnt/unions/2-tmpfs/work]",
            "mkdir /rootfs/.unions",
            "move /mnt/unions /rootfs/.unions",
        ]
    );
    assert!(a.writable);
    assert_eq!(a.participants.len(), 3);
    assert_eq!(a.participants[1].1, "/.unions/1-layer");
    assert_eq!(
        std::fs::read_to_string(t.path().join("mnt/unions/1-layer/etc/hostname")).unwrap(),
        "clone01\n"
    );
}

#[test]
fn nfs_upper_is_refused_before_mounting() {
    let t = tempfile::tempdir().unwrap();
    // Thesis 3.2.5's stateful example cannot work with overlayfs.
    let (r, calls, _) = run(
        t.path(),
        "nfs:10.0.0.1::ro;nfs:10.0.0.1:/var/state/systems/clone01:rw",
    );
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("nfs:10.0.0.1:/var/state/systems/clone01:rw cannot be the rw upper layer"),
        "{msg}"
    );
    assert!(
        msg.contains("block device") && msg.contains("loop+nfs"),
        "{msg}"
    );
    assert!(calls.is_empty(), "{calls:?}");
}

#[test]
fn unknown_type_names_position_and_known_types() {
    let spec = RootSpec::parse("tmpfs:rw;lvm2+md:/dev/vg/volume:/dev/md0,/dev/md1").unwrap();
    let msg = validate(&spec).unwrap_err().to_string();
    assert!(
        msg.contains("\"lvm2+md\"") && msg.contains("position 9") && msg.contains("loop+nfs"),
        "{msg}"
    );
}

#[test]
fn read_only_root_from_two_block_devices_by_label() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("sys/class/block/vda")).unwrap();
    std::fs::create_dir_all(t.path().join("sys/class/block/vdb")).unwrap();
    std::fs::create_dir_all(t.path().join("dev")).unwrap();
    std::fs::write(t.path().join("dev/vda"), ext4_image("base")).unwrap();
    std::fs::write(t.path().join("dev/vdb"), squashfs_image()).unwrap();
    let (r, calls, _) = run(t.path(), "LABEL=base;/dev/vdb");
    let a = r.unwrap();
    assert!(!a.writable);
    assert!(
        calls.contains(&"mount /dev/vda /mnt/unions/0-block ext4 ro []".to_string()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"mount /dev/vdb /mnt/unions/1-block squashfs ro []".to_string()),
        "{calls:?}"
    );
    // No upper: a tiny tmpfs provides /.unions and the overlay is read-only.
    assert!(
        calls.contains(&"mkdir /mnt/unions/2-unions-mountpoint/.unions".to_string()),
        "{calls:?}"
    );
    assert!(calls.contains(
        &"mount overlay /rootfs overlay ro [lowerdir=/mnt/unions/2-unions-mountpoint:/mnt/unions/1-block:/mnt/unions/0-block]".to_string()
    ));
    assert_eq!(calls.last().unwrap(), "move /mnt/unions /rootfs/.unions");
    // UUID= finds the same ext4 device.
    let (r, calls, _) = run(t.path(), "UUID=00010203-0405-0607-0809-0A0B0C0D0E0F:rw");
    assert!(r.unwrap().writable);
    assert!(
        calls.contains(&"mount /dev/vda /mnt/unions/0-block ext4 []".to_string()),
        "{calls:?}"
    );
    // A missing label waits for the timeout, then says what it looked for.
    let (r, _, _) = run(t.path(), "LABEL=nope");
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("LABEL=nope") && msg.contains("waiting for block device"),
        "{msg}"
    );
}

#[test]
fn loop_image_found_on_earlier_layer_and_stateful_upper() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("dev")).unwrap();
    std::fs::write(t.path().join("dev/vda"), ext4_image("")).unwrap();
    // The earlier layer (a block device here) is pre-populated where it would be mounted.
    let earlier = t.path().join("mnt/unions/0-block/images");
    std::fs::create_dir_all(&earlier).unwrap();
    std::fs::write(earlier.join("base.squashfs"), squashfs_image()).unwrap();
    std::fs::write(earlier.join("state.img"), ext4_image("state")).unwrap();
    let (r, calls, _) = run(
        t.path(),
        "/dev/vda;loop:/images/base.squashfs;loop:/images/state.img:rw",
    );
    r.unwrap();
    let want = [
        "loop_attach /mnt/unions/0-block/images/base.squashfs -> /dev/loop0 ro",
        "mount /dev/loop0 /mnt/unions/1-loop squashfs ro []",
        "loop_attach /mnt/unions/0-block/images/state.img -> /dev/loop1",
        "mount /dev/loop1 /mnt/unions/2-loop ext4 []",
        "mount overlay /rootfs overlay [lowerdir=/mnt/unions/1-loop:/mnt/unions/0-block,upperdir=/mnt/unions/2-loop/upper,workdir=/mnt/unions/2-loop/work]",
    ];
    for w in want {
        assert!(calls.contains(&w.to_string()), "missing {w}\n{calls:#?}");
    }
    let (r, _, _) = run(t.path(), "/dev/vda;loop:/images/missing.squashfs");
    assert!(r
        .unwrap_err()
        .to_string()
        .contains("not on any earlier layer"));
}

#[test]
fn loop_nfs_directory_gives_one_layer_per_image() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("mnt/unions/0-nfs-images");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("10-base.squashfs"), squashfs_image()).unwrap();
    std::fs::write(dir.join("20-tools.squashfs"), squashfs_image()).unwrap();
    std::fs::write(dir.join("README"), "not an image").unwrap();
    let (r, calls, log) = run(t.path(), "loop+nfs:10.0.2.100:/images;tmpfs:rw");
    let a = r.unwrap();
    assert!(calls.contains(&"mount 10.0.2.100:/images /mnt/unions/0-nfs-images nfs4 ro [vers=4.1,addr=10.0.2.100,clientaddr=10.0.2.15,proto=tcp]".to_string()));
    assert!(calls.iter().any(|c| c.starts_with("mount overlay /rootfs overlay [lowerdir=/mnt/unions/2-loop:/mnt/unions/1-loop,upperdir=/mnt/unions/3-tmpfs/upper")), "{calls:#?}");
    assert_eq!(a.participants.len(), 3);
    assert!(
        log.iter()
            .any(|l| l.contains("skipping") && l.contains("README")),
        "{log:?}"
    );
}

#[test]
fn failures_name_device_and_step() {
    let t = tempfile::tempdir().unwrap();
    let sys = RecordingSyscall::new(Some(t.path()));
    sys.fail_on("mount 10.0.2.100:/srv");
    let mut ctx = MountCtx::new(&sys, t.path(), Duration::from_millis(10));
    let spec = RootSpec::parse("nfs:10.0.2.100:/srv:ro;tmpfs:rw").unwrap();
    let msg = assemble(&mut ctx, &spec, &t.path().join("rootfs"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("nfs:10.0.2.100:/srv:ro")
            && msg.contains("mount -t nfs4")
            && msg.contains("injected"),
        "{msg}"
    );
    let spec = RootSpec::parse("nfs:server.example::ro").unwrap();
    let mut ctx = MountCtx::new(&sys, t.path(), Duration::from_millis(10));
    let msg = assemble(&mut ctx, &spec, &t.path().join("rootfs"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("\"server.example\" is not an IPv4 address")
            && msg.contains("usage: nfs:<ip>"),
        "{msg}"
    );
    let spec = RootSpec::parse("layer:nope;tmpfs:rw").unwrap();
    std::fs::create_dir_all(t.path().join("napalm/layers/clone01")).unwrap();
    let mut ctx = MountCtx::new(&sys, t.path(), Duration::from_millis(10));
    let msg = assemble(&mut ctx, &spec, &t.path().join("rootfs"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("no layer \"nope\"") && msg.contains("[clone01]"),
        "{msg}"
    );
}

#[test]
fn shares_and_nfs_options() {
    let t = tempfile::tempdir().unwrap();
    let (r, calls, _) = run(t.path(), "virtiofs:rootfs:ro;9p:extra:cache=loose;nfs:10.0.2.100:/x:vers=4.2,port=2050:ro;tmpfs:size=64m:rw");
    r.unwrap();
    assert!(
        calls.contains(&"mount rootfs /mnt/unions/0-virtiofs virtiofs ro []".to_string()),
        "{calls:#?}"
    );
    assert!(calls.contains(
        &"mount extra /mnt/unions/1-9p 9p ro [trans=virtio,version=9p2000.L,cache=loose]"
            .to_string()
    ));
    assert!(calls.contains(&"mount 10.0.2.100:/x /mnt/unions/2-nfs nfs4 ro [addr=10.0.2.100,clientaddr=10.0.2.15,proto=tcp,vers=4.2,port=2050]".to_string()), "{calls:#?}");
    assert!(
        calls.contains(&"mount tmpfs /mnt/unions/3-tmpfs tmpfs [mode=0755,size=64m]".to_string())
    );
}

#[test]
fn every_loader_has_help_and_parameters() {
    let help = help_text();
    for name in [
        "block", "nfs", "tmpfs", "loop", "loop+nfs", "9p", "virtiofs", "layer",
    ] {
        let l = find(name).unwrap();
        assert!(
            !l.parameters().is_empty() && l.help().contains("example"),
            "{name}"
        );
        assert!(help.contains(&format!("== {name} (")), "{name}");
    }
    assert!(find("lvm2+md").is_none());
}

#[test]
fn detects_filesystems_by_magic() {
    assert_eq!(detect_fs(&squashfs_image()), Some("squashfs"));
    assert_eq!(detect_fs(&ext4_image("x")), Some("ext4"));
    let mut erofs = vec![0u8; 4096];
    erofs[1024..1028].copy_from_slice(&0xE0F5E1E2u32.to_le_bytes());
    assert_eq!(detect_fs(&erofs), Some("erofs"));
    assert_eq!(detect_fs(&[0u8; 100]), None);
    assert_eq!(
        fs_label_uuid(&ext4_image("state")).0.as_deref(),
        Some("state")
    );
}

#[test]
fn composed_loop_over_block() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("dev")).unwrap();
    std::fs::write(t.path().join("dev/vdb"), ext4_image("images")).unwrap();
    let on_disk = t.path().join("mnt/unions/0-block/images");
    std::fs::create_dir_all(&on_disk).unwrap();
    std::fs::write(on_disk.join("base.squashfs"), squashfs_image()).unwrap();
    let (r, calls, _) = run(
        t.path(),
        "loop+block:/dev/vdb:/images/base.squashfs;tmpfs:rw",
    );
    r.unwrap();
    for w in [
        "mount /dev/vdb /mnt/unions/0-block ext4 ro []",
        "loop_attach /mnt/unions/0-block/images/base.squashfs -> /dev/loop0 ro",
        "mount /dev/loop0 /mnt/unions/1-loop squashfs ro []",
    ] {
        assert!(calls.contains(&w.to_string()), "missing {w}\n{calls:#?}");
    }
    assert!(
        calls
            .iter()
            .any(|c| c.contains("lowerdir=/mnt/unions/1-loop,upperdir")),
        "{calls:#?}"
    );
    let spec = RootSpec::parse("loop+block:/dev/vdb:/i.sqfs;9p:x").unwrap();
    let m = modules_for(&spec);
    for x in ["overlay", "loop", "squashfs", "virtio_blk", "9pnet_virtio"] {
        assert!(m.contains(&x), "{x} missing from {m:?}");
    }
    let (r, _, _) = run(t.path(), "loop+block:/images/base.squashfs");
    assert!(r
        .unwrap_err()
        .to_string()
        .contains("expected the inner device's parameters"));
}

#[test]
fn portable_whiteouts_on_an_upper_nfs_layer_are_converted_on_tmpfs() {
    let t = tempfile::tempdir().unwrap();
    // Where the clone's NFS layer will be mounted: pre-populated, as the mount is recorded only.
    let clone = t.path().join("mnt/unions/1-nfs/etc");
    std::fs::create_dir_all(&clone).unwrap();
    std::fs::write(clone.join("hostname"), "clone01\n").unwrap();
    std::fs::write(clone.join(".wh.secret"), "").unwrap();
    let (r, calls, log) = run(
        t.path(),
        "nfs:10.0.0.1::ro;nfs:10.0.0.1:/var/state/systems/clone01:ro;tmpfs:rw",
    );
    r.unwrap();
    for w in [
        "mount 10.0.0.1:/var/state/systems/clone01 /mnt/unions/1-nfs nfs4 ro [vers=4.1,addr=10.0.0.1,clientaddr=10.0.2.15,proto=tcp]",
        "mount tmpfs /mnt/unions/2-converted tmpfs [mode=0755]",
        "mknod /mnt/unions/2-converted/etc/secret c 0 0 600",
    ] {
        assert!(calls.contains(&w.to_string()), "missing {w}\n{calls:#?}");
    }
    // The converted copy replaces the NFS layer; the bottom NFS root is never scanned.
    assert!(
        calls.iter().any(|c| c.contains(
            "lowerdir=/mnt/unions/2-converted:/mnt/unions/0-nfs,upperdir=/mnt/unions/3-tmpfs/upper"
        )),
        "{calls:#?}"
    );
    assert!(
        log.iter().any(|l| l.contains("converted 1 whiteouts")),
        "{log:?}"
    );
}
