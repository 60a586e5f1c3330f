//! Where napalmctl's settings come from: flags, then environment variables, then one YAML
//! file, then defaults.
//!
//! The file is the first that exists of `$NAPALM_CONFIG` (which must exist when set),
//! `$XDG_CONFIG_HOME/napalm/napalmctl.yaml` (`~/.config/napalm/napalmctl.yaml` when
//! `XDG_CONFIG_HOME` is unset) and `/etc/napalm/napalmctl.yaml`; only that one file is
//! read. Keys: `coordinator`, `token`, `identity`, `output`, `agent`, `agent_token`; any
//! other key, or YAML that does not parse, is an error naming the file and line.
//!
//! `identity` is a directory `napalmctl login` wrote (`ca.crt`, `operator.crt`,
//! `operator.key`): with it, `https://` coordinator endpoints are dialed with mutual TLS
//! (the coordinator's TLS listener), the role in the certificate deciding what is allowed.
//!
//! The coordinator's token (`--token`, `NAPALM_TOKEN`, `token:`) is never sent to an agent:
//! `napalmctl domain` takes `--token`, `NAPALM_AGENT_TOKEN` or `agent_token:`.

use std::path::{Path, PathBuf};

use crate::output::Output;
use crate::Failure;

/// Default coordinator endpoint.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7700";

/// The system-wide configuration file.
pub const SYSTEM_FILE: &str = "/etc/napalm/napalmctl.yaml";

/// Text for `napalmctl --help`.
pub const PRECEDENCE_HELP: &str = "\
Settings, first found wins:
  coordinator  --coordinator, NAPALM_COORDINATOR, `coordinator:` in the file, http://127.0.0.1:7700
  token        --token, NAPALM_TOKEN, `token:` (bearer token sent to the coordinator)
  identity     --identity, NAPALM_IDENTITY, `identity:` (directory written by napalmctl
               login: client certificate for https:// coordinator endpoints)
  output       --output, NAPALM_OUTPUT, `output:` (table, json, yaml), table
  agent        domain --agent, NAPALM_AGENT, `agent:` (agent REST URL or registered name)
  agent token  --token (with `domain`), NAPALM_AGENT_TOKEN, `agent_token:`
The file is the first that exists of $NAPALM_CONFIG (must exist when set),
$XDG_CONFIG_HOME/napalm/napalmctl.yaml (else ~/.config/napalm/napalmctl.yaml) and
/etc/napalm/napalmctl.yaml. Example:
  coordinator: http://coord.example:7700
  token: s3cret
  output: json

Exit codes: 0 success; 1 the operation failed; 2 bad usage or input; 3 the coordinator
or agent is unreachable; 4 the named thing does not exist.";

/// A setting's value and where it came from (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    /// The value.
    pub value: T,
    /// `--coordinator`, `NAPALM_COORDINATOR`, `FILE:LINE` or `default`.
    pub origin: String,
}

/// napalmctl's resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Coordinator gRPC endpoint.
    pub coordinator: Setting<String>,
    /// Bearer token for the coordinator.
    pub token: Option<Setting<String>>,
    /// Directory of the operator's client certificate (`napalmctl login`).
    pub identity: Option<Setting<String>>,
    /// Output format.
    pub output: Setting<Output>,
    /// Default agent for `domain`.
    pub agent: Option<Setting<String>>,
    /// Bearer token for agents (`domain`).
    pub agent_token: Option<Setting<String>>,
}

