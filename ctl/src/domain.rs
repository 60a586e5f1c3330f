//! `napalmctl domain`: the thesis's `napalm` tool — CRUD on the domains of ONE agent
//! through its REST API (agent/README.md, SPEC §3, table 4.3), one HTTP request per
//! operation:
//!
//! | command | request |
//! |---|---|
//! | `list` | GET `/domains.json` |
//! | `show NAME` | GET `/domain/NAME` (JSON) |
//! | `status NAME` | GET `/domain/NAME/status.json` |
//! | `config NAME` | GET `/domain/NAME/config.xml` |
//! | `create NAME --xml F [--file P]… \| --archive A` | PUT `/domain/NAME` (archive; `?start=false` with `--no-start`) |
//! | `start`/`stop`/`pause NAME` | PUT `/domain/NAME/status.xml` |
//! | `delete NAME [--purge]` | DELETE `/domain/NAME` |
//! | `archive NAME --out F` | GET `/domain/NAME/archive.tar.gz` |
//!
//! The requests are the agent crate's typed REST client ([`napalm_agent::client`], which
//! also holds the domain-name rule and packs archives); this module parses the arguments,
//! finds the agent's URL and renders the answers, with exit codes and hints in napalmctl's
//! terms. The agent is named by its REST URL with prefix (`http://host:8480/napalm`) or by
//! the name or id of an agent registered with the coordinator (its recorded REST endpoint
//! is used). Plain HTTP only: the client has no TLS.

use std::path::PathBuf;
use std::time::Duration;

use napalm_agent::client::{build_archive, check_name, AgentClient, ClientError, ErrorClass};
use napalm_agent::core::DomainView;
use napalm_proto::v1::GetAgentRequest;
use serde_json::{json, Value};

use crate::config::{Setting, Settings};
use crate::output::{render, Output};
use crate::{client, from_status, Failure};

/// Arguments of `napalmctl domain`.
#[derive(clap::Args, Debug)]
pub struct DomainArgs {
    /// The agent: its REST URL with prefix (http://host:8480/napalm), or the name or id of
    /// an agent registered with the coordinator [else NAPALM_AGENT, `agent:` in the config
    /// file]. The bearer token is `--token` [else NAPALM_AGENT_TOKEN, `agent_token:`].
    #[arg(long)]
    pub agent: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: DomainCommand,
}

