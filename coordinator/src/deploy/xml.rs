//! libvirt domain XML for one clone, per hypervisor: QEMU/KVM (`hvm`, virtio), Xen PV
//! (`xen`, xen-netfront/blkfront), and libvirt's `test` driver. Paths are bare artifact
//! names (`vmlinuz` or `vmlinux`, `initrd.img`, `state.img`): the agent maps them into the
//! domain's own directory and refuses anything else. QEMU's `-kernel` boots a bzImage
//! through its setup code and an ELF with a PVH note through that entry, so the same
//! `<kernel>` element serves both (`artifacts::Kernels` chooses).
//!
//! A QEMU/KVM clone with a static address gets libvirt's `clean-traffic` network filter
//! on its interface, bound to its MAC and that address: the host drops frames it sends
//! from another MAC or IP (and ARP claiming them), so it cannot take another clone's
//! address and reach the NFS exports restricted to that address. The agent enforces it
//! (by default with its own nftables port filter, `napalm_agent::port_filter`; or
//! libvirt's nwfilter driver).

use std::net::Ipv4Addr;

use napalm_proto::v1::Hypervisor;

/// What goes into a clone's domain.
#[derive(Debug, Clone)]
pub struct DomainParams<'a> {
    /// Domain (clone) name.
    pub name: &'a str,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, bytes.
    pub memory: u64,
    /// Artifact name of the kernel (`vmlinuz`: the bzImage, `vmlinux`: its ELF).
    pub kernel: &'a str,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// A writable disk artifact for a stateful upper layer.
    pub state_disk: Option<&'a str>,
    /// Scratch disks the agent makes (file names in the domain directory), attached after
    /// `state_disk` in order.
    pub scratch_disks: &'a [String],
    /// Whether the scratch disks start fresh at every start of the domain (a stateless
    /// clone): libvirt's `<transient/>` sends the guest's writes to an overlay it drops
    /// when the domain stops (QEMU/KVM; other hypervisors keep them).
    pub transient_scratch: bool,
    /// MAC address of the first interface.
    pub mac: &'a str,
    /// Network the interface joins: a libvirt network name, or `None` for no interface.
    pub network: Option<&'a str>,
    /// The clone's static address (from the coordinator's address pool): on QEMU/KVM its
    /// interface is filtered by `clean-traffic` to this address and `mac`. `None` (DHCP)
    /// leaves the interface unfiltered, since the address is not known up front.
    pub ip: Option<Ipv4Addr>,
    /// ACPI and the APIC for QEMU/KVM guests, on a Q35 machine (see
    /// `DeployConfig::guest_acpi`); without, an i440FX.
    pub acpi: bool,
}

/// The PCI slot of a QEMU/KVM clone's NIC on the root bus.
const NIC_SLOT: u8 = 2;
/// The PCI slot of its first disk; the others follow (at most 26 disks: slot 0x1c, below
/// the chipset's functions at 0x1f).
const DISK_SLOT: u8 = 3;

/// The PC a QEMU/KVM clone boots: with ACPI, the Q35 chipset (PCI Express, interrupts
/// routed by fixed GSIs); without, the i440FX (`pc`), which QEMU boots without ACPI
/// (given `acpi=off`, QEMU 7.2 still gave a Q35 guest its ACPI tables here).
/// With ACPI, an i440FX routes each PCI device's interrupt through link devices whose AML
/// the guest evaluates as the driver binds: 0.3-0.6 s of guest time for virtio_pci under
/// TCG, against nothing on a Q35 (`bench_boot_variants` in the initramfs tests).
fn pc_machine(acpi: bool) -> &'static str {
    if acpi {
        " machine='q35'"
    } else {
        " machine='pc'"
    }
}

