//! Rolling updates: when a deploy changes a deployment's spec (a template set, a value in
//! its clones.conf, memory, kernel, root…), its spec revision goes up and the clones whose
//! boot inputs changed are replaced in batches of at most `max_unavailable` clones down at
//! once, each batch gated on the previous one registering. A batch that fails (a layer
//! that does not build, a clone that does not register) pauses the rollout with the
//! error and leaves the old clones running. `napalmctl rollout status|pause|resume|undo`.
//!
//! The batch choice is pure ([`batch`]); runs ([`super::apply`]) and the control loop
//! ([`super::converge`]) carry it out, so a rollout finishes with nobody connected.

use napalm_proto::v1::{
    Clone, ClonePhase, Deployment, DeploymentSpec, Rollout, RolloutAction, RolloutRequest,
    RolloutState,
};
use napalm_proto::ApiError;
use sha2::{Digest, Sha256};

use super::{invalid, Deployer};
use crate::registry::{check_name, CLONES, DEPLOYMENTS};

/// The hash of everything a clone boots from: its layer's input hash, the digest of the
/// kernel artifact it boots (`served_kernel`: the bzImage, or its ELF entered through
/// PVH) and the spec's boot inputs (resources, kernel, root, arguments, mode, hypervisor,
/// arch, scratch paths). A clone whose recorded hash differs runs an older spec.
pub fn boot_hash(spec: &DeploymentSpec, served_kernel: &str, layer_hash: &str) -> String {
    let r = spec.resources.unwrap_or_default();
    let kernel = spec.kernel.as_ref().map_or("", |k| k.sha256.as_str());
    let mut h = Sha256::new();
    for part in [
        layer_hash,
        &r.vcpus.to_string(),
        &r.memory_bytes.to_string(),
        kernel,
        served_kernel,
        &spec.root,
        &spec.kernel_args,
        &spec.mode.to_string(),
        &spec.hypervisor.to_string(),
        &spec.arch,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    // Only when there are some, so that clones deployed before scratch existed keep
    // their hash (and are not rolled by an upgrade of the coordinator).
    for m in &spec.scratch {
        // A disk entry says so (a tmpfs one hashes as before kinds existed).
        let kind = if m.kind == 0 { "" } else { " disk" };
        h.update(format!("scratch {} {} {:o}{kind}", m.path, m.size_bytes, m.mode).as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// Clones a rollout of `spec` may have down at once.
pub fn max_unavailable(spec: &DeploymentSpec) -> usize {
    spec.max_unavailable.max(1) as usize
}

/// Whether a clone counts as up (registered, or running on libvirt's test driver, whose
/// domains run no guest: `test_agent` says which agents those are).
pub fn available(c: &Clone, test_agent: impl Fn(&str) -> bool) -> bool {
    c.phase == ClonePhase::Registered as i32
        || (c.phase == ClonePhase::Running as i32 && test_agent(&c.agent_id))
}

/// Whether a clone's domain runs (registered, or running and not yet registered): a
/// change of its boot inputs replaces it.
pub fn up(c: &Clone) -> bool {
    c.phase == ClonePhase::Registered as i32 || c.phase == ClonePhase::Running as i32
}

/// Whether a clone is placed and not yet running: a run is bringing it up (its spec
/// revision is already the one it is brought up with).
pub fn on_its_way(c: &Clone) -> bool {
    [
        ClonePhase::Scheduled,
        ClonePhase::Layer,
        ClonePhase::Shipped,
        ClonePhase::Defined,
    ]
    .iter()
    .any(|p| *p as i32 == c.phase)
}

/// Which of the `outdated` clones (in index order) to replace now, when `unavailable`
/// clones of the deployment are down and at most `max` may be.
pub fn batch(outdated: &[String], unavailable: usize, max: usize) -> &[String] {
    let room = max.saturating_sub(unavailable).min(outdated.len());
    &outdated[..room]
}

/// Whether `d`'s rollout is under way (not paused, not complete).
pub fn progressing(d: &Deployment) -> bool {
    d.rollout
        .as_ref()
        .is_some_and(|r| r.state == RolloutState::Progressing as i32)
}

/// Whether `d`'s rollout is paused.
pub fn paused(d: &Deployment) -> bool {
    d.rollout
        .as_ref()
        .is_some_and(|r| r.state == RolloutState::Paused as i32)
}

/// Clones of `d` still on an older spec revision.
pub fn outdated<'a>(d: &Deployment, clones: &'a [Clone]) -> impl Iterator<Item = &'a Clone> {
    let rev = d.spec_revision;
    clones.iter().filter(move |c| c.spec_revision < rev)
}

/// Clones of `d` still on an older spec revision or on their way up on the new one.
pub fn unsettled<'a>(d: &Deployment, clones: &'a [Clone]) -> impl Iterator<Item = &'a Clone> {
    let rev = d.spec_revision;
    clones
        .iter()
        .filter(move |c| c.spec_revision < rev || on_its_way(c))
}