/// `napalmctl domain` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum DomainCommand {
    /// The agent's domains with their state.
    List,
    /// One domain: state, desired state, resources, files.
    Show {
        /// Domain name.
        name: String,
    },
    /// A domain's run state (status.xml).
    Status {
        /// Domain name.
        name: String,
    },
    /// A domain's libvirt XML (config.xml).
    Config {
        /// Domain name.
        name: String,
    },
    /// Create (and start) a domain from its libvirt XML and files, or from an archive.
    Create {
        /// Domain name (must match `<name>` in the XML).
        name: String,
        /// The domain's libvirt XML; files it references by relative name go with --file.
        #[arg(long, required_unless_present = "archive", conflicts_with = "archive")]
        xml: Option<PathBuf>,
        /// A file config.xml references (kernel, initrd, disk…), sent under its own file
        /// name; repeatable.
        #[arg(long = "file", requires = "xml")]
        files: Vec<PathBuf>,
        /// A ready domain archive (tar, tar.gz or tar.zst holding config.xml and its files).
        #[arg(long)]
        archive: Option<PathBuf>,
        /// Only define it; do not start it.
        #[arg(long)]
        no_start: bool,
    },
    /// Start (or resume) a domain.
    Start {
        /// Domain name.
        name: String,
    },
    /// Shut a domain down (forced after the agent's timeout).
    Stop {
        /// Domain name.
        name: String,
        /// Seconds to wait for a clean shutdown before forcing it.
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Pause a running domain.
    Pause {
        /// Domain name.
        name: String,
    },
    /// Stop and remove a domain.
    Delete {
        /// Domain name.
        name: String,
        /// Also delete its writable files (disks).
        #[arg(long)]
        purge: bool,
    },
    /// Download a domain's archive (config.xml and its files, tar.gz).
    Archive {
        /// Domain name.
        name: String,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
}

fn bad(message: String) -> Failure {
    Failure { code: 2, message }
}

/// An agent client's error as napalmctl reports it: the exit code of its class and, for a
/// refusal or an unreachable agent, what to do about it in napalmctl's terms.
fn failure(e: ClientError) -> Failure {
    let code = match e.class() {
        ErrorClass::Unreachable => 3,
        ErrorClass::NotFound => 4,
        ErrorClass::BadInput => 2,
        ErrorClass::Failed => 1,
    };
    let hint = match &e {
        ClientError::Unreachable { .. } => Some("check --agent and that napalm-agent runs there"),
        ClientError::Status { status, .. } => Some(match status {
            400 => "fix the input the message names",
            401 => {
                "the agent wants its bearer token: pass --token, or set NAPALM_AGENT_TOKEN \
                 or `agent_token:` in the config file"
            }
            403 => "the agent's policy refuses it (see its --allow-* flags in agent/README.md)",
            404 => "see `napalmctl domain list` for the domains this agent has",
            409 => "the domain changed meanwhile or is busy; look at it and retry",
            413 => "too large for the agent's limits",
            _ => "see the agent's log",
        }),
        _ => None,
    };
    let message = match (&e, hint) {
        (ClientError::Unreachable { .. }, Some(h)) => format!("{e}; {h}"),
        (_, Some(h)) => format!("{e} ({h})"),
        (_, None) => e.to_string(),
    };
    Failure { code, message }
}

/// The agent's base URL: `--agent` as a URL, or the REST endpoint the coordinator has for
/// that agent name or id.
async fn base_url(agent: &Setting<String>, settings: &Settings) -> Result<String, Failure> {
    let raw = agent.value.trim();
    if raw.contains("://") {
        return Ok(raw.to_owned());
    }
    let mut c = client(settings).await?;
    let a = c
        .get_agent(GetAgentRequest { id: raw.to_owned() })
        .await
        .map_err(|s| {
            let mut f = from_status(s);
            f.message = format!(
                "agent {raw:?} (from {}): {}; give its REST URL \
                 (http://HOST:PORT/PREFIX) or a name from `napalmctl agents`",
                agent.origin, f.message
            );
            f
        })?
        .into_inner();
    if a.rest_endpoint.is_empty() {
        return Err(Failure {
            code: 1,
            message: format!(
                "agent {raw:?} did not tell the coordinator its REST endpoint; give its \
                 REST URL with --agent http://HOST:PORT/PREFIX"
            ),
        });
    }
    Ok(a.rest_endpoint)
}

/// The client of the agent `--agent` (or the settings) names.
async fn connect(agent: &Setting<String>, settings: &Settings) -> Result<AgentClient, Failure> {
    let url = base_url(agent, settings).await?;
    let token = settings.agent_token.as_ref().map(|t| t.value.clone());
    AgentClient::new(&url, token).map_err(|e| match e {
        // Says where the URL came from.
        ClientError::BadUrl { url, problem } => bad(format!(
            "agent URL {url:?} (from {}) {problem}",
            agent.origin
        )),
        e => failure(e),
    })
}

fn domain_row(d: &DomainView) -> Value {
    json!({
        "name": d.name,
        "state": d.state,
        "desired": d.desired,
        "vcpus": d.vcpus,
        "memory_mib": d.memory_bytes >> 20,
        "owned": d.owned,
        "files": d.files,
    })
}

const COLUMNS: [&str; 6] = ["name", "state", "desired", "vcpus", "memory_mib", "owned"];

fn message(output: Output, text: String, v: Value) -> String {
    match output {
        Output::Table => text + "\n",
        Output::Json => v.to_string() + "\n",
        Output::Yaml => serde_yaml::to_string(&v).unwrap_or_default(),
    }
}

fn render_one(output: Output, v: &Value) -> String {
    match output {
        Output::Yaml => serde_yaml::to_string(v).unwrap_or_default(),
        _ => serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
    }
}

/// The domain a command names, if it names one.
fn named(command: &DomainCommand) -> Option<&str> {
    match command {
        DomainCommand::List => None,
        DomainCommand::Show { name }
        | DomainCommand::Status { name }
        | DomainCommand::Config { name }
        | DomainCommand::Create { name, .. }
        | DomainCommand::Start { name }
        | DomainCommand::Stop { name, .. }
        | DomainCommand::Pause { name }
        | DomainCommand::Delete { name, .. }
        | DomainCommand::Archive { name, .. } => Some(name),
    }
}

/// Runs one `napalmctl domain` command.
pub async fn run(args: &DomainArgs, settings: &Settings) -> Result<String, Failure> {
    let output = settings.output.value;
    // Names are checked before the agent (or the coordinator) is contacted.
    if let Some(n) = named(&args.command) {
        check_name(n).map_err(failure)?;
    }
    let mut stop_timeout = None;
    if let DomainCommand::Stop {
        timeout: Some(t), ..
    } = &args.command
    {
        if !t.is_finite() || *t < 0.0 || *t >= 86400.0 {
            return Err(bad(format!("--timeout {t}: give seconds from 0 to 86399")));
        }
        stop_timeout = Some(Duration::from_secs_f64(*t));
    }
    let Some(agent) = &settings.agent else {
        return Err(bad(
            "which agent? give --agent http://HOST:PORT/PREFIX (or an agent name from \
             `napalmctl agents`), or set NAPALM_AGENT or `agent:` in the config file"
                .into(),
        ));
    };
    let a = connect(agent, settings).await?;
    let state_change = |name: &str, st: napalm_agent::hypervisor::RunState| {
        let st = st.as_str();
        message(
            output,
            format!("{name}: {st}"),
            json!({"name": name, "state": st}),
        )
    };
    match &args.command {
        DomainCommand::List => {
            let rows: Vec<Value> = a
                .list()
                .await
                .map_err(failure)?
                .iter()
                .map(domain_row)
                .collect();
            Ok(render(output, &COLUMNS, &rows))
        }
        DomainCommand::Show { name } => {
            let d = a.show(name).await.map_err(failure)?;
            Ok(match output {
                Output::Table => {
                    let row = domain_row(&d);
                    let mut keys = COLUMNS.to_vec();
                    keys.push("files");
                    let pairs: Vec<Value> = keys
                        .iter()
                        .map(|k| json!({"field": k, "value": row.get(*k)}))
                        .collect();
                    render(output, &["field", "value"], &pairs)
                }
                _ => render_one(output, &json!(d)),
            })
        }
        DomainCommand::Status { name } => {
            let state = a.status(name).await.map_err(failure)?.as_str();
            Ok(message(
                output,
                state.to_owned(),
                json!({"name": name, "state": state}),
            ))
        }
        DomainCommand::Config { name } => {
            let mut text = a.config(name).await.map_err(failure)?;
            if !text.ends_with('\n') {
                text.push('\n');
            }
            Ok(text)
        }
        DomainCommand::Create {
            name,
            xml,
            files,
            archive,
            no_start,
        } => {
            let body = match (xml, archive) {
                (Some(x), _) => build_archive(x, files).map_err(failure)?,
                (None, Some(p)) => std::fs::read(p).map_err(|e| {
                    bad(format!(
                        "cannot read the archive {:?}: {e}",
                        p.display().to_string()
                    ))
                })?,
                (None, None) => {
                    return Err(bad("create needs --xml FILE or --archive FILE".into()))
                }
            };
            let c = a.create(name, body, !no_start).await.map_err(failure)?;
            let state = c.state.map_or("unknown", |s| s.as_str());
            let what = if c.created {
                "created"
            } else {
                "unchanged (it existed)"
            };
            Ok(message(
                output,
                format!("{name}: {what}, {state}"),
                json!({"name": name, "created": c.created, "state": state}),
            ))
        }
        DomainCommand::Start { name } => {
            Ok(state_change(name, a.start(name).await.map_err(failure)?))
        }
        DomainCommand::Stop { name, .. } => Ok(state_change(
            name,
            a.stop(name, stop_timeout).await.map_err(failure)?,
        )),
        DomainCommand::Pause { name } => {
            Ok(state_change(name, a.pause(name).await.map_err(failure)?))
        }
        DomainCommand::Delete { name, purge } => {
            a.delete(name, *purge).await.map_err(failure)?;
            Ok(message(
                output,
                format!("{name}: deleted"),
                json!({"name": name, "deleted": true}),
            ))
        }
        DomainCommand::Archive { name, out } => {
            let data = a.archive(name).await.map_err(failure)?;
            std::fs::write(out, &data).map_err(|e| Failure {
                code: 1,
                message: format!("cannot write {:?}: {e}", out.display().to_string()),
            })?;
            Ok(message(
                output,
                format!("{name}: {} bytes written to {}", data.len(), out.display()),
                json!({"name": name, "bytes": data.len(), "path": out}),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_change_the_path_are_refused() {
        let check = |n: &str| check_name(n).map_err(failure);
        for n in ["a/b", "../x", ".hidden", "-x", "", "a?b", "a b"] {
            let e = check(n).err().map(|f| (f.code, f.message));
            assert!(
                matches!(&e, Some((2, m)) if m.contains(&format!("{n:?}"))),
                "{n}: {e:?}"
            );
        }
        assert!(check("domcli-web_1.a").is_ok());
    }

    #[test]
    fn agent_errors_map_to_exit_codes_with_the_agents_message() {
        // The agent client reads the message out of the agent's error body.
        let refused = |method: &str, status: u16, text: &str, message: &str| {
            failure(ClientError::Status {
                method: method.into(),
                url: "http://a/domain/x".into(),
                status,
                status_text: text.into(),
                message: message.into(),
            })
        };
        let f = refused("GET", 404, "404 Not Found", "no domain \"x\"");
        assert_eq!(f.code, 4);
        assert!(f.message.contains("no domain \"x\""), "{}", f.message);
        let f = refused("PUT", 401, "401 Unauthorized", "nope");
        assert_eq!(f.code, 1);
        assert!(f.message.contains("NAPALM_AGENT_TOKEN"), "{}", f.message);
        let f = refused("PUT", 400, "400 Bad Request", "");
        assert_eq!(f.code, 2);
    }
}
