//! Reconciliation: at start and on a period the agent compares its persisted desired state
//! with libvirt. It adopts its running domains (recognised by the napalm metadata carrying
//! its id), redefines ones libvirt lost, restarts stopped ones per policy, finishes
//! interrupted deletes, and never touches a domain that is not its own. The coordinator's
//! heartbeat answers add stale clone domains ([`Agent::remove_stale`]): clones the
//! registry placed on another agent while this one was away, which this agent removes
//! itself when it comes back.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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
    /// Domains libvirt refused to bring where their record says, with why (the next
    /// pass retries).
    pub failed: Vec<(String, String)>,
}

impl Agent {
    /// Reports state changes of this agent's domains that it did not cause (a guest that
    /// shut itself down, crashed, or was paused by someone else) as events. Cheap: one
    /// libvirt listing of names and states, a stat of each record (parsed again only when
    /// it changed), a domain's XML only when its state changed; no action. A domain the
    /// agent is acting on is skipped (the change is its own, which it reports itself: a
    /// look in the middle would report it twice); its name is returned for a later look.
    pub async fn watch_once(&self) -> Result<Vec<String>> {
        self.watch_counts.full.fetch_add(1, Ordering::Relaxed);
        let live: HashMap<String, RunState> = self
            .call(|h| h.list())
            .await?
            .into_iter()
            .map(|d| (d.name, d.state))
            .collect();
        let mut busy = Vec::new();
        for r in self.store.records()?.into_iter().filter(|r| !r.deleting) {
            let Some(&state) = live.get(&r.name) else {
                // Gone from libvirt behind our back (undefined by someone else): said once,
                // as its undefinition, so that watchers keeping a listing drop it.
                if self.events.last_state(&r.name).is_some() {
                    match self.locks.try_lock(&r.name) {
                        Some(_g) => self.look(&r.name).await?,
                        None => busy.push(r.name.clone()),
                    }
                }
                continue;
            };
            if self.events.last_state(&r.name) == Some(state) {
                continue;
            }
            let Some(_g) = self.locks.try_lock(&r.name) else {
                busy.push(r.name.clone());
                continue;
            };
            // The listing may predate the agent's own action that just released the
            // lock: read the state again under it. Only a change needs the domain's XML,
            // to be sure it is still ours.
            self.look(&r.name).await?;
        }
        Ok(busy)
    }

