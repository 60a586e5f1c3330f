//! Metrics: host and per-domain counters and states as a Prometheus text page (`/metrics`).

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::rest::AppState;

/// Installs the `/metrics` renderer into the REST state.
pub fn attach(mut s: AppState) -> AppState {
    let agent = Arc::clone(&s.agent);
    let counters = Arc::clone(&s.counters);
    s.metrics = Some(Arc::new(move || {
        let agent = Arc::clone(&agent);
        let counters = Arc::clone(&counters);
        Box::pin(async move {
            let mut out = String::new();
            let _ = writeln!(out, "# HELP napalm_http_requests_total REST requests served, by method.\n# TYPE napalm_http_requests_total counter");
            for (m, c) in [
                ("GET", &counters.get),
                ("PUT", &counters.put),
                ("POST", &counters.post),
                ("DELETE", &counters.delete),
                ("OTHER", &counters.other),
            ] {
                let _ = writeln!(
                    out,
                    "napalm_http_requests_total{{method=\"{m}\"}} {}",
                    c.load(Ordering::Relaxed)
                );
            }
            out += &render(&agent).await;
            out
        })
    }));
    s
}

/// Name, type, help and getter of one per-domain series.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::hypervisor::Stats) -> u64,
);

/// One reading of the host and of every domain this agent owns: what both the Prometheus
/// page and the OTLP exporter ([`crate::otel`]) report.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Host facts (`None` when libvirt could not be asked).
    pub host: Option<crate::hypervisor::HostFacts>,
    /// Each owned domain with its counters (zero while it is not active).
    pub domains: Vec<(crate::core::DomainView, crate::hypervisor::Stats)>,
}

/// Samples the host and the per-domain counters once.
pub async fn sample(agent: &crate::core::Agent) -> Sample {
    Sample {
        host: agent.host().await.ok(),
        domains: agent.all_stats().await.unwrap_or_default(),
    }
}

/// Host and domain metrics in Prometheus text format.
pub async fn render(agent: &crate::core::Agent) -> String {
    format_sample(&sample(agent).await)
}

/// Formats one [`Sample`] as Prometheus text.
pub fn format_sample(sample: &Sample) -> String {
    let mut o = String::new();
    if let Some(h) = &sample.host {
        let _ = writeln!(o, "# HELP napalm_host_cpus Logical CPUs of the host.\n# TYPE napalm_host_cpus gauge\nnapalm_host_cpus {}", h.cpus);
        let _ = writeln!(o, "# HELP napalm_host_memory_bytes Host memory.\n# TYPE napalm_host_memory_bytes gauge\nnapalm_host_memory_bytes {}", h.memory_bytes);
        let _ = writeln!(o, "# HELP napalm_host_free_memory_bytes Free host memory.\n# TYPE napalm_host_free_memory_bytes gauge\nnapalm_host_free_memory_bytes {}", h.free_memory_bytes);
    }
    let all = &sample.domains;
    let gauges: [Series; 7] = [
        (
            "napalm_domain_cpu_time_seconds_total",
            "counter",
            "Guest CPU time.",
            |s| s.cpu_time_ns,
        ),
        (
            "napalm_domain_memory_bytes",
            "gauge",
            "Memory assigned to the guest.",
            |s| s.memory_bytes,
        ),
        ("napalm_domain_vcpus", "gauge", "Virtual CPUs.", |s| {
            u64::from(s.vcpus)
        }),
        (
            "napalm_domain_net_rx_bytes_total",
            "counter",
            "Bytes received.",
            |s| s.net_rx_bytes,
        ),
        (
            "napalm_domain_net_tx_bytes_total",
            "counter",
            "Bytes sent.",
            |s| s.net_tx_bytes,
        ),
        (
            "napalm_domain_disk_read_bytes_total",
            "counter",
            "Bytes read from disks.",
            |s| s.disk_read_bytes,
        ),
        (
            "napalm_domain_disk_write_bytes_total",
            "counter",
            "Bytes written to disks.",
            |s| s.disk_write_bytes,
        ),
    ];
    for (name, kind, help, f) in gauges {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (d, s) in all {
            let v = f(s);
            if name.contains("cpu_time") {
                let _ = writeln!(o, "{name}{{domain=\"{}\"}} {}", d.name, v as f64 / 1e9);
            } else {
                let _ = writeln!(o, "{name}{{domain=\"{}\"}} {v}", d.name);
            }
        }
    }
    let _ = writeln!(o, "# HELP napalm_domain_state Current state of each domain (1 for the state it is in).\n# TYPE napalm_domain_state gauge");
    for (d, _) in all {
        let _ = writeln!(
            o,
            "napalm_domain_state{{domain=\"{}\",state=\"{}\"}} 1",
            d.name,
            d.state.as_str()
        );
    }
    o
}
