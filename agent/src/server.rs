//! Running the agent: opens libvirt and the state directory, reconciles, then serves REST
//! and gRPC and keeps reconciling on a period until asked to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::core::{Agent, CoreConfig};
use crate::error::{AgentError, Result};
use crate::hypervisor::{libvirt::Libvirt, Hypervisor};
use crate::rest::{AppState, HttpCounters, RestConfig};

/// Everything the daemon needs. [`ServeConfig::loopback`] is the one tests start from.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// State directory, XML policy, archive limits, shutdown timeout.
    pub core: CoreConfig,
    /// REST prefix, token (also gRPC's) and request size limits.
    pub rest: RestConfig,
    /// REST listen address (port 0: any free port, see [`Running::http_addr`]).
    pub http_listen: SocketAddr,
    /// gRPC listen address (`None`: no gRPC).
    pub grpc_listen: Option<SocketAddr>,
    /// How often the agent compares desired with actual state and repairs it (it also
    /// reconciles once at start).
    pub reconcile_every: Duration,
    /// Ganglia gmond-compatible XML listen address (`None`: off).
    pub ganglia_listen: Option<SocketAddr>,
    /// The cluster name that XML reports ([`crate::ganglia::DEFAULT_CLUSTER`] by default).
    /// gmetad merges every data source reporting one name into one cluster and writes its
    /// summary from each, so agents polled by one gmetad need a name each (their host's).
    pub ganglia_cluster: String,
    /// mDNS: interfaces to advertise on (empty: no mDNS at all).
    pub mdns_interfaces: Vec<String>,
    /// Coordinator gRPC endpoint to register with (`None`: none).
    pub coordinator: Option<String>,
    /// Bearer token presented to the coordinator in `RegisterAgent` and `Heartbeat`
    /// (its `--api-token-file`); `None`: this agent's own API token (`rest.token`), which
    /// suits a site with one shared token.
    pub coordinator_token: Option<String>,
    /// TLS for REST and gRPC (`None`: plain TCP). Ignored once the agent has enrolled:
    /// its cluster certificate is used instead.
    pub tls: Option<crate::tls::TlsFiles>,
    /// A join token (`napalm-join-v1.…`) to enroll with at start when the state
    /// directory holds no identity yet (see [`crate::identity`]). Enrolled agents serve
    /// both listeners over mutual TLS and reach the coordinator's TLS listener with their
    /// certificate, whatever `coordinator` says.
    pub join: Option<String>,
}

impl ServeConfig {
    /// An agent for tests and benches on one machine: libvirt's `test:///default`, the
    /// REST prefix `/napalm` without a token, REST, gRPC and Ganglia on ephemeral
    /// `127.0.0.1` ports, no mDNS, no coordinator, no TLS, reconciliation only at start
    /// (hourly), a 200 ms shutdown timeout, `clean-traffic` left to libvirt (the test driver ignores it), 1 MiB request bodies and archives unpacking to
    /// at most 64 entries and 16 MiB. Every field is public: set `rest.token`,
    /// `coordinator`, `core.limits`… on the result.
    pub fn loopback(state_dir: impl Into<std::path::PathBuf>) -> Self {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            core: CoreConfig {
                state_dir: state_dir.into(),
                policy: crate::policy::Policy::default(),
                limits: crate::archive::Limits {
                    max_entries: 64,
                    max_total_bytes: 16 << 20,
                },
                shutdown_timeout: Duration::from_millis(200),
                port_filter: crate::port_filter::PortFilterMode::Libvirt,
            },
            rest: RestConfig {
                prefix: "/napalm".into(),
                token: None,
                max_archive_bytes: 1 << 20,
                max_file_bytes: 1 << 20,
                max_xml_bytes: 64 << 10,
                libvirt_uri: "test:///default".into(),
            },
            http_listen: any_port,
            grpc_listen: Some(any_port),
            reconcile_every: Duration::from_secs(3600),
            ganglia_listen: Some(any_port),
            ganglia_cluster: crate::ganglia::DEFAULT_CLUSTER.into(),
            mdns_interfaces: Vec::new(),
            coordinator: None,
            coordinator_token: None,
            tls: None,
            join: None,
        }
    }
}

