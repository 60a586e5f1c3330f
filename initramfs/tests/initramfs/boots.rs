//! The boot cases of issue #4: (a) tmpfs root from an appended layer, (b) NFS root +
//! layer + tmpfs upper + unpack=, (c) stateful upper on a virtio-blk ext4 image across two
//! boots (c2: on an ext4 loop image over NFS), (d) loop+nfs with squashfs/erofs images (and
//! a static ip=), (e) malformed root=, refused NFS upper, napalm.help and
//! napalm.onfail=shell, (f) composed loop+block, (g) the thesis 3.2.6 stateless example
//! verbatim, the clone layer on NFS with portable whiteouts, (h) a virtiofs root.

use super::support::*;
use std::path::Path;
use std::process::Command;

fn assert_has(out: &str, what: &str) {
    assert!(out.contains(what), "console lacks {what:?}:\n{out}");
}

fn assert_clean(out: &str) {
    assert!(!out.contains("Kernel panic"), "kernel panic:\n{out}");
    assert!(
        !out.contains("napalm-init: FAILED"),
        "napalm-init failed:\n{out}"
    );
    assert_has(out, "NAPALM-GUEST-DONE");
}

#[test]
fn a_tmpfs_root_from_appended_layer() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let layer = t.path().join("layer");
    busybox_root(
        &layer,
        "echo \"NAPALM-A $($bb cat /proc/cmdline | $bb grep -o 'root=[^ ]*')\"\n\
         echo \"NAPALM-A-ARGS=$*\"\n\
         echo hello > /tmp/x && echo NAPALM-A-WRITABLE\n\
         $bb ls /.unions | $bb tr '\\n' ' '; echo\n\
         $bb grep -q '\"exec_init\"' /run/napalm/boot.json && echo NAPALM-A-BOOTJSON\n\
         $bb grep -q 'union root assembled' /run/napalm/boot.json && echo NAPALM-A-LOG-KEPT",
    );
    let (img, size) = initramfs(t.path(), &[("base", &layer)]);
    // `single` is a word the kernel hands to /init; napalm-init passes it on to the real init.
    // napalm.quiet=1: the log stays in boot.json, only the summary line on the console.
    let out = Qemu::run(
        &img,
        "root=layer:base;tmpfs:rw single napalm.quiet=1",
        None,
        None,
    );
    assert_clean(&out);
    assert_has(&out, "NAPALM-A root=layer:base;tmpfs:rw");
    assert_has(&out, "NAPALM-A-WRITABLE");
    assert_has(&out, "NAPALM-A-ARGS=single");
    assert_has(&out, "0-layer 1-tmpfs");
    assert_has(&out, "NAPALM-A-BOOTJSON");
    assert_has(&out, "NAPALM-A-LOG-KEPT");
    assert_has(&out, "initramfs took");
    assert!(
        !out.contains("union root assembled"),
        "a quiet napalm-init printed its log:\n{out}"
    );
    eprintln!(
        "(a) image {size} bytes, initramfs phase {:?} s",
        initramfs_seconds(&out)
    );
}

