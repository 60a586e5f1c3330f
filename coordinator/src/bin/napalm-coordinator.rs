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
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use napalm_coordinator::deploy::addresses::AddressPool;
use napalm_coordinator::deploy::artifacts::{ArtifactConfig, GuestFirmware, KernelEntry};
use napalm_coordinator::deploy::DeployConfig;
use napalm_coordinator::exports::ExportConfig;
use napalm_coordinator::registry::agents::HeartbeatPolicy;
use napalm_coordinator::scheduler::Policy;
use napalm_coordinator::server::{self, ApiAuth, Secret, ServeConfig};
use napalm_coordinator::telemetry;

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
    /// etcd over TLS: the CA (PEM) etcd's server certificate must chain to; endpoints are
    /// then dialed https://.
    #[arg(long, env = "NAPALM_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to etcd started with --client-cert-auth; needs
    /// --etcd-key and --etcd-ca.
    #[arg(long, env = "NAPALM_ETCD_CERT", requires_all = ["etcd_key", "etcd_ca"])]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "NAPALM_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
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
    /// HTTPS listen address: the HTTP endpoint (clone registration, cluster files,
    /// /metrics, web view) over TLS with the coordinator's certificate, signed by the
    /// cluster CA clones find in their layer (/etc/napalm/ca.crt). Needs --trust-listen.
    #[arg(long, env = "NAPALM_HTTPS_LISTEN")]
    https_listen: Option<SocketAddr>,
    /// Base URL clones use to reach the HTTP endpoint, e.g. https://10.0.0.1:7781 (its
    /// host is named in the coordinator's certificate); default: https://HTTPS_LISTEN
    /// with --https-listen, else http://HTTP_LISTEN.
    #[arg(long, env = "NAPALM_REGISTER_BASE")]
    register_base: Option<String>,
    /// Agents to use without discovery (gRPC endpoints, repeatable).
    #[arg(long = "agent", env = "NAPALM_AGENTS", value_delimiter = ',')]
    agents: Vec<String>,
    /// Bearer token every client of the plain gRPC API (--insecure-plain: napalmctl,
    /// agents registering without a certificate) must present; prefer --api-token-file or
    /// the environment. Not needed without --insecure-plain.
    #[arg(long, env = "NAPALM_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// File holding the bearer token of the gRPC API.
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    /// File holding a second bearer token with the viewer role: it may list and watch
    /// (agents, deployments, clones, events, join tokens) but change nothing. The
    /// --api-token is the admin role.
    #[arg(long, env = "NAPALM_VIEWER_TOKEN_FILE")]
    api_viewer_token_file: Option<PathBuf>,
    /// Serve the gRPC API without authentication. Only for local trials: anyone who can
    /// reach --listen can then deploy and undeploy.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Also serve the plain listeners: the gRPC API on --listen (bearer token in clear)
    /// and the HTTP endpoint on --http-listen (clone registration, /metrics, the web
    /// view). For trials; without it only the TLS listeners serve (--trust-listen: the
    /// API to certificate holders, --https-listen: the HTTP endpoint).
    #[arg(long, env = "NAPALM_INSECURE_PLAIN")]
    insecure_plain: bool,
    /// Bearer token presented to agents.
    #[arg(long, env = "NAPALM_AGENT_TOKEN")]
    agent_token: Option<String>,
    /// Guest kernel clones boot.
    #[arg(long, env = "NAPALM_KERNEL")]
    kernel: Option<PathBuf>,
    /// How QEMU/KVM clones enter the kernel. `pvh`: QEMU boots the uncompressed ELF,
    /// extracted once from the bzImage (artifact vmlinux: 52 MB from Debian's 14 MB,
    /// shipped once per agent), straight through its PVH entry (CONFIG_PVH): under TCG
    /// this skips the bzImage's real-mode setup and payload decompression on every boot
    /// (measured 0.79x the CPU time of a boot); a kernel without the note is refused at
    /// start. `bzimage`: the kernel as given. `auto`: pvh when the kernel has the note,
    /// else bzimage. Xen PV clones always get the bzImage. Changing it rolls running
    /// clones.
    #[arg(long, value_enum, default_value_t, env = "NAPALM_KERNEL_ENTRY")]
    kernel_entry: KernelEntry,
    /// The firmware QEMU TCG clones booting through PVH start with. `auto`: qboot from
    /// /usr/share/qemu/qboot.rom when this host has it (Debian's qemu-system-data), a BIOS
    /// that only loads the kernel QEMU hands it (0.86x QEMU's CPU to /sbin/init against
    /// SeaBIOS here), else libvirt's default; `default`: libvirt's SeaBIOS; or the path of
    /// a ROM. Shipped to agents like the kernel. KVM and Xen clones keep their default.
    #[arg(long, default_value_t, env = "NAPALM_GUEST_FIRMWARE")]
    guest_firmware: GuestFirmware,
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
    /// Seconds an agent stays down past its heartbeat TTL before its host is taken for
    /// dead and its stateless clones boot on other agents.
    #[arg(long, default_value_t = 30)]
    agent_lost_grace: u64,
    /// Restarts on the same agent of a clone whose domain died (QEMU killed, guest
    /// crashed or powered off) before it is replaced on another agent; a deployment may
    /// set its own. Restarts back off 2, 4, 8… s.
    #[arg(long, default_value_t = 3)]
    restart_budget: u32,
    /// Seconds between the leader's passes that converge every deployment to its spec
    /// with no client connected (0: only when a client deploys).
    #[arg(long, default_value_t = 2)]
    converge_every: u64,
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
    /// vCPUs the scheduler offers per host CPU (clones mostly idle, or a boot storm under
    /// TCG, take more; CPU-bound ones fewer).
    #[arg(long, env = "NAPALM_CPU_OVERCOMMIT", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    cpu_overcommit: u64,
    /// Append each clone's layer to its own initramfs, even with --export-root and
    /// --clone-addresses (where layers are otherwise NFS exports): to compare the two, or
    /// where the NFS server should serve the root only.
    #[arg(long, env = "NAPALM_LAYERS_IN_INITRAMFS")]
    layers_in_initramfs: bool,
    /// Give QEMU/KVM clones ACPI and the APIC (`true`, the default, or `false`): their
    /// kernel then stops ticking while idle (an idle TCG clone here: 0.009 CPU-s a second
    /// against 0.06-0.09) and keeps honest time (HPET, calibrated TSC), for about 1 s
    /// more of boot under TCG. Without, it ticks the PIT 250 times a second, idle or not,
    /// and its clock falls behind whenever its vCPU waits for the host's CPU.
    #[arg(long, env = "NAPALM_GUEST_ACPI", default_value_t = true, action = clap::ArgAction::Set)]
    guest_acpi: bool,
    /// Back QEMU/KVM clones' RAM with their host's huge page pool (hugetlbfs mounted
    /// before libvirtd starts, `vm.nr_hugepages` large enough for the clones an agent
    /// runs). Off by default: a host without such a pool cannot start the clones.
    #[arg(long, env = "NAPALM_GUEST_HUGEPAGES")]
    guest_hugepages: bool,
    /// Start QEMU/KVM clones from their agent's template of their shape (`true`) instead of
    /// booting each cold (`false`, the default): an agent boots one guest per shape until
    /// napalm-init has loaded its modules, saves it, and starts each clone by restoring
    /// that memory with the clone's own command line in QEMU's fw_cfg. Under TCG the
    /// kernel's start and the module loads are most of a boot. Clones with scratch disks,
    /// and clones whose layers ride in their initramfs (every image differs), boot cold;
    /// so does one whose template or restore fails, and every restart.
    #[arg(long, env = "NAPALM_BOOT_FROM_TEMPLATE", default_value_t = false, action = clap::ArgAction::Set)]
    boot_from_template: bool,
    /// How many clones boot at once on one agent: `auto` (the default: twice as many as its
    /// host has CPUs for QEMU/TCG guests, no limit for KVM and Xen), `off`, or a number. A
    /// clone's domain is created once a slot is free; the slot is held until it registers,
    /// fails or its boot timeout passes. Under TCG a boot's cost grows with its length, so
    /// booting many more guests than CPUs stretches them all.
    #[arg(long, env = "NAPALM_BOOT_CONCURRENCY", default_value = "auto")]
    boot_concurrency: napalm_coordinator::deploy::boot_slots::BootConcurrency,
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
    /// OpenTelemetry collector to export traces of deploys to over OTLP/gRPC
    /// (http://host:4317): a `deploy` span per Deploy call, a `clone` span per clone with
    /// its phases under it; the W3C traceparent goes to agents so their spans join.
    /// Without it, no export.
    #[arg(long, env = "NAPALM_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(flatten)]
    trust: napalm_coordinator::trust::flags::TrustFlags,
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
        // The server warns that it serves without authentication.
        (None, true) => Ok(None),
        // No plain API to guard: callers of the TLS listener present certificates.
        (None, false) if !cli.insecure_plain => Ok(None),
        (None, false) => anyhow::bail!(
            "an API token is required: pass --api-token-file FILE or set NAPALM_API_TOKEN \
             (or --insecure-no-auth for a local trial)"
        ),
    }
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

