//! `napalm-coordinator`: the control plane daemon.
//!
//! Serves `napalm.v1.CoordinatorService` over gRPC on the registry (embedded redb file by
//! default, or etcd shared by several coordinators that elect a leader), and the plain
//! HTTP endpoint booted clones register through. Agents register and heartbeat (or are
//! listed with `--agent`); the leader marks silent agents down. Deploy and Undeploy run
//! the pipeline when a kernel and base image are configured; `--mdns-interface` browses
//! for agents; `--export-root` makes it write the NFS exports of the shared root and of
//! each stateful clone's state.
//!
//! The gRPC API needs a bearer token (`--api-token-file`, `NAPALM_API_TOKEN`) from
//! operators and registering agents alike, unless it runs with `--insecure-no-auth`;
//! booted clones register with their own clone tokens instead. Static agents
//! (`--agent`) that do not answer yet are retried in the background with backoff.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use napalm_coordinator::browse::{Advert, Advertiser, Browser};
use napalm_coordinator::clock::SystemClock;
use napalm_coordinator::deploy::addresses::AddressPool;
use napalm_coordinator::deploy::artifacts::ArtifactConfig;
use napalm_coordinator::deploy::ship::Agents;
use napalm_coordinator::deploy::{DeployConfig, Deployer};
use napalm_coordinator::discovery::{keep_registering_static, Backoff};
use napalm_coordinator::exports::{ExportConfig, Exporter, SystemReload};
use napalm_coordinator::registry::agents::HeartbeatPolicy;
use napalm_coordinator::registry::clones::TokenKey;
use napalm_coordinator::registry::Registry;
use napalm_coordinator::scheduler::Policy;
use napalm_coordinator::service::{Coordinator, RequireToken};
use napalm_coordinator::store::election::{Election, Role};
use napalm_coordinator::store::{self, etcd::EtcdStore};
use napalm_proto::v1::coordinator_service_server::CoordinatorServiceServer;