/// A running agent: its addresses and core, for tests and the binary.
pub struct Running {
    /// The core operations both transports call.
    pub agent: Arc<Agent>,
    /// The address REST listens on (the real port when 0 was asked for).
    pub http_addr: SocketAddr,
    /// The address gRPC listens on, when it is served.
    pub grpc_addr: Option<SocketAddr>,
    /// REST requests served by method (thesis table 4.3 counts).
    pub counters: Arc<HttpCounters>,
    /// The address the Ganglia XML is served on, when it is.
    pub ganglia_addr: Option<SocketAddr>,
    /// SHA-256 of the TLS certificate, when TLS is on.
    pub fingerprint: Option<String>,
    /// The cluster identity, once enrolled (its certificate is renewed in the
    /// background).
    pub identity: Option<crate::identity::Identity>,
    advertiser: Option<crate::mdns::Advertiser>,
    otlp: Option<crate::otel::OtlpExporter>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Running {
    /// Starts pushing this agent's metrics over OTLP/gRPC to `endpoint` every `every`
    /// (see [`crate::otel`]); nothing when `endpoint` is `None`. Returns whether an exporter
    /// runs. It is flushed and shut down by [`Running::stop`].
    ///
    /// Kept apart from [`ServeConfig`] so that code building a `ServeConfig` literal (the
    /// coordinator's tests and benches) need not change.
    pub async fn start_otlp(&mut self, endpoint: Option<&str>, every: Duration) -> Result<bool> {
        if let Some(old) = self.otlp.take() {
            old.shutdown().await;
        }
        self.otlp =
            crate::otel::OtlpExporter::start(Arc::clone(&self.agent), endpoint, every).await?;
        Ok(self.otlp.is_some())
    }

    /// Whether an OTLP exporter runs.
    pub fn otlp_enabled(&self) -> bool {
        self.otlp.is_some()
    }

    /// Stops serving and waits for the servers to finish.
    pub async fn stop(self) {
        if let Some(o) = self.otlp {
            // Last export while the agent can still be sampled.
            o.shutdown().await;
        }
        if let Some(a) = self.advertiser {
            // Goodbye packets first, so browsers drop us at once.
            let _ = tokio::task::spawn_blocking(move || a.stop()).await;
        }
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Opens the libvirt URI and starts the agent.
pub async fn start(cfg: ServeConfig) -> Result<Running> {
    let uri = cfg.rest.libvirt_uri.clone();
    let hv: Arc<dyn Hypervisor> = Arc::new(
        tokio::task::spawn_blocking(move || Libvirt::open(&uri))
            .await
            .map_err(|e| AgentError::Hypervisor(e.to_string()))??,
    );
    start_with(cfg, hv).await
}

/// Starts the agent on a given hypervisor.
pub async fn start_with(cfg: ServeConfig, hv: Arc<dyn Hypervisor>) -> Result<Running> {
    start_with_clock(cfg, hv, Arc::new(crate::clock::SystemClock)).await
}

/// Starts the agent on a given hypervisor, reading wall-clock time from `clock` (tests).
pub async fn start_with_clock(
    cfg: ServeConfig,
    hv: Arc<dyn Hypervisor>,
    clock: Arc<dyn crate::clock::Clock>,
) -> Result<Running> {
    let agent = Agent::open_with_clock(cfg.core.clone(), hv, clock).await?;
    let rep = agent.reconcile(true).await?;
    tracing::info!(agent_id = agent.id(), report = ?rep, "first reconciliation done");
    agent.drop_stale_templates().await;
    let identity = enrolled(&agent, &cfg).await?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let counters = Arc::new(HttpCounters::default());
    let state = AppState {
        agent: Arc::clone(&agent),
        cfg: Arc::new(cfg.rest.clone()),
        counters: Arc::clone(&counters),
        metrics: None,
    };
    let state = crate::metrics::attach(state);
    let app = crate::rest::router(state);
    let listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|e| AgentError::io(cfg.http_listen.to_string(), e))?;
    let http_addr = listener
        .local_addr()
        .map_err(|e| AgentError::io("http", e))?;
    let tls = match (&cfg.tls, &identity) {
        (Some(f), None) => Some(crate::tls::Tls::load(f)?),
        _ => None,
    };
    // Mutual TLS with the cluster identity: clients need a CA-signed certificate.
    let mtls = match &identity {
        Some(i) => Some(i.server_config().map_err(trust_err)?),
        None => None,
    };
    let fingerprint = match &identity {
        Some(i) => Some(napalm_trust::fingerprint(i.slot.leaf().as_ref())),
        None => tls.as_ref().map(|t| t.fingerprint.clone()),
    };
    let mut tasks = Vec::new();
    let mut rx = stop_rx.clone();
    if let Some(m) = mtls.clone() {
        let acceptor = tokio_rustls::TlsAcceptor::from(m);
        let admit = Some(napalm_trust::channel::coordinator_or_operator());
        tasks.push(tokio::spawn(crate::tls::serve_https(
            listener, app, acceptor, admit, rx,
        )));
    } else if let Some(t) = tls.clone() {
        tasks.push(tokio::spawn(crate::tls::serve_https(
            listener,
            app,
            t.acceptor.clone(),
            None,
            rx,
        )));
    } else {
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "REST server failed");
            }
        }));
    }
    let mut grpc_addr = None;
    if let Some(addr) = cfg.grpc_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| AgentError::io(addr.to_string(), e))?;
        grpc_addr = Some(l.local_addr().map_err(|e| AgentError::io("grpc", e))?);
        let svc = crate::grpc::server(Arc::clone(&agent), stop_rx.clone());
        let intercept = crate::grpc::auth_interceptor(cfg.rest.token.clone());
        let mut builder = tonic::transport::Server::builder();
        if let Some(t) = &tls {
            let id = tonic::transport::Identity::from_pem(&t.cert_pem, &t.key_pem);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(id))
                .map_err(|e| AgentError::invalid("tls", format!("gRPC TLS setup failed: {e}")))?;
        }
        let mut rx = stop_rx.clone();
        let mtls = mtls.clone();
        let accept_stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let svc = tonic::service::interceptor::InterceptedService::new(svc, intercept);
            let shutdown = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let r = match mtls {
                Some(m) => {
                    let admit = napalm_trust::channel::coordinator_or_operator();
                    let incoming = napalm_trust::channel::incoming(l, m, Some(admit), accept_stop);
                    builder
                        .layer(crate::grpc::trace::TraceLayer)
                        .add_service(svc)
                        .serve_with_incoming_shutdown(incoming, shutdown)
                        .await
                }
                None => {
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
                    builder
                        .layer(crate::grpc::trace::TraceLayer)
                        .add_service(svc)
                        .serve_with_incoming_shutdown(incoming, shutdown)
                        .await
                }
            };
            if let Err(e) = r {
                tracing::error!(error = %e, "gRPC server failed");
            }
        }));
    }
    let a = Arc::clone(&agent);
    let rx = stop_rx.clone();
    tasks.push(tokio::spawn(watch_states(a, rx)));
    let a = Arc::clone(&agent);
    let mut rx = stop_rx;
    let every = cfg.reconcile_every;
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = rx.wait_for(|s| *s) => break,
            }
            if let Err(e) = a.reconcile(false).await {
                tracing::warn!(error = %e, "reconciliation failed; retrying next period");
            }
        }
    }));
    let mut ganglia_addr = None;
    if let Some(addr) = cfg.ganglia_listen {
        let (bound, t) = crate::ganglia::serve(
            Arc::clone(&agent),
            addr,
            cfg.ganglia_cluster.clone(),
            stop.subscribe(),
        )
        .await?;
        ganglia_addr = Some(bound);
        tasks.push(t);
    }
    let scheme = if fingerprint.is_some() {
        "https"
    } else {
        "http"
    };
    let ep = crate::register::Endpoints {
        grpc: grpc_addr
            .map(|a| format!("{scheme}://{a}"))
            .unwrap_or_default(),
        rest: format!("{scheme}://{http_addr}{}", cfg.rest.prefix),
        fingerprint: fingerprint.clone().unwrap_or_default(),
    };
    let coordinator_token = cfg
        .coordinator_token
        .clone()
        .or_else(|| cfg.rest.token.clone());
    if let Some(i) = identity.clone() {
        tasks.push(tokio::spawn(i.clone().keep_renewed(stop.subscribe())));
        tasks.push(tokio::spawn(crate::register::run(
            Arc::clone(&agent),
            crate::register::Link::Mutual(i),
            ep,
            coordinator_token,
            stop.subscribe(),
        )));
    } else if let Some(endpoint) = cfg.coordinator.clone() {
        tasks.push(tokio::spawn(crate::register::run(
            Arc::clone(&agent),
            crate::register::Link::Plain(endpoint),
            ep,
            coordinator_token,
            stop.subscribe(),
        )));
    } else if !cfg.mdns_interfaces.is_empty() {
        // No coordinator configured: find one over mDNS, then register with it.
        let (agent, token, stop) = (Arc::clone(&agent), coordinator_token, stop.subscribe());
        let ifs = cfg.mdns_interfaces.clone();
        tasks.push(tokio::spawn(async move {
            let watch = stop.clone();
            let found =
                tokio::task::spawn_blocking(move || crate::mdns::find_coordinator(&ifs, &watch))
                    .await;
            match found {
                Ok(Ok(Some(endpoint))) => {
                    tracing::info!(%endpoint, "coordinator found over mDNS");
                    let link = crate::register::Link::Plain(endpoint);
                    crate::register::run(agent, link, ep, token, stop).await;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "mDNS browsing for a coordinator failed"),
                Err(e) => tracing::warn!(error = %e, "mDNS browsing task failed"),
            }
        }));
    }
    let mut advertiser = None;
    if !cfg.mdns_interfaces.is_empty() {
        let caps = agent.capabilities().await?;
        let advert = crate::mdns::Advert {
            instance: format!("napalm-agent {} {}", caps.host.hostname, agent.id()),
            hostname: caps.host.hostname.clone(),
            http_port: http_addr.port(),
            grpc_port: grpc_addr.map(|a| a.port()).unwrap_or(0),
            hypervisors: caps.hypervisors.join(","),
            arch: caps.arch.clone(),
            cpus: caps.host.cpus,
            memory_bytes: caps.host.memory_bytes,
            agent_id: agent.id().to_owned(),
            fingerprint: fingerprint.clone().unwrap_or_else(|| "none".into()),
            path: cfg.rest.prefix.clone(),
            tls: match (&mtls, &tls) {
                (Some(_), _) => "mutual",
                (None, Some(_)) => "server",
                (None, None) => "none",
            },
        };
        let ifs = cfg.mdns_interfaces.clone();
        advertiser = Some(
            tokio::task::spawn_blocking(move || crate::mdns::Advertiser::start(&advert, &ifs))
                .await
                .map_err(|e| AgentError::io("mdns", std::io::Error::other(e.to_string())))??,
        );
    }
    tracing::info!(%http_addr, ?grpc_addr, ?ganglia_addr, "napalm-agent serving");
    Ok(Running {
        agent,
        http_addr,
        grpc_addr,
        counters,
        ganglia_addr,
        fingerprint,
        identity,
        advertiser,
        otlp: None,
        tasks,
        stop,
    })
}

