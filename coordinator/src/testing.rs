//! A whole control plane in one process, for tests and benches (cargo feature `testing`):
//! N real `napalm-agent`s on libvirt's `test:///default` driver and a coordinator with the
//! deploy pipeline, all on loopback, started through the same [`crate::server::start`]
//! and `napalm_agent::server::start` as the daemons. `test:///default` boots nothing, so
//! the kernel and base image are small stand-ins: only their bytes travel.
//!
//! The driver's state is shared by every connection of a process: tests of one binary
//! use distinct deployment names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use napalm_proto::v1::{AgentState, DeploymentSpec, Resources};

use crate::deploy::artifacts::ArtifactConfig;
use crate::deploy::DeployConfig;
use crate::scheduler::Policy;
use crate::server::{ServeConfig, ServeError};

/// What a [`TestGrid`] looks like.
#[derive(Debug, Clone)]
pub struct GridOptions {
    /// Agents to start.
    pub agents: usize,
    /// The bearer token agents require (and the coordinator presents).
    pub agent_token: Option<String>,
    /// Where the agents keep their state (default: inside the grid's temp dir).
    pub agent_dir: Option<PathBuf>,
    /// Size of the stand-in kernel, bytes.
    pub kernel_bytes: usize,
    /// Size of the stand-in base image's one file, bytes.
    pub base_bytes: usize,
    /// Each agent on a libvirt test driver of its own (`test:///STATE/node.xml`), as on
    /// separate hosts; otherwise all share the process's `test:///default`.
    pub own_drivers: bool,
    /// gRPC endpoints (`http://ADDR`) of agents running elsewhere (another process, as
    /// the deploy bench runs them to measure the coordinator alone); when not empty, no
    /// agent is started here and `agents` is ignored.
    pub external_agents: Vec<String>,
}

impl Default for GridOptions {
    fn default() -> Self {
        Self {
            agents: 2,
            agent_token: Some("agent-test-token".into()),
            agent_dir: None,
            kernel_bytes: 64,
            base_bytes: 64,
            own_drivers: true,
            external_agents: Vec::new(),
        }
    }
}

