//! `napalm-agent`: the per-host daemon. Drives libvirt and serves the thesis's REST/CRUD
//! contract and the `napalm.v1.AgentService` gRPC API over the same core operations.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use napalm_agent::archive::Limits;
use napalm_agent::core::CoreConfig;
use napalm_agent::policy::Policy;
use napalm_agent::port_filter::PortFilterMode;
use napalm_agent::rest::RestConfig;
use napalm_agent::server::{self, ServeConfig};

/// Per-host agent: drives libvirt and serves the REST/CRUD contract and gRPC.
#[derive(Parser, Debug)]
#[command(name = "napalm-agent", version, about)]
struct Cli {
    /// libvirt connection URI (`qemu:///system`, `xen:///system`, `test:///default`).
    #[arg(long, env = "NAPALM_LIBVIRT_URI", default_value = "qemu:///system")]
    uri: String,
    /// REST listen address.
    #[arg(long, env = "NAPALM_HTTP_LISTEN", default_value = "127.0.0.1:8480")]
    http_listen: SocketAddr,
    /// gRPC listen address.
    #[arg(long, env = "NAPALM_GRPC_LISTEN", default_value = "127.0.0.1:8481")]
    grpc_listen: SocketAddr,
    /// State directory (blobs, domain directories, desired state).
    #[arg(
        long,
        env = "NAPALM_STATE_DIR",
        default_value = "/var/lib/napalm-agent"
    )]
    state_dir: PathBuf,
    /// REST path prefix, e.g. `/napalm` (the thesis used `/cgi-bin/napalm.cgi`).
    #[arg(long, env = "NAPALM_PREFIX", default_value = "")]
    prefix: String,
    /// API bearer token (prefer --token-file or the environment).
    #[arg(long, env = "NAPALM_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the API bearer token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Serve without authentication. Only for local trials: anyone who can reach the
    /// ports can then start VMs on this host.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Serve REST and gRPC in plain text (no TLS): for trials only. Without it the agent
    /// serves only over TLS: enrolled in the cluster (--join TOKEN, then mutual TLS with
    /// the cluster CA) or with --tls-cert and --tls-key.
    #[arg(long, env = "NAPALM_INSECURE_PLAIN")]
    insecure_plain: bool,
    /// Seconds a guest gets to shut down gracefully before it is destroyed.
    #[arg(long, default_value_t = 30.0)]
    shutdown_timeout: f64,
    /// Seconds between reconciliation passes.
    #[arg(long, default_value_t = 5.0)]
    reconcile_every: f64,
    /// Largest archive accepted by PUT /domain/NAME, bytes.
    #[arg(long, default_value_t = 1 << 30)]
    max_archive_bytes: usize,
    /// Largest total an archive may unpack to, bytes.
    #[arg(long, default_value_t = 8 << 30)]
    max_unpacked_bytes: u64,
    /// Most entries in an archive.
    #[arg(long, default_value_t = 1024)]
    max_entries: usize,
    /// Largest single file accepted by PUT /domain/NAME/FILE, bytes.
    #[arg(long, default_value_t = 1 << 30)]
    max_file_bytes: usize,
    /// Interface types guests may have (`user`, `network`, `bridge`...); none by default.
    #[arg(long = "allow-interface")]
    allow_interfaces: Vec<String>,
    /// Who enforces the `clean-traffic` filter an interface names (anti-spoofing on the
    /// host bridge): `nftables`, the agent itself, one atomic nft batch per start; or
    /// `libvirt`, its nwfilter driver (about 126 ebtables/iptables commands per start,
    /// under one lock for the whole host).
    #[arg(long, value_enum, default_value = "nftables")]
    port_filter: PortFilterArg,
    /// With --port-filter nftables: the network namespace the hypervisor's tap devices
    /// live in, when it is not the agent's own (e.g. /proc/1/ns/net for an agent in a
    /// namespace of its own beside the host's libvirtd). Unused with --port-filter libvirt.
    #[arg(long)]
    port_filter_netns: Option<PathBuf>,
    /// Allow host device pass-through (`<hostdev>`).
    #[arg(long)]
    allow_hostdev: bool,
    /// Allow host block devices as disks.
    #[arg(long)]
    allow_block_disks: bool,
    /// Allow `<graphics>`.
    #[arg(long)]
    allow_graphics: bool,
    /// Ganglia gmond-compatible XML listen address (gmetad `data_source`), e.g. 127.0.0.1:8649.
    #[arg(long, env = "NAPALM_GANGLIA_LISTEN")]
    ganglia_listen: Option<SocketAddr>,
    /// The Ganglia cluster name that XML reports. One gmetad polling several agents needs
    /// a name per agent (e.g. its host name): gmetad merges the data sources of one
    /// cluster name and their summary writes collide.
    #[arg(long, env = "NAPALM_GANGLIA_CLUSTER", default_value = napalm_agent::ganglia::DEFAULT_CLUSTER)]
    ganglia_cluster: String,
    /// Advertise over mDNS/DNS-SD on this interface (repeatable). Without it, no mDNS.
    #[arg(long = "mdns-interface")]
    mdns_interfaces: Vec<String>,
    /// Coordinator gRPC endpoint to register with and heartbeat to (http://host:port).
    #[arg(long, env = "NAPALM_COORDINATOR")]
    coordinator: Option<String>,
    /// Bearer token presented to the coordinator (its API token; prefer
    /// --coordinator-token-file or the environment). Default: this agent's own token.
    #[arg(long, env = "NAPALM_COORDINATOR_TOKEN", hide_env_values = true)]
    coordinator_token: Option<String>,
    /// File holding the bearer token presented to the coordinator.
    #[arg(long)]
    coordinator_token_file: Option<PathBuf>,
    /// OpenTelemetry collector to push metrics to over OTLP/gRPC (http://host:4317).
    /// Without it, no OTLP export.
    #[arg(long, env = "NAPALM_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Seconds between OTLP metric exports.
    #[arg(long, env = "NAPALM_OTLP_INTERVAL", default_value_t = 15.0)]
    otlp_interval: f64,
    /// TLS certificate chain (PEM) for REST and gRPC; needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Join token from `napalmctl agent token create`: enroll in the cluster at start
    /// (key generated here, certificate kept in STATE/tls/), then serve and call the
    /// coordinator over mutual TLS. Ignored once enrolled. Prefer --join-file or the
    /// environment: a token on the command line shows in `ps`.
    #[arg(
        long,
        env = "NAPALM_JOIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "join_file"
    )]
    join: Option<String>,
    /// File holding the join token.
    #[arg(long)]
    join_file: Option<PathBuf>,
}

