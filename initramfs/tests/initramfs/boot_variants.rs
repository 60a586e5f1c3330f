//! What a clone's machine and kernel arguments cost its boot: the same initramfs and NFS
//! root booted as the coordinator's QEMU domains are (128 MiB, `qemu64`, the kernel's ELF
//! through PVH, virtio-net without its ROM), one variant at a time, interleaved: the PC
//! (i440FX or Q35), ACPI or not, libvirt's default USB controller and memory balloon or
//! not, where the NIC sits, the firmware, the modules' signatures kept or cut off, kernel
//! arguments.
//!
//! For each variant, medians over `NAPALM_BENCH_BOOTS` boots (default 3): the host's time
//! from QEMU's start to /sbin/init's first line, QEMU's CPU time by then, the guest's own
//! uptime at /sbin/init (only honest with ACPI: without it the guest counts PIT ticks a
//! descheduled vCPU loses), napalm-init's phases from its boot.json and the modules it
//! names as slow, and the guest's interrupts (that the devices still get MSI-X).
//!
//! `cargo test -p napalm-initramfs --test initramfs -- --ignored boot_variants --nocapture`
//! (`NAPALM_BENCH_VARIANTS=4,9` picks variants by number; `NAPALM_BENCH_KERNEL_ARGS="a|b"`
//! adds one per `|`-separated alternative: the deployed machine and arguments plus these;
//! `NAPALM_BENCH_CPUS="max|…"` one per CPU model: the deployed Q35 with qboot and that `-cpu`;
//! `NAPALM_BENCH_MACHINE_OPTS="hpet=off|…"` one per set of `-machine` options on that Q35;
//! `NAPALM_BENCH_DEPLOYED_ARGS="a|b"` one per set of kernel arguments added on that Q35;
//! `NAPALM_BENCH_QEMU_ARGS="a|b"` one per set of QEMU arguments added to it;
//! `NAPALM_BENCH_PAUSE_S=15` pauses before each boot).

use super::support::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// One way to boot a clone.
struct Variant {
    name: String,
    /// QEMU's machine: `pc` (i440FX) or `q35`.
    machine: &'static str,
    acpi: bool,
    /// libvirt's default USB controller and memory balloon on the PCI bus.
    default_devices: bool,
    /// The NIC behind a PCIe root port (where libvirt puts a device on a Q35 unless told
    /// otherwise) rather than on the root bus.
    root_port: bool,
    /// QEMU's `-bios`: another firmware than its default SeaBIOS.
    firmware: Option<&'static str>,
    /// The image's modules keep their signatures (napalm-mkinitramfs's
    /// `--module-signatures keep`): each load hashes and verifies the module.
    signed_modules: bool,
    /// QEMU's `-cpu` (libvirt gives a domain without `<cpu>` QEMU's default, `qemu64`).
    cpu: String,
    /// More of `-machine`'s options, after `usb=off,acpi=…` (`hpet=off`, `i8042=off`).
    machine_opts: String,
    /// More QEMU arguments, last (a memory backend, `-accel tcg,tb-size=…`).
    qemu_args: Vec<String>,
    kernel_args: String,
}

#[derive(Default)]
struct Samples {
    host_s: Vec<f64>,
    cpu_s: Vec<f64>,
    /// Of `cpu_s`, the host kernel's share (page faults, zeroing, I/O).
    sys_s: Vec<f64>,
    /// QEMU's resident memory at /sbin/init, MiB, and how much of it is in transparent
    /// huge pages (smaps_rollup's `Rss` and `AnonHugePages`).
    rss_mib: Vec<f64>,
    thp_mib: Vec<f64>,
    guest_s: Vec<f64>,
    /// napalm-init's phases by name: durations by the guest's clock.
    phases: std::collections::BTreeMap<String, Vec<f64>>,
    /// The ACPI and virtio lines of /proc/interrupts, and the input devices, at the last
    /// boot: that the variant still routes the devices' interrupts and the power button.
    irqs: String,
    inputs: String,
    /// The modules napalm-init named as slow at the last boot, with their load times.
    slow_modules: String,
    /// With `initcall_debug` among the kernel arguments: the kernel's init calls that took
    /// 10 ms or more, at the last boot.
    initcalls: String,
    /// With `initcall_debug`: the pauses of 20 ms (`NAPALM_BENCH_GAP_MS`) or more in the
    /// kernel's log.
    gaps: Vec<String>,
}

