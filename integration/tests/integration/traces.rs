//! Issue #14, traces of a real deploy across processes: the real coordinator and the two
//! real agents (each its own process, namespace and tracer provider, `--otlp-endpoint`)
//! export to an OTLP receiver that is not ours (scripts/otlp-trace-receiver.py: Python's
//! `opentelemetry-proto` + `grpcio`) in the server namespace. One deploy of 3 QEMU clones
//! is one trace: a clone span per clone with every phase under it, boot and register
//! included, and spans of both agent processes under the coordinator's, joined only by
//! the W3C `traceparent` the coordinator puts in its gRPC metadata.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use napalm_integration::grid::{Grid, GridOptions};
use napalm_integration::proc::Daemon;
use serde_json::Value;

const PHASES: [&str; 6] = ["place", "layer", "ship", "create", "boot", "register"];
const OTLP: u16 = 4317;

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_owned()
}

fn spans(out: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn a_real_deploy_is_one_trace_across_the_coordinator_and_agent_processes() {
    // Every daemon exports to the server's address, which the grid picks ({server}); the
    // receiver starts right after them, before the deploy (what they export before it
    // answers, their start, is dropped).
    let endpoint = format!("http://{{server}}:{OTLP}");
    let g = Grid::start(
        GridOptions {
            keep: std::env::var_os("NAPALM_KEEP_GRID").is_some(),
            coordinator_args: vec!["--otlp-endpoint".into(), endpoint.clone()],
            agent_args: vec!["--otlp-endpoint".into(), endpoint],
            ..Default::default()
        },
        "traced",
    )
    .expect("starting the grid");
    let server = g.server.addr.clone();
    let out = g.dir.join("spans.jsonl");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/otlp-trace-receiver.py");
    let mut child = g
        .server
        .command("python3")
        .arg(&script)
        .arg(&out)
        .arg(format!("{server}:{OTLP}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs the receiver");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the receiver's port");
    let _receiver = Daemon(child);
    assert_eq!(
        line.trim(),
        OTLP.to_string(),
        "the receiver listens (scripts/setup installs opentelemetry-proto and grpcio)"
    );
    let t = Instant::now();
    let args = [
        "deploy",
        "--name",
        "traced",
        "--count",
        "3",
        "--memory",
        "128M",
        "--hypervisor",
        "qemu",
    ];
    let o = g.napalmctl(&args).expect("napalmctl deploy");
    assert!(
        o.status.success(),
        "deploy: {}\n{}\nlogs in {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        g.dir.display()
    );
    eprintln!("3 clones deployed in {:.1} s", t.elapsed().as_secs_f64());

    // Batches are exported every few seconds: wait until the deploy's trace is whole.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (trace, root) = loop {
        let all = spans(&out);
        let root = all
            .iter()
            .find(|x| s(x, "name") == "deploy" && x["attributes"]["napalm.deployment"] == "traced")
            .cloned();
        if let Some(root) = root {
            let trace: Vec<Value> = all
                .iter()
                .filter(|x| s(x, "trace") == s(&root, "trace"))
                .cloned()
                .collect();
            let registers = trace.iter().filter(|x| s(x, "name") == "register").count();
            let agents: HashSet<String> = trace
                .iter()
                .filter(|x| s(x, "service") == "napalm-agent")
                .map(|x| s(x, "name"))
                .collect();
            if registers == 3 && agents.contains("agent CreateDomain") {
                break (trace, root);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no whole deploy trace within 60 s ({} spans received); logs in {}",
            all.len(),
            g.dir.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(s(&root, "service"), "napalm-coordinator", "{root}");
    assert!(s(&root, "parent").is_empty(), "the deploy span is a root");
    let by_id: HashMap<String, &Value> = trace.iter().map(|x| (s(x, "span"), x)).collect();
    // Every span hangs from the deploy (no orphan, no second root).
    for x in &trace {
        let mut cur = x;
        let mut hops = 0;
        while !s(cur, "parent").is_empty() {
            cur = by_id
                .get(&s(cur, "parent"))
                .unwrap_or_else(|| panic!("{x}: its parent is not in the trace"));
            hops += 1;
            assert!(hops < 64, "a parent cycle at {x}");
        }
        assert_eq!(
            s(cur, "span"),
            s(&root, "span"),
            "{x} is under another root"
        );
    }
    // A clone span per clone, each with every phase, boot and register included.
    let clones: Vec<&Value> = trace
        .iter()
        .filter(|x| s(x, "name") == "clone" && s(x, "parent") == s(&root, "span"))
        .collect();
    let names: HashSet<String> = clones
        .iter()
        .map(|c| {
            c["attributes"]["napalm.clone"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let want: HashSet<String> = (1..=3).map(|i| format!("traced-{i:02}")).collect();
    assert_eq!(names, want, "clone spans");
    for c in &clones {
        for phase in PHASES {
            assert!(
                trace
                    .iter()
                    .any(|x| s(x, "name") == phase && s(x, "parent") == s(c, "span")),
                "no {phase} span under {c}"
            );
        }
    }
    // The agents' spans, from their own processes, under the coordinator's.
    let agent_spans: Vec<&Value> = trace
        .iter()
        .filter(|x| s(x, "service") == "napalm-agent")
        .collect();
    for method in ["agent HasBlobs", "agent CreateDomain"] {
        assert!(
            agent_spans.iter().any(|x| s(x, "name") == method),
            "no {method} span from an agent process"
        );
    }
    for x in &agent_spans {
        let parent = by_id.get(&s(x, "parent")).expect("parent in the trace");
        assert_eq!(
            s(parent, "service"),
            "napalm-coordinator",
            "{x} hangs from a coordinator span"
        );
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for x in &trace {
        *counts
            .entry(format!("{}/{}", s(x, "service"), s(x, "name")))
            .or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort();
    eprintln!("trace {}: {counts:?}", s(&root, "trace"));
}
