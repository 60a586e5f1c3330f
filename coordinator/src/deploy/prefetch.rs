//! Boot artifacts shipped to each agent ahead of its first clone: the kernel in the forms
//! its hypervisors boot, the QEMU TCG firmware, and, with layers over NFS, the base
//! initramfs every clone boots as it is. Each control-loop pass of the leader starts a
//! shipment for every ready agent that lacks the current ones ([`AT_ONCE`] agents at a
//! time), so a first deploy to a new agent, or after a new kernel, ships nothing: here the
//! 52 MB PVH kernel and the base image were 1.2-2.8 s of a first deploy's few seconds.
//! Kubernetes pre-pulls images only when told which; every clone boots these.
//!
//! A shipment that failed is tried again [`RETRY`] later. A deploy that meets one in
//! flight waits for it instead of uploading the same bytes again (`Agents::ship`), and
//! asks the agent what it lacks as always, so nothing here is needed for correctness.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use napalm_proto::v1::{Agent, AgentState};
use tokio::sync::Semaphore;

use super::artifacts::Kernels;
use super::ship::Blob;
use super::Deployer;

/// Agents shipped to at once: the coordinator's uplink, not the agents, is what they share.
pub const AT_ONCE: usize = 8;

/// Wait before a failed shipment to an agent is tried again.
pub const RETRY: Duration = Duration::from_secs(30);

/// What was shipped to which agent.
pub(super) struct Prefetch {
    by_agent: Mutex<HashMap<String, Shipment>>,
    gate: Arc<Semaphore>,
}

impl Prefetch {
    pub(super) fn new() -> Self {
        Self {
            by_agent: Mutex::default(),
            gate: Arc::new(Semaphore::new(AT_ONCE)),
        }
    }
}

/// The last shipment started to one agent.
struct Shipment {
    endpoint: String,
    digests: Vec<String>,
    state: State,
}

#[derive(Clone, Copy)]
enum State {
    InFlight,
    Done,
    Failed(Instant),
}

/// The artifacts every clone on an agent with `hypervisors` boots, without repeats.
pub(super) fn boot_blobs(
    kernels: &Kernels,
    base: Option<&Blob>,
    hypervisors: &[napalm_proto::v1::Hypervisor],
) -> Vec<Blob> {
    let mut out: Vec<Blob> = Vec::new();
    let candidates = hypervisors
        .iter()
        .flat_map(|hv| {
            std::iter::once(kernels.for_hypervisor(*hv)).chain(kernels.firmware_for(*hv))
        })
        .chain(base);
    for b in candidates {
        if !out.iter().any(|o| o.r.sha256 == b.r.sha256) {
            out.push(b.clone());
        }
    }
    out
}

impl Deployer {
    /// Starts, in the background, a shipment of the boot artifacts to every ready agent
    /// that has not been sent the current ones (and forgets agents no longer listed).
    pub(super) fn prefetch(&self, agents: &[Agent]) {
        // A kernel that cannot be read fails every deploy, which says why.
        let Ok(kernels) = self.inner.artifacts.kernels() else {
            return;
        };
        let base = if super::nfs::layers_over_nfs(&self.inner.cfg) {
            self.inner.artifacts.base_blob().ok()
        } else {
            None
        };
        let p = &self.inner.prefetch;
        let mut by_agent = p.by_agent.lock().unwrap_or_else(|e| e.into_inner());
        by_agent.retain(|id, _| agents.iter().any(|a| &a.id == id));
        for a in agents {
            if a.state != AgentState::Ready as i32 || a.grpc_endpoint.is_empty() {
                continue;
            }
            let blobs = boot_blobs(&kernels, base.as_ref(), &super::place::hypervisors(a));
            let digests: Vec<String> = blobs.iter().map(|b| b.r.sha256.clone()).collect();
            if let Some(s) = by_agent.get(&a.id) {
                let settled = match s.state {
                    State::InFlight | State::Done => true,
                    State::Failed(at) => at.elapsed() < RETRY,
                };
                if settled && s.endpoint == a.grpc_endpoint && s.digests == digests {
                    continue;
                }
            }
            by_agent.insert(
                a.id.clone(),
                Shipment {
                    endpoint: a.grpc_endpoint.clone(),
                    digests: digests.clone(),
                    state: State::InFlight,
                },
            );
            let this = self.clone();
            let gate = Arc::clone(&p.gate);
            let (id, endpoint) = (a.id.clone(), a.grpc_endpoint.clone());
            tokio::spawn(async move {
                let Ok(_permit) = gate.acquire_owned().await else {
                    return;
                };
                let started = Instant::now();
                let refs: Vec<&Blob> = blobs.iter().collect();
                let shipped = this.inner.agents.ship(&endpoint, &refs).await;
                let state = match &shipped {
                    Ok(bytes) => {
                        tracing::info!(agent = %id, bytes, took_ms = started.elapsed().as_millis() as u64, "boot artifacts on the agent ahead of its clones");
                        State::Done
                    }
                    Err(e) => {
                        tracing::warn!(agent = %id, error = %e.message(), "shipping the boot artifacts ahead failed; tried again later");
                        State::Failed(Instant::now())
                    }
                };
                let mut by_agent = this
                    .inner
                    .prefetch
                    .by_agent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                // Only the shipment this task started: the agent may have moved since.
                if let Some(s) = by_agent.get_mut(&id) {
                    if s.endpoint == endpoint && s.digests == digests {
                        s.state = state;
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use napalm_proto::v1::Hypervisor;

    fn blob(name: &str) -> Blob {
        Blob::new(name, name.as_bytes().to_vec())
    }

    #[test]
    fn an_agent_gets_each_kernel_its_hypervisors_boot_once_with_the_firmware_and_base() {
        let k = Kernels {
            bzimage: blob("bz"),
            pvh: Some(blob("elf")),
            firmware: Some(blob("rom")),
        };
        let names = |hvs: &[Hypervisor], base: Option<&Blob>| {
            boot_blobs(&k, base, hvs)
                .into_iter()
                .map(|b| b.name)
                .collect::<Vec<_>>()
        };
        let base = blob("base");
        assert_eq!(
            names(&[Hypervisor::Qemu, Hypervisor::Kvm], Some(&base)),
            ["elf", "rom", "base"]
        );
        assert_eq!(names(&[Hypervisor::Kvm], None), ["elf"]);
        assert_eq!(names(&[Hypervisor::Xen, Hypervisor::Test], None), ["bz"]);
        assert!(names(&[], None).is_empty());
    }
}
