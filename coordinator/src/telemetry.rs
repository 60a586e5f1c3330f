//! Distributed tracing of deploys over OpenTelemetry: [`tracer_provider`] exports the
//! coordinator's spans to an OTLP/gRPC collector (`--otlp-endpoint`), and
//! [`inject_current`] writes the current span's W3C `traceparent` into the metadata of a
//! call to an agent (the agent's connections do it on every call, see
//! [`crate::deploy::ship::Auth`]), so the agent's spans join the deploy's trace.
//!
//! The spans themselves are `tracing` spans (a `tracing_opentelemetry` layer in the
//! binary's subscriber turns them into OpenTelemetry spans): `deploy` (attribute
//! `napalm.deployment`), a `clone` per clone (`napalm.clone`) under it, and under each
//! clone its phases `place`, `layer`, `ship`, `create`, and `boot` then `register` when
//! the deploy waits for the clone to register.

use std::time::Duration;

use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The service name in the OTLP resource of the coordinator's spans.
pub const SERVICE_NAME: &str = "napalm-coordinator";

/// A span exporter that could not be built.
#[derive(Debug, thiserror::Error)]
#[error("OTLP endpoint {endpoint:?}: {reason}")]
pub struct TelemetryError {
    /// The endpoint as given.
    pub endpoint: String,
    /// Why it was refused.
    pub reason: String,
}

/// A tracer provider batching spans to the OTLP/gRPC collector at `endpoint`
/// (`http://host:4317`) under `service.name=service`. Must be built inside a Tokio
/// runtime; shut it down (on a blocking thread) to flush the last batch.
pub fn tracer_provider(
    endpoint: &str,
    service: &'static str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let endpoint = endpoint.trim();
    if endpoint.is_empty() {
        return Err(TelemetryError {
            endpoint: endpoint.into(),
            reason: "empty".into(),
        });
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| TelemetryError {
            endpoint: endpoint.into(),
            reason: e.to_string(),
        })?;
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build())
}

/// Writes propagation fields into gRPC metadata (invalid keys or values are skipped).
struct Metadata<'a>(&'a mut MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Adds the W3C `traceparent` (and `tracestate`) of the current `tracing` span to
/// `metadata`; nothing when no OpenTelemetry layer records spans (no valid context).
pub fn inject_current(metadata: &mut MetadataMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut Metadata(metadata));
}
