//! The coordinator's side of the cluster PKI (issue 13): it keeps the CA in the registry
//! ([`store`]: generated at first start, or imported from the operator's PEM files once;
//! in etcd mode shared by every coordinator), keeps join tokens there hashed, and serves
//! `napalm.trust.v1.TrustService` ([`service`]) plus `CoordinatorService` for enrolled
//! agents on a TLS listener of its own ([`serve`]): enrollment with a join token over TLS
//! that the joining host pins to the CA fingerprint of its token, renewal and the agents'
//! registration and heartbeats over mutual TLS. The token calls for operators are served
//! there to admin certificates, and on the plain API listener (`--insecure-plain`) behind
//! the operator's bearer token; [`admin`] writes the first admin identity at start.
//!
//! Must not touch: agents' keys (only CSRs cross), the registry's other records, or the
//! plain listeners' behaviour (nothing changes for a coordinator started without
//! `--trust-listen`).

pub mod admin;
pub mod agents;
pub mod flags;
pub mod revoke;
pub mod roles;
pub mod serve;
pub mod service;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use napalm_trust::id::OperatorRole;
use napalm_trust::tls::CertSlot;
use napalm_trust::ClusterCa;

use crate::registry::Registry;

/// Trust settings; `main` fills them from `--trust-*` flags.
#[derive(Debug, Clone)]
pub struct TrustConfig {
    /// TLS listener: enrollment, renewal, and `CoordinatorService` for enrolled agents.
    pub listen: SocketAddr,
    /// Addresses written into join tokens (`host:port` agents can reach); empty: the bound
    /// TLS address.
    pub advertise: Vec<String>,
    /// Lifetime of agent certificates.
    pub leaf_ttl: Duration,
    /// Default lifetime of join tokens.
    pub token_ttl: Duration,
    /// Operator-supplied CA (certificate PEM, key PEM), imported at first start when the
    /// registry holds no CA yet.
    pub ca_files: Option<(PathBuf, PathBuf)>,
    /// Where the admin identity is written at start ([`admin`]; `None`: not written).
    pub admin_dir: Option<PathBuf>,
    /// A file holding a bootstrap join token made outside the coordinator (the Helm
    /// chart's, shared by its agent DaemonSet): recorded at start as a reusable token
    /// ([`store::ensure_bootstrap`]).
    pub bootstrap_token: Option<PathBuf>,
}

impl TrustConfig {
    /// Loopback defaults for tests: any free port, 24 h certificates, 15 min tokens, a
    /// generated CA.
    pub fn loopback() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: Vec::new(),
            leaf_ttl: napalm_trust::ca::DEFAULT_LEAF_TTL,
            token_ttl: napalm_trust::token::DEFAULT_TTL,
            ca_files: None,
            admin_dir: None,
            bootstrap_token: None,
        }
    }
}

