//! The rolling-update gate of a run: which clones running an older spec are replaced
//! now (at most `max_unavailable` down, in index order, none while paused), and when a
//! rollout pauses (a new layer that does not build, a clone of the new revision that
//! failed).

use std::collections::HashMap;

use napalm_proto::v1::{Agent, Clone, ClonePhase, Deployment, Hypervisor, RolloutState};

use super::layers::Built;
use super::Run;
use crate::clock::timestamp;
use crate::deploy::chain;
use crate::deploy::place::hypervisor_on;
use crate::deploy::rollout;
use crate::registry::{RegistryError, DEPLOYMENTS};

impl Run {
    /// The rolling-update gate: of the clones to bring up, those running an older spec
    /// (their boot hash changed) go only `max_unavailable` down at a time, in index order,
    /// and not at all while the rollout is paused. A running clone whose new layer does
    /// not build keeps running and pauses the rollout, as does a clone of the new revision
    /// that failed. Returns the clones to bring up now.
    pub(super) async fn gate(
        &self,
        todo: Vec<Clone>,
        built: &Built,
        all: &[Clone],
        agents: &HashMap<String, Agent>,
    ) -> Result<Vec<Clone>, RegistryError> {
        let test = |id: &str| {
            agents
                .get(id)
                .is_some_and(|a| hypervisor_on(&self.spec, a) == Hypervisor::Test)
        };
        let up = rollout::up;
        let rev = self.stored.spec_revision;
        let mut pause_for = None;
        if rollout::progressing(&self.stored) {
            if let Some(c) = all
                .iter()
                .find(|c| c.phase == ClonePhase::Failed as i32 && c.spec_revision == rev)
            {
                pause_for = Some(format!("{} failed: {}", c.name, c.last_error));
            }
        }
        let mut outdated = Vec::new();
        let mut now = Vec::new();
        for c in todo {
            match built.get(&c.name) {
                Some(Ok(b)) if up(&c) && !c.layer_hash.is_empty() && c.layer_hash != b.hash => {
                    outdated.push(c)
                }
                Some(Err(e)) if up(&c) && !c.layer_hash.is_empty() => {
                    pause_for.get_or_insert_with(|| {
                        format!("the new layer of {} does not build: {}", c.name, chain(e))
                    });
                }
                _ => now.push(c),
            }
        }
        outdated.sort_by_key(|c| c.index);
        let names: Vec<String> = outdated.iter().map(|c| c.name.clone()).collect();
        let down = all.iter().filter(|c| !rollout::available(c, test)).count();
        let go = if pause_for.is_some() || rollout::paused(&self.stored) {
            0
        } else {
            rollout::batch(&names, down, rollout::max_unavailable(&self.spec)).len()
        };
        if !outdated.is_empty() {
            tracing::info!(
                deployment = %self.spec.name,
                outdated = outdated.len(),
                down,
                replacing = go,
                "rolling update"
            );
        }
        now.extend(outdated.into_iter().take(go));
        if let Some(why) = pause_for {
            let message = format!(
                "{why}; the clones of the older spec keep running: fix the spec and deploy \
                 again, or `napalmctl rollout undo {}`",
                self.spec.name
            );
            tracing::warn!(deployment = %self.spec.name, %message, "rollout paused");
            let at = timestamp(self.inner.registry.clock().now());
            self.inner
                .registry
                .update::<Deployment, _>(&format!("{DEPLOYMENTS}{}", self.spec.name), |cur| {
                    Ok(cur.map(|mut d| {
                        let r = d.rollout.get_or_insert_default();
                        r.state = RolloutState::Paused as i32;
                        r.revision = rev;
                        r.message = message.clone();
                        r.updated_at = Some(at);
                        d
                    }))
                })
                .await?;
        }
        Ok(now)
    }
}
