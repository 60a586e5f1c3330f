//! Who works on a deployment: one hold per deployment, so a run (a client's, or the control
//! loop's) and an undeploy never work on the same deployment at once; and the withdrawal
//! an undeploy or a newer client deploy signals before it waits for the hold, so the run
//! holding the deployment stops starting clones (those still waiting for a boot slot or a
//! shipping place) instead of the newcomer waiting for a whole boot storm to get its slots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

/// Who withdrew a deployment's clones still waiting to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WithdrawnBy {
    /// An undeploy: the clones go.
    #[error("the deployment is being removed (undeploy)")]
    Undeploy,
    /// A newer client deploy of the deployment: its run starts the clones its spec keeps.
    #[error("a newer deploy of the deployment took over (its run starts the clones it keeps)")]
    NewerDeploy,
}

/// The withdrawal of the runs that asked for a deployment's hold before it was signalled.
#[derive(Clone, Default)]
pub(super) struct Withdrawal {
    token: CancellationToken,
    by: Arc<OnceLock<WithdrawnBy>>,
}

impl Withdrawal {
    /// Waits until it is signalled; says by whom.
    pub(super) async fn signalled(&self) -> WithdrawnBy {
        self.token.cancelled().await;
        self.by().unwrap_or(WithdrawnBy::Undeploy)
    }

    /// Who signalled it, once it is.
    pub(super) fn by(&self) -> Option<WithdrawnBy> {
        self.token.is_cancelled().then(|| self.by.get().copied())?
    }

    fn signal(self, by: WithdrawnBy) {
        let _ = self.by.set(by);
        self.token.cancel();
    }
}

/// Every deployment's lock and current withdrawal signal.
#[derive(Default)]
pub(super) struct Holds {
    map: Mutex<HashMap<String, Entry>>,
}

#[derive(Default)]
struct Entry {
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Signalled by [`Holds::withdraw`], then replaced: the runs that asked for the hold
    /// before the withdrawal see it, those asking after do not.
    withdrawn: Withdrawal,
}

/// The right to work on one deployment, held by a run until it has brought its clones up
/// (it lets go before following them) and by an undeploy until it is done.
pub(super) struct Hold {
    _guard: OwnedMutexGuard<()>,
    withdrawn: Withdrawal,
}

impl Hold {
    /// Signalled once an undeploy or a newer client deploy of the deployment asked for it
    /// (while this hold was held, or asked for).
    pub(super) fn withdrawn(&self) -> Withdrawal {
        self.withdrawn.clone()
    }
}

impl Holds {
    fn entry(&self, deployment: &str) -> (Arc<tokio::sync::Mutex<()>>, Withdrawal) {
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
    /// holds asked for from now on start un-withdrawn (a deploy after the undeploy, the
    /// newer deploy's own runs).
    pub(super) fn withdraw(&self, deployment: &str, by: WithdrawnBy) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.entry(deployment.to_owned()).or_default();
        std::mem::take(&mut e.withdrawn).signal(by);
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
        assert_eq!(first.withdrawn().by(), None);
        holds.withdraw("d", WithdrawnBy::NewerDeploy);
        assert_eq!(first.withdrawn().by(), Some(WithdrawnBy::NewerDeploy));
        assert_eq!(
            waiting.signalled().await,
            WithdrawnBy::NewerDeploy,
            "asked for before the withdrawal"
        );
        drop(first);
        let later = holds.try_hold("d").expect("free again");
        assert_eq!(later.withdrawn().by(), None, "asked for after it");
        // The next withdrawal says who made it.
        holds.withdraw("d", WithdrawnBy::Undeploy);
        assert_eq!(later.withdrawn().signalled().await, WithdrawnBy::Undeploy);
        // Other deployments are not touched.
        assert_eq!(holds.try_hold("e").expect("free").withdrawn().by(), None);
    }
}
