//! The plain gRPC listener (`--insecure-plain`): the API behind a bearer token, for
//! trials and tests.

use napalm_proto::trust_v1::trust_service_server::TrustServiceServer;
use napalm_proto::v1::coordinator_service_server::CoordinatorServiceServer;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use super::{ApiAuth, ServeConfig};
use crate::service::{Coordinator, RequireToken};

/// Serves the API on the plain gRPC listener (`--insecure-plain`), behind the bearer
/// token of [`ServeConfig::api_auth`].
pub(super) fn serve_plain(
    grpc_listener: tokio::net::TcpListener,
    svc: Coordinator,
    api_trust: Option<TrustServiceServer<crate::trust::service::TrustServer>>,
    cfg: &ServeConfig,
    metrics: crate::metrics::Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<Result<(), tonic::transport::Error>> {
    if !cfg.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %cfg.listen,
            "serving the gRPC API WITHOUT TLS (--insecure-plain): tokens travel in clear"
        );
    }
    let incoming = TcpListenerStream::new(grpc_listener);
    let mut builder = tonic::transport::Server::builder()
        .layer(crate::metrics::layer::RpcMetricsLayer::new(metrics));
    match cfg.api_auth.clone() {
        ApiAuth::Token(t) => {
            let viewer = cfg.viewer_token.clone();
            tokio::spawn(
                builder
                    .add_service(
                        RequireToken::new(CoordinatorServiceServer::new(svc), t.clone())
                            .with_viewer(viewer.clone()),
                    )
                    .add_optional_service(
                        api_trust.map(|s| RequireToken::new(s, t).with_viewer(viewer)),
                    )
                    .serve_with_incoming_shutdown(incoming, shutdown),
            )
        }
        ApiAuth::Insecure => {
            tracing::warn!(
                "serving the gRPC API WITHOUT authentication: anyone who reaches it can \
                 deploy and undeploy"
            );
            tokio::spawn(
                builder
                    .add_service(CoordinatorServiceServer::new(svc))
                    .add_optional_service(api_trust)
                    .serve_with_incoming_shutdown(incoming, shutdown),
            )
        }
        ApiAuth::Record(seen) => {
            let record = move |r: tonic::Request<()>| {
                let v = r
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                seen.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                Ok(r)
            };
            tokio::spawn(
                builder
                    .add_service(CoordinatorServiceServer::with_interceptor(svc, record))
                    .add_optional_service(api_trust)
                    .serve_with_incoming_shutdown(incoming, shutdown),
            )
        }
    }
}