fn trust_err(e: crate::identity::IdentityError) -> AgentError {
    AgentError::invalid("cluster identity", e.to_string())
}

/// The identity stored in the state directory or, without one, the one `cfg.join`
/// enrolls; `None` when neither.
async fn enrolled(agent: &Agent, cfg: &ServeConfig) -> Result<Option<crate::identity::Identity>> {
    use crate::identity::Identity;
    let dir = &cfg.core.state_dir;
    if let Some(i) = Identity::load(dir, agent.id()).map_err(trust_err)? {
        if i.seconds_left().map_err(trust_err)? <= 0 {
            tracing::error!(
                "the cluster certificate in {} has expired: peers will refuse this agent; \
                 enroll it again (remove that directory, then --join NEW_TOKEN)",
                crate::identity::dir_of(dir).display()
            );
        }
        if cfg.join.is_some() {
            tracing::info!(
                coordinator = %i.coordinator,
                "already enrolled: the join token is not used (remove {} to enroll again)",
                crate::identity::dir_of(dir).display()
            );
        }
        return Ok(Some(i));
    }
    let Some(token) = &cfg.join else {
        return Ok(None);
    };
    let host = agent.capabilities().await?.host.hostname;
    Identity::join(dir, agent.id(), &host, token)
        .await
        .map(Some)
        .map_err(trust_err)
}