/// utime + stime of `pid`, and stime alone, in seconds.
fn cpu_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis; utime and stime are the 14th and
    // 15th fields of the whole line.
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (user, sys): (f64, f64) = (f[11].parse().unwrap(), f[12].parse().unwrap());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ((user + sys) / hz, sys / hz)
}

/// `Rss` and `AnonHugePages` of `pid`, MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let kib = |key: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("Rss:") / 1024.0, kib("AnonHugePages:") / 1024.0)
}

fn variants() -> Vec<Variant> {
    let fast = |acpi| napalm_initramfs::cmdline::fast_boot_args("", acpi);
    let v = |name: &str, machine, acpi, default_devices, extra: &str| Variant {
        name: name.to_owned(),
        machine,
        acpi,
        default_devices,
        root_port: false,
        firmware: None,
        signed_modules: false,
        cpu: "qemu64".into(),
        machine_opts: String::new(),
        qemu_args: Vec::new(),
        kernel_args: format!("{} {extra}", fast(acpi)),
    };
    // The arguments before `noreplace-smp` came.
    let old = |v: Variant| Variant {
        kernel_args: v.kernel_args.replace("noreplace-smp", ""),
        ..v
    };
    let mut all = vec![
        old(v(
            "i440FX, ACPI, USB and balloon, no noreplace-smp (deployed until December 1)",
            "pc",
            true,
            true,
            "",
        )),
        old(v(
            "i440FX, no ACPI, USB and balloon, no noreplace-smp (--guest-acpi false until then)",
            "pc",
            false,
            true,
            "",
        )),
        old(v(
            "i440FX, ACPI, no USB or balloon, no noreplace-smp",
            "pc",
            true,
            false,
            "",
        )),
        v(
            "i440FX, ACPI, no USB or balloon, no tsc=unstable (deployed until December 2)",
            "pc",
            true,
            false,
            "",
        ),
        v(
            "i440FX, no ACPI, no USB or balloon (--guest-acpi false)",
            "pc",
            false,
            false,
            "",
        ),
        v(
            "Q35, ACPI, no USB or balloon, NIC on the root bus",
            "q35",
            true,
            false,
            "",
        ),
        Variant {
            root_port: true,
            ..v(
                "Q35, ACPI, no USB or balloon, NIC behind a PCIe root port",
                "q35",
                true,
                false,
                "",
            )
        },
        old(v(
            "i440FX, ACPI, USB and balloon, no noreplace-smp, acpi=noirq pnpacpi=off",
            "pc",
            true,
            true,
            "acpi=noirq pnpacpi=off",
        )),
    ];
    // What the coordinator deploys on a QEMU TCG host: the clock argument, then the
    // boot-speed ones.
    let tcg = napalm_initramfs::cmdline::TCG_CLOCK_ARG;
    all.push(v(
        &format!("i440FX, ACPI, no USB or balloon, {tcg} (deployed)"),
        "pc",
        true,
        false,
        tcg,
    ));
    // qboot: a firmware that only loads a kernel from fw_cfg (PVH included), without
    // SeaBIOS's device and option ROM setup; with the deployed arguments.
    let qboot = |name: &str, machine| Variant {
        firmware: Some("/usr/share/qemu/qboot.rom"),
        ..v(name, machine, true, false, tcg)
    };
    all.push(qboot(
        &format!("i440FX, ACPI, no USB or balloon, {tcg}, qboot"),
        "pc",
    ));
    // The same with the modules' signatures kept, as images were built until then.
    all.push(Variant {
        signed_modules: true,
        ..qboot(
            &format!(
                "i440FX, ACPI, no USB or balloon, {tcg}, qboot, signed modules \
                 (deployed until December 2)"
            ),
            "pc",
        )
    });
    // A Q35 with qboot: its _PRT is a fixed table (the i440FX's is an AML loop the guest
    // interprets when virtio_pci enables the NIC's interrupt).
    all.push(qboot(
        &format!("Q35, ACPI, no USB or balloon, {tcg}, qboot, NIC on the root bus (deployed)"),
        "q35",
    ));
    // The deployed machine changed one way per `|`-separated item of a variable:
    // `NAPALM_BENCH_CPUS="max|max,la57=off"` (another CPU model),
    // `NAPALM_BENCH_MACHINE_OPTS="hpet=off|i8042=off,sata=off"` (more machine options),
    // `NAPALM_BENCH_DEPLOYED_ARGS="i8042.noaux|…"` (more kernel arguments).
    let each = |var: &str| -> Vec<String> {
        std::env::var(var)
            .map(|s| s.split('|').map(|x| x.trim().to_owned()).collect())
            .unwrap_or_default()
    };
    let deployed = |what: &str| {
        qboot(
            &format!("Q35, ACPI, no USB or balloon, {tcg}, qboot, NIC on the root bus, {what}"),
            "q35",
        )
    };
    for cpu in each("NAPALM_BENCH_CPUS") {
        all.push(Variant {
            cpu: cpu.clone(),
            ..deployed(&format!("-cpu {cpu}"))
        });
    }
    for opts in each("NAPALM_BENCH_MACHINE_OPTS") {
        all.push(Variant {
            machine_opts: format!(",{opts}"),
            ..deployed(&opts)
        });
    }
    // `NAPALM_BENCH_QEMU_ARGS="-accel tcg,tb-size=64|…"`: more QEMU arguments,
    // space-separated.
    for args in each("NAPALM_BENCH_QEMU_ARGS") {
        all.push(Variant {
            qemu_args: args.split_whitespace().map(str::to_owned).collect(),
            ..deployed(&args)
        });
    }
    for extra in each("NAPALM_BENCH_DEPLOYED_ARGS") {
        let q = deployed(&extra);
        all.push(Variant {
            kernel_args: format!("{} {extra}", q.kernel_args),
            ..q
        });
    }
    // One more variant per `|`-separated alternative.
    if let Ok(extras) = std::env::var("NAPALM_BENCH_KERNEL_ARGS") {
        for extra in extras.split('|').map(str::trim) {
            all.push(v(
                &format!("i440FX, ACPI, no USB or balloon, {tcg} {extra}"),
                "pc",
                true,
                false,
                &format!("{tcg} {extra}"),
            ));
        }
    }
    match std::env::var("NAPALM_BENCH_VARIANTS") {
        Ok(pick) => {
            let pick: Vec<usize> = pick
                .split(',')
                .map(|n| {
                    n.trim()
                        .parse()
                        .expect("NAPALM_BENCH_VARIANTS: numbers from 1")
                })
                .collect();
            all.into_iter()
                .enumerate()
                .filter(|(i, _)| pick.contains(&(i + 1)))
                .map(|(_, v)| v)
                .collect()
        }
        Err(_) => all,
    }
}

