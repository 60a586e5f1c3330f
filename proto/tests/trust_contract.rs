//! Contract round trip of `napalm.trust.v1.TrustService`: a real tonic server and client
//! over loopback exchange every RPC with every field set; the server checks what arrived
//! equals what was sent and the client checks the answers the same way. (The package is
//! apart from `napalm.v1`, whose field coverage `tests/contract` checks.)

use std::net::SocketAddr;

use napalm_proto::trust_v1::trust_service_client::TrustServiceClient;
use napalm_proto::trust_v1::trust_service_server::{TrustService, TrustServiceServer};
use napalm_proto::trust_v1::*;
use tonic::{Request, Response, Status};

fn enroll_request() -> EnrollRequest {
    EnrollRequest {
        token: "napalm-join-v1.abc".into(),
        agent_id: "0123456789abcdef".into(),
        hostname: "host1".into(),
        csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\n".into(),
    }
}

fn renew_request() -> RenewRequest {
    RenewRequest {
        csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nrenew".into(),
    }
}

fn certificate() -> Certificate {
    Certificate {
        cert_pem: "leaf".into(),
        ca_pem: "ca".into(),
        not_before: 1_790_000_000,
        not_after: 1_790_086_400,
    }
}

fn info() -> JoinTokenInfo {
    JoinTokenInfo {
        id: "0011223344556677".into(),
        name: "host1".into(),
        created_at: 1_790_000_000,
        expires_at: 1_790_000_900,
        state: "used".into(),
        used_by: "0123456789abcdef".into(),
        reusable: true,
        uses: 3,
    }
}

fn create_request() -> CreateJoinTokenRequest {
    CreateJoinTokenRequest {
        ttl_seconds: 900,
        name: "host1".into(),
    }
}

fn same<M: PartialEq + std::fmt::Debug>(got: &M, want: M) -> Result<(), Status> {
    if *got != want {
        return Err(Status::invalid_argument(format!(
            "arrived changed: got {got:?}, want {want:?}"
        )));
    }
    Ok(())
}

fn revoked() -> RevokedAgent {
    RevokedAgent {
        agent_id: "0123456789abcdef".into(),
        revoked_at: 1_790_000_100,
        reason: "host stolen".into(),
    }
}

fn revoke_agent_request() -> RevokeAgentRequest {
    RevokeAgentRequest {
        agent: "host1".into(),
        reason: "host stolen".into(),
    }
}

fn issue_operator_request() -> IssueOperatorCertificateRequest {
    IssueOperatorCertificateRequest {
        name: "alice".into(),
        role: "viewer".into(),
        csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nalice".into(),
        ttl_seconds: 3600,
    }
}

fn operator_certificate() -> OperatorCertificate {
    OperatorCertificate {
        certificate: Some(certificate()),
        endpoints: vec!["10.0.0.1:7443".into(), "coord.example:7443".into()],
    }
}

struct Server;

#[tonic::async_trait]
impl TrustService for Server {
    async fn enroll(&self, r: Request<EnrollRequest>) -> Result<Response<Certificate>, Status> {
        same(r.get_ref(), enroll_request())?;
        Ok(Response::new(certificate()))
    }
    async fn renew(&self, r: Request<RenewRequest>) -> Result<Response<Certificate>, Status> {
        same(r.get_ref(), renew_request())?;
        Ok(Response::new(certificate()))
    }
    async fn create_join_token(
        &self,
        r: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        same(r.get_ref(), create_request())?;
        Ok(Response::new(CreateJoinTokenResponse {
            token: "napalm-join-v1.xyz".into(),
            info: Some(info()),
        }))
    }
    async fn list_join_tokens(
        &self,
        r: Request<ListJoinTokensRequest>,
    ) -> Result<Response<ListJoinTokensResponse>, Status> {
        same(r.get_ref(), ListJoinTokensRequest {})?;
        Ok(Response::new(ListJoinTokensResponse {
            tokens: vec![info(), info()],
        }))
    }
    async fn revoke_join_token(
        &self,
        r: Request<RevokeJoinTokenRequest>,
    ) -> Result<Response<JoinTokenInfo>, Status> {
        same(
            r.get_ref(),
            RevokeJoinTokenRequest {
                id: "0011223344556677".into(),
            },
        )?;
        Ok(Response::new(info()))
    }
    async fn revoke_agent(
        &self,
        r: Request<RevokeAgentRequest>,
    ) -> Result<Response<RevokedAgent>, Status> {
        same(r.get_ref(), revoke_agent_request())?;
        Ok(Response::new(revoked()))
    }
    async fn issue_operator_certificate(
        &self,
        r: Request<IssueOperatorCertificateRequest>,
    ) -> Result<Response<OperatorCertificate>, Status> {
        same(r.get_ref(), issue_operator_request())?;
        Ok(Response::new(operator_certificate()))
    }
}

async fn serve() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TrustServiceServer::new(Server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    addr
}

#[tokio::test]
async fn every_trust_message_round_trips_over_loopback() {
    let addr = serve().await;
    let mut c = TrustServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let got = c
        .enroll(enroll_request())
        .await
        .expect("enroll")
        .into_inner();
    assert_eq!(got, certificate());
    let got = c.renew(renew_request()).await.expect("renew").into_inner();
    assert_eq!(got, certificate());
    let got = c
        .create_join_token(create_request())
        .await
        .expect("create")
        .into_inner();
    assert_eq!(got.token, "napalm-join-v1.xyz");
    assert_eq!(got.info, Some(info()));
    let got = c
        .list_join_tokens(ListJoinTokensRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(got.tokens, vec![info(), info()]);
    let got = c
        .revoke_join_token(RevokeJoinTokenRequest {
            id: "0011223344556677".into(),
        })
        .await
        .expect("revoke")
        .into_inner();
    assert_eq!(got, info());
    let got = c
        .revoke_agent(revoke_agent_request())
        .await
        .expect("revoke agent")
        .into_inner();
    assert_eq!(got, revoked());
    let got = c
        .issue_operator_certificate(issue_operator_request())
        .await
        .expect("issue operator certificate")
        .into_inner();
    assert_eq!(got, operator_certificate());
}
