//! The coordinator connection: its endpoints and bearer token from the settings, and a
//! gRPC status turned into napalmctl's [`Failure`] (message and exit code).
//!
//! `--coordinator` takes one endpoint or several separated by commas (coordinators sharing
//! one etcd): reads go to the first that answers, and changes to the leader — a call a
//! follower refuses as NOT_LEADER is tried on the next endpoint, so no one needs to know
//! which coordinator leads.

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

/// The configured coordinator endpoints, in order.
fn endpoints(settings: &Settings) -> Vec<String> {
    settings
        .coordinator
        .value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Connects to the first configured coordinator that answers (any may serve reads).
pub async fn client(settings: &Settings) -> Result<Client, Failure> {
    let mut last = None;
    for endpoint in endpoints(settings) {
        match connect(settings, &endpoint).await {
            Ok(c) => return Ok(c),
            // An unreachable one: try the next; bad input stops at once.
            Err(f) if f.code == 3 => last = Some(f),
            Err(f) => return Err(f),
        }
    }
    Err(last.unwrap_or_else(|| no_endpoint(settings)))
}

/// Runs `call` on the leading coordinator: each configured endpoint in turn, skipping the
/// unreachable ones and those that answer NOT_LEADER. The first other answer is returned.
pub async fn on_leader<T, F, Fut>(settings: &Settings, mut call: F) -> Result<T, Failure>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let all = endpoints(settings);
    let mut refused = Vec::new();
    let mut last = None;
    for endpoint in &all {
        let c = match connect(settings, endpoint).await {
            Ok(c) => c,
            Err(f) if f.code == 3 => {
                last = Some(f);
                continue;
            }
            Err(f) => return Err(f),
        };
        match call(c).await {
            Err(s) if matches!(ApiError::from_status(&s), Some(ApiError::NotLeader { .. })) => {
                refused.push(format!("{endpoint}: {}", s.message()));
                last = Some(from_status(s));
            }
            r => return r.map_err(from_status),
        }
    }
    Err(match last {
        Some(mut f) => {
            if all.len() > 1 && !refused.is_empty() {
                f.message = format!(
                    "no configured coordinator leads ({}); give the leader's endpoint too",
                    refused.join("; ")
                );
            }
            f
        }
        None => no_endpoint(settings),
    })
}

fn no_endpoint(settings: &Settings) -> Failure {
    Failure {
        code: 2,
        message: format!(
            "no coordinator endpoint in {:?} (from {}); give --coordinator HOST:PORT[,HOST:PORT…]",
            settings.coordinator.value, settings.coordinator.origin
        ),
    }
}

/// The `authorization` header of the configured token (none without one).
pub(crate) fn bearer(settings: &Settings) -> Result<Bearer, Failure> {
    match &settings.token {
        None => Ok(Bearer(None)),
        Some(t) => Ok(Bearer(Some(
            format!("Bearer {}", t.value).parse().map_err(|_| Failure {
                code: 2,
                message: format!(
                    "the token from {} is not usable in a header (printable ASCII only)",
                    t.origin
                ),
            })?,
        ))),
    }
}

/// The files of an identity directory (`napalmctl login`).
pub(crate) struct IdentityFiles {
    /// The cluster CA certificate.
    pub ca: std::path::PathBuf,
    /// The operator's certificate chain.
    pub cert: std::path::PathBuf,
    /// Its key.
    pub key: std::path::PathBuf,
}

impl IdentityFiles {
    /// The files in `dir`.
    pub fn in_dir(dir: &std::path::Path) -> Self {
        Self {
            ca: dir.join("ca.crt"),
            cert: dir.join("operator.crt"),
            key: dir.join("operator.key"),
        }
    }
}

/// A mutual-TLS client config from the configured identity directory.
fn tls_config(
    settings: &Settings,
    endpoint: &str,
) -> Result<std::sync::Arc<rustls::ClientConfig>, Failure> {
    let Some(dir) = &settings.identity else {
        return Err(Failure {
            code: 2,
            message: format!(
                "coordinator endpoint {endpoint:?} (from {}) is https:// and no identity is \
                 configured: run napalmctl login (it writes one), or set --identity / \
                 NAPALM_IDENTITY / `identity:` to its directory",
                settings.coordinator.origin
            ),
        });
    };
    let files = IdentityFiles::in_dir(std::path::Path::new(&dir.value));
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| Failure {
            code: 2,
            message: format!(
                "identity {:?} (from {}): cannot read {}: {e}; run napalmctl login again",
                dir.value,
                dir.origin,
                p.display()
            ),
        })
    };
    let unusable = |e: napalm_trust::TrustError| Failure {
        code: 2,
        message: format!(
            "identity {:?} (from {}): {e}; run napalmctl login again",
            dir.value, dir.origin
        ),
    };
    let ca = napalm_trust::tls::certs_from_pem(&read(&files.ca)?)
        .map_err(unusable)?
        .into_iter()
        .next()
        .ok_or_else(|| Failure {
            code: 2,
            message: format!(
                "{} holds no certificate; run napalmctl login again",
                files.ca.display()
            ),
        })?;
    let slot = napalm_trust::tls::CertSlot::new(&read(&files.cert)?, &read(&files.key)?)
        .map_err(unusable)?;
    napalm_trust::tls::client_config(&ca, Some(slot)).map_err(unusable)
}

/// A channel to one coordinator endpoint: plain HTTP/2 for `HOST:PORT` and `http://`,
/// mutual TLS with the configured identity for `https://` (the coordinator's TLS
/// listener, whose certificate must chain to the identity's CA).
pub(crate) async fn channel(settings: &Settings, endpoint: &str) -> Result<Channel, Failure> {
    let unreachable = |e: &dyn std::fmt::Display| Failure {
        code: 3,
        message: format!(
            "cannot reach the coordinator at {endpoint:?} (from {}): {e}; start \
             napalm-coordinator or set --coordinator / NAPALM_COORDINATOR / \
             `coordinator:` in the config file",
            settings.coordinator.origin
        ),
    };
    if endpoint.starts_with("https://") {
        let cfg = tls_config(settings, endpoint)?;
        return napalm_trust::channel::connect_with(
            endpoint,
            napalm_trust::id::COORDINATOR_DNS,
            cfg,
            std::time::Duration::from_secs(10),
            None,
        )
        .await
        .map_err(|e| unreachable(&e));
    }
    let invalid = |e: &dyn std::fmt::Display| Failure {
        code: 2,
        message: format!(
            "coordinator endpoint {endpoint:?} (from {}) is not a URL: {e}; use \
             http://HOST:PORT, or https://HOST:PORT with an identity",
            settings.coordinator.origin
        ),
    };
    // HOST:PORT means plain HTTP/2, as napalm-coordinator --listen takes it.
    let url = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    };
    Channel::from_shared(url)
        .map_err(|e| invalid(&e))?
        .connect()
        .await
        .map_err(|e| unreachable(&e))
}

/// Connects to one coordinator endpoint.
async fn connect(settings: &Settings, endpoint: &str) -> Result<Client, Failure> {
    let bearer = bearer(settings)?;
    let channel = channel(settings, endpoint).await?;
    Ok(CoordinatorServiceClient::with_interceptor(channel, bearer))
}
