//! Changing a domain's state, and deleting it. The desired state is persisted before
//! libvirt is asked, so an agent killed in between finishes the change when it restarts.

use std::time::{Duration, Instant};

use super::{Agent, DomainView};
use crate::error::{AgentError, Result};
use crate::events::EventKind;
use crate::hypervisor::RunState;

impl Agent {
    /// Brings a domain to `running`, `shutoff` or `paused` (status.xml PUT, gRPC).
    pub async fn set_state(
        &self,
        name: &str,
        target: RunState,
        timeout: Option<Duration>,
        request_id: Option<&str>,
    ) -> Result<DomainView> {
        if !matches!(
            target,
            RunState::Running | RunState::Shutoff | RunState::Paused
        ) {
            return Err(AgentError::invalid(
                "state",
                format!(
                    "{:?} cannot be asked for: use running, shutoff or paused",
                    target.as_str()
                ),
            ));
        }
        let timeout = timeout.unwrap_or(self.cfg.shutdown_timeout);
        self.requests
            .once(
                request_id,
                &format!("state:{name}:{}", target.as_str()),
                async {
                    let _g = self.locks.lock(name).await;
                    let mut r = self.require(name)?;
                    r.desired = target;
                    self.store.save(&r)?;
                    self.converge(name, target, timeout).await?;
                    self.get(name, false).await
                },
            )
            .await
    }

    /// Acts on libvirt so the domain reaches `target`. Returns what was done, if anything.
    pub(crate) async fn converge(
        &self,
        name: &str,
        target: RunState,
        timeout: Duration,
    ) -> Result<Option<EventKind>> {
        let t0 = Instant::now();
        let n = name.to_owned();
        let cur = match self.call(move |h| h.state(&n)).await? {
            Some(cur) => cur,
            // Undefined behind the agent's back (or libvirt's own state lost): the
            // record is the agent's, so it defines the domain again before acting, as
            // its reconcile pass would, instead of refusing until that pass comes.
            None => {
                self.redefine(&self.require(name)?).await?;
                RunState::Shutoff
            }
        };
        let n = name.to_owned();
        let acted = match (target, cur) {
            (RunState::Running, RunState::Paused) => self
                .call(move |h| h.resume(&n))
                .await
                .map(|()| Some((EventKind::Resumed, RunState::Running))),
            (RunState::Running | RunState::Paused, c) if !c.is_active() => {
                if self.filters_ports() {
                    if let Some(r) = self.store.load(name)? {
                        self.apply_port_filters(&r.port_filters).await?;
                    }
                }
                match self.call(move |h| h.start(&n)).await {
                    Ok(()) if target == RunState::Paused => {
                        let n = name.to_owned();
                        self.call(move |h| h.suspend(&n))
                            .await
                            .map(|()| Some((EventKind::Suspended, RunState::Paused)))
                    }
                    Ok(()) => Ok(Some((EventKind::Started, RunState::Running))),
                    Err(e) => Err(e),
                }
            }
            (RunState::Paused, RunState::Running | RunState::Blocked) => self
                .call(move |h| h.suspend(&n))
                .await
                .map(|()| Some((EventKind::Suspended, RunState::Paused))),
            (RunState::Shutoff, c) if c.is_active() => self
                .call(move |h| h.shutdown(&n, timeout))
                .await
                .map(|()| Some((EventKind::Stopped, RunState::Shutoff))),
            _ => Ok(None),
        };
        let done = match acted {
            Ok(done) => done,
            // The domain moved under us: libvirt finishing a start an agent killed
            // mid-create had asked for (QEMU is paused until libvirt resumes it), or the
            // guest powering off. Reached anyway: nothing to do.
            Err(e) => {
                let n = name.to_owned();
                match self.call(move |h| h.state(&n)).await {
                    Ok(Some(now)) if reached(target, now) => {
                        tracing::info!(domain = %name, state = now.as_str(), error = %e, "the domain reached its state by itself meanwhile");
                        None
                    }
                    _ => return Err(e),
                }
            }
        };
        Ok(done.map(|(kind, state)| {
            self.events
                .emit(name, kind, state, "asked by a client", Some(t0.elapsed()));
            kind
        }))
    }

    /// Stops (graceful with a deadline, then forced), undefines and removes a domain.
    /// Writable artifacts are kept under `STATE/kept/NAME` unless `purge`.
    pub async fn delete(
        &self,
        name: &str,
        purge: bool,
        timeout: Option<Duration>,
        request_id: Option<&str>,
    ) -> Result<bool> {
        crate::names::check_domain_name(name)?;
        let timeout = timeout.unwrap_or(self.cfg.shutdown_timeout);
        self.requests
            .once(request_id, &format!("delete:{name}"), async {
                let _g = self.locks.lock(name).await;
                let Some(mut r) = self.store.load(name)? else {
                    return Ok(false);
                };
                let existed = !r.deleting;
                r.deleting = true;
                self.store.save(&r)?;
                self.finish_delete(name, purge, timeout).await?;
                Ok(existed)
            })
            .await
    }

    pub(crate) async fn finish_delete(
        &self,
        name: &str,
        purge: bool,
        timeout: Duration,
    ) -> Result<()> {
        self.finish_delete_because(name, purge, timeout, "deleted")
            .await
    }

    /// [`Self::finish_delete`], with `why` as the detail of its `undefined` event.
    pub(crate) async fn finish_delete_because(
        &self,
        name: &str,
        purge: bool,
        timeout: Duration,
        why: &str,
    ) -> Result<()> {
        let t0 = Instant::now();
        let r = self.store.load(name)?;
        let n = name.to_owned();
        let id = self.agent_id.clone();
        self.call(move |h| {
            if let Some((_, xml)) = h.find(&n)? {
                if crate::policy::owner_of(&xml).as_deref() != Some(id.as_str()) {
                    tracing::warn!(domain = %n, "a domain of this name exists in libvirt but is not ours: leaving it alone");
                    return Ok(());
                }
                h.shutdown(&n, timeout)?;
                h.undefine(&n)?;
            }
            Ok(())
        })
        .await?;
        if let Some(r) = &r {
            self.remove_port_filters(&r.port_filters).await?;
        }
        if !purge {
            if let Some(r) = &r {
                let keep = self.cfg.state_dir.join("kept").join(name);
                for a in r.artifacts.iter().filter(|a| a.writable) {
                    crate::durable::create_dir(&keep)?;
                    let _ = std::fs::rename(
                        self.store.files_dir(name).join(&a.name),
                        keep.join(&a.name),
                    );
                }
            }
        }
        self.store.remove(name)?;
        self.events.emit(
            name,
            EventKind::Undefined,
            RunState::Nostate,
            why,
            Some(t0.elapsed()),
        );
        Ok(())
    }
}

/// Whether a domain in state `now` is where [`Agent::converge`] takes it for `target`.
fn reached(target: RunState, now: RunState) -> bool {
    match target {
        RunState::Running => matches!(now, RunState::Running | RunState::Blocked),
        RunState::Paused => now == RunState::Paused,
        RunState::Shutoff => !now.is_active(),
        _ => false,
    }
}
