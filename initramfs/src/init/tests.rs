//! A whole boot against [`RecordingSyscall`]: the sequence of calls, no root needed.

use super::*;
use crate::syscall::{RecordingSyscall, RECORDED_RELEASE};

/// A boot root with a command line, modules.dep and an init in the (unmounted) new root.
pub(super) fn boot_root(cmdline: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let base = d.path();
    std::fs::write(base.join("cmdline"), cmdline).unwrap();
    let modules = base.join("lib/modules").join(RECORDED_RELEASE);
    std::fs::create_dir_all(&modules).unwrap();
    std::fs::write(
        modules.join("modules.dep"),
        "kernel/fs/overlayfs/overlay.ko:\nkernel/drivers/net/virtio_net.ko: kernel/net/core/failover.ko\nkernel/net/core/failover.ko:\n",
    )
    .unwrap();
    for dir in ["sbin", "dev", "proc", "sys", "run"] {
        std::fs::create_dir_all(base.join("rootfs").join(dir)).unwrap();
    }
    std::fs::write(base.join("rootfs/sbin/init"), "#!/bin/sh\n").unwrap();
    d
}

/// Where call `c` is in `calls` (the test fails when it is not there).
pub(super) fn position(calls: &[String], c: &str) -> usize {
    calls
        .iter()
        .position(|x| x == c)
        .unwrap_or_else(|| panic!("{c} not in {calls:?}"))
}

#[test]
fn a_whole_boot_calls_the_machine_in_order() {
    let d = boot_root(
        "console=ttyS0 root=nfs:10.0.2.100::ro;tmpfs:rw ip=10.0.2.15::10.0.2.2:255.255.255.0:clone01:eth0:off nameserver=10.0.2.3\n",
    );
    let sys = RecordingSyscall::new(Some(d.path()));
    let f = Boot::new(&sys, d.path()).run(&d.path().join("cmdline"), &["single".into()]);
    assert_eq!(f.step, "exec init", "{f:?}");
    assert_eq!(
        sys.calls(),
        [
            // early mounts
            "mkdir /proc",
            "mount proc /proc proc []",
            "mkdir /sys",
            "mount sysfs /sys sysfs []",
            "mkdir /dev",
            "mount devtmpfs /dev devtmpfs [mode=0755]",
            "mkdir /run",
            "mount tmpfs /run tmpfs [mode=0755]",
            // modules
            "uname",
            "finit_module /lib/modules/6.1.0-test/kernel/fs/overlayfs/overlay.ko []",
            "finit_module /lib/modules/6.1.0-test/kernel/net/core/failover.ko []",
            "finit_module /lib/modules/6.1.0-test/kernel/drivers/net/virtio_net.ko []",
            // network
            "network ip=10.0.2.15::10.0.2.2:255.255.255.0:clone01:eth0:off",
            "sethostname clone01",
            "mkdir /run/napalm",
            "write /run/napalm/resolv.conf",
            // union root
            "mkdir /mnt/unions",
            "mount tmpfs /mnt/unions tmpfs [mode=0755]",
            "mkdir /mnt/unions/0-nfs",
            "mount 10.0.2.100:/ /mnt/unions/0-nfs nfs4 ro [vers=4.1,addr=10.0.2.100,clientaddr=10.0.2.15,proto=tcp]",
            "mkdir /mnt/unions/1-tmpfs",
            "mount tmpfs /mnt/unions/1-tmpfs tmpfs [mode=0755]",
            "mkdir /mnt/unions/1-tmpfs/upper",
            "mkdir /mnt/unions/1-tmpfs/work",
            "mkdir /rootfs",
            "mount overlay /rootfs overlay [lowerdir=/mnt/unions/0-nfs,upperdir=/mnt/unions/1-tmpfs/upper,workdir=/mnt/unions/1-tmpfs/work]",
            "mkdir /rootfs/.unions",
            "move /mnt/unions /rootfs/.unions",
            // switch_root
            "move /dev /rootfs/dev",
            "move /proc /rootfs/proc",
            "move /sys /rootfs/sys",
            "move /run /rootfs/run",
            "empty_initramfs / keep /rootfs",
            "chdir /rootfs",
            "move . /",
            "chroot .",
            "chdir /",
            // report, init
            "mkdir /run/napalm",
            "write /run/napalm/boot.json",
            "exec /sbin/init single",
        ]
    );
}

#[test]
fn nfs_without_ip_gets_dhcp_and_a_failed_mount_names_its_step() {
    let d = boot_root("root=nfs:10.0.2.100:/srv:ro;tmpfs napalm.onfail=reboot");
    let sys = RecordingSyscall::new(Some(d.path()));
    sys.fail_on("mount 10.0.2.100:/srv");
    let f = Boot::new(&sys, d.path()).run(&d.path().join("cmdline"), &[]);
    assert_eq!((f.step, f.onfail), ("root", OnFail::Reboot), "{f:?}");
    assert!(f.error.contains("nfs:10.0.2.100:/srv:ro"), "{}", f.error);
    let calls = sys.calls();
    assert!(calls.contains(&"network ip=dhcp".to_owned()), "{calls:?}");
    assert!(
        !calls.iter().any(|c| c.starts_with("sethostname")),
        "{calls:?}"
    );
    assert!(!calls.iter().any(|c| c.starts_with("exec")), "{calls:?}");
}

