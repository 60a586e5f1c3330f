//! `NAPALM_BENCH_DEPLOYMENTS=N` (agents apart): the same clones in N deployments instead of
//! one. After the idle figures of the one deployment, it is removed and the same number of
//! clones deployed again as N deployments (untimed, one after the other); then the
//! coordinator's idle CPU with them, against the one deployment's in the same run. What
//! grows with deployments × clones (a control-loop pass that reads every clone record once
//! per deployment) shows here as a ratio well above 1.

use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use napalm_proto::v1::*;

use super::machine::{idle, idle_secs};
use super::{spec, succeeded, undeploy};

type Client = CoordinatorServiceClient<tonic::transport::Channel>;

/// Replaces deployment `tag` (`clones` clones) by `n` deployments of the same clones in
/// all, prints the coordinator's idle CPU with them against `one` (CPU-s/s with the one
/// deployment), and removes them.
pub async fn measure(c: &mut Client, tag: &str, clones: u32, n: u32, one: f64) {
    assert_eq!(
        undeploy(c, format!("{tag}-undeploy"), tag).await,
        Some(clones),
        "undeploy of the one deployment"
    );
    let names: Vec<String> = (0..n).map(|i| format!("{tag}-d{i}")).collect();
    let t = std::time::Instant::now();
    for (i, name) in names.iter().enumerate() {
        // The clones spread as evenly as they go: the first ones take one more.
        let count = clones / n + u32::from((i as u32) < clones % n);
        let s = c
            .deploy(DeployRequest {
                request_id: name.clone(),
                spec: Some(spec(name, count)),
                dry_run: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(succeeded(s).await, Some(count), "deploy of {name}");
    }
    println!(
        "    the same {clones} clones deployed again as {n} deployments (untimed): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (cpu, rss) = idle(idle_secs()).await;
    println!(
        "    coordinator idle with {clones} clones in {n} deployments: {:.1} ms CPU/s, {rss:.0} \
         MiB; {:.2}x the one deployment's {:.1} ms CPU/s (same run)",
        cpu * 1e3,
        cpu / one,
        one * 1e3
    );
    for name in &names {
        undeploy(c, format!("{name}-undeploy"), name).await;
    }
}
