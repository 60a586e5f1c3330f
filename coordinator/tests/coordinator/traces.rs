//! Traces of a deploy over OTLP, decoded by a receiver that is not ours: Python's
//! `opentelemetry-proto` stubs served by `grpcio` (scripts/setup installs both). A grid on
//! libvirt's test driver deploys 3 clones with a `tracing_opentelemetry` layer exporting
//! to it; the receiver dumps every span it gets as JSON lines.
//!
//! The coordinator and the agents run in this one process, so one tracer provider exports
//! the spans of both (the binaries each have their own, `--otlp-endpoint`); the agents'
//! spans still get their parent only from the W3C `traceparent` in the gRPC metadata (the
//! agent's server tasks do not inherit the caller's `tracing` span). The test runtime is
//! single-threaded so that the thread's default subscriber sees every span of the grid
//! without touching the other tests of this binary.
//!
//! On the test driver no clone boots or registers, so the `boot` and `register` phases are
//! not there; the deploy does not follow clones it knows cannot boot.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use napalm_coordinator::testing::{layers_over_nfs, spec, GridOptions, TestGrid};
use napalm_proto::v1::*;
use opentelemetry::trace::TracerProvider as _;
use tokio_stream::StreamExt;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::Layer as _;

const RECEIVER: &str = include_str!("../../../scripts/otlp-trace-receiver.py");

/// One span as the receiver decoded it.
#[derive(Debug, Clone, serde::Deserialize)]
struct Span {
    service: String,
    trace: String,
    span: String,
    parent: String,
    name: String,
    attributes: HashMap<String, String>,
}

/// The receiver process, killed on drop.
struct Receiver(Child);

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the receiver writing to `out`; returns it and its port.
fn receiver(dir: &std::path::Path, out: &std::path::Path) -> (Receiver, u16) {
    let script = dir.join("receiver.py");
    std::fs::write(&script, RECEIVER).expect("write the receiver");
    let python = std::env::var("NAPALM_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(python)
        .arg(&script)
        .arg(out)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the receiver's port");
    let port = line.trim().parse().unwrap_or_else(|_| {
        panic!("the receiver did not start (scripts/setup installs opentelemetry-proto and grpcio): {line:?}")
    });
    (Receiver(child), port)
}

fn read_spans(out: &std::path::Path) -> Vec<Span> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON span"))
        .collect()
}

const CLONES: u32 = 3;
const PHASES: [&str; 4] = ["place", "layer", "ship", "create"];

