//! mDNS/DNS-SD advertisement with mdns-sd: `_napalm._tcp` (gRPC) and the thesis's
//! `_napalm-http._tcp` (REST), with a TXT record describing the host. Only the interfaces
//! the operator names are used (none: no mDNS at all); a goodbye is sent on shutdown.
//! Without a configured coordinator, the agent also browses `_napalm-coord._tcp` on
//! the same interfaces and registers with the first coordinator it finds.

use mdns_sd::{IfKind, ServiceDaemon, ServiceInfo};

use crate::error::{AgentError, Result};

/// gRPC service type.
pub const GRPC_SERVICE: &str = "_napalm._tcp.local.";
/// REST service type (thesis 3.3).
pub const HTTP_SERVICE: &str = "_napalm-http._tcp.local.";

/// The service type coordinators advertise their gRPC endpoint under.
pub const COORDINATOR_SERVICE: &str = "_napalm-coord._tcp.local.";

/// Browses `interfaces` for a coordinator and returns its gRPC endpoint
/// (`http://IP:PORT`), or `None` once `stop` flips. Blocking: run it off the async workers.
pub fn find_coordinator(
    interfaces: &[String],
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Option<String>> {
    let daemon = ServiceDaemon::new().map_err(err)?;
    daemon.disable_interface(IfKind::All).map_err(err)?;
    for i in interfaces {
        daemon
            .enable_interface(IfKind::Name(i.clone()))
            .map_err(err)?;
    }
    let rx = daemon.browse(COORDINATOR_SERVICE).map_err(err)?;
    let mut found = None;
    while found.is_none() && !*stop.borrow() {
        match rx.recv_timeout(std::time::Duration::from_millis(500)) {
            Ok(mdns_sd::ServiceEvent::ServiceResolved(info)) => {
                found = info
                    .get_addresses_v4()
                    .into_iter()
                    .next()
                    .map(|ip| format!("http://{ip}:{}", info.port));
            }
            Ok(_) => {}
            Err(_) if rx.is_disconnected() => break,
            Err(_) => {}
        }
    }
    if let Ok(done) = daemon.shutdown() {
        let _ = done.recv_timeout(std::time::Duration::from_secs(2));
    }
    Ok(found)
}

/// What the TXT record says.
#[derive(Debug, Clone)]
pub struct Advert {
    /// Instance name (host name and agent id).
    pub instance: String,
    /// Host name (without `.local.`).
    pub hostname: String,
    /// REST port (the `_napalm-http._tcp` service).
    pub http_port: u16,
    /// gRPC port (the `_napalm._tcp` service); 0 when gRPC is off.
    pub grpc_port: u16,
    /// Hypervisor domain types, comma-separated (`qemu,kvm`).
    pub hypervisors: String,
    /// Host architecture, so a coordinator can place by it before asking.
    pub arch: String,
    /// Logical CPUs of the host.
    pub cpus: u32,
    /// Host memory, bytes.
    pub memory_bytes: u64,
    /// The agent's id, stable across restarts.
    pub agent_id: String,
    /// TLS certificate fingerprint (sha256 hex), `none` without TLS.
    pub fingerprint: String,
    /// Path prefix of the REST API (DNS-SD `path=` key, RFC 6763 section 6.4 style).
    pub path: String,
    /// How the listeners are secured (`tls=` key): `none`, `server` (TLS from operator
    /// files) or `mutual` (the cluster identity: clients need a CA-signed certificate, and
    /// the agent's certificate names `id`, which is what a browser must verify).
    pub tls: &'static str,
}

/// A running advertisement.
pub struct Advertiser {
    daemon: ServiceDaemon,
    fullnames: Vec<String>,
}

fn err(e: mdns_sd::Error) -> AgentError {
    AgentError::io("mdns", std::io::Error::other(e.to_string()))
}

impl Advertiser {
    /// Starts advertising on `interfaces` only.
    pub fn start(a: &Advert, interfaces: &[String]) -> Result<Self> {
        if interfaces.is_empty() {
            return Err(AgentError::invalid(
                "mdns",
                "no interface named: mDNS stays off",
            ));
        }
        let daemon = ServiceDaemon::new().map_err(err)?;
        daemon.disable_interface(IfKind::All).map_err(err)?;
        for i in interfaces {
            daemon
                .enable_interface(IfKind::Name(i.clone()))
                .map_err(err)?;
        }
        let txt = [
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            ("http_port", a.http_port.to_string()),
            ("grpc_port", a.grpc_port.to_string()),
            ("hypervisors", a.hypervisors.clone()),
            ("arch", a.arch.clone()),
            ("cpus", a.cpus.to_string()),
            ("memory", a.memory_bytes.to_string()),
            ("id", a.agent_id.clone()),
            ("fingerprint", a.fingerprint.clone()),
            ("path", a.path.clone()),
            ("tls", a.tls.to_owned()),
        ];
        let host = format!("{}.local.", a.hostname);
        let mut fullnames = Vec::new();
        for (ty, port) in [(GRPC_SERVICE, a.grpc_port), (HTTP_SERVICE, a.http_port)] {
            let info = ServiceInfo::new(ty, &a.instance, &host, "", port, &txt[..])
                .map_err(err)?
                .enable_addr_auto();
            fullnames.push(info.get_fullname().to_owned());
            daemon.register(info).map_err(err)?;
        }
        tracing::info!(?interfaces, instance = %a.instance, "advertising over mDNS");
        Ok(Self { daemon, fullnames })
    }

    /// Sends goodbyes (TTL 0) and stops the daemon.
    pub fn stop(self) {
        for f in &self.fullnames {
            if let Ok(rx) = self.daemon.unregister(f) {
                let _ = rx.recv_timeout(std::time::Duration::from_secs(2));
            }
        }
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = rx.recv_timeout(std::time::Duration::from_secs(2));
        }
    }
}
