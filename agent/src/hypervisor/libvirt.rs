//! [`Hypervisor`] on libvirt through the `virt` crate. One connection, shared: libvirt
//! connections are thread-safe; each call runs on a blocking thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use super::{DomainSummary, HostFacts, Hypervisor, RunState, Stats};
use crate::error::{AgentError, Result};

/// A libvirt connection, reopened when libvirtd went away (restarted, upgraded).
pub struct Libvirt {
    conn: std::sync::RwLock<Connect>,
    uri: String,
    /// Who gets lifecycle events. One libvirt registration per connection hands each event
    /// to all of them (libvirt refuses the same callback twice on a connection), made
    /// again on a new connection after a reconnect; when that fails the list is emptied,
    /// which closes the subscribers' channels (they go back to polling).
    subscribers: Arc<std::sync::Mutex<Vec<super::lifecycle::Subscriber>>>,
    /// The fan-out's registration id on the current connection.
    registration: std::sync::Mutex<Option<std::os::raw::c_int>>,
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        // The registration holds a reference to the connection: end it, or neither is
        // ever freed.
        let id = self
            .registration
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(id) = id {
            let conn = self.conn.read().unwrap_or_else(|p| p.into_inner());
            super::lifecycle::unsubscribe(&conn, id);
        }
    }
}

fn hv(e: virt::error::Error) -> AgentError {
    AgentError::Hypervisor(e.to_string())
}

fn version(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

fn run_state(s: virt::domain::DomainStateEnum) -> RunState {
    use virt::domain::DomainState as S;
    match s {
        virt::enumutil::Enum::Known(S::Running) => RunState::Running,
        virt::enumutil::Enum::Known(S::Blocked) => RunState::Blocked,
        virt::enumutil::Enum::Known(S::Paused) => RunState::Paused,
        virt::enumutil::Enum::Known(S::Shutdown) => RunState::Shutdown,
        virt::enumutil::Enum::Known(S::Shutoff) => RunState::Shutoff,
        virt::enumutil::Enum::Known(S::Crashed) => RunState::Crashed,
        virt::enumutil::Enum::Known(S::PMSuspended) => RunState::Pmsuspended,
        _ => RunState::Nostate,
    }
}

impl Libvirt {
    /// Opens `uri` read-write.
    pub fn open(uri: &str) -> Result<Self> {
        // libvirt's default handler prints every error to stderr, including the expected
        // "Domain not found" of a lookup; errors reach our callers (and logs) as values.
        static QUIET: std::sync::Once = std::sync::Once::new();
        QUIET.call_once(virt::error::clear_error_callback);
        // Before the connection opens: events only flow on connections opened after it.
        super::lifecycle::ensure_event_loop();
        let conn = Connect::open(Some(uri)).map_err(hv)?;
        Ok(Self {
            conn: std::sync::RwLock::new(conn),
            uri: uri.to_owned(),
            subscribers: Default::default(),
            registration: std::sync::Mutex::new(None),
        })
    }

    /// The connection, reopened first if it died (once: a thread that finds it already
    /// reopened uses that), with the lifecycle event registration moved over.
    fn c(&self) -> Result<Connect> {
        let cur = self.conn.read().unwrap_or_else(|p| p.into_inner()).clone();
        if cur.is_alive().unwrap_or(false) {
            return Ok(cur);
        }
        let mut conn = self.conn.write().unwrap_or_else(|p| p.into_inner());
        if conn.is_alive().unwrap_or(false) {
            return Ok(conn.clone());
        }
        tracing::warn!(uri = %self.uri, "libvirt connection lost; reconnecting");
        let fresh = Connect::open(Some(&self.uri)).map_err(hv)?;
        let mut reg = self.registration.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = reg.take() {
            super::lifecycle::unsubscribe(&conn, id);
            *reg = super::lifecycle::subscribe(&fresh, self.fan_out());
            if reg.is_none() {
                tracing::warn!(uri = %self.uri, "lifecycle events not registered again after the reconnect; the watcher polls");
                self.subscribers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
            }
        }
        *conn = fresh.clone();
        Ok(fresh)
    }

    /// One subscriber that hands each event to every subscriber of this connection.
    fn fan_out(&self) -> super::lifecycle::Subscriber {
        let all = Arc::clone(&self.subscribers);
        Arc::new(move |name: String| {
            for s in all.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                s(name.clone());
            }
        })
    }

    fn lookup(&self, name: &str) -> Result<Option<Domain>> {
        match self.c()?.lookup_domain_by_name(name) {
            Ok(d) => Ok(Some(d)),
            Err(e)
                if e.code() == virt::enumutil::Enum::Known(virt::error::ErrorNumber::NoDomain) =>
            {
                Ok(None)
            }
            Err(e) => Err(hv(e)),
        }
    }

    fn get(&self, name: &str) -> Result<Domain> {
        self.lookup(name)?
            .ok_or_else(|| AgentError::no_domain(name))
    }
}

