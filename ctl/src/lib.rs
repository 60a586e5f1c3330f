//! `napalmctl`: the operator CLI (thesis console tools: napalm, napalm-browse,
//! napalm-deploy, napalm-list-deployments, napalm-undeploy). Each subcommand is a thin
//! call of one coordinator RPC (or one library operation) plus output formatting.
//!
//! Exit codes: 0 success; 1 the operation failed; 2 bad usage or input, or not implemented
//! yet; 3 the coordinator (or, for `domain`, the agent) is unreachable; 4 the named thing
//! does not exist.
//!
//! Settings (coordinator address, tokens, output format) come from flags, the environment
//! or a YAML file: see [`config`].

pub mod clone;
pub mod config;
pub mod deploy;
pub mod domain;
pub mod output;
pub mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use napalm_proto::v1::{AgentState, ListAgentsRequest, ListClonesRequest, ListDeploymentsRequest};
use napalm_proto::ApiError;
use serde_json::{json, Value};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::scheduler::hv_name;
use config::Settings;
use output::{render, Output};

/// Operator CLI for Napalm: agents, clones, deployments, one agent's domains, events.
#[derive(Parser, Debug)]
#[command(name = "napalmctl", version, after_long_help = config::PRECEDENCE_HELP)]
pub struct Cli {
    /// Coordinator gRPC endpoint [else NAPALM_COORDINATOR, the config file,
    /// http://127.0.0.1:7700].
    #[arg(long, global = true)]
    pub coordinator: Option<String>,
    /// Bearer token: for the coordinator [else NAPALM_TOKEN, `token:` in the config file];
    /// with `domain`, for the agent [else NAPALM_AGENT_TOKEN, `agent_token:`].
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Output format of listings [else NAPALM_OUTPUT, the config file, table].
    #[arg(long, short, global = true, value_enum)]
    pub output: Option<Output>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Agents known to the coordinator, with capacity and allocations (napalm-browse).
    Agents,
    /// Deployments (napalm-list-deployments).
    Deployments,
    /// Clones of one deployment or all, with agent, address and phase; with `--format`,
    /// the cluster files of a clones.conf (hosts, mpi, known-hosts, json, yaml, table).
    Clones {
        /// Only this deployment.
        #[arg(long)]
        deployment: Option<String>,
        /// Print the cluster files of the clone configuration instead of the registry.
        #[arg(long)]
        format: Option<String>,
        /// Clone configuration and sets (with --format).
        #[command(flatten)]
        sources: clone::Sources,
    },
    /// The Clone tool: show, render, diff and build clone layers from a clones.conf.
    Clone {
        /// Clone configuration and sets.
        #[command(flatten)]
        sources: clone::Sources,
        /// What to do.
        #[command(subcommand)]
        command: clone::CloneCommand,
    },
    /// Deploy N clones, or converge a deployment of that name (napalm-deploy).
    Deploy(deploy::DeployArgs),
    /// Domains of one agent through its REST API (the thesis's `napalm` tool).
    Domain(domain::DomainArgs),
    /// Follow registry events: clone phases, agent states, deployments added and removed.
    Watch(watch::WatchArgs),
    /// Remove a deployment's clones from their agents and the registry (napalm-undeploy).
    Undeploy {
        /// Deployment name.
        name: String,
        /// Also delete stateful clones' disks.
        #[arg(long)]
        purge: bool,
    },
    /// Print shell completions.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
}

/// Runs the CLI with the process environment; returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    // With `domain`, --token is the agent's: it is never sent to the coordinator (which
    // is asked only to resolve an agent name, with its own token from env or file).
    let domain = match &cli.command {
        Command::Domain(d) => Some(d),
        _ => None,
    };
    let flags = config::Flags {
        coordinator: cli.coordinator.clone(),
        token: cli.token.clone().filter(|_| domain.is_none()),
        agent_token: cli.token.clone().filter(|_| domain.is_some()),
        output: cli.output,
        agent: domain.and_then(|d| d.agent.clone()),
    };
    let result = match config::resolve(&flags, &config::process_env) {
        Ok(settings) => dispatch(&cli, &settings).await,
        Err(f) => Err(f),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(Failure { code, message }) => {
            eprintln!("napalmctl: {message}");
            ExitCode::from(code)
        }
    }
}

/// A failed command: exit code and message.
#[derive(Debug)]
pub struct Failure {
    /// Process exit code.
    pub code: u8,
    /// What went wrong and what to do.
    pub message: String,
}

