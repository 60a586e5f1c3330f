//! Checks on a running clone's machine, from inside it and from its QEMU process: what the
//! coordinator's kernel arguments and domain promise (under TCG a clock off the TSC, the
//! firmware it shipped, a Q35 whose NIC keeps MSI-X).

use std::time::Duration;

use napalm_integration::grid::Grid;

/// Whatever the load during its boot, the TCG clone at `address` keeps time off its TSC,
/// whose calibration a descheduled vCPU can throw off by 36x (`TCG_CLOCK_ARG`).
pub(crate) fn keeps_time_off_its_tsc(g: &Grid, address: &str) {
    let clock = g
        .clone_sh(
            address,
            "cat /sys/devices/system/clocksource/clocksource0/current_clocksource; \
             dmesg | grep -c 'Marking TSC unstable due to boot parameter'",
            Duration::from_secs(20),
        )
        .expect("the clone's clocksource");
    let mut lines = clock.lines().map(str::trim);
    let (source, marked) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    assert!(
        !source.starts_with("tsc") && marked == "1",
        "{address} keeps time on {source:?} (TSC marked unstable by the boot parameter: \
         {marked:?}): {clock}"
    );
}

/// The TCG clone `domain` at `address` is a Q35 (`xml::TCG_MACHINE`) and its NIC still
/// takes its interrupts as MSI-X there, not through the legacy PIC: what its QEMU process
/// was given, and the guest's /proc/interrupts.
pub(crate) fn is_a_q35_with_msix(g: &Grid, address: &str, domain: &str) {
    let machine = qemu_arg(domain, "-machine");
    assert!(
        machine.as_deref().is_some_and(|m| m.starts_with("pc-q35")),
        "{domain} runs QEMU as -machine {machine:?}, not a Q35"
    );
    let irqs = g
        .clone_sh(
            address,
            "grep virtio /proc/interrupts",
            Duration::from_secs(20),
        )
        .expect("the clone's interrupts");
    assert!(
        irqs.contains("PCI-MSI") && irqs.contains("input.0") && !irqs.contains("XT-PIC"),
        "{address}'s NIC without MSI-X:\n{irqs}"
    );
}

/// The value after `flag` in the running domain `domain`'s QEMU command line.
fn qemu_arg(domain: &str, flag: &str) -> Option<String> {
    let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{domain}.pid"))
        .expect("the clone's QEMU pid file");
    let argv = std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
        .expect("the clone's QEMU command line");
    let argv: Vec<String> = argv
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let at = argv.iter().position(|a| a == flag)?;
    argv.get(at + 1).cloned()
}

/// The clone `domain` started with qboot, which the coordinator shipped
/// (`--guest-firmware auto`), not SeaBIOS: what its QEMU process was actually given. On a
/// host without qboot there is nothing to ship and nothing to check.
pub(crate) fn runs_the_shipped_qboot(domain: &str) {
    if !std::path::Path::new("/usr/share/qemu/qboot.rom").exists() {
        return;
    }
    let bios = qemu_arg(domain, "-bios");
    assert!(
        bios.as_deref()
            .is_some_and(|b| b.ends_with("/firmware.rom")),
        "{domain} runs QEMU without the shipped qboot: -bios {bios:?}"
    );
}
