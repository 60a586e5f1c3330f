//! The gRPC AgentService over the same core: blobs (upload, digest check, has), create
//! from blobs with request-id idempotency, get/list/state/delete, the event stream, and
//! authentication.

use std::collections::HashMap;

use napalm_proto::v1 as pb;
use napalm_proto::ApiError;
use pb::agent_service_client::AgentServiceClient;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use crate::common::*;

type Client = AgentServiceClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
>;

fn with_token(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("meta"),
    );
    Ok(r)
}

async fn client(a: &TestAgent) -> Client {
    let addr = a.running().grpc_addr.expect("grpc");
    let ch = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    AgentServiceClient::with_interceptor(ch, with_token as fn(_) -> _)
}

fn blob_ref(data: &[u8]) -> pb::BlobRef {
    pb::BlobRef {
        sha256: hex::encode(Sha256::digest(data)),
        size: data.len() as u64,
    }
}

async fn upload(
    c: &mut Client,
    blob: pb::BlobRef,
    data: Vec<u8>,
) -> Result<pb::UploadBlobResponse, tonic::Status> {
    use pb::upload_blob_request::Part;
    let mut msgs = vec![pb::UploadBlobRequest {
        part: Some(Part::Header(pb::BlobHeader {
            request_id: String::new(),
            blob: Some(blob),
            name: "test".into(),
        })),
    }];
    for chunk in data.chunks(3) {
        msgs.push(pb::UploadBlobRequest {
            part: Some(Part::Data(chunk.to_vec())),
        });
    }
    c.upload_blob(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

/// An agent stopping ends the event streams its watchers hold open (a coordinator keeps
/// one per agent): its gRPC server's graceful shutdown does not wait on them.
#[tokio::test]
async fn an_agent_stops_at_once_with_a_watcher_connected() {
    let mut a = TestAgent::start(Some(TOKEN)).await;
    let mut c = client(&a).await;
    let mut events = c
        .watch_domain_events(pb::WatchDomainEventsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    // Without the end of the stream, the stop never returns.
    tokio::time::timeout(std::time::Duration::from_secs(10), a.stop())
        .await
        .expect("the agent stops with a watcher connected");
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), events.message())
        .await
        .expect("the stream ended");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
}

#[tokio::test]
async fn blobs_domains_events_over_grpc() {
    let a = TestAgent::start(Some(TOKEN)).await;
    let mut c = client(&a).await;
    let mut events = c
        .watch_domain_events(pb::WatchDomainEventsRequest {
            names: vec!["g-one".into()],
            since_sequence: 0,
        })
        .await
        .expect("watch")
        .into_inner();

    let kernel = b"kernel-bytes-for-grpc".to_vec();
    let kref = blob_ref(&kernel);
    let has = c
        .has_blobs(pb::HasBlobsRequest {
            blobs: vec![kref.clone()],
        })
        .await
        .expect("has")
        .into_inner();
    assert_eq!(has.missing, vec![kref.clone()]);
    // Wrong digest: refused and not stored.
    let bad = pb::BlobRef {
        sha256: "0".repeat(64),
        size: kernel.len() as u64,
    };
    let e = upload(&mut c, bad.clone(), kernel.clone())
        .await
        .expect_err("digest mismatch");
    assert!(
        matches!(
            ApiError::from_status(&e),
            Some(ApiError::DigestMismatch { .. })
        ),
        "{e:?}"
    );
    let r = upload(&mut c, kref.clone(), kernel.clone())
        .await
        .expect("upload");
    assert!(!r.already_present);
    let r = upload(&mut c, kref.clone(), kernel.clone())
        .await
        .expect("upload again");
    assert!(r.already_present);
    let has = c
        .has_blobs(pb::HasBlobsRequest {
            blobs: vec![kref.clone(), bad.clone()],
        })
        .await
        .expect("has")
        .into_inner();
    assert_eq!((has.present, has.missing), (vec![kref.clone()], vec![bad]));

    let initrd = b"initrd".to_vec();
    let iref = blob_ref(&initrd);
    upload(&mut c, iref.clone(), initrd).await.expect("upload");
    let req = pb::CreateDomainRequest {
        request_id: "create-g-one".into(),
        name: "g-one".into(),
        config_xml: test_xml("g-one").replace(
            "<devices>",
            "<devices><disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='scratch0.img'/><target dev='vda' bus='virtio'/></disk>",
        ),
        artifacts: vec![
            pb::Artifact {
                name: "vmlinuz".into(),
                blob: Some(kref.clone()),
                writable: false,
            },
            pb::Artifact {
                name: "initrd.img".into(),
                blob: Some(iref.clone()),
                writable: true,
            },
        ],
        start: true,
        restart_policy: pb::RestartPolicy::Always as i32,
        labels: HashMap::from([("deployment".to_owned(), "d1".to_owned())]),
        boot_from_template: false,
        scratch_disks: vec![pb::ScratchDisk {
            name: "scratch0.img".into(),
            size_bytes: 64 << 20,
            label: "napalm-scratch0".into(),
        }],
    };
    let d = c
        .create_domain(req.clone())
        .await
        .expect("create")
        .into_inner();
    assert_eq!(d.state, pb::DomainState::Running as i32);
    assert!(d.owned);
    // The same request id: the first result, not a second domain.
    let d2 = c
        .create_domain(req.clone())
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(d.uuid, d2.uuid);
    // The kernel is shared with the blob store (hard link), the writable file is a copy.
    let files = a.dir.path().join("state/domains/g-one/files");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(files.join("vmlinuz")).expect("m").nlink(),
        2
    );
    assert_eq!(
        std::fs::metadata(files.join("initrd.img"))
            .expect("m")
            .nlink(),
        1
    );
    // The scratch disk was made in the domain's directory: sparse, ext4, its label.
    let disk = std::fs::metadata(files.join("scratch0.img")).expect("scratch disk");
    assert_eq!(disk.len(), 64 << 20);
    assert!(
        disk.blocks() * 512 < 8 << 20,
        "{} bytes used",
        disk.blocks() * 512
    );
    let mut sb = vec![0u8; 2048];
    use std::io::Read as _;
    std::fs::File::open(files.join("scratch0.img"))
        .and_then(|mut f| f.read_exact(&mut sb))
        .expect("read superblock");
    assert_eq!(&sb[1024 + 56..1024 + 58], &[0x53, 0xEF], "ext4 magic");
    assert_eq!(&sb[1024 + 120..1024 + 135], b"napalm-scratch0");
    // Served by REST too: one core.
    let r = reqwest::Client::new()
        .get(a.url("/domain/g-one/vmlinuz"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(&r.bytes().await.expect("b")[..], &kernel[..]);

    let g = c
        .get_domain(pb::GetDomainRequest {
            name: "g-one".into(),
            include_stats: true,
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(g.labels.get("deployment").map(String::as_str), Some("d1"));
    assert!(g.stats.is_some());
    let l = c
        .list_domains(pb::ListDomainsRequest {
            include_foreign: true,
            label_selector: HashMap::new(),
            omit_config: false,
        })
        .await
        .expect("list")
        .into_inner();
    let foreign = l.domains.iter().find(|d| d.name == "test" && !d.owned);
    // Its UUID as libvirt's own string form writes it (the listing formats the bytes).
    let uuid = std::process::Command::new("virsh")
        .args(["-c", "test:///default", "domuuid", "test"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .expect("virsh domuuid");
    assert_eq!(foreign.map(|d| d.uuid.as_str()), Some(uuid.as_str()));
    let l = c
        .list_domains(pb::ListDomainsRequest {
            include_foreign: false,
            label_selector: HashMap::from([("deployment".to_owned(), "d1".to_owned())]),
            omit_config: false,
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(l.domains.len(), 1);
    assert!(
        l.domains[0].config_xml.contains("<name>g-one</name>"),
        "a listing carries each owned domain's config: {:?}",
        l.domains[0].config_xml
    );
    // Without the config (what the coordinator's control loop asks for): the same
    // domain, state and labels, no XML.
    let bare = c
        .list_domains(pb::ListDomainsRequest {
            include_foreign: false,
            label_selector: HashMap::from([("deployment".to_owned(), "d1".to_owned())]),
            omit_config: true,
        })
        .await
        .expect("list without config")
        .into_inner();
    assert_eq!(bare.domains.len(), 1);
    assert_eq!(bare.domains[0].config_xml, "");
    assert_eq!(
        pb::Domain {
            config_xml: String::new(),
            ..l.domains[0].clone()
        },
        bare.domains[0]
    );

    let s = c
        .set_domain_state(pb::SetDomainStateRequest {
            request_id: String::new(),
            name: "g-one".into(),
            state: pb::DomainState::Shutoff as i32,
            shutdown_timeout: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
        })
        .await
        .expect("stop")
        .into_inner();
    assert_eq!(s.state, pb::DomainState::Shutoff as i32);
    assert_eq!(s.desired_state, pb::DomainState::Shutoff as i32);

    let e = c
        .get_domain(pb::GetDomainRequest {
            name: "nope".into(),
            include_stats: false,
        })
        .await
        .expect_err("404");
    assert_eq!(
        ApiError::from_status(&e),
        Some(ApiError::NotFound {
            kind: "domain".into(),
            name: "nope".into()
        })
    );
    let bad = pb::CreateDomainRequest {
        request_id: String::new(),
        name: "g-bad".into(),
        config_xml: test_xml("g-bad").replace("vmlinuz", "/etc/shadow"),
        artifacts: vec![],
        start: false,
        restart_policy: 0,
        labels: HashMap::new(),
        boot_from_template: false,
        scratch_disks: vec![],
    };
    let e = c.create_domain(bad).await.expect_err("policy");
    assert!(
        matches!(
            ApiError::from_status(&e),
            Some(ApiError::PolicyDenied { .. })
        ),
        "{e:?}"
    );
    // A scratch disk the agent will not make is refused, quoting it, and leaves nothing.
    for (disk, what) in [
        (("../s.img", 64 << 20, "l"), "'/'"),
        (("s.img", 1 << 20, "l"), "16 MiB to 1 TiB"),
        (
            ("s.img", 64 << 20, "a label too long!"),
            "\"a label too long!\"",
        ),
        (("vmlinuz", 64 << 20, "l"), "names two files"),
    ] {
        let e = c
            .create_domain(pb::CreateDomainRequest {
                request_id: String::new(),
                name: "g-disk".into(),
                config_xml: test_xml("g-disk"),
                artifacts: vec![pb::Artifact {
                    name: "vmlinuz".into(),
                    blob: Some(kref.clone()),
                    writable: false,
                }],
                start: false,
                restart_policy: 0,
                labels: HashMap::new(),
                boot_from_template: false,
                scratch_disks: vec![pb::ScratchDisk {
                    name: disk.0.into(),
                    size_bytes: disk.1,
                    label: disk.2.into(),
                }],
            })
            .await
            .expect_err("bad scratch disk");
        assert!(e.message().contains(what), "{disk:?}: {e:?}");
    }
    // Disks made, then the create refused (the XML names another domain): nothing is left,
    // in staging or under the domain's name.
    let e = c
        .create_domain(pb::CreateDomainRequest {
            request_id: String::new(),
            name: "g-disk".into(),
            config_xml: test_xml("g-other"),
            artifacts: vec![],
            start: false,
            restart_policy: 0,
            labels: HashMap::new(),
            boot_from_template: false,
            scratch_disks: vec![pb::ScratchDisk {
                name: "s.img".into(),
                size_bytes: 64 << 20,
                label: "napalm-scratch0".into(),
            }],
        })
        .await
        .expect_err("a config naming another domain");
    assert!(e.message().contains("g-other"), "{e:?}");
    let staging: Vec<_> = std::fs::read_dir(a.dir.path().join("state/staging"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(staging.is_empty(), "left in staging: {staging:?}");
    assert!(!a.dir.path().join("state/domains/g-disk").exists());
    let missing = pb::CreateDomainRequest {
        request_id: String::new(),
        name: "g-miss".into(),
        config_xml: test_xml("g-miss"),
        artifacts: vec![pb::Artifact {
            name: "vmlinuz".into(),
            blob: Some(pb::BlobRef {
                sha256: "1".repeat(64),
                size: 1,
            }),
            writable: false,
        }],
        start: false,
        restart_policy: 0,
        labels: HashMap::new(),
        boot_from_template: false,
        scratch_disks: vec![],
    };
    let e = c.create_domain(missing).await.expect_err("blob missing");
    assert!(
        matches!(
            ApiError::from_status(&e),
            Some(ApiError::BlobMissing { .. })
        ),
        "{e:?}"
    );

    let del = c
        .delete_domain(pb::DeleteDomainRequest {
            request_id: String::new(),
            name: "g-one".into(),
            shutdown_timeout: None,
            purge: false,
        })
        .await
        .expect("delete")
        .into_inner();
    assert!(del.existed);
    assert!(
        a.dir.path().join("state/kept/g-one/initrd.img").exists(),
        "writable artifact kept without purge"
    );
    let del = c
        .delete_domain(pb::DeleteDomainRequest {
            request_id: String::new(),
            name: "g-one".into(),
            shutdown_timeout: None,
            purge: false,
        })
        .await
        .expect("delete")
        .into_inner();
    assert!(!del.existed);

    // Events of g-one, in order, numbered increasingly.
    let mut kinds = Vec::new();
    let mut last = 0;
    while kinds.len() < 4 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(5), events.message())
            .await
            .expect("event in time")
            .expect("stream")
            .expect("event");
        assert!(ev.sequence > last);
        last = ev.sequence;
        kinds.push(pb::DomainEventKind::try_from(ev.kind).expect("kind"));
    }
    use pb::DomainEventKind as K;
    assert_eq!(kinds, [K::Defined, K::Started, K::Stopped, K::Undefined]);
}

#[tokio::test]
async fn grpc_requires_the_token() {
    let a = TestAgent::start(Some(TOKEN)).await;
    let addr = a.running().grpc_addr.expect("grpc");
    let mut c = AgentServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let e = c
        .list_domains(pb::ListDomainsRequest::default())
        .await
        .expect_err("unauthenticated");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let mut ok = client(&a).await;
    let caps = ok
        .get_capabilities(pb::GetCapabilitiesRequest {
            include_raw_xml: true,
        })
        .await
        .expect("caps")
        .into_inner();
    assert!(caps.hypervisors.contains(&(pb::Hypervisor::Test as i32)));
    assert!(caps.raw_xml.contains("<capabilities>"));
    assert!(caps.host.expect("host").cpus > 0);
    assert_eq!(caps.agent_id, a.running().agent.id());
}