pub(crate) fn from_status(s: tonic::Status) -> Failure {
    let code = match ApiError::from_status(&s) {
        Some(ApiError::NotFound { .. }) => 4,
        Some(ApiError::InvalidArgument { .. }) => 2,
        _ if s.code() == tonic::Code::Unimplemented => 2,
        _ => 1,
    };
    Failure {
        code,
        message: s.message().to_owned(),
    }
}

/// Adds `authorization: Bearer TOKEN` to every coordinator call when a token is set.
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// A coordinator client carrying the configured token.
pub type Client = CoordinatorServiceClient<InterceptedService<Channel, Bearer>>;

/// Connects to the configured coordinator.
pub async fn client(settings: &Settings) -> Result<Client, Failure> {
    let endpoint = &settings.coordinator.value;
    let bearer = match &settings.token {
        None => Bearer(None),
        Some(t) => Bearer(Some(format!("Bearer {}", t.value).parse().map_err(
            |_| Failure {
                code: 2,
                message: format!(
                    "the token from {} is not usable in a header (printable ASCII only)",
                    t.origin
                ),
            },
        )?)),
    };
    let invalid = |e: &dyn std::fmt::Display| Failure {
        code: 2,
        message: format!(
            "coordinator endpoint {endpoint:?} (from {}) is not a URL: {e}; use \
             http://HOST:PORT",
            settings.coordinator.origin
        ),
    };
    // HOST:PORT means plain HTTP/2, as napalm-coordinator --listen takes it.
    let url = if endpoint.contains("://") {
        endpoint.clone()
    } else {
        format!("http://{endpoint}")
    };
    let channel = Channel::from_shared(url)
        .map_err(|e| invalid(&e))?
        .connect()
        .await
        .map_err(|e| Failure {
            code: 3,
            message: format!(
                "cannot reach the coordinator at {endpoint:?} (from {}): {e}; start \
                 napalm-coordinator or set --coordinator / NAPALM_COORDINATOR / \
                 `coordinator:` in the config file",
                settings.coordinator.origin
            ),
        })?;
    Ok(CoordinatorServiceClient::with_interceptor(channel, bearer))
}

fn mib(b: u64) -> u64 {
    b >> 20
}

fn state_name(s: &str, prefix: &str) -> String {
    s.trim_start_matches(prefix).to_lowercase()
}

/// Refuses a deploy when no agent is ready: the coordinator would record the deployment
/// with every clone failed; this says why before anything is written.
async fn require_ready_agent(c: &mut Client, settings: &Settings) -> Result<(), Failure> {
    let agents = c
        .list_agents(ListAgentsRequest::default())
        .await
        .map_err(from_status)?
        .into_inner()
        .agents;
    if agents.iter().any(|a| a.state == AgentState::Ready as i32) {
        return Ok(());
    }
    let known = if agents.is_empty() {
        "none is registered".to_owned()
    } else {
        let list: Vec<String> = agents
            .iter()
            .map(|a| {
                let st = AgentState::try_from(a.state).unwrap_or_default();
                format!(
                    "{} {}",
                    a.name,
                    state_name(st.as_str_name(), "AGENT_STATE_")
                )
            })
            .collect();
        format!("{} known, none ready: {}", agents.len(), list.join(", "))
    };
    Err(Failure {
        code: 1,
        message: format!(
            "no agent can take clones ({known}) at the coordinator {:?}; nothing was \
             deployed. Start napalm-agent with --coordinator pointing here (or give \
             napalm-coordinator --agent ENDPOINT), then check `napalmctl agents`",
            settings.coordinator.value
        ),
    })
}