#[tokio::test(flavor = "current_thread")]
async fn a_deploy_is_one_trace_with_agent_spans_under_the_coordinators() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("spans.jsonl");
    let (_receiver, port) = receiver(dir.path(), &out);

    let provider = napalm_coordinator::telemetry::tracer_provider(
        &format!("http://127.0.0.1:{port}"),
        "napalm-traces-test",
    )
    .expect("tracer provider");
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("napalm_coordinator", tracing::Level::INFO)
        .with_target("napalm_agent", tracing::Level::INFO);
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("napalm"))
            .with_filter(filter),
    );
    let guard = tracing::subscriber::set_default(subscriber);
    // A second registered dispatcher, held for the test. With exactly one registered,
    // tracing-core computes a callsite's interest from the default of whichever thread
    // reaches it first (tokio-rs/tracing#3611): when another test of this binary deploys
    // on another thread (no subscriber there) and reaches `ship` or `create` first, the
    // callsite is cached as never and this thread's deploy loses those spans. With two,
    // interest is the union over every registered dispatcher, this one's included.
    let _second_dispatcher = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());

    // Layers over NFS: every clone boots the same image, so each agent is shipped to once.
    let grid = TestGrid::start_with(
        GridOptions {
            agents: 2,
            agent_token: Some("trace-token".into()),
            ..Default::default()
        },
        layers_over_nfs,
    )
    .await
    .expect("grid starts");
    let mut client = grid.client().await.expect("connect to the coordinator");
    let mut s = client
        .deploy(DeployRequest {
            spec: Some(spec("traced", CLONES)),
            ..Default::default()
        })
        .await
        .expect("deploy accepted")
        .into_inner();
    let mut summary = None;
    while let Some(m) = s.next().await {
        if let Some(deploy_progress::Event::Summary(x)) = m.expect("progress").event {
            summary = Some(x);
        }
    }
    let summary = summary.expect("a summary");
    assert_eq!(summary.succeeded, CLONES, "{summary:?}");
    let used: HashSet<String> = client
        .list_clones(ListClonesRequest {
            deployment: "traced".into(),
        })
        .await
        .expect("list clones")
        .into_inner()
        .clones
        .into_iter()
        .map(|c| c.agent_id)
        .collect();

    // Flush on a blocking thread while this runtime serves the exporter's channel.
    let p = provider.clone();
    tokio::task::spawn_blocking(move || p.force_flush())
        .await
        .expect("flush task")
        .expect("flush");

    // The deploy trace: its root and everything under it, as the receiver decoded it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (spans, root) = loop {
        let spans = read_spans(&out);
        let root = spans
            .iter()
            .find(|s| {
                s.name == "deploy"
                    && s.attributes.get("napalm.deployment").map(String::as_str) == Some("traced")
            })
            .cloned();
        if let Some(r) = root {
            break (spans, r);
        }
        assert!(
            Instant::now() < deadline,
            "no deploy span received: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        root.parent.is_empty(),
        "the deploy span is a root: {root:?}"
    );
    let trace: Vec<&Span> = spans.iter().filter(|s| s.trace == root.trace).collect();
    let by_id: HashMap<&str, &Span> = trace.iter().map(|s| (s.span.as_str(), *s)).collect();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for s in &trace {
        match counts.iter_mut().find(|(n, _)| *n == s.name) {
            Some((_, k)) => *k += 1,
            None => counts.push((s.name.clone(), 1)),
        }
    }
    eprintln!("trace {}: {counts:?}", root.trace);
    // Every span of the trace hangs from the root (no orphan, no second root).
    for s in &trace {
        let mut cur = *s;
        let mut hops = 0;
        while !cur.parent.is_empty() {
            cur = by_id
                .get(cur.parent.as_str())
                .unwrap_or_else(|| panic!("{s:?}: parent {} not in the trace", cur.parent));
            hops += 1;
            assert!(hops < 64, "a parent cycle at {s:?}");
        }
        assert_eq!(cur.span, root.span, "{s:?} is under another root");
    }

    // A clone span per clone, with each phase under it.
    let clones: Vec<&Span> = trace
        .iter()
        .copied()
        .filter(|s| s.name == "clone" && s.parent == root.span)
        .collect();
    let names: HashSet<&str> = clones
        .iter()
        .filter_map(|c| c.attributes.get("napalm.clone").map(String::as_str))
        .collect();
    let want: HashSet<String> = (1..=CLONES).map(|i| format!("traced-{i:02}")).collect();
    assert_eq!(
        names,
        want.iter().map(String::as_str).collect(),
        "clone spans: {clones:#?}"
    );
    for c in &clones {
        for phase in PHASES {
            assert!(
                trace.iter().any(|s| s.name == phase && s.parent == c.span),
                "no {phase} span under {c:?}"
            );
        }
        // The test driver boots nothing: no boot or register phase.
        assert!(!trace
            .iter()
            .any(|s| (s.name == "boot" || s.name == "register") && s.parent == c.span));
    }

    // The agents' spans: children of a coordinator span of this trace (ship and create
    // for blobs and domains; the deploy itself for the listing of strays).
    let agent: Vec<&Span> = trace
        .iter()
        .copied()
        .filter(|s| s.name.starts_with("agent "))
        .collect();
    for method in ["agent HasBlobs", "agent CreateDomain"] {
        assert!(
            agent.iter().any(|s| s.name == method),
            "no {method} span in the trace: {agent:#?}"
        );
    }
    // One shipment per agent and run: the clones of an agent wait for it rather than
    // each asking the agent what it has. A shipment asks once per blob (the kernel and the
    // image), each under its own upload lock (`Agents::ship`).
    let asked = agent.iter().filter(|s| s.name == "agent HasBlobs").count();
    assert_eq!(
        asked,
        2 * used.len(),
        "HasBlobs calls against agents used: {used:?}"
    );
    for a in &agent {
        let parent = by_id[a.parent.as_str()];
        assert!(
            !parent.name.starts_with("agent "),
            "{a:?} is under {parent:?}, not a coordinator span"
        );
    }
    for c in &clones {
        let created = trace.iter().any(|s| {
            s.name == "agent CreateDomain"
                && by_id[s.parent.as_str()].name == "create"
                && by_id[s.parent.as_str()].parent == c.span
        });
        assert!(created, "no agent CreateDomain under {c:?}'s create");
    }
    assert!(trace.iter().all(|s| s.service == "napalm-traces-test"));

    drop(grid);
    drop(guard);
    let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
}
