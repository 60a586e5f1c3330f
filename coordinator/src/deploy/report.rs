//! What a deploy tells its caller as it goes: progress events on the `Deploy`/`Undeploy`
//! stream (a gone receiver never stops the work) and a deployment's summary state.

use napalm_proto::v1::{
    deploy_progress, Clone, ClonePhase, CloneProgress, DeployProgress, DeploymentState,
};
use tokio::sync::mpsc;
use tonic::Status;

/// Progress messages go here; the gRPC stream reads the other end.
pub type Progress = mpsc::Sender<Result<DeployProgress, Status>>;

/// Sends a progress message; a gone receiver (client hung up) does not stop the work.
pub async fn send(tx: &Progress, event: deploy_progress::Event) {
    let _ = tx.send(Ok(DeployProgress { event: Some(event) })).await;
}

/// A per-clone progress event.
pub fn progress(c: &Clone, phase: ClonePhase, message: &str) -> deploy_progress::Event {
    let mut c = c.clone();
    c.phase = phase as i32;
    deploy_progress::Event::Clone(CloneProgress {
        clone: Some(c),
        message: message.into(),
    })
}

/// Summary state of a deployment from its clones: degraded while one failed or died
/// (until it is restarted or replaced).
pub fn state_of(clones: &[Clone]) -> DeploymentState {
    let down =
        |c: &Clone| c.phase == ClonePhase::Failed as i32 || c.phase == ClonePhase::Died as i32;
    if clones.iter().any(down) {
        DeploymentState::Degraded
    } else if clones
        .iter()
        .all(|c| c.phase == ClonePhase::Registered as i32)
    {
        DeploymentState::Ready
    } else {
        DeploymentState::Progressing
    }
}
