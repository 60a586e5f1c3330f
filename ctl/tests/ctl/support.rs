//! What both test files share.

/// The bearer token of the agents these tests start (not the coordinator's API token).
pub const TOKEN: &str = "agent-test-token";

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free loopback port")
}
