//! `napalmctl watch`: follows `CoordinatorService.WatchEvents` until Ctrl-C — one line per
//! registry change for people (`clone grid1-03 scheduled -> running on agent-b`), one JSON
//! object per line (or one YAML document each) for scripts.

use std::collections::HashMap;

use napalm_proto::v1::{
    event, AgentState, ClonePhase, DeploymentState, Event, EventKind, RolloutState,
    WatchEventsRequest,
};
use serde_json::{json, Value};
use tokio_stream::StreamExt;

use crate::config::Settings;
use crate::output::Output;
use crate::tables::state_name;
use crate::{from_status, Client, Failure};

/// Event kinds on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Agent records (state, endpoints, capabilities).
    Agent,
    /// Clone records (phase, agent, addresses, errors).
    Clone,
    /// Deployment records (added, state, removed).
    Deployment,
}

/// Arguments of `napalmctl watch`.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// Only this deployment and its clones.
    #[arg(long)]
    pub deployment: Option<String>,
    /// Only these kinds (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub kinds: Vec<Kind>,
    /// First replay the current state of records changed after this registry revision.
    #[arg(long, default_value_t = 0)]
    pub since: u64,
}

fn seconds(t: Option<&prost_types::Timestamp>) -> f64 {
    t.map_or(0.0, |t| t.seconds as f64 + f64::from(t.nanos) / 1e9)
}

/// `HH:MM:SS.mmm` (UTC) of a timestamp.
fn clock(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t else {
        return "--:--:--.---".into();
    };
    let day = t.seconds.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day / 3600,
        day / 60 % 60,
        day % 60,
        t.nanos / 1_000_000
    )
}

/// The event as one flat JSON object.
pub fn event_json(e: &Event) -> Value {
    let mut v = match &e.payload {
        Some(event::Payload::Clone(c)) => json!({
            "kind": "clone", "name": c.name, "deployment": c.deployment,
            "phase": state_name(ClonePhase::try_from(c.phase).unwrap_or_default().as_str_name(), "CLONE_PHASE_"),
            "agent": c.agent_id, "addresses": c.addresses, "error": c.last_error,
            "action": c.last_action, "restarts": c.restarts, "spec_revision": c.spec_revision,
        }),
        Some(event::Payload::Agent(a)) => json!({
            "kind": "agent", "name": a.name, "id": a.id,
            "state": state_name(AgentState::try_from(a.state).unwrap_or_default().as_str_name(), "AGENT_STATE_"),
            "endpoint": a.grpc_endpoint,
        }),
        Some(event::Payload::Deployment(d)) => {
            let spec = d.spec.clone().unwrap_or_default();
            let rollout = d.rollout.clone().unwrap_or_default();
            json!({
                "kind": "deployment", "name": spec.name, "count": spec.count,
                "state": state_name(DeploymentState::try_from(d.state).unwrap_or_default().as_str_name(), "DEPLOYMENT_STATE_"),
                "spec_revision": d.spec_revision,
                "rollout": state_name(RolloutState::try_from(rollout.state).unwrap_or_default().as_str_name(), "ROLLOUT_STATE_"),
                "rollout_message": rollout.message,
            })
        }
        None => json!({"kind": "unknown"}),
    };
    if let Some(o) = v.as_object_mut() {
        o.insert("revision".into(), json!(e.revision));
        o.insert("at".into(), json!(seconds(e.at.as_ref())));
        o.insert("deleted".into(), json!(e.deleted));
    }
    v
}

