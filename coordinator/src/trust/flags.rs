//! The daemon's `--trust-*` flags (flattened into `napalm-coordinator`'s arguments), kept
//! beside what they configure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::TrustConfig;

/// Cluster PKI flags. Without `--trust-listen` nothing of the PKI runs.
#[derive(Debug, Clone, clap::Args)]
pub struct TrustFlags {
    /// TLS listener for agent enrollment (join tokens), certificate renewal and the
    /// mutual-TLS CoordinatorService for enrolled agents, e.g. 0.0.0.0:8490.
    #[arg(long, env = "NAPALM_TRUST_LISTEN")]
    pub trust_listen: Option<SocketAddr>,
    /// Address (host:port) written into join tokens for agents to dial (repeatable);
    /// default: the bound --trust-listen address.
    #[arg(long = "trust-advertise")]
    pub trust_advertise: Vec<String>,
    /// Lifetime of agent certificates, seconds (renewed at two thirds).
    #[arg(long, default_value_t = 24 * 3600)]
    pub trust_cert_ttl: u64,
    /// Default lifetime of join tokens, seconds.
    #[arg(long, default_value_t = 15 * 60)]
    pub trust_token_ttl: u64,
    /// Operator CA certificate (PEM), imported at first start instead of generating one.
    #[arg(long, requires = "trust_ca_key")]
    pub trust_ca_cert: Option<PathBuf>,
    /// Key of --trust-ca-cert (PEM).
    #[arg(long, requires = "trust_ca_cert")]
    pub trust_ca_key: Option<PathBuf>,
    /// Directory the admin identity is written to at start (ca.crt, operator.crt,
    /// operator.key, napalmctl.yaml: `export NAPALM_CONFIG=DIR/napalmctl.yaml`), when
    /// missing or past two thirds of its year; default: `admin/` beside --secret-file.
    #[arg(long, env = "NAPALM_TRUST_ADMIN_DIR")]
    pub trust_admin_dir: Option<PathBuf>,
    /// File holding a join token made outside the coordinator (the Helm chart renders one
    /// pinning the CA it gives --trust-ca-cert): accepted as a reusable bootstrap token
    /// that enrolls any number of NEW agents until it expires or is revoked
    /// (`napalmctl agent token revoke ID`).
    #[arg(long, env = "NAPALM_TRUST_BOOTSTRAP_TOKEN_FILE")]
    pub trust_bootstrap_token_file: Option<PathBuf>,
}

impl TrustFlags {
    /// The configuration the flags ask for, `None` without `--trust-listen`;
    /// `default_admin_dir` unless `--trust-admin-dir` names another.
    pub fn config(&self, default_admin_dir: PathBuf) -> Option<TrustConfig> {
        let listen = self.trust_listen?;
        Some(TrustConfig {
            listen,
            advertise: self.trust_advertise.clone(),
            leaf_ttl: Duration::from_secs(self.trust_cert_ttl.max(1)),
            token_ttl: Duration::from_secs(self.trust_token_ttl.max(1)),
            ca_files: self.trust_ca_cert.clone().zip(self.trust_ca_key.clone()),
            admin_dir: Some(self.trust_admin_dir.clone().unwrap_or(default_admin_dir)),
            bootstrap_token: self.trust_bootstrap_token_file.clone(),
        })
    }
}
