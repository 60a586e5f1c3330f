//! Ganglia gmond-compatible XML on a TCP port: an unmodified `gmetad` polls the agent as a
//! `data_source` (thesis 3.3.4). The host is one `<HOST>` with the standard gmond metric
//! names (`cpu_num`, `mem_total`, `mem_free`, ...); each running domain this agent owns is
//! another `<HOST>` (the thesis's clones) with its CPU time, memory, I/O and state. Counters
//! (slope `positive`: CPU time in ms, bytes) are whole numbers, as gmetad's RRD COUNTERs
//! require (rrdtool refuses `5.53`: "not a simple unsigned integer").
//!
//! The host is named as gmond names it, by this process's own host name (the agents of a
//! grid on one machine share a libvirtd, and so libvirt's host name; each has its own UTS
//! name), falling back to libvirt's. Each clone also carries OpenTelemetry's host resource
//! attributes as constant string metrics (group `resource`), so a dashboard can tell the
//! clones apart the way an OTel collector would: `host.name` (the clone's name), `host.id`
//! (the domain's UUID, which the guest reads as its SMBIOS system UUID), `host.image.id`
//! (the digest of the shared root the clone mounts, from the domain's `root` label, which
//! the coordinator computes beside the NFS server; without it the sha256 of the image the
//! clone boots, its `initrd.img` artifact), and Napalm's own `napalm.deployment`,
//! `napalm.clone` (the domain's labels) and `napalm.agent` (this agent's id).

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use crate::core::{Agent, DomainView};
use crate::error::{AgentError, Result};
use crate::hypervisor::Stats;
use crate::rest::render::esc;

fn metric(
    o: &mut String,
    name: &str,
    val: impl std::fmt::Display,
    ty: &str,
    units: &str,
    slope: &str,
    group: &str,
) {
    let _ = writeln!(
        o,
        "<METRIC NAME=\"{name}\" VAL=\"{val}\" TYPE=\"{ty}\" UNITS=\"{units}\" TN=\"0\" TMAX=\"60\" DMAX=\"0\" SLOPE=\"{slope}\" SOURCE=\"gmond\">\
         <EXTRA_DATA><EXTRA_ELEMENT NAME=\"GROUP\" VAL=\"{group}\"/></EXTRA_DATA></METRIC>"
    );
}

/// A constant string metric (gmond's `TYPE="string"`, slope zero).
fn string_metric(o: &mut String, name: &str, val: &str, group: &str) {
    let _ = writeln!(
        o,
        "<METRIC NAME=\"{}\" VAL=\"{}\" TYPE=\"string\" UNITS=\"\" TN=\"0\" TMAX=\"60\" DMAX=\"0\" SLOPE=\"zero\" SOURCE=\"gmond\">\
         <EXTRA_DATA><EXTRA_ELEMENT NAME=\"GROUP\" VAL=\"{group}\"/></EXTRA_DATA></METRIC>",
        esc(name),
        esc(val)
    );
}

/// What the document says about the agent's own host.
#[derive(Debug, Clone, Default)]
pub struct HostPart {
    /// The `<HOST NAME>`.
    pub name: String,
    /// Logical CPUs.
    pub cpus: u32,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// Free memory, bytes.
    pub free_memory_bytes: u64,
    /// Domains running.
    pub running: usize,
}

/// The OpenTelemetry host resource attributes and Napalm's of domain `d` run by agent
/// `agent_id`, in order.
pub fn resource_attributes(d: &DomainView, agent_id: &str) -> Vec<(&'static str, String)> {
    let mut a = vec![("host.name", d.name.clone()), ("host.id", d.uuid.clone())];
    if let Some(root) = d.labels.get("root").filter(|r| !r.is_empty()) {
        a.push(("host.image.id", root.clone()));
    } else if let Some(img) = d.artifacts.iter().find(|x| x.name == "initrd.img") {
        a.push(("host.image.id", format!("sha256:{}", img.blob.sha256)));
    }
    for (label, attr) in [
        ("deployment", "napalm.deployment"),
        ("clone", "napalm.clone"),
    ] {
        if let Some(v) = d.labels.get(label) {
            a.push((attr, v.clone()));
        }
    }
    a.push(("napalm.agent", agent_id.to_owned()));
    a
}