impl Deployer {
    /// `napalmctl rollout status|pause|resume|undo NAME`: reports or changes the rollout,
    /// returning the deployment after it. The control loop carries out a resume or undo.
    pub async fn rollout(&self, req: RolloutRequest) -> Result<Deployment, ApiError> {
        check_name("name", &req.name)?;
        let action = RolloutAction::try_from(req.action).unwrap_or(RolloutAction::Unspecified);
        let key = format!("{DEPLOYMENTS}{}", req.name);
        let registry = &self.inner.registry;
        let now = crate::clock::timestamp(registry.clock().now());
        let name = req.name.clone();
        let clones = registry.list_clones(&name).await.map_err(ApiError::from)?;
        let d = match action {
            RolloutAction::Status => {
                let (d, _) = registry
                    .get::<Deployment>(&key)
                    .await
                    .map_err(ApiError::from)?
                    .ok_or_else(|| ApiError::NotFound {
                        kind: "deployment".into(),
                        name: name.clone(),
                    })?;
                d
            }
            RolloutAction::Pause | RolloutAction::Resume => {
                let pause = action == RolloutAction::Pause;
                let d = self
                    .change(&name, |d| {
                        let revision = d.spec_revision;
                        let r = d.rollout.get_or_insert_default();
                        if r.state != RolloutState::Progressing as i32
                            && r.state != RolloutState::Paused as i32
                        {
                            return Err(format!(
                                "deployment {name:?} has no rollout under way (every clone \
                                 runs spec revision {revision}); change its spec with \
                                 `napalmctl deploy` to start one"
                            ));
                        }
                        r.state = if pause {
                            RolloutState::Paused
                        } else {
                            RolloutState::Progressing
                        } as i32;
                        r.message = if pause {
                            "paused by an operator".into()
                        } else {
                            String::new()
                        };
                        r.updated_at = Some(now);
                        Ok(())
                    })
                    .await?;
                if !pause {
                    self.retry_failed_of(&d, &clones).await?;
                }
                d
            }
            RolloutAction::Undo => {
                let _hold = self.hold(&name).await;
                self.change(&name, |d| {
                    let Some(previous) = d.previous_spec.take() else {
                        return Err(format!(
                            "deployment {name:?} has no previous spec to go back to (it is \
                             at spec revision {}, its first)",
                            d.spec_revision
                        ));
                    };
                    d.previous_spec = d.spec.replace(previous);
                    begin(d, now);
                    Ok(())
                })
                .await?
            }
            RolloutAction::Unspecified => {
                return Err(invalid(
                    "action",
                    format!(
                        "rollout action \"{}\" is not one of status, pause, resume, undo",
                        req.action
                    ),
                ))
            }
        };
        Ok(with_counts(d, &clones))
    }

    /// Changes deployment `name`'s record with `f`, or refuses with what `f` says (the
    /// record is then left as it was).
    async fn change(
        &self,
        name: &str,
        f: impl Fn(&mut Deployment) -> Result<(), String>,
    ) -> Result<Deployment, ApiError> {
        let mut refused = None;
        let d = self
            .inner
            .registry
            .update::<Deployment, _>(&format!("{DEPLOYMENTS}{name}"), |cur| {
                let Some(mut d) = cur else { return Ok(None) };
                let before = d.clone();
                Ok(Some(match f(&mut d) {
                    Ok(()) => d,
                    Err(why) => {
                        refused = Some(why);
                        before
                    }
                }))
            })
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound {
                kind: "deployment".into(),
                name: name.into(),
            })?;
        match refused {
            Some(description) => Err(invalid("action", description)),
            None => Ok(d),
        }
    }

    /// On resume: the clones of the rollout's revision that failed are placed again (the
    /// failure that paused the rollout is what the operator resumes past).
    async fn retry_failed_of(&self, d: &Deployment, clones: &[Clone]) -> Result<(), ApiError> {
        for c in clones
            .iter()
            .filter(|c| c.phase == ClonePhase::Failed as i32 && c.spec_revision == d.spec_revision)
        {
            self.inner
                .registry
                .update::<Clone, _>(&format!("{CLONES}{}", c.name), |cur| {
                    Ok(cur.map(|mut k| {
                        k.phase = ClonePhase::Pending as i32;
                        k.agent_id.clear();
                        k.last_action = "pending: the rollout was resumed".into();
                        k
                    }))
                })
                .await
                .map_err(ApiError::from)?;
        }
        Ok(())
    }
}

