//! [`Firewall`] with nftables: one table `bridge napalm` shared by every agent of the
//! host. Its `input` and `forward` base chains (bridge filter priority) send each frame
//! through the `ports` verdict map, keyed by the input device, to the chain of its port
//! (`port-NAME`), so a frame costs one hash lookup however many ports there are. Each
//! apply or remove is one `nft -f -` transaction: it either all happens or none of it.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{Firewall, PortFilter};
use crate::error::{AgentError, Result};

/// The table every agent of the host shares.
pub const TABLE: &str = "bridge napalm";

/// Runs `nft`, in `netns` when given (through `nsenter --net=`).
#[derive(Debug, Clone)]
pub struct Nft {
    /// Network namespace of the hypervisor's tap devices (`None`: the agent's own).
    pub netns: Option<PathBuf>,
}

/// Statements that create the table, its map and its base chains if missing, and make
/// each base chain hold exactly its one dispatch rule.
fn base() -> String {
    format!(
        "add table {TABLE}\n\
add map {TABLE} ports {{ type ifname : verdict ; }}\n\
add chain {TABLE} input {{ type filter hook input priority -200 ; policy accept ; }}\n\
add chain {TABLE} forward {{ type filter hook forward priority -200 ; policy accept ; }}\n\
flush chain {TABLE} input\n\
flush chain {TABLE} forward\n\
add rule {TABLE} input iifname vmap @ports\n\
add rule {TABLE} forward iifname vmap @ports\n"
    )
}

/// The transaction installing (or replacing) `filters`' rules.
pub fn apply_script(filters: &[PortFilter]) -> String {
    let mut s = base();
    for f in filters {
        let (p, mac, ip) = (&f.port, &f.mac, f.ipv4);
        let chain = format!("{TABLE} port-{p}");
        s += &format!(
            "add chain {chain}\n\
flush chain {chain}\n\
add rule {chain} ether saddr != {mac} drop\n\
add rule {chain} ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept\n\
add rule {chain} ether type ip ip saddr != {ip} drop\n\
add rule {chain} ether type arp arp saddr ether != {mac} drop\n\
add rule {chain} ether type arp arp saddr ip != {{ 0.0.0.0, {ip} }} drop\n\
add rule {chain} ether type != {{ arp, ip }} drop\n\
add element {TABLE} ports {{ \"{p}\" : jump port-{p} }}\n"
        );
    }
    s
}

/// The transaction removing `ports`. Each is first added (a no-op when present) so that
/// removing a port that has no rules is not an error.
pub fn remove_script(ports: &[&str]) -> String {
    let mut s = format!("add table {TABLE}\nadd map {TABLE} ports {{ type ifname : verdict ; }}\n");
    for p in ports {
        let chain = format!("{TABLE} port-{p}");
        s += &format!(
            "add chain {chain}\n\
add element {TABLE} ports {{ \"{p}\" : jump port-{p} }}\n\
delete element {TABLE} ports {{ \"{p}\" }}\n\
flush chain {chain}\n\
delete chain {chain}\n"
        );
    }
    s
}

impl Nft {
    fn run(&self, script: &str) -> Result<()> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("nft");
                c
            }
            None => Command::new("nft"),
        };
        cmd.args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let shown = format!("{cmd:?}");
        let mut child = cmd.spawn().map_err(|e| {
            AgentError::PortFilter(format!(
                "could not run {shown}: {e} (install nftables, or run the agent with \
                 --port-filter libvirt)"
            ))
        })?;
        // A command that fails before reading its input (nsenter refused) breaks the
        // pipe: its exit status and message say more than the write's error.
        let written = child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(script.as_bytes()));
        let out = child
            .wait_with_output()
            .map_err(|e| AgentError::PortFilter(format!("waiting for {shown}: {e}")))?;
        if !out.status.success() {
            return Err(AgentError::PortFilter(format!(
                "{shown} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        if let Some(Err(e)) = written {
            return Err(AgentError::PortFilter(format!("writing to {shown}: {e}")));
        }
        Ok(())
    }
}

impl Firewall for Nft {
    fn apply(&self, filters: &[PortFilter]) -> Result<()> {
        if filters.is_empty() {
            return Ok(());
        }
        self.run(&apply_script(filters))
    }

    fn remove(&self, ports: &[&str]) -> Result<()> {
        if ports.is_empty() {
            return Ok(());
        }
        self.run(&remove_script(ports))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_gets_its_mac_its_address_and_nothing_else() {
        let f = PortFilter {
            port: "np0123456789abc".into(),
            mac: "52:54:00:aa:bb:01".into(),
            ipv4: "10.0.0.5".parse().expect("ip"),
        };
        let s = apply_script(std::slice::from_ref(&f));
        for line in [
            "add rule bridge napalm port-np0123456789abc ether saddr != 52:54:00:aa:bb:01 drop",
            "add rule bridge napalm port-np0123456789abc ether type ip ip saddr != 10.0.0.5 drop",
            "add rule bridge napalm port-np0123456789abc ether type arp arp saddr ip != { 0.0.0.0, 10.0.0.5 } drop",
            "add rule bridge napalm port-np0123456789abc ether type != { arp, ip } drop",
            "add element bridge napalm ports { \"np0123456789abc\" : jump port-np0123456789abc }",
            "add rule bridge napalm forward iifname vmap @ports",
        ] {
            assert!(s.lines().any(|l| l == line), "missing {line:?} in\n{s}");
        }
        let r = remove_script(&[&f.port]);
        assert!(
            r.ends_with("delete chain bridge napalm port-np0123456789abc\n"),
            "{r}"
        );
        assert_eq!(apply_script(&[]), base());
    }
}
