//! # napalm-ctl — `napalmctl`, the operator CLI (thesis 3.4, 3.5.3, 4.5: the console tools
//! napalm, napalm-browse, napalm-deploy, napalm-list-deployments, napalm-undeploy)
//!
//! Owns: the command line ([`Cli`]), its settings (flag > environment > file: [`config`]),
//! output formats ([`output`]) and listing tables ([`tables`]), following deploy/undeploy
//! progress ([`deploy`]) and registry events ([`watch`]), one agent's domains over REST
//! ([`domain`]) and the Clone tool ([`clone`]). Each subcommand is a thin call of one
//! remote operation (or one library operation) plus rendering.
//!
//! Must not touch: the coordinator's or an agent's state except through their APIs. It
//! talks to the system only through the `napalm-proto` gRPC clients and the agent crate's
//! typed REST client; `napalmctl clone` runs the napalm-overlay engine locally. Decisions
//! (can these clones run anywhere?) are the servers': the CLI checks its input only so
//! that it never sends a malformed request.
//!
//! Exit codes: 0 success; 1 the operation failed; 2 bad usage or input, or not implemented
//! yet; 3 the coordinator (or, for `domain`, the agent) is unreachable; 4 the named thing
//! does not exist.

pub mod clone;
pub mod cluster;
pub mod config;
pub mod connect;
pub mod deploy;
pub mod domain;
pub mod login;
pub mod output;
pub mod rollout;
pub mod tables;
pub mod token;
pub mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use napalm_proto::v1::{
    AgentState, ListAgentsRequest, ListClonesRequest, ListDeploymentsRequest, SetAgentStateRequest,
};

use config::Settings;
pub(crate) use connect::from_status;
pub use connect::{client, Bearer, Client};
use output::Output;

/// Operator CLI for Napalm: agents, clones, deployments, one agent's domains, events.
#[derive(Parser, Debug)]
#[command(name = "napalmctl", version, after_long_help = config::PRECEDENCE_HELP)]
pub struct Cli {
    /// Coordinator gRPC endpoint, or several separated by commas (coordinators sharing one
    /// etcd: changes go to whichever leads) [else NAPALM_COORDINATOR, the config file,
    /// http://127.0.0.1:7700].
    #[arg(long, global = true)]
    pub coordinator: Option<String>,
    /// Bearer token: for the coordinator [else NAPALM_TOKEN, `token:` in the config file];
    /// with `domain`, for the agent [else NAPALM_AGENT_TOKEN, `agent_token:`].
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Directory of the client certificate `napalmctl login` wrote, presented to
    /// `https://` coordinator endpoints [else NAPALM_IDENTITY, `identity:` in the config
    /// file].
    #[arg(long, global = true)]
    pub identity: Option<String>,
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
    /// Agent identities: `agent token create|list|revoke` (join tokens), `agent revoke ID`.
    Agent {
        /// What to do.
        #[command(subcommand)]
        command: token::AgentCommand,
    },
    /// Deployments (napalm-list-deployments); `deployments show NAME` prints one's stored
    /// spec and clones.conf with its revision.
    Deployments {
        /// What to do (default: list them).
        #[command(subcommand)]
        command: Option<rollout::DeploymentsCommand>,
    },
    /// A deployment's rolling update: status, pause, resume, undo.
    Rollout {
        /// What to do.
        #[command(subcommand)]
        command: rollout::RolloutCommand,
    },
    /// Clones of one deployment or all, with agent, address and phase. With `--format`:
    /// a live deployment's cluster files from the registry (`--deployment NAME`: hosts,
    /// mpi, json), else those of a clones.conf (hosts, mpi, known-hosts, json, yaml, table).
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
    /// A client certificate for this operator (admin or viewer) from the coordinator, over
    /// a key made here: then https:// endpoints are dialed with mutual TLS.
    Login(login::LoginArgs),
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
    /// Move every clone off an agent (cold: its domain stops, then it boots elsewhere;
    /// stateful clones keep their state) and place nothing new on it.
    Drain {
        /// Agent id or name.
        agent: String,
    },
    /// Let a drained agent take clones again.
    Undrain {
        /// Agent id or name.
        agent: String,
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
        identity: cli.identity.clone(),
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
            Ok(tables::agents(output, &agents))
        }
        Command::Drain { agent } | Command::Undrain { agent } => {
            let (state, verb) = match &cli.command {
                Command::Drain { .. } => (AgentState::Draining, "drain"),
                _ => (AgentState::Ready, "undrain"),
            };
            let req = SetAgentStateRequest {
                request_id: format!("{verb}-{agent}-{}", std::process::id()),
                id: agent.clone(),
                state: state as i32,
            };
            let a = connect::on_leader(settings, |mut c| {
                let req = req.clone();
                async move { c.set_agent_state(req).await }
            })
            .await?
            .into_inner();
            Ok(tables::agents(output, &[a]))
        }
        Command::Deployments {
            command: Some(rollout::DeploymentsCommand::Show { name }),
        } => rollout::show(settings, name, output).await,
        Command::Rollout { command } => rollout::rollout(settings, command, output).await,
        Command::Deployments { command: None } => {
            let mut c = client(settings).await?;
            let deployments = c
                .list_deployments(ListDeploymentsRequest {})
                .await
                .map_err(from_status)?
                .into_inner()
                .deployments;
            Ok(tables::deployments(output, &deployments))
        }
        Command::Clone { sources, command } => clone::run(sources, command),
        Command::Clones {
            deployment: Some(deployment),
            format: Some(format),
            ..
        } => {
            let mut c = client(settings).await?;
            let clones = c
                .list_clones(ListClonesRequest {
                    deployment: deployment.clone(),
                })
                .await
                .map_err(from_status)?
                .into_inner()
                .clones;
            cluster::render(deployment, format, &clones)
        }
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
            Ok(tables::clones(output, &clones))
        }
        Command::Deploy(args) => {
            // Arguments are checked before anything is contacted.
            args.spec()?;
            // Whether any agent can take the clones is the coordinator's to say.
            deploy::deploy(settings, args, output).await
        }
        Command::Agent { command } => token::run(settings, command, output).await,
        Command::Login(args) => login::run(settings, args).await,
        Command::Undeploy { name, purge } => deploy::undeploy(settings, name, *purge, output).await,
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
