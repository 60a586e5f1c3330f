//! `napalmctl deployments show NAME` (the stored spec, its revision and its rollout) and
//! `napalmctl rollout status|pause|resume|undo NAME` (a deployment's rolling update).

use std::fmt::Write as _;

use napalm_proto::v1::{
    CloneMode, Deployment, DeploymentState, GetDeploymentRequest, RolloutAction, RolloutRequest,
    RolloutState,
};

use crate::config::Settings;
use crate::connect::{client, on_leader};
use crate::output::Output;
use crate::tables::state_name;
use crate::{from_status, Failure};

/// What `napalmctl rollout` does.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum RolloutCommand {
    /// Where the rolling update stands: spec revision, clones updated, why it paused.
    Status {
        /// Deployment name.
        name: String,
    },
    /// Stop replacing clones (the ones already replaced stay).
    Pause {
        /// Deployment name.
        name: String,
    },
    /// Go on replacing clones; clones of the new spec that failed are placed again.
    Resume {
        /// Deployment name.
        name: String,
    },
    /// Go back to the previous spec (rolled out the same way).
    Undo {
        /// Deployment name.
        name: String,
    },
}

/// What `napalmctl deployments` does.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum DeploymentsCommand {
    /// The stored spec of one deployment (with its clones.conf), its revision and rollout.
    Show {
        /// Deployment name.
        name: String,
    },
}

/// `napalmctl rollout …`.
pub async fn rollout(
    settings: &Settings,
    command: &RolloutCommand,
    output: Output,
) -> Result<String, Failure> {
    let (name, action) = match command {
        RolloutCommand::Status { name } => (name, RolloutAction::Status),
        RolloutCommand::Pause { name } => (name, RolloutAction::Pause),
        RolloutCommand::Resume { name } => (name, RolloutAction::Resume),
        RolloutCommand::Undo { name } => (name, RolloutAction::Undo),
    };
    let req = RolloutRequest {
        name: name.clone(),
        action: action as i32,
    };
    let d = if action == RolloutAction::Status {
        let mut c = client(settings).await?;
        c.rollout(req).await.map_err(from_status)?.into_inner()
    } else {
        on_leader(settings, |mut c| {
            let req = req.clone();
            async move { c.rollout(req).await }
        })
        .await?
        .into_inner()
    };
    Ok(match output {
        Output::Json => json(&d),
        _ => status_text(&d),
    })
}

/// `napalmctl deployments show NAME`.
pub async fn show(settings: &Settings, name: &str, output: Output) -> Result<String, Failure> {
    let mut c = client(settings).await?;
    let d = c
        .get_deployment(GetDeploymentRequest { name: name.into() })
        .await
        .map_err(from_status)?
        .into_inner();
    Ok(match output {
        Output::Json => json(&d),
        _ => spec_text(&d),
    })
}

fn json(d: &Deployment) -> String {
    let spec = d.spec.clone().unwrap_or_default();
    let rollout = d.rollout.clone().unwrap_or_default();
    let v = serde_json::json!({
        "name": spec.name,
        "spec_revision": d.spec_revision,
        "state": state_name(
            DeploymentState::try_from(d.state).unwrap_or_default().as_str_name(),
            "DEPLOYMENT_STATE_",
        ),
        "rollout": {
            "state": rollout_state(d),
            "revision": rollout.revision,
            "updated": rollout.updated,
            "total": rollout.total,
            "message": rollout.message,
        },
        "count": spec.count,
        "clones": spec.clone_names,
        "layers": spec.layers,
        "clones_conf_file": spec.clones_conf_file,
        "clones_conf": spec.clones_conf,
        "max_unavailable": spec.max_unavailable,
        "has_previous_spec": d.previous_spec.is_some(),
    });
    format!("{v}\n")
}

fn rollout_state(d: &Deployment) -> String {
    let s = d
        .rollout
        .as_ref()
        .and_then(|r| RolloutState::try_from(r.state).ok())
        .unwrap_or_default();
    match s {
        RolloutState::Unspecified => "none".into(),
        s => state_name(s.as_str_name(), "ROLLOUT_STATE_"),
    }
}

/// The rollout in a few lines.
fn status_text(d: &Deployment) -> String {
    let spec = d.spec.clone().unwrap_or_default();
    let r = d.rollout.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "deployment {}: spec revision {}, rollout {}",
        spec.name,
        d.spec_revision,
        rollout_state(d)
    );
    let _ = writeln!(
        out,
        "  {} of {} clone(s) on revision {} (at most {} down at once)",
        r.updated,
        r.total,
        d.spec_revision,
        spec.max_unavailable.max(1)
    );
    if !r.message.is_empty() {
        let _ = writeln!(out, "  {}", r.message);
    }
    out
}

/// The stored spec as an operator reads it, then the clones.conf it came from.
fn spec_text(d: &Deployment) -> String {
    let spec = d.spec.clone().unwrap_or_default();
    let res = spec.resources.unwrap_or_default();
    let mode = CloneMode::try_from(spec.mode).unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "name: {}", spec.name);
    let _ = writeln!(out, "revision: {}", d.spec_revision);
    let _ = writeln!(
        out,
        "state: {}",
        state_name(
            DeploymentState::try_from(d.state)
                .unwrap_or_default()
                .as_str_name(),
            "DEPLOYMENT_STATE_"
        )
    );
    let _ = writeln!(out, "rollout: {}", rollout_state(d));
    let _ = writeln!(out, "count: {}", spec.count);
    let _ = writeln!(
        out,
        "mode: {}",
        state_name(mode.as_str_name(), "CLONE_MODE_")
    );
    let _ = writeln!(out, "layers: [{}]", spec.layers.join(", "));
    let _ = writeln!(out, "memory: {} MiB", res.memory_bytes >> 20);
    let _ = writeln!(out, "vcpus: {}", res.vcpus);
    let _ = writeln!(out, "root: {}", spec.root);
    let _ = writeln!(out, "max_unavailable: {}", spec.max_unavailable.max(1));
    if !spec.clone_names.is_empty() {
        let _ = writeln!(out, "clones: [{}]", spec.clone_names.join(", "));
    }
    if !spec.clones_conf.is_empty() {
        let _ = writeln!(out, "--- {} (as deployed)", spec.clones_conf_file);
        out += &spec.clones_conf;
        if !spec.clones_conf.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}
