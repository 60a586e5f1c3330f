//! The whole grid as an operator runs it, on this one machine: a server namespace with
//! `napalm-coordinator` (and, for QEMU clones, nfs-ganesha exporting the cached reference
//! root with the exports the coordinator writes), N agent namespaces each running
//! `napalm-agent`, and a client namespace with nothing on it, all on a private bridge.
//! Agents and coordinator find each other by mDNS only.
//!
//! With [`Hypervisor::Qemu`] the agents drive the host's libvirtd and clones are QEMU
//! guests (libvirtd is one daemon in the root namespace) attached through
//! [`Network::root_bridge`] to the same private network; they get static addresses
//! PREFIX.101+ and mount the root from the server. With [`Hypervisor::Test`] the agents use
//! libvirt's in-process test driver: nothing boots, for tests of the daemons' interfaces.
//!
//! Everything is torn down on drop: the grid's domains (by name prefix), daemons (by PID),
//! the transient libvirt network, bridges and namespaces.

mod clones;
mod daemons;
mod error;
mod guest;
pub mod hugepages;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub use clones::clone_address;
pub use error::GridError;
pub use guest::{base_image, guest_kernel};

use crate::bins;
use crate::netns::{Host, Network};
use crate::proc::{wait_for, Daemon};
use clones::virsh;
use error::Ctx;

/// Bearer token of every API in the grid: agents and coordinator share it, tests use it.
pub const TOKEN: &str = "napalm-grid-token";
/// The coordinator's gRPC port on the server host.
pub const GRPC: u16 = 7700;
/// The coordinator's HTTP port (clones' plain registration) on the server host.
pub const HTTP: u16 = 7780;
/// Each agent's REST port.
pub const AGENT_HTTP: u16 = 8480;
/// Each agent's gRPC port.
pub const AGENT_GRPC: u16 = 8481;
/// Each agent's Ganglia (gmond-compatible XML) port.
pub const AGENT_GANGLIA: u16 = 8649;
/// The coordinator's TLS listener (enrollment, mutual TLS) when the grid runs the PKI.
pub const TRUST: u16 = 7443;
/// The coordinator's HTTPS endpoint (registration, cluster files, /metrics over TLS with
/// its CA-signed certificate) when the grid runs the PKI.
pub const HTTPS: u16 = 7781;

/// What the agents' libvirt drives, and so whether clones can boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hypervisor {
    /// The host's libvirtd (`qemu:///system`): clones boot as QEMU guests from the reference
    /// root over NFS. The grid builds the root and the base image, runs nfs-ganesha and a
    /// libvirt network, and takes the machine-wide grid lock (one such grid at a time).
    #[default]
    Qemu,
    /// libvirt's in-process `test:///default` driver: domains are records and nothing boots.
    /// No root, image, ganesha or lock: such grids start in seconds and run side by side.
    Test,
}

