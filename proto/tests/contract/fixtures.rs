//! Fully populated instances of every `napalm.v1` message: every field set to a non-default
//! value, so it is encoded and its crossing can be checked (see `coverage`).

use std::collections::HashMap;

use napalm_proto::v1::*;
use prost_types::{Duration, Timestamp};

fn s(v: &str) -> String {
    v.to_owned()
}
fn labels() -> HashMap<String, String> {
    HashMap::from([(s("deployment"), s("grid1")), (s("clone"), s("clone01"))])
}
fn dur(ms: i32) -> Option<Duration> {
    Some(Duration {
        seconds: 1,
        nanos: ms * 1_000_000,
    })
}
fn ts() -> Option<Timestamp> {
    Some(Timestamp {
        seconds: 1_795_000_000,
        nanos: 7,
    })
}

pub fn blob() -> BlobRef {
    BlobRef {
        sha256: s("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
        size: 4_194_304,
    }
}
pub fn resources() -> Resources {
    Resources {
        vcpus: 1,
        memory_bytes: 512 << 20,
    }
}
pub fn boot_timings() -> BootTimings {
    BootTimings {
        phases: vec![BootPhase {
            name: s("mount:1-nfs"),
            start: dur(300),
            duration: dur(250),
        }],
        to_init: dur(900),
        to_registered: dur(950),
    }
}
pub fn stats() -> DomainStats {
    DomainStats {
        cpu_time_ns: 1,
        memory_bytes: 2,
        vcpus: 3,
        net_rx_bytes: 4,
        net_tx_bytes: 5,
        disk_read_bytes: 6,
        disk_write_bytes: 7,
        sampled_at: ts(),
    }
}

pub fn get_capabilities_request() -> GetCapabilitiesRequest {
    GetCapabilitiesRequest {
        include_raw_xml: true,
    }
}
pub fn capabilities() -> Capabilities {
    Capabilities {
        host: Some(HostInfo {
            hostname: s("node1"),
            arch: s("x86_64"),
            cpu_model: s("kvm64"),
            cpus: 2,
            sockets: 1,
            cores: 2,
            threads: 1,
            memory_bytes: 24 << 30,
            free_memory_bytes: 20 << 30,
            huge_pages: Some(HugePages {
                page_bytes: 2 << 20,
                total_bytes: 1 << 30,
                free_bytes: 512 << 20,
            }),
        }),
        guests: vec![GuestCapability {
            os_type: s("hvm"),
            arch: s("x86_64"),
            wordsize: 64,
            emulator: s("/usr/bin/qemu-system-x86_64"),
            machines: vec![s("pc"), s("q35")],
            domain_types: vec![s("qemu")],
        }],
        hypervisors: vec![Hypervisor::Qemu as i32, Hypervisor::Xen as i32],
        libvirt_uri: s("qemu:///system"),
        libvirt_version: s("9.0.0"),
        hypervisor_version: s("7.2.0"),
        agent_version: s("0.1.0"),
        available: Some(resources()),
        raw_xml: s("<capabilities/>"),
        agent_id: s("3b7c0d2e"),
    }
}
pub fn has_blobs_request() -> HasBlobsRequest {
    HasBlobsRequest {
        blobs: vec![blob(), blob()],
    }
}
pub fn has_blobs_response() -> HasBlobsResponse {
    HasBlobsResponse {
        present: vec![blob()],
        missing: vec![blob()],
    }
}
pub fn upload_header() -> UploadBlobRequest {
    UploadBlobRequest {
        part: Some(upload_blob_request::Part::Header(BlobHeader {
            request_id: s("req-1"),
            blob: Some(blob()),
            name: s("vmlinuz"),
        })),
    }
}
pub fn upload_data() -> UploadBlobRequest {
    UploadBlobRequest {
        part: Some(upload_blob_request::Part::Data(vec![
            0x7f, b'E', b'L', b'F',
        ])),
    }
}
pub fn upload_blob_response() -> UploadBlobResponse {
    UploadBlobResponse {
        blob: Some(blob()),
        already_present: true,
    }
}
pub fn artifact() -> Artifact {
    Artifact {
        name: s("vmlinuz"),
        blob: Some(blob()),
        writable: true,
    }
}
pub fn create_domain_request() -> CreateDomainRequest {
    CreateDomainRequest {
        request_id: s("req-2"),
        name: s("clone01"),
        config_xml: s("<domain type='qemu'><name>clone01</name></domain>"),
        artifacts: vec![artifact()],
        start: true,
        restart_policy: RestartPolicy::OnFailure as i32,
        labels: labels(),
        scratch_disks: vec![ScratchDisk {
            name: s("scratch0.img"),
            size_bytes: 4 << 30,
            label: s("napalm-scratch0"),
        }],
        boot_from_template: true,
    }
}
pub fn domain() -> Domain {
    Domain {
        name: s("clone01"),
        uuid: s("6c3b2f1e-0000-4000-8000-000000000001"),
        state: DomainState::Running as i32,
        desired_state: DomainState::Running as i32,
        config_xml: s("<domain type='qemu'><name>clone01</name></domain>"),
        artifacts: vec![artifact()],
        labels: labels(),
        owned: true,
        restart_policy: RestartPolicy::Always as i32,
        resources: Some(resources()),
        stats: Some(stats()),
        created_at: ts(),
    }
}
pub fn get_domain_request() -> GetDomainRequest {
    GetDomainRequest {
        name: s("clone01"),
        include_stats: true,
    }
}
pub fn list_domains_request() -> ListDomainsRequest {
    ListDomainsRequest {
        include_foreign: true,
        label_selector: labels(),
        omit_config: true,
    }
}
pub fn list_domains_response() -> ListDomainsResponse {
    ListDomainsResponse {
        domains: vec![domain()],
    }
}
pub fn set_domain_state_request() -> SetDomainStateRequest {
    SetDomainStateRequest {
        request_id: s("req-3"),
        name: s("clone01"),
        state: DomainState::Shutoff as i32,
        shutdown_timeout: dur(500),
    }
}
pub fn delete_domain_request() -> DeleteDomainRequest {
    DeleteDomainRequest {
        request_id: s("req-4"),
        name: s("clone01"),
        shutdown_timeout: dur(500),
        purge: true,
    }
}
pub fn delete_domain_response() -> DeleteDomainResponse {
    DeleteDomainResponse {
        name: s("clone01"),
        existed: true,
    }
}
pub fn watch_domain_events_request() -> WatchDomainEventsRequest {
    WatchDomainEventsRequest {
        names: vec![s("clone01")],
        since_sequence: 41,
    }
}
pub fn domain_event() -> DomainEvent {
    DomainEvent {
        sequence: 42,
        name: s("clone01"),
        kind: DomainEventKind::Started as i32,
        state: DomainState::Running as i32,
        detail: s("booted"),
        at: ts(),
        took: dur(120),
    }
}
pub fn get_domain_console_request() -> GetDomainConsoleRequest {
    GetDomainConsoleRequest {
        name: s("clone01"),
        lines: 15,
    }
}
pub fn domain_console() -> DomainConsole {
    DomainConsole {
        name: s("clone01"),
        lines: vec![
            s("[    0.000000] Linux version 6.1.0"),
            s("VFS: Cannot open root device"),
        ],
        logged: true,
    }
}

pub fn agent() -> Agent {
    Agent {
        id: s("sha256:ab"),
        name: s("node1"),
        grpc_endpoint: s("http://10.77.0.2:7701"),
        rest_endpoint: s("http://10.77.0.2:7702/napalm"),
        state: AgentState::Ready as i32,
        source: AgentSource::Mdns as i32,
        capabilities: Some(capabilities()),
        allocated: Some(resources()),
        clone_count: 4,
        cert_fingerprint: s("ab"),
        version: s("0.1.0"),
        last_heartbeat: ts(),
        heartbeat_ttl: dur(0),
        labels: labels(),
        state_reason: s("certificate names another agent"),
    }
}
pub fn register_agent_request() -> RegisterAgentRequest {
    RegisterAgentRequest {
        request_id: s("req-5"),
        id: s("sha256:ab"),
        name: s("node1"),
        grpc_endpoint: s("http://10.77.0.2:7701"),
        rest_endpoint: s("http://10.77.0.2:7702/napalm"),
        capabilities: Some(capabilities()),
        cert_fingerprint: s("ab"),
        version: s("0.1.0"),
        labels: labels(),
    }
}
pub fn register_agent_response() -> RegisterAgentResponse {
    RegisterAgentResponse {
        agent: Some(agent()),
        heartbeat_interval: dur(0),
    }
}
pub fn heartbeat_request() -> HeartbeatRequest {
    HeartbeatRequest {
        agent_id: s("sha256:ab"),
        domains: vec![DomainSummary {
            name: s("clone01"),
            state: DomainState::Running as i32,
            labels: labels(),
        }],
        available: Some(resources()),
    }
}
pub fn heartbeat_response() -> HeartbeatResponse {
    HeartbeatResponse {
        heartbeat_interval: dur(0),
        reregister: true,
        stale_domains: vec![StaleDomain {
            name: s("clone01"),
            reason: s("placed on host2 (a1b2c3) by the registry"),
            placed_on_agent_id: s("a1b2c3"),
        }],
    }
}
pub fn list_agents_request() -> ListAgentsRequest {
    ListAgentsRequest {
        states: vec![AgentState::Ready as i32, AgentState::Draining as i32],
    }
}
pub fn list_agents_response() -> ListAgentsResponse {
    ListAgentsResponse {
        agents: vec![agent()],
    }
}
pub fn get_agent_request() -> GetAgentRequest {
    GetAgentRequest { id: s("node1") }
}
pub fn set_agent_state_request() -> SetAgentStateRequest {
    SetAgentStateRequest {
        request_id: s("req-6"),
        id: s("node1"),
        state: AgentState::Draining as i32,
    }
}
pub fn spec() -> DeploymentSpec {
    DeploymentSpec {
        name: s("grid1"),
        count: 8,
        layers: vec![s("base"), s("mpi")],
        mode: CloneMode::Stateful as i32,
        hypervisor: Hypervisor::Qemu as i32,
        arch: s("x86_64"),
        resources: Some(resources()),
        root: s("nfs:10.77.0.1:/"),
        strategy: PlacementStrategy::Binpack as i32,
        max_per_agent: 4,
        agent_selector: labels(),
        kernel_args: s("quiet"),
        kernel: Some(blob()),
        allow_pending: true,
        clones_conf: s("groups: {g: {hosts: {clone01: }}}"),
        clones_conf_file: s("clones.conf"),
        clone_names: vec![s("clone01")],
        max_unavailable: 2,
        boot_timeout: dur(1_500),
        restart_budget: Some(3),
        scratch: vec![
            ScratchMount {
                path: s("/scratch"),
                size_bytes: 256 << 20,
                mode: 0o1777,
                kind: ScratchKind::Tmpfs as i32,
            },
            ScratchMount {
                path: s("/var/tmp"),
                size_bytes: 4 << 30,
                mode: 0o1777,
                kind: ScratchKind::Disk as i32,
            },
        ],
    }
}
pub fn deploy_request() -> DeployRequest {
    DeployRequest {
        request_id: s("req-7"),
        spec: Some(spec()),
        dry_run: true,
    }
}
pub fn clone() -> Clone {
    Clone {
        name: s("clone01"),
        deployment: s("grid1"),
        index: 1,
        agent_id: s("sha256:ab"),
        phase: ClonePhase::Registered as i32,
        domain_state: DomainState::Running as i32,
        addresses: vec![s("10.77.0.101/24")],
        mac: s("52:54:00:00:00:01"),
        layer_hash: s("cafe"),
        boot: Some(boot_timings()),
        registered_at: ts(),
        last_error: s("retried after node2 failed"),
        failed_agents: vec![s("node2")],
        revision: 9,
        last_action: s("placed on node1: declared by the spec"),
        spec_revision: 2,
        restarts: 1,
        started_at: ts(),
        restarted_at: ts(),
        ssh_host_key: s("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyOfClone01"),
        failures: 2,
        failed_at: ts(),
    }
}
pub fn placement_failure() -> PlacementFailure {
    PlacementFailure {
        clone: s("clone09"),
        rejections: vec![AgentRejection {
            agent_id: s("sha256:ab"),
            agent_name: s("node1"),
            reason: s("needs 512 MiB, 256 MiB free"),
        }],
    }
}
pub fn progress_clone() -> DeployProgress {
    DeployProgress {
        event: Some(deploy_progress::Event::Clone(CloneProgress {
            clone: Some(clone()),
            message: s("registered"),
        })),
    }
}
pub fn progress_unplaced() -> DeployProgress {
    DeployProgress {
        event: Some(deploy_progress::Event::Unplaced(placement_failure())),
    }
}
pub fn progress_summary() -> DeployProgress {
    DeployProgress {
        event: Some(deploy_progress::Event::Summary(DeploySummary {
            deployment: s("grid1"),
            requested: 9,
            succeeded: 8,
            failed: 1,
            took: dur(0),
            unplaced: vec![placement_failure()],
        })),
    }
}
pub fn undeploy_request() -> UndeployRequest {
    UndeployRequest {
        request_id: s("req-8"),
        name: s("grid1"),
        purge: true,
    }
}
pub fn deployment() -> Deployment {
    Deployment {
        spec: Some(spec()),
        state: DeploymentState::Ready as i32,
        clones: vec![clone()],
        created_at: ts(),
        updated_at: ts(),
        revision: 10,
        spec_revision: 2,
        previous_spec: Some(DeploymentSpec {
            name: s("grid1"),
            count: 4,
            ..Default::default()
        }),
        rollout: Some(Rollout {
            state: RolloutState::Paused as i32,
            revision: 2,
            updated: 3,
            total: 8,
            message: s("clone04 did not register within 60 s"),
            updated_at: ts(),
        }),
    }
}
pub fn rollout_request() -> RolloutRequest {
    RolloutRequest {
        name: s("grid1"),
        action: RolloutAction::Pause as i32,
    }
}
pub fn list_deployments_response() -> ListDeploymentsResponse {
    ListDeploymentsResponse {
        deployments: vec![deployment()],
    }
}
pub fn get_deployment_request() -> GetDeploymentRequest {
    GetDeploymentRequest { name: s("grid1") }
}
pub fn list_clones_request() -> ListClonesRequest {
    ListClonesRequest {
        deployment: s("grid1"),
    }
}
pub fn list_clones_response() -> ListClonesResponse {
    ListClonesResponse {
        clones: vec![clone()],
    }
}
pub fn get_clone_request() -> GetCloneRequest {
    GetCloneRequest { name: s("clone01") }
}
pub fn register_clone_request() -> RegisterCloneRequest {
    RegisterCloneRequest {
        name: s("clone01"),
        token: s("s3cret"),
        addresses: vec![s("10.77.0.101/24")],
        boot: Some(boot_timings()),
        kernel: s("6.1.0-56-cloud-amd64"),
        boot_id: s("3f2a"),
        agent_id: s("agent-7"),
    }
}
pub fn register_clone_response() -> RegisterCloneResponse {
    RegisterCloneResponse {
        clone: Some(clone()),
    }
}
pub fn watch_events_request() -> WatchEventsRequest {
    WatchEventsRequest {
        kinds: vec![EventKind::Clone as i32, EventKind::Agent as i32],
        deployment: s("grid1"),
        since_revision: 3,
    }
}
pub fn events() -> Vec<Event> {
    let payloads = [
        event::Payload::Agent(agent()),
        event::Payload::Clone(clone()),
        event::Payload::Deployment(deployment()),
    ];
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, p)| Event {
            revision: 4 + i as u64,
            at: ts(),
            deleted: true,
            payload: Some(p),
        })
        .collect()
}
