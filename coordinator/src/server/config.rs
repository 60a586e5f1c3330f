//! What the daemon is started with: [`ServeConfig`], filled by `main` from flags or by
//! tests with [`ServeConfig::loopback`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::deploy::DeployConfig;
use crate::exports::ExportConfig;
use crate::registry::agents::HeartbeatPolicy;

/// How the gRPC API authenticates its callers (booted clones always use their own clone
/// tokens, see [`crate::service::OPEN_METHODS`]).
#[derive(Debug, Clone)]
pub enum ApiAuth {
    /// Every call but the open ones needs `authorization: Bearer TOKEN`.
    Token(String),
    /// No authentication: anyone who reaches the listener may deploy (local trials only).
    Insecure,
    /// Tests: accept every call and record its `authorization` value ("" when absent), in
    /// order, so a test can check what a client sent.
    Record(Arc<Mutex<Vec<String>>>),
}

/// Where the secret clone tokens and cluster identities derive from.
#[derive(Debug, Clone)]
pub enum Secret {
    /// A file, created (32 random bytes, mode 0600) when missing.
    File(PathBuf),
    /// Given bytes (tests).
    Bytes(Vec<u8>),
}

/// Everything the daemon needs; `main` fills it from flags.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Serve the plain (unencrypted) gRPC API on [`Self::listen`] and the HTTP endpoint
    /// on [`Self::http_listen`]: trials and tests (`--insecure-plain`). Without it only
    /// the TLS listeners serve ([`Self::trust`] is then required): the API to
    /// certificate holders on the trust listener, clone registration on
    /// [`Self::https_listen`].
    pub plain: bool,
    /// gRPC listen address (port 0: any free port, see [`Running::grpc_addr`]).
    pub listen: SocketAddr,
    /// HTTP listen address of clone registration.
    pub http_listen: SocketAddr,
    /// HTTPS listen address: the same endpoint over TLS with the coordinator's own
    /// certificate (needs [`Self::trust`]; `None`: plain HTTP only).
    pub https_listen: Option<SocketAddr>,
    /// Registry: a file path (embedded redb store) or `etcd://host:port[,host:port…]`.
    pub store: String,
    /// TLS (and client certificate) for etcd (`None`: plain `http://`).
    pub etcd_tls: Option<crate::store::etcd::EtcdTls>,
    /// Where clone tokens derive from.
    pub secret: Secret,
    /// This coordinator's id in leader election (etcd) and in its mDNS record.
    pub id: Option<String>,
    /// Leader lease TTL (etcd only).
    pub lease_ttl: Duration,
    /// Agents' heartbeat TTL policy.
    pub heartbeat: HeartbeatPolicy,
    /// How the gRPC API authenticates callers.
    pub api_auth: ApiAuth,
    /// With [`ApiAuth::Token`] (the admin role): a second token with the viewer role,
    /// which may only read (`crate::service::READ_METHODS`).
    pub viewer_token: Option<String>,
    /// Bearer token presented to agents.
    pub agent_token: Option<String>,
    /// Agents used without discovery (gRPC endpoints), retried in the background.
    pub static_agents: Vec<String>,
    /// Browse for agents and advertise this coordinator over mDNS on these interfaces.
    pub mdns_interfaces: Vec<String>,
    /// The deploy pipeline (`None`: Deploy and Undeploy answer "unavailable"). An empty
    /// `register_base` is filled with `https://` + the bound HTTPS address when there is
    /// one, else `http://` + the bound HTTP address; its `exports` are taken from
    /// [`Self::exports`]. The host of an `https://` register base is named in the
    /// coordinator's certificate, so clones verify it with the cluster CA.
    pub deploy: Option<DeployConfig>,
    /// NFS exports this coordinator writes (`None`: managed by hand).
    pub exports: Option<ExportConfig>,
    /// How often the leader converges every deployment to its spec with no client
    /// connected (`None`: only when a client deploys).
    pub converge_every: Option<Duration>,
    /// The cluster PKI and its TLS listener (`None`: no enrollment, no mutual TLS).
    pub trust: Option<crate::trust::TrustConfig>,
}

impl ServeConfig {
    /// A coordinator on loopback for tests and benches: any free ports, an embedded store
    /// and a fixed secret under `dir`, no API authentication, no agents, no mDNS and no
    /// deploy pipeline (set [`Self::deploy`], or use `crate::testing`).
    pub fn loopback(dir: &Path) -> Self {
        Self {
            plain: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            https_listen: None,
            store: dir.join("registry.redb").to_string_lossy().into_owned(),
            etcd_tls: None,
            secret: Secret::Bytes(b"napalm-loopback-secret-0123456789".to_vec()),
            id: None,
            lease_ttl: Duration::from_secs(5),
            heartbeat: HeartbeatPolicy::default(),
            api_auth: ApiAuth::Insecure,
            viewer_token: None,
            agent_token: None,
            static_agents: Vec::new(),
            mdns_interfaces: Vec::new(),
            deploy: None,
            exports: None,
            converge_every: Some(crate::deploy::converge::EVERY),
            trust: None,
        }
    }
}
