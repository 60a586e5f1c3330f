//! What the test files share: the agents' token, napalmctl as a clean process, and a
//! grid whose coordinator records the `authorization` of every call.

use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use napalm_coordinator::registry::Registry;
use napalm_coordinator::server::ApiAuth;
use napalm_coordinator::testing::{GridOptions, TestGrid};
use napalm_proto::v1::coordinator_service_client::CoordinatorServiceClient;

/// The bearer token of the agents these tests start (not the coordinator's API token).
pub const TOKEN: &str = "agent-test-token";

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free loopback port")
}

/// Variables napalmctl reads; every run starts without them.
pub const VARS: [&str; 7] = [
    "NAPALM_COORDINATOR",
    "NAPALM_TOKEN",
    "NAPALM_OUTPUT",
    "NAPALM_AGENT",
    "NAPALM_AGENT_TOKEN",
    "NAPALM_CONFIG",
    "XDG_CONFIG_HOME",
];

/// napalmctl with a clean environment: no settings variables, an empty user config dir.
pub fn ctl(home: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_napalmctl"));
    for v in VARS {
        c.env_remove(v);
    }
    c.env("XDG_CONFIG_HOME", home).env("HOME", home);
    c.kill_on_drop(true);
    c
}

pub async fn run(mut c: tokio::process::Command) -> Output {
    tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .expect("napalmctl finishes within 60 s")
        .expect("napalmctl runs")
}

pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `agents` agents on `test:///default` (with `TOKEN`) and a coordinator with the deploy
/// pipeline that knows them, whose API accepts every call and records its `authorization`.
pub struct Grid {
    pub grid: TestGrid,
    pub client: CoordinatorServiceClient<tonic::transport::Channel>,
    /// The `authorization` metadata of every call, in order ("" when absent).
    auth: Arc<Mutex<Vec<String>>>,
}

impl Grid {
    pub async fn start(agents: usize) -> Self {
        let auth = Arc::new(Mutex::new(Vec::new()));
        let opts = GridOptions {
            agents,
            agent_token: Some(TOKEN.into()),
            ..Default::default()
        };
        let record = ApiAuth::Record(Arc::clone(&auth));
        let grid = TestGrid::start_with(opts, |c| c.api_auth = record)
            .await
            .expect("agents and coordinator start on loopback");
        let client = grid.client().await.expect("connect to the coordinator");
        Self { grid, client, auth }
    }

    pub fn endpoint(&self) -> String {
        self.grid.coordinator.endpoint()
    }

    pub fn registry(&self) -> &Registry {
        self.grid.coordinator.registry()
    }

    pub fn last_auth(&self) -> Option<String> {
        self.auth.lock().expect("lock").last().cloned()
    }
}

/// An agent's REST base URL (with its `/napalm` prefix).
pub fn rest(a: &napalm_agent::server::Running) -> String {
    format!("http://{}/napalm", a.http_addr)
}
