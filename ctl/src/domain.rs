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
//! The agent is named by its REST URL with prefix (`http://host:8480/napalm`) or by the
//! name or id of an agent registered with the coordinator (its recorded REST endpoint is
//! used). Plain HTTP only: this build has no TLS client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use napalm_proto::v1::GetAgentRequest;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
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

/// The agent's own name rule (1-64 of `A-Za-z0-9._-`, not starting with `.` or `-`),
/// checked here so a name never changes the request path.
pub fn check_name(name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with('.')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "domain name {name:?}: use 1-64 characters of A-Z a-z 0-9 . _ - not starting \
             with . or -"
        )))
    }
}

/// One agent's REST API.
struct Agent {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Agent {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// One request; a non-2xx answer becomes a [`Failure`] with the agent's message.
    async fn call(
        &self,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<(StatusCode, Vec<u8>), Failure> {
        let url = self.url(path);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header(ACCEPT, accept);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some((ct, data)) = body {
            req = req.header(CONTENT_TYPE, ct).body(data);
        }
        let resp = req.send().await.map_err(|e| {
            let (code, what) = if e.is_timeout() {
                (3, "did not answer in time")
            } else if e.is_connect() {
                (3, "cannot be reached")
            } else {
                (1, "failed")
            };
            Failure {
                code,
                message: format!(
                    "{method} {url}: the agent {what} ({}); check --agent and that \
                     napalm-agent runs there",
                    source_chain(&e)
                ),
            }
        })?;
        let status = resp.status();
        let data = resp.bytes().await.map_err(|e| Failure {
            code: 1,
            message: format!("{method} {url}: reading the answer failed: {e}"),
        })?;
        if status.is_success() {
            return Ok((status, data.to_vec()));
        }
        Err(agent_error(&method, &url, status, &data))
    }

    async fn json(&self, path: &str) -> Result<Value, Failure> {
        let (_, data) = self
            .call(Method::GET, path, "application/json", None)
            .await?;
        serde_json::from_slice(&data).map_err(|e| Failure {
            code: 1,
            message: format!(
                "GET {}: the agent's answer is not JSON ({e}); is this a napalm-agent?",
                self.url(path)
            ),
        })
    }

    async fn set_state(
        &self,
        name: &str,
        state: &str,
        timeout: Option<f64>,
    ) -> Result<String, Failure> {
        let query = timeout.map_or(String::new(), |t| format!("?timeout={t}"));
        let body = format!("<status><state>{state}</state></status>");
        let (_, data) = self
            .call(
                Method::PUT,
                &format!("/domain/{name}/status.xml{query}"),
                "application/json",
                Some(("application/xml", body.into_bytes())),
            )
            .await?;
        Ok(serde_json::from_slice::<Value>(&data)
            .ok()
            .and_then(|v| v.get("state").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| state.to_owned()))
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}

/// Maps an agent's error answer (`{"error":{"status","reason","message"}}`) to an exit code
/// and a message saying what to do.
fn agent_error(method: &Method, url: &str, status: StatusCode, body: &[u8]) -> Failure {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    let (code, hint) = match status.as_u16() {
        400 => (2, "fix the input the message names"),
        401 => (
            1,
            "the agent wants its bearer token: pass --token, or set NAPALM_AGENT_TOKEN or \
             `agent_token:` in the config file",
        ),
        403 => (
            1,
            "the agent's policy refuses it (see its --allow-* flags in agent/README.md)",
        ),
        404 => (
            4,
            "see `napalmctl domain list` for the domains this agent has",
        ),
        409 => (
            1,
            "the domain changed meanwhile or is busy; look at it and retry",
        ),
        413 => (2, "too large for the agent's limits"),
        _ => (1, "see the agent's log"),
    };
    Failure {
        code,
        message: format!("{method} {url}: {status}: {message} ({hint})"),
    }
}

/// The agent's base URL: `--agent` as a URL, or the REST endpoint the coordinator has for
/// that agent name or id.
async fn base_url(agent: &Setting<String>, settings: &Settings) -> Result<String, Failure> {
    let raw = agent.value.trim();
    let url = if raw.contains("://") {
        raw.to_owned()
    } else {
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
        a.rest_endpoint
    };
    let parsed = Url::parse(&url).map_err(|e| {
        bad(format!(
            "agent URL {url:?} (from {}) does not parse: {e}; use http://HOST:PORT/PREFIX",
            agent.origin
        ))
    })?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(bad(format!(
                "agent URL {url:?} (from {}) uses TLS, which this napalmctl cannot speak yet; \
                 reach the agent over plain HTTP (e.g. through an SSH tunnel)",
                agent.origin
            )))
        }
        s => {
            return Err(bad(format!(
                "agent URL {url:?} (from {}) has scheme {s:?}; use http://HOST:PORT/PREFIX",
                agent.origin
            )))
        }
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad(format!(
            "agent URL {url:?} (from {}) has a query or fragment; give only \
             http://HOST:PORT/PREFIX",
            agent.origin
        )));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| {
        bad(format!(
            "cannot read {what} {:?}: {e}",
            path.display().to_string()
        ))
    })
}