fn boot(kernel: &Path, img: &Path, port: u16, v: &Variant, into: &mut Samples) {
    let cmdline = format!(
        "{} console=ttyS0 napalm.onfail=halt root=nfs:10.0.2.100::ro;tmpfs:rw \
         ip=10.0.2.15:10.0.2.100::255.255.255.0:clone:eth0:off",
        v.kernel_args
    );
    let mut extra: Vec<String> = vec![
        "-machine".into(),
        format!(
            "{},usb=off,acpi={}{}",
            v.machine,
            if v.acpi { "on" } else { "off" },
            v.machine_opts
        ),
        "-m".into(),
        "128".into(),
        "-cpu".into(),
        v.cpu.clone(),
    ];
    let mut nic = "virtio-net-pci,netdev=n1,rombar=0".to_owned();
    if v.root_port {
        extra.extend([
            "-device".into(),
            "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,port=8".into(),
        ]);
        nic += ",bus=rp1";
    }
    extra.extend([
        "-netdev".into(),
        format!("user,id=n1,restrict=on,guestfwd=tcp:10.0.2.100:2049-tcp:127.0.0.1:{port}"),
        "-device".into(),
        nic,
    ]);
    if let Some(f) = v.firmware {
        extra.extend(["-bios".to_owned(), f.to_owned()]);
    }
    if v.default_devices {
        for d in ["piix3-usb-uhci", "virtio-balloon-pci"] {
            extra.extend(["-device".to_owned(), d.to_owned()]);
        }
    }
    extra.extend(v.qemu_args.iter().cloned());
    // `NAPALM_BENCH_PAUSE_S=15`: the memory the boot before freed goes back to a host
    // that reclaims free guest memory (a VM with free page reporting) before this one.
    if let Some(pause) = std::env::var("NAPALM_BENCH_PAUSE_S")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        std::thread::sleep(Duration::from_secs_f64(pause));
    }
    let started = Instant::now();
    let mut q = Qemu::boot_kernel(kernel, img, &cmdline, None, None, &extra);
    assert!(
        q.wait_for("NAPALM-UPTIME", Duration::from_secs(240)),
        "{}: no /sbin/init:\n{}",
        v.name,
        q.output
    );
    into.host_s.push(started.elapsed().as_secs_f64());
    let (cpu, sys) = cpu_seconds(q.pid());
    into.cpu_s.push(cpu);
    into.sys_s.push(sys);
    let (rss, thp) = memory_mib(q.pid());
    into.rss_mib.push(rss);
    into.thp_mib.push(thp);
    // Without ACPI `poweroff -f` only halts: QEMU is killed when `q` drops.
    assert!(
        q.wait_for("NAPALM-INITCALLS", Duration::from_secs(60)),
        "{}: no boot.json or interrupts:\n{}",
        v.name,
        q.output
    );
    let field = |marker: &str| {
        q.output
            .lines()
            .find_map(|l| l.split_once(marker).map(|(_, r)| r.trim().to_owned()))
            .unwrap_or_else(|| panic!("{}: no {marker}:\n{}", v.name, q.output))
    };
    let uptime: f64 = field("NAPALM-UPTIME ")
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap();
    into.guest_s.push(uptime);
    into.irqs = field("NAPALM-IRQ ");
    into.inputs = field("NAPALM-INPUT ");
    // With initcall_debug: where the kernel's log pauses 20 ms or more (early boot has no
    // init calls to name), the line that ends each pause. `NAPALM_BENCH_GAP_MS` changes the
    // threshold.
    let gap_s = std::env::var("NAPALM_BENCH_GAP_MS")
        .ok()
        .and_then(|ms| ms.parse::<f64>().ok())
        .map_or(0.02, |ms| ms / 1e3);
    let (mut last, mut before) = (0.0, "");
    into.gaps.clear();
    for l in q
        .output
        .lines()
        .filter_map(|l| l.strip_prefix("NAPALM-DMESG "))
    {
        let Some(t) = l
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .and_then(|(t, _)| t.trim().parse::<f64>().ok())
        else {
            continue;
        };
        if t - last >= gap_s {
            into.gaps
                .push(format!("{before}\n     +{:.0} ms → {l}", (t - last) * 1e3));
        }
        (last, before) = (t, l);
    }
    // `NAPALM_BENCH_EACH=1`: every boot's times and pauses as it ends (the summary has the
    // last boot's only), to tell a slow boot's pauses from a fast one's.
    if std::env::var_os("NAPALM_BENCH_EACH").is_some() {
        eprintln!(
            "-- {}: host {:.2} s, QEMU CPU {:.2} s, guest uptime {uptime:.2} s",
            v.name,
            into.host_s.last().copied().unwrap_or_default(),
            into.cpu_s.last().copied().unwrap_or_default(),
        );
        for g in &into.gaps {
            eprintln!("   pause {g}");
        }
    }
    into.initcalls = q
        .output
        .lines()
        .find_map(|l| {
            l.split_once("NAPALM-INITCALLS")
                .map(|(_, r)| r.trim().to_owned())
        })
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&field("NAPALM-BOOTJSON ")).unwrap();
    into.slow_modules = json["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str()?.strip_prefix("napalm:   "))
        .filter(|l| !l.starts_with('/'))
        .collect::<Vec<_>>()
        .join(", ");
    let t = &json["timings"];
    let mut at = |name: &str, d: f64| into.phases.entry(name.to_owned()).or_default().push(d);
    at("kernel → napalm-init", t["init_start"].as_f64().unwrap());
    for p in t["phases"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        // "modules: 17 loaded" and "mount nfs:10.0.2.100:…" keep their first word.
        let key = name.split([':', ' ']).next().unwrap_or(name);
        at(
            key,
            p["end"].as_f64().unwrap() - p["start"].as_f64().unwrap(),
        );
    }
}

