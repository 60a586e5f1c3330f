//! Placement of clones on agents (pure logic: no store, no network, no clock).
//!
//! An agent is a candidate when it is ready, runs the asked hypervisor and architecture and
//! carries the asked labels; each candidate that is dropped keeps its reason, so a clone
//! that cannot be placed is reported with one reason per agent (OpenNebula's "pending with
//! no reason" is the complaint this answers). Capacity is the host's CPUs times the CPU
//! overcommit ratio and its memory minus a reserve, less what is already allocated; for
//! clones whose RAM comes from the host's huge page pool, the pool instead of the memory
//! (the pool is set apart from the host's memory, so no reserve applies to it).
//!
//! All clones of one call have the same size, so an agent that cannot fit one clone can
//! never fit a later one in the same call: it leaves the heap for good. Placement is
//! O(n log m) for n clones over m agents.
//! - spread (default): the least loaded agent (max of CPU and memory fraction) first;
//! - binpack: the most loaded agent that still fits first;
//! - `max_per_agent` (anti-affinity): at most that many clones of the deployment per agent.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use napalm_proto::v1::{AgentState, Hypervisor, PlacementStrategy};

/// Resource amounts used by the scheduler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount {
    /// vCPUs.
    pub vcpus: u64,
    /// Memory, bytes.
    pub memory: u64,
}

/// An agent as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Agent id.
    pub id: String,
    /// Agent name (for messages).
    pub name: String,
    /// Scheduling state.
    pub state: AgentState,
    /// Hypervisors it runs.
    pub hypervisors: Vec<Hypervisor>,
    /// Host architecture.
    pub arch: String,
    /// Host CPUs and memory (before overcommit and reserve).
    pub host: Amount,
    /// Already allocated to clones.
    pub allocated: Amount,
    /// When the clones being placed take their RAM from the host's huge page pool: the
    /// whole pool, bytes. Their memory then counts against it, not the host's memory.
    pub huge_pages: Option<u64>,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Clones of the deployment being placed that it already holds.
    pub deployment_clones: u32,
}

/// What each clone of a placement needs.
#[derive(Debug, Clone)]
pub struct Demand {
    /// Per-clone resources.
    pub size: Amount,
    /// Required hypervisor (`Unspecified`: any).
    pub hypervisor: Hypervisor,
    /// Required architecture (empty: any).
    pub arch: String,
    /// Required agent labels.
    pub selector: BTreeMap<String, String>,
    /// At most this many clones of the deployment per agent (0: no limit).
    pub max_per_agent: u32,
    /// Spread or binpack.
    pub strategy: PlacementStrategy,
}

/// Site policy for capacity.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// vCPUs offered per host CPU.
    pub cpu_overcommit: u64,
    /// Host memory kept for the host itself, bytes.
    pub memory_reserve: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            cpu_overcommit: 4,
            memory_reserve: 256 << 20,
        }
    }
}

/// Why one agent cannot take a clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Agent id.
    pub agent_id: String,
    /// Agent name.
    pub agent_name: String,
    /// Why.
    pub reason: String,
}

/// The result of a placement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// `(clone, index into the candidates)` for every placed clone, in input order.
    pub placed: Vec<(String, usize)>,
    /// Clones that could not be placed, with one rejection per agent.
    pub unplaced: Vec<(String, Vec<Rejection>)>,
}

fn mib(b: u64) -> u64 {
    b >> 20
}

/// Capacity left on a candidate under `policy`.
pub fn free(c: &Candidate, policy: &Policy) -> Amount {
    free_of(c, c.allocated, policy)
}

/// The memory clones may take on `c`: its huge page pool, or its memory less the reserve.
fn memory_capacity(c: &Candidate, policy: &Policy) -> u64 {
    c.huge_pages
        .unwrap_or_else(|| c.host.memory.saturating_sub(policy.memory_reserve))
}

fn free_of(c: &Candidate, allocated: Amount, policy: &Policy) -> Amount {
    Amount {
        vcpus: (c.host.vcpus * policy.cpu_overcommit).saturating_sub(allocated.vcpus),
        memory: memory_capacity(c, policy).saturating_sub(allocated.memory),
    }
}

