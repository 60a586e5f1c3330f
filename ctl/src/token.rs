//! `napalmctl agent token create|list|revoke`: the join tokens new hosts enroll with
//! (`napalm-agent --join TOKEN`), through `napalm.trust.v1.TrustService` on the
//! coordinator's API listener with the operator's token. The printed token is shown once:
//! the coordinator keeps only its hash.

use napalm_proto::trust_v1::trust_service_client::TrustServiceClient;
use napalm_proto::trust_v1::{
    CreateJoinTokenRequest, JoinTokenInfo, ListJoinTokensRequest, RevokeAgentRequest,
    RevokeJoinTokenRequest,
};
use serde_json::json;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::config::Settings;
use crate::connect::Bearer;
use crate::output::{self, Output};
use crate::{from_status, Failure};

/// `napalmctl agent …`.
#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Join tokens for new agents.
    Token {
        /// What to do.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Revoke an enrolled agent's identity: its calls are refused from now on, it cannot
    /// renew or enroll again under that id, and it is drained.
    Revoke {
        /// Agent id or name.
        agent: String,
        /// Why (kept with the record).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// `napalmctl agent token …`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Print a new single-use join token (`napalm-agent --join TOKEN` on the new host).
    Create {
        /// Lifetime: `90s`, `15m`, `2h`, `1d` or seconds [default: the coordinator's, 15m].
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<u64>,
        /// Host name the token is for: another host presenting it is refused.
        #[arg(long)]
        name: Option<String>,
    },
    /// Join tokens with their state (active, used, expired, revoked); never the secrets.
    List,
    /// Revoke a join token by id (from `list`).
    Revoke {
        /// Token id.
        id: String,
    },
}

/// Parses `90s`, `15m`, `2h`, `1d` or a number of seconds.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: use 90s, 15m, 2h or 1d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit {other:?} in {s:?}: use s, m, h or d")),
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err(format!("{s:?}: the lifetime must be positive and sane")),
        Some(v) => Ok(v),
    }
}

type Client = TrustServiceClient<InterceptedService<Channel, Bearer>>;

/// A TrustService client on the first reachable configured coordinator, with the token
/// (or over mutual TLS with the identity, for `https://` endpoints).
pub(crate) async fn client(settings: &Settings) -> Result<Client, Failure> {
    let bearer = crate::connect::bearer(settings)?;
    let mut last = None;
    for endpoint in settings.coordinator.value.split(',').map(str::trim) {
        if endpoint.is_empty() {
            continue;
        }
        match crate::connect::channel(settings, endpoint).await {
            Ok(ch) => return Ok(TrustServiceClient::with_interceptor(ch, bearer)),
            Err(f) if f.code == 3 => last = Some(f),
            Err(f) => return Err(f),
        }
    }
    Err(last.unwrap_or_else(|| Failure {
        code: 2,
        message: format!(
            "no coordinator endpoint in {:?}; give --coordinator HOST:PORT",
            settings.coordinator.value
        ),
    }))
}

fn unimplemented_hint(s: tonic::Status) -> Failure {
    if s.code() == tonic::Code::Unimplemented {
        return Failure {
            code: 2,
            message: "this coordinator serves no join tokens: start it with --trust-listen \
                      ADDR"
                .into(),
        };
    }
    from_status(s)
}

fn row(t: &JoinTokenInfo) -> serde_json::Value {
    json!({
        "id": t.id,
        "name": t.name,
        "state": t.state,
        // single: one agent; bootstrap: any number of new agents (a fleet's token).
        "kind": if t.reusable { "bootstrap" } else { "single" },
        "uses": if t.reusable { t.uses } else { u64::from(!t.used_by.is_empty()) },
        "created": t.created_at,
        "expires": t.expires_at,
        "used_by": t.used_by,
    })
}

const COLUMNS: &[&str] = &[
    "id", "name", "state", "kind", "uses", "created", "expires", "used_by",
];

/// Runs one `agent` subcommand; returns what to print.
pub async fn run(
    settings: &Settings,
    command: &AgentCommand,
    out: Output,
) -> Result<String, Failure> {
    let mut c = client(settings).await?;
    let command = match command {
        AgentCommand::Token { command } => command,
        AgentCommand::Revoke { agent, reason } => {
            let r = c
                .revoke_agent(RevokeAgentRequest {
                    agent: agent.clone(),
                    reason: reason.clone(),
                })
                .await
                .map_err(unimplemented_hint)?
                .into_inner();
            let row = json!({
                "agent": r.agent_id,
                "state": "revoked",
                "revoked": r.revoked_at,
                "reason": r.reason,
            });
            return Ok(output::render(
                out,
                &["agent", "state", "revoked", "reason"],
                &[row],
            ));
        }
    };
    match command {
        TokenCommand::Create { ttl, name } => {
            let r = c
                .create_join_token(CreateJoinTokenRequest {
                    ttl_seconds: ttl.unwrap_or(0),
                    name: name.clone().unwrap_or_default(),
                })
                .await
                .map_err(unimplemented_hint)?
                .into_inner();
            Ok(match out {
                // The token alone on stdout, for `$(napalmctl agent token create)`.
                Output::Table => format!("{}\n", r.token),
                _ => output::render(
                    out,
                    &[],
                    &[json!({"token": r.token, "info": r.info.as_ref().map(row)})],
                ),
            })
        }
        TokenCommand::List => {
            let r = c
                .list_join_tokens(ListJoinTokensRequest {})
                .await
                .map_err(unimplemented_hint)?
                .into_inner();
            let rows: Vec<_> = r.tokens.iter().map(row).collect();
            Ok(output::render(out, COLUMNS, &rows))
        }
        TokenCommand::Revoke { id } => {
            let r = c
                .revoke_join_token(RevokeJoinTokenRequest { id: id.clone() })
                .await
                .map_err(unimplemented_hint)?
                .into_inner();
            Ok(output::render(out, COLUMNS, &[row(&r)]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn lifetimes_parse_with_units() {
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("2h"), Ok(7200));
        assert_eq!(parse_ttl("1d"), Ok(86_400));
        for bad in ["", "m", "0", "5w", "-1m", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }
}
