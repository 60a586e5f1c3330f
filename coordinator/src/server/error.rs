//! Why the daemon could not start.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::deploy::DeployError;
use crate::exports::ExportError;
use crate::mdns::BrowseError;
use crate::store::StoreError;

/// Why the daemon could not start. Each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The registry store did not open.
    #[error(
        "opening the registry store {store:?}: check that it is reachable from here \
         (etcd started, the address right) or pass another --store"
    )]
    Store {
        /// The `--store` value.
        store: String,
        /// What the store said.
        #[source]
        source: StoreError,
    },
    /// The secret file could not be read or created.
    #[error("the secret file {path}")]
    Secret {
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The secret is unusable as a token key.
    #[error("the secret cannot key clone tokens")]
    TokenKey(#[source] napalm_proto::ApiError),
    /// The export settings are inconsistent.
    #[error("NFS export settings")]
    Exports(#[source] ExportError),
    /// Writing the exports at start-up failed.
    #[error("writing the NFS exports")]
    SyncExports(#[source] DeployError),
    /// `--kernel-entry pvh` with a kernel that cannot be booted through PVH.
    #[error("the kernel with --kernel-entry pvh")]
    Kernel(#[source] DeployError),
    /// A listener could not be bound.
    #[error("binding {what} {addr}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Its address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The admin identity could not be written.
    #[error("writing the admin identity (--trust-admin-dir)")]
    Admin(#[source] crate::trust::admin::AdminError),
    /// Neither the plain listeners nor the cluster PKI: nothing would serve the API.
    #[error(
        "no listener to serve: start with --trust-listen ADDR (the API over mutual TLS; \
         clones register on --https-listen ADDR; the admin identity is written to \
         --trust-admin-dir), or add --insecure-plain to serve the plain gRPC API and HTTP \
         on --listen and --http-listen for a trial"
    )]
    NoListener,
    /// Without the plain listeners and without `--https-listen`: clones could not
    /// register, nor anyone scrape `/metrics`.
    #[error(
        "no HTTP endpoint (clone registration, /metrics, the web view): without \
         --insecure-plain there is no plain one, so add --https-listen ADDR (clones then \
         register over HTTPS with the cluster CA their layer carries)"
    )]
    NoRegistration,
    /// `--https-listen` without the cluster PKI: there is no certificate to serve.
    #[error(
        "--https-listen {0} needs the cluster PKI: add --trust-listen (the HTTPS endpoint \
         presents the coordinator's certificate, signed by the cluster CA)"
    )]
    HttpsWithoutTrust(SocketAddr),
    /// An `https://` register base without an HTTPS listener.
    #[error(
        "--register-base {0:?} is https:// but this coordinator serves no HTTPS: add \
         --https-listen ADDR (and --trust-listen), or give an http:// base"
    )]
    HttpsBaseWithoutListener(String),
    /// The HTTPS listener's TLS configuration.
    #[error("setting up TLS for the HTTPS endpoint")]
    Https(#[source] tokio_rustls::rustls::Error),
    /// The trust listener (CA, TLS) could not start.
    #[error("starting the trust listener")]
    Trust(#[source] crate::trust::serve::StartError),
    /// mDNS could not start.
    #[error("starting mDNS on {interfaces:?}")]
    Mdns {
        /// The interfaces asked for.
        interfaces: Vec<String>,
        /// What went wrong.
        #[source]
        source: BrowseError,
    },
}