/// Why trust could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TrustSetupError {
    /// Reading or writing the CA in the registry failed.
    #[error("keeping the cluster CA in the registry")]
    Store(#[source] crate::store::StoreError),
    /// The stored or supplied CA is unusable, or signing the coordinator's certificate
    /// failed.
    #[error("the cluster CA")]
    Ca(#[source] napalm_trust::TrustError),
    /// The bootstrap token file could not be read.
    #[error("reading the bootstrap join token {path}: check --trust-bootstrap-token-file")]
    BootstrapFile {
        /// The file (`--trust-bootstrap-token-file`).
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The bootstrap token file does not hold a join token.
    #[error("the bootstrap join token in {path}")]
    BootstrapToken {
        /// The file.
        path: PathBuf,
        /// Why it is not a token.
        #[source]
        source: napalm_trust::TrustError,
    },
    /// The bootstrap token pins another CA than the cluster's.
    #[error(
        "the bootstrap join token in {path} pins the CA {pinned} but this cluster's CA is \
         {ours}: render the token from the CA given to --trust-ca-cert (a registry that \
         already holds a CA keeps it)"
    )]
    BootstrapForeignCa {
        /// The file.
        path: PathBuf,
        /// The fingerprint the token pins.
        pinned: String,
        /// The cluster CA's fingerprint.
        ours: String,
    },
    /// The operator's CA files could not be read.
    #[error("reading the CA file {path}: check --trust-ca-cert/--trust-ca-key")]
    CaFile {
        /// Which file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// The CA, the coordinator's own TLS identity and the settings, shared by the services.
#[derive(Clone)]
pub struct Trust {
    pub(crate) registry: Registry,
    pub(crate) ca: Arc<ClusterCa>,
    pub(crate) identity: Arc<CertSlot>,
    pub(crate) cfg: TrustConfig,
    /// Addresses join tokens carry.
    pub(crate) addresses: Vec<String>,
    /// Revoked agent ids, as last read from the registry (see [`revoke`]).
    pub(crate) revoked: Arc<std::sync::RwLock<std::collections::HashSet<String>>>,
    /// Names (host names, IP addresses) the coordinator's certificate carries beside
    /// `coordinator.napalm`: those clones dial its HTTPS listener by.
    pub(crate) names: Vec<String>,
}

impl std::fmt::Debug for Trust {
    /// The CA fingerprint and token addresses; never key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("fingerprint", &self.ca.fingerprint())
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

/// Lifetime of the coordinator's own certificate (re-issued at every start, and at two
/// thirds of it while running: see [`serve`]).
pub const COORDINATOR_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

pub(crate) fn unix_now(registry: &Registry) -> i64 {
    i64::try_from(registry.clock().unix_ms() / 1000).unwrap_or(i64::MAX)
}

impl Trust {
    /// Loads (or creates) the CA and issues this coordinator's certificate; `bound` is the
    /// TLS listener's address.
    pub async fn open(
        registry: Registry,
        cfg: TrustConfig,
        bound: SocketAddr,
    ) -> Result<Self, TrustSetupError> {
        Self::open_with_names(registry, cfg, bound, Vec::new()).await
    }

    /// [`Self::open`], the coordinator's certificate also naming `names` (host names or
    /// IP addresses; see [`Self::names`]).
    pub async fn open_with_names(
        registry: Registry,
        cfg: TrustConfig,
        bound: SocketAddr,
        names: Vec<String>,
    ) -> Result<Self, TrustSetupError> {
        let ca = store::load_or_create_ca(&registry, cfg.ca_files.as_ref()).await?;
        if let Some(path) = &cfg.bootstrap_token {
            store::ensure_bootstrap(&registry, path, &ca.fingerprint()).await?;
        }
        let now = unix_now(&registry);
        let (cert, key) = ca
            .issue_coordinator(&names, now, COORDINATOR_TTL)
            .map_err(TrustSetupError::Ca)?;
        // The chain carries the CA so a joining host can check it against its pin.
        let chain = format!("{}{}", cert.cert_pem, ca.cert_pem());
        let identity =
            CertSlot::new(chain.as_bytes(), key.as_bytes()).map_err(TrustSetupError::Ca)?;
        let addresses = if cfg.advertise.is_empty() {
            vec![bound.to_string()]
        } else {
            cfg.advertise.clone()
        };
        tracing::info!(fingerprint = %ca.fingerprint(), "cluster CA ready");
        Ok(Self {
            registry,
            ca: Arc::new(ca),
            identity,
            cfg,
            addresses,
            revoked: Arc::default(),
            names,
        })
    }

    /// The names beside `coordinator.napalm` the coordinator's certificate carries (the
    /// host of an `https://` register base, the HTTPS listener's address).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The coordinator's TLS identity (certificate chain with the CA, and key), swapped
    /// on renewal: what its HTTPS listener presents.
    pub fn identity(&self) -> Arc<CertSlot> {
        Arc::clone(&self.identity)
    }

    /// Issues this coordinator a fresh certificate and swaps it in: new connections (and
    /// joining hosts) get it, open ones keep theirs. Returns its not-after.
    pub fn renew_identity(&self) -> Result<i64, napalm_trust::TrustError> {
        let now = unix_now(&self.registry);
        let (cert, key) = self
            .ca
            .issue_coordinator(&self.names, now, COORDINATOR_TTL)?;
        let chain = format!("{}{}", cert.cert_pem, self.ca.cert_pem());
        self.identity.replace(chain.as_bytes(), key.as_bytes())?;
        Ok(cert.not_after)
    }

    /// A client certificate (chain with the CA) and key, PEM, for operator `name` in
    /// `role`: what an operator's tools present to agents (which admit only coordinators
    /// and admin operators) and to the TLS listener. Tests use it as the outside client's
    /// identity; `napalmctl login` gets one over its own key ([`Self::issue_operator_csr`]).
    pub fn issue_operator(
        &self,
        name: &str,
        role: OperatorRole,
        ttl: Duration,
    ) -> Result<(String, String), napalm_trust::TrustError> {
        let (cert, key) = self
            .ca
            .issue_operator(name, role, unix_now(&self.registry), ttl)?;
        Ok((format!("{}{}", cert.cert_pem, self.ca.cert_pem()), key))
    }

    /// A client certificate for operator `name` in `role` over the key of `csr_pem`.
    pub fn issue_operator_csr(
        &self,
        csr_pem: &str,
        name: &str,
        role: OperatorRole,
        ttl: Duration,
    ) -> Result<napalm_trust::Issued, napalm_trust::TrustError> {
        self.ca
            .issue_operator_csr(csr_pem, name, role, unix_now(&self.registry), ttl)
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The CA fingerprint join tokens pin.
    pub fn fingerprint(&self) -> String {
        self.ca.fingerprint()
    }

    /// Addresses written into join tokens.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }
}
