//! [`RpcMetricsLayer`]: a `tower` layer on the tonic server that times every gRPC request
//! per method, from the request's arrival to the response head, and counts it by its
//! status code (`grpc-status` of a trailers-only answer — every error a handler returns
//! before streaming; `OK` otherwise). Method names come from a fixed list, so a caller
//! cannot create series by sending made-up paths (they count as `other`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;

use super::Metrics;

/// The `napalm.v1.CoordinatorService` methods, as labelled.
pub const METHODS: &[&str] = &[
    "RegisterAgent",
    "Heartbeat",
    "ListAgents",
    "GetAgent",
    "SetAgentState",
    "Deploy",
    "Undeploy",
    "ListDeployments",
    "GetDeployment",
    "ListClones",
    "GetClone",
    "RegisterClone",
    "WatchEvents",
    "Rollout",
];

const SERVICE: &str = "napalm.v1.CoordinatorService";

/// The method label of a request path (`/napalm.v1.CoordinatorService/Deploy` → `Deploy`).
pub fn method_of(path: &str) -> &'static str {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(SERVICE))
        .and_then(|p| p.strip_prefix('/'))
        .and_then(|m| METHODS.iter().find(|k| **k == m).copied())
        .unwrap_or("other")
}

/// The status code label of a response head.
pub fn code_of(headers: &http::HeaderMap) -> &'static str {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from);
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Times and counts every request of the service it wraps into [`Metrics`].
#[derive(Clone, Debug)]
pub struct RpcMetricsLayer {
    metrics: Metrics,
}

impl RpcMetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] wraps around another.
#[derive(Clone, Debug)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_of(req.uri().path());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let r = answer.await;
            let code = match &r {
                Ok(resp) => code_of(resp.headers()),
                Err(_) => "TRANSPORT_ERROR",
            };
            metrics.rpc(method, code, started.elapsed());
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_the_contract_is_labelled() {
        let proto = include_str!("../../../proto/napalm/v1/coordinator.proto");
        let declared: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .filter_map(|l| l.split('(').next())
            .map(str::trim)
            .collect();
        assert_eq!(declared, METHODS);
        assert_eq!(method_of("/napalm.v1.CoordinatorService/Deploy"), "Deploy");
        assert_eq!(method_of("/napalm.v1.CoordinatorService/Nope"), "other");
        assert_eq!(method_of("/x.Y/Deploy"), "other");
    }

    #[test]
    fn codes_come_from_trailers_only_answers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(code_of(&h), "OK");
        h.insert("grpc-status", http::HeaderValue::from_static("16"));
        assert_eq!(code_of(&h), "UNAUTHENTICATED");
        h.insert("grpc-status", http::HeaderValue::from_static("junk"));
        assert_eq!(code_of(&h), "OK");
    }
}
