//! What both test files share: the agents' token and configuration, free loopback ports.

use std::path::Path;

use napalm_agent::server::ServeConfig;

/// The bearer token of the agents these tests start (not the coordinator's API token).
pub const TOKEN: &str = "agent-test-token";

/// An agent on `test:///default` with `TOKEN`, on loopback ports.
pub fn agent_config(state: &Path) -> ServeConfig {
    let mut cfg = ServeConfig::loopback(state);
    cfg.rest.token = Some(TOKEN.into());
    cfg
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free loopback port")
}