#[test]
fn a_bad_command_line_stops_before_modules_with_its_onfail() {
    let d = boot_root("root=nfs:a::ro;;tmpfs napalm.onfail=shell");
    let sys = RecordingSyscall::new(Some(d.path()));
    let f = Boot::new(&sys, d.path()).run(&d.path().join("cmdline"), &[]);
    assert_eq!((f.step, f.onfail), ("cmdline", OnFail::Shell), "{f:?}");
    assert_eq!(
        sys.calls().len(),
        8,
        "only the early mounts: {:?}",
        sys.calls()
    );
}

#[test]
fn the_boot_report_keeps_the_log_a_quiet_console_did_not_print() {
    let root = RootSpec::parse("nfs:10.0.2.100::ro;tmpfs:rw").unwrap();
    let assembled = Assembled {
        overlay_options: "lowerdir=/mnt/unions/0-nfs".into(),
        participants: vec![("10.0.2.100:/ (ro)".into(), "/.unions/0-nfs".into())],
        writable: true,
    };
    let mut tm = Timings::new(1.0);
    let line = tm.record("modules: 17 loaded", 1.0, 1.5);
    let log = vec![
        "napalm-init: starting at 1.000s after kernel start".into(),
        line,
    ];
    let json = report::boot_json(&root, &assembled, None, &tm, &log, None);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["log"][1],
        "napalm: [   1.500] modules: 17 loaded (0.500s)"
    );
    assert_eq!(v["timings"]["phases"][0]["name"], "modules: 17 loaded");
    assert_eq!(v["root"], "nfs:10.0.2.100::ro;tmpfs:rw");
    assert_eq!(v["template"], false);
    assert!(v.get("restored_at_s").is_none(), "{json}");
}

#[test]
fn scratch_is_mounted_on_the_assembled_union_before_switch_root() {
    let d = boot_root("root=tmpfs:rw napalm.scratch=/scratch:tmpfs:256M,/var/tmp:tmpfs:64M:0755");
    let sys = RecordingSyscall::new(Some(d.path()));
    let f = Boot::new(&sys, d.path()).run(&d.path().join("cmdline"), &[]);
    assert_eq!(f.step, "exec init", "{f:?}");
    let calls = sys.calls();
    let at = |c: &str| position(&calls, c);
    let overlay = calls
        .iter()
        .position(|c| c.starts_with("mount overlay /rootfs"))
        .unwrap_or_else(|| panic!("{calls:?}"));
    let scratch = at("mount napalm-scratch /rootfs/scratch tmpfs [size=268435456,mode=1777]");
    let var_tmp = at("mount napalm-scratch /rootfs/var/tmp tmpfs [size=67108864,mode=755]");
    assert_eq!(calls[scratch - 1], "mkdir /rootfs/scratch");
    assert_eq!(calls[var_tmp - 1], "mkdir /rootfs/var/tmp");
    assert!(overlay < scratch && scratch < var_tmp, "{calls:?}");
    assert!(var_tmp < at("move /dev /rootfs/dev"), "{calls:?}");
}

