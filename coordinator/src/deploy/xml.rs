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
    /// Artifact name of a firmware ROM (`<loader type='rom'>`, QEMU's `-bios`) instead of
    /// the hypervisor's default.
    pub firmware: Option<&'a str>,
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
    /// ACPI and the APIC for QEMU/KVM guests (see `DeployConfig::guest_acpi`).
    pub acpi: bool,
    /// QEMU/KVM guests' RAM from the host's huge page pool (see
    /// `DeployConfig::guest_hugepages`).
    pub hugepages: bool,
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

/// The PC a QEMU (TCG) clone gets: a Q35, whose ACPI `_PRT` is a fixed table. An i440FX's
/// is an AML loop building 128 entries, which the guest interprets when virtio_pci enables
/// the NIC's interrupt (`bench_boot_variants` variant 12 in the initramfs tests: 0.87x,
/// 0.97x and 0.93x the QEMU CPU to /sbin/init in three series; the 8-clone deploy 18.1 s
/// median against 20.8 s in three pairs). KVM clones keep the i440FX: not measured there.
const TCG_MACHINE: &str = " machine='q35'";

/// On the Q35, the NIC on the root bus as an integrated device, as measured: without an
/// address libvirt puts each device behind a PCIe root port of its own.
const ROOT_BUS_NIC: &str =
    "<address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>";

