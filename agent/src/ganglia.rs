//! Ganglia gmond-compatible XML on a TCP port: an unmodified `gmetad` polls the agent as a
//! `data_source` (thesis 3.3.4). The host is one `<HOST>` with the standard gmond metric
//! names (`cpu_num`, `mem_total`, `mem_free`, ...); each running domain this agent owns is
//! another `<HOST>` (the thesis's clones) with its CPU time, memory, I/O and state.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use crate::core::Agent;
use crate::error::{AgentError, Result};
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

/// The XML document gmetad reads.
pub async fn document(agent: &Agent, cluster: &str, started: u64) -> String {
    let now = agent.clock().unix_ms() / 1000;
    let mut o = String::from("<?xml version=\"1.0\" encoding=\"ISO-8859-1\" standalone=\"yes\"?>\n<GANGLIA_XML VERSION=\"3.7.2\" SOURCE=\"gmond\">\n");
    let _ = writeln!(o, "<CLUSTER NAME=\"{}\" LOCALTIME=\"{now}\" OWNER=\"napalm\" LATLONG=\"unspecified\" URL=\"unspecified\">", esc(cluster));
    if let Ok(h) = agent.host().await {
        let _ = writeln!(o, "<HOST NAME=\"{}\" IP=\"127.0.0.1\" TAGS=\"napalm-agent\" REPORTED=\"{now}\" TN=\"0\" TMAX=\"20\" DMAX=\"0\" LOCATION=\"unspecified\" GMOND_STARTED=\"{started}\">", esc(&h.hostname));
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
        let n = agent
            .list(false)
            .await
            .map(|l| l.iter().filter(|d| d.state.is_active()).count())
            .unwrap_or(0);
        metric(
            &mut o,
            "napalm_domains_running",
            n,
            "uint32",
            "domains",
            "both",
            "napalm",
        );
        o += "</HOST>\n";
    }
    for (d, s) in agent.all_stats().await.unwrap_or_default() {
        if !d.state.is_active() {
            continue;
        }
        let _ = writeln!(o, "<HOST NAME=\"{}\" IP=\"0.0.0.0\" TAGS=\"napalm-domain\" REPORTED=\"{now}\" TN=\"0\" TMAX=\"20\" DMAX=\"0\" LOCATION=\"unspecified\" GMOND_STARTED=\"{started}\">", esc(&d.name));
        metric(&mut o, "cpu_num", s.vcpus, "uint16", "CPUs", "zero", "cpu");
        metric(
            &mut o,
            "vm_cpu_time",
            s.cpu_time_ns as f64 / 1e9,
            "double",
            "s",
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
        let _ = writeln!(o, "<METRIC NAME=\"vm_state\" VAL=\"{}\" TYPE=\"string\" UNITS=\"\" TN=\"0\" TMAX=\"60\" DMAX=\"0\" SLOPE=\"zero\" SOURCE=\"gmond\"><EXTRA_DATA><EXTRA_ELEMENT NAME=\"GROUP\" VAL=\"napalm\"/></EXTRA_DATA></METRIC>", d.state.as_str());
        o += "</HOST>\n";
    }
    o + "</CLUSTER>\n</GANGLIA_XML>\n"
}

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