#[test]
fn a_scratch_disk_is_found_by_its_label_mounted_and_given_its_mode() {
    let d = boot_root(
        "root=tmpfs:rw napalm.scratch=/tmp:tmpfs:64M,/scratch:disk:4G,/var/tmp:disk:1G:0755",
    );
    let base = d.path();
    std::fs::create_dir_all(base.join("dev")).unwrap();
    for (dev, label) in [
        ("vda", "other"),
        ("vdb", "napalm-scratch1"),
        ("vdc", "napalm-scratch0"),
    ] {
        std::fs::create_dir_all(base.join("sys/class/block").join(dev)).unwrap();
        std::fs::write(
            base.join("dev").join(dev),
            crate::fsloader::tests::ext4_image(label),
        )
        .unwrap();
    }
    std::fs::write(
        base.join("lib/modules")
            .join(RECORDED_RELEASE)
            .join("modules.dep"),
        "kernel/fs/overlayfs/overlay.ko:\nkernel/drivers/block/virtio_blk.ko:\n",
    )
    .unwrap();
    // What an earlier boot left on the disks (the recorded mounts leave these directories
    // as they are): a stateless root empties them, keeping lost+found.
    for dir in ["scratch", "var/tmp"] {
        let d = base.join("rootfs").join(dir);
        std::fs::create_dir_all(d.join("lost+found")).unwrap();
        std::fs::create_dir_all(d.join("old/deep")).unwrap();
        std::fs::write(d.join("old/deep/f"), "x").unwrap();
        std::fs::write(d.join("left"), "x").unwrap();
    }
    let sys = RecordingSyscall::new(Some(base));
    let f = Boot::new(&sys, base).run(&base.join("cmdline"), &[]);
    assert_eq!(f.step, "exec init", "{f:?}");
    for dir in ["scratch", "var/tmp"] {
        let left: Vec<String> = std::fs::read_dir(base.join("rootfs").join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["lost+found"], "{dir}");
    }
    let calls = sys.calls();
    let at = |c: &str| position(&calls, c);
    let blk = at("finit_module /lib/modules/6.1.0-test/kernel/drivers/block/virtio_blk.ko []");
    let tmp = at("mount napalm-scratch /rootfs/tmp tmpfs [size=67108864,mode=1777]");
    let scratch = at("mount /dev/vdc /rootfs/scratch ext4 [noinit_itable]");
    let var_tmp = at("mount /dev/vdb /rootfs/var/tmp ext4 [noinit_itable]");
    assert_eq!(calls[scratch + 1], "chmod /rootfs/scratch 1777");
    assert_eq!(calls[var_tmp + 1], "chmod /rootfs/var/tmp 755");
    assert!(blk < tmp && tmp < scratch && scratch < var_tmp, "{calls:?}");
    assert!(var_tmp < at("move /dev /rootfs/dev"), "{calls:?}");
}

#[test]
fn a_stateful_root_keeps_what_its_scratch_disk_holds() {
    let d = boot_root("root=tmpfs:ro;block:/dev/vdz:ext4:rw napalm.scratch=/scratch:disk:1G");
    let base = d.path();
    std::fs::create_dir_all(base.join("dev")).unwrap();
    std::fs::write(
        base.join("dev/vdz"),
        crate::fsloader::tests::ext4_image("state"),
    )
    .unwrap();
    std::fs::create_dir_all(base.join("sys/class/block/vdb")).unwrap();
    std::fs::write(
        base.join("dev/vdb"),
        crate::fsloader::tests::ext4_image("napalm-scratch0"),
    )
    .unwrap();
    std::fs::create_dir_all(base.join("rootfs/scratch")).unwrap();
    std::fs::write(base.join("rootfs/scratch/kept"), "x").unwrap();
    let sys = RecordingSyscall::new(Some(base));
    let f = Boot::new(&sys, base).run(&base.join("cmdline"), &[]);
    assert_eq!(f.step, "exec init", "{f:?}");
    assert!(base.join("rootfs/scratch/kept").exists());
    assert!(
        sys.calls()
            .contains(&"mount /dev/vdb /rootfs/scratch ext4 [noinit_itable]".to_owned()),
        "{:?}",
        sys.calls()
    );
}

#[test]
fn a_missing_scratch_disk_fails_the_boot_naming_its_label() {
    let d = boot_root("root=tmpfs:rw napalm.scratch=/scratch:disk:4G napalm.timeout=0");
    std::fs::create_dir_all(d.path().join("sys/class/block")).unwrap();
    let sys = RecordingSyscall::new(Some(d.path()));
    let f = Boot::new(&sys, d.path()).run(&d.path().join("cmdline"), &[]);
    assert_eq!(f.step, "scratch", "{f:?}");
    assert!(
        f.error.contains("napalm.scratch=/scratch:disk:4G")
            && f.error.contains("filesystem label napalm-scratch0"),
        "{}",
        f.error
    );
}

#[test]
fn a_scratch_mount_that_fails_names_the_step_and_the_entry() {
    let d = boot_root("root=tmpfs:rw napalm.scratch=/scratch:tmpfs:1G napalm.onfail=shell");
    let sys = RecordingSyscall::new(Some(d.path()));
    sys.fail_on("mount napalm-scratch");
    let f = Boot::new(&sys, d.path()).run(&d.path().join("cmdline"), &[]);
    assert_eq!((f.step, f.onfail), ("scratch", OnFail::Shell), "{f:?}");
    assert!(
        f.error.contains("napalm.scratch=/scratch:tmpfs:1G")
            && f.error
                .contains("mount -t tmpfs -o size=1073741824,mode=1777 /scratch"),
        "{}",
        f.error
    );
    assert!(!sys.calls().iter().any(|c| c.starts_with("move /dev")));
}

#[test]
fn a_malformed_scratch_stops_at_the_command_line() {
    let d = boot_root("root=tmpfs:rw napalm.scratch=/scratch:tmpfs:256X");
    let sys = RecordingSyscall::new(Some(d.path()));
    let f = Boot::new(&sys, d.path()).run(&d.path().join("cmdline"), &[]);
    assert_eq!(f.step, "cmdline", "{f:?}");
    assert!(f.error.contains("\"/scratch:tmpfs:256X\""), "{}", f.error);
}
