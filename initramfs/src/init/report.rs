//! `/run/napalm/boot.json`: what was mounted, the network, the timings and napalm-init's
//! log, for the clone's register hook.

use crate::net::NetState;
use crate::rootspec::RootSpec;
use crate::timings::Timings;
use crate::union::Assembled;
use serde::Serialize;

#[derive(Serialize)]
struct BootReport<'a> {
    root: Option<String>,
    participants: &'a [(String, String)],
    overlay_options: &'a str,
    network: Option<NetReport>,
    timings: &'a Timings,
    /// napalm-init's console log, also when `quiet` kept it off the console.
    log: &'a [String],
}

#[derive(Serialize)]
struct NetReport {
    iface: String,
    addr: String,
    method: &'static str,
    gateway: Option<String>,
    dns: Vec<String>,
    hostname: Option<String>,
}

fn net_report(n: &NetState) -> NetReport {
    NetReport {
        iface: n.iface.clone(),
        addr: n.addr.to_string(),
        method: n.method,
        gateway: n.gateway.map(|g| g.to_string()),
        dns: n.dns.iter().map(|d| d.to_string()).collect(),
        hostname: n.hostname.clone(),
    }
}

/// The report as pretty JSON (empty if it cannot be serialised, which it always can).
pub(super) fn boot_json(
    root: &RootSpec,
    assembled: &Assembled,
    net: Option<&NetState>,
    tm: &Timings,
    log: &[String],
) -> String {
    let report = BootReport {
        root: Some(root.to_string()),
        participants: &assembled.participants,
        overlay_options: &assembled.overlay_options,
        network: net.map(net_report),
        timings: tm,
        log,
    };
    serde_json::to_string_pretty(&report).unwrap_or_default()
}
