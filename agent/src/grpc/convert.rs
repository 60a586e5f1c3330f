//! Conversions between core types and `napalm.v1` messages.

use napalm_proto::v1 as pb;

use crate::blobs::BlobId;
use crate::core::{CapabilitiesView, DomainView};
use crate::domain_store::RestartPolicy;
use crate::events::{Event, EventKind};
use crate::hypervisor::{RunState, Stats};

/// Core state → wire state.
pub fn state(s: RunState) -> pb::DomainState {
    match s {
        RunState::Running => pb::DomainState::Running,
        RunState::Blocked => pb::DomainState::Blocked,
        RunState::Paused => pb::DomainState::Paused,
        RunState::Shutdown => pb::DomainState::ShuttingDown,
        RunState::Shutoff => pb::DomainState::Shutoff,
        RunState::Crashed => pb::DomainState::Crashed,
        RunState::Pmsuspended => pb::DomainState::Pmsuspended,
        RunState::Nostate => pb::DomainState::Unspecified,
    }
}

/// Wire state → core target (only the three a client may ask for).
pub fn target(s: i32) -> Option<RunState> {
    match pb::DomainState::try_from(s).ok()? {
        pb::DomainState::Running => Some(RunState::Running),
        pb::DomainState::Shutoff => Some(RunState::Shutoff),
        pb::DomainState::Paused => Some(RunState::Paused),
        _ => None,
    }
}

/// Wire policy → core policy.
pub fn restart(p: i32) -> RestartPolicy {
    match pb::RestartPolicy::try_from(p) {
        Ok(pb::RestartPolicy::OnFailure) => RestartPolicy::OnFailure,
        Ok(pb::RestartPolicy::Always) => RestartPolicy::Always,
        _ => RestartPolicy::Never,
    }
}

fn restart_pb(p: RestartPolicy) -> pb::RestartPolicy {
    match p {
        RestartPolicy::Never => pb::RestartPolicy::Never,
        RestartPolicy::OnFailure => pb::RestartPolicy::OnFailure,
        RestartPolicy::Always => pb::RestartPolicy::Always,
    }
}

/// Blob ref ↔ id.
pub fn blob(b: Option<&pb::BlobRef>) -> BlobId {
    b.map(|b| BlobId {
        sha256: b.sha256.clone(),
        size: b.size,
    })
    .unwrap_or(BlobId {
        sha256: String::new(),
        size: 0,
    })
}

/// Blob id → ref.
pub fn blob_ref(b: &BlobId) -> pb::BlobRef {
    pb::BlobRef {
        sha256: b.sha256.clone(),
        size: b.size,
    }
}

