//! OpenTelemetry: the agent pushes its host and per-domain metrics to an OTLP/gRPC
//! collector (here a minimal `MetricsService` receiver in the test), and starts no exporter
//! without an endpoint.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point, NumberDataPoint};
use tonic::{Request, Response, Status};

use crate::common::*;

/// Every export request the receiver got.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<ExportMetricsServiceRequest>>>);

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        r: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.0.lock().expect("lock").push(r.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    fn count(&self) -> usize {
        self.0.lock().expect("lock").len()
    }

    /// Data points of metric `name` from resources with service.name=napalm-agent.
    fn points(&self, name: &str) -> Vec<NumberDataPoint> {
        let mut out = Vec::new();
        for req in self.0.lock().expect("lock").iter() {
            for rm in &req.resource_metrics {
                let attrs = rm
                    .resource
                    .as_ref()
                    .map(|r| r.attributes.as_slice())
                    .unwrap_or_default();
                if attr(attrs, "service.name").as_deref() != Some("napalm-agent") {
                    continue;
                }
                for sm in &rm.scope_metrics {
                    for m in sm.metrics.iter().filter(|m| m.name == name) {
                        match &m.data {
                            Some(Data::Gauge(g)) => out.extend(g.data_points.iter().cloned()),
                            Some(Data::Sum(s)) => out.extend(s.data_points.iter().cloned()),
                            _ => {}
                        }
                    }
                }
            }
        }
        out
    }

    /// The `host.name` of the first napalm-agent resource seen.
    fn host_name(&self) -> Option<String> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .flat_map(|r| r.resource_metrics.iter())
            .filter_map(|rm| rm.resource.as_ref())
            .find(|r| attr(&r.attributes, "service.name").as_deref() == Some("napalm-agent"))
            .and_then(|r| attr(&r.attributes, "host.name"))
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
}

fn int(p: &NumberDataPoint) -> Option<i64> {
    match p.value {
        Some(number_data_point::Value::AsInt(v)) => Some(v),
        _ => None,
    }
}

fn of_domain<'a>(
    points: &'a [NumberDataPoint],
    domain: &'a str,
) -> impl Iterator<Item = &'a NumberDataPoint> + 'a {
    points
        .iter()
        .filter(move |p| attr(&p.attributes, "domain").as_deref() == Some(domain))
}

#[tokio::test]
async fn otlp_is_off_without_an_endpoint() {
    let mut a = TestAgent::start(None).await;
    let agent = std::sync::Arc::clone(&a.running().agent);
    let none = napalm_agent::otel::OtlpExporter::start(agent, None, Duration::from_millis(500))
        .await
        .expect("no error without an endpoint");
    assert!(none.is_none(), "no endpoint: no exporter");
    let r = a.running.as_mut().expect("running");
    assert!(!r
        .start_otlp(None, Duration::from_millis(500))
        .await
        .expect("ok"));
    assert!(!r.otlp_enabled());
    a.stop().await;
}

#[tokio::test]
async fn otlp_exports_host_and_domain_metrics() {
    let rx = Receiver::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(rx.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(l),
                async {
                    let _ = stop_rx.await;
                },
            ),
    );

    let mut a = TestAgent::start(None).await;
    let on = a
        .running
        .as_mut()
        .expect("running")
        .start_otlp(Some(&format!("http://{addr}")), Duration::from_millis(500))
        .await
        .expect("exporter starts");
    assert!(on && a.running().otlp_enabled());
    // Created after the exporter started: the periodic sampling must pick it up.
    let r = a.put("/domain/m-otlp", test_archive("m-otlp")).await;
    assert!(r.status().is_success(), "create: {}", r.status());

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mem = rx.points("napalm.domain.memory");
        let state = rx.points("napalm.domain.state");
        let mem_ok = of_domain(&mem, "m-otlp").any(|p| int(p) == Some(64 << 20));
        let state_ok = of_domain(&state, "m-otlp").any(|p| {
            attr(&p.attributes, "state").as_deref() == Some("running") && int(p) == Some(1)
        });
        if mem_ok && state_ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no OTLP export of m-otlp within 20 s ({} requests received)",
            rx.count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(rx
        .points("napalm.host.cpus")
        .iter()
        .any(|p| int(p).is_some_and(|v| v > 0)));
    for name in [
        "napalm.domain.cpu.time",
        "napalm.domain.vcpus",
        "napalm.domain.net.rx",
        "napalm.domain.net.tx",
        "napalm.domain.disk.read",
        "napalm.domain.disk.write",
    ] {
        let pts = rx.points(name);
        assert!(
            of_domain(&pts, "m-otlp").next().is_some(),
            "{name} exported with domain=m-otlp"
        );
    }
    let host = a.running().agent.host().await.expect("host").hostname;
    assert_eq!(rx.host_name().as_deref(), Some(host.as_str()));

    // Stopping the agent flushes a last export.
    let before = rx.count();
    a.stop().await;
    assert!(
        rx.count() > before,
        "shutdown flushed a final export ({before} before)"
    );
    let _ = stop_tx.send(());
    let _ = server.await;
}
