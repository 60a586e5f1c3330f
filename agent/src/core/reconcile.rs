//! Reconciliation: at start and on a period the agent compares its persisted desired state
//! with libvirt. It adopts its running domains (recognised by the napalm metadata carrying
//! its id), redefines ones libvirt lost, restarts stopped ones per policy, finishes
//! interrupted deletes, and never touches a domain that is not its own.

use super::Agent;
use crate::domain_store::RestartPolicy;
use crate::error::Result;
use crate::events::EventKind;
use crate::hypervisor::RunState;
use crate::policy;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Running domains adopted (first pass only).
    pub adopted: Vec<String>,
    /// Domains started again by policy.
    pub restarted: Vec<String>,
    /// Domains libvirt had lost, defined again.
    pub redefined: Vec<String>,
    /// Interrupted deletes finished.
    pub deleted: Vec<String>,
    /// Half-created directories removed.
    pub discarded: Vec<String>,
    /// Domains of our names that libvirt holds for someone else (left alone).
    pub foreign_conflicts: Vec<String>,
}

impl Agent {
    /// Reports state changes of this agent's domains that it did not cause (a guest that
    /// shut itself down, crashed, or was paused by someone else) as events. Cheap: one
    /// libvirt listing, no locks, no action.
    pub async fn watch_once(&self) -> Result<()> {
        let live = self.call(|h| h.list()).await?;
        for r in self.store.records()?.into_iter().filter(|r| !r.deleting) {
            let Some(l) = live.iter().find(|d| d.name == r.name) else {
                continue;
            };
            // Only a change needs the domain's XML, to be sure it is still ours.
            if self.events.last_state(&r.name) != Some(l.state) && self.owns(&r.name).await? {
                self.events.observe(&r.name, l.state);
            }
        }
        Ok(())
    }

    /// Whether libvirt's domain of this name carries this agent's id in its metadata.
    async fn owns(&self, name: &str) -> Result<bool> {
        let n = name.to_owned();
        Ok(match self.call(move |h| h.find(&n)).await? {
            Some((_, xml)) => policy::owner_of(&xml).as_deref() == Some(self.agent_id.as_str()),
            None => false,
        })
    }

    /// One reconciliation pass. `first` is the pass at agent start.
    pub async fn reconcile(&self, first: bool) -> Result<Report> {
        let mut rep = Report::default();
        let live = self.call(|h| h.list()).await?;
        for name in self.store.names()? {
            let _g = self.locks.lock(&name).await;
            let Some(r) = self.store.load(&name)? else {
                if first {
                    self.store.remove(&name)?;
                    rep.discarded.push(name);
                }
                continue;
            };
            if r.deleting {
                self.finish_delete(&name, true, self.cfg.shutdown_timeout)
                    .await?;
                rep.deleted.push(name);
                continue;
            }
            let l = live.iter().find(|d| d.name == name);
            let state = match l {
                Some(_) if !self.owns(&name).await? => {
                    tracing::error!(domain = %name, "libvirt's domain of this name is not ours; not touching it");
                    rep.foreign_conflicts.push(name);
                    continue;
                }
                Some(l) => l.state,
                None => {
                    let xml = r.libvirt_xml.clone();
                    self.call(move |h| h.define(&xml)).await?;
                    self.events.emit(
                        &name,
                        EventKind::Defined,
                        RunState::Shutoff,
                        "redefined: libvirt had lost it",
                        None,
                    );
                    rep.redefined.push(name.clone());
                    RunState::Shutoff
                }
            };
            if first && state.is_active() {
                self.events.emit(
                    &name,
                    EventKind::Adopted,
                    state,
                    "running when the agent started",
                    None,
                );
                rep.adopted.push(name.clone());
            } else {
                self.events.observe(&name, state);
            }
            let stopped = matches!(
                state,
                RunState::Shutoff | RunState::Crashed | RunState::Nostate
            );
            let restart = match r.desired {
                RunState::Running | RunState::Paused => {
                    stopped && r.restart != RestartPolicy::Never
                }
                _ => false,
            };
            if restart {
                self.converge(&name, r.desired, self.cfg.shutdown_timeout)
                    .await?;
                self.events.emit(
                    &name,
                    EventKind::Restarted,
                    r.desired,
                    "restart policy",
                    None,
                );
                rep.restarted.push(name);
            } else if !stopped
                && r.desired != state
                && matches!(
                    r.desired,
                    RunState::Shutoff | RunState::Paused | RunState::Running
                )
            {
                // A change the agent was asked for but did not finish (killed mid-way).
                self.converge(&name, r.desired, self.cfg.shutdown_timeout)
                    .await?;
            }
        }
        if first {
            let staging = self.cfg.state_dir.join("staging");
            let _ = std::fs::remove_dir_all(&staging);
        }
        Ok(rep)
    }
}