    /// Names of domains whose lifecycle state libvirt says changed, as they happen; `None`
    /// when the hypervisor reports no events (the watcher then polls with
    /// [`Self::watch_once`] every second). The channel closes when the events stop (a
    /// reconnect that could not register again).
    pub async fn lifecycle_events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let sub: crate::hypervisor::lifecycle::Subscriber = Arc::new(move |name| {
            let _ = tx.send(name);
        });
        match self.call(move |h| h.subscribe(sub)).await {
            Ok(true) => Some(rx),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(error = %e, "subscribing to libvirt's lifecycle events failed; polling instead");
                None
            }
        }
    }

    /// [`Self::watch_once`] for the named domains only (those libvirt reported events
    /// for): one state query each, the XML only when the state changed. A domain the agent
    /// is acting on (creating, starting, stopping it) is not looked at: the events are its
    /// own, which it reports itself. Returns the names to look at again: those, and those
    /// libvirt did not answer for.
    pub async fn watch_names(&self, names: impl IntoIterator<Item = String>) -> Vec<String> {
        self.watch_counts.looks.fetch_add(1, Ordering::Relaxed);
        let mut again = Vec::new();
        for name in names {
            let Some(_g) = self.locks.try_lock(&name) else {
                again.push(name);
                continue;
            };
            match self.store.load(&name) {
                Ok(Some(r)) if !r.deleting => {}
                _ => continue,
            }
            if let Err(e) = self.look(&name).await {
                tracing::debug!(domain = %name, error = %e, "looking at a domain after its event failed");
                again.push(name);
            }
        }
        again
    }

    /// Reports `name`'s state when it is not the last one seen and the domain is ours;
    /// its undefinition when libvirt has no domain of that name any more though one was
    /// seen (undefined behind our back: watchers keeping a listing drop it).
    async fn look(&self, name: &str) -> Result<()> {
        let n = name.to_owned();
        let Some(state) = self.call(move |h| h.state(&n)).await? else {
            if self.events.last_state(name).is_some() {
                self.events.emit(
                    name,
                    crate::events::EventKind::Undefined,
                    crate::hypervisor::RunState::Shutoff,
                    "gone from libvirt: seen by the agent's watcher",
                    None,
                );
            }
            return Ok(());
        };
        if self.events.last_state(name) != Some(state) && self.owns(name).await? {
            self.events.observe(name, state);
        }
        Ok(())
    }

    /// Defines a domain libvirt lost again from the agent's record of it (shut off), as a
    /// `defined` event saying so.
    pub(crate) async fn redefine(&self, r: &crate::domain_store::DomainRecord) -> Result<()> {
        let xml = r.libvirt_xml.clone();
        self.call(move |h| h.define(&xml)).await?;
        self.events.emit(
            &r.name,
            EventKind::Defined,
            RunState::Shutoff,
            "redefined: libvirt had lost it",
            None,
        );
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

    /// One reconciliation pass. `first` is the pass at agent start. A domain that cannot
    /// be brought where its record says (libvirt refused) is reported in
    /// [`Report::failed`] and retried by the next pass; it never stops the others, nor
    /// the agent from starting.
    pub async fn reconcile(&self, first: bool) -> Result<Report> {
        let mut rep = Report::default();
        let live: HashMap<String, crate::hypervisor::DomainSummary> = self
            .call(|h| h.list())
            .await?
            .into_iter()
            .map(|d| (d.name.clone(), d))
            .collect();
        let names = self.store.names()?;
        if first {
            self.restore_port_filters(&names, &mut rep).await;
        }
        for name in names {
            if let Err(e) = self.reconcile_one(&name, first, &live, &mut rep).await {
                tracing::warn!(domain = %name, error = %e, "reconciling a domain failed; the next pass retries");
                rep.failed.push((name, e.to_string()));
            }
        }
        if first {
            let staging = self.cfg.state_dir.join("staging");
            let _ = std::fs::remove_dir_all(&staging);
        }
        Ok(rep)
    }

    /// At agent start: installs again the port filters of every domain, in one batch, so
    /// a running domain keeps its protection across an agent restart even if the host's
    /// rules were lost meanwhile (idempotent). If that fails, each domain with filters is
    /// reported failed; its next start installs them before QEMU runs.
    async fn restore_port_filters(&self, names: &[String], rep: &mut Report) {
        if !self.filters_ports() {
            return;
        }
        let mut owners = Vec::new();
        let mut filters = Vec::new();
        for name in names {
            if let Ok(Some(r)) = self.store.load(name) {
                if !r.deleting && !r.port_filters.is_empty() {
                    owners.push(name.clone());
                    filters.extend(r.port_filters);
                }
            }
        }
        if let Err(e) = self.apply_port_filters(&filters).await {
            tracing::warn!(error = %e, "installing the domains' port filters again failed");
            rep.failed
                .extend(owners.into_iter().map(|n| (n, e.to_string())));
        }
    }

    /// [`Self::reconcile`] of domain `name`, given libvirt's `live` listing.
    async fn reconcile_one(
        &self,
        name: &str,
        first: bool,
        live: &HashMap<String, crate::hypervisor::DomainSummary>,
        rep: &mut Report,
    ) -> Result<()> {
        let _g = self.locks.lock(name).await;
        let Some(r) = self.store.load(name)? else {
            if first {
                self.store.remove(name)?;
                rep.discarded.push(name.to_owned());
            }
            return Ok(());
        };
        if r.deleting {
            self.finish_delete(name, true, self.cfg.shutdown_timeout)
                .await?;
            rep.deleted.push(name.to_owned());
            return Ok(());
        }
        let l = live.get(name);
        let state = match l {
            Some(_) if !self.owns(name).await? => {
                tracing::error!(domain = %name, "libvirt's domain of this name is not ours; not touching it");
                rep.foreign_conflicts.push(name.to_owned());
                return Ok(());
            }
            Some(l) => l.state,
            None => {
                self.redefine(&r).await?;
                rep.redefined.push(name.to_owned());
                RunState::Shutoff
            }
        };
        if first && state.is_active() {
            self.events.emit(
                name,
                EventKind::Adopted,
                state,
                "running when the agent started",
                None,
            );
            rep.adopted.push(name.to_owned());
        } else {
            self.events.observe(name, state);
        }
        let stopped = matches!(
            state,
            RunState::Shutoff | RunState::Crashed | RunState::Nostate
        );
        let restart = match r.desired {
            RunState::Running | RunState::Paused => stopped && r.restart != RestartPolicy::Never,
            _ => false,
        };
        if restart {
            self.converge(name, r.desired, self.cfg.shutdown_timeout)
                .await?;
            self.events.emit(
                name,
                EventKind::Restarted,
                r.desired,
                "restart policy",
                None,
            );
            rep.restarted.push(name.to_owned());
        } else if !stopped
            && r.desired != state
            && matches!(
                r.desired,
                RunState::Shutoff | RunState::Paused | RunState::Running
            )
        {
            // A change the agent was asked for but did not finish (killed mid-way).
            self.converge(name, r.desired, self.cfg.shutdown_timeout)
                .await?;
        }
        Ok(())
    }
}

