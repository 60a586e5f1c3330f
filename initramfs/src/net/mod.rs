//! Network bring-up for NFS roots: the interface named by `ip=` (or the first ethernet
//! one), waiting for it and its link, then static addressing or DHCPv4, and
//! `/etc/resolv.conf` from `nameserver=` and the lease.

pub mod dhcp;
pub mod iface;

use crate::ip::IpConfig;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

/// The network as configured: what the console, `/run/napalm/boot.json` and
/// `resolv.conf` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetState {
    /// The interface brought up (`eth0`).
    pub iface: String,
    /// The clone's address on it.
    pub addr: Ipv4Addr,
    /// Its netmask (from ip= or the lease).
    pub netmask: Ipv4Addr,
    /// The default route, if ip= or the lease gave one.
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers (nameserver= first, then from the lease or ip=).
    pub dns: Vec<Ipv4Addr>,
    /// Hostname from ip= or DHCP.
    pub hostname: Option<String>,
    /// How the address was obtained: `"static"` or `"dhcp"`.
    pub method: &'static str,
}

/// Brings the network up as `ip=` says; `None` for `ip=off`.
pub fn configure(
    cfg: &IpConfig,
    nameservers: &[Ipv4Addr],
    timeout: Duration,
) -> io::Result<Option<NetState>> {
    let sys_net = Path::new("/sys/class/net");
    let (device, hostname) = match cfg {
        IpConfig::Off => return Ok(None),
        IpConfig::Dhcp { device, hostname } => (device.clone(), hostname.clone()),
        IpConfig::Static(s) => (s.device.clone(), s.hostname.clone()),
    };
    iface::set_up("lo")?;
    iface::set_addr("lo", Ipv4Addr::LOCALHOST, Ipv4Addr::new(255, 0, 0, 0))?;
    let name = match device {
        Some(d) => {
            let start = std::time::Instant::now();
            while !sys_net.join(&d).exists() && start.elapsed() < timeout {
                std::thread::sleep(Duration::from_millis(20));
            }
            d
        }
        None => iface::first_ethernet(sys_net, timeout)?,
    };
    iface::set_up(&name)
        .map_err(|e| io::Error::new(e.kind(), format!("bringing {name} up: {e}")))?;
    iface::wait_carrier(sys_net, &name, timeout)?;
    let mut st = match cfg {
        IpConfig::Static(s) => {
            iface::set_addr(&name, s.client, s.netmask)?;
            NetState {
                iface: name.clone(),
                addr: s.client,
                netmask: s.netmask,
                gateway: s.gateway,
                dns: s.dns.clone(),
                hostname,
                method: "static",
            }
        }
        _ => {
            let mac = iface::mac(sys_net, &name)?;
            let lease = dhcp::acquire(&name, mac, hostname.as_deref(), timeout)
                .map_err(|e| io::Error::new(e.kind(), format!("DHCP on {name}: {e}")))?;
            iface::set_addr(&name, lease.addr, lease.netmask)?;
            NetState {
                iface: name.clone(),
                addr: lease.addr,
                netmask: lease.netmask,
                gateway: lease.router,
                dns: lease.dns,
                hostname: hostname.or(lease.hostname),
                method: "dhcp",
            }
        }
    };
    if let Some(gw) = st.gateway {
        iface::add_default_route(gw)
            .map_err(|e| io::Error::new(e.kind(), format!("default route via {gw}: {e}")))?;
    }
    let mut dns = nameservers.to_vec();
    dns.extend(st.dns.iter().filter(|d| !nameservers.contains(d)));
    st.dns = dns;
    Ok(Some(st))
}

/// The text of `/etc/resolv.conf` for these servers.
pub fn resolv_conf(dns: &[Ipv4Addr]) -> String {
    dns.iter().map(|d| format!("nameserver {d}\n")).collect()
}
