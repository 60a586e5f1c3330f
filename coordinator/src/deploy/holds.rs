//! Who works on a deployment: one hold per deployment, so a run (a client's, or the control
//! loop's) and an undeploy never work on the same deployment at once; and the withdrawal
//! an undeploy or a newer client deploy signals before it waits for the hold, so the run
//! holding the deployment stops starting clones (those still waiting for a boot slot or a
//! shipping place) instead of the newcomer waiting for a whole boot storm to get its slots.
//! The control loop takes a hold only when it is free and no client waits for it.

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
    /// Signalled by a withdrawing [`Holds::hold`], then replaced: the runs that asked for
    /// the hold before the withdrawal see it, those asking after do not.
    withdrawn: Withdrawal,
    /// Clients (runs of a deploy, undeploys) waiting for the lock: the control loop does
    /// not slip in before them ([`Holds::try_hold`]).
    queued: usize,
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

/// A client's place in the queue for a deployment's lock, given up once it has the lock
/// or stops waiting.
struct Queued<'h> {
    holds: &'h Holds,
    deployment: &'h str,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let mut map = self.holds.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(self.deployment) {
            e.queued = e.queued.saturating_sub(1);
        }
    }
}

impl Holds {
    /// Waits for the right to work on `deployment`. `withdrawing`: first tells every run
    /// that holds it, or waits for it, to start no more clones (an undeploy, a newer
    /// deploy); holds asked for from then on, this one included, start un-withdrawn. The
    /// withdrawal and the place in the queue are taken at once, so the control loop cannot
    /// start a run in between.
    pub(super) async fn hold(&self, deployment: &str, withdrawing: Option<WithdrawnBy>) -> Hold {
        let (lock, withdrawn) = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            let e = map.entry(deployment.to_owned()).or_default();
            if let Some(by) = withdrawing {
                std::mem::take(&mut e.withdrawn).signal(by);
            }
            e.queued += 1;
            (Arc::clone(&e.lock), e.withdrawn.clone())
        };
        let _queued = Queued {
            holds: self,
            deployment,
        };
        Hold {
            _guard: lock.lock_owned().await,
            withdrawn,
        }
    }

    /// The right to work on `deployment`, unless someone else has it or a client waits
    /// for it (the control loop's way: a pass that finds it taken leaves it to them).
    pub(super) fn try_hold(&self, deployment: &str) -> Option<Hold> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.entry(deployment.to_owned()).or_default();
        if e.queued > 0 {
            return None;
        }
        Some(Hold {
            _guard: Arc::clone(&e.lock).try_lock_owned().ok()?,
            withdrawn: e.withdrawn.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    #[tokio::test]
    async fn a_withdrawal_reaches_the_holder_and_the_waiters_not_later_holds() {
        let holds = Arc::new(Holds::default());
        let first = holds.hold("d", None).await;
        assert!(holds.try_hold("d").is_none(), "held");
        assert_eq!(first.withdrawn().by(), None);
        // A run queued for the hold, then a newer deploy.
        let queued = {
            let holds = Arc::clone(&holds);
            tokio::spawn(async move { holds.hold("d", None).await.withdrawn() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let newer = {
            let holds = Arc::clone(&holds);
            tokio::spawn(async move {
                holds
                    .hold("d", Some(WithdrawnBy::NewerDeploy))
                    .await
                    .withdrawn()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(first.withdrawn().by(), Some(WithdrawnBy::NewerDeploy));
        drop(first);
        assert_eq!(
            queued.await.expect("queued").signalled().await,
            WithdrawnBy::NewerDeploy,
            "asked for before the withdrawal"
        );
        let newer = newer.await.expect("newer");
        assert_eq!(newer.by(), None, "the withdrawing hold itself");
        // The next withdrawal says who made it.
        let undeploy = holds.hold("d", Some(WithdrawnBy::Undeploy)).await;
        assert_eq!(newer.signalled().await, WithdrawnBy::Undeploy);
        assert_eq!(undeploy.withdrawn().by(), None);
        drop(undeploy);
        // Other deployments are not touched.
        assert_eq!(holds.try_hold("e").expect("free").withdrawn().by(), None);
    }

    /// The control loop leaves a deployment to the clients queued for it; a client that
    /// stops waiting (its call dropped) leaves the queue, or the loop would never act on
    /// that deployment again. (That the loop cannot slip in between a client's withdrawal
    /// and its place in the queue is by construction: both are taken under one lock.)
    #[tokio::test]
    async fn a_client_that_stops_waiting_leaves_the_queue() {
        let holds = Arc::new(Holds::default());
        let first = holds.hold("d", None).await;
        let client = {
            let holds = Arc::clone(&holds);
            tokio::spawn(async move {
                let _h = holds.hold("d", None).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        assert!(holds.try_hold("d").is_none(), "the client waits for it");
        client.await.expect("client");
        assert!(
            holds.try_hold("d").is_some(),
            "free once the client is done"
        );
        let first = holds.hold("d", None).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(20), holds.hold("d", None)).await;
        assert!(gave_up.is_err());
        drop(first);
        assert!(holds.try_hold("d").is_some(), "nobody queued any more");
    }
}
