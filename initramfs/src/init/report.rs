//! `/run/napalm/boot.json`: what was mounted, the network, the timings and napalm-init's
//! log, for the clone's register hook; for a clone restored from a template, `"template":
//! true` and when it was restored (`"restored_at_s"`, guest uptime).

use super::template::Restored;
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
    /// Restored from a template snapshot (`napalm.template`): everything before
    /// `restored_at_s` ran in the template, not in this clone.
    template: bool,
    /// Guest uptime when the template said it was ready (restored boots only).
    #[serde(skip_serializing_if = "Option::is_none")]
    template_ready_at_s: Option<f64>,
    /// Guest uptime when the identity was seen, just after the restore (restored boots
    /// only).
    #[serde(skip_serializing_if = "Option::is_none")]
    restored_at_s: Option<f64>,
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
    restored: Option<Restored>,
) -> String {
    let report = BootReport {
        root: Some(root.to_string()),
        participants: &assembled.participants,
        overlay_options: &assembled.overlay_options,
        network: net.map(net_report),
        timings: tm,
        log,
        template: restored.is_some(),
        template_ready_at_s: restored.map(|r| r.ready_at),
        restored_at_s: restored.map(|r| r.restored_at),
    };
    serde_json::to_string_pretty(&report).unwrap_or_default()
}
