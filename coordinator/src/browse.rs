//! Finding agents over mDNS/DNS-SD (thesis 2.3.2, napalm-browse): browse `_napalm._tcp`
//! on the interfaces the operator names (none: no multicast at all), and record each
//! resolved agent — after asking it for its capabilities, so only an agent that answers
//! gRPC is recorded.

use std::sync::Arc;

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent};
use tokio::task::JoinHandle;

use crate::deploy::ship::Agents;
use crate::discovery::register_found;
use crate::registry::agents::HeartbeatPolicy;
use crate::registry::Registry;

/// The service type agents advertise their gRPC endpoint under.
pub const GRPC_SERVICE: &str = "_napalm._tcp.local.";

/// Errors starting the browser.
#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    /// No interface was named.
    #[error("mDNS browsing needs at least one interface (--mdns-interface); it stays off")]
    NoInterface,
    /// The mDNS daemon failed.
    #[error("mDNS: {0}")]
    Mdns(String),
}

/// A running browser; dropping it stops browsing.
pub struct Browser {
    daemon: ServiceDaemon,
    task: JoinHandle<()>,
}

impl Browser {
    /// Browses on `interfaces` and records every agent found in `registry`.
    pub fn start(
        interfaces: &[String],
        registry: Registry,
        agents: Agents,
        policy: HeartbeatPolicy,
    ) -> Result<Self, BrowseError> {
        if interfaces.is_empty() {
            return Err(BrowseError::NoInterface);
        }
        let m = |e: mdns_sd::Error| BrowseError::Mdns(e.to_string());
        let daemon = ServiceDaemon::new().map_err(m)?;
        daemon.disable_interface(IfKind::All).map_err(m)?;
        for i in interfaces {
            daemon
                .enable_interface(IfKind::Name(i.clone()))
                .map_err(m)?;
        }
        let rx = daemon.browse(GRPC_SERVICE).map_err(m)?;
        let agents = Arc::new(agents);
        let task = tokio::spawn(async move {
            while let Ok(event) = rx.recv_async().await {
                let ServiceEvent::ServiceResolved(info) = event else {
                    continue;
                };
                let Some(ip) = info.get_addresses_v4().into_iter().next() else {
                    continue;
                };
                let endpoint = format!("http://{ip}:{}", info.port);
                let id = info
                    .txt_properties
                    .get_property_val_str("id")
                    .unwrap_or_default()
                    .to_owned();
                let http_port = info.txt_properties.get_property_val_str("http_port");
                let rest = http_port.map(|p| format!("http://{ip}:{p}/napalm"));
                match register_found(&registry, &agents, &endpoint, rest, &policy).await {
                    Ok(got) => {
                        tracing::info!(%endpoint, id = %got, advertised = %id, "agent found over mDNS")
                    }
                    Err(e) => {
                        tracing::warn!(%endpoint, error = %e, "advertised agent not recorded")
                    }
                }
            }
        });
        Ok(Self { daemon, task })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.daemon.shutdown();
    }
}