/// Raises the soft limit on open files to the hard one: every running clone holds an HTTP
/// request open on its cluster files, and each agent a connection, so the common soft
/// limit of 1024 would refuse connections past a thousand clones.
fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if got != 0 || lim.rlim_cur >= lim.rlim_max {
        return;
    }
    let soft = lim.rlim_cur;
    // An unlimited hard limit cannot be the soft one: the kernel's ceiling is nr_open.
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|v| v.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(1 << 20);
    lim.rlim_cur = lim.rlim_max.min(ceiling);
    if lim.rlim_cur <= soft {
        return;
    }
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        tracing::debug!(
            from = soft,
            to = lim.rlim_max,
            "raised the open files limit"
        );
    } else {
        tracing::warn!(
            limit = soft,
            error = %std::io::Error::last_os_error(),
            "could not raise the open files limit; clones past it cannot connect"
        );
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let tracer = match cli.otlp_endpoint.as_deref().map(str::trim) {
        Some(e) if !e.is_empty() => Some(
            telemetry::tracer_provider(e, telemetry::SERVICE_NAME)
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
                tracing_opentelemetry::layer().with_tracer(t.tracer(telemetry::SERVICE_NAME))
            }))
            .init();
    }
    raise_open_files();
    let api_auth = match api_token(&cli)? {
        Some(t) => ApiAuth::Token(t),
        None => ApiAuth::Insecure,
    };
    let viewer_token = match &cli.api_viewer_token_file {
        None => None,
        Some(f) => {
            if matches!(api_auth, ApiAuth::Insecure) {
                anyhow::bail!(
                    "--api-viewer-token-file needs an admin token (--api-token-file): \
                     without one the API is open to everyone"
                );
            }
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("reading the viewer token file {}", f.display()))?
                .trim()
                .to_owned();
            if t.is_empty() {
                anyhow::bail!("the viewer token file {} is empty", f.display());
            }
            Some(t)
        }
    };
    let deploy = match (&cli.kernel, &cli.base_image) {
        (Some(kernel), Some(base)) => {
            let mut sets = cli.sets.clone();
            sets.push(napalm_overlay::default_sets_dir());
            Some(DeployConfig {
                artifacts: ArtifactConfig {
                    kernel: kernel.clone(),
                    kernel_entry: cli.kernel_entry,
                    firmware: cli.guest_firmware.clone(),
                    base_image: base.clone(),
                    sets,
                    layers_dir: cli.layers_dir.clone(),
                },
                server: cli.server.clone(),
                register_base: cli.register_base.clone().unwrap_or_default(),
                agent_token: None,
                register_timeout: Duration::from_secs(cli.register_timeout),
                concurrency: 8,
                policy: Policy {
                    cpu_overcommit: cli.cpu_overcommit,
                    ..Policy::default()
                },
                network: cli.network.clone(),
                kernel_args: cli.kernel_args.clone(),
                attempts: 3,
                lost_grace: Duration::from_secs(cli.agent_lost_grace),
                restart_budget: cli.restart_budget,
                addresses: cli.clone_addresses,
                layers_in_initramfs: cli.layers_in_initramfs,
                guest_acpi: cli.guest_acpi,
                guest_hugepages: cli.guest_hugepages,
                boot_from_template: cli.boot_from_template,
                boot_concurrency: cli.boot_concurrency,
                informer: true,
                exports: None,
                // Filled by `server::start` from --trust-listen.
                trust: None,
            })
        }
        _ => None,
    };
    let cfg = ServeConfig {
        plain: cli.insecure_plain,
        listen: cli.listen,
        http_listen: cli.http_listen,
        https_listen: cli.https_listen,
        store: cli.store.clone(),
        etcd_tls: cli
            .etcd_ca
            .clone()
            .map(|ca| napalm_coordinator::store::etcd::EtcdTls {
                ca,
                identity: cli.etcd_cert.clone().zip(cli.etcd_key.clone()),
            }),
        secret: Secret::File(cli.secret_file.clone()),
        viewer_token,
        id: cli.id.clone(),
        lease_ttl: Duration::from_secs(cli.lease_ttl),
        heartbeat: HeartbeatPolicy {
            min_ttl: Duration::from_secs(cli.heartbeat_min_ttl),
            ..Default::default()
        },
        api_auth,
        agent_token: cli.agent_token.clone(),
        static_agents: cli.agents.clone(),
        mdns_interfaces: cli.mdns_interfaces.clone(),
        deploy,
        trust: cli.trust.config(
            cli.secret_file
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("admin"),
        ),
        converge_every: (cli.converge_every > 0).then(|| Duration::from_secs(cli.converge_every)),
        exports: cli.export_root.as_ref().map(|root| ExportConfig {
            root: root.clone(),
            root_clients: cli.export_clients.clone(),
            state_dir: cli.export_state_dir.clone(),
            state_size: cli.state_size_mib << 20,
            ganesha_file: cli.ganesha_exports.clone(),
            ganesha_pid_file: cli.ganesha_pid_file.clone(),
            exports_file: cli.kernel_exports.clone(),
            exportfs: cli.kernel_exports.is_some(),
        }),
    };
    let running = server::start(cfg).await?;
    shutdown().await;
    running.shutdown().await.context("gRPC server")?;
    if let Some(t) = tracer {
        // Flushes the last batch of spans.
        if let Err(e) = tokio::task::spawn_blocking(move || t.shutdown()).await? {
            tracing::warn!(error = %e, "OTLP span exporter shutdown failed");
        }
    }
    Ok(())
}
