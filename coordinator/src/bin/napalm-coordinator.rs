//! `napalm-coordinator`: the control plane daemon.
//!
//! Serves `napalm.v1.CoordinatorService` over gRPC on the registry (embedded redb file by
//! default, or etcd shared by several coordinators that elect a leader). Agents register
//! and heartbeat; the leader marks silent agents down. The deploy pipeline (Deploy,
//! Undeploy, WatchEvents) arrives with issue #6 and answers UNIMPLEMENTED until then.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use napalm_coordinator::clock::SystemClock;
use napalm_coordinator::registry::agents::HeartbeatPolicy;
use napalm_coordinator::registry::clones::TokenKey;
use napalm_coordinator::registry::Registry;
use napalm_coordinator::service::Coordinator;
use napalm_coordinator::store::election::{Election, Role};
use napalm_coordinator::store::{self, etcd::EtcdStore};
use napalm_proto::v1::coordinator_service_server::CoordinatorServiceServer;

/// Control plane: registry, discovery, scheduling and deployment of clones.
#[derive(Parser)]
#[command(
    name = "napalm-coordinator",
    version,
    long_about = "Control plane: registry, discovery, scheduling and deployment of clones.\n\n\
                  Implemented: agent registration, heartbeats with TTL, registry queries, clone \
                  registration, embedded or etcd store with leader election.\n\
                  Not yet: Deploy/Undeploy/WatchEvents (issue #6) answer UNIMPLEMENTED."
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
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let store = store::open(&cli.store)
        .await
        .with_context(|| format!("opening the registry store {:?}", cli.store))?;
    tracing::info!(store = %store.describe(), "registry open");
    let registry = Registry::new(store, Arc::new(SystemClock));
    let key = TokenKey::new(&secret(&cli.secret_file)?)?;
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

    let svc = Coordinator::new(registry, policy, key);
    tracing::info!(listen = %cli.listen, "serving napalm.v1.CoordinatorService");
    tonic::transport::Server::builder()
        .add_service(CoordinatorServiceServer::new(svc))
        .serve_with_shutdown(cli.listen, shutdown())
        .await
        .context("gRPC server")?;
    sweeper.abort();
    role.take();
    Ok(())
}
