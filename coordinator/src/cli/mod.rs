//! `napalmctl`: the operator CLI (thesis console tools: napalm, napalm-browse,
//! napalm-deploy, napalm-list-deployments, napalm-undeploy). Each subcommand is a thin
//! call of one coordinator RPC (or one library operation) plus output formatting.
//!
//! Exit codes: 0 success; 1 the operation failed; 2 bad usage or not implemented yet;
//! 3 the coordinator is unreachable; 4 the named thing does not exist.

pub mod clone;
pub mod deploy;
pub mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use napalm_proto::v1::{AgentState, ListAgentsRequest, ListClonesRequest, ListDeploymentsRequest};
use napalm_proto::ApiError;
use serde_json::{json, Value};

use crate::scheduler::hv_name;
use output::{render, Output};

/// Operator CLI for Napalm: agents, clones, deployments.
#[derive(Parser, Debug)]
#[command(name = "napalmctl", version)]
pub struct Cli {
    /// Coordinator gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "NAPALM_COORDINATOR",
        default_value = "http://127.0.0.1:7700"
    )]
    pub coordinator: String,
    /// Output format of listings.
    #[arg(long, short, global = true, value_enum, default_value = "table")]
    pub output: Output,
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

/// Runs the CLI; returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    match dispatch(&cli).await {
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

async fn client(
    endpoint: &str,
) -> Result<CoordinatorServiceClient<tonic::transport::Channel>, Failure> {
    CoordinatorServiceClient::connect(endpoint.to_owned())
        .await
        .map_err(|e| Failure {
            code: 3,
            message: format!(
                "cannot reach the coordinator at {endpoint:?} ({e}); start napalm-coordinator \
                 or set --coordinator / NAPALM_COORDINATOR"
            ),
        })
}

fn mib(b: u64) -> u64 {
    b >> 20
}

fn state_name(s: &str, prefix: &str) -> String {
    s.trim_start_matches(prefix).to_lowercase()
}

async fn dispatch(cli: &Cli) -> Result<String, Failure> {
    match &cli.command {
        Command::Agents => {
            let mut c = client(&cli.coordinator).await?;
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
                cli.output,
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
            let mut c = client(&cli.coordinator).await?;
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
            Ok(render(
                cli.output,
                &["name", "count", "layers", "state"],
                &rows,
            ))
        }
        Command::Clone { sources, command } => clone::run(sources, command),
        Command::Clones {
            format: Some(format),
            sources,
            ..
        } => clone::list(sources, format),
        Command::Clones { deployment, .. } => {
            let mut c = client(&cli.coordinator).await?;
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
                    })
                })
                .collect();
            Ok(render(
                cli.output,
                &["clone", "deployment", "agent", "addresses", "phase"],
                &rows,
            ))
        }
        Command::Deploy(args) => {
            // Arguments are checked before anything is contacted.
            args.spec()?;
            let mut c = client(&cli.coordinator).await?;
            deploy::deploy(&mut c, args, cli.output).await
        }
        Command::Undeploy { name, purge } => {
            let mut c = client(&cli.coordinator).await?;
            deploy::undeploy(&mut c, name, *purge, cli.output).await
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "napalmctl", &mut buf);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
    }
}