/// What [`Grid::start`] builds; the default is the operator's grid: two agents on QEMU,
/// a coordinator, the cached busybox root.
#[derive(Debug, Clone)]
pub struct GridOptions {
    /// How many agent hosts (PREFIX.11, .12, …), each running `napalm-agent`.
    pub agents: usize,
    /// What the agents drive ([`Hypervisor::Qemu`] unless a test only talks to daemons).
    pub hypervisor: Hypervisor,
    /// Whether the server runs `napalm-coordinator`; without it the agents stand alone.
    pub coordinator: bool,
    /// Path prefix of the agents' REST API (`--prefix`, e.g. `/napalm`; empty for none).
    pub rest_prefix: String,
    /// Where the reference roots are cached (default `/var/cache/napalm/roots`, or
    /// `NAPALM_CACHE`): kept across runs and clones of the repository, rebuilt only when
    /// their inputs change.
    pub cache: PathBuf,
    /// Keep the grid's directory (logs, layers) after drop.
    pub keep: bool,
    /// The reference root to export (default: the cached busybox root).
    pub root: Option<PathBuf>,
    /// How long an agent stays down past its heartbeat TTL before the coordinator takes
    /// its host for dead and boots its stateless clones elsewhere (`--agent-lost-grace`).
    /// The default, 90 s, outlasts the fault test's 30 s cut of an agent's link.
    pub agent_lost_grace: std::time::Duration,
    /// More arguments for `napalm-coordinator` (`--sets DIR`, `--restart-budget N`…);
    /// `{server}` in them stands for the server's address, which the grid picks.
    pub coordinator_args: Vec<String>,
    /// Run the cluster PKI with agent certificates of this lifetime: the coordinator
    /// serves `--trust-listen` on PREFIX.1:[`TRUST`], and each agent, instead of the
    /// shared token, enrolls with a join token `napalmctl agent token create` made for it
    /// (`NAPALM_JOIN_TOKEN`), then serves and calls over mutual TLS only.
    pub trust_cert_ttl: Option<std::time::Duration>,
    /// Clones register (and fetch their cluster files) over HTTPS, verifying the
    /// coordinator with the CA in their layer: needs [`Self::trust_cert_ttl`] and a root
    /// with curl (busybox's wget cannot speak TLS to rustls), e.g.
    /// [`crate::rootfs::busybox_root_with`].
    pub register_over_https: bool,
    /// More arguments for every `napalm-agent` (`--otlp-endpoint URL`…), with `{server}`
    /// as for the coordinator's.
    pub agent_args: Vec<String>,
    /// Serve the coordinator's plain listeners (`--insecure-plain`, the default here):
    /// the gRPC API napalmctl reaches with the shared token and plain HTTP, where busybox
    /// roots register. Off: only its TLS listeners serve, which needs
    /// [`Self::trust_cert_ttl`] and [`Self::register_over_https`]; [`Grid::napalmctl`]
    /// then speaks mutual TLS with the admin identity the coordinator wrote at start
    /// ([`Grid::admin_identity`]).
    pub insecure_plain: bool,
    /// Whether the base initramfs's modules keep their signatures (napalm-mkinitramfs's
    /// `--module-signatures`); cut off by default, as napalm-mkinitramfs builds it.
    pub module_signatures: napalm_initramfs::modsig::ModuleSignatures,
    /// Bytes of huge pages to reserve for the clones (QEMU grids): the pool is raised
    /// and touched at start ([`hugepages::HugePagePool`]), the coordinator gets
    /// `--guest-hugepages`, and the pool is set back when the grid drops.
    pub hugepage_pool: Option<u64>,
}

/// `NAPALM_MODULE_SIGNATURES` (`keep` or `strip`): the base image's modules with their
/// signatures (the baseline the benches and the demo measure against) or, by default as
/// [`GridOptions::default`], without.
pub fn module_signatures_from_env() -> Result<napalm_initramfs::modsig::ModuleSignatures, String> {
    match std::env::var("NAPALM_MODULE_SIGNATURES") {
        Ok(s) => s
            .parse()
            .map_err(|e| format!("NAPALM_MODULE_SIGNATURES: {e}")),
        Err(_) => Ok(napalm_initramfs::modsig::ModuleSignatures::Strip),
    }
}

impl Default for GridOptions {
    fn default() -> Self {
        Self {
            agents: 2,
            hypervisor: Hypervisor::Qemu,
            coordinator: true,
            rest_prefix: String::new(),
            cache: std::env::var_os("NAPALM_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/cache/napalm/roots")),
            keep: false,
            root: None,
            agent_lost_grace: std::time::Duration::from_secs(90),
            coordinator_args: Vec::new(),
            trust_cert_ttl: None,
            register_over_https: false,
            agent_args: Vec::new(),
            insecure_plain: true,
            module_signatures: napalm_initramfs::modsig::ModuleSignatures::Strip,
            hugepage_pool: None,
        }
    }
}

/// A running grid; dropping it tears everything down, also when a test panics.
pub struct Grid {
    /// PREFIX.1: the coordinator, ganesha, and where `napalmctl` runs.
    pub server: Host,
    /// PREFIX.11+: agent `i` is `agent_hosts[i]`.
    pub agent_hosts: Vec<Host>,
    /// PREFIX.2: runs nothing of the grid; clients reach the grid from here as outsiders.
    pub client: Host,
    /// The grid's working directory (logs under `log/`).
    pub dir: PathBuf,
    /// The exported reference root ([`Hypervisor::Qemu`] only).
    pub root: Option<PathBuf>,
    /// Prefix of the private /24, e.g. `10.113.1`.
    pub prefix: String,
    /// Names of domains this grid may have created start with this.
    pub domain_prefix: String,
    hypervisor: Hypervisor,
    rest_prefix: String,
    kernel: Option<PathBuf>,
    coordinator: Option<Daemon>,
    ganesha: Option<Daemon>,
    /// ganesha's private D-Bus, started with the first ganesha (QEMU grids).
    ganesha_bus: Option<crate::ganesha::PrivateBus>,
    agents: Vec<Option<Daemon>>,
    libvirt_net: Option<String>,
    agent_lost_grace: std::time::Duration,
    coordinator_args: Vec<String>,
    trust_cert_ttl: Option<std::time::Duration>,
    insecure_plain: bool,
    register_over_https: bool,
    agent_args: Vec<String>,
    keep: bool,
    net: Network,
    /// Held for a QEMU grid's life: those grids (tests, the demo) run one at a time.
    _lock: Option<std::fs::File>,
    /// Given back after the grid's domains are gone (fields drop after `Drop::drop`).
    _hugepages: Option<hugepages::HugePagePool>,
}