#[test]
fn b_nfs_root_with_layer_and_tmpfs_upper() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let export = t.path().join("export");
    busybox_root(
        &export,
        "$bb hostname -F /etc/hostname; echo \"NAPALM-HOSTNAME=$($bb hostname)\"\n\
         [ -e /etc/secret ] && echo NAPALM-SECRET-VISIBLE || echo NAPALM-SECRET-HIDDEN\n\
         [ -e /etc/ssh/server_key ] && echo NAPALM-OPAQUE-BROKEN || echo NAPALM-OPAQUE-OK\n\
         echo from-clone > /etc/written-by-clone\n\
         [ -e /.unions/2-tmpfs/upper/etc/written-by-clone ] && echo NAPALM-WRITE-IN-UPPER\n\
         $bb grep -q '\"method\": \"dhcp\"' /run/napalm/boot.json && echo NAPALM-DHCP\n\
         echo \"NAPALM-TAINTED=$($bb cat /proc/sys/kernel/tainted)\"\n\
         [ -e /.unions/2-tmpfs/upper/opt/pkg1/README ] && echo \"NAPALM-UNPACKED=$($bb cat /opt/pkg1/README)\"",
    );
    // Thesis 3.2.6: packages unpacked onto the tmpfs layer at boot.
    let pkgs = t.path().join("pkgsrc");
    std::fs::create_dir_all(pkgs.join("opt/pkg1")).unwrap();
    std::fs::write(pkgs.join("opt/pkg1/README"), "pkg1\n").unwrap();
    std::fs::create_dir_all(export.join("var/tmpfs-overlay")).unwrap();
    sh(Command::new("tar")
        .arg("-czf")
        .arg(export.join("var/tmpfs-overlay/pkg1.tar.gz"))
        .arg("-C")
        .arg(&pkgs)
        .arg("opt"));
    std::fs::write(export.join("etc/hostname"), "server\n").unwrap();
    std::fs::write(export.join("etc/secret"), "server only\n").unwrap();
    std::fs::create_dir_all(export.join("etc/ssh")).unwrap();
    std::fs::write(export.join("etc/ssh/server_key"), "server key\n").unwrap();
    // The clone's differentiation layer, in the portable whiteout form.
    let layer = t.path().join("clone01");
    std::fs::create_dir_all(layer.join("etc/ssh")).unwrap();
    std::fs::write(layer.join("etc/hostname"), "clone01\n").unwrap();
    std::fs::write(layer.join("etc/.wh.secret"), "").unwrap();
    std::fs::write(layer.join("etc/ssh/.wh..wh..opq"), "").unwrap();
    std::fs::write(layer.join("etc/ssh/clone_key"), "clone key\n").unwrap();
    let nfs = Ganesha::start(&export);
    let (img, size) = initramfs(t.path(), &[("clone01", &layer)]);
    let out = Qemu::run(
        &img,
        "root=nfs:10.0.2.100::ro;layer:clone01;tmpfs:rw unpack=/var/tmpfs-overlay",
        Some(nfs.port),
        None,
    );
    assert_clean(&out);
    assert_has(&out, "NAPALM-HOSTNAME=clone01");
    assert_has(&out, "NAPALM-SECRET-HIDDEN");
    assert_has(&out, "NAPALM-OPAQUE-OK");
    assert_has(&out, "NAPALM-WRITE-IN-UPPER");
    assert_has(&out, "NAPALM-DHCP");
    // The NFS client's modules were loaded without their signatures (cut off by the image
    // builder): the kernel marks itself tainted E (unsigned module, 1 << 13).
    let tainted: u64 = out
        .split("NAPALM-TAINTED=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no taint line:\n{out}"));
    assert_ne!(tainted & (1 << 13), 0, "modules loaded verified: {tainted}");
    assert_has(&out, "NAPALM-UNPACKED=pkg1");
    assert!(
        !export.join("etc/written-by-clone").exists(),
        "the write reached the server"
    );
    assert!(export.join("etc/secret").exists());
    eprintln!(
        "(b) image {size} bytes, initramfs phase {:?} s",
        initramfs_seconds(&out)
    );
}

#[test]
fn c_stateful_upper_on_virtio_blk_survives_reboot() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    busybox_root(
        &base,
        "if [ -e /var/state ]; then echo \"NAPALM-STATE=$($bb cat /var/state)\"; else echo boot1-wrote-this > /var/state; echo NAPALM-STATE-WRITTEN; fi",
    );
    let disk = t.path().join("state.img");
    sh(Command::new("truncate").args(["-s", "32M"]).arg(&disk));
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "state"])
        .arg(&disk));
    let (img, _) = initramfs(t.path(), &[("base", &base)]);
    let out1 = Qemu::run(&img, "root=layer:base;LABEL=state:rw", None, Some(&disk));
    assert_clean(&out1);
    assert_has(&out1, "NAPALM-STATE-WRITTEN");
    let out2 = Qemu::run(&img, "root=layer:base;/dev/vda:rw", None, Some(&disk));
    assert_clean(&out2);
    assert_has(&out2, "NAPALM-STATE=boot1-wrote-this");
}

