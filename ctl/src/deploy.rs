//! `napalmctl deploy` and `undeploy`: one streamed RPC each, shown as per-clone progress
//! bars (scheduled → layer → shipped → defined → running → registered) for people, or as
//! JSON lines for scripts.

use std::collections::HashMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use napalm_proto::v1::{
    deploy_progress, CloneMode, ClonePhase, DeployProgress, DeployRequest, DeploySummary,
    DeploymentSpec, Hypervisor, PlacementStrategy, Resources, ScratchKind, ScratchMount,
    UndeployRequest,
};
use serde_json::json;
use tokio_stream::StreamExt;

use crate::config::Settings;
use crate::connect::on_leader;
use crate::output::Output;
use crate::{from_status, Failure};

/// Arguments of `napalmctl deploy`.
#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// Number of clones (NAME-01, NAME-02…); not with --file, whose hosts are the clones.
    #[arg(long, required_unless_present = "file")]
    pub count: Option<u32>,
    /// A clones.conf (the thesis's annex IV format) declaring the clones: their names,
    /// their groups' and their own template sets and values. Deploying an edited file
    /// again converges: added hosts are created, removed ones deleted, changed ones rolled.
    #[arg(long, short = 'f', conflicts_with_all = ["count", "layers"])]
    pub file: Option<std::path::PathBuf>,
    /// Deployment name.
    #[arg(long, default_value = "napalm")]
    pub name: String,
    /// Template sets stacked into each clone's layer [default: base] (with --file, the
    /// file's `layers:` decide).
    #[arg(long, value_delimiter = ',')]
    pub layers: Option<Vec<String>>,
    /// Clones a rolling update may have down at once (a changed spec replaces clones in
    /// batches, each gated on the previous one registering).
    #[arg(long, default_value_t = 1)]
    pub max_unavailable: u32,
    /// Seconds a started clone may take to register before it is failed [default: the
    /// coordinator's --register-timeout].
    #[arg(long)]
    pub boot_timeout: Option<u64>,
    /// Restarts on its agent of a clone that died before it is replaced elsewhere
    /// [default: the coordinator's --restart-budget].
    #[arg(long)]
    pub restart_budget: Option<u32>,
    /// stateless (tmpfs upper) or stateful (upper kept on a disk).
    #[arg(long, default_value = "stateless")]
    pub mode: String,
    /// Required hypervisor: qemu, kvm, xen, test (default: any).
    #[arg(long)]
    pub hypervisor: Option<String>,
    /// Memory per clone (512M, 1G, or bytes).
    #[arg(long, default_value = "512M")]
    pub memory: String,
    /// vCPUs per clone.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Shared root (`nfs:SERVER:/`); default: the coordinator's server.
    #[arg(long)]
    pub root: Option<String>,
    /// spread (default) or binpack.
    #[arg(long, default_value = "spread")]
    pub strategy: String,
    /// At most this many clones per agent (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_per_agent: u32,
    /// Only show where clones would go.
    #[arg(long)]
    pub dry_run: bool,
    /// Accept clones that do not fit now: they wait as pending and are placed when
    /// capacity appears (without it, a deploy that does not fit is refused whole).
    #[arg(long)]
    pub allow_pending: bool,
    /// Scratch space beside the union root: PATH=[disk:]SIZE[,…] (`/scratch=256M,
    /// /var/tmp=64M`, `/scratch=disk:4G`), mounted at PATH (mode 1777) before the clone's
    /// init, so writes there skip overlayfs. A tmpfs of that size by default (the tmpfs
    /// sizes add up within --memory); `disk:` a virtio disk of that size each agent makes
    /// with a fresh ext4 (16M to 1T, sparse), emptied at every boot of a stateless clone,
    /// kept by a stateful one.
    #[arg(long, value_delimiter = ',')]
    pub scratch: Vec<String>,
}

fn bad(message: String) -> Failure {
    Failure { code: 2, message }
}

/// Parses `512M`, `1G`, `1024K` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, Failure> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => {
                    return Err(bad(format!(
                        "size {s:?}: use a number with K, M or G (512M)"
                    )))
                }
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| bad(format!("size {s:?}: use a number with K, M or G (512M)")))
}

/// Parses one `--scratch` entry, `PATH=[tmpfs:|disk:]SIZE`; the coordinator checks the
/// path rules, the disk sizes and the tmpfs total against the clone's memory.
pub fn parse_scratch(entry: &str) -> Result<ScratchMount, Failure> {
    let usage =
        "use PATH=SIZE (tmpfs) or PATH=disk:SIZE, e.g. --scratch /scratch=256M,/var/tmp=64M";
    let (path, size) = entry
        .split_once('=')
        .ok_or_else(|| bad(format!("--scratch {entry:?}: {usage}")))?;
    if !path.starts_with('/') {
        return Err(bad(format!(
            "--scratch {entry:?}: {path:?} is not an absolute path; {usage}"
        )));
    }
    let (kind, size) = match size.split_once(':') {
        Some(("disk", s)) => (ScratchKind::Disk, s),
        Some(("tmpfs", s)) => (ScratchKind::Tmpfs, s),
        Some((k, _)) => {
            return Err(bad(format!(
                "--scratch {entry:?}: unknown kind {k:?} (tmpfs or disk); {usage}"
            )))
        }
        None => (ScratchKind::Tmpfs, size),
    };
    let size_bytes = parse_size(size)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| bad(format!("--scratch {entry:?}: size {size:?}: {usage}")))?;
    Ok(ScratchMount {
        path: path.to_owned(),
        size_bytes,
        mode: 0,
        kind: kind as i32,
    })
}

