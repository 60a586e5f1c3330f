//! OpenTelemetry: the same host and per-domain metrics as the Prometheus page
//! ([`crate::metrics`]), pushed to an OTLP/gRPC collector on a period. Off unless an
//! endpoint is configured.
//!
//! A task on the Tokio runtime takes one [`Sample`] per export interval (libvirt calls are
//! blocking and async, OpenTelemetry callbacks are neither); the observable instruments read
//! the latest one when the SDK's periodic reader collects. Instruments (all with the
//! attribute `domain` except the host ones): `napalm.host.cpus`, `napalm.host.memory`,
//! `napalm.host.memory.free`, `napalm.domain.cpu.time` (s, counter),
//! `napalm.domain.memory` (By), `napalm.domain.vcpus`, `napalm.domain.net.rx`,
//! `napalm.domain.net.tx`, `napalm.domain.disk.read`, `napalm.domain.disk.write` (By,
//! counters) and `napalm.domain.state` (1 for the state the domain is in, attribute `state`).
//! Resource: `service.name=napalm-agent`, `service.version`, `host.name`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use opentelemetry::metrics::{AsyncInstrument, Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::Resource;

use crate::core::Agent;
use crate::error::{AgentError, Result};
use crate::hypervisor::Stats;
use crate::metrics::Sample;

/// The service name in the OTLP resource.
pub const SERVICE_NAME: &str = "napalm-agent";

/// A running OTLP metrics exporter.
pub struct OtlpExporter {
    provider: SdkMeterProvider,
    sampler: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExporter").finish_non_exhaustive()
    }
}

impl OtlpExporter {
    /// Starts exporting to `endpoint` (e.g. `http://collector:4317`) every `every`; `None`
    /// when no endpoint is configured (OTLP is off). Must run inside a Tokio runtime.
    pub async fn start(
        agent: Arc<Agent>,
        endpoint: Option<&str>,
        every: Duration,
    ) -> Result<Option<Self>> {
        let Some(endpoint) = endpoint.map(str::trim).filter(|e| !e.is_empty()) else {
            return Ok(None);
        };
        if every.is_zero() {
            return Err(AgentError::invalid(
                "otlp-interval",
                "the OTLP export interval must be positive",
            ));
        }
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(every.max(Duration::from_secs(1)))
            .build()
            .map_err(|e| AgentError::invalid("otlp-endpoint", format!("{endpoint:?}: {e}")))?;
        let first = crate::metrics::sample(&agent).await;
        let hostname = first
            .host
            .as_ref()
            .map(|h| h.hostname.clone())
            .unwrap_or_default();
        let latest = Arc::new(RwLock::new(first));
        let resource = Resource::builder()
            .with_service_name(SERVICE_NAME)
            .with_attributes([
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("host.name", hostname),
                KeyValue::new("napalm.agent.id", agent.id().to_owned()),
            ])
            .build();
        let reader = PeriodicReader::builder(exporter)
            .with_interval(every)
            .build();
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader)
            .build();
        register(&provider.meter(SERVICE_NAME), &latest);
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let sampler = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = rx.wait_for(|s| *s) => break,
                }
                let s = crate::metrics::sample(&agent).await;
                if let Ok(mut l) = latest.write() {
                    *l = s;
                }
            }
        });
        tracing::info!(endpoint, ?every, "exporting metrics over OTLP/gRPC");
        Ok(Some(Self {
            provider,
            sampler,
            stop,
        }))
    }

    /// Stops sampling, flushes the last export and shuts the meter provider down.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.sampler.await;
        let provider = self.provider;
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "OTLP exporter shutdown failed"),
            Err(e) => tracing::warn!(error = %e, "OTLP exporter shutdown panicked"),
        }
    }
}

/// Reads the latest sample (an empty one if a writer panicked).
fn with_latest<T>(latest: &RwLock<Sample>, f: impl FnOnce(&Sample) -> T) -> T {
    match latest.read() {
        Ok(s) => f(&s),
        Err(_) => f(&Sample::default()),
    }
}

/// One per-domain u64 counter or gauge.
type DomainSeries = (
    &'static str,
    &'static str,
    &'static str,
    bool,
    fn(&Stats) -> u64,
);

