//! Anti-spoofing on the host bridge, enforced by the agent itself with nftables.
//!
//! A domain XML binds an interface to its MAC and IPv4 address with libvirt's
//! `clean-traffic` filter (`<filterref filter='clean-traffic'><parameter name='IP'
//! value='…'/></filterref>`; the coordinator asks it of every statically addressed clone).
//! libvirt's nwfilter driver applies it at every start with about 126 `ebtables`,
//! `iptables` and `ip6tables` commands, under one lock for the whole host: 1.4 s per start
//! here, one domain after the other, and a fifth of a core of CPU while 8 clones start.
//!
//! With [`PortFilterMode::Nftables`] (the agent's default) the agent takes such a
//! `<filterref>` out of the XML ([`take_clean_traffic`]), names the interface's tap device
//! itself ([`port_name`]) and, before every start, installs the same guarantee for what
//! leaves that tap as one atomic nftables batch in the bridge family ([`nft`]): frames
//! from another MAC, IPv4 from another address (DHCP discovery from 0.0.0.0 excepted),
//! ARP claiming another MAC or address, and every other ethertype (IPv6 included) are
//! dropped. The rules exist before QEMU creates the tap, so there is no window in which
//! the guest runs unfiltered. A filterref this cannot express exactly (several addresses,
//! no `<mac>`, an interface that is not a tap on a bridge, another filter) stays in the
//! XML for libvirt to apply. [`PortFilterMode::Libvirt`] leaves every filterref to libvirt.

pub mod nft;

use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{AgentError, Result};

/// The libvirt filter the agent enforces itself.
pub const CLEAN_TRAFFIC: &str = "clean-traffic";

/// Who enforces `clean-traffic` on a domain's interfaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PortFilterMode {
    /// libvirt's nwfilter driver, as the XML says (ebtables/iptables under one host lock).
    #[default]
    Libvirt,
    /// The agent, with nftables (`nft`), in the network namespace of the hypervisor's
    /// tap devices: `netns` when given (e.g. `/proc/1/ns/net` for an agent in its own
    /// namespace beside a host-wide libvirtd), else the agent's own.
    Nftables {
        /// Path of the network namespace to run `nft` in.
        netns: Option<PathBuf>,
    },
}

/// One tap device bound to a MAC and an IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortFilter {
    /// The tap device's name (the interface's `<target dev>`).
    pub port: String,
    /// The only source MAC its frames may carry (lower case, `aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    /// The only IPv4 source address its packets and ARP may claim.
    pub ipv4: Ipv4Addr,
}

/// Installs and removes port filters on the host. Both are idempotent.
pub trait Firewall: Send + Sync {
    /// Installs (or replaces) the rules of `filters`.
    fn apply(&self, filters: &[PortFilter]) -> Result<()>;
    /// Removes the rules of `ports` (tap device names); ports without rules are fine.
    fn remove(&self, ports: &[&str]) -> Result<()>;
}

/// The tap device name the agent gives interface `index` of domain `domain`: `np` and 13
/// hex digits of a digest of both (15 characters, the kernel's limit; libvirt keeps a
/// name given in `<target dev>` unless it starts with `vnet`, `vif` or `macvtap`).
pub fn port_name(domain: &str, index: usize) -> String {
    let d = Sha256::digest(format!("{domain}/{index}").as_bytes());
    let hex = hex::encode(d);
    format!("np{}", &hex[..13])
}

/// A MAC in the canonical form nft and libvirt print, or `None` if `s` is not one.
fn canonical_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then(|| s.to_ascii_lowercase())
}

/// What one `<interface>` asks that the agent can enforce: its filterref's range, the
/// ranges of any `<target>` to drop, and the filter.
struct Taken {
    filterref: Range<usize>,
    targets: Vec<Range<usize>>,
    filter: PortFilter,
}

/// The `clean-traffic` filterref of `iface` (interface number `index` of `domain`) as a
/// port filter, when it is exactly one the agent enforces the same way libvirt would.
fn take_one(domain: &str, index: usize, iface: roxmltree::Node<'_, '_>) -> Result<Option<Taken>> {
    if !matches!(iface.attribute("type"), Some("network" | "bridge")) {
        return Ok(None);
    }
    let children: Vec<_> = iface.children().filter(|n| n.is_element()).collect();
    let Some(fref) = children
        .iter()
        .find(|n| n.has_tag_name("filterref") && n.attribute("filter") == Some(CLEAN_TRAFFIC))
    else {
        return Ok(None);
    };
    let params: Vec<_> = fref.children().filter(|n| n.is_element()).collect();
    let [ip] = params.as_slice() else {
        return Ok(None);
    };
    if !ip.has_tag_name("parameter") || ip.attribute("name") != Some("IP") {
        return Ok(None);
    }
    let value = ip.attribute("value").unwrap_or_default();
    let ipv4: Ipv4Addr = value.parse().map_err(|_| {
        AgentError::invalid(
            "config.xml",
            format!("clean-traffic's IP parameter {value:?} is not an IPv4 address"),
        )
    })?;
    let Some(mac) = children
        .iter()
        .find(|n| n.has_tag_name("mac"))
        .and_then(|m| m.attribute("address"))
    else {
        return Ok(None);
    };
    let mac = canonical_mac(mac).ok_or_else(|| {
        AgentError::invalid(
            "config.xml",
            format!("<mac address={mac:?}> is not a MAC address (aa:bb:cc:dd:ee:ff)"),
        )
    })?;
    Ok(Some(Taken {
        filterref: fref.range(),
        targets: children
            .iter()
            .filter(|n| n.has_tag_name("target"))
            .map(|n| n.range())
            .collect(),
        filter: PortFilter {
            port: port_name(domain, index),
            mac,
            ipv4,
        },
    }))
}