/// `--port-filter`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PortFilterArg {
    Nftables,
    Libvirt,
}

fn secs(what: &str, v: f64) -> anyhow::Result<Duration> {
    if !v.is_finite() || v < 0.0 {
        bail!("--{what} must be a non-negative number of seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Spans (the gRPC calls the agent serves, parented by the caller's traceparent) go to
    // the same OTLP collector as the metrics.
    let tracer = match cli.otlp_endpoint.as_deref().map(str::trim) {
        Some(e) if !e.is_empty() => Some(
            napalm_agent::otel::tracer_provider(e, napalm_agent::otel::SERVICE_NAME)
                .context("starting the OTLP span exporter")?,
        ),
        _ => None,
    };
    {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(tracer.as_ref().map(|t| {
                tracing_opentelemetry::layer()
                    .with_tracer(t.tracer(napalm_agent::otel::SERVICE_NAME))
            }))
            .init();
    }
    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => Some(t.trim().to_owned()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading token file {}", f.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let join = match (&cli.join, &cli.join_file) {
        (Some(t), _) => Some(t.trim().to_owned()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading join token file {}", f.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    // Enrolled (or enrolling) agents authenticate callers by their certificates.
    let mutual_tls = join.is_some()
        || napalm_agent::identity::dir_of(&cli.state_dir)
            .join("agent.crt")
            .exists();
    if !mutual_tls && cli.tls_cert.is_none() && !cli.insecure_plain {
        bail!(
            "napalm-agent would serve REST and gRPC in plain text: enroll with --join TOKEN \
             (`napalmctl agent token create`; then mutual TLS with the cluster CA), or give \
             --tls-cert and --tls-key, or add --insecure-plain for a trial"
        );
    }
    let token = match (token, cli.insecure_no_auth || mutual_tls) {
        (Some(t), _) if t.is_empty() => bail!("the API token is empty"),
        (Some(t), _) => Some(t),
        (None, true) if mutual_tls => None,
        (None, true) => {
            tracing::warn!("serving WITHOUT authentication (--insecure-no-auth): anyone who reaches the ports can start VMs here");
            None
        }
        (None, false) => bail!("an API token is required: pass --token-file FILE or set NAPALM_AGENT_TOKEN (or enroll with --join TOKEN, or --insecure-no-auth for a local trial)"),
    };
    let coordinator_token = match (&cli.coordinator_token, &cli.coordinator_token_file) {
        (Some(_), Some(f)) => bail!(
            "both --coordinator-token (or NAPALM_COORDINATOR_TOKEN) and --coordinator-token-file {} are set; give one",
            f.display()
        ),
        (Some(t), None) => Some(t.trim().to_owned()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading coordinator token file {}", f.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    if coordinator_token.as_deref() == Some("") {
        bail!("the coordinator token is empty");
    }
    if cli.ganglia_cluster.trim().is_empty() {
        bail!("--ganglia-cluster is empty: give the cluster name gmetad should show (e.g. this host's name)");
    }
    let prefix = cli.prefix.trim_end_matches('/').to_owned();
    if !prefix.is_empty() && !prefix.starts_with('/') {
        bail!("--prefix must start with '/', got {prefix:?}");
    }
    let cfg = ServeConfig {
        core: CoreConfig {
            state_dir: cli.state_dir.clone(),
            policy: Policy {
                allow_hostdev: cli.allow_hostdev,
                allow_block_disks: cli.allow_block_disks,
                allow_interfaces: cli.allow_interfaces.clone(),
                allow_graphics: cli.allow_graphics,
                allowed_emulators: Vec::new(),
            },
            limits: Limits {
                max_entries: cli.max_entries,
                max_total_bytes: cli.max_unpacked_bytes,
            },
            shutdown_timeout: secs("shutdown-timeout", cli.shutdown_timeout)?,
            port_filter: match cli.port_filter {
                PortFilterArg::Libvirt => PortFilterMode::Libvirt,
                PortFilterArg::Nftables => PortFilterMode::Nftables {
                    netns: cli.port_filter_netns.clone(),
                },
            },
        },
        rest: RestConfig {
            prefix,
            token,
            max_archive_bytes: cli.max_archive_bytes,
            max_file_bytes: cli.max_file_bytes,
            max_xml_bytes: 1 << 20,
            libvirt_uri: cli.uri.clone(),
        },
        http_listen: cli.http_listen,
        grpc_listen: Some(cli.grpc_listen),
        reconcile_every: secs("reconcile-every", cli.reconcile_every)?,
        ganglia_listen: cli.ganglia_listen,
        ganglia_cluster: cli.ganglia_cluster.clone(),
        mdns_interfaces: cli.mdns_interfaces.clone(),
        coordinator: cli.coordinator.clone(),
        coordinator_token,
        tls: match (&cli.tls_cert, &cli.tls_key) {
            (Some(cert), Some(key)) => Some(napalm_agent::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        },
        join,
    };
    let otlp_every = secs("otlp-interval", cli.otlp_interval)?;
    let mut running = server::start(cfg).await.context("starting napalm-agent")?;
    if let Err(e) = running
        .start_otlp(cli.otlp_endpoint.as_deref(), otlp_every)
        .await
    {
        running.stop().await;
        return Err(e).context("starting the OTLP exporter");
    }
    println!(
        "napalm-agent listening http={} grpc={:?}",
        running.http_addr, running.grpc_addr
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping; running domains are left running");
    running.stop().await;
    if let Some(t) = tracer {
        // Flushes the last batch of spans.
        if let Err(e) = tokio::task::spawn_blocking(move || t.shutdown()).await? {
            tracing::warn!(error = %e, "OTLP span exporter shutdown failed");
        }
    }
    Ok(())
}
