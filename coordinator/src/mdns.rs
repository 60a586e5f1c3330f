//! mDNS/DNS-SD (thesis 2.3.2, napalm-browse), on the interfaces the operator names only
//! (none: no multicast at all), both ways: browse `_napalm._tcp` and record each resolved
//! agent — after asking it for its capabilities, so only an agent that answers gRPC is
//! recorded — and advertise the coordinator as `_napalm-coord._tcp`, so agents
//! without a configured coordinator find it and register.
//!
//! With the cluster trust (the [`Agents`] given carry it), an advertisement is only a
//! hint (thesis 4.7.3, mDNS spoofing): an agent advertising `tls=mutual` is checked with
//! a TLS handshake alone ([`crate::trust::Trust::verify_advertised`]: a certificate that
//! chains to the CA and names the advertised id) before GetCapabilities or anything else
//! is sent; one that fails, or advertises no mutual TLS at all, is recorded as untrusted
//! with the reason ([`Registry::record_untrusted`]) and receives nothing more.

use std::sync::Arc;

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent};
use tokio::task::JoinHandle;

use crate::deploy::ship::Agents;
use crate::discovery::register_found;
use crate::registry::agents::HeartbeatPolicy;
use crate::registry::Registry;

/// The service type agents advertise their gRPC endpoint under.
pub const GRPC_SERVICE: &str = "_napalm._tcp.local.";
/// The service type this coordinator advertises its gRPC endpoint under.
pub const COORDINATOR_SERVICE: &str = "_napalm-coord._tcp.local.";

/// How the coordinator presents itself over mDNS.
#[derive(Debug, Clone)]
pub struct Advert {
    /// Instance name (the coordinator's id).
    pub id: String,
    /// Host name (without `.local.`).
    pub hostname: String,
    /// gRPC port.
    pub grpc_port: u16,
    /// HTTP (clone registration) port.
    pub http_port: u16,
}

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
        let daemon = daemon_on(interfaces)?;
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
                let txt = |k| {
                    info.txt_properties
                        .get_property_val_str(k)
                        .unwrap_or_default()
                        .to_owned()
                };
                let id = txt("id");
                // How the agent's listeners are secured (older agents: no key, plain).
                let tls = txt("tls");
                let scheme = if tls == "mutual" { "https" } else { "http" };
                let endpoint = format!("{scheme}://{ip}:{}", info.port);
                let http_port = info.txt_properties.get_property_val_str("http_port");
                // The REST prefix is in `path=` (older agents: none advertised, no prefix).
                let path = txt("path");
                let rest = http_port.map(|p| format!("{scheme}://{ip}:{p}{path}"));
                let fingerprint = match check_advert(&agents, &endpoint, &id, &tls).await {
                    Ok(fp) => fp,
                    Err(reason) => {
                        match registry
                            .record_untrusted(&id, &endpoint, rest, &reason)
                            .await
                        {
                            Ok(rec) => {
                                tracing::warn!(%endpoint, advertised = %id, %reason, record = %rec, "advertised agent untrusted: nothing sent to it")
                            }
                            Err(e) => {
                                tracing::warn!(%endpoint, advertised = %id, %reason, error = %e, "advertised agent untrusted; recording it failed")
                            }
                        }
                        continue;
                    }
                };
                if agents.trust().is_some() {
                    if let Err(e) = registry.forget_untrusted(&endpoint).await {
                        tracing::warn!(%endpoint, error = %e, "clearing an untrusted record failed");
                    }
                }
                match register_found(&registry, &agents, &endpoint, rest, fingerprint, &policy)
                    .await
                {
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

/// Whether the agent advertised as `id` at `endpoint` with `tls=` value `tls` may be
/// contacted beyond a TLS handshake: `Ok` with its verified certificate's fingerprint
/// (none without trust), `Err` with why not, for `napalmctl agents`. Without trust,
/// plain agents are used as before (and mutual-TLS ones cannot be).
async fn check_advert(
    agents: &Agents,
    endpoint: &str,
    id: &str,
    tls: &str,
) -> Result<Option<String>, String> {
    match (agents.trust(), tls) {
        (Some(trust), "mutual") => trust
            .verify_advertised(endpoint, id)
            .await
            .map(Some)
            .map_err(|e| e.reason),
        (Some(_), other) => Err(format!(
            "advertises tls={}: this coordinator uses only agents enrolled in its cluster, \
             over mutual TLS (join the agent with napalm-agent --join TOKEN)",
            if other.is_empty() { "none" } else { other }
        )),
        (None, "mutual") => Err("advertises mutual TLS, but this coordinator has no \
             cluster trust: start it with --trust-listen"
            .into()),
        (None, _) => Ok(None),
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.daemon.shutdown();
    }
}

fn m(e: mdns_sd::Error) -> BrowseError {
    BrowseError::Mdns(e.to_string())
}

/// An mDNS daemon on `interfaces` only.
fn daemon_on(interfaces: &[String]) -> Result<ServiceDaemon, BrowseError> {
    if interfaces.is_empty() {
        return Err(BrowseError::NoInterface);
    }
    let daemon = ServiceDaemon::new().map_err(m)?;
    daemon.disable_interface(IfKind::All).map_err(m)?;
    for i in interfaces {
        daemon
            .enable_interface(IfKind::Name(i.clone()))
            .map_err(m)?;
    }
    Ok(daemon)
}

/// The coordinator's own advertisement; dropping it sends a goodbye.
pub struct Advertiser {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Advertiser {
    /// Advertises `a` as `_napalm-coord._tcp` on `interfaces` only.
    pub fn start(interfaces: &[String], a: &Advert) -> Result<Self, BrowseError> {
        let daemon = daemon_on(interfaces)?;
        let txt = [
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            ("id", a.id.clone()),
            ("http_port", a.http_port.to_string()),
        ];
        let info = mdns_sd::ServiceInfo::new(
            COORDINATOR_SERVICE,
            &a.id,
            &format!("{}.local.", a.hostname),
            "",
            a.grpc_port,
            &txt[..],
        )
        .map_err(m)?
        .enable_addr_auto();
        let fullname = info.get_fullname().to_owned();
        daemon.register(info).map_err(m)?;
        Ok(Self { daemon, fullname })
    }
}

impl Drop for Advertiser {
    fn drop(&mut self) {
        if let Ok(rx) = self.daemon.unregister(&self.fullname) {
            let _ = rx.recv_timeout(std::time::Duration::from_secs(1));
        }
        let _ = self.daemon.shutdown();
    }
}
