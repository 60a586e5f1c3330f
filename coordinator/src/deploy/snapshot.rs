//! The clone records one control-loop pass reads: every record once for all the
//! deployments, instead of every record once per deployment (clone names come from
//! clones.conf and need not start with their deployment's, so the store cannot list one
//! deployment's alone). A pass over D deployments of C clones in all read D × C records;
//! it now reads C, and the agents' allocations come from the same read.
//!
//! A pass acts on what it read a moment before, as it always has (the agents' listings
//! and the writes come after the read). The snapshot keeps that moment short: it is read
//! again before a deployment's turn once this coordinator wrote clone or deployment
//! records since ([`Registry::change_count`]: a run that finished, a clone that
//! registered here, the pass's own writes), or once it is older than [`FRESH`] (writes
//! another coordinator made: a clone registering through a follower).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use napalm_proto::v1::{Agent, Clone};

use crate::registry::{Registry, RegistryError};

/// How old a snapshot may be when a deployment's turn comes.
pub const FRESH: Duration = Duration::from_millis(250);

/// Every clone record as of one read, by deployment.
pub struct Snapshot {
    by_deployment: HashMap<String, Vec<Clone>>,
    /// [`Registry::change_count`] when read.
    seen: u64,
    at: Instant,
}

impl Snapshot {
    /// Reads every clone record.
    pub async fn take(registry: &Registry) -> Result<Self, RegistryError> {
        let seen = registry.change_count();
        let at = Instant::now();
        Ok(Self {
            by_deployment: registry.clones_by_deployment().await?,
            seen,
            at,
        })
    }

    /// Every agent, with its allocations computed from this snapshot's clones.
    pub async fn agents(&self, registry: &Registry) -> Result<Vec<Agent>, RegistryError> {
        registry
            .list_agents_using(self.by_deployment.values().flatten(), &[])
            .await
    }

    /// Whether this coordinator wrote since the read, or the read is older than [`FRESH`].
    pub fn stale(&self, registry: &Registry) -> bool {
        registry.change_count() != self.seen || self.at.elapsed() > FRESH
    }

    /// Takes `deployment`'s clone records out of the snapshot, sorted by index, after
    /// reading every record again if the snapshot is [`stale`](Self::stale). Each
    /// deployment is taken once per pass.
    pub async fn take_deployment(
        &mut self,
        registry: &Registry,
        deployment: &str,
    ) -> Result<Vec<Clone>, RegistryError> {
        if self.stale(registry) {
            *self = Self::take(registry).await?;
        }
        Ok(self.by_deployment.remove(deployment).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{temp_registry, CLONES};
    use crate::store::Txn;

    fn clone(name: &str, deployment: &str, index: u32) -> (String, Vec<u8>) {
        let c = Clone {
            name: name.into(),
            deployment: deployment.into(),
            index,
            ..Default::default()
        };
        (format!("{CLONES}{name}"), prost::Message::encode_to_vec(&c))
    }

    #[tokio::test]
    async fn one_read_serves_every_deployment_until_a_write_or_its_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = temp_registry(dir.path()).await;
        let mut txn = Txn::new();
        // Names from a clones.conf: neither starts with its deployment's.
        for (k, v) in [
            clone("zeta", "a", 1),
            clone("alpha", "a", 0),
            clone("mid", "b", 0),
        ] {
            txn = txn.put(k, v);
        }
        reg.commit(txn).await.expect("write");
        let before = reg.clone_listings();
        let mut s = Snapshot::take(&reg).await.expect("read");
        let names = |v: Vec<Clone>| v.into_iter().map(|c| c.name).collect::<Vec<_>>();
        assert_eq!(
            names(s.take_deployment(&reg, "a").await.expect("a")),
            ["alpha", "zeta"],
            "by index"
        );
        assert_eq!(
            names(s.take_deployment(&reg, "b").await.expect("b")),
            ["mid"]
        );
        assert!(s
            .take_deployment(&reg, "none")
            .await
            .expect("none")
            .is_empty());
        assert_eq!(reg.clone_listings() - before, 1, "one read for the three");

        // A write here makes it stale: the next turn reads again and sees it.
        let (k, v) = clone("late", "c", 0);
        reg.commit(Txn::new().put(k, v)).await.expect("write");
        assert!(s.stale(&reg));
        assert_eq!(
            names(s.take_deployment(&reg, "c").await.expect("c")),
            ["late"]
        );
        assert_eq!(reg.clone_listings() - before, 2);
        assert!(!s.stale(&reg));

        // So does its age (writes another coordinator made are not counted here).
        tokio::time::sleep(FRESH + Duration::from_millis(50)).await;
        assert!(s.stale(&reg));
    }
}