/// Control plane: registry, discovery, scheduling and deployment of clones.
#[derive(Parser)]
#[command(
    name = "napalm-coordinator",
    version,
    long_about = "Control plane: registry, discovery, scheduling and deployment of clones.\n\n\
                  Implemented: agent registration and static agents, heartbeats with TTL, \
                  registry queries, clone registration (gRPC and HTTP), embedded or etcd \
                  store with leader election, deploy/undeploy pipeline.\n\
                  stateful clones with per-clone NFS state exports (nfs-ganesha or kernel NFS).\n\n\
                  The gRPC API requires a bearer token (--api-token-file FILE or \
                  NAPALM_API_TOKEN) unless --insecure-no-auth is given; napalmctl sends it \
                  with --token, agents with --coordinator-token-file."
)]
struct Cli {
    /// gRPC listen address.
    #[arg(long, env = "NAPALM_LISTEN", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Registry: a file path (embedded store) or etcd://host:port[,host:port...].
    #[arg(
        long,
        env = "NAPALM_STORE",
        default_value = "/var/lib/napalm/registry.redb"
    )]
    store: String,
    /// File holding the secret clone tokens derive from; created (mode 0600) if missing.
    #[arg(
        long,
        env = "NAPALM_SECRET_FILE",
        default_value = "/var/lib/napalm/secret"
    )]
    secret_file: PathBuf,
    /// This coordinator's id in leader election (etcd only).
    #[arg(long, env = "NAPALM_ID")]
    id: Option<String>,
    /// Leader lease TTL in seconds (etcd only).
    #[arg(long, default_value_t = 5)]
    lease_ttl: u64,
    /// Smallest agent heartbeat TTL in seconds (it grows with the number of agents).
    #[arg(long, default_value_t = 10)]
    heartbeat_min_ttl: u64,
    /// HTTP listen address (clone registration).
    #[arg(long, env = "NAPALM_HTTP_LISTEN", default_value = "127.0.0.1:7780")]
    http_listen: SocketAddr,
    /// Base URL clones use to reach the HTTP endpoint (default: http://HTTP_LISTEN).
    #[arg(long, env = "NAPALM_REGISTER_BASE")]
    register_base: Option<String>,
    /// Agents to use without discovery (gRPC endpoints, repeatable).
    #[arg(long = "agent", env = "NAPALM_AGENTS", value_delimiter = ',')]
    agents: Vec<String>,
    /// Bearer token every gRPC client (napalmctl, registering agents) must present;
    /// prefer --api-token-file or the environment.
    #[arg(long, env = "NAPALM_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// File holding the bearer token of the gRPC API.
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    /// Serve the gRPC API without authentication. Only for local trials: anyone who can
    /// reach --listen can then deploy and undeploy.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Bearer token presented to agents.
    #[arg(long, env = "NAPALM_AGENT_TOKEN")]
    agent_token: Option<String>,
    /// Guest kernel clones boot.
    #[arg(long, env = "NAPALM_KERNEL")]
    kernel: Option<PathBuf>,
    /// Base initramfs built by napalm-mkinitramfs.
    #[arg(long, env = "NAPALM_BASE_IMAGE")]
    base_image: Option<PathBuf>,
    /// Template set directories (repeatable; the shipped sets come last).
    #[arg(long = "sets")]
    sets: Vec<PathBuf>,
    /// Where clone layers are written.
    #[arg(long, default_value = "/var/lib/napalm/layers")]
    layers_dir: PathBuf,
    /// Address clones mount the shared root from.
    #[arg(long, default_value = "10.0.2.100")]
    server: String,
    /// libvirt network clones' NIC joins (none when unset).
    #[arg(long)]
    network: Option<String>,
    /// Kernel arguments before the generated root=/ip=.
    #[arg(long, default_value = "console=ttyS0 napalm.onfail=halt")]
    kernel_args: String,
    /// Seconds a clone may take from start to registration.
    #[arg(long, default_value_t = 300)]
    register_timeout: u64,
    /// Browse for agents and advertise this coordinator over mDNS on these interfaces
    /// (repeatable; none: no mDNS).
    #[arg(long = "mdns-interface")]
    mdns_interfaces: Vec<String>,
    /// Static clone addresses FIRST/PREFIX (e.g. 10.1.2.101/24): clone N gets FIRST+N-1
    /// (ip= on its command line, /etc/hosts); unset: clones use DHCP.
    #[arg(long, env = "NAPALM_CLONE_ADDRESSES")]
    clone_addresses: Option<AddressPool>,
    /// Server-side directory of the reference root: the coordinator writes its NFS export
    /// (read-only) and clones mount nfs:SERVER:DIR. Unset: exports are managed by hand.
    #[arg(long, env = "NAPALM_EXPORT_ROOT")]
    export_root: Option<PathBuf>,
    /// Who may mount the root (address, CIDR or *).
    #[arg(long, default_value = "*")]
    export_clients: String,
    /// Server-side directory of per-clone state (stateful clones), exported per clone.
    #[arg(long, default_value = "/srv/napalm/state")]
    export_state_dir: PathBuf,
    /// Size of a new stateful clone's state image, MiB.
    #[arg(long, default_value_t = 256)]
    state_size_mib: u64,
    /// nfs-ganesha: the file of EXPORT blocks this coordinator writes (%include it from
    /// ganesha.conf).
    #[arg(long)]
    ganesha_exports: Option<PathBuf>,
    /// nfs-ganesha's pid file; it gets SIGHUP to reload after a change.
    #[arg(long)]
    ganesha_pid_file: Option<PathBuf>,
    /// Kernel NFS server: the exports file this coordinator writes
    /// (e.g. /etc/exports.d/napalm.exports); `exportfs -ra` runs after a change.
    #[arg(long)]
    kernel_exports: Option<PathBuf>,
}