fn images(dir: &Path, t: &Path) {
    let base = t.join("sqroot");
    busybox_root(
        &base,
        "[ -e /etc/from-erofs ] && echo \"NAPALM-D-EROFS=$($bb cat /etc/from-erofs)\"\n\
         $bb grep -q ' squashfs ' /proc/mounts && echo NAPALM-D-SQUASHFS-MOUNTED\n\
         $bb grep -q ' erofs ' /proc/mounts && echo NAPALM-D-EROFS-MOUNTED\n\
         echo \"NAPALM-D-HOST=$($bb hostname)\"",
    );
    std::fs::create_dir_all(dir).unwrap();
    sh(Command::new("mksquashfs")
        .arg(&base)
        .arg(dir.join("10-base.squashfs"))
        .args(["-quiet", "-noappend", "-comp", "gzip"]));
    let extra = t.join("erofs-src");
    std::fs::create_dir_all(extra.join("etc")).unwrap();
    std::fs::write(extra.join("etc/from-erofs"), "yes\n").unwrap();
    sh(Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(dir.join("20-extra.erofs"))
        .arg(&extra));
}

#[test]
fn d_loop_nfs_squashfs_and_erofs_images() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let export = t.path().join("export");
    images(&export.join("images"), t.path());
    let nfs = Ganesha::start(&export);
    let (img, _) = initramfs(t.path(), &[]);
    // A directory of images: each one a layer, in name order (thesis listing II.2, try 1).
    let out = Qemu::run(
        &img,
        "root=loop+nfs:10.0.2.100:/images;tmpfs:rw",
        Some(nfs.port),
        None,
    );
    assert_clean(&out);
    assert_has(&out, "NAPALM-D-EROFS=yes");
    assert_has(&out, "NAPALM-D-SQUASHFS-MOUNTED");
    assert_has(&out, "NAPALM-D-EROFS-MOUNTED");
    drop(nfs);
    // One image file (try 2): only the squashfs.
    let nfs = Ganesha::start(&export);
    let out = Qemu::run(
        &img,
        "root=loop+nfs:10.0.2.100:/images/10-base.squashfs;tmpfs:rw ip=10.0.2.16::10.0.2.2:255.255.255.0:clone02:eth0:off",
        Some(nfs.port),
        None,
    );
    assert_clean(&out);
    assert!(!out.contains("NAPALM-D-EROFS"), "{out}");
    assert_has(&out, "network: eth0 10.0.2.16 (static");
    assert_has(&out, "NAPALM-D-HOST=clone02");
    assert_has(&out, "NAPALM-D-SQUASHFS-MOUNTED");
}

#[test]
fn e_malformed_root_is_a_clear_error_not_a_panic() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let (img, _) = initramfs(t.path(), &[]);
    let out = Qemu::run(&img, "root=nfs:10.0.2.100::ro;;tmpfs:rw", None, None);
    assert!(!out.contains("Kernel panic"), "{out}");
    assert_has(&out, "napalm-init: FAILED at step 'cmdline'");
    assert_has(
        &out,
        "empty device (two `;` in a row or a leading `;`) at position 19",
    );
    assert_has(&out, "napalm-init: powering off now");
    // Thesis 3.2.5's stateful example: an NFS upper is refused with the way out.
    let out = Qemu::run(
        &img,
        "root=nfs:10.0.0.1::ro;nfs:10.0.0.1:/var/state/systems/clone01:rw napalm.help",
        None,
        None,
    );
    assert!(!out.contains("Kernel panic"), "{out}");
    assert_has(&out, "FAILED at step 'root'");
    assert_has(&out, "cannot be the rw upper layer");
    // napalm.help printed every fsloader's help first (annex II --help/--parameters).
    for name in [
        "block", "nfs", "tmpfs", "loop", "loop+nfs", "9p", "virtiofs", "layer",
    ] {
        assert_has(&out, &format!("== {name} ("));
    }
    assert_has(&out, "loop+nfs");
    // The image's modules carry no signatures: a kernel that enforces them refuses the
    // first, and napalm-init says how to build an image it takes.
    let out = Qemu::run(
        &img,
        "root=nfs:10.0.2.100::ro;tmpfs:rw module.sig_enforce=1",
        None,
        None,
    );
    assert!(!out.contains("Kernel panic"), "{out}");
    assert_has(&out, "FAILED at step 'modules'");
    assert_has(&out, "--module-signatures keep");
}

