//! Helpers shared by the coordinator tests and benches.

use napalm_coordinator::service::Coordinator;
use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use napalm_proto::v1::coordinator_service_server::CoordinatorServiceServer;
use tonic::transport::Channel;

/// Serves `svc` on an ephemeral loopback port (for the rest of the test) and connects.
pub async fn serve(svc: Coordinator) -> CoordinatorServiceClient<Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CoordinatorServiceServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    CoordinatorServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the coordinator")
}

/// `s` with every byte outside URL-unreserved characters percent-encoded.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
