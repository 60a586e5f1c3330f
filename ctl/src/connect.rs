//! The coordinator connection: its endpoint and bearer token from the settings, and a
//! gRPC status turned into napalmctl's [`Failure`] (message and exit code).

use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use napalm_proto::ApiError;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::config::Settings;
use crate::Failure;

/// A coordinator's error as a [`Failure`] with its message: exit code 4 when the named
/// thing does not exist, 2 for bad input or what is not implemented, else 1.
pub(crate) fn from_status(s: tonic::Status) -> Failure {
    let code = match ApiError::from_status(&s) {
        Some(ApiError::NotFound { .. }) => 4,
        Some(ApiError::InvalidArgument { .. }) => 2,
        _ if s.code() == tonic::Code::Unimplemented => 2,
        _ => 1,
    };
    Failure {
        code,
        message: s.message().to_owned(),
    }
}

/// Adds `authorization: Bearer TOKEN` to every coordinator call when a token is set.
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// A coordinator client carrying the configured token.
pub type Client = CoordinatorServiceClient<InterceptedService<Channel, Bearer>>;

/// Connects to the configured coordinator.
pub async fn client(settings: &Settings) -> Result<Client, Failure> {
    let endpoint = &settings.coordinator.value;
    let bearer = match &settings.token {
        None => Bearer(None),
        Some(t) => Bearer(Some(format!("Bearer {}", t.value).parse().map_err(
            |_| Failure {
                code: 2,
                message: format!(
                    "the token from {} is not usable in a header (printable ASCII only)",
                    t.origin
                ),
            },
        )?)),
    };
    let invalid = |e: &dyn std::fmt::Display| Failure {
        code: 2,
        message: format!(
            "coordinator endpoint {endpoint:?} (from {}) is not a URL: {e}; use \
             http://HOST:PORT",
            settings.coordinator.origin
        ),
    };
    // HOST:PORT means plain HTTP/2, as napalm-coordinator --listen takes it.
    let url = if endpoint.contains("://") {
        endpoint.clone()
    } else {
        format!("http://{endpoint}")
    };
    let channel = Channel::from_shared(url)
        .map_err(|e| invalid(&e))?
        .connect()
        .await
        .map_err(|e| Failure {
            code: 3,
            message: format!(
                "cannot reach the coordinator at {endpoint:?} (from {}): {e}; start \
                 napalm-coordinator or set --coordinator / NAPALM_COORDINATOR / \
                 `coordinator:` in the config file",
                settings.coordinator.origin
            ),
        })?;
    Ok(CoordinatorServiceClient::with_interceptor(channel, bearer))
}