/// Whether every clone of `d` is up on its current spec revision (a rollout under way is
/// then complete).
pub fn complete(d: &Deployment, clones: &[Clone], test_agent: impl Fn(&str) -> bool) -> bool {
    progressing(d)
        && clones
            .iter()
            .all(|c| c.spec_revision >= d.spec_revision && available(c, &test_agent))
}

/// Records `d`'s rollout as complete at `now`.
pub fn mark_complete(d: &mut Deployment, now: prost_types::Timestamp) {
    if let Some(r) = d.rollout.as_mut() {
        if r.state == RolloutState::Progressing as i32 {
            r.state = RolloutState::Complete as i32;
            r.message.clear();
            r.updated_at = Some(now);
        }
    }
}

/// Starts a rollout of `d`'s spec as its next revision, at `now`.
pub fn begin(d: &mut Deployment, now: prost_types::Timestamp) {
    d.spec_revision += 1;
    d.rollout = Some(Rollout {
        state: RolloutState::Progressing as i32,
        revision: d.spec_revision,
        updated_at: Some(now),
        ..Default::default()
    });
    d.updated_at = Some(now);
}

/// `d` with its rollout's clone counts from `clones`.
pub fn with_counts(mut d: Deployment, clones: &[Clone]) -> Deployment {
    let rev = d.spec_revision;
    if let Some(r) = d.rollout.as_mut() {
        r.total = clones.len() as u32;
        r.updated = clones
            .iter()
            .filter(|c| c.spec_revision >= rev && c.phase != ClonePhase::Failed as i32)
            .count() as u32;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_never_takes_more_down_than_allowed() {
        let o: Vec<String> = (1..=8).map(|i| format!("c{i}")).collect();
        assert_eq!(batch(&o, 0, 2), &o[..2]);
        assert_eq!(batch(&o, 1, 2), &o[..1]);
        assert!(batch(&o, 2, 2).is_empty());
        assert!(batch(&o, 5, 2).is_empty());
        assert_eq!(batch(&o[..1], 0, 3).len(), 1);
    }

    #[test]
    fn a_clone_brought_up_by_another_run_is_unsettled_until_it_runs() {
        let d = Deployment {
            spec_revision: 3,
            ..Default::default()
        };
        let clone = |name: &str, rev: u64, phase: ClonePhase| Clone {
            name: name.into(),
            spec_revision: rev,
            phase: phase as i32,
            ..Default::default()
        };
        let clones = [
            clone("old", 2, ClonePhase::Registered),
            clone("shipping", 3, ClonePhase::Shipped),
            clone("placed", 3, ClonePhase::Scheduled),
            clone("booting", 3, ClonePhase::Running),
            clone("up", 3, ClonePhase::Registered),
            clone("waits", 3, ClonePhase::Pending),
            clone("failed", 3, ClonePhase::Failed),
        ];
        let names: Vec<&str> = unsettled(&d, &clones).map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["old", "shipping", "placed"]);
    }

    #[test]
    fn the_boot_hash_follows_boot_inputs_only() {
        let spec = DeploymentSpec {
            name: "web".into(),
            count: 2,
            ..Default::default()
        };
        let h = boot_hash(&spec, "k", "layer");
        let more = DeploymentSpec {
            count: 9,
            max_unavailable: 3,
            allow_pending: true,
            ..spec.clone()
        };
        assert_eq!(
            boot_hash(&more, "k", "layer"),
            h,
            "scaling is not an update"
        );
        assert_ne!(boot_hash(&spec, "k", "other layer"), h);
        assert_ne!(
            boot_hash(&spec, "pvh", "layer"),
            h,
            "another kernel artifact"
        );
        let mut bigger = spec.clone();
        bigger.resources.get_or_insert_default().memory_bytes = 256 << 20;
        assert_ne!(boot_hash(&bigger, "k", "layer"), h);
        let args = DeploymentSpec {
            kernel_args: "quiet".into(),
            ..spec
        };
        assert_ne!(boot_hash(&args, "k", "layer"), h);
    }
}