async fn dispatch(cli: &Cli, settings: &Settings) -> Result<String, Failure> {
    let output = settings.output.value;
    match &cli.command {
        Command::Agents => {
            let mut c = client(settings).await?;
            let agents = c
                .list_agents(ListAgentsRequest::default())
                .await
                .map_err(from_status)?
                .into_inner()
                .agents;
            let rows: Vec<Value> = agents
                .iter()
                .map(|a| {
                    let caps = a.capabilities.clone().unwrap_or_default();
                    let host = caps.host.clone().unwrap_or_default();
                    let alloc = a.allocated.unwrap_or_default();
                    json!({
                        "name": a.name,
                        "id": a.id,
                        "state": state_name(AgentState::try_from(a.state).unwrap_or_default().as_str_name(), "AGENT_STATE_"),
                        "endpoint": a.grpc_endpoint,
                        "arch": host.arch,
                        "cpus": host.cpus,
                        "memory_mib": mib(host.memory_bytes),
                        "clones": a.clone_count,
                        "alloc_vcpus": alloc.vcpus,
                        "alloc_mib": mib(alloc.memory_bytes),
                        "hypervisors": caps.hypervisors.iter()
                            .filter_map(|h| napalm_proto::v1::Hypervisor::try_from(*h).ok())
                            .map(hv_name).collect::<Vec<_>>(),
                    })
                })
                .collect();
            Ok(render(
                output,
                &[
                    "name",
                    "state",
                    "endpoint",
                    "hypervisors",
                    "arch",
                    "cpus",
                    "memory_mib",
                    "clones",
                    "alloc_vcpus",
                    "alloc_mib",
                ],
                &rows,
            ))
        }
        Command::Deployments => {
            let mut c = client(settings).await?;
            let ds = c
                .list_deployments(ListDeploymentsRequest {})
                .await
                .map_err(from_status)?
                .into_inner()
                .deployments;
            let rows: Vec<Value> = ds
                .iter()
                .map(|d| {
                    let spec = d.spec.clone().unwrap_or_default();
                    json!({
                        "name": spec.name,
                        "count": spec.count,
                        "layers": spec.layers,
                        "state": state_name(napalm_proto::v1::DeploymentState::try_from(d.state).unwrap_or_default().as_str_name(), "DEPLOYMENT_STATE_"),
                    })
                })
                .collect();
            Ok(render(output, &["name", "count", "layers", "state"], &rows))
        }
        Command::Clone { sources, command } => clone::run(sources, command),
        Command::Clones {
            format: Some(format),
            sources,
            ..
        } => clone::list(sources, format),
        Command::Clones { deployment, .. } => {
            let mut c = client(settings).await?;
            let clones = c
                .list_clones(ListClonesRequest {
                    deployment: deployment.clone().unwrap_or_default(),
                })
                .await
                .map_err(from_status)?
                .into_inner()
                .clones;
            let rows: Vec<Value> = clones
                .iter()
                .map(|k| {
                    json!({
                        "clone": k.name,
                        "deployment": k.deployment,
                        "agent": k.agent_id,
                        "addresses": k.addresses,
                        "phase": state_name(napalm_proto::v1::ClonePhase::try_from(k.phase).unwrap_or_default().as_str_name(), "CLONE_PHASE_"),
                        // Kernel start to the register hook, as the clone reported it.
                        "boot_s": k.boot.as_ref().and_then(|b| b.to_registered).map(|d| {
                            (d.seconds as f64 + f64::from(d.nanos) / 1e9) * 10.0
                        }).map(|t| t.round() / 10.0),
                        // napalm-init's phases (JSON and YAML only; the table shows boot_s).
                        "boot_phases": k.boot.as_ref().map(|b| b.phases.iter().map(|p| json!({
                            "name": p.name,
                            "start_s": p.start.map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9),
                            "duration_s": p.duration.map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9),
                        })).collect::<Vec<_>>()),
                        "to_init_s": k.boot.as_ref().and_then(|b| b.to_init).map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9),
                        // Why the clone failed (or its last retried error).
                        "error": (!k.last_error.is_empty()).then_some(&k.last_error),
                    })
                })
                .collect();
            Ok(render(
                output,
                &[
                    "clone",
                    "deployment",
                    "agent",
                    "addresses",
                    "phase",
                    "boot_s",
                    "error",
                ],
                &rows,
            ))
        }
        Command::Deploy(args) => {
            // Arguments are checked before anything is contacted.
            args.spec()?;
            let mut c = client(settings).await?;
            require_ready_agent(&mut c, settings).await?;
            deploy::deploy(&mut c, args, output).await
        }
        Command::Undeploy { name, purge } => {
            let mut c = client(settings).await?;
            deploy::undeploy(&mut c, name, *purge, output).await
        }
        Command::Domain(args) => domain::run(args, settings).await,
        Command::Watch(args) => {
            let mut c = client(settings).await?;
            watch::watch(&mut c, args, settings).await
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "napalmctl", &mut buf);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
        let cli = Cli::try_parse_from([
            "napalmctl",
            "domain",
            "--agent",
            "http://h:8480/napalm",
            "--token",
            "t",
            "create",
            "web",
            "--xml",
            "web.xml",
            "--file",
            "vmlinuz",
        ])
        .expect("parses");
        assert_eq!(cli.token.as_deref(), Some("t"));
        let both = Cli::try_parse_from([
            "napalmctl",
            "domain",
            "create",
            "web",
            "--xml",
            "a",
            "--archive",
            "b",
        ]);
        assert!(both.is_err(), "--xml and --archive exclude each other");
        let neither = Cli::try_parse_from(["napalmctl", "domain", "create", "web"]);
        assert!(neither.is_err(), "create needs --xml or --archive");
    }
}