#[test]
fn e_onfail_shell_gives_a_rescue_shell() {
    use napalm_initramfs::cpio::{Archive, Entry};
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    // busybox arrives as an extra segment, merged into / by the kernel like a layer.
    let mut seg = Archive::new();
    seg.add(
        "bin/busybox",
        Entry::File(0o755, std::fs::read("/bin/busybox").unwrap()),
    );
    seg.add("bin/sh", Entry::Symlink("busybox".into()));
    let img = t.path().join("rescue.img");
    // Compressed, as a clone's layer segment is (after a compressed base the kernel
    // takes only compressed segments).
    let seg = napalm_initramfs::image::compress(
        &seg.write(0),
        napalm_initramfs::image::Compression::Gzip,
    )
    .unwrap();
    std::fs::write(&img, [base_image(), &seg[..]].concat()).unwrap();
    let mut q = Qemu::boot(&img, "root=tmpfs:rw;;bad napalm.onfail=shell", None, None);
    assert!(
        q.wait_for("starting /bin/sh", std::time::Duration::from_secs(120)),
        "{}",
        q.output
    );
    q.send("echo SHELL-$((6*7))\n");
    assert!(
        q.wait_for("SHELL-42", std::time::Duration::from_secs(30)),
        "{}",
        q.output
    );
    q.send("/bin/busybox poweroff -f\n");
    assert!(
        q.wait_exit(std::time::Duration::from_secs(30)),
        "{}",
        q.output
    );
    assert_has(&q.output, "FAILED at step 'cmdline'");
    assert!(!q.output.contains("Kernel panic"), "{}", q.output);
}

#[test]
fn f_composed_loop_over_block_device() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    busybox_root(
        &root,
        "$bb grep -q ' squashfs ' /proc/mounts && echo NAPALM-F-SQUASHFS-ON-DISK",
    );
    let disk_src = t.path().join("disk/images");
    std::fs::create_dir_all(&disk_src).unwrap();
    sh(Command::new("mksquashfs")
        .arg(&root)
        .arg(disk_src.join("base.squashfs"))
        .args(["-quiet", "-noappend"]));
    let disk = t.path().join("images.ext4");
    sh(Command::new("truncate").args(["-s", "32M"]).arg(&disk));
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "imgs", "-d"])
        .arg(t.path().join("disk"))
        .arg(&disk));
    let (img, _) = initramfs(t.path(), &[]);
    let out = Qemu::run(
        &img,
        "root=loop+block:LABEL=imgs:/images/base.squashfs;tmpfs:rw",
        None,
        Some(&disk),
    );
    assert_clean(&out);
    assert_has(&out, "NAPALM-F-SQUASHFS-ON-DISK");
}

