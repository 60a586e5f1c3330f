//! Bringing one clone up on its agent: the kernel command line for its mode, shipping its
//! artifacts, creating (or replacing) and starting its domain, retrying on other agents,
//! and recording a failure with its reason.

use std::collections::HashMap;
use std::sync::Arc;

use napalm_proto::v1::{
    Agent, Clone, ClonePhase, CreateDomainRequest, DomainState, Hypervisor, RestartPolicy,
    ScratchDisk,
};

use napalm_initramfs::cmdline::{fast_boot_args, KernelCmdline, TCG_CLOCK_ARG};
use napalm_initramfs::ip::{IpConfig, StaticIp};
use napalm_initramfs::rootspec::{Device, Role, RootParseError, RootSpec};

use tracing::Instrument as _;

use super::Run;
use crate::deploy::artifacts::{BuiltLayer, Kernels};
use crate::deploy::place::{hypervisor_on, place};
use crate::deploy::xml::{domain_xml, DomainParams};
use crate::deploy::{chain, DeployError};
use crate::registry::RegistryError;

impl Run {
    /// The clone's kernel command line, as a value: for a QEMU TCG guest
    /// [`napalm_initramfs::cmdline::TCG_CLOCK_ARG`], the boot-speed defaults
    /// ([`napalm_initramfs::cmdline::FAST_BOOT_ARGS`]), the site's arguments, `root=` (the
    /// spec's root, the clone's layer — over NFS or appended to its initramfs — and its
    /// upper layer: tmpfs, or its state image over NFS), `ip=` (its static address, or
    /// DHCP), `napalm.scratch=` (the spec's scratch paths, when any), then the
    /// deployment's own arguments and `napalm.agent=` naming the agent the
    /// domain is created on (the register hook reports it; the registry accepts only the
    /// domain it placed).
    fn cmdline(
        &self,
        c: &Clone,
        agent: &Agent,
        built: &BuiltLayer,
    ) -> Result<KernelCmdline, DeployError> {
        let cfg = &self.inner.cfg;
        let bad = |e: RootParseError| DeployError::Cmdline(Arc::new(e));
        let mut devices: Vec<Device> = RootSpec::parse(&self.spec.root)
            .map_err(bad)?
            .devices
            .into_iter()
            .map(|d| d.with_role(Role::Ro))
            .collect();
        let layer = if crate::deploy::nfs::layers_over_nfs(cfg) {
            let root = self
                .inner
                .artifacts
                .layer_root(&self.spec.name, &c.name, &built.hash);
            Device::nfs(&cfg.server, &root.to_string_lossy())
        } else {
            Device::layer(&c.name)
        };
        devices.push(layer.map_err(bad)?.with_role(Role::Ro));
        let upper = match &cfg.exports {
            Some(x) if self.stateful() => {
                let img = x.state_path(&self.spec.name, &c.name).join("upper.img");
                Device::loop_nfs(&cfg.server, &img.to_string_lossy()).map_err(bad)?
            }
            _ => Device::tmpfs(),
        };
        devices.push(upper.with_role(Role::Rw));
        let ip = match cfg
            .addresses
            .and_then(|p| crate::deploy::addresses::assigned(c).map(|a| (p, a)))
        {
            Some((p, a)) => {
                let mut ip = StaticIp::new(a, p.netmask());
                ip.server = cfg.server.parse().ok();
                ip.hostname = Some(c.name.clone());
                ip.device = Some("eth0".into());
                IpConfig::Static(ip)
                    .checked()
                    .map_err(|e| DeployError::Ip(Arc::new(e)))?
            }
            None => IpConfig::dhcp(),
        };
        // The boot-speed defaults (each one's reason: `FAST_BOOT_ARGS`) go first, so the
        // site's own arguments after them win; `napalm.fastboot=0` among those drops them.
        // Checked when the spec was normalized; a stored spec that no longer reads fails
        // the clone rather than booting it without its scratch.
        let scratch = crate::deploy::scratch::scratch_spec(&self.spec)
            .map_err(|e| DeployError::Scratch(Arc::new(e)))?;
        // Only a QEMU guest without ACPI cannot calibrate its TSC (TCG: no HPET, no PM
        // timer, no paravirtual clock); no TCG guest keeps time on its TSC (`TCG_CLOCK_ARG`).
        let (calibrated_tsc, tcg) = match hypervisor_on(&self.spec, agent) {
            Hypervisor::Qemu | Hypervisor::Unspecified => (cfg.guest_acpi, true),
            Hypervisor::Kvm | Hypervisor::Xen | Hypervisor::Test => (true, false),
        };
        let mut line = KernelCmdline::new(RootSpec::new(devices).map_err(bad)?, ip)
            .scratch(scratch)
            .before(if tcg { TCG_CLOCK_ARG } else { "" })
            .before(fast_boot_args(&cfg.kernel_args, calibrated_tsc))
            .before(cfg.kernel_args.clone())
            .after(self.spec.kernel_args.clone());
        // Agent ids are names or hex fingerprints; one that a command line cannot carry
        // as one word is left out (the registration is then not checked).
        let word = |ch: char| ch.is_ascii_alphanumeric() || "._:-".contains(ch);
        if !agent.id.is_empty() && agent.id.chars().all(word) {
            line = line.after(format!("napalm.agent={}", agent.id));
        }
        Ok(line)
    }