/// What the command line said (each `None` when not given).
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--coordinator`.
    pub coordinator: Option<String>,
    /// `--token` of a coordinator command.
    pub token: Option<String>,
    /// `--identity`.
    pub identity: Option<String>,
    /// `--token` of `domain` (the agent's token; never sent to the coordinator).
    pub agent_token: Option<String>,
    /// `--output`.
    pub output: Option<Output>,
    /// `domain --agent`.
    pub agent: Option<String>,
}

/// The keys a configuration file may hold.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    coordinator: Option<String>,
    token: Option<String>,
    identity: Option<String>,
    output: Option<String>,
    agent: Option<String>,
    agent_token: Option<String>,
}

/// A configuration file as read.
#[derive(Debug)]
struct File {
    path: PathBuf,
    text: String,
    cfg: FileConfig,
}

fn bad(message: String) -> Failure {
    Failure { code: 2, message }
}

impl File {
    /// `PATH:LINE` of a top-level key, for messages.
    fn origin(&self, key: &str) -> String {
        let line = self
            .text
            .lines()
            .position(|l| {
                l.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with(':'))
            })
            .map_or(String::new(), |i| format!(":{}", i + 1));
        format!("{}{line}", self.path.display())
    }

    fn parse(path: PathBuf, text: String) -> Result<Self, Failure> {
        let only_comments = text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---");
        let cfg = if only_comments {
            FileConfig::default()
        } else {
            serde_yaml::from_str::<FileConfig>(&text).map_err(|e| {
                let at = e
                    .location()
                    .map_or(String::new(), |l| format!(":{}:{}", l.line(), l.column()));
                bad(format!(
                    "{}{at}: {e}; napalmctl's configuration takes the keys coordinator, token, \
                     identity, output, agent and agent_token (fix the file, or set NAPALM_CONFIG to \
                     another one)",
                    path.display()
                ))
            })?
        };
        Ok(Self { path, text, cfg })
    }
}

/// The file to read: `$NAPALM_CONFIG`, the user's, the system's; `None` when none exists.
fn find_file(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<File>, Failure> {
    let read = |path: PathBuf, must: bool| -> Result<Option<File>, Failure> {
        match std::fs::read_to_string(&path) {
            Ok(text) => File::parse(path, text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must => Ok(None),
            Err(e) => Err(bad(format!(
                "cannot read the configuration file {:?}: {e}{}",
                path.display().to_string(),
                if must {
                    " (named by NAPALM_CONFIG; unset it or point it at a file)"
                } else {
                    ""
                }
            ))),
        }
    };
    if let Some(p) = env("NAPALM_CONFIG").filter(|p| !p.is_empty()) {
        return read(PathBuf::from(p), true);
    }
    let user = match env("XDG_CONFIG_HOME").filter(|p| Path::new(p).is_absolute()) {
        Some(x) => Some(PathBuf::from(x)),
        None => env("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| Path::new(&h).join(".config")),
    };
    if let Some(dir) = user {
        if let Some(f) = read(dir.join("napalm").join("napalmctl.yaml"), false)? {
            return Ok(Some(f));
        }
    }
    read(PathBuf::from(SYSTEM_FILE), false)
}

fn parse_output(word: &str, origin: &str) -> Result<Output, Failure> {
    <Output as clap::ValueEnum>::from_str(word, true).map_err(|_| {
        bad(format!(
            "{origin}: output {word:?} is not a format: use table, json or yaml"
        ))
    })
}

/// Resolves the settings: `flags`, then the environment (`env`), then the file, then
/// defaults.
pub fn resolve(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, Failure> {
    let file = find_file(env)?;
    let pick = |flag: Option<&String>, flag_name: &str, var: &str, key: &str| {
        let from_file = |f: &File| {
            let v = match key {
                "coordinator" => f.cfg.coordinator.clone(),
                "token" => f.cfg.token.clone(),
                "identity" => f.cfg.identity.clone(),
                "output" => f.cfg.output.clone(),
                "agent" => f.cfg.agent.clone(),
                _ => f.cfg.agent_token.clone(),
            };
            v.map(|value| Setting {
                value,
                origin: f.origin(key),
            })
        };
        flag.map(|v| Setting {
            value: v.clone(),
            origin: flag_name.to_owned(),
        })
        .or_else(|| {
            env(var).filter(|v| !v.is_empty()).map(|value| Setting {
                value,
                origin: var.to_owned(),
            })
        })
        .or_else(|| file.as_ref().and_then(from_file))
    };
    let coordinator = pick(
        flags.coordinator.as_ref(),
        "--coordinator",
        "NAPALM_COORDINATOR",
        "coordinator",
    )
    .unwrap_or_else(|| Setting {
        value: DEFAULT_COORDINATOR.into(),
        origin: "default".into(),
    });
    let output = match flags.output {
        Some(o) => Setting {
            value: o,
            origin: "--output".into(),
        },
        None => match pick(None, "--output", "NAPALM_OUTPUT", "output") {
            Some(s) => Setting {
                value: parse_output(&s.value, &s.origin)?,
                origin: s.origin,
            },
            None => Setting {
                value: Output::Table,
                origin: "default".into(),
            },
        },
    };
    let token = pick(flags.token.as_ref(), "--token", "NAPALM_TOKEN", "token");
    let identity = pick(
        flags.identity.as_ref(),
        "--identity",
        "NAPALM_IDENTITY",
        "identity",
    );
    let agent = pick(flags.agent.as_ref(), "--agent", "NAPALM_AGENT", "agent");
    let agent_token = pick(
        flags.agent_token.as_ref(),
        "--token",
        "NAPALM_AGENT_TOKEN",
        "agent_token",
    );
    if let Some(f) = &file {
        warn_if_readable(f);
    }
    Ok(Settings {
        coordinator,
        token,
        identity,
        output,
        agent,
        agent_token,
    })
}

/// A token in a file others can read is worth a warning (not an error: the file may be
/// shared on purpose).
fn warn_if_readable(f: &File) {
    use std::os::unix::fs::PermissionsExt;
    if f.cfg.token.is_none() && f.cfg.agent_token.is_none() {
        return;
    }
    if let Ok(meta) = std::fs::metadata(&f.path) {
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "napalmctl: warning: {} holds a token and can be read by others; chmod 600 it",
                f.path.display()
            );
        }
    }
}

/// Reads the real environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(vars: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "# napalmctl\ncoordinator: http://file:1\noutput: yaml\nagent_token: filetok\n",
        )
        .expect("write");
        let p = path.display().to_string();
        let env = env_of(&[
            ("NAPALM_CONFIG", p.clone()),
            ("NAPALM_COORDINATOR", "http://env:2".into()),
        ]);
        let s = resolve(&Flags::default(), &env).expect("resolves");
        assert_eq!(s.coordinator.value, "http://env:2");
        assert_eq!(s.coordinator.origin, "NAPALM_COORDINATOR");
        assert_eq!(s.output.value, Output::Yaml);
        assert_eq!(s.output.origin, format!("{p}:3"));
        assert_eq!(s.agent_token.map(|t| t.value).as_deref(), Some("filetok"));
        assert_eq!(s.token, None, "the agent's token is not the coordinator's");

        let flags = Flags {
            coordinator: Some("http://flag:3".into()),
            token: None,
            identity: None,
            agent_token: Some("flagtok".into()),
            output: Some(Output::Json),
            agent: None,
        };
        let s = resolve(&flags, &env).expect("resolves");
        assert_eq!(s.coordinator.value, "http://flag:3");
        assert_eq!(s.output.value, Output::Json);
        assert_eq!(s.agent_token.map(|t| t.value).as_deref(), Some("flagtok"));
        assert_eq!(s.token, None, "domain's --token is not the coordinator's");

        let s = resolve(&Flags::default(), &env_of(&[("NAPALM_CONFIG", p)])).expect("ok");
        assert_eq!(s.coordinator.value, "http://file:1");
        assert!(s.coordinator.origin.ends_with("c.yaml:2"), "{s:?}");

        let empty = tempfile::tempdir().expect("temp dir");
        let s = resolve(
            &Flags::default(),
            &env_of(&[("XDG_CONFIG_HOME", empty.path().display().to_string())]),
        );
        // With no user file the system file may exist on this machine; only check the
        // default when it does not.
        if !Path::new(SYSTEM_FILE).exists() {
            let s = s.expect("resolves");
            assert_eq!(s.coordinator.value, DEFAULT_COORDINATOR);
            assert_eq!(s.output.value, Output::Table);
        }
    }

    #[test]
    fn xdg_file_is_found_and_errors_name_file_and_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = dir.path().join("napalm");
        std::fs::create_dir_all(&cfg).expect("mkdir");
        let path = cfg.join("napalmctl.yaml");
        std::fs::write(&path, "coordinator: http://xdg:7\n").expect("write");
        let env = env_of(&[("XDG_CONFIG_HOME", dir.path().display().to_string())]);
        let s = resolve(&Flags::default(), &env).expect("resolves");
        assert_eq!(s.coordinator.value, "http://xdg:7");

        std::fs::write(&path, "coordinator: http://xdg:7\ncordinator: typo\n").expect("write");
        let e = resolve(&Flags::default(), &env).expect_err("unknown key");
        assert_eq!(e.code, 2);
        assert!(e.message.contains("napalmctl.yaml:2:"), "{}", e.message);
        assert!(e.message.contains("cordinator"), "{}", e.message);

        std::fs::write(&path, "coordinator: [unclosed\n").expect("write");
        let e = resolve(&Flags::default(), &env).expect_err("malformed");
        assert!(
            e.message.contains(&format!("{}:", path.display())),
            "{}",
            e.message
        );

        std::fs::write(&path, "output: xml\n").expect("write");
        let e = resolve(&Flags::default(), &env).expect_err("bad format");
        assert!(
            e.message.contains("napalmctl.yaml:1") && e.message.contains("\"xml\""),
            "{}",
            e.message
        );

        let e = resolve(
            &Flags::default(),
            &env_of(&[("NAPALM_CONFIG", "/nonexistent/napalmctl.yaml".into())]),
        )
        .expect_err("named file missing");
        assert!(
            e.message.contains("/nonexistent/napalmctl.yaml")
                && e.message.contains("NAPALM_CONFIG"),
            "{}",
            e.message
        );
    }
}
