//! The agents in a child process of the bench (`NAPALM_BENCH_AGENTS_APART=1`), so that the
//! bench's own figures are the coordinator's.

use napalm_coordinator::testing::GridOptions;

use super::env;

/// Agent mode (the child of `NAPALM_BENCH_AGENTS_APART=1`): starts the agents, prints their
/// endpoints one per line, and stops them when stdin closes.
pub fn agents_child(dir: &str) {
    use std::io::{BufRead, Write};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = GridOptions {
        agents: env("NAPALM_BENCH_AGENTS", 50),
        agent_token: None,
        ..Default::default()
    };
    let agents = rt
        .block_on(napalm_coordinator::testing::start_agents(
            &opts,
            std::path::Path::new(dir),
        ))
        .unwrap();
    let mut out = std::io::stdout().lock();
    for a in &agents {
        writeln!(out, "http://{}", a.grpc_addr.unwrap()).unwrap();
    }
    out.flush().unwrap();
    drop(out);
    for _ in std::io::stdin().lock().lines() {}
    rt.block_on(async {
        for a in agents {
            a.stop().await;
        }
    });
}

/// The agents' child process; stopped when dropped (its stdin closes).
pub struct AgentsApart {
    child: std::process::Child,
    pub endpoints: Vec<String>,
}

impl AgentsApart {
    pub fn start(agents: usize, dir: &std::path::Path) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .env("NAPALM_BENCH_AGENTS_CHILD", dir)
            .env("NAPALM_BENCH_AGENTS", agents.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let endpoints: Vec<String> = out.lines().take(agents).map(Result::unwrap).collect();
        assert_eq!(
            endpoints.len(),
            agents,
            "the agents' process started them all"
        );
        Self { child, endpoints }
    }
}

impl Drop for AgentsApart {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}