/// The libvirt nwfilter a statically addressed clone's interface is bound by.
pub const CLEAN_TRAFFIC: &str = "clean-traffic";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The domain XML for `hv`.
pub fn domain_xml(hv: Hypervisor, p: &DomainParams<'_>) -> String {
    let kib = p.memory / 1024;
    let (dtype, os_type, machine, disk_bus, dev_prefix, console) = match hv {
        Hypervisor::Xen => ("xen", "xen", "", "xen", "xvd", "<console type='pty'><target type='xen' port='0'/></console>"),
        Hypervisor::Test => ("test", "hvm", "", "virtio", "vd", ""),
        Hypervisor::Kvm => ("kvm", "hvm", pc_machine(p.acpi), "virtio", "vd", "<serial type='pty'><target port='0'/></serial><console type='pty'><target type='serial' port='0'/></console>"),
        Hypervisor::Qemu | Hypervisor::Unspecified => ("qemu", "hvm", pc_machine(p.acpi), "virtio", "vd", "<serial type='pty'><target port='0'/></serial><console type='pty'><target type='serial' port='0'/></console>"),
    };
    let pci = matches!(
        hv,
        Hypervisor::Qemu | Hypervisor::Kvm | Hypervisor::Unspecified
    );
    // On a PC the NIC and the disks sit on the root bus at fixed slots: libvirt would
    // put each behind a PCIe root port of its own on q35, which the guest probes (with
    // its hotplug service) at every boot.
    let slot = |n: u8| {
        if pci {
            format!(
                "<address type='pci' domain='0x0000' bus='0x00' slot='{n:#04x}' function='0x0'/>"
            )
        } else {
            String::new()
        }
    };
    let mut devices = String::new();
    if let Some(disk) = p.state_disk {
        devices += &format!(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{}'/><target dev='{dev_prefix}a' bus='{disk_bus}'/>{}</disk>",
            esc(disk),
            slot(DISK_SLOT)
        );
    }
    let first = u8::from(p.state_disk.is_some());
    let transient = p.transient_scratch
        && matches!(
            hv,
            Hypervisor::Qemu | Hypervisor::Kvm | Hypervisor::Unspecified
        );
    for (i, disk) in p.scratch_disks.iter().enumerate() {
        // Scratch is disposable: a transient one is dropped at the next stop anyway, so
        // its overlay's flushes are not waited for (`cache='unsafe'`); a kept one is
        // flushed when the guest asks.
        let (cache, transient) = if transient {
            (" cache='unsafe'", "<transient/>")
        } else {
            ("", "")
        };
        let n = first + i.min(24) as u8;
        let letter = char::from(b'a' + n);
        devices += &format!(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'{cache}/><source file='{}'/><target dev='{dev_prefix}{letter}' bus='{disk_bus}'/>{transient}{}</disk>",
            esc(disk),
            slot(DISK_SLOT + n)
        );
    }
    if let Some(net) = p.network {
        // Clones boot their kernel directly: the NIC's option ROM (iPXE) would only cost
        // firmware time, which is seconds under TCG.
        let model = match hv {
            Hypervisor::Xen => String::new(),
            _ => "<model type='virtio'/><rom bar='off'/>".into(),
        };
        // Anti-spoofing: clean-traffic binds the interface to its MAC and this address
        // (the agent's nftables port filter, or libvirt's nwfilter). QEMU/KVM only: Xen's and the test
        // driver's interfaces are not filtered by libvirt's nwfilter driver.
        let filter = match (hv, p.ip) {
            (Hypervisor::Qemu | Hypervisor::Kvm | Hypervisor::Unspecified, Some(ip)) => format!(
                "<filterref filter='{CLEAN_TRAFFIC}'><parameter name='IP' value='{ip}'/></filterref>"
            ),
            _ => String::new(),
        };
        devices += &format!(
            "<interface type='network'><source network='{}'/><mac address='{}'/>{model}{filter}{}</interface>",
            esc(net),
            esc(p.mac),
            slot(NIC_SLOT)
        );
    }
    devices += console;
    if pci {
        // Nothing a clone uses: libvirt's default USB controller and memory balloon are
        // PCI devices the guest kernel enumerates, and (with ACPI) routes, at every boot.
        devices += "<controller type='usb' model='none'/><memballoon model='none'/>";
    }
    let features = match hv {
        Hypervisor::Qemu | Hypervisor::Kvm | Hypervisor::Unspecified if p.acpi => {
            "<features><acpi/><apic/></features>"
        }
        _ => "",
    };
    format!(
        "<domain type='{dtype}'>\
<name>{name}</name>\
<memory unit='KiB'>{kib}</memory>\
<vcpu>{vcpus}</vcpu>\
<os><type arch='x86_64'{machine}>{os_type}</type><kernel>{kernel}</kernel><initrd>initrd.img</initrd><cmdline>{cmdline}</cmdline></os>\
{features}<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>\
<devices>{devices}</devices>\
</domain>",
        name = esc(p.name),
        kernel = esc(p.kernel),
        vcpus = p.vcpus,
        cmdline = esc(p.cmdline),
    )
}