/// Registers the observable instruments on `meter`, fed from `latest`.
fn register(meter: &Meter, latest: &Arc<RwLock<Sample>>) {
    type HostGetter = fn(&crate::hypervisor::HostFacts) -> u64;
    let host: [(&'static str, &'static str, &'static str, HostGetter); 3] = [
        (
            "napalm.host.cpus",
            "{cpu}",
            "Logical CPUs of the host.",
            |h| u64::from(h.cpus),
        ),
        ("napalm.host.memory", "By", "Host memory.", |h| {
            h.memory_bytes
        }),
        ("napalm.host.memory.free", "By", "Free host memory.", |h| {
            h.free_memory_bytes
        }),
    ];
    for (name, unit, help, get) in host {
        let l = Arc::clone(latest);
        meter
            .u64_observable_gauge(name)
            .with_unit(unit)
            .with_description(help)
            .with_callback(move |o: &dyn AsyncInstrument<u64>| {
                with_latest(&l, |s| {
                    if let Some(h) = &s.host {
                        o.observe(get(h), &[]);
                    }
                })
            })
            .build();
    }
    let l = Arc::clone(latest);
    meter
        .f64_observable_counter("napalm.domain.cpu.time")
        .with_unit("s")
        .with_description("Guest CPU time.")
        .with_callback(move |o: &dyn AsyncInstrument<f64>| {
            with_latest(&l, |s| {
                for (d, st) in &s.domains {
                    o.observe(
                        st.cpu_time_ns as f64 / 1e9,
                        &[KeyValue::new("domain", d.name.clone())],
                    );
                }
            })
        })
        .build();
    let series: [DomainSeries; 6] = [
        (
            "napalm.domain.memory",
            "By",
            "Memory assigned to the guest.",
            false,
            |s| s.memory_bytes,
        ),
        (
            "napalm.domain.vcpus",
            "{cpu}",
            "Virtual CPUs.",
            false,
            |s| u64::from(s.vcpus),
        ),
        ("napalm.domain.net.rx", "By", "Bytes received.", true, |s| {
            s.net_rx_bytes
        }),
        ("napalm.domain.net.tx", "By", "Bytes sent.", true, |s| {
            s.net_tx_bytes
        }),
        (
            "napalm.domain.disk.read",
            "By",
            "Bytes read from disks.",
            true,
            |s| s.disk_read_bytes,
        ),
        (
            "napalm.domain.disk.write",
            "By",
            "Bytes written to disks.",
            true,
            |s| s.disk_write_bytes,
        ),
    ];
    for (name, unit, help, counter, get) in series {
        let l = Arc::clone(latest);
        let cb = move |o: &dyn AsyncInstrument<u64>| {
            with_latest(&l, |s| {
                for (d, st) in &s.domains {
                    o.observe(get(st), &[KeyValue::new("domain", d.name.clone())]);
                }
            })
        };
        if counter {
            meter
                .u64_observable_counter(name)
                .with_unit(unit)
                .with_description(help)
                .with_callback(cb)
                .build();
        } else {
            meter
                .u64_observable_gauge(name)
                .with_unit(unit)
                .with_description(help)
                .with_callback(cb)
                .build();
        }
    }
    let l = Arc::clone(latest);
    meter
        .u64_observable_gauge("napalm.domain.state")
        .with_description("Current state of each domain (1 for the state it is in).")
        .with_callback(move |o: &dyn AsyncInstrument<u64>| {
            with_latest(&l, |s| {
                for (d, _) in &s.domains {
                    o.observe(
                        1,
                        &[
                            KeyValue::new("domain", d.name.clone()),
                            KeyValue::new("state", d.state.as_str()),
                        ],
                    );
                }
            })
        })
        .build();
}

/// A tracer provider that batches spans and exports them to the OTLP/gRPC collector at
/// `endpoint` under the resource `service.name=service` (the agent's own is
/// [`SERVICE_NAME`]); the gRPC spans of [`crate::grpc::trace`] go through it once a
/// `tracing_opentelemetry` layer over one of its tracers is in the subscriber. Must be
/// built inside a Tokio runtime (the exporter's channel is tonic's).
pub fn tracer_provider(
    endpoint: &str,
    service: &'static str,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider> {
    let endpoint = endpoint.trim();
    if endpoint.is_empty() {
        return Err(AgentError::invalid("otlp-endpoint", "empty endpoint"));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| AgentError::invalid("otlp-endpoint", format!("{endpoint:?}: {e}")))?;
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build())
}