#[test]
#[ignore = "benchmark: boots every variant several times under TCG"]
fn bench_boot_variants() {
    let _g = serial();
    let boots = bench_boots();
    let t = tempfile::tempdir().unwrap();
    let export = t.path().join("export");
    uptime_root(
        &export,
        "echo \"NAPALM-BOOTJSON $(/bin/busybox tr -d '\\n' < /run/napalm/boot.json)\"\n\
         echo \"NAPALM-IRQ $(/bin/busybox grep -E 'acpi|virtio' /proc/interrupts | /bin/busybox tr -s ' \\n' ' ')\"\n\
         echo \"NAPALM-INPUT $(/bin/busybox grep -h Name= /proc/bus/input/devices | /bin/busybox tr '\\n' ' ')\"\n\
         if /bin/busybox grep -q initcall_debug /proc/cmdline; then /bin/busybox dmesg | /bin/busybox sed 's/^/NAPALM-DMESG /'; fi\n\
         echo \"NAPALM-INITCALLS $(/bin/busybox dmesg | /bin/busybox grep -E 'after [0-9]{5,} usecs' | /bin/busybox tr -s ' \\n' ' ')\"\n",
    );
    // The coordinator boots QEMU/KVM clones through the kernel's PVH entry.
    let (bz, ver) = kernel();
    let elf = t.path().join("vmlinux");
    std::fs::write(
        &elf,
        napalm_initramfs::kernel::extract_elf_file(&bz).expect("the kernel's ELF"),
    )
    .unwrap();
    let (img, _) = initramfs(t.path(), &[]);
    let signed = t.path().join("signed.img");
    std::fs::write(
        &signed,
        base_image_with(napalm_initramfs::modsig::ModuleSignatures::Keep),
    )
    .unwrap();
    let nfs = Ganesha::start(&export);
    let variants = variants();
    let mut samples: Vec<Samples> = variants.iter().map(|_| Samples::default()).collect();
    for _ in 0..boots {
        for (v, s) in variants.iter().zip(samples.iter_mut()) {
            let img = if v.signed_modules { &signed } else { &img };
            boot(&elf, img, nfs.port, v, s);
        }
    }
    eprintln!(
        "\n== one clone's boot to /sbin/init by variant ({ver}, PVH, QEMU TCG, 128 MiB, \
         root over NFS; medians of {boots}, interleaved)"
    );
    let base_cpu = median(&samples[0].cpu_s);
    for (i, (v, s)) in variants.iter().zip(&samples).enumerate() {
        eprintln!(
            "{}. {}\n   host {:.2} s (runs {}), QEMU CPU {:.2} s ({:.2}x the first; system {:.2} s), \
             RSS {:.0} MiB (THP {:.0}), guest uptime {:.2} s",
            i + 1,
            v.name,
            median(&s.host_s),
            s.host_s.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", "),
            median(&s.cpu_s),
            median(&s.cpu_s) / base_cpu,
            median(&s.sys_s),
            median(&s.rss_mib),
            median(&s.thp_mib),
            median(&s.guest_s),
        );
        let phases: Vec<String> = s
            .phases
            .iter()
            .map(|(k, d)| format!("{k} {:.3}", median(d)))
            .collect();
        eprintln!("   guest phases (s): {}", phases.join(", "));
        eprintln!("   slow modules (last boot): {}", s.slow_modules);
        for g in &s.gaps {
            eprintln!("   pause {g}");
        }
        if !s.initcalls.is_empty() {
            eprintln!("   initcalls over 10 ms (last boot): {}", s.initcalls);
        }
        eprintln!("   interrupts: {}\n   inputs: {}", s.irqs, s.inputs);
    }
}
