//! Benchmark against dracut (Debian's, with dracut-network) on the same kernel, the same
//! QEMU and the same nfs-ganesha export: image size, and the time from kernel start to
//! /sbin/init (the guest's /proc/uptime as its first command) and of the initramfs phase
//! (from the kernel's "Run /init" line to /sbin/init), median of several boots.
//!
//! Slow (dracut needs ~40 s per TCG boot), so ignored by default:
//! `cargo test -p napalm-initramfs --test initramfs -- --ignored bench_vs_dracut --nocapture`
//! (`NAPALM_BENCH_BOOTS=5` sets the number of boots per side, default 3).

use super::support::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

struct Sample {
    to_init: f64,
    initramfs: f64,
}

fn measure(img: &Path, cmdline: &str, port: u16) -> Sample {
    let mut q = Qemu::boot_cmdline(img, cmdline, Some(port), None);
    assert!(
        q.wait_exit(Duration::from_secs(240)),
        "boot did not finish:\n{}",
        q.output
    );
    let out = std::mem::take(&mut q.output);
    let run_init = out
        .lines()
        .find(|l| l.contains("Run /init as init process"))
        .and_then(|l| {
            l.split(']')
                .next()?
                .trim_start_matches('[')
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no 'Run /init' line:\n{out}"));
    let to_init = out
        .lines()
        .find_map(|l| {
            l.split("NAPALM-UPTIME ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no NAPALM-UPTIME marker:\n{out}"));
    Sample {
        to_init,
        initramfs: to_init - run_init,
    }
}

#[test]
#[ignore = "slow: boots dracut several times under TCG"]
fn bench_vs_dracut() {
    let _g = serial();
    let boots = bench_boots();
    let t = tempfile::tempdir().unwrap();
    let export = t.path().join("export");
    // The first thing /sbin/init does is report the uptime.
    uptime_root(&export, "");
    let (_, ver) = kernel();
    let dracut_img = t.path().join("dracut.img");
    sh(Command::new("dracut")
        .args(["--no-hostonly", "--force", "--kver", &ver])
        .args([
            "-o",
            "systemd systemd-initrd systemd-networkd dbus plymouth",
        ])
        .args([
            "-m",
            "base nfs network-legacy kernel-network-modules qemu-net overlayfs",
        ])
        .args([
            "--add-drivers",
            "virtio_net virtio_pci virtio_blk overlay nfsv4",
        ])
        .arg(&dracut_img));
    let (napalm_img, napalm_size) = initramfs(t.path(), &[]);
    let dracut_size = std::fs::metadata(&dracut_img).unwrap().len() as usize;
    let nfs = Ganesha::start(&export);
    let mut n = Vec::new();
    let mut d = Vec::new();
    for _ in 0..boots {
        // A fresh ganesha connection per boot: the tcp: guestfwd connects once per QEMU.
        n.push(measure(
            &napalm_img,
            "console=ttyS0 root=nfs:10.0.2.100::ro;tmpfs:rw",
            nfs.port,
        ));
        d.push(measure(
            &dracut_img,
            "console=ttyS0 root=nfs4:10.0.2.100:/ ip=dhcp rd.neednet=1 ro",
            nfs.port,
        ));
    }
    let (n_init, d_init) = (
        median(&n.iter().map(|s| s.to_init).collect::<Vec<_>>()),
        median(&d.iter().map(|s| s.to_init).collect::<Vec<_>>()),
    );
    let (n_ir, d_ir) = (
        median(&n.iter().map(|s| s.initramfs).collect::<Vec<_>>()),
        median(&d.iter().map(|s| s.initramfs).collect::<Vec<_>>()),
    );
    eprintln!("\n== napalm-initramfs vs dracut ({ver}, QEMU TCG, nfs-ganesha NFSv4, {boots} boots each, medians)");
    eprintln!(
        "image size      napalm {napalm_size:>10} B   dracut {dracut_size:>10} B   ratio 1/{:.1}",
        dracut_size as f64 / napalm_size as f64
    );
    eprintln!("kernel→/sbin/init  napalm {n_init:>7.2} s   dracut {d_init:>7.2} s");
    eprintln!(
        "initramfs phase    napalm {n_ir:>7.2} s   dracut {d_ir:>7.2} s   ratio 1/{:.1}",
        d_ir / n_ir
    );
    assert!(
        napalm_size * 5 <= dracut_size,
        "image goal: at most 1/5 of dracut's"
    );
    assert!(napalm_size <= 2_500_000, "image goal: at most 2.5 MB");
    assert!(
        n_ir * 3.0 <= d_ir,
        "initramfs phase goal: at most 1/3 of dracut's"
    );
}