/// What a person reads: the change, with the previous phase or state when it was seen.
fn human(e: &Event, last: &mut HashMap<String, String>) -> String {
    let v = event_json(e);
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let (kind, name) = (s("kind"), s("name"));
    let now = if kind == "clone" {
        s("phase")
    } else {
        s("state")
    };
    let key = format!("{kind}/{name}");
    let change = if e.deleted {
        last.remove(&key);
        "removed".to_owned()
    } else {
        match last.insert(key, now.clone()) {
            Some(before) if before != now => format!("{before} -> {now}"),
            Some(_) => format!("{now} (changed)"),
            None => now,
        }
    };
    let mut extra = match kind.as_str() {
        "clone" if !s("error").is_empty() => format!("  error: {}", s("error")),
        "clone" if !s("agent").is_empty() => format!("  on {}", s("agent")),
        "agent" => format!("  {}", s("endpoint")),
        _ => String::new(),
    };
    // The control loop's actions (placed, restarted, replaced… and why) show when they
    // change, as do a rollout's state and why it paused.
    let (said, note) = match kind.as_str() {
        "clone" => (format!("action/{name}"), s("action")),
        "deployment" => (
            format!("rollout/{name}"),
            match (s("rollout").as_str(), s("rollout_message")) {
                ("unspecified", _) => String::new(),
                (r, m) if m.is_empty() => format!("rollout {r}"),
                (r, m) => format!("rollout {r}: {m}"),
            },
        ),
        _ => (String::new(), String::new()),
    };
    if !note.is_empty() && !e.deleted && last.insert(said, note.clone()).as_ref() != Some(&note) {
        extra += &format!("  [{note}]");
    }
    format!(
        "{} {:>6} {:<10} {:<24} {change}{extra}",
        clock(e.at.as_ref()),
        e.revision,
        kind,
        name
    )
}

/// Follows events until Ctrl-C (exit 0) or the coordinator ends the stream.
pub async fn watch(
    c: &mut Client,
    args: &WatchArgs,
    settings: &Settings,
) -> Result<String, Failure> {
    let output = settings.output.value;
    let kinds = args
        .kinds
        .iter()
        .map(|k| match k {
            Kind::Agent => EventKind::Agent as i32,
            Kind::Clone => EventKind::Clone as i32,
            Kind::Deployment => EventKind::Deployment as i32,
        })
        .collect();
    let req = WatchEventsRequest {
        kinds,
        deployment: args.deployment.clone().unwrap_or_default(),
        since_revision: args.since,
    };
    let mut stream = c.watch_events(req).await.map_err(from_status)?.into_inner();
    eprintln!(
        "napalmctl: watching {} (Ctrl-C to stop)",
        settings.coordinator.value
    );
    let mut last = HashMap::new();
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let item = tokio::select! {
            _ = &mut stop => return Ok(String::new()),
            item = stream.next() => item,
        };
        let Some(item) = item else {
            return Err(Failure {
                code: 3,
                message: format!(
                    "the coordinator at {:?} ended the watch (it stopped?); run napalmctl \
                     watch again",
                    settings.coordinator.value
                ),
            });
        };
        let e = item.map_err(from_status)?;
        match output {
            Output::Table => println!("{}", human(&e, &mut last)),
            Output::Json => println!("{}", event_json(&e)),
            Output::Yaml => print!(
                "---\n{}",
                serde_yaml::to_string(&event_json(&e)).unwrap_or_default()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use napalm_proto::v1::Clone;

    fn clone_event(phase: ClonePhase, deleted: bool) -> Event {
        Event {
            revision: 7,
            at: Some(prost_types::Timestamp {
                seconds: 3600 + 61,
                nanos: 5_000_000,
            }),
            deleted,
            payload: Some(event::Payload::Clone(Clone {
                name: "g-01".into(),
                deployment: "g".into(),
                phase: phase as i32,
                agent_id: "a1".into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn lines_show_the_transition() {
        let mut last = HashMap::new();
        let first = human(&clone_event(ClonePhase::Scheduled, false), &mut last);
        assert!(first.starts_with("01:01:01.005"), "{first}");
        assert!(
            first.contains("g-01") && first.ends_with("scheduled  on a1"),
            "{first}"
        );
        let second = human(&clone_event(ClonePhase::Running, false), &mut last);
        assert!(second.contains("scheduled -> running"), "{second}");
        let mut restarted = clone_event(ClonePhase::Running, false);
        if let Some(event::Payload::Clone(c)) = restarted.payload.as_mut() {
            c.last_action = "restarted on a1: its domain died (restart 1 of 3)".into();
        }
        let line = human(&restarted, &mut last);
        assert!(
            line.ends_with("[restarted on a1: its domain died (restart 1 of 3)]"),
            "the loop's action shows: {line}"
        );
        let again = human(&restarted, &mut last);
        assert!(!again.contains("restarted on"), "once: {again}");
        let gone = human(&clone_event(ClonePhase::Running, true), &mut last);
        assert!(gone.contains("removed"), "{gone}");
        let v = event_json(&clone_event(ClonePhase::Layer, false));
        assert_eq!(v["phase"], "layer");
        assert_eq!(v["revision"], 7);
        assert_eq!(v["deleted"], false);
    }
}
