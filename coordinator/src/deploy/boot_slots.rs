//! Boot slots: how many clones boot at once on one agent (not to be confused with the
//! deploy's capacity admission, which refuses what does not fit).
//!
//! Under QEMU's TCG every booting guest is a CPU-bound process, and what a boot costs grows
//! with how long it lasts: the guest's timer ticks, QEMU's main loop and the caches it
//! shares with the others all count per second of wall time, not per instruction of the
//! boot. Booting many more guests at once than the host has CPUs only stretches every
//! boot: one clone alone needed 3.7 CPU-s here to register, each of 8 at once 4.2 CPU-s,
//! each of 32 at once about 6.7 (README, "A boot storm"). So a clone's domain is created
//! only when its agent has a boot slot free, and the slot is held until the clone registers,
//! fails, goes, or its boot timeout passes (a root without the register hook never
//! registers). Clones on hypervisors that boot natively (KVM, Xen) and on libvirt's test
//! driver (no guest) boot without a slot unless the operator sets a number.
//!
//! `auto` gives two slots per host CPU, not one: a boot is not CPU all along (it waits on
//! NFS, on the registration's TLS), and registering is not the end of a guest's work (the
//! demo's clones start gmond and the rest of their services after it). With one slot per
//! CPU the demo's 8 clones on two 2-CPU agents took 40.4–50.0 s (7 runs) against
//! 28.6–30.9 s with no limit (3 runs); a storm of 32 took 102.1 s with one per CPU and
//! 92.3 s with two (one run each), against 117 s with no limit (README).
//!
//! A slot is held for one boot of one clone: when that boot ends otherwise than by the
//! clone's record (its domain died or is gone, which the control loop or a re-run finds),
//! [`BootSlots::let_go`] frees it at once, so that starting the clone again does not wait
//! for the slot of the boot that failed.
//!
//! The slots are this coordinator's: runs of every deployment and the control loop share
//! them (the loop's restart of a clone that died takes one too, or waits for a later
//! pass). A coordinator that restarts, or takes over as leader, first counts the clones
//! another process left booting ([`super::Inner::adopt_boots`], once per lead term).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use napalm_proto::v1::{Agent, ClonePhase, Hypervisor};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::registry::{Registry, RegistryError};

/// How many clones boot at once per agent (`napalm-coordinator --boot-concurrency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootConcurrency {
    /// Twice as many as the agent's host has CPUs for QEMU (TCG) guests; no limit for the
    /// others.
    #[default]
    Auto,
    /// No limit: every clone's domain is created as soon as its artifacts are shipped.
    Unlimited,
    /// At most this many per agent, whatever the hypervisor.
    PerAgent(u32),
}

impl std::str::FromStr for BootConcurrency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" | "0" => Ok(Self::Unlimited),
            n => n.parse::<u32>().map(Self::PerAgent).map_err(|_| {
                format!("--boot-concurrency {s:?} is not auto, off or a number of clones per agent")
            }),
        }
    }
}

impl BootConcurrency {
    /// The slots of `agent` for clones booting on `hv`, `None` when unlimited.
    pub fn slots(self, agent: &Agent, hv: Hypervisor) -> Option<u32> {
        match self {
            Self::Unlimited => None,
            Self::PerAgent(n) => Some(n.max(1)),
            Self::Auto if hv == Hypervisor::Qemu => {
                let cpus = agent
                    .capabilities
                    .as_ref()
                    .and_then(|c| c.host.as_ref())
                    .map_or(0, |h| h.cpus);
                Some(cpus.saturating_mul(2).max(1))
            }
            Self::Auto => None,
        }
    }
}

/// A boot slot on one agent, held from the domain's creation until the clone booted.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// The slot of a clone's boot under way, and what stops its watch.
struct Held {
    /// Which boot: a later boot of the same clone replaces the entry, and the earlier
    /// boot's watch must then not remove it.
    boot: u64,
    _slot: Slot,
    stop: CancellationToken,
}

/// Clone name → the slot its boot under way holds.
type Booting = Arc<Mutex<HashMap<String, Held>>>;

/// Every agent's boot slots.
pub struct BootSlots {
    mode: BootConcurrency,
    /// Per agent id: its slots, and how many there are (a host whose CPU count changed
    /// gets a new set; slots held on the old one run out as their clones boot).
    agents: Mutex<HashMap<String, (u32, Arc<Semaphore>)>>,
    booting: Booting,
    boots: AtomicU64,
    /// The lead term (the registry's fence, none without election) in which the clones
    /// that were booting hold slots ([`super::Inner::adopt_boots`]); none before the
    /// first adoption.
    adopted: tokio::sync::Mutex<Option<Option<u64>>>,
}