/// One domain's summary; `None` when it vanished while being asked.
fn summary(d: &Domain) -> Option<DomainSummary> {
    // The UUID's bytes, formatted here: libvirt's own string form costs 16 snprintf calls
    // per domain, and listings summarise every domain.
    let (Ok(name), Ok(uuid), Ok((state, _))) = (d.name(), d.uuid(), d.state()) else {
        return None;
    };
    Some(DomainSummary {
        name,
        uuid: uuid.hyphenated().to_string(),
        state: run_state(state),
        id: d.id(),
    })
}

impl Hypervisor for Libvirt {
    fn define(&self, xml: &str) -> Result<String> {
        let d = self.c()?.define_domain_xml(xml).map_err(hv)?;
        d.uuid_string().map_err(hv)
    }

    fn start(&self, name: &str) -> Result<()> {
        self.get(name)?.create().map_err(hv)?;
        Ok(())
    }

    fn create_transient(&self, xml: &str) -> Result<()> {
        self.c()?.create_domain_xml(xml, 0).map_err(hv)?;
        Ok(())
    }

    fn save(&self, name: &str, to: &std::path::Path) -> Result<()> {
        let d = self.get(name)?;
        let path = std::ffi::CString::new(to.as_os_str().as_encoded_bytes())
            .map_err(|_| AgentError::Hypervisor(format!("{} has a NUL byte", to.display())))?;
        // SAFETY: `d` holds a live domain reference for the call and `path` is a
        // NUL-terminated string that outlives it; virt 0.5 has no binding of its own.
        let r = unsafe { sys::virDomainSave(d.as_ptr(), path.as_ptr()) };
        if r < 0 {
            return Err(hv(virt::error::Error::last_error()));
        }
        Ok(())
    }