fn ts(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// Duration from the wire (`None` when absent or negative).
pub fn duration(d: Option<&prost_types::Duration>) -> Option<std::time::Duration> {
    let d = d?;
    if d.seconds < 0 || d.nanos < 0 {
        return None;
    }
    Some(std::time::Duration::new(d.seconds as u64, d.nanos as u32))
}

/// Domain counters.
pub fn stats(s: &Stats, sampled_at_ms: u64) -> pb::DomainStats {
    pb::DomainStats {
        cpu_time_ns: s.cpu_time_ns,
        memory_bytes: s.memory_bytes,
        vcpus: s.vcpus,
        net_rx_bytes: s.net_rx_bytes,
        net_tx_bytes: s.net_tx_bytes,
        disk_read_bytes: s.disk_read_bytes,
        disk_write_bytes: s.disk_write_bytes,
        sampled_at: Some(ts(sampled_at_ms)),
    }
}

/// Domain view → message; its counters, if sampled, are stamped `sampled_at_ms`.
pub fn domain(d: &DomainView, config_xml: String, sampled_at_ms: u64) -> pb::Domain {
    pb::Domain {
        name: d.name.clone(),
        uuid: d.uuid.clone(),
        state: state(d.state) as i32,
        desired_state: d.desired.map(state).unwrap_or(pb::DomainState::Unspecified) as i32,
        config_xml,
        artifacts: d
            .artifacts
            .iter()
            .map(|a| pb::Artifact {
                name: a.name.clone(),
                blob: Some(blob_ref(&a.blob)),
                writable: a.writable,
            })
            .collect(),
        labels: d.labels.clone().into_iter().collect(),
        owned: d.owned,
        restart_policy: restart_pb(d.restart) as i32,
        resources: Some(pb::Resources {
            vcpus: d.vcpus,
            memory_bytes: d.memory_bytes,
        }),
        stats: d.stats.as_ref().map(|s| stats(s, sampled_at_ms)),
        created_at: (d.created_at_ms > 0).then(|| ts(d.created_at_ms)),
    }
}

/// Hypervisor family of a libvirt domain type.
pub fn hypervisor(t: &str) -> pb::Hypervisor {
    match t {
        "qemu" => pb::Hypervisor::Qemu,
        "kvm" => pb::Hypervisor::Kvm,
        "xen" => pb::Hypervisor::Xen,
        "test" => pb::Hypervisor::Test,
        _ => pb::Hypervisor::Unspecified,
    }
}

/// Capabilities view → message, with this agent's id.
pub fn capabilities(c: &CapabilitiesView, raw: bool, agent_id: &str) -> pb::Capabilities {
    let h = &c.host;
    pb::Capabilities {
        host: Some(pb::HostInfo {
            hostname: h.hostname.clone(),
            arch: c.arch.clone(),
            cpu_model: h.cpu_model.clone(),
            cpus: h.cpus,
            sockets: h.sockets,
            cores: h.cores,
            threads: h.threads,
            memory_bytes: h.memory_bytes,
            free_memory_bytes: h.free_memory_bytes,
            huge_pages: Some(pb::HugePages {
                page_bytes: h.huge_pages.page_bytes,
                total_bytes: h.huge_pages.total_bytes,
                free_bytes: h.huge_pages.free_bytes,
            }),
        }),
        guests: c
            .guests
            .iter()
            .map(|g| pb::GuestCapability {
                os_type: g.os_type.clone(),
                arch: g.arch.clone(),
                wordsize: g.wordsize,
                emulator: g.emulator.clone(),
                machines: g.machines.clone(),
                domain_types: g.domain_types.clone(),
            })
            .collect(),
        hypervisors: c
            .hypervisors
            .iter()
            .map(|t| hypervisor(t) as i32)
            .filter(|h| *h != 0)
            .collect(),
        libvirt_uri: h.uri.clone(),
        libvirt_version: h.libvirt_version.clone(),
        hypervisor_version: h.hypervisor_version.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        available: Some(pb::Resources {
            vcpus: c.free_vcpus,
            memory_bytes: c.free_memory_bytes,
        }),
        raw_xml: if raw {
            c.raw_xml.clone()
        } else {
            String::new()
        },
        agent_id: agent_id.to_owned(),
    }
}

/// Event → message.
pub fn event(e: &Event) -> pb::DomainEvent {
    let kind = match e.kind {
        EventKind::Defined => pb::DomainEventKind::Defined,
        EventKind::Undefined => pb::DomainEventKind::Undefined,
        EventKind::Started => pb::DomainEventKind::Started,
        EventKind::Suspended => pb::DomainEventKind::Suspended,
        EventKind::Resumed => pb::DomainEventKind::Resumed,
        EventKind::Stopped => pb::DomainEventKind::Stopped,
        EventKind::Shutdown => pb::DomainEventKind::Shutdown,
        EventKind::Crashed => pb::DomainEventKind::Crashed,
        EventKind::Restarted => pb::DomainEventKind::Restarted,
        EventKind::Adopted => pb::DomainEventKind::Adopted,
    };
    pb::DomainEvent {
        sequence: e.sequence,
        name: e.name.clone(),
        kind: kind as i32,
        state: state(e.state) as i32,
        detail: e.detail.clone(),
        at: Some(ts(e.at_ms)),
        took: e.took_ms.map(|ms| prost_types::Duration {
            seconds: (ms / 1000) as i64,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        }),
    }
}
