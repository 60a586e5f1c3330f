//! The two binaries run by hand on the host: `napalm-init --check/--fsloaders` and
//! `napalm-mkinitramfs build/layer` (reproducible output, size and hash printed).

use std::process::Command;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn init_checks_thesis_command_lines() {
    let t = tempfile::tempdir().unwrap();
    let cases = [
        // Thesis 3.2.6 (stateless clone with unpack=): accepted.
        ("root=nfs:10.0.0.1::ro;nfs:10.0.0.1:/var/state/systems/clone01:ro;tmpfs:rw unpack=/var/tmpfs-overlay", true, "layer 2: tmpfs:rw (Rw)"),
        // Thesis 3.2.5 (stateful, NFS upper): refused, with the way out.
        ("root=nfs:10.0.0.1::ro;nfs:10.0.0.1:/var/state/systems/clone01:rw", false, "cannot be the rw upper layer"),
        // Thesis 3.2.2: parses, but no lvm2+md fsloader exists.
        ("root=lvm2+md:/dev/vg/volume:/dev/md0,/dev/md1", false, "no fsloader for type \"lvm2+md\""),
        ("root=/dev/sda1;/dev/sda2 ip=10.0.0.5::10.0.0.1:255.255.255.0:clone01:eth0:off", true, "layer 1: block:/dev/sda2 (Ro)"),
        ("root=nfs:10.0.0.1::ro ip=10.0.0.500", false, "\"10.0.0.500\" is not an IPv4 address"),
    ];
    for (i, (line, ok, want)) in cases.iter().enumerate() {
        let f = t.path().join(format!("cmdline{i}"));
        std::fs::write(&f, line).unwrap();
        let (success, out) = run(Command::new(env!("CARGO_BIN_EXE_napalm-init"))
            .arg("--check")
            .arg(&f));
        assert_eq!(success, *ok, "{line}: {out}");
        assert!(out.contains(want), "{line}: {out}");
    }
    let (success, out) = run(Command::new(env!("CARGO_BIN_EXE_napalm-init")).arg("--fsloaders"));
    assert!(
        success && out.contains("== loop+nfs (ip path [ro|rw])"),
        "{out}"
    );
}

#[test]
fn mkinitramfs_is_reproducible_and_reports_size_and_hash() {
    let t = tempfile::tempdir().unwrap();
    let layer = t.path().join("clone01");
    std::fs::create_dir_all(layer.join("etc")).unwrap();
    std::fs::write(layer.join("etc/hostname"), "clone01\n").unwrap();
    std::fs::write(layer.join("etc/.wh.motd"), "").unwrap();
    // The init must be static; busybox-static stands in for it here.
    let (_, ver) = super::support::kernel();
    let build = |out: &str| {
        run(Command::new(env!("CARGO_BIN_EXE_napalm-mkinitramfs"))
            .args([
                "build",
                "--kernel-version",
                &ver,
                "--init",
                "/bin/busybox",
                "--no-default-modules",
                "--module",
                "overlay",
                "--compress",
                "gzip",
            ])
            .arg("--append-layer")
            .arg(format!("{}:clone01", layer.display()))
            .arg("-o")
            .arg(t.path().join(out)))
    };
    let (ok1, out1) = build("a.img");
    let (ok2, out2) = build("b.img");
    assert!(ok1 && ok2, "{out1}{out2}");
    assert!(out1.contains("bytes") && out1.contains("sha256 "), "{out1}");
    assert_eq!(
        std::fs::read(t.path().join("a.img")).unwrap(),
        std::fs::read(t.path().join("b.img")).unwrap()
    );
    let hash = |s: &str| s.split("sha256 ").nth(1).map(|h| h.trim().to_string());
    assert_eq!(hash(&out1), hash(&out2));
    // A dynamically linked init is refused with the fix.
    let (ok, out) = run(Command::new(env!("CARGO_BIN_EXE_napalm-mkinitramfs"))
        .args([
            "build",
            "--init",
            env!("CARGO_BIN_EXE_napalm-init"),
            "--no-default-modules",
            "-o",
        ])
        .arg(t.path().join("c.img")));
    assert!(!ok && out.contains("crt-static"), "{out}");
    let (ok, out) = run(Command::new(env!("CARGO_BIN_EXE_napalm-mkinitramfs"))
        .args(["layer", "--name", "clone01", "--compress", "gzip", "-o"])
        .arg(t.path().join("l.seg"))
        .arg(&layer));
    assert!(ok && out.contains("sha256"), "{out}");
}