/// The XML document gmetad reads.
pub async fn document(agent: &Agent, cluster: &str, started: u64) -> String {
    let now = agent.clock().unix_ms() / 1000;
    let host = match agent.host().await {
        Ok(h) => Some(HostPart {
            // The UTS host name (`Agent::host`), so agents sharing a libvirtd are apart.
            name: h.hostname,
            cpus: h.cpus,
            memory_bytes: h.memory_bytes,
            free_memory_bytes: h.free_memory_bytes,
            running: agent
                .list(false)
                .await
                .map(|l| l.iter().filter(|d| d.state.is_active()).count())
                .unwrap_or(0),
        }),
        Err(_) => None,
    };
    let domains = agent.all_stats().await.unwrap_or_default();
    render(cluster, now, started, host.as_ref(), &domains, agent.id())
}

/// The document for `host` and `domains` (inactive ones left out) at `now`.
pub fn render(
    cluster: &str,
    now: u64,
    started: u64,
    host: Option<&HostPart>,
    domains: &[(DomainView, Stats)],
    agent_id: &str,
) -> String {
    let mut o = String::from("<?xml version=\"1.0\" encoding=\"ISO-8859-1\" standalone=\"yes\"?>\n<GANGLIA_XML VERSION=\"3.7.2\" SOURCE=\"gmond\">\n");
    let _ = writeln!(o, "<CLUSTER NAME=\"{}\" LOCALTIME=\"{now}\" OWNER=\"napalm\" LATLONG=\"unspecified\" URL=\"unspecified\">", esc(cluster));
    if let Some(h) = host {
        let _ = writeln!(o, "<HOST NAME=\"{}\" IP=\"127.0.0.1\" TAGS=\"napalm-agent\" REPORTED=\"{now}\" TN=\"0\" TMAX=\"20\" DMAX=\"0\" LOCATION=\"unspecified\" GMOND_STARTED=\"{started}\">", esc(&h.name));
        metric(&mut o, "cpu_num", h.cpus, "uint16", "CPUs", "zero", "cpu");
        metric(
            &mut o,
            "mem_total",
            h.memory_bytes / 1024,
            "float",
            "KB",
            "zero",
            "memory",
        );
        metric(
            &mut o,
            "mem_free",
            h.free_memory_bytes / 1024,
            "float",
            "KB",
            "both",
            "memory",
        );
        metric(
            &mut o,
            "napalm_domains_running",
            h.running,
            "uint32",
            "domains",
            "both",
            "napalm",
        );
        string_metric(&mut o, "napalm.agent", agent_id, "resource");
        o += "</HOST>\n";
    }
    for (d, s) in domains {
        if !d.state.is_active() {
            continue;
        }
        let _ = writeln!(o, "<HOST NAME=\"{}\" IP=\"0.0.0.0\" TAGS=\"napalm-domain\" REPORTED=\"{now}\" TN=\"0\" TMAX=\"20\" DMAX=\"0\" LOCATION=\"unspecified\" GMOND_STARTED=\"{started}\">", esc(&d.name));
        metric(&mut o, "cpu_num", s.vcpus, "uint16", "CPUs", "zero", "cpu");
        // Counters (slope positive) become RRD COUNTERs in gmetad, which take unsigned
        // integers only: CPU time in whole milliseconds (graphed as ms per second).
        metric(
            &mut o,
            "vm_cpu_time",
            s.cpu_time_ns / 1_000_000,
            "double",
            "ms",
            "positive",
            "cpu",
        );
        metric(
            &mut o,
            "mem_total",
            s.memory_bytes / 1024,
            "float",
            "KB",
            "zero",
            "memory",
        );
        metric(
            &mut o,
            "vm_net_rx_bytes",
            s.net_rx_bytes,
            "double",
            "bytes",
            "positive",
            "network",
        );
        metric(
            &mut o,
            "vm_net_tx_bytes",
            s.net_tx_bytes,
            "double",
            "bytes",
            "positive",
            "network",
        );
        metric(
            &mut o,
            "vm_disk_read_bytes",
            s.disk_read_bytes,
            "double",
            "bytes",
            "positive",
            "disk",
        );
        metric(
            &mut o,
            "vm_disk_write_bytes",
            s.disk_write_bytes,
            "double",
            "bytes",
            "positive",
            "disk",
        );
        for (k, v) in resource_attributes(d, agent_id) {
            string_metric(&mut o, k, &v, "resource");
        }
        let _ = writeln!(o, "<METRIC NAME=\"vm_state\" VAL=\"{}\" TYPE=\"string\" UNITS=\"\" TN=\"0\" TMAX=\"60\" DMAX=\"0\" SLOPE=\"zero\" SOURCE=\"gmond\"><EXTRA_DATA><EXTRA_ELEMENT NAME=\"GROUP\" VAL=\"napalm\"/></EXTRA_DATA></METRIC>", d.state.as_str());
        o += "</HOST>\n";
    }
    o + "</CLUSTER>\n</GANGLIA_XML>\n"
}