#[test]
fn g_thesis_stateless_example_with_clone_layer_on_nfs() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let export = t.path().join("export");
    busybox_root(
        &export,
        "echo \"NAPALM-G-HOSTNAME=$($bb cat /etc/hostname)\"\n\
         [ -e /etc/secret ] && echo NAPALM-G-SECRET-VISIBLE || echo NAPALM-G-SECRET-HIDDEN\n\
         [ -e /var/state/systems/clone01/etc/.wh.secret ] && echo NAPALM-G-LAYER-ON-SERVER",
    );
    std::fs::write(export.join("etc/hostname"), "server\n").unwrap();
    std::fs::write(export.join("etc/secret"), "server only\n").unwrap();
    // Thesis 3.2.6 verbatim: the clone's layer lives on the server, in portable form.
    let layer = export.join("var/state/systems/clone01/etc");
    std::fs::create_dir_all(&layer).unwrap();
    std::fs::write(layer.join("hostname"), "clone01\n").unwrap();
    std::fs::write(layer.join(".wh.secret"), "").unwrap();
    let nfs = Ganesha::start(&export);
    let (img, _) = initramfs(t.path(), &[]);
    let out = Qemu::run(
        &img,
        "root=nfs:10.0.2.100::ro;nfs:10.0.2.100:/var/state/systems/clone01:ro;tmpfs:rw",
        Some(nfs.port),
        None,
    );
    assert_clean(&out);
    assert_has(&out, "converted 1 whiteouts");
    assert_has(&out, "NAPALM-G-HOSTNAME=clone01");
    assert_has(&out, "NAPALM-G-SECRET-HIDDEN");
    assert_has(&out, "NAPALM-G-LAYER-ON-SERVER");
}

#[test]
fn c2_stateful_upper_on_loop_image_over_nfs() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let export = t.path().join("export");
    busybox_root(
        &export,
        "if [ -e /var/state ]; then echo \"NAPALM-C2-STATE=$($bb cat /var/state)\"; else echo boot1 > /var/state; echo NAPALM-C2-WRITTEN; fi",
    );
    // The upper the NFS refusal message points to: an ext4 image kept on the server.
    std::fs::create_dir_all(export.join("state")).unwrap();
    let state = export.join("state/clone01.img");
    sh(Command::new("truncate").args(["-s", "16M"]).arg(&state));
    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&state));
    let (img, _) = initramfs(t.path(), &[]);
    let root = "root=nfs:10.0.2.100::ro;loop+nfs:10.0.2.100:/state/clone01.img:rw";
    let nfs = Ganesha::start(&export);
    let out1 = Qemu::run(&img, root, Some(nfs.port), None);
    assert_clean(&out1);
    assert_has(&out1, "NAPALM-C2-WRITTEN");
    assert!(
        !export.join("var/state").exists(),
        "the write went to the server's root"
    );
    drop(nfs);
    let nfs = Ganesha::start(&export);
    let out2 = Qemu::run(&img, root, Some(nfs.port), None);
    assert_clean(&out2);
    assert_has(&out2, "NAPALM-C2-STATE=boot1");
}

#[test]
fn h_virtiofs_root_with_tmpfs_upper() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let shared = t.path().join("shared");
    busybox_root(
        &shared,
        "$bb grep -q '^rootfs /.unions/0-virtiofs virtiofs' /proc/mounts && echo NAPALM-H-VIRTIOFS\n\
         echo x > /written && [ -e /.unions/1-tmpfs/upper/written ] && echo NAPALM-H-UPPER",
    );
    let vfs = Virtiofsd::start(&shared);
    let (img, _) = initramfs(t.path(), &[]);
    let mut q = Qemu::boot_full(
        &img,
        "console=ttyS0 quiet napalm.timeout=20 root=virtiofs:rootfs:ro;tmpfs:rw",
        None,
        None,
        &vfs.qemu_args("rootfs"),
    );
    assert!(
        q.wait_exit(std::time::Duration::from_secs(120)),
        "{}",
        q.output
    );
    assert_clean(&q.output);
    assert_has(&q.output, "NAPALM-H-VIRTIOFS");
    assert_has(&q.output, "NAPALM-H-UPPER");
    assert!(!shared.join("written").exists());
}