/// Takes out of a (checked) domain XML every `clean-traffic` filterref the agent enforces
/// itself: the filterref becomes `<target dev='PORT'/>` (a `<target>` already there is
/// replaced), and the port's filter is returned. Other filterrefs stay for libvirt.
pub fn take_clean_traffic(domain: &str, xml: &str) -> Result<(String, Vec<PortFilter>)> {
    let doc = crate::policy::parse("config.xml", xml)?;
    let interfaces = doc.descendants().filter(|n| {
        n.has_tag_name("interface")
            && n.parent_element()
                .is_some_and(|p| p.has_tag_name("devices"))
    });
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let mut filters = Vec::new();
    for (index, iface) in interfaces.enumerate() {
        let Some(t) = take_one(domain, index, iface)? else {
            continue;
        };
        edits.push((t.filterref, format!("<target dev='{}'/>", t.filter.port)));
        edits.extend(t.targets.into_iter().map(|r| (r, String::new())));
        filters.push(t.filter);
    }
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = xml.to_owned();
    for (r, with) in edits {
        out.replace_range(r, &with);
    }
    Ok((out, filters))
}

/// The firewall for `mode`: `None` when libvirt enforces the filters.
pub fn firewall(mode: &PortFilterMode) -> Option<std::sync::Arc<dyn Firewall>> {
    match mode {
        PortFilterMode::Libvirt => None,
        PortFilterMode::Nftables { netns } => Some(std::sync::Arc::new(nft::Nft {
            netns: netns.clone(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xml(iface: &str) -> String {
        format!(
            "<domain type='qemu'><name>c1</name><devices>{iface}<serial type='pty'/></devices></domain>"
        )
    }

    const BOUND: &str = "<interface type='network'><source network='n'/>\
<mac address='52:54:00:AA:bb:01'/><model type='virtio'/>\
<filterref filter='clean-traffic'><parameter name='IP' value='10.0.0.5'/></filterref></interface>";

    #[test]
    fn a_clean_traffic_filterref_becomes_a_named_tap_and_a_filter() {
        let (out, filters) = take_clean_traffic("c1", &xml(BOUND)).expect("taken");
        let port = port_name("c1", 0);
        assert_eq!(port.len(), 15, "{port}");
        assert_eq!(
            filters,
            vec![PortFilter {
                port: port.clone(),
                mac: "52:54:00:aa:bb:01".into(),
                ipv4: Ipv4Addr::new(10, 0, 0, 5),
            }]
        );
        assert!(!out.contains("filterref"), "{out}");
        assert!(
            out.contains(&format!(
                "<model type='virtio'/><target dev='{port}'/></interface>"
            )),
            "{out}"
        );
        roxmltree::Document::parse(&out).expect("still XML");
    }

    #[test]
    fn a_clients_tap_name_is_replaced_by_the_agents() {
        let with_target = BOUND.replace(
            "<model type='virtio'/>",
            "<target dev='np0000000000000'/><model type='virtio'/>",
        );
        let (out, _) = take_clean_traffic("c1", &xml(&with_target)).expect("taken");
        assert!(!out.contains("np0000000000000"), "{out}");
        assert_eq!(out.matches("<target dev=").count(), 1, "{out}");
    }

    #[test]
    fn what_the_agent_cannot_enforce_exactly_stays_for_libvirt() {
        for iface in [
            // several addresses
            BOUND.replace(
                "</filterref>",
                "<parameter name='IP' value='10.0.0.6'/></filterref>",
            ),
            // no MAC given: libvirt picks one
            BOUND.replace("<mac address='52:54:00:AA:bb:01'/>", ""),
            // not a tap on a bridge
            BOUND.replace("type='network'", "type='user'"),
            // another filter
            BOUND.replace("clean-traffic", "no-mac-spoofing"),
            // no address: libvirt learns it
            "<interface type='network'><mac address='52:54:00:aa:bb:01'/><filterref filter='clean-traffic'/></interface>".into(),
        ] {
            let x = xml(&iface);
            let (out, filters) = take_clean_traffic("c1", &x).expect("left");
            assert!(filters.is_empty(), "{iface}");
            assert_eq!(out, x);
        }
    }

    #[test]
    fn each_interface_gets_its_own_port_and_bad_values_are_quoted() {
        let two = format!(
            "{BOUND}{}",
            BOUND
                .replace("10.0.0.5", "10.0.1.5")
                .replace(":01'", ":02'")
        );
        let (_, filters) = take_clean_traffic("c1", &xml(&two)).expect("taken");
        assert_eq!(filters.len(), 2);
        assert_ne!(filters[0].port, filters[1].port);
        assert_ne!(port_name("c1", 0), port_name("c2", 0));

        let e = take_clean_traffic("c1", &xml(&BOUND.replace("10.0.0.5", "10.0.0.500")))
            .expect_err("bad address");
        assert!(e.to_string().contains("\"10.0.0.500\""), "{e}");
        let e = take_clean_traffic("c1", &xml(&BOUND.replace("52:54:00:AA:bb:01", "52:54:zz")))
            .expect_err("bad mac");
        assert!(e.to_string().contains("\"52:54:zz\""), "{e}");
    }
}