/// The cluster name reported unless `--ganglia-cluster` names another.
pub const DEFAULT_CLUSTER: &str = "napalm";

/// Serves the document to every connection, as gmond's `tcp_accept_channel` does.
pub async fn serve(
    agent: Arc<Agent>,
    addr: SocketAddr,
    cluster: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| AgentError::io(addr.to_string(), e))?;
    let bound = l.local_addr().map_err(|e| AgentError::io("ganglia", e))?;
    let started = agent.clock().unix_ms() / 1000;
    let mut stop = stop;
    let task = tokio::spawn(async move {
        loop {
            let (mut sock, peer) = tokio::select! {
                r = l.accept() => match r { Ok(x) => x, Err(e) => { tracing::warn!(error = %e, "ganglia accept failed"); continue; } },
                _ = stop.wait_for(|s| *s) => break,
            };
            let doc = document(&agent, &cluster, started).await;
            tokio::spawn(async move {
                if let Err(e) = sock.write_all(doc.as_bytes()).await {
                    tracing::debug!(%peer, error = %e, "ganglia client went away");
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::BlobId;
    use crate::domain_store::{ArtifactRecord, RestartPolicy};
    use crate::hypervisor::RunState;

    fn domain(name: &str, state: RunState) -> DomainView {
        DomainView {
            name: name.into(),
            uuid: "6f1c2a0e-0000-4000-8000-00000000000a".into(),
            state,
            desired: Some(RunState::Running),
            owned: true,
            restart: RestartPolicy::Never,
            labels: [
                ("deployment".to_owned(), "dep".to_owned()),
                ("clone".to_owned(), name.to_owned()),
            ]
            .into(),
            files: vec![],
            artifacts: vec![
                ArtifactRecord {
                    name: "vmlinuz".into(),
                    blob: BlobId {
                        sha256: "1".repeat(64),
                        size: 1,
                    },
                    writable: false,
                },
                ArtifactRecord {
                    name: "initrd.img".into(),
                    blob: BlobId {
                        sha256: "ab".repeat(32),
                        size: 2,
                    },
                    writable: false,
                },
            ],
            vcpus: 1,
            memory_bytes: 256 << 20,
            created_at_ms: 0,
            libvirt_id: Some(3),
            stats: None,
        }
    }

    /// `host`'s string metrics (name → value) in `doc`, parsed as XML.
    fn strings(doc: &str, host: &str) -> Vec<(String, String)> {
        let x = roxmltree::Document::parse(doc).expect("the document is XML");
        let h = x
            .descendants()
            .find(|n| n.has_tag_name("HOST") && n.attribute("NAME") == Some(host))
            .unwrap_or_else(|| panic!("no HOST {host} in {doc}"));
        h.children()
            .filter(|m| m.has_tag_name("METRIC") && m.attribute("TYPE") == Some("string"))
            .map(|m| {
                (
                    m.attribute("NAME").unwrap_or_default().to_owned(),
                    m.attribute("VAL").unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn clones_carry_otel_host_attributes_and_napalm_ones() {
        let host = HostPart {
            name: "agent1".into(),
            cpus: 2,
            memory_bytes: 4 << 30,
            free_memory_bytes: 1 << 30,
            running: 1,
        };
        let domains = vec![
            (domain("dep-01", RunState::Running), Stats::default()),
            (domain("dep-02", RunState::Shutoff), Stats::default()),
        ];
        let doc = render("napalm", 100, 50, Some(&host), &domains, "agent-id-1");
        let s = strings(&doc, "dep-01");
        let want: Vec<(String, String)> = [
            ("host.name", "dep-01".to_owned()),
            ("host.id", "6f1c2a0e-0000-4000-8000-00000000000a".to_owned()),
            ("host.image.id", format!("sha256:{}", "ab".repeat(32))),
            ("napalm.deployment", "dep".to_owned()),
            ("napalm.clone", "dep-01".to_owned()),
            ("napalm.agent", "agent-id-1".to_owned()),
            ("vm_state", "running".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(s, want, "{doc}");
        // The agent's host says which agent it is; a domain not running is not a node.
        assert_eq!(
            strings(&doc, "agent1"),
            vec![("napalm.agent".to_owned(), "agent-id-1".to_owned())]
        );
        assert!(!doc.contains("dep-02"), "{doc}");
        // Every attribute is in the `resource` group, as gmetad keeps it.
        assert_eq!(doc.matches("VAL=\"resource\"").count(), 7, "{doc}");
        // A domain whose shared root the coordinator digested: that is its image.
        let mut rooted = domain("dep-03", RunState::Running);
        let root = format!("sha256:{}", "cd".repeat(32));
        rooted.labels.insert("root".to_owned(), root.clone());
        let attrs = resource_attributes(&rooted, "agent-id-1");
        assert!(attrs.contains(&("host.image.id", root)), "{attrs:?}");
        assert_eq!(
            attrs.iter().filter(|(k, _)| *k == "host.image.id").count(),
            1
        );
    }

    #[test]
    fn counters_are_unsigned_integers_as_rrd_counters_need() {
        let stats = Stats {
            cpu_time_ns: 5_530_000_123,
            memory_bytes: 256 << 20,
            vcpus: 1,
            net_rx_bytes: 1_663_080,
            net_tx_bytes: 7,
            disk_read_bytes: 0,
            disk_write_bytes: 9,
        };
        let doc = render(
            "napalm",
            1,
            1,
            None,
            &[(domain("c", RunState::Running), stats)],
            "id",
        );
        let x = roxmltree::Document::parse(&doc).expect("XML");
        let counters: Vec<(&str, &str)> = x
            .descendants()
            .filter(|m| m.has_tag_name("METRIC") && m.attribute("SLOPE") == Some("positive"))
            .map(|m| {
                (
                    m.attribute("NAME").unwrap_or_default(),
                    m.attribute("VAL").unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(counters.len(), 5, "{doc}");
        for (name, val) in &counters {
            assert!(
                val.parse::<u64>().is_ok(),
                "{name}={val} is not an unsigned integer"
            );
        }
        assert!(counters.contains(&("vm_cpu_time", "5530")), "{counters:?}");
    }

    #[test]
    fn values_are_escaped() {
        let mut d = domain("a<b", RunState::Running);
        d.labels.insert("deployment".into(), "x\"&y".into());
        let doc = render("c&d", 1, 1, None, &[(d, Stats::default())], "id");
        let s = strings(&doc, "a<b");
        assert!(
            s.contains(&("napalm.deployment".into(), "x\"&y".into())),
            "{doc}"
        );
    }
}
