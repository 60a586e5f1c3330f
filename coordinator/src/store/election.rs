//! Leader election among coordinators sharing an etcd store.
//!
//! Not etcd's lock API (Jepsen showed it cannot guarantee mutual exclusion): a candidate
//! grants itself a lease and creates the leader key bound to it in a transaction that only
//! succeeds if the key is absent. The leader keeps the lease alive; if keep-alives stop
//! being acknowledged for two thirds of the TTL it steps down on its own, and when the lease
//! expires etcd deletes the key so another candidate wins.
//!
//! Coordinator ids must be unique: a coordinator restarted with its id finds the key of its
//! previous (dead) incarnation and clears it instead of waiting for the lease to expire.
//!
//! Leadership alone is not trusted for writes: the leader key's `mod_revision` is a
//! *fencing token* ([`Role::Leader::fence`]) that every scheduling transaction checks
//! (`Check::Revision`), so a deposed leader that has not noticed yet cannot write.

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, PutOptions, TxnOp, TxnOpResponse};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The etcd key holding the current leader's id.
pub const LEADER_KEY: &str = "/napalm/leader";

/// What this coordinator is right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not the leader; `leader` is the current leader's id when known.
    Follower {
        /// The leader's id.
        leader: Option<String>,
    },
    /// The leader. Writes must check `LEADER_KEY` still has revision `fence`.
    Leader {
        /// `mod_revision` of the leader key this coordinator created.
        fence: u64,
    },
}

/// A running election; dropping it abandons the campaign (the lease then expires).
pub struct Election {
    role: watch::Receiver<Role>,
    task: JoinHandle<()>,
}

impl Election {
    /// Starts campaigning as `id` with a lease of `ttl` (at least 2 s).
    pub fn start(client: Client, id: String, ttl: Duration) -> Self {
        let (tx, rx) = watch::channel(Role::Follower { leader: None });
        let ttl = ttl.max(Duration::from_secs(2));
        let task = tokio::spawn(campaign(client, id, ttl, tx));
        Self { role: rx, task }
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// A receiver that sees every role change.
    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn campaign(mut client: Client, id: String, ttl: Duration, tx: watch::Sender<Role>) {
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let retry = ttl / 3;
    loop {
        match try_lead(&mut client, &id, ttl_secs).await {
            Ok(Attempt::Won { lease, fence }) => {
                tracing::info!(%id, fence, "became leader");
                let _ = tx.send(Role::Leader { fence });
                hold(&mut client, lease, ttl).await;
                tracing::warn!(%id, "lost leadership");
                let _ = tx.send(Role::Follower { leader: None });
                let _ = client.lease_revoke(lease).await;
            }
            Ok(Attempt::Lost { leader }) if leader == id => {
                // The key holds our own id: this coordinator was restarted before its old
                // lease expired. Ids are unique per coordinator, so the holder is dead: clear
                // the key (only if it still holds our id) and campaign again at once.
                let txn = etcd_client::Txn::new()
                    .when([Compare::value(LEADER_KEY, CompareOp::Equal, id.as_bytes())])
                    .and_then([TxnOp::delete(LEADER_KEY, None)]);
                if client.txn(txn).await.is_ok() {
                    tracing::info!(%id, "cleared the leader key of our previous incarnation");
                    continue;
                }
            }
            Ok(Attempt::Lost { leader }) => {
                tx.send_if_modified(|r| {
                    let new = Role::Follower {
                        leader: Some(leader.clone()),
                    };
                    let changed = *r != new;
                    *r = new;
                    changed
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "leader election: etcd unreachable");
                let _ = tx.send(Role::Follower { leader: None });
            }
        }
        tokio::time::sleep(retry).await;
    }
}

enum Attempt {
    Won { lease: i64, fence: u64 },
    Lost { leader: String },
}

async fn try_lead(
    client: &mut Client,
    id: &str,
    ttl_secs: i64,
) -> Result<Attempt, etcd_client::Error> {
    let lease = client.lease_grant(ttl_secs, None).await?.id();
    let txn = etcd_client::Txn::new()
        .when([Compare::version(LEADER_KEY, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            LEADER_KEY,
            id,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(LEADER_KEY, None)]);
    let resp = client.txn(txn).await?;
    if resp.succeeded() {
        let fence = resp.header().map_or(0, |h| h.revision().max(0) as u64);
        return Ok(Attempt::Won { lease, fence });
    }
    let _ = client.lease_revoke(lease).await;
    let leader = resp
        .op_responses()
        .into_iter()
        .find_map(|op| match op {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
            _ => None,
        })
        .unwrap_or_default();
    Ok(Attempt::Lost { leader })
}

/// Keeps the lease alive until an acknowledgement is missing for 2/3 of the TTL, the lease
/// is reported expired, or the stream fails.
async fn hold(client: &mut Client, lease: i64, ttl: Duration) {
    let Ok((mut keeper, mut acks)) = client.lease_keep_alive(lease).await else {
        return;
    };
    let mut last_ack = Instant::now();
    let deadline = ttl * 2 / 3;
    let mut tick = tokio::time::interval(ttl / 4);
    loop {
        tick.tick().await;
        if last_ack.elapsed() >= deadline || keeper.keep_alive().await.is_err() {
            return;
        }
        match tokio::time::timeout(ttl / 4, acks.message()).await {
            Ok(Ok(Some(ack))) if ack.ttl() > 0 => last_ack = Instant::now(),
            Ok(Ok(Some(_))) | Ok(Ok(None)) | Ok(Err(_)) => return,
            Err(_) => {} // no answer yet; the deadline decides
        }
    }
}
