//! What a run writes first: the deployment as stored by it, and reconcile's adds (each
//! new clone with the pool's lowest free address) and removes (domain, then record).

use std::collections::HashSet;

use napalm_proto::v1::{Agent, Clone, ClonePhase, Deployment};

use super::{clone_key, Run};
use crate::clock::timestamp;
use crate::deploy::addresses::assigned;
use crate::deploy::reconcile::{self, Action, Plan};
use crate::deploy::report::{progress, send};
use crate::deploy::restart;
use crate::deploy::rollout;
use crate::deploy::xml::mac_for;
use crate::registry::{RegistryError, DEPLOYMENTS};
use crate::store::{Check, Txn};

impl Run {
    /// Records the deployment, then applies reconcile's adds (each new clone gets the
    /// pool's lowest free address) and removes (domain, then record). Returns the plan
    /// and the deployment's clones after it; nothing for a run of the control loop whose
    /// spec is no longer the one stored ([`crate::deploy::converge::still_stored`]).
    pub(super) async fn apply_records(
        &mut self,
    ) -> Result<Option<(Plan, Vec<Clone>)>, RegistryError> {
        let reg = &self.inner.registry;
        let now = timestamp(reg.clock().now());
        let spec = self.spec.clone();
        // Nobody else writes the deployment while this run has its hold.
        if self.control_loop {
            let stored = reg
                .get::<Deployment>(&format!("{DEPLOYMENTS}{}", spec.name))
                .await?;
            if !crate::deploy::converge::still_stored(stored.as_ref().map(|(d, _)| d), &spec) {
                tracing::info!(deployment = %spec.name, "not converged: undeployed or deployed anew since the pass read it");
                return Ok(None);
            }
        }
        let stored = reg
            .update::<Deployment, _>(&format!("{DEPLOYMENTS}{}", spec.name), |cur| {
                let mut d = cur.unwrap_or_else(|| Deployment {
                    created_at: Some(now),
                    spec_revision: 1,
                    ..Default::default()
                });
                // A changed spec is a new revision, and its clones roll to it.
                if d.spec.as_ref().is_some_and(|old| *old != spec) {
                    d.previous_spec = d.spec.take();
                    rollout::begin(&mut d, now);
                }
                d.spec_revision = d.spec_revision.max(1);
                d.spec = Some(spec.clone());
                d.state = napalm_proto::v1::DeploymentState::Progressing as i32;
                d.updated_at = Some(now);
                Ok(Some(d))
            })
            .await?
            .unwrap_or_default();
        let created = stored.created_at.unwrap_or_default();
        self.generation = format!("{:x}{:x}", created.seconds, created.nanos);
        self.stored = stored;
        let mut records = reg.list_clones(&self.spec.name).await?;
        let agents = reg.list_agents(&[]).await?;
        // What the agents run of the deployment, listed once for the whole run: a clone
        // whose domain died past its restart budget is replaced here, as the control loop
        // would (a deploy must not start it again on the agent it keeps dying on).
        self.running = self.inner.agents.running(&agents, &spec.name).await;
        if self.replace_dead(&records, &agents).await? {
            records = reg.list_clones(&self.spec.name).await?;
        }
        let lost = reconcile::lost_agents(&agents, reg.clock().now(), self.inner.cfg.lost_grace);
        let plan = reconcile::reconcile(&self.spec, &records, &agents, &lost);
        // Static addresses: the pool's lowest ones no clone of any deployment holds.
        let mut used: HashSet<std::net::Ipv4Addr> = HashSet::new();
        if self.inner.cfg.addresses.is_some() {
            used = reg
                .list::<Clone>(crate::registry::CLONES)
                .await?
                .iter()
                .filter_map(assigned)
                .collect();
        }
        let adds: Vec<(&String, u32)> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Add { clone, index } => Some((clone, *index)),
                _ => None,
            })
            .collect();
        let mut cursor = 0;
        for chunk in adds.chunks(64) {
            let mut txn = Txn::new();
            for (n, index) in chunk {
                let address = self
                    .inner
                    .cfg
                    .addresses
                    .and_then(|p| p.next_free(&used, &mut cursor));
                if let Some(a) = address {
                    used.insert(a);
                }
                let c = Clone {
                    name: (*n).clone(),
                    deployment: self.spec.name.clone(),
                    index: *index,
                    phase: ClonePhase::Pending as i32,
                    mac: mac_for(&self.spec.name, *index),
                    addresses: address.map(|a| a.to_string()).into_iter().collect(),
                    ..Default::default()
                };
                txn = txn
                    .check(clone_key(n), Check::Absent)
                    .put(clone_key(n), prost::Message::encode_to_vec(&c));
            }
            match reg.commit(txn).await {
                Ok(_) | Err(RegistryError::Store(crate::store::StoreError::Conflict { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        for action in &plan.actions {
            let Action::Remove { clone: c, reason } = action else {
                continue;
            };
            if let Some(a) = agents.iter().find(|a| a.id == c.agent_id) {
                let _ = self
                    .inner
                    .agents
                    .delete(&a.grpc_endpoint, &c.name, format!("shrink-{}", c.name))
                    .await;
            }
            for (_, domains) in &mut self.running {
                domains.retain(|d| d.name != c.name);
            }
            reg.commit(Txn::new().delete(clone_key(&c.name))).await?;
            send(
                &self.tx,
                progress(c, ClonePhase::Removed, &format!("removed: {reason}")),
            )
            .await;
        }
        let clones = reg.list_clones(&self.spec.name).await?;
        Ok(Some((plan, clones)))
    }

    /// Fails the clones of `records` whose domain died past their restart budget, by
    /// what the agents listed ([`Run::running`]), to be replaced away from their agent
    /// ([`restart::mark_replaced`]), as the control loop does. Those within their budget
    /// are left to [`Run::bring_up`], which boots them again. Returns whether it failed
    /// any.
    async fn replace_dead(
        &self,
        records: &[Clone],
        agents: &[Agent],
    ) -> Result<bool, RegistryError> {
        let now = self.inner.registry.clock().now();
        let budget = self
            .spec
            .restart_budget
            .unwrap_or(self.inner.cfg.restart_budget);
        let mut any = false;
        for d in restart::died(records, &self.running, now, budget) {
            if d.fate != restart::Fate::Replace {
                continue;
            }
            let on = agents
                .iter()
                .find(|a| a.id == d.agent)
                .map_or(d.agent.as_str(), |a| a.name.as_str());
            if let Some(u) = self
                .set(&d.clone, |k| {
                    restart::mark_replaced(k, &d.agent, on, d.state, budget, now);
                })
                .await?
            {
                tracing::warn!(clone = %d.clone, agent = %on, budget, "a clone died past its restart budget: replacing it");
                self.report(&u, &u.last_action).await;
            }
            any = true;
        }
        Ok(any)
    }
}
