//! How long a fresh grid's control loop takes to ship the boot artifacts to every agent
//! ahead of any deploy (`deploy/prefetch.rs`), by the agents' own answers: each is asked
//! (`HasBlobs`) until it holds the kernel and, with layers over NFS, the base image.

use std::time::{Duration, Instant};

use napalm_coordinator::deploy::ship::Blob;
use napalm_coordinator::testing::TestGrid;
use napalm_proto::v1::agent_service_client::AgentServiceClient;
use napalm_proto::v1::{BlobRef, HasBlobsRequest};

/// The reference the coordinator ships the file at `path` under.
fn blob(path: &std::path::Path) -> BlobRef {
    Blob::new("", std::fs::read(path).unwrap()).r
}

/// Waits until every agent of `grid` (at `endpoints`) holds the grid's kernel, and its
/// base image when `over_nfs`; returns how long that took from the call.
pub async fn wait(grid: &TestGrid, endpoints: &[String], over_nfs: bool) -> Duration {
    let t = Instant::now();
    let mut blobs = vec![blob(&grid.dir.path().join("vmlinuz"))];
    if over_nfs {
        blobs.push(blob(&grid.dir.path().join("base.img")));
    }
    for ep in endpoints {
        let mut c = AgentServiceClient::connect(ep.clone()).await.unwrap();
        loop {
            let missing = c
                .has_blobs(HasBlobsRequest {
                    blobs: blobs.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .missing;
            if missing.is_empty() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(600),
                "agent {ep} still lacks {missing:?} after 10 min"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    t.elapsed()
}
