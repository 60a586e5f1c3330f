//! The daemon's wiring, mirroring `napalm_agent::server`: [`start`] takes a [`ServeConfig`],
//! opens the registry, starts leader election (etcd), the agent sweep, NFS exports, static
//! agents, mDNS browsing and advertising, the clone-registration HTTP endpoint and the
//! gRPC `CoordinatorService`, and returns a [`Running`] handle. `napalm-coordinator`'s
//! `main` only parses flags into a `ServeConfig`; tests and benches use
//! [`ServeConfig::loopback`] (and `crate::testing` for a whole grid), so the daemon is
//! never wired by hand anywhere else.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use napalm_proto::trust_v1::trust_service_server::TrustServiceServer;
use tokio::task::JoinHandle;

use crate::clock::SystemClock;
use crate::deploy::ship::Agents;
use crate::deploy::Deployer;
use crate::discovery::{keep_registering_static, Backoff};
use crate::exports::{Exporter, SystemReload};
use crate::mdns::{Advert, Advertiser, Browser};
use crate::registry::clones::TokenKey;
use crate::registry::Registry;
use crate::service::Coordinator;
use crate::store;
use crate::store::election::{Election, Role};
use crate::store::etcd::EtcdStore;

mod config;
mod error;
mod plain;

pub use config::{ApiAuth, Secret, ServeConfig};
pub use error::ServeError;

/// A running coordinator; [`Running::shutdown`] stops it (dropping it aborts its tasks).
pub struct Running {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    /// Dropped with `Running`: the HTTPS listener stops accepting.
    _https_stop: Option<tokio::sync::watch::Sender<bool>>,
    registry: Registry,
    tokens: Arc<TokenKey>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    grpc: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    tasks: Vec<JoinHandle<()>>,
    _election: Option<Election>,
    _browser: Option<Browser>,
    _advertiser: Option<Advertiser>,
    trust: Option<crate::trust::serve::TrustListener>,
}

impl Running {
    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound address of the HTTP endpoint (clone registration, `/metrics`, the web
    /// view): the plain one, else (without [`ServeConfig::plain`]) the HTTPS one.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound HTTPS address (the HTTP endpoint over TLS), when served.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The gRPC endpoint clients dial: `http://ADDR` on the plain listener, else
    /// `https://ADDR` (the trust listener: mutual TLS).
    pub fn endpoint(&self) -> String {
        match self.stop {
            Some(_) => format!("http://{}", self.grpc_addr),
            None => format!("https://{}", self.grpc_addr),
        }
    }

    /// The TLS listener's address (enrollment, mutual-TLS agents), when trust is on.
    pub fn trust_addr(&self) -> Option<SocketAddr> {
        self.trust.as_ref().map(|t| t.addr)
    }

    /// The cluster CA and this coordinator's TLS identity, when trust is on.
    pub fn trust(&self) -> Option<&crate::trust::Trust> {
        self.trust.as_ref().map(|t| &t.trust)
    }

    /// The registry this coordinator serves.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The key clone tokens derive from.
    pub fn tokens(&self) -> &Arc<TokenKey> {
        &self.tokens
    }

    /// Stops serving: the gRPC server finishes its calls in flight, background tasks end.
    pub async fn shutdown(mut self) -> Result<(), tonic::transport::Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = match self.grpc.take() {
            Some(h) => h.await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        self.abort();
        served
    }

    fn abort(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(g) = self.grpc.take() {
            g.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Reads the secret file, or creates it with 32 random bytes (mode 0600) when missing.
fn read_or_create_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(s) = std::fs::read(path) {
        return Ok(s);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut s = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut s)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut f, &s)?;
    f.sync_all()?;
    Ok(s)
}

/// The names (beside `coordinator.napalm`) the coordinator's certificate carries so that
/// clients verifying it with the cluster CA accept it: the host of an `https://` register
/// base, and the HTTPS listener's address unless it is unspecified (0.0.0.0, ::).
fn https_names(register_base: Option<&str>, https: Option<SocketAddr>) -> Vec<String> {
    let mut names = Vec::new();
    if https.is_none() {
        return names;
    }
    if let Some(rest) = register_base.and_then(|b| b.strip_prefix("https://")) {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = match authority.strip_prefix('[') {
            // [v6]:port
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        if !host.is_empty() {
            names.push(host.to_owned());
        }
    }
    if let Some(a) = https.filter(|a| !a.ip().is_unspecified()) {
        let ip = a.ip().to_string();
        if !names.contains(&ip) {
            names.push(ip);
        }
    }
    names
}

/// This host's name, for the mDNS record.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "napalm-coordinator".into())
}

/// Whether this coordinator leads now (always, without election: `roles` none), its
/// registry fencing every write with the term it leads in, or with none while it follows.
fn leads(registry: &Registry, roles: Option<&tokio::sync::watch::Receiver<Role>>) -> bool {
    let role = roles.map(|r| r.borrow().clone());
    match role {
        None => true,
        Some(Role::Leader { fence }) => {
            registry.set_fence(Some(fence));
            true
        }
        Some(Role::Follower { .. }) => {
            registry.set_fence(None);
            false
        }
    }
}

/// The leader's chores, once a second: with etcd only the elected leader writes
/// scheduling decisions (its fencing token guards every commit) and marks silent agents
/// down; alone, this coordinator is always the leader.
fn spawn_sweeper(
    registry: Registry,
    roles: Option<tokio::sync::watch::Receiver<Role>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if leads(&registry, roles.as_ref()) {
                if let Err(e) = registry.sweep_agents().await {
                    tracing::warn!(error = %e, "agent sweep failed");
                }
            }
        }
    })
}

