//! Distributed tracing of gRPC calls: [`TraceLayer`] wraps every request the agent serves
//! in a span (`agent <Method>`, e.g. `agent CreateDomain`) whose parent is the W3C
//! `traceparent` the caller sent in its metadata, so the spans of an agent (and those of
//! the handlers under them) join the coordinator's deploy trace when both export to the
//! same OTLP collector. Without a traceparent the span starts a trace of its own.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::codegen::http;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The tower layer of [`Traced`] services.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceLayer;

impl<S> tower::Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced { inner }
    }
}

/// A gRPC service whose calls run in a span parented by the caller's traceparent.
#[derive(Clone, Debug)]
pub struct Traced<S> {
    inner: S,
}

/// Reads propagation fields from HTTP/2 headers (gRPC metadata).
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

impl<S, B> tower::Service<http::Request<B>> for Traced<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // `/napalm.v1.AgentService/CreateDomain` → `CreateDomain`.
        let path = req.uri().path();
        let method = path.rsplit('/').next().unwrap_or(path).to_owned();
        let span = tracing::info_span!(
            "agent",
            otel.name = %format!("agent {method}"),
            rpc.method = %method,
            rpc.service = "napalm.v1.AgentService",
        );
        let parent = TraceContextPropagator::new().extract(&Headers(req.headers()));
        // Only a remote parent that carries a valid span context; an empty one would cut
        // the span off from the current (in-process) parent for nothing.
        if opentelemetry::trace::TraceContextExt::span(&parent)
            .span_context()
            .is_valid()
        {
            let _ = span.set_parent(parent);
        }
        Box::pin(self.inner.call(req).instrument(span))
    }
}