/// `host`'s address with `port`. Network hosts always have IPv4 addresses.
fn socket(host: &Host, port: u16) -> SocketAddr {
    let ip: Ipv4Addr = host
        .addr
        .parse()
        .expect("netns::Network gives every host an IPv4 address");
    SocketAddr::from((ip, port))
}

/// Takes the machine-wide grid lock (flock on /run/napalm-grid-harness.lock), waiting.
fn grid_lock() -> Result<std::fs::File, GridError> {
    use std::os::fd::AsRawFd;
    const LOCK: &str = "/run/napalm-grid-harness.lock";
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .ctx(format!("opening {LOCK}"))?;
    loop {
        // SAFETY: flock on a descriptor we own; released when the file is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).ctx(format!("locking {LOCK}"));
        }
    }
}

fn ensure_libvirtd() -> Result<(), GridError> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services");
    let out = Command::new("bash")
        .arg(&script)
        .arg("start")
        .stdout(Stdio::null())
        .output()
        .ctx("running scripts/services start")?;
    if out.status.success() {
        Ok(())
    } else {
        Err(GridError::CommandFailed {
            command: "scripts/services start (libvirtd is needed)".into(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

impl Grid {
    /// Builds and starts everything; returns when every agent listens and, with a
    /// coordinator, is registered with it. On failure everything started is torn down.
    pub fn start(opts: GridOptions, domain_prefix: &str) -> Result<Grid, GridError> {
        let qemu = opts.hypervisor == Hypervisor::Qemu;
        let lock = if qemu { Some(grid_lock()?) } else { None };
        if qemu {
            ensure_libvirtd()?;
        }
        let pool = match opts.hugepage_pool.filter(|_| qemu) {
            Some(bytes) => Some(hugepages::HugePagePool::reserve(bytes)?),
            None => None,
        };
        let mut coordinator_args = opts.coordinator_args.clone();
        if pool.is_some() {
            coordinator_args.push("--guest-hugepages".into());
        }
        let dir = tempfile::Builder::new()
            .prefix("napalm-grid-")
            .tempdir()
            .ctx("creating the grid directory")?
            .keep();
        for d in ["log", "ganesha", "state", "layers"] {
            std::fs::create_dir_all(dir.join(d)).ctx(format!("creating {d}/ in the grid"))?;
        }
        let mut net = Network::new()?;
        let server = net.host(1)?;
        let client = net.host(2)?;
        let mut agent_hosts = Vec::new();
        for i in 0..opts.agents {
            agent_hosts.push(net.host(11 + i as u8)?);
        }
        let prefix = net.prefix.clone();
        let mut grid = Grid {
            server,
            agent_hosts,
            client,
            dir,
            root: None,
            prefix,
            domain_prefix: domain_prefix.to_owned(),
            hypervisor: opts.hypervisor,
            rest_prefix: opts.rest_prefix.clone(),
            kernel: None,
            coordinator: None,
            ganesha: None,
            ganesha_bus: None,
            agents: Vec::new(),
            libvirt_net: None,
            agent_lost_grace: opts.agent_lost_grace,
            coordinator_args,
            trust_cert_ttl: opts.trust_cert_ttl,
            insecure_plain: opts.insecure_plain,
            register_over_https: opts.register_over_https,
            agent_args: opts.agent_args.clone(),
            keep: opts.keep,
            net,
            _lock: lock,
            _hugepages: pool,
        };
        if qemu {
            grid.prepare_clones(&opts)?;
        }
        if opts.coordinator {
            grid.start_coordinator()?;
        }
        if qemu {
            grid.start_ganesha()?;
        }
        for i in 0..grid.agent_hosts.len() {
            grid.agents.push(None);
            grid.start_agent(i)?;
        }
        for i in 0..grid.agent_hosts.len() {
            grid.wait_agent_listens(i)?;
        }
        if opts.coordinator {
            grid.wait_agents_registered()?;
        }
        Ok(grid)
    }

    /// Waits until `napalmctl agents` lists every agent as ready (found by mDNS).
    fn wait_agents_registered(&mut self) -> Result<(), GridError> {
        let want = self.agent_hosts.len();
        let mut last = String::new();
        let ready = wait_for(Duration::from_secs(60), || {
            let out = match self.napalmctl(&["--output", "json", "agents"]) {
                Ok(o) => o,
                Err(e) => {
                    last = crate::error_chain(&e);
                    return None;
                }
            };
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let n = v
                .as_array()?
                .iter()
                .filter(|a| {
                    a["state"]
                        .as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case("ready"))
                })
                .count();
            (n >= want).then_some(())
        });
        match ready {
            Some(()) => Ok(()),
            None => Err(self.timeout(
                format!("{want} agents did not register by mDNS (napalmctl agents: {last})"),
                60,
            )),
        }
    }

    /// A [`GridError::Timeout`] for `what`, with the daemons' logs.
    fn timeout(&mut self, what: String, secs: u64) -> GridError {
        GridError::Timeout {
            what,
            secs,
            logs: self.logs(),
        }
    }

    /// The daemons' logs, each headed by its name and whether it still runs: for failure
    /// messages.
    pub fn logs(&mut self) -> String {
        let mut daemons: Vec<(String, Option<&mut Daemon>)> = vec![
            ("coordinator".into(), self.coordinator.as_mut()),
            ("ganesha".into(), self.ganesha.as_mut()),
        ];
        for (i, a) in self.agents.iter_mut().enumerate() {
            daemons.push((format!("agent{}", i + 1), a.as_mut()));
        }
        let mut s = String::new();
        for (name, d) in daemons {
            let Some(d) = d else { continue };
            let state = match d.0.try_wait() {
                Ok(Some(st)) => format!("exited: {st}"),
                _ => "running".into(),
            };
            let text = std::fs::read_to_string(self.dir.join(format!("log/{name}.log")))
                .unwrap_or_default();
            s += &format!("--- {name} ({state}) ---\n{text}\n");
        }
        s
    }

    /// The coordinator's TLS listener, `ADDR:PORT` (with [`GridOptions::trust_cert_ttl`]).
    pub fn trust_addr(&self) -> String {
        format!("{}:{TRUST}", self.server.addr)
    }

    /// The admin identity the coordinator writes at start (`--trust-admin-dir`'s default
    /// beside its secret file): what [`Self::napalmctl`] presents without
    /// [`GridOptions::insecure_plain`].
    pub fn admin_identity(&self) -> PathBuf {
        self.dir.join("admin")
    }

    /// The coordinator's gRPC address, `ADDR:PORT` (plain; see
    /// [`GridOptions::insecure_plain`]).
    pub fn coordinator_addr(&self) -> String {
        format!("{}:{GRPC}", self.server.addr)
    }

    /// The coordinator's gRPC socket address.
    pub fn coordinator_grpc(&self) -> SocketAddr {
        socket(&self.server, GRPC)
    }

    /// Agent `i`'s REST base URL, with the REST prefix.
    pub fn agent_rest(&self, i: usize) -> String {
        format!(
            "http://{}:{AGENT_HTTP}{}",
            self.agent_hosts[i].addr, self.rest_prefix
        )
    }

    /// Agent `i`'s REST socket address.
    pub fn agent_http(&self, i: usize) -> SocketAddr {
        socket(&self.agent_hosts[i], AGENT_HTTP)
    }

    /// Agent `i`'s gRPC socket address.
    pub fn agent_grpc(&self, i: usize) -> SocketAddr {
        socket(&self.agent_hosts[i], AGENT_GRPC)
    }

    /// Agent `i`'s Ganglia XML socket address.
    pub fn agent_ganglia(&self, i: usize) -> SocketAddr {
        socket(&self.agent_hosts[i], AGENT_GANGLIA)
    }

    /// The Ganglia cluster agent `i` reports (`--ganglia-cluster`): its host name,
    /// `agentN`.
    pub fn agent_cluster(&self, i: usize) -> String {
        format!("agent{}", i + 1)
    }

    /// The grid's daemons that run now, by role (`coordinator`, `ganesha`, `agentI`), with
    /// their process ids (for `/proc/PID`: peak RSS, CPU).
    pub fn daemon_pids(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        if let Some(c) = &self.coordinator {
            out.push(("coordinator".to_owned(), c.pid()));
        }
        if let Some(g) = &self.ganesha {
            out.push(("ganesha".to_owned(), g.pid()));
        }
        for (i, a) in self.agents.iter().enumerate() {
            if let Some(a) = a {
                out.push((format!("agent{i}"), a.pid()));
            }
        }
        out
    }

    /// Kills nfs-ganesha (SIGKILL, as a crash).
    pub fn kill_ganesha(&mut self) {
        if let Some(mut g) = self.ganesha.take() {
            g.kill();
        }
    }

    /// Kills agent `i` (SIGKILL).
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut a) = self.agents[i].take() {
            a.kill();
        }
    }

    /// Stops agent `i` as an operator would: SIGTERM, SIGKILL after `grace`.
    pub fn stop_agent(&mut self, i: usize, grace: Duration) {
        if let Some(mut a) = self.agents[i].take() {
            a.stop(grace);
        }
    }

    /// Whether agent `i` was started and has not exited.
    pub fn agent_running(&mut self, i: usize) -> bool {
        self.agents[i]
            .as_mut()
            .is_some_and(|a| matches!(a.0.try_wait(), Ok(None)))
    }

    /// Kills the coordinator (SIGKILL).
    pub fn kill_coordinator(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            c.kill();
        }
    }

    /// Restarts the coordinator on its registry.
    pub fn restart_coordinator(&mut self) -> Result<(), GridError> {
        self.kill_coordinator();
        self.start_coordinator()
    }

    /// Cuts agent host `i` off the network, or heals it.
    pub fn set_agent_link(&self, i: usize, up: bool) -> Result<(), GridError> {
        Ok(self.net.set_link(&self.agent_hosts[i], up)?)
    }

    /// `napalmctl --coordinator SERVER` to run in the server namespace (add arguments).
    pub fn napalmctl_command(&self) -> Result<Command, GridError> {
        let bin = bins::napalmctl()?;
        let mut c = self.server.command(bin);
        if self.insecure_plain {
            c.args(["--coordinator", &self.coordinator_addr()])
                .args(["--token", TOKEN]);
        } else {
            c.args(["--coordinator", &format!("https://{}", self.trust_addr())])
                .arg("--identity")
                .arg(self.admin_identity());
        }
        c
            // `domain --agent ID` asks the coordinator (NAPALM_TOKEN) for the agent's REST
            // endpoint and calls the agent with --token.
            .env("NAPALM_TOKEN", TOKEN)
            .stdin(Stdio::null());
        Ok(c)
    }

    /// Runs `napalmctl --coordinator SERVER ARGS` in the server namespace.
    pub fn napalmctl(&self, args: &[&str]) -> Result<Output, GridError> {
        self.napalmctl_command()?
            .args(args)
            .output()
            .ctx(format!("running napalmctl {}", args.join(" ")))
    }
}

impl Drop for Grid {
    fn drop(&mut self) {
        for a in &mut self.agents {
            if let Some(mut a) = a.take() {
                a.kill();
            }
        }
        self.kill_coordinator();
        let domains = self.domains();
        // The agents are gone: the port filters they installed for these clones' taps
        // go with the domains.
        let ports: Vec<String> = domains.iter().flat_map(|d| clones::taps(d)).collect();
        for d in &domains {
            let _ = virsh(&["destroy", d]);
            let _ = virsh(&["undefine", d]);
        }
        let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
        if let Err(e) = napalm_agent::port_filter::Firewall::remove(
            &napalm_agent::port_filter::nft::Nft { netns: None },
            &ports,
        ) {
            eprintln!("grid: removing the clones' port filters: {e}");
        }
        self.kill_ganesha();
        drop(self.ganesha_bus.take());
        if let Some(net) = &self.libvirt_net {
            let _ = virsh(&["net-destroy", net]);
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("grid directory kept: {}", self.dir.display());
        }
    }
}