/// With libvirt's lifecycle events, a full pass of every domain's state this often (a
/// safety net for an event lost in a reconnect); without them, every second.
const FULL_PASS_WITH_EVENTS: Duration = Duration::from_secs(30);

/// The state watcher: changes nobody asked the agent for (a guest that powered off,
/// crashed, was paused) become events. With libvirt's lifecycle events it looks only at
/// the domains they name, as they come, plus a full pass every [`FULL_PASS_WITH_EVENTS`];
/// without, it lists every domain's state each second. Console files are bounded each
/// second either way.
async fn watch_states(a: Arc<Agent>, mut stop: tokio::sync::watch::Receiver<bool>) {
    // A libvirt that hangs at start must not hold the console bounding and the shutdown.
    let mut events = tokio::time::timeout(Duration::from_secs(10), a.lifecycle_events())
        .await
        .unwrap_or(None);
    tracing::info!(
        lifecycle_events = events.is_some(),
        "state watcher started (libvirt lifecycle events, or a poll each second)"
    );
    let mut last_full: Option<std::time::Instant> = None;
    let mut last_consoles = std::time::Instant::now();
    // Domains the agent was acting on at the last look: looked at again next time.
    let mut busy: Vec<String> = Vec::new();
    loop {
        let mut changed: std::collections::BTreeSet<String> = busy.drain(..).collect();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            n = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match n {
                Some(n) => {
                    changed.insert(n);
                }
                None => {
                    tracing::warn!("libvirt dropped the lifecycle event registration; polling each second");
                    events = None;
                }
            },
            _ = stop.wait_for(|s| *s) => break,
        }
        if let Some(rx) = events.as_mut() {
            while let Ok(n) = rx.try_recv() {
                changed.insert(n);
            }
        }
        let every = if events.is_some() {
            FULL_PASS_WITH_EVENTS
        } else {
            Duration::from_secs(1)
        };
        if last_full.is_none_or(|t| t.elapsed() >= every) {
            last_full = Some(std::time::Instant::now());
            match a.watch_once().await {
                Ok(b) => busy = b,
                Err(e) => {
                    // The listing failed: the next turn makes a full pass again.
                    tracing::debug!(error = %e, "state watcher pass failed");
                    last_full = None;
                    busy = changed.into_iter().collect();
                }
            }
        } else if !changed.is_empty() {
            busy = a.watch_names(changed).await;
        }
        if last_consoles.elapsed() >= Duration::from_secs(1) {
            last_consoles = std::time::Instant::now();
            if let Err(e) = a.bound_consoles() {
                tracing::warn!(error = %e, "bounding console files failed");
            }
        }
    }
}

/// Runs until `shutdown` resolves.
pub async fn run(cfg: ServeConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let r = start(cfg).await?;
    shutdown.await;
    r.stop().await;
    Ok(())
}