    /// Ships and starts one clone, retrying on other agents.
    pub(super) async fn bring_up(
        &self,
        mut c: Clone,
        layer: Option<Result<BuiltLayer, DeployError>>,
        kernel: Result<Kernels, DeployError>,
        agents: &[Agent],
    ) -> Result<(), RegistryError> {
        let (built, kernel) = match (layer, kernel) {
            (Some(Ok(l)), Ok(k)) => (l, k),
            (Some(Err(e)), _) => return self.fail(&c, &format!("layer: {}", chain(&e))).await,
            (_, Err(e)) => return self.fail(&c, &format!("kernel: {}", chain(&e))).await,
            (None, Ok(_)) => return self.fail(&c, "layer was not built").await,
        };
        // A registered clone whose layer did not change stays registered: a re-run only
        // checks its domain is there and running (it will not boot, so not report, again).
        // A changed layer (or boot input) replaces the domain, so the clone boots and
        // registers anew: its recorded hash changes only once the new domain is created,
        // so a run that dies in between replaces it again.
        let replace = !c.layer_hash.is_empty() && c.layer_hash != built.hash;
        // A clone recorded up whose agent, when the run began, had its domain dead (shut
        // off, crashed, or lost) boots again: a new boot, with a boot slot (its dead
        // boot's is let go) and a fresh boot timeout, and it registers anew.
        let up = crate::deploy::restart::started;
        let lost = up(c.phase)
            && self
                .listed
                .get(&c.agent_id)
                .is_some_and(|running| !running.contains(&c.name));
        let now = crate::clock::timestamp(self.inner.registry.clock().now());
        if lost {
            tracing::info!(clone = %c.name, agent = %c.agent_id, "its domain is not running on its agent: booting it again");
            self.inner.boot_slots.let_go(&c.name);
        }
        let revision = self.stored.spec_revision;
        if let Some(u) = self
            .set_progress(&c.name, |k| {
                k.spec_revision = revision;
                let was_up = up(k.phase);
                if k.phase < ClonePhase::Layer as i32 || ((replace || lost) && was_up) {
                    k.phase = ClonePhase::Layer as i32;
                }
                // A restart, as the control loop's are: it counts against the restart
                // budget, and its agent requests are new ones ([`boot_again`]), not
                // replays of the boot that died.
                if lost && was_up {
                    k.restarts = k.restarts.saturating_add(1);
                    k.restarted_at = Some(now);
                    k.last_action = "restarted by a deploy: its domain was not running".into();
                }
            })
            .await?
        {
            c = u;
            self.report(
                &c,
                if lost {
                    "layer built; its domain was not running: it boots again"
                } else {
                    "layer built"
                },
            )
            .await;
        }
        for attempt in 0..self.inner.cfg.attempts.max(1) {
            let Some(agent) = agents.iter().find(|a| a.id == c.agent_id) else {
                return self
                    .fail(&c, &DeployError::AgentGone(c.agent_id.clone()).to_string())
                    .await;
            };
            match self.create_on(&c, agent, &built, &kernel, replace).await {
                Ok(()) => return Ok(()),
                Err(e @ DeployError::Withdrawn(_)) => {
                    self.report(&c, &e.to_string()).await;
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(clone = %c.name, agent = %agent.id, error = %e, "bring-up failed");
                    self.inner.agents.forget(&agent.grpc_endpoint).await;
                    self.forget_shipped(&agent.grpc_endpoint);
                    let failed_on = agent.id.clone();
                    let mut avoid = c.failed_agents.clone();
                    avoid.push(failed_on.clone());
                    let rest: Vec<Agent> = agents
                        .iter()
                        .filter(|a| !avoid.contains(&a.id))
                        .cloned()
                        .collect();
                    let p = place(
                        &self.inner.cfg,
                        &self.spec,
                        std::slice::from_ref(&c.name),
                        &rest,
                        &HashMap::new(),
                    );
                    let next = p.placed.first().map(|(_, i)| rest[*i].id.clone());
                    let msg = format!("on {}: {}", agent.name, chain(&e));
                    match next {
                        Some(next) if attempt + 1 < self.inner.cfg.attempts => {
                            if let Some(u) = self
                                .set(&c.name, |k| {
                                    k.failed_agents.push(failed_on.clone());
                                    k.agent_id = next.clone();
                                    k.phase = ClonePhase::Scheduled as i32;
                                    k.last_error = msg.clone();
                                })
                                .await?
                            {
                                c = u;
                                self.report(&c, &format!("retrying elsewhere after failing {msg}"))
                                    .await;
                            }
                        }
                        // Its agent refused or failed it: the next placement avoids it.
                        _ => return self.fail_on(&c, &msg, true).await,
                    }
                }
            }
        }
        Ok(())
    }