impl DeployArgs {
    /// The spec these arguments ask for.
    pub fn spec(&self) -> Result<DeploymentSpec, Failure> {
        let mode = match self.mode.as_str() {
            "stateless" => CloneMode::Stateless,
            "stateful" => CloneMode::Stateful,
            m => return Err(bad(format!("--mode {m:?}: use stateless or stateful"))),
        };
        let hypervisor = match self.hypervisor.as_deref() {
            None => Hypervisor::Unspecified,
            Some("qemu") => Hypervisor::Qemu,
            Some("kvm") => Hypervisor::Kvm,
            Some("xen") => Hypervisor::Xen,
            Some("test") => Hypervisor::Test,
            Some(h) => {
                return Err(bad(format!(
                    "--hypervisor {h:?}: use qemu, kvm, xen or test"
                )))
            }
        };
        let strategy = match self.strategy.as_str() {
            "spread" => PlacementStrategy::Spread,
            "binpack" => PlacementStrategy::Binpack,
            s => return Err(bad(format!("--strategy {s:?}: use spread or binpack"))),
        };
        let (clones_conf, clones_conf_file) = match &self.file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    bad(format!(
                        "--file {}: {e}; give the path of a clones.conf",
                        path.display()
                    ))
                })?;
                // Checked here too, so that a malformed file is refused before anything
                // is contacted; the coordinator checks it again.
                let label = path.display().to_string();
                napalm_overlay::Config::parse(&label, &text, &napalm_overlay::Limits::default())
                    .and_then(|c| c.resolve())
                    .map_err(|e| bad(format!("{e}; fix the file and deploy again")))?;
                (text, label)
            }
            None => (String::new(), String::new()),
        };
        Ok(DeploymentSpec {
            name: self.name.clone(),
            count: self.count.unwrap_or(0),
            layers: if self.file.is_some() {
                Vec::new()
            } else {
                self.layers.clone().unwrap_or_else(|| vec!["base".into()])
            },
            clones_conf,
            clones_conf_file,
            max_unavailable: self.max_unavailable,
            boot_timeout: self.boot_timeout.map(|s| prost_types::Duration {
                seconds: i64::try_from(s).unwrap_or(i64::MAX),
                nanos: 0,
            }),
            restart_budget: self.restart_budget,
            mode: mode as i32,
            hypervisor: hypervisor as i32,
            resources: Some(Resources {
                vcpus: self.vcpus,
                memory_bytes: parse_size(&self.memory)?,
            }),
            root: self.root.clone().unwrap_or_default(),
            strategy: strategy as i32,
            max_per_agent: self.max_per_agent,
            allow_pending: self.allow_pending,
            scratch: self
                .scratch
                .iter()
                .filter(|e| !e.is_empty())
                .map(|e| parse_scratch(e))
                .collect::<Result<_, _>>()?,
            ..Default::default()
        })
    }
}

const STEPS: [ClonePhase; 6] = [
    ClonePhase::Scheduled,
    ClonePhase::Layer,
    ClonePhase::Shipped,
    ClonePhase::Defined,
    ClonePhase::Running,
    ClonePhase::Registered,
];

fn phase_name(p: i32) -> String {
    ClonePhase::try_from(p)
        .unwrap_or_default()
        .as_str_name()
        .trim_start_matches("CLONE_PHASE_")
        .to_lowercase()
}

/// One JSON line per progress event.
fn json_line(m: &DeployProgress) -> String {
    let v = match &m.event {
        Some(deploy_progress::Event::Clone(p)) => {
            let c = p.clone.clone().unwrap_or_default();
            json!({"event": "clone", "clone": c.name, "phase": phase_name(c.phase),
                   "agent": c.agent_id, "addresses": c.addresses, "message": p.message})
        }
        Some(deploy_progress::Event::Unplaced(u)) => json!({"event": "unplaced", "clone": u.clone,
            "reasons": u.rejections.iter().map(|r| json!({"agent": r.agent_name, "reason": r.reason})).collect::<Vec<_>>()}),
        Some(deploy_progress::Event::Summary(s)) => summary_json(s),
        None => json!({}),
    };
    v.to_string()
}

fn summary_json(s: &DeploySummary) -> serde_json::Value {
    json!({"event": "summary", "deployment": s.deployment, "requested": s.requested,
           "succeeded": s.succeeded, "failed": s.failed,
           "seconds": s.took.map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9)})
}