/// The domain XML for `hv`.
pub fn domain_xml(hv: Hypervisor, p: &DomainParams<'_>) -> String {
    let kib = p.memory / 1024;
    let (dtype, os_type, machine, disk_bus, dev_prefix, console) = match hv {
        Hypervisor::Xen => ("xen", "xen", "", "xen", "xvd", "<console type='pty'><target type='xen' port='0'/></console>"),
        Hypervisor::Test => ("test", "hvm", "", "virtio", "vd", ""),
        Hypervisor::Kvm => ("kvm", "hvm", " machine='pc'", "virtio", "vd", "<serial type='pty'><target port='0'/></serial><console type='pty'><target type='serial' port='0'/></console>"),
        Hypervisor::Qemu | Hypervisor::Unspecified => ("qemu", "hvm", TCG_MACHINE, "virtio", "vd", "<serial type='pty'><target port='0'/></serial><console type='pty'><target type='serial' port='0'/></console>"),
    };
    let mut devices = String::new();
    if let Some(disk) = p.state_disk {
        devices += &format!(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{}'/><target dev='{dev_prefix}a' bus='{disk_bus}'/></disk>",
            esc(disk)
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
        let letter = char::from(b'a' + first + i.min(24) as u8);
        devices += &format!(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'{cache}/><source file='{}'/><target dev='{dev_prefix}{letter}' bus='{disk_bus}'/>{transient}</disk>",
            esc(disk)
        );
    }
    if let Some(net) = p.network {
        // Clones boot their kernel directly: the NIC's option ROM (iPXE) would only cost
        // firmware time, which is seconds under TCG.
        let address = if machine == TCG_MACHINE {
            ROOT_BUS_NIC
        } else {
            ""
        };
        let model = match hv {
            Hypervisor::Xen => String::new(),
            _ => format!("<model type='virtio'/><rom bar='off'/>{address}"),
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
            "<interface type='network'><source network='{}'/><mac address='{}'/>{model}{filter}</interface>",
            esc(net),
            esc(p.mac)
        );
    }
    devices += console;
    if matches!(
        hv,
        Hypervisor::Qemu | Hypervisor::Kvm | Hypervisor::Unspecified
    ) {
        // Nothing a clone uses: libvirt's default USB controller and memory balloon are
        // PCI devices the guest enumerates at every boot and, with ACPI, whose interrupt
        // it routes through the chipset's AML as a driver binds (virtio_pci's probe of
        // the balloon: 0.3 s of guest time under TCG; `bench_boot_variants` in the
        // initramfs tests).
        devices += "<controller type='usb' model='none'/><memballoon model='none'/>";
    }
    let features = match hv {
        Hypervisor::Qemu | Hypervisor::Kvm | Hypervisor::Unspecified if p.acpi => {
            "<features><acpi/><apic/></features>"
        }
        _ => "",
    };
    let backing = match hv {
        Hypervisor::Qemu | Hypervisor::Kvm | Hypervisor::Unspecified if p.hugepages => {
            "<memoryBacking><hugepages/></memoryBacking>"
        }
        _ => "",
    };
    format!(
        "<domain type='{dtype}'>\
<name>{name}</name>\
<memory unit='KiB'>{kib}</memory>\
{backing}<vcpu>{vcpus}</vcpu>\
<os><type arch='x86_64'{machine}>{os_type}</type>{loader}<kernel>{kernel}</kernel><initrd>initrd.img</initrd><cmdline>{cmdline}</cmdline></os>\
{features}<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>\
<devices>{devices}</devices>\
</domain>",
        name = esc(p.name),
        kernel = esc(p.kernel),
        // A Xen PV guest has no BIOS, and the test driver's schema has no loader.
        loader = match (hv, p.firmware) {
            (Hypervisor::Qemu | Hypervisor::Kvm | Hypervisor::Unspecified, Some(f)) => {
                format!("<loader type='rom'>{}</loader>", esc(f))
            }
            _ => String::new(),
        },
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
            firmware: None,
            cmdline: "console=ttyS0 root=nfs:10.77.0.1::ro;layer:grid1-01;tmpfs:rw",
            state_disk: None,
            scratch_disks: &[],
            transient_scratch: false,
            mac: "52:54:00:00:00:01",
            network: Some("napalm"),
            ip: None,
            acpi: false,
            hugepages: false,
        }
    }

    #[test]
    fn a_firmware_rom_is_the_loader_before_the_kernel() {
        let with = DomainParams {
            firmware: Some("firmware.rom"),
            ..params()
        };
        let xml = domain_xml(Hypervisor::Qemu, &with);
        assert!(
            xml.contains(
                "hvm</type><loader type='rom'>firmware.rom</loader><kernel>vmlinuz</kernel>"
            ),
            "{xml}"
        );
        assert!(!domain_xml(Hypervisor::Qemu, &params()).contains("<loader"));
        for hv in [Hypervisor::Xen, Hypervisor::Test] {
            assert!(!domain_xml(hv, &with).contains("<loader"), "{hv:?}");
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
            assert!(!domain_xml(hv, &params()).contains("<features>"));
        }
        for hv in [Hypervisor::Xen, Hypervisor::Test] {
            assert!(!domain_xml(hv, &with).contains("<features>"), "{hv:?}");
        }
    }

    #[test]
    fn huge_pages_are_asked_for_qemu_and_kvm_guests_only() {
        let with = DomainParams {
            hugepages: true,
            ..params()
        };
        for hv in [Hypervisor::Qemu, Hypervisor::Kvm] {
            let xml = domain_xml(hv, &with);
            assert!(
                xml.contains("</memory><memoryBacking><hugepages/></memoryBacking><vcpu>"),
                "{xml}"
            );
            assert!(!domain_xml(hv, &params()).contains("<memoryBacking>"));
        }
        for hv in [Hypervisor::Xen, Hypervisor::Test] {
            assert!(!domain_xml(hv, &with).contains("<memoryBacking>"), "{hv:?}");
        }
    }

    #[test]
    fn a_static_address_binds_the_qemu_interface_with_clean_traffic() {
        let mut p = params();
        p.ip = Some(Ipv4Addr::new(10, 77, 0, 101));
        for hv in [Hypervisor::Qemu, Hypervisor::Kvm] {
            let x = domain_xml(hv, &p);
            assert!(
                x.contains("<filterref filter='clean-traffic'><parameter name='IP' value='10.77.0.101'/></filterref></interface>"),
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
            x.contains("<disk type='file' device='disk'><driver name='qemu' type='raw' cache='unsafe'/><source file='scratch0.img'/><target dev='vda' bus='virtio'/><transient/></disk>"),
            "{x}"
        );
        assert!(
            x.contains("<source file='scratch1.img'/><target dev='vdb' bus='virtio'/><transient/>"),
            "{x}"
        );
        // Kept (stateful), after a state disk: vdb, vdc, no overlay.
        p.transient_scratch = false;
        p.state_disk = Some("state.img");
        let x = domain_xml(Hypervisor::Qemu, &p);
        assert!(
            x.contains("<driver name='qemu' type='raw'/><source file='scratch0.img'/><target dev='vdb' bus='virtio'/></disk>"),
            "{x}"
        );
        assert!(x.contains("dev='vdc'") && !x.contains("transient"), "{x}");
        // Xen has no transient disks: kept there.
        p.transient_scratch = true;
        assert!(!domain_xml(Hypervisor::Xen, &p).contains("transient"));
    }

    #[test]
    fn qemu_clones_have_no_usb_controller_or_balloon() {
        for hv in [Hypervisor::Qemu, Hypervisor::Kvm] {
            let x = domain_xml(hv, &params());
            assert!(
                x.contains(
                    "<controller type='usb' model='none'/><memballoon model='none'/></devices>"
                ),
                "{x}"
            );
        }
        for hv in [Hypervisor::Xen, Hypervisor::Test] {
            assert!(!domain_xml(hv, &params()).contains("memballoon"), "{hv:?}");
        }
    }

    #[test]
    fn tcg_clones_are_q35s_with_the_nic_on_the_root_bus() {
        let x = domain_xml(Hypervisor::Qemu, &params());
        assert!(
            x.contains("<type arch='x86_64' machine='q35'>hvm</type>"),
            "{x}"
        );
        assert!(
            x.contains(&format!("<rom bar='off'/>{ROOT_BUS_NIC}")),
            "{x}"
        );
        // KVM keeps the i440FX (and lets libvirt address its NIC); Xen and the test
        // driver have no PC to choose.
        let k = domain_xml(Hypervisor::Kvm, &params());
        assert!(k.contains("machine='pc'") && !k.contains("<address"), "{k}");
        for hv in [Hypervisor::Xen, Hypervisor::Test] {
            let o = domain_xml(hv, &params());
            assert!(
                !o.contains("machine=") && !o.contains("<address"),
                "{hv:?}: {o}"
            );
        }
    }

    #[test]
    fn macs_are_stable_and_distinct() {
        assert_eq!(mac_for("g", 1), mac_for("g", 1));
        assert_ne!(mac_for("g", 1), mac_for("g", 2));
    }
}
