//! Following a client's run until its clones register: progress reports and `boot` and
//! `register` spans as they come up, and the clones still not registered at the
//! deployment's boot timeout failed with their console's last lines.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use napalm_proto::v1::{Agent, Clone, ClonePhase, Hypervisor};

use super::{clone_span, Run};
use crate::deploy::place::hypervisor_on;
use crate::deploy::rollout;
use crate::registry::RegistryError;

impl Run {
    pub(super) fn is_test(&self, c: &Clone, agents: &HashMap<String, Agent>) -> bool {
        agents
            .get(&c.agent_id)
            .is_some_and(|a| hypervisor_on(&self.spec, a) == Hypervisor::Test)
    }

    /// Waits until every running clone registered: clones on libvirt's `test` driver run
    /// no guest, so they stop at RUNNING. A clone that does not register within the boot
    /// timeout of its start fails. Clones on their way up (placed, not yet running) are
    /// waited for too: this run's bring-ups, still going until `brought_up` says when they
    /// ended, or another run's, waited for until the boot timeout after that. A booting
    /// clone gets a `boot` span under its `clone` span (in `spans`, made under `deploy` if
    /// missing), ended when it registers, and then a `register` span marking the
    /// registration.
    pub(super) async fn follow(
        &self,
        deploy: &tracing::Span,
        spans: &mut HashMap<String, tracing::Span>,
        brought_up: &std::sync::OnceLock<Instant>,
    ) -> Result<(), RegistryError> {
        let mut booting: HashMap<String, tracing::Span> = HashMap::new();
        let reg = &self.inner.registry;
        let agents: HashMap<String, Agent> = reg
            .list_agents(&[])
            .await?
            .into_iter()
            .map(|a| (a.id.clone(), a))
            .collect();
        let limit = self.inner.boot_timeout(&self.spec);
        let mut seen: HashSet<String> = HashSet::new();
        loop {
            let clones = reg.list_clones(&self.spec.name).await?;
            let mut waiting = Vec::new();
            for c in &clones {
                if c.phase == ClonePhase::Registered as i32 {
                    if seen.insert(c.name.clone()) {
                        if booting.remove(&c.name).is_some() {
                            let parent = clone_span(deploy, spans, &c.name);
                            drop(tracing::info_span!(parent: &parent, "register"));
                        }
                        self.report(c, "registered").await;
                    }
                } else if c.phase == ClonePhase::Running as i32 && !self.is_test(c, &agents) {
                    if !booting.contains_key(&c.name) {
                        let parent = clone_span(deploy, spans, &c.name);
                        booting
                            .insert(c.name.clone(), tracing::info_span!(parent: &parent, "boot"));
                    }
                    waiting.push(c.clone());
                } else if rollout::on_its_way(c) {
                    // Brought up by another run meanwhile (the hold is let go of while
                    // following): the control loop replacing the next batch of a rollout.
                    waiting.push(c.clone());
                }
            }
            if waiting.is_empty() && brought_up.get().is_some() {
                return Ok(());
            }
            // Only a booting clone is this run's to fail (the run bringing up the others
            // fails them if it must): once its boot timeout passed since its start, or at
            // the end of the wait for the others.
            let now = reg.clock().now();
            let over = brought_up.get().is_some_and(|at| at.elapsed() >= limit);
            let late = |c: &&Clone| {
                over || (c.started_at.is_some()
                    && napalm_proto::time::from_timestamp(c.started_at.as_ref()) + limit <= now)
            };
            for c in waiting
                .iter()
                .filter(|c| c.phase == ClonePhase::Running as i32)
                .filter(late)
            {
                let why = self
                    .inner
                    .not_registered(agents.get(&c.agent_id), &c.name, limit)
                    .await;
                self.fail_on(c, &why, true).await?;
            }
            if over {
                return Ok(());
            }
            // While the bring-ups go on (a deploy of thousands of clones on the test
            // driver), a listing a second: a registration waits for its clone's slot anyway.
            let every = if brought_up.get().is_some() {
                250
            } else {
                1000
            };
            tokio::time::sleep(Duration::from_millis(every)).await;
        }
    }
}