    /// Forgets what this run shipped to the agent at `endpoint`.
    fn forget_shipped(&self, endpoint: &str) {
        self.shipped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(ep, ..), _| ep != endpoint);
    }

    async fn create_on(
        &self,
        c: &Clone,
        agent: &Agent,
        built: &BuiltLayer,
        kernels: &Kernels,
        replace: bool,
    ) -> Result<(), DeployError> {
        let ep = &agent.grpc_endpoint;
        let hv = hypervisor_on(&self.spec, agent);
        let kernel = kernels.for_hypervisor(hv);
        let firmware = kernels.firmware_for(hv);
        // A place among the clones shipping or being created (`Run::places`), let go of
        // while waiting for a boot slot; a withdrawal does not wait for one either.
        let place = || async {
            tokio::select! {
                p = self.places.acquire() => Ok(p.ok()),
                by = self.withdrawn.signalled() => Err(DeployError::Withdrawn(by)),
            }
        };
        let shipping_place = place().await?;
        let shipping = std::time::Instant::now();
        let once = {
            let key = (
                ep.clone(),
                kernel.r.sha256.clone(),
                built.image.r.sha256.clone(),
                firmware.map(|f| f.r.sha256.clone()),
            );
            let mut shipped = self.shipped.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(shipped.entry(key).or_default())
        };
        // Each clone's ship span covers its wait; the agent's calls hang under the span of
        // the clone whose bring-up made them.
        once.get_or_try_init(|| async {
            self.inner
                .agents
                .ship(
                    ep,
                    &std::iter::once(kernel)
                        .chain(firmware)
                        .chain([&built.image])
                        .collect::<Vec<_>>(),
                )
                .await
                .map(drop)
        })
        .instrument(tracing::info_span!("ship"))
        .await
        .map_err(|e| DeployError::agent("shipping", &e))?;
        self.inner.metrics.phase("ship", shipping.elapsed());
        if let Some(u) = self
            .set_progress(&c.name, |k| {
                // Forward only: a re-run that checks an unchanged running clone must not
                // show it down (a rollout's gate, `napalmctl watch` and operators read
                // these phases); a replaced one went back to `Layer` above.
                if k.phase < ClonePhase::Shipped as i32 {
                    k.phase = ClonePhase::Shipped as i32;
                }
            })
            .await?
        {
            self.report(&u, &format!("artifacts on {}", agent.name))
                .await;
        }
        let r = self.spec.resources.unwrap_or_default();
        let cmdline = self.cmdline(c, agent, built)?.to_string();
        // Scratch disks: the agent makes each with the label napalm-init looks for.
        let scratch_disks: Vec<ScratchDisk> = crate::deploy::scratch::scratch_spec(&self.spec)
            .map_err(|e| DeployError::Scratch(Arc::new(e)))?
            .disks()
            .enumerate()
            .map(|(i, (label, m))| ScratchDisk {
                name: format!("scratch{i}.img"),
                size_bytes: m.size(),
                label,
            })
            .collect();
        let disk_names: Vec<String> = scratch_disks.iter().map(|d| d.name.clone()).collect();
        let xml = domain_xml(
            hv,
            &DomainParams {
                name: &c.name,
                vcpus: r.vcpus,
                memory: r.memory_bytes,
                kernel: &kernel.name,
                firmware: firmware.map(|f| f.name.as_str()),
                cmdline: &cmdline,
                state_disk: None,
                scratch_disks: &disk_names,
                transient_scratch: !self.stateful(),
                mac: &c.mac,
                network: if hv == Hypervisor::Test {
                    None
                } else {
                    self.inner.cfg.network.as_deref()
                },
                // Only a pool address is known before boot (a DHCP one may change).
                ip: self
                    .inner
                    .cfg
                    .addresses
                    .and_then(|_| crate::deploy::addresses::assigned(c)),
                acpi: self.inner.cfg.guest_acpi,
                hugepages: self.inner.cfg.guest_hugepages,
            },
        );
        let mut request = CreateDomainRequest {
            // Same clone, incarnation and boot inputs: a re-run replays the agent's answer.
            // A clone placed again after it failed somewhere is a new attempt: the agent
            // must not replay an earlier answer, not even a success on the same agent
            // whose domain has since been removed. Within a deploy each retry adds a
            // failed agent; each failure the loop retries has its own `failed_at`; each
            // boot again of a clone whose domain died, its own `restarted_at`.
            request_id: format!(
                "{}-{}-{}{}{}{}",
                c.name,
                self.generation,
                &built.hash[..16.min(built.hash.len())],
                if c.failed_agents.is_empty() {
                    String::new()
                } else {
                    format!("-f{}", c.failed_agents.len())
                },
                c.failed_at
                    .map(|t| format!("-t{:x}{:x}", t.seconds, t.nanos))
                    .unwrap_or_default(),
                boot_again(c),
            ),
            name: c.name.clone(),
            config_xml: xml,
            artifacts: vec![
                napalm_proto::v1::Artifact {
                    name: kernel.name.clone(),
                    blob: Some(kernel.r.clone()),
                    writable: false,
                },
                napalm_proto::v1::Artifact {
                    name: "initrd.img".into(),
                    blob: Some(built.image.r.clone()),
                    writable: false,
                },
            ]
            .into_iter()
            .chain(firmware.map(|f| napalm_proto::v1::Artifact {
                name: f.name.clone(),
                blob: Some(f.r.clone()),
                writable: false,
            }))
            .collect(),
            start: true,
            // The control loop restarts a clone that died, with a budget and backoff,
            // then replaces it elsewhere; an agent restarting it too would hide deaths.
            restart_policy: RestartPolicy::Never as i32,
            labels: HashMap::from([
                ("deployment".to_owned(), self.spec.name.clone()),
                ("clone".to_owned(), c.name.clone()),
            ]),
            boot_from_template: self.inner.cfg.boot_from_template
                && matches!(
                    hv,
                    Hypervisor::Qemu | Hypervisor::Kvm | Hypervisor::Unspecified
                )
                && scratch_disks.is_empty()
                && crate::deploy::nfs::layers_over_nfs(&self.inner.cfg),
            scratch_disks,
        };
        // The digest of the root this coordinator exports, when the clone boots it: the
        // agent reports it as the clone's host.image.id.
        let exported = self
            .inner
            .cfg
            .exports
            .as_ref()
            .map(|x| x.config().root.clone());
        if let Some(d) = self
            .inner
            .roots
            .of(&self.spec.root, &self.inner.cfg.server, exported.as_deref())
            .await
        {
            request.labels.insert("root".to_owned(), d);
        }
        drop(shipping_place);
        // A boot slot on the agent first (an older domain it replaces keeps running
        // meanwhile): booting many more TCG guests than the host has CPUs stretches every
        // boot. Not for a clone already up whose domain stays (a re-run checking it, such
        // as a newer deploy's while the clone still boots): the create below only finds
        // its domain running; if it still boots, it holds the slot of the run that
        // started it. (One whose domain was not running is back at `Layer`, above.)
        let checking = !replace
            && (c.phase == ClonePhase::Running as i32 || c.phase == ClonePhase::Registered as i32);
        let boot_slots = &self.inner.boot_slots;
        let slot = match (!checking)
            .then(|| boot_slots.try_admit(agent, hv))
            .flatten()
        {
            Some(Err(slots)) => {
                self.report(
                    c,
                    &format!(
                        "waiting to boot: {slots} clones booting on {} ({slots} at once)",
                        agent.name
                    ),
                )
                .await;
                // An undeploy or a newer deploy does not wait for this clone's slot: it is
                // not started.
                tokio::select! {
                    slot = boot_slots.admit(agent, hv).instrument(tracing::info_span!("admit")) => slot,
                    by = self.withdrawn.signalled() => return Err(DeployError::Withdrawn(by)),
                }
            }
            Some(Ok(slot)) => Some(slot),
            None => None,
        };
        let _creating_place = place().await?;
        let agents = &self.inner.agents;
        let creating = std::time::Instant::now();
        // Every call to the agent from here to the running domain is in it.
        let create_span = tracing::info_span!("create");
        if replace {
            // Its domain runs an older layer or spec. With layers over NFS the domain's
            // definition may not change at all (same paths), so the agent would keep it
            // running: delete it first so that the clone boots what it is now.
            tracing::info!(clone = %c.name, agent = %agent.id, "replacing its domain of an older spec");
            match agents
                .delete(ep, &c.name, format!("replace-{}", request.request_id))
                .instrument(create_span.clone())
                .await
            {
                Ok(_) => {}
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => {
                    return Err(DeployError::agent(
                        "replacing its domain of an older spec",
                        &e,
                    ))
                }
            }
        }
        let created = match agents
            .create(ep, request.clone())
            .instrument(create_span.clone())
            .await
        {
            // The agent holds this clone's domain from an older layer (its templates
            // changed, or another coordinator built it before a takeover): the registry
            // places the clone here, so converge by replacing it. A domain the agent does
            // not manage is refused differently (conflict) and never touched.
            Err(e) if e.code() == tonic::Code::AlreadyExists => {
                tracing::info!(clone = %c.name, agent = %agent.id, "replacing its domain of an older layer");
                let id = format!("replace-{}", request.request_id);
                agents
                    .delete(ep, &c.name, id)
                    .instrument(create_span.clone())
                    .await
                    .map_err(|e| {
                        DeployError::agent("replacing its domain of an older layer", &e)
                    })?;
                agents
                    .create(ep, request)
                    .instrument(create_span.clone())
                    .await
            }
            r => r,
        };
        let domain = created.map_err(|e| DeployError::agent("creating the domain", &e))?;
        // A create interrupted between define and start (a coordinator killed mid-call)
        // leaves the domain defined; the retry returns it as it is, so start it here.
        let domain = if domain.state == DomainState::Running as i32 {
            domain
        } else {
            self.inner
                .agents
                .start(
                    ep,
                    &c.name,
                    format!("start-{}-{}{}", c.name, self.generation, boot_again(c)),
                )
                .instrument(create_span.clone())
                .await
                .map_err(|e| DeployError::agent("starting the domain", &e))?
        };
        self.inner.metrics.phase("create", creating.elapsed());
        drop(create_span);
        let running = domain.state == DomainState::Running as i32;
        let now = crate::clock::timestamp(self.inner.registry.clock().now());
        if let Some(u) = self
            .set_progress(&c.name, |k| {
                k.domain_state = domain.state;
                k.layer_hash = built.hash.clone();
                // The boot timeout counts from the start that made it running.
                if running
                    && (k.started_at.is_none()
                        || (k.phase != ClonePhase::Running as i32
                            && k.phase != ClonePhase::Registered as i32))
                {
                    k.started_at = Some(now);
                }
                if k.phase != ClonePhase::Registered as i32 {
                    k.phase = if running {
                        ClonePhase::Running
                    } else {
                        ClonePhase::Defined
                    } as i32;
                }
            })
            .await?
        {
            self.report(
                &u,
                &format!(
                    "{} on {}",
                    if running { "running" } else { "defined" },
                    agent.name
                ),
            )
            .await;
        }
        // The slot stays taken while the clone boots, which its record now says (a domain
        // only defined lets it go here).
        if let (Some(slot), true) = (slot, running) {
            self.inner.boot_slots.hold_while_booting(
                slot,
                self.inner.registry.clone(),
                c.name.clone(),
                self.inner.boot_timeout(&self.spec),
            );
        }
        Ok(())
    }
}

/// What sets apart the agent requests of a clone's boot again after its domain died
/// (`restarted_at`): without it a re-run would replay the answers of the boot that died.
fn boot_again(c: &Clone) -> String {
    c.restarted_at
        .map(|t| format!("-r{:x}{:x}", t.seconds, t.nanos))
        .unwrap_or_default()
}