/// Follows a deploy/undeploy stream; the summary decides the exit code.
async fn follow(
    stream: Result<tonic::Response<tonic::Streaming<DeployProgress>>, tonic::Status>,
    output: Output,
) -> Result<String, Failure> {
    let mut s = stream.map_err(from_status)?.into_inner();
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:24}] {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut out = String::new();
    let mut summary = None;
    while let Some(m) = s.next().await {
        let m = m.map_err(from_status)?;
        if output != Output::Table {
            println!("{}", json_line(&m));
        }
        match &m.event {
            Some(deploy_progress::Event::Clone(p)) if output == Output::Table => {
                let c = p.clone.clone().unwrap_or_default();
                let bar = bars.entry(c.name.clone()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(STEPS.len() as u64));
                    b.set_style(style.clone());
                    b.set_prefix(c.name.clone());
                    b.enable_steady_tick(Duration::from_millis(200));
                    b
                });
                let step = STEPS
                    .iter()
                    .position(|s| *s as i32 == c.phase)
                    .map_or(0, |i| i + 1);
                bar.set_position(step as u64);
                bar.set_message(format!("{}: {}", phase_name(c.phase), p.message));
            }
            Some(deploy_progress::Event::Unplaced(u)) if output == Output::Table => {
                let _ = multi.println(format!(
                    "{}: cannot be placed: {}",
                    u.clone,
                    u.rejections
                        .iter()
                        .map(|r| format!("{}: {}", r.agent_name, r.reason))
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
            Some(deploy_progress::Event::Summary(sm)) => summary = Some(sm.clone()),
            _ => {}
        }
    }
    for b in bars.values() {
        b.finish();
    }
    let Some(sm) = summary else {
        return Err(Failure {
            code: 1,
            message: "the coordinator closed the stream without a summary".into(),
        });
    };
    if output == Output::Table {
        out += &format!(
            "{}: {} of {} done, {} failed in {:.1} s\n",
            sm.deployment,
            sm.succeeded,
            sm.requested,
            sm.failed,
            sm.took
                .map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
        );
    }
    if sm.failed > 0 || sm.succeeded < sm.requested {
        eprint!("{out}");
        return Err(Failure {
            code: 1,
            message: format!(
                "{} clone(s) failed; see `napalmctl clones`",
                sm.requested - sm.succeeded
            ),
        });
    }
    Ok(out)
}

/// `napalmctl deploy`, on the leading coordinator.
pub async fn deploy(
    settings: &Settings,
    args: &DeployArgs,
    output: Output,
) -> Result<String, Failure> {
    let spec = args.spec()?;
    let req = DeployRequest {
        request_id: format!("napalmctl-{}-{}", spec.name, std::process::id()),
        spec: Some(spec),
        dry_run: args.dry_run,
    };
    let stream = on_leader(settings, |mut c| {
        let req = req.clone();
        async move { c.deploy(req).await }
    })
    .await?;
    follow(Ok(stream), output).await
}

/// `napalmctl undeploy`, on the leading coordinator.
pub async fn undeploy(
    settings: &Settings,
    name: &str,
    purge: bool,
    output: Output,
) -> Result<String, Failure> {
    let req = UndeployRequest {
        request_id: format!("napalmctl-undeploy-{name}-{}", std::process::id()),
        name: name.into(),
        purge,
    };
    let stream = on_leader(settings, |mut c| {
        let req = req.clone();
        async move { c.undeploy(req).await }
    })
    .await?;
    follow(Ok(stream), output).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").ok(), Some(512 << 20));
        assert_eq!(parse_size("1g").ok(), Some(1 << 30));
        assert_eq!(parse_size("4096").ok(), Some(4096));
        let e = parse_size("12X")
            .err()
            .map(|f| f.message)
            .unwrap_or_default();
        assert!(e.contains("\"12X\""), "{e}");
    }

    #[test]
    fn scratch_entries() {
        let m = parse_scratch("/scratch=256M").unwrap_or_else(|f| panic!("{}", f.message));
        assert_eq!(
            (m.path.as_str(), m.size_bytes, m.mode, m.kind),
            ("/scratch", 256 << 20, 0, ScratchKind::Tmpfs as i32)
        );
        let m = parse_scratch("/scratch=disk:4G").unwrap_or_else(|f| panic!("{}", f.message));
        assert_eq!((m.size_bytes, m.kind), (4 << 30, ScratchKind::Disk as i32));
        for (bad, what) in [
            ("/scratch=nvme:4G", "unknown kind \"nvme\""),
            ("/scratch=disk:", "size \"\""),
            ("/scratch", "use PATH=SIZE"),
            ("scratch=1M", "not an absolute path"),
            ("/scratch=12X", "size \"12X\""),
            ("/scratch=0", "size \"0\""),
        ] {
            let e = parse_scratch(bad)
                .err()
                .map(|f| f.message)
                .unwrap_or_default();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains(what),
                "{bad}: {e}"
            );
        }
    }
}