/// A domain a heartbeat answer says the registry does not place on this agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleDomain {
    /// Domain (clone) name, as the coordinator sent it: checked before any use.
    pub name: String,
    /// Why, in the coordinator's words (`placed on AGENT (ID) by the registry`).
    pub reason: String,
    /// The agent the registry places the clone on instead; empty when no deployment
    /// declares it any more.
    pub placed_on: String,
    /// When the domain the heartbeat listed was created (ms since epoch): a domain of
    /// that name created since (placed back here meanwhile) is not the stale one.
    pub created_at_ms: u64,
}

/// What [`Agent::remove_stale`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StaleReport {
    /// Domains removed.
    pub removed: Vec<String>,
    /// Domains no deployment declares, reported once: removed if the next answer says so
    /// again.
    pub waiting: Vec<String>,
    /// Domains left alone, each with why (not a napalm clone, created again since, not
    /// ours any more…).
    pub kept: Vec<(String, String)>,
}

/// Whether the labels are those of a napalm clone domain named `name` (what the
/// coordinator creates: `deployment` and `clone` = the domain's name).
fn is_clone_domain(name: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
    labels.get("clone").map(String::as_str) == Some(name)
        && labels.get("deployment").is_some_and(|d| !d.is_empty())
}

impl Agent {
    /// Removes the clone domains a heartbeat answer says are stale: those the registry
    /// placed on another agent (a returning agent must not keep running a clone that
    /// moved) at once; those no deployment declares only when the previous answer said so
    /// too (a record the coordinator is about to write never costs a domain). Only this
    /// agent's own napalm clone domains, exactly as the heartbeat listed them (same
    /// creation time), are touched; each removal destroys the domain at once, keeps its
    /// writable files under `kept/`, and is an `undefined` event whose detail starts with
    /// `stale: ` and says why.
    pub async fn remove_stale(&self, stale: &[StaleDomain]) -> StaleReport {
        let mut rep = StaleReport::default();
        let previous = {
            let mut g = self
                .declared_nowhere
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let now: HashMap<String, u64> = stale
                .iter()
                .filter(|s| s.placed_on.is_empty())
                .map(|s| (s.name.clone(), s.created_at_ms))
                .collect();
            std::mem::replace(&mut *g, now)
        };
        for s in stale {
            match self.remove_one_stale(s, &previous).await {
                Ok(None) => rep.removed.push(s.name.clone()),
                Ok(Some(why)) if why == WAITING => rep.waiting.push(s.name.clone()),
                Ok(Some(why)) => rep.kept.push((s.name.clone(), why)),
                Err(e) => {
                    tracing::warn!(domain = %s.name, error = %e, "removing a stale domain failed; the next heartbeat retries");
                    rep.kept.push((s.name.clone(), e.to_string()));
                }
            }
        }
        rep
    }

    /// Removes one stale domain; `Ok(Some(why))` when it is left alone.
    async fn remove_one_stale(
        &self,
        s: &StaleDomain,
        previous: &HashMap<String, u64>,
    ) -> Result<Option<String>> {
        crate::names::check_domain_name(&s.name)?;
        let _g = self.locks.lock(&s.name).await;
        let Some(mut r) = self.store.load(&s.name)? else {
            return Ok(Some("not a domain of this agent".into()));
        };
        if r.deleting {
            return Ok(Some("already being deleted".into()));
        }
        if !is_clone_domain(&s.name, &r.labels) {
            return Ok(Some(
                "not a napalm clone domain (no deployment/clone labels)".into(),
            ));
        }
        if r.created_at_ms != s.created_at_ms {
            return Ok(Some("created again since the heartbeat listed it".into()));
        }
        if s.placed_on == self.agent_id {
            return Ok(Some("the registry places it on this agent".into()));
        }
        if s.placed_on.is_empty() && previous.get(&s.name) != Some(&s.created_at_ms) {
            return Ok(Some(WAITING.into()));
        }
        let why = format!("stale: {}; removed by the agent's reconcile", s.reason);
        tracing::warn!(domain = %s.name, reason = %s.reason, "removing a stale clone domain the registry does not place here");
        r.deleting = true;
        self.store.save(&r)?;
        self.finish_delete_because(&s.name, false, Duration::ZERO, &why)
            .await?;
        Ok(None)
    }
}

/// [`Agent::remove_one_stale`]'s answer for a domain declared nowhere, reported once.
const WAITING: &str = "declared nowhere: waiting for the next heartbeat to say so again";