/// A stable locally administered MAC for clone `index` of deployment `deployment`.
pub fn mac_for(deployment: &str, index: u32) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(deployment.as_bytes());
    let i = index.to_be_bytes();
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", h[0], h[1], i[2], i[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> DomainParams<'static> {
        DomainParams {
            name: "grid1-01",
            vcpus: 1,
            memory: 512 << 20,
            kernel: "vmlinuz",
            cmdline: "console=ttyS0 root=nfs:10.77.0.1::ro;layer:grid1-01;tmpfs:rw",
            state_disk: None,
            scratch_disks: &[],
            transient_scratch: false,
            mac: "52:54:00:00:00:01",
            network: Some("napalm"),
            ip: None,
            acpi: false,
        }
    }

    #[test]
    fn acpi_is_asked_for_qemu_and_kvm_guests_only() {
        let with = DomainParams {
            acpi: true,
            ..params()
        };
        for hv in [Hypervisor::Qemu, Hypervisor::Kvm] {
            let xml = domain_xml(hv, &with);
            assert!(
                xml.contains("</os><features><acpi/><apic/></features><on_poweroff>"),
                "{xml}"
            );
            assert!(
                xml.contains("<type arch='x86_64' machine='q35'>hvm</type>"),
                "{xml}"
            );
            let without = domain_xml(hv, &params());
            assert!(!without.contains("<features>"));
            assert!(without.contains("machine='pc'"), "{without}");
        }
        for hv in [Hypervisor::Xen, Hypervisor::Test] {
            assert!(!domain_xml(hv, &with).contains("<features>"), "{hv:?}");
        }
    }

    #[test]
    fn a_static_address_binds_the_qemu_interface_with_clean_traffic() {
        let mut p = params();
        p.ip = Some(Ipv4Addr::new(10, 77, 0, 101));
        for hv in [Hypervisor::Qemu, Hypervisor::Kvm] {
            let x = domain_xml(hv, &p);
            assert!(
                x.contains("<rom bar='off'/><filterref filter='clean-traffic'><parameter name='IP' value='10.77.0.101'/></filterref><address type='pci'"),
                "{x}"
            );
        }
        // Not on Xen, and nothing to bind without a static address.
        assert!(!domain_xml(Hypervisor::Xen, &p).contains("filterref"));
        assert!(!domain_xml(Hypervisor::Qemu, &params()).contains("filterref"));
    }

    #[test]
    fn qemu_xml_uses_bare_artifact_names_and_escapes() {
        let x = domain_xml(Hypervisor::Qemu, &params());
        assert!(x.starts_with("<domain type='qemu'>"));
        assert!(x.contains("<kernel>vmlinuz</kernel><initrd>initrd.img</initrd>"));
        assert!(x.contains("root=nfs:10.77.0.1::ro;layer:grid1-01;tmpfs:rw"));
        assert!(x.contains("<memory unit='KiB'>524288</memory>"));
        let mut p = params();
        p.kernel = "vmlinux";
        assert!(domain_xml(Hypervisor::Qemu, &p).contains("<kernel>vmlinux</kernel>"));
        let mut p = params();
        p.cmdline = "a<b&'c'";
        assert!(domain_xml(Hypervisor::Qemu, &p).contains("a&lt;b&amp;&apos;c&apos;"));
    }

    #[test]
    fn xen_is_paravirtualised() {
        let mut p = params();
        p.state_disk = Some("state.img");
        let x = domain_xml(Hypervisor::Xen, &p);
        assert!(x.contains("<domain type='xen'>"));
        assert!(x.contains("<type arch='x86_64'>xen</type>"));
        assert!(x.contains("bus='xen'") && x.contains("dev='xvda'"));
    }

    #[test]
    fn scratch_disks_follow_the_state_disk_and_are_transient_when_stateless() {
        let disks = ["scratch0.img".to_owned(), "scratch1.img".to_owned()];
        let mut p = params();
        p.scratch_disks = &disks;
        p.transient_scratch = true;
        let x = domain_xml(Hypervisor::Qemu, &p);
        assert!(
            x.contains("<disk type='file' device='disk'><driver name='qemu' type='raw' cache='unsafe'/><source file='scratch0.img'/><target dev='vda' bus='virtio'/><transient/><address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/></disk>"),
            "{x}"
        );
        assert!(
            x.contains("<source file='scratch1.img'/><target dev='vdb' bus='virtio'/><transient/><address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>"),
            "{x}"
        );
        // Kept (stateful), after a state disk: vdb, vdc, no overlay.
        p.transient_scratch = false;
        p.state_disk = Some("state.img");
        let x = domain_xml(Hypervisor::Qemu, &p);
        assert!(
            x.contains("<driver name='qemu' type='raw'/><source file='scratch0.img'/><target dev='vdb' bus='virtio'/><address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/></disk>"),
            "{x}"
        );
        assert!(x.contains("dev='vdc'") && !x.contains("transient"), "{x}");
        // Xen has no transient disks: kept there.
        p.transient_scratch = true;
        assert!(!domain_xml(Hypervisor::Xen, &p).contains("transient"));
    }

    #[test]
    fn qemu_devices_sit_on_the_root_bus_without_usb_or_balloon() {
        let disks = ["scratch0.img".to_owned()];
        let mut p = params();
        p.state_disk = Some("state.img");
        p.scratch_disks = &disks;
        for hv in [Hypervisor::Qemu, Hypervisor::Kvm] {
            let x = domain_xml(hv, &p);
            for (what, slot) in [
                ("<source file='state.img'/>", 3),
                ("<source file='scratch0.img'/>", 4),
                ("<mac address=", 2),
            ] {
                let at = x.find(what).unwrap_or_else(|| panic!("{what} in {x}"));
                let address = format!("<address type='pci' domain='0x0000' bus='0x00' slot='{slot:#04x}' function='0x0'/>");
                assert!(
                    x[at..]
                        .find(&address)
                        .is_some_and(|a| !x[at..at + a].contains("</disk>")
                            && !x[at..at + a].contains("</interface>")),
                    "{what} at slot {slot}: {x}"
                );
            }
            assert!(
                x.contains(
                    "<controller type='usb' model='none'/><memballoon model='none'/></devices>"
                ),
                "{x}"
            );
        }
        for hv in [Hypervisor::Xen, Hypervisor::Test] {
            let x = domain_xml(hv, &p);
            assert!(
                !x.contains("<address") && !x.contains("memballoon"),
                "{hv:?}: {x}"
            );
        }
    }

    #[test]
    fn macs_are_stable_and_distinct() {
        assert_eq!(mac_for("g", 1), mac_for("g", 1));
        assert_ne!(mac_for("g", 1), mac_for("g", 2));
    }
}