/// A plain tar holding `config.xml` and each file under its own name.
fn build_archive(xml: &Path, files: &[PathBuf]) -> Result<Vec<u8>, Failure> {
    let mut entries: Vec<(String, Vec<u8>)> =
        vec![("config.xml".into(), read_file(xml, "the domain XML")?)];
    for f in files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                bad(format!(
                    "--file {:?} has no usable file name",
                    f.display().to_string()
                ))
            })?
            .to_owned();
        if entries.iter().any(|(n, _)| *n == name) {
            return Err(bad(format!(
                "--file {:?}: a file named {name:?} is already in the archive; each file \
                 travels under its own name, so names must differ",
                f.display().to_string()
            )));
        }
        let data = read_file(f, "--file")?;
        entries.push((name, data));
    }
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in &entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice())
            .map_err(|e| Failure {
                code: 1,
                message: format!("cannot pack {name:?} into the archive: {e}"),
            })?;
    }
    b.into_inner().map_err(|e| Failure {
        code: 1,
        message: format!("cannot finish the archive: {e}"),
    })
}

fn mib(v: &Value) -> Value {
    v.as_u64().map_or(Value::Null, |b| json!(b >> 20))
}

fn domain_row(d: &Value) -> Value {
    json!({
        "name": d.get("name"),
        "state": d.get("state"),
        "desired": d.get("desired"),
        "vcpus": d.get("vcpus"),
        "memory_mib": mib(d.get("memory_bytes").unwrap_or(&Value::Null)),
        "owned": d.get("owned"),
        "files": d.get("files"),
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

/// Runs one `napalmctl domain` command.
pub async fn run(args: &DomainArgs, settings: &Settings) -> Result<String, Failure> {
    let output = settings.output.value;
    // Names are checked before the agent (or the coordinator) is contacted.
    let name = match &args.command {
        DomainCommand::List => None,
        DomainCommand::Show { name }
        | DomainCommand::Status { name }
        | DomainCommand::Config { name }
        | DomainCommand::Create { name, .. }
        | DomainCommand::Start { name }
        | DomainCommand::Stop { name, .. }
        | DomainCommand::Pause { name }
        | DomainCommand::Delete { name, .. }
        | DomainCommand::Archive { name, .. } => Some(name.as_str()),
    };
    if let Some(n) = name {
        check_name(n)?;
    }
    if let DomainCommand::Stop {
        timeout: Some(t), ..
    } = &args.command
    {
        if !t.is_finite() || *t < 0.0 || *t >= 86400.0 {
            return Err(bad(format!("--timeout {t}: give seconds from 0 to 86399")));
        }
    }
    let Some(agent) = &settings.agent else {
        return Err(bad(
            "which agent? give --agent http://HOST:PORT/PREFIX (or an agent name from \
             `napalmctl agents`), or set NAPALM_AGENT or `agent:` in the config file"
                .into(),
        ));
    };
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| Failure {
            code: 1,
            message: format!("cannot set up the HTTP client: {e}"),
        })?;
    let a = Agent {
        base: base_url(agent, settings).await?,
        token: settings.agent_token.as_ref().map(|t| t.value.clone()),
        http,
    };
    match &args.command {
        DomainCommand::List => {
            let v = a.json("/domains.json").await?;
            let rows: Vec<Value> = v
                .as_array()
                .map(|ds| ds.iter().map(domain_row).collect())
                .unwrap_or_default();
            Ok(render(output, &COLUMNS, &rows))
        }
        DomainCommand::Show { name } => {
            let v = a.json(&format!("/domain/{name}")).await?;
            Ok(match output {
                Output::Table => {
                    let row = domain_row(&v);
                    let mut keys = COLUMNS.to_vec();
                    keys.push("files");
                    let pairs: Vec<Value> = keys
                        .iter()
                        .map(|k| json!({"field": k, "value": row.get(*k)}))
                        .collect();
                    render(output, &["field", "value"], &pairs)
                }
                _ => render_one(output, &v),
            })
        }
        DomainCommand::Status { name } => {
            let v = a.json(&format!("/domain/{name}/status.json")).await?;
            let state = v.get("state").and_then(Value::as_str).unwrap_or("unknown");
            Ok(message(
                output,
                state.to_owned(),
                json!({"name": name, "state": state}),
            ))
        }
        DomainCommand::Config { name } => {
            let (_, data) = a
                .call(
                    Method::GET,
                    &format!("/domain/{name}/config.xml"),
                    "application/xml",
                    None,
                )
                .await?;
            let mut text = String::from_utf8_lossy(&data).into_owned();
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
                (Some(x), _) => build_archive(x, files)?,
                (None, Some(p)) => read_file(p, "the archive")?,
                (None, None) => {
                    return Err(bad("create needs --xml FILE or --archive FILE".into()))
                }
            };
            let query = if *no_start { "?start=false" } else { "" };
            let (status, data) = a
                .call(
                    Method::PUT,
                    &format!("/domain/{name}{query}"),
                    "application/json",
                    Some(("application/octet-stream", body)),
                )
                .await?;
            let v: Value = serde_json::from_slice(&data).unwrap_or(Value::Null);
            let state = v.get("state").and_then(Value::as_str).unwrap_or("unknown");
            let what = if status == StatusCode::CREATED {
                "created"
            } else {
                "unchanged (it existed)"
            };
            Ok(message(
                output,
                format!("{name}: {what}, {state}"),
                json!({"name": name, "created": status == StatusCode::CREATED, "state": state}),
            ))
        }
        DomainCommand::Start { name } => {
            let st = a.set_state(name, "running", None).await?;
            Ok(message(
                output,
                format!("{name}: {st}"),
                json!({"name": name, "state": st}),
            ))
        }
        DomainCommand::Stop { name, timeout } => {
            let st = a.set_state(name, "shutoff", *timeout).await?;
            Ok(message(
                output,
                format!("{name}: {st}"),
                json!({"name": name, "state": st}),
            ))
        }
        DomainCommand::Pause { name } => {
            let st = a.set_state(name, "paused", None).await?;
            Ok(message(
                output,
                format!("{name}: {st}"),
                json!({"name": name, "state": st}),
            ))
        }
        DomainCommand::Delete { name, purge } => {
            let query = if *purge { "?purge=true" } else { "" };
            a.call(
                Method::DELETE,
                &format!("/domain/{name}{query}"),
                "application/json",
                None,
            )
            .await?;
            Ok(message(
                output,
                format!("{name}: deleted"),
                json!({"name": name, "deleted": true}),
            ))
        }
        DomainCommand::Archive { name, out } => {
            let (_, data) = a
                .call(
                    Method::GET,
                    &format!("/domain/{name}/archive.tar.gz"),
                    "application/gzip",
                    None,
                )
                .await?;
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

fn render_one(output: Output, v: &Value) -> String {
    match output {
        Output::Yaml => serde_yaml::to_string(v).unwrap_or_default(),
        _ => serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_change_the_path_are_refused() {
        for n in ["a/b", "../x", ".hidden", "-x", "", "a?b", "a b"] {
            let e = check_name(n).err().map(|f| (f.code, f.message));
            assert!(
                matches!(&e, Some((2, m)) if m.contains(&format!("{n:?}"))),
                "{n}: {e:?}"
            );
        }
        assert!(check_name("domcli-web_1.a").is_ok());
    }

    #[test]
    fn agent_errors_map_to_exit_codes_with_the_agents_message() {
        let body = br#"{"error":{"status":404,"reason":"NOT_FOUND","message":"no domain \"x\""}}"#;
        let f = agent_error(
            &Method::GET,
            "http://a/domain/x",
            StatusCode::NOT_FOUND,
            body,
        );
        assert_eq!(f.code, 4);
        assert!(f.message.contains("no domain \"x\""), "{}", f.message);
        let f = agent_error(&Method::PUT, "http://a", StatusCode::UNAUTHORIZED, b"nope");
        assert_eq!(f.code, 1);
        assert!(f.message.contains("NAPALM_AGENT_TOKEN"), "{}", f.message);
        let f = agent_error(&Method::PUT, "http://a", StatusCode::BAD_REQUEST, b"{}");
        assert_eq!(f.code, 2);
    }
}