    fn shutdown(&self, name: &str, deadline: Duration) -> Result<()> {
        let d = self.get(name)?;
        let (state, _) = d.state().map_err(hv)?;
        if !run_state(state).is_active() {
            return Ok(());
        }
        if !deadline.is_zero() && d.shutdown().is_ok() {
            let until = Instant::now() + deadline;
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(100));
                if !d.is_active().map_err(hv)? {
                    return Ok(());
                }
            }
        }
        match d.destroy() {
            Ok(()) => Ok(()),
            // It stopped between our check and the destroy.
            Err(_) if !d.is_active().unwrap_or(true) => Ok(()),
            Err(e) => Err(hv(e)),
        }
    }

    fn suspend(&self, name: &str) -> Result<()> {
        self.get(name)?.suspend().map_err(hv)?;
        Ok(())
    }

    fn resume(&self, name: &str) -> Result<()> {
        self.get(name)?.resume().map_err(hv)?;
        Ok(())
    }

    fn undefine(&self, name: &str) -> Result<bool> {
        let Some(d) = self.lookup(name)? else {
            return Ok(false);
        };
        if d.is_active().map_err(hv)? {
            d.destroy().map_err(hv)?;
        }
        let flags = sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | sys::VIR_DOMAIN_UNDEFINE_NVRAM;
        // Not every driver knows every flag (the test driver refuses NVRAM).
        if d.undefine_flags(flags).is_err() {
            d.undefine().map_err(hv)?;
        }
        Ok(true)
    }

    fn state(&self, name: &str) -> Result<Option<RunState>> {
        match self.lookup(name)? {
            Some(d) => Ok(Some(run_state(d.state().map_err(hv)?.0))),
            None => Ok(None),
        }
    }

    fn list(&self) -> Result<Vec<DomainSummary>> {
        let mut out: Vec<DomainSummary> = self
            .c()?
            .list_all_domains(0)
            .map_err(hv)?
            .iter()
            .filter_map(summary)
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn find(&self, name: &str) -> Result<Option<(DomainSummary, String)>> {
        let Some(d) = self.lookup(name)? else {
            return Ok(None);
        };
        // Vanished between lookup and asking: as if it was never there.
        let Ok(xml) = d.xml_desc(0) else {
            return Ok(None);
        };
        Ok(summary(&d).map(|s| (s, xml)))
    }

    fn summary(&self, name: &str) -> Result<Option<DomainSummary>> {
        // Not `find`: formatting the domain's XML costs more than the lookup, and a
        // create's answer and `GetDomain` need only the state.
        Ok(self.lookup(name)?.as_ref().and_then(summary))
    }

    fn capabilities_xml(&self) -> Result<String> {
        self.c()?.capabilities().map_err(hv)
    }

    fn subscribe(&self, changed: super::lifecycle::Subscriber) -> Result<bool> {
        if !super::lifecycle::ensure_event_loop() {
            return Ok(false);
        }
        let conn = self.c()?;
        let mut reg = self.registration.lock().unwrap_or_else(|p| p.into_inner());
        if reg.is_none() {
            *reg = super::lifecycle::subscribe(&conn, self.fan_out());
        }
        if reg.is_some() {
            self.subscribers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(changed);
        }
        Ok(reg.is_some())
    }

    fn host(&self) -> Result<HostFacts> {
        let c = self.c()?;
        let n = c.node_info().map_err(hv)?;
        Ok(HostFacts {
            hostname: c.hostname().map_err(hv)?,
            cpu_model: n.model,
            cpus: n.cpus,
            sockets: n.sockets,
            cores: n.cores,
            threads: n.threads,
            memory_bytes: n.memory.saturating_mul(1024),
            free_memory_bytes: c.free_memory().unwrap_or(0),
            huge_pages: Default::default(),
            libvirt_version: c.lib_version().map(version).unwrap_or_default(),
            hypervisor_version: c.hyp_version().map(version).unwrap_or_default(),
            uri: self.uri.clone(),
        })
    }

    fn free_pages(&self, size_kib: u32, cells: u32) -> Result<Vec<u64>> {
        self.c()?.free_pages(&[size_kib], 0, cells, 0).map_err(hv)
    }

    fn stats(&self, name: &str) -> Result<Stats> {
        let d = self.get(name)?;
        let info = d.info().map_err(hv)?;
        let mut s = Stats {
            cpu_time_ns: info.cpu_time,
            memory_bytes: info.memory.saturating_mul(1024),
            vcpus: info.nr_virt_cpu,
            ..Stats::default()
        };
        if !run_state(info.state).is_active() {
            return Ok(s);
        }
        let xml = d.xml_desc(0).unwrap_or_default();
        if let Ok(doc) = roxmltree::Document::parse(&xml) {
            for t in doc.descendants().filter(|n| n.has_tag_name("target")) {
                let parent = t
                    .parent_element()
                    .map(|p| p.tag_name().name())
                    .unwrap_or_default();
                let Some(dev) = t.attribute("dev") else {
                    continue;
                };
                if parent == "disk" {
                    if let Ok(b) = d.block_stats(dev) {
                        s.disk_read_bytes += b.rd_bytes.max(0) as u64;
                        s.disk_write_bytes += b.wr_bytes.max(0) as u64;
                    }
                } else if parent == "interface" {
                    if let Ok(i) = d.interface_stats(dev) {
                        s.net_rx_bytes += i.rx_bytes.max(0) as u64;
                        s.net_tx_bytes += i.tx_bytes.max(0) as u64;
                    }
                }
            }
        }
        Ok(s)
    }
}