impl BootSlots {
    /// Slots as `mode` says.
    pub fn new(mode: BootConcurrency) -> Self {
        Self {
            mode,
            agents: Mutex::default(),
            booting: Booting::default(),
            boots: AtomicU64::new(0),
            adopted: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether clone `clone`'s boot holds a slot here.
    pub fn holds(&self, clone: &str) -> bool {
        lock(&self.booting).contains_key(clone)
    }

    /// Holds `slot` for clone `clone`'s boot, which just started, until the clone is no
    /// longer booting by its record ([`booting_until`]: registered, failed, gone, or
    /// `bound` passed) or [`Self::let_go`] says the boot ended. A slot still held for an
    /// earlier boot of the clone is let go.
    pub fn hold_while_booting(
        &self,
        slot: Slot,
        registry: Registry,
        clone: String,
        bound: Duration,
    ) {
        let boot = self.boots.fetch_add(1, Ordering::Relaxed);
        let stop = CancellationToken::new();
        let held = Held {
            boot,
            _slot: slot,
            stop: stop.clone(),
        };
        let earlier = lock(&self.booting).insert(clone.clone(), held);
        if let Some(e) = earlier {
            e.stop.cancel();
        }
        let booting = Arc::clone(&self.booting);
        tokio::spawn(async move {
            tokio::select! {
                _ = booting_until(&registry, &clone, bound) => {}
                _ = stop.cancelled() => {}
            }
            let mut held = lock(&booting);
            if held.get(&clone).is_some_and(|h| h.boot == boot) {
                held.remove(&clone);
            }
        });
    }

    /// Frees at once the slot clone `clone`'s boot holds, if any: that boot ended while
    /// the record still says running (its domain died, or its agent lost it).
    pub fn let_go(&self, clone: &str) {
        let held = lock(&self.booting).remove(clone);
        if let Some(h) = held {
            tracing::info!(
                clone,
                "boot slot let go: the clone's domain is no longer running"
            );
            h.stop.cancel();
        }
    }

    fn semaphore(&self, agent: &Agent, slots: u32) -> Arc<Semaphore> {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let entry = agents
            .entry(agent.id.clone())
            .or_insert_with(|| (slots, Arc::new(Semaphore::new(slots as usize))));
        if entry.0 != slots {
            *entry = (slots, Arc::new(Semaphore::new(slots as usize)));
        }
        Arc::clone(&entry.1)
    }

    /// A boot slot on `agent` for a clone booting on `hv` if one is free now: `None` when
    /// no limit applies, `Some(Err(slots))` when all `slots` are taken.
    pub fn try_admit(&self, agent: &Agent, hv: Hypervisor) -> Option<Result<Slot, u32>> {
        let slots = self.mode.slots(agent, hv)?;
        Some(match self.semaphore(agent, slots).try_acquire_owned() {
            Ok(p) => Ok(Slot { _permit: p }),
            Err(_) => Err(slots),
        })
    }

    /// A boot slot on `agent` for a clone booting on `hv`, once one is free (`None`: no
    /// limit applies).
    pub async fn admit(&self, agent: &Agent, hv: Hypervisor) -> Option<Slot> {
        let slots = self.mode.slots(agent, hv)?;
        // Never closed: a semaphore nobody can acquire would be no limit.
        self.semaphore(agent, slots)
            .acquire_owned()
            .await
            .ok()
            .map(|p| Slot { _permit: p })
    }
}

/// How often a held slot looks at its clone's record besides this coordinator's own
/// writes (a registration another coordinator sharing the store recorded).
const RECHECK: Duration = Duration::from_secs(1);

impl super::Inner {
    /// Once per process and lead term (the registry's fence), before its first run or
    /// control-loop pass in it: the clones booting by their record (running, not
    /// registered, within their boot timeout) each take a slot of their agent for what is
    /// left of their boot timeout, as far as the slots go; boots this process holds slots
    /// for already are not counted twice. So the boots another process started (before
    /// this coordinator restarted, or while another led) count here: otherwise the first
    /// runs here would start a full set of boots beside them. A registry that cannot be
    /// read leaves it for the next call.
    pub(super) async fn adopt_boots(&self) {
        let term = self.registry.fence();
        let mut adopted = self.boot_slots.adopted.lock().await;
        if *adopted == Some(term) {
            return;
        }
        match self.adopt().await {
            Ok(n) => {
                *adopted = Some(term);
                if n > 0 {
                    tracing::info!(
                        clones = n,
                        "clones another coordinator left booting hold boot slots here"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not count the clones still booting against the boot slots");
            }
        }
    }

    async fn adopt(&self) -> Result<usize, RegistryError> {
        let reg = &self.registry;
        let mut clones = reg.clones_by_deployment().await?;
        let agents = reg
            .list_agents_using(clones.values().flatten(), &[])
            .await?;
        let now = reg.clock().now();
        let mut adopted = 0;
        for d in reg.list_deployments().await? {
            let Some(spec) = d.spec else { continue };
            let bound = self.boot_timeout(&spec);
            for c in clones.remove(&spec.name).unwrap_or_default() {
                if c.phase != ClonePhase::Running as i32 || self.boot_slots.holds(&c.name) {
                    continue;
                }
                let Some(started) = c.started_at.as_ref() else {
                    continue;
                };
                let Ok(left) =
                    (napalm_proto::time::from_timestamp(Some(started)) + bound).duration_since(now)
                else {
                    continue;
                };
                let Some(a) = agents.iter().find(|a| a.id == c.agent_id) else {
                    continue;
                };
                let hv = super::place::hypervisor_on(&spec, a);
                if let Some(Ok(slot)) = self.boot_slots.try_admit(a, hv) {
                    self.boot_slots
                        .hold_while_booting(slot, reg.clone(), c.name, left);
                    adopted += 1;
                }
            }
        }
        Ok(adopted)
    }
}

fn lock(booting: &Booting) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
    booting.lock().unwrap_or_else(|p| p.into_inner())
}

/// Returns once clone `clone` is no longer booting by its record: registered, failed,
/// stopped or gone from the registry, or `bound` has passed. A registry that cannot be
/// read ends it too (a slot never outlives what it guards by more than a recheck).
async fn booting_until(registry: &Registry, clone: &str, bound: Duration) {
    let until = tokio::time::Instant::now() + bound;
    let mut changes = registry.changes();
    loop {
        match registry.get_clone(clone).await {
            Ok(c) if c.phase == ClonePhase::Running as i32 => {}
            _ => break,
        }
        let wake = tokio::time::Instant::now() + RECHECK;
        if wake >= until {
            tokio::time::sleep_until(until).await;
            tracing::info!(clone = %clone, bound_s = bound.as_secs(), "boot slot let go: the clone did not register in time");
            break;
        }
        // A write of this coordinator's (a registration) or the recheck, whichever first.
        let _ = tokio::time::timeout_at(wake, changes.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use napalm_proto::v1::{Capabilities, Clone, HostInfo};

    fn agent(id: &str, cpus: u32) -> Agent {
        Agent {
            id: id.into(),
            capabilities: Some(Capabilities {
                host: Some(HostInfo {
                    cpus,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn auto_gives_tcg_guests_two_slots_per_cpu_and_native_ones_no_limit() {
        let a = agent("a", 2);
        let auto = BootConcurrency::Auto;
        assert_eq!(auto.slots(&a, Hypervisor::Qemu), Some(4));
        assert_eq!(auto.slots(&a, Hypervisor::Kvm), None);
        assert_eq!(auto.slots(&a, Hypervisor::Test), None);
        // An agent that reported no CPUs still boots one at a time.
        assert_eq!(auto.slots(&agent("b", 0), Hypervisor::Qemu), Some(1));
        assert_eq!(
            BootConcurrency::PerAgent(3).slots(&a, Hypervisor::Kvm),
            Some(3)
        );
        assert_eq!(BootConcurrency::Unlimited.slots(&a, Hypervisor::Qemu), None);
    }

    #[test]
    fn the_flag_takes_auto_off_or_a_number_and_quotes_anything_else() {
        assert_eq!("auto".parse(), Ok(BootConcurrency::Auto));
        assert_eq!("off".parse(), Ok(BootConcurrency::Unlimited));
        assert_eq!("0".parse(), Ok(BootConcurrency::Unlimited));
        assert_eq!("4".parse(), Ok(BootConcurrency::PerAgent(4)));
        let e = "four".parse::<BootConcurrency>().unwrap_err();
        assert!(e.contains("\"four\"") && e.contains("auto, off"), "{e}");
    }

    async fn put(reg: &Registry, name: &str, phase: ClonePhase) {
        use prost::Message as _;
        let c = Clone {
            name: name.into(),
            deployment: "d".into(),
            phase: phase as i32,
            ..Default::default()
        };
        let key = format!("{}{name}", crate::registry::CLONES);
        reg.commit(crate::store::Txn::new().put(key, c.encode_to_vec()))
            .await
            .expect("writing the clone");
    }

    #[tokio::test]
    async fn a_slot_is_held_until_its_clone_registers_then_the_next_clone_boots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = crate::registry::temp_registry(dir.path()).await;
        let slots = Arc::new(BootSlots::new(BootConcurrency::PerAgent(1)));
        let a = agent("a", 8);
        put(&reg, "c1", ClonePhase::Running).await;
        let slot = slots
            .admit(&a, Hypervisor::Qemu)
            .await
            .expect("a limit applies");
        slots.hold_while_booting(slot, reg.clone(), "c1".into(), Duration::from_secs(60));
        assert!(matches!(
            slots.try_admit(&a, Hypervisor::Qemu),
            Some(Err(1))
        ));
        // The second clone waits while the first boots...
        let next = {
            let slots = Arc::clone(&slots);
            let a = a.clone();
            tokio::spawn(async move { slots.admit(&a, Hypervisor::Qemu).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!next.is_finished(), "a second clone got the only slot");
        // ... and gets the slot once the first registered.
        put(&reg, "c1", ClonePhase::Registered).await;
        let got = tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("the slot was let go when the clone registered")
            .expect("admit");
        assert!(got.is_some());
        // Another agent's slots are its own.
        assert!(tokio::time::timeout(
            Duration::from_secs(1),
            slots.admit(&agent("b", 8), Hypervisor::Qemu)
        )
        .await
        .expect("agent b's slot is free")
        .is_some());
    }

    /// Until a slot of agent `a` is free, at most 5 s; how long that took.
    async fn until_free(slots: &BootSlots, a: &Agent) -> Duration {
        let t = tokio::time::Instant::now();
        loop {
            if let Some(Ok(_)) = slots.try_admit(a, Hypervisor::Qemu) {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the slot was never let go"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_clone_that_never_registers_lets_its_slot_go_at_its_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = crate::registry::temp_registry(dir.path()).await;
        put(&reg, "silent", ClonePhase::Running).await;
        let slots = BootSlots::new(BootConcurrency::PerAgent(1));
        let a = agent("a", 1);
        let slot = slots
            .admit(&a, Hypervisor::Qemu)
            .await
            .expect("a limit applies");
        slots.hold_while_booting(
            slot,
            reg.clone(),
            "silent".into(),
            Duration::from_millis(400),
        );
        assert!(until_free(&slots, &a).await >= Duration::from_millis(380));
        // A clone gone from the registry lets it go at once.
        let slot = slots
            .admit(&a, Hypervisor::Qemu)
            .await
            .expect("a limit applies");
        slots.hold_while_booting(slot, reg, "gone".into(), Duration::from_secs(60));
        assert!(until_free(&slots, &a).await < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_boot_that_ended_behind_the_record_lets_its_slot_go_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = crate::registry::temp_registry(dir.path()).await;
        put(&reg, "c1", ClonePhase::Running).await;
        put(&reg, "c2", ClonePhase::Running).await;
        let slots = BootSlots::new(BootConcurrency::PerAgent(2));
        let a = agent("a", 1);
        let admit = || async {
            slots
                .admit(&a, Hypervisor::Qemu)
                .await
                .expect("a limit applies")
        };
        // c1 boots, then boots again (a restart) while the first boot's watch still
        // runs: the later boot holds one slot, the first boot's slot is let go, and the
        // first boot's watch, as it ends, leaves the later boot's slot alone.
        let hold = |clone: &str, slot| {
            slots.hold_while_booting(slot, reg.clone(), clone.into(), Duration::from_secs(60))
        };
        hold("c1", admit().await);
        hold("c1", admit().await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        hold("c2", admit().await);
        assert!(
            matches!(slots.try_admit(&a, Hypervisor::Qemu), Some(Err(2))),
            "c1's later boot and c2 should hold both slots"
        );
        // c1's domain died while its record says running: its slot is free at once.
        slots.let_go("c1");
        assert!(matches!(slots.try_admit(&a, Hypervisor::Qemu), Some(Ok(_))));
        slots.let_go("c1");
        slots.let_go("unknown");
        assert!(matches!(slots.try_admit(&a, Hypervisor::Qemu), Some(Ok(_))));
    }
}