fn secret(path: &PathBuf) -> Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(s) = std::fs::read(path) {
        return Ok(s);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut s = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut s))
        .context("reading /dev/urandom")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating secret file {}", path.display()))?;
    std::io::Write::write_all(&mut f, &s)?;
    f.sync_all()?;
    Ok(s)
}

/// The API token from `--api-token`/`NAPALM_API_TOKEN` or `--api-token-file`; `None` only
/// with `--insecure-no-auth`.
fn api_token(cli: &Cli) -> Result<Option<String>> {
    let token = match (&cli.api_token, &cli.api_token_file) {
        (Some(_), Some(f)) => anyhow::bail!(
            "both --api-token (or NAPALM_API_TOKEN) and --api-token-file {} are set; give one",
            f.display()
        ),
        (Some(t), None) => Some(t.trim().to_owned()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the API token file {}", f.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    match (token, cli.insecure_no_auth) {
        (Some(t), _) if t.is_empty() => anyhow::bail!("the API token is empty"),
        (Some(t), _) => Ok(Some(t)),
        (None, true) => {
            tracing::warn!(
                "serving the gRPC API WITHOUT authentication (--insecure-no-auth): anyone who \
                 reaches it can deploy and undeploy"
            );
            Ok(None)
        }
        (None, false) => anyhow::bail!(
            "an API token is required: pass --api-token-file FILE or set NAPALM_API_TOKEN \
             (or --insecure-no-auth for a local trial)"
        ),
    }
}

/// This host's name, for the mDNS record.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "napalm-coordinator".into())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let api_token = api_token(&cli)?;
    let store = store::open(&cli.store).await.with_context(|| {
        format!(
            "opening the registry store {:?}: check that it is reachable from here \
                 (etcd started, the address right) or pass another --store",
            cli.store
        )
    })?;
    tracing::info!(store = %store.describe(), "registry open");
    let registry = Registry::new(store, Arc::new(SystemClock));
    let key = Arc::new(TokenKey::new(&secret(&cli.secret_file)?)?);
    let policy = HeartbeatPolicy {
        min_ttl: Duration::from_secs(cli.heartbeat_min_ttl),
        ..Default::default()
    };

    // With etcd, only the elected leader writes scheduling decisions and sweeps agents.
    let mut role = if let Some(rest) = cli.store.strip_prefix("etcd://") {
        let endpoints: Vec<String> = rest.split(',').map(|e| format!("http://{e}")).collect();
        let etcd = EtcdStore::connect(&endpoints).await?;
        let id = cli.id.clone().unwrap_or_else(|| cli.listen.to_string());
        let election = Election::start(etcd.client(), id, Duration::from_secs(cli.lease_ttl));
        Some(election)
    } else {
        None
    };
    let sweeper = {
        let registry = registry.clone();
        let roles = role.as_ref().map(Election::subscribe);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let leader = match &roles {
                    None => true,
                    Some(r) => {
                        let current = r.borrow().clone();
                        match current {
                            Role::Leader { fence } => {
                                registry.set_fence(Some(fence));
                                true
                            }
                            Role::Follower { .. } => {
                                registry.set_fence(None);
                                false
                            }
                        }
                    }
                };
                if leader {
                    if let Err(e) = registry.sweep_agents().await {
                        tracing::warn!(error = %e, "agent sweep failed");
                    }
                }
            }
        })
    };

    let exporter = match &cli.export_root {
        Some(root) => Some(Arc::new(
            Exporter::new(
                ExportConfig {
                    root: root.clone(),
                    root_clients: cli.export_clients.clone(),
                    state_dir: cli.export_state_dir.clone(),
                    state_size: cli.state_size_mib << 20,
                    ganesha_file: cli.ganesha_exports.clone(),
                    ganesha_pid_file: cli.ganesha_pid_file.clone(),
                    exports_file: cli.kernel_exports.clone(),
                    exportfs: cli.kernel_exports.is_some(),
                },
                Box::new(SystemReload),
            )
            .context("NFS export settings")?,
        )),
        None => None,
    };
    let deployer = match (&cli.kernel, &cli.base_image) {
        (Some(kernel), Some(base)) => {
            let mut sets = cli.sets.clone();
            sets.push(napalm_overlay::default_sets_dir());
            Some(Deployer::new(
                registry.clone(),
                DeployConfig {
                    artifacts: ArtifactConfig {
                        kernel: kernel.clone(),
                        base_image: base.clone(),
                        sets,
                        layers_dir: cli.layers_dir.clone(),
                    },
                    server: cli.server.clone(),
                    register_base: cli
                        .register_base
                        .clone()
                        .unwrap_or_else(|| format!("http://{}", cli.http_listen)),
                    agent_token: cli.agent_token.clone(),
                    register_timeout: Duration::from_secs(cli.register_timeout),
                    concurrency: 8,
                    policy: Policy::default(),
                    network: cli.network.clone(),
                    kernel_args: cli.kernel_args.clone(),
                    attempts: 3,
                    addresses: cli.clone_addresses,
                    exports: exporter.clone(),
                },
                Arc::clone(&key),
            ))
        }
        _ => {
            tracing::warn!("no --kernel/--base-image: Deploy and Undeploy are unavailable");
            None
        }
    };
    if let Some(d) = &deployer {
        // The root (and any stateful clones' state) is exported before anything boots.
        d.sync_exports()
            .await
            .map_err(anyhow::Error::msg)
            .context("writing the NFS exports")?;
    }
    let links = Agents::new(cli.agent_token.clone());
    // Static agents may start after us: each is retried in the background until it answers.
    let statics: Vec<_> = cli
        .agents
        .iter()
        .map(|ep| {
            tokio::spawn(keep_registering_static(
                registry.clone(),
                links.clone(),
                ep.clone(),
                policy,
                Backoff::default(),
            ))
        })
        .collect();
    let _browser = if cli.mdns_interfaces.is_empty() {
        None
    } else {
        Some(
            Browser::start(
                &cli.mdns_interfaces,
                registry.clone(),
                links.clone(),
                policy,
            )
            .context("starting mDNS browsing")?,
        )
    };
    let _advertiser = if cli.mdns_interfaces.is_empty() {
        None
    } else {
        let advert = Advert {
            id: cli
                .id
                .clone()
                .unwrap_or_else(|| "napalm-coordinator".into()),
            hostname: hostname(),
            grpc_port: cli.listen.port(),
            http_port: cli.http_listen.port(),
        };
        Some(Advertiser::start(&cli.mdns_interfaces, &advert).context("advertising over mDNS")?)
    };
    let http = tokio::net::TcpListener::bind(cli.http_listen)
        .await
        .with_context(|| format!("binding HTTP {}", cli.http_listen))?;
    let app = napalm_coordinator::http::router(registry.clone(), Arc::clone(&key));
    let http_task = tokio::spawn(async move { axum::serve(http, app).await });
    let mut svc = Coordinator::new(registry, policy, key, deployer);
    if let Some(e) = &role {
        svc = svc.with_election(e.subscribe());
    }
    tracing::info!(listen = %cli.listen, http = %cli.http_listen, "serving napalm.v1.CoordinatorService");
    let server = CoordinatorServiceServer::new(svc);
    let router = match api_token {
        Some(t) => tonic::transport::Server::builder().add_service(RequireToken::new(server, t)),
        None => tonic::transport::Server::builder().add_service(server),
    };
    router
        .serve_with_shutdown(cli.listen, shutdown())
        .await
        .context("gRPC server")?;
    for s in statics {
        s.abort();
    }
    sweeper.abort();
    http_task.abort();
    role.take();
    Ok(())
}