/// Why a candidate can never take a clone of `demand` (state, hypervisor, arch, labels).
fn static_reason(c: &Candidate, d: &Demand) -> Option<String> {
    if c.state != AgentState::Ready {
        return Some(format!(
            "agent is {}",
            c.state
                .as_str_name()
                .trim_start_matches("AGENT_STATE_")
                .to_lowercase()
        ));
    }
    if d.hypervisor != Hypervisor::Unspecified && !c.hypervisors.contains(&d.hypervisor) {
        let runs: Vec<&str> = c.hypervisors.iter().map(|h| h.short_name()).collect();
        return Some(format!(
            "does not run {} (runs {})",
            d.hypervisor.short_name(),
            if runs.is_empty() {
                "nothing".to_owned()
            } else {
                runs.join(", ")
            }
        ));
    }
    if !d.arch.is_empty() && c.arch != d.arch {
        return Some(format!("architecture {} is not {}", c.arch, d.arch));
    }
    for (k, v) in &d.selector {
        if c.labels.get(k) != Some(v) {
            return Some(format!("lacks label {k}={v}"));
        }
    }
    None
}

fn fit_reason(d: &Demand, c: &Candidate, f: Amount, held: u32) -> Option<String> {
    if d.max_per_agent > 0 && held >= d.max_per_agent {
        return Some(format!(
            "already holds {held} clones of this deployment (max {} per agent)",
            d.max_per_agent
        ));
    }
    if f.vcpus < d.size.vcpus || f.memory < d.size.memory {
        return Some(format!(
            "needs {} vCPU and {} MiB{}, {} vCPU and {} MiB free{}",
            d.size.vcpus,
            mib(d.size.memory),
            if c.huge_pages.is_some() {
                " of huge pages"
            } else {
                ""
            },
            f.vcpus,
            mib(f.memory),
            match c.huge_pages {
                Some(pool) => format!(
                    " (its huge page pool holds {} MiB: raise the host's vm.nr_hugepages)",
                    mib(pool)
                ),
                None => String::new(),
            }
        ));
    }
    None
}

/// Load of a candidate in millionths: the larger of its CPU and memory fractions.
fn load(c: &Candidate, policy: &Policy, alloc: Amount) -> u64 {
    let cap_cpu = (c.host.vcpus * policy.cpu_overcommit).max(1) as u128;
    let cap_mem = memory_capacity(c, policy).max(1) as u128;
    let cpu = alloc.vcpus as u128 * 1_000_000 / cap_cpu;
    let mem = alloc.memory as u128 * 1_000_000 / cap_mem;
    cpu.max(mem) as u64
}

/// Places `clones` (all of size `demand.size`) on `agents`.
pub fn place(
    demand: &Demand,
    clones: &[String],
    agents: &[Candidate],
    policy: &Policy,
) -> Placement {
    let mut rejections: Vec<Option<String>> = vec![None; agents.len()];
    let mut alloc: Vec<Amount> = agents.iter().map(|a| a.allocated).collect();
    let mut held: Vec<u32> = agents.iter().map(|a| a.deployment_clones).collect();
    // Heap keyed by load: spread pops the least loaded, binpack the most loaded.
    let binpack = demand.strategy == PlacementStrategy::Binpack;
    let key = |load: u64, i: usize| -> (u64, Reverse<usize>) {
        if binpack {
            (load, Reverse(i))
        } else {
            (u64::MAX - load, Reverse(i))
        }
    };
    let mut heap = BinaryHeap::with_capacity(agents.len());
    for (i, a) in agents.iter().enumerate() {
        match static_reason(a, demand) {
            Some(r) => rejections[i] = Some(r),
            None => heap.push(key(load(a, policy, alloc[i]), i)),
        }
    }
    let mut out = Placement::default();
    for clone in clones {
        let mut chosen = None;
        while let Some((_, Reverse(i))) = heap.pop() {
            let f = free_of(&agents[i], alloc[i], policy);
            if let Some(r) = fit_reason(demand, &agents[i], f, held[i]) {
                rejections[i] = Some(r);
                continue;
            }
            chosen = Some(i);
            break;
        }
        match chosen {
            Some(i) => {
                alloc[i].vcpus += demand.size.vcpus;
                alloc[i].memory += demand.size.memory;
                held[i] += 1;
                heap.push(key(load(&agents[i], policy, alloc[i]), i));
                out.placed.push((clone.clone(), i));
            }
            None => {
                let why = agents
                    .iter()
                    .zip(&rejections)
                    .map(|(a, r)| Rejection {
                        agent_id: a.id.clone(),
                        agent_name: a.name.clone(),
                        reason: r.clone().unwrap_or_else(|| "no capacity left".into()),
                    })
                    .collect();
                out.unplaced.push((clone.clone(), why));
            }
        }
    }
    out
}
