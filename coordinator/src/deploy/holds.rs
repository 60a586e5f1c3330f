//! Who works on a deployment: one hold per deployment, so a run (a client's, or the control
//! loop's) and an undeploy never work on the same deployment at once; and the withdrawal
//! an undeploy signals before it waits for the hold, so the run holding the deployment
//! stops starting clones (those still waiting for a boot slot or a shipping place) instead
//! of the undeploy waiting for a whole boot storm to get its slots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

/// Every deployment's lock and current withdrawal signal.
#[derive(Default)]
pub(super) struct Holds {
    map: Mutex<HashMap<String, Entry>>,
}

#[derive(Default)]
struct Entry {
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Cancelled by [`Holds::withdraw`], then replaced: the runs that asked for the hold
    /// before the withdrawal see it, those asking after do not.
    withdrawn: CancellationToken,
}

/// The right to work on one deployment, held by a run until it has brought its clones up
/// (it lets go before following them) and by an undeploy until it is done.
pub(super) struct Hold {
    _guard: OwnedMutexGuard<()>,
    withdrawn: CancellationToken,
}

impl Hold {
    /// Cancelled once an undeploy of the deployment asked for it (while this hold was
    /// held, or asked for).
    pub(super) fn withdrawn(&self) -> CancellationToken {
        self.withdrawn.clone()
    }
}

impl Holds {
    fn entry(&self, deployment: &str) -> (Arc<tokio::sync::Mutex<()>>, CancellationToken) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.entry(deployment.to_owned()).or_default();
        (Arc::clone(&e.lock), e.withdrawn.clone())
    }

    /// Waits for the right to work on `deployment`.
    pub(super) async fn hold(&self, deployment: &str) -> Hold {
        let (lock, withdrawn) = self.entry(deployment);
        Hold {
            _guard: lock.lock_owned().await,
            withdrawn,
        }
    }

    /// The right to work on `deployment`, unless someone else has it.
    pub(super) fn try_hold(&self, deployment: &str) -> Option<Hold> {
        let (lock, withdrawn) = self.entry(deployment);
        Some(Hold {
            _guard: lock.try_lock_owned().ok()?,
            withdrawn,
        })
    }

    /// Tells every run that holds `deployment`, or waits for it, to start no more clones;
    /// holds asked for from now on start un-withdrawn (a deploy after the undeploy).
    pub(super) fn withdraw(&self, deployment: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.entry(deployment.to_owned()).or_default();
        std::mem::take(&mut e.withdrawn).cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_withdrawal_reaches_the_holder_and_the_waiters_not_later_holds() {
        let holds = Holds::default();
        let first = holds.hold("d").await;
        assert!(holds.try_hold("d").is_none(), "held");
        // What a run queued for the hold took when it asked.
        let (_, waiting) = holds.entry("d");
        assert!(!first.withdrawn().is_cancelled());
        holds.withdraw("d");
        assert!(first.withdrawn().is_cancelled());
        assert!(waiting.is_cancelled(), "asked for before the withdrawal");
        drop(first);
        let later = holds.try_hold("d").expect("free again");
        assert!(!later.withdrawn().is_cancelled(), "asked for after it");
        // Other deployments are not touched.
        assert!(!holds
            .try_hold("e")
            .expect("free")
            .withdrawn()
            .is_cancelled());
    }
}