/// Why a grid did not start.
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    /// A file of the grid could not be written.
    #[error("writing {}", path.display())]
    Io {
        /// Where.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// An agent did not start.
    #[error("starting agent {index}")]
    Agent {
        /// Its index.
        index: usize,
        /// Why.
        #[source]
        source: napalm_agent::AgentError,
    },
    /// The coordinator did not start.
    #[error("starting the coordinator")]
    Coordinator(#[source] ServeError),
    /// The agents did not all become ready in time.
    #[error("only {ready} of {want} agents became ready within {within:?}")]
    NotReady {
        /// Ready agents.
        ready: usize,
        /// Agents started.
        want: usize,
        /// How long we waited.
        within: Duration,
    },
    /// Reading the registry failed.
    #[error("reading the registry")]
    Registry(#[source] crate::registry::RegistryError),
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), GridError> {
    std::fs::write(path, bytes).map_err(|source| GridError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The deploy pipeline's settings for `test:///default`: stand-in kernel and base image
/// written under `dir`, the shipped template sets, layers under `dir/layers`, clones that
/// would mount their root from 10.77.0.1.
pub fn deploy_config(dir: &Path, opts: &GridOptions) -> Result<DeployConfig, GridError> {
    let kernel = dir.join("vmlinuz");
    write(&kernel, &vec![7u8; opts.kernel_bytes])?;
    let base = dir.join("base.img");
    let mut a = napalm_initramfs::cpio::Archive::new();
    let mut init = b"#!/bin/sh\necho napalm\n".to_vec();
    init.resize(opts.base_bytes.max(init.len()), b'\n');
    a.add("init", napalm_initramfs::cpio::Entry::File(0o755, init));
    write(&base, &a.write(0))?;
    Ok(DeployConfig {
        artifacts: ArtifactConfig {
            kernel,
            kernel_entry: crate::deploy::artifacts::KernelEntry::default(),
            firmware: crate::deploy::artifacts::GuestFirmware::Default,
            base_image: base,
            sets: vec![napalm_overlay::default_sets_dir()],
            layers_dir: dir.join("layers"),
        },
        server: "10.77.0.1".into(),
        register_base: "http://10.77.0.1:7780".into(),
        agent_token: opts.agent_token.clone(),
        register_timeout: Duration::from_secs(5),
        concurrency: 8,
        policy: Policy::default(),
        network: None,
        kernel_args: "console=ttyS0".into(),
        attempts: 2,
        lost_grace: Duration::from_secs(30),
        restart_budget: 3,
        addresses: None,
        layers_in_initramfs: false,
        guest_acpi: true,
        guest_hugepages: false,
        boot_from_template: false,
        boot_concurrency: Default::default(),
        informer: true,
        exports: None,
        trust: None,
    })
}

/// An agent on `test:///default` with `token`, on loopback ports, keeping its state in
/// `state` (room for the stand-in artifacts of many clones).
pub fn agent_config(state: &Path, token: Option<String>) -> napalm_agent::server::ServeConfig {
    let mut c = napalm_agent::server::ServeConfig::loopback(state);
    c.core.limits.max_total_bytes = 64 << 20;
    c.rest.token = token;
    c.ganglia_listen = None;
    c
}

/// Puts a grid's layers over NFS (for [`TestGrid::start_with`]): a pool of clone addresses
/// and one export per clone, written to a ganesha file beside the registry that nobody
/// reloads. Every clone then boots the same image, so each agent is shipped to once.
pub fn layers_over_nfs(cfg: &mut ServeConfig) {
    let Some(dir) = Path::new(&cfg.store).parent().map(Path::to_owned) else {
        return;
    };
    if let Some(d) = cfg.deploy.as_mut() {
        d.addresses = "10.64.0.1/16".parse().ok();
    }
    cfg.exports = Some(crate::exports::ExportConfig {
        root: dir.join("root"),
        root_clients: "*".into(),
        state_dir: dir.join("state"),
        state_size: 16 << 20,
        ganesha_file: Some(dir.join("ganesha-exports.conf")),
        ganesha_pid_file: None,
        exports_file: None,
        exportfs: false,
    });
}

/// A deployment of `count` small clones (1 vCPU, 128 MiB) named `name`, for tests.
pub fn spec(name: &str, count: u32) -> DeploymentSpec {
    DeploymentSpec {
        name: name.into(),
        count,
        resources: Some(Resources {
            vcpus: 1,
            memory_bytes: 128 << 20,
        }),
        ..Default::default()
    }
}

/// A libvirt test driver of its own for an agent keeping its state in `state`: a node
/// description (8 CPUs, 16 GiB) under `state`, opened as `test:///…/node.xml`.
pub fn own_driver(state: &Path) -> Result<String, GridError> {
    std::fs::create_dir_all(state).map_err(|source| GridError::Io {
        path: state.to_owned(),
        source,
    })?;
    let node = state.join("node.xml");
    write(
        &node,
        b"<node>\n  <cpu>\n    <nodes>1</nodes><sockets>1</sockets><cores>8</cores>\
          <threads>1</threads><active>8</active><mhz>2000</mhz><model>x86_64</model>\n  \
          </cpu>\n  <memory>16777216</memory>\n</node>\n",
    )?;
    Ok(format!("test://{}", node.display()))
}

/// Starts `opts.agents` agents keeping their state under `agent_dir` (`agentN`), each on
/// its own test driver with `opts.own_drivers`.
pub async fn start_agents(
    opts: &GridOptions,
    agent_dir: &Path,
) -> Result<Vec<napalm_agent::server::Running>, GridError> {
    let mut agents = Vec::new();
    for index in 0..opts.agents {
        let state = agent_dir.join(format!("agent{index}"));
        let mut cfg = agent_config(&state, opts.agent_token.clone());
        if opts.own_drivers {
            cfg.rest.libvirt_uri = own_driver(&state)?;
        }
        let a = napalm_agent::server::start(cfg)
            .await
            .map_err(|source| GridError::Agent { index, source })?;
        agents.push(a);
    }
    Ok(agents)
}

/// Running agents and a coordinator that knows them (as static agents, all ready).
pub struct TestGrid {
    /// The coordinator.
    pub coordinator: crate::server::Running,
    /// The agents, in order.
    pub agents: Vec<napalm_agent::server::Running>,
    /// Their gRPC endpoints (`http://ADDR`), in order.
    pub endpoints: Vec<String>,
    /// Everything on disk lives here; removed on drop.
    pub dir: tempfile::TempDir,
}

impl TestGrid {
    /// Starts `opts.agents` agents and a coordinator with the deploy pipeline, whose gRPC
    /// API accepts anyone; returns once every agent is ready in the registry.
    pub async fn start(opts: GridOptions) -> Result<TestGrid, GridError> {
        Self::start_with(opts, |_| {}).await
    }

    /// [`Self::start`], with `tune` changing the coordinator's settings first (API auth,
    /// concurrency, exports, addresses…).
    pub async fn start_with(
        opts: GridOptions,
        tune: impl FnOnce(&mut ServeConfig),
    ) -> Result<TestGrid, GridError> {
        let dir = tempfile::tempdir().map_err(|source| GridError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
        let agent_dir = opts.agent_dir.clone().unwrap_or_else(|| dir.path().into());
        let (agents, endpoints) = if opts.external_agents.is_empty() {
            let agents = start_agents(&opts, &agent_dir).await?;
            let endpoints = agents
                .iter()
                .filter_map(|a| a.grpc_addr.map(|g| format!("http://{g}")))
                .collect();
            (agents, endpoints)
        } else {
            (Vec::new(), opts.external_agents.clone())
        };
        let mut cfg = ServeConfig::loopback(dir.path());
        cfg.agent_token = opts.agent_token.clone();
        cfg.static_agents = endpoints.clone();
        cfg.deploy = Some(deploy_config(dir.path(), &opts)?);
        tune(&mut cfg);
        let coordinator = crate::server::start(cfg)
            .await
            .map_err(GridError::Coordinator)?;
        let grid = TestGrid {
            coordinator,
            agents,
            endpoints,
            dir,
        };
        grid.wait_ready(Duration::from_secs(30)).await?;
        Ok(grid)
    }

    /// Waits until every agent is ready in the registry.
    pub async fn wait_ready(&self, within: Duration) -> Result<(), GridError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let ready = self
                .coordinator
                .registry()
                .list_agents(&[AgentState::Ready])
                .await
                .map_err(GridError::Registry)?
                .len();
            if ready >= self.endpoints.len() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(GridError::NotReady {
                    ready,
                    want: self.endpoints.len(),
                    within,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A gRPC client of the coordinator.
    pub async fn client(
        &self,
    ) -> Result<CoordinatorServiceClient<tonic::transport::Channel>, tonic::transport::Error> {
        CoordinatorServiceClient::connect(self.coordinator.endpoint()).await
    }
}