/// Starts the coordinator; returns once both listeners are bound and the NFS exports are
/// written (static agents and mDNS peers are found in the background).
pub async fn start(cfg: ServeConfig) -> Result<Running, ServeError> {
    let store = store::open_with(&cfg.store, cfg.etcd_tls.as_ref())
        .await
        .map_err(|source| ServeError::Store {
            store: cfg.store.clone(),
            source,
        })?;
    tracing::info!(store = %store.describe(), "registry open");
    let registry = Registry::new(store, Arc::new(SystemClock));
    let secret = match &cfg.secret {
        Secret::Bytes(b) => b.clone(),
        Secret::File(path) => read_or_create_secret(path).map_err(|source| ServeError::Secret {
            path: path.clone(),
            source,
        })?,
    };
    let tokens = Arc::new(TokenKey::new(&secret).map_err(ServeError::TokenKey)?);

    if !cfg.plain && cfg.trust.is_none() {
        return Err(ServeError::NoListener);
    }
    if !cfg.plain && cfg.https_listen.is_none() {
        return Err(ServeError::NoRegistration);
    }
    let bind = |what, addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .and_then(|l| l.local_addr().map(|a| (l, a)))
            .map_err(|source| ServeError::Bind { what, addr, source })
    };
    // The plain listeners, only with `plain` (`--insecure-plain`).
    let (grpc_plain, http_plain) = if cfg.plain {
        (
            Some(bind("gRPC", cfg.listen).await?),
            Some(bind("HTTP", cfg.http_listen).await?),
        )
    } else {
        (None, None)
    };
    let https = match cfg.https_listen {
        None => None,
        Some(addr) if cfg.trust.is_none() => return Err(ServeError::HttpsWithoutTrust(addr)),
        Some(addr) => Some(bind("HTTPS", addr).await?),
    };
    let https_addr = https.as_ref().map(|(_, a)| *a);
    // The HTTP endpoint's address: plain, else HTTPS (one of them exists, checked above).
    let http_addr = http_plain
        .as_ref()
        .map(|(_, a)| *a)
        .or(https_addr)
        .ok_or(ServeError::NoRegistration)?;
    // Where clones register: the operator's base, else this coordinator's HTTPS endpoint
    // when it has one, else its HTTP endpoint.
    let register_base = cfg.deploy.as_ref().map(|d| {
        if !d.register_base.is_empty() {
            d.register_base.clone()
        } else if let Some(a) = https_addr {
            format!("https://{a}")
        } else {
            format!("http://{http_addr}")
        }
    });
    if let Some(base) = &register_base {
        if base.starts_with("https://") && https_addr.is_none() {
            return Err(ServeError::HttpsBaseWithoutListener(base.clone()));
        }
    }
    let https_names = https_names(register_base.as_deref(), https_addr);

    // With etcd, only the elected leader writes scheduling decisions and sweeps agents.
    let election = match store::etcd_endpoints(&cfg.store, cfg.etcd_tls.is_some()) {
        Some(endpoints) => {
            let etcd = EtcdStore::connect_with(&endpoints, cfg.etcd_tls.as_ref())
                .await
                .map_err(|source| ServeError::Store {
                    store: cfg.store.clone(),
                    source,
                })?;
            let id = cfg
                .id
                .clone()
                .unwrap_or_else(|| match (&grpc_plain, &cfg.trust) {
                    (Some((_, a)), _) => a.to_string(),
                    (None, Some(t)) => t.listen.to_string(),
                    (None, None) => "napalm-coordinator".into(),
                });
            Some(Election::start(etcd.client(), id, cfg.lease_ttl))
        }
        None => None,
    };
    let mut tasks = vec![spawn_sweeper(
        registry.clone(),
        election.as_ref().map(Election::subscribe),
    )];

    // The trust (CA, this coordinator's certificate) comes before everything that dials
    // agents: the deploy pipeline and discovery reach enrolled agents over mutual TLS.
    // Its listener serves once the `CoordinatorService` exists, below.
    let trust_bound = match cfg.trust.clone() {
        Some(t) => Some(
            crate::trust::serve::bind_with_names(registry.clone(), t, https_names)
                .await
                .map_err(ServeError::Trust)?,
        ),
        None => None,
    };
    let trust_state = trust_bound.as_ref().map(|b| b.trust().clone());
    // Where the API is served: the plain listener, else the trust listener (mutual TLS).
    let grpc_addr = match (&grpc_plain, &trust_bound) {
        (Some((_, a)), _) => *a,
        (None, Some(b)) => b.addr(),
        (None, None) => return Err(ServeError::NoListener),
    };
    if let (Some(b), Some(dir)) = (
        &trust_bound,
        cfg.trust.as_ref().and_then(|t| t.admin_dir.as_ref()),
    ) {
        let t = b.trust();
        let now = crate::trust::unix_now(&registry);
        match crate::trust::admin::ensure(t, dir, t.addresses(), now).map_err(ServeError::Admin)? {
            crate::trust::admin::Outcome::Written { not_after } => tracing::info!(
                dir = %dir.display(),
                not_after,
                "admin identity written: export NAPALM_CONFIG={}/napalmctl.yaml",
                dir.display()
            ),
            crate::trust::admin::Outcome::Kept { not_after } => {
                tracing::info!(dir = %dir.display(), not_after, "admin identity kept")
            }
        }
    }

    let exporter = match cfg.exports.clone() {
        Some(x) => Some(Arc::new(
            Exporter::new(x, Box::new(SystemReload)).map_err(ServeError::Exports)?,
        )),
        None => None,
    };
    // One set of metrics: the deploy pipeline, the control loop, the gRPC layer and the
    // clone registrations record into it; `/metrics` on the HTTP listener renders it.
    let metrics = crate::metrics::Metrics::new();
    let deployer = match cfg.deploy.clone() {
        Some(mut d) => {
            d.register_base = register_base.clone().unwrap_or_default();
            d.agent_token = cfg.agent_token.clone();
            d.exports = exporter;
            d.trust = trust_state.clone();
            let deployer =
                Deployer::with_metrics(registry.clone(), d, Arc::clone(&tokens), metrics.clone());
            // The root (and any stateful clones' state) is exported before anything boots.
            deployer
                .sync_exports()
                .await
                .map_err(ServeError::SyncExports)?;
            // Extracted now rather than at the first deploy; only `pvh` makes a kernel
            // that cannot boot through PVH an error (otherwise the first deploy reports it).
            match deployer.load_kernel().await {
                Ok(()) => {}
                Err(e) if deployer.requires_pvh() => return Err(ServeError::Kernel(e)),
                Err(e) => tracing::warn!(
                    error = %crate::deploy::chain(&e),
                    "the kernel does not load: deploys will fail until it does"
                ),
            }
            Some(deployer)
        }
        None => {
            tracing::warn!("no kernel and base image: Deploy and Undeploy are unavailable");
            None
        }
    };

    // The control loop: the leader converges every deployment with nobody connected.
    if let (Some(d), Some(every)) = (&deployer, cfg.converge_every) {
        let roles = election.as_ref().map(Election::subscribe);
        let registry = registry.clone();
        // A pass writes, so it fences its writes with the term it leads in (as the
        // sweeper and the service do), not only within the sweeper's next second.
        let leads = move || leads(&registry, roles.as_ref());
        tasks.push(tokio::spawn(crate::deploy::converge::run(
            d.clone(),
            every,
            leads,
        )));
    }

    // Static agents may start after us: each is retried in the background until it answers.
    let links = Agents::new(cfg.agent_token.clone()).with_trust(trust_state.clone());
    for ep in &cfg.static_agents {
        let (registry, links, ep, policy) =
            (registry.clone(), links.clone(), ep.clone(), cfg.heartbeat);
        tasks.push(tokio::spawn(async move {
            keep_registering_static(registry, links, ep, policy, Backoff::default()).await;
        }));
    }
    let mdns = |source| ServeError::Mdns {
        interfaces: cfg.mdns_interfaces.clone(),
        source,
    };
    let (browser, advertiser) = if cfg.mdns_interfaces.is_empty() {
        (None, None)
    } else {
        let browser = Browser::start(
            &cfg.mdns_interfaces,
            registry.clone(),
            links.clone(),
            cfg.heartbeat,
        )
        .map_err(mdns)?;
        let advert = Advert {
            id: cfg
                .id
                .clone()
                .unwrap_or_else(|| "napalm-coordinator".into()),
            hostname: hostname(),
            grpc_port: grpc_addr.port(),
            http_port: http_addr.port(),
        };
        let advertiser = Advertiser::start(&cfg.mdns_interfaces, &advert).map_err(mdns)?;
        (Some(browser), Some(advertiser))
    };

    let app = crate::http::router(registry.clone(), Arc::clone(&tokens), metrics.clone());
    let mut https_stop = None;
    if let (Some((listener, _)), Some(t)) = (https, &trust_state) {
        let tls = crate::http::tls_config(t.identity()).map_err(ServeError::Https)?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task =
            crate::http::serve_tls(listener, tls, app.clone(), stopped).map_err(|source| {
                ServeError::Bind {
                    what: "HTTPS",
                    addr: https_addr.unwrap_or(http_addr),
                    source,
                }
            })?;
        tasks.push(task);
        https_stop = Some(stop);
        tracing::info!(
            https = ?https_addr,
            names = ?t.names(),
            "serving clone registration over HTTPS"
        );
    }
    if let Some((http_listener, _)) = http_plain {
        if !http_addr.ip().is_loopback() {
            tracing::warn!(
                http = %http_addr,
                "serving the HTTP endpoint WITHOUT TLS (--insecure-plain): clone tokens \
                 travel in clear"
            );
        }
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(http_listener, app).await {
                tracing::error!(error = %e, "HTTP endpoint stopped");
            }
        }));
    }

    let mut svc = Coordinator::new(
        registry.clone(),
        cfg.heartbeat,
        Arc::clone(&tokens),
        deployer,
    )
    .with_metrics(metrics.clone());
    if let Some(e) = &election {
        svc = svc.with_election(e.subscribe());
    }
    let trust = match trust_bound {
        Some(b) => Some(b.serve(svc.clone()).map_err(ServeError::Trust)?),
        None => None,
    };
    // Token administration for operators, on this listener behind its authentication.
    let api_trust = trust.as_ref().map(|t| {
        TrustServiceServer::new(crate::trust::service::TrustServer::new(
            t.trust.clone(),
            crate::trust::service::Placement::Api,
        ))
    });
    let (stop, grpc) = match grpc_plain {
        Some((listener, _)) => {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let grpc = plain::serve_plain(
                listener,
                svc,
                api_trust,
                &cfg,
                metrics.clone(),
                async move {
                    let _ = stopped.await;
                },
            );
            (Some(stop), Some(grpc))
        }
        // The API is served on the trust listener only, to certificate holders.
        None => (None, None),
    };
    tracing::info!(listen = %grpc_addr, http = %http_addr, "serving napalm.v1.CoordinatorService");
    Ok(Running {
        grpc_addr,
        http_addr,
        https_addr,
        _https_stop: https_stop,
        registry,
        tokens,
        stop,
        grpc,
        tasks,
        _election: election,
        _browser: browser,
        _advertiser: advertiser,
        trust,
    })
}

#[cfg(test)]
mod tests {
    use super::https_names;

    #[test]
    fn the_certificate_names_the_register_base_host_and_the_https_address() {
        let https = Some("10.0.0.1:7781".parse().expect("addr"));
        assert_eq!(
            https_names(Some("https://10.0.0.1:7781"), https),
            ["10.0.0.1"]
        );
        assert_eq!(
            https_names(Some("https://napalm-server:7781/"), https),
            ["napalm-server", "10.0.0.1"]
        );
        assert_eq!(
            https_names(
                Some("https://[fd00::1]:7781"),
                Some("[::]:7781".parse().expect("addr"))
            ),
            ["fd00::1"]
        );
        assert!(https_names(
            Some("http://10.0.0.1:7780"),
            Some("0.0.0.0:1".parse().expect("addr"))
        )
        .is_empty());
        assert!(https_names(Some("https://10.0.0.1:7781"), None).is_empty());
    }
}
