//! libvirt's domain lifecycle events (started, stopped, crashed, suspended…) for the
//! agent's watcher, so that noticing a change costs the change, not a listing of every
//! domain each second (issue 15). The `virt` 0.5 binding has the event loop
//! (`virt::event`) and the raw `virConnectDomainEventRegisterAny` (`virt::sys`) but no safe
//! wrapper for domain events; this module is that wrapper, for the one event the agent
//! needs.
//!
//! libvirt delivers events from its default event loop, which must be registered before a
//! connection is opened and then run by a thread: [`ensure_event_loop`] does both once per
//! process. The callback only reads the domain's name and hands it to the subscriber;
//! anything it does runs on that thread, so a subscriber only sends on a channel.

use std::ffi::CStr;
use std::os::raw::{c_int, c_void};
use std::sync::{Arc, OnceLock};

use virt::connect::Connect;
use virt::sys;

/// What a subscriber gets: the name of a domain whose lifecycle state changed.
pub type Subscriber = Arc<dyn Fn(String) + Send + Sync>;

/// Registers libvirt's default event loop and starts the thread that runs it, once per
/// process; `false` when libvirt refused (the agent then polls). Must run before the
/// connections whose events are wanted are opened.
pub fn ensure_event_loop() -> bool {
    static LOOP: OnceLock<bool> = OnceLock::new();
    *LOOP.get_or_init(|| {
        if let Err(e) = virt::event::event_register_default_impl() {
            tracing::warn!(error = %e, "libvirt's event loop is unavailable; the agent polls domain states");
            return false;
        }
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                if let Err(e) = virt::event::event_run_default_impl() {
                    tracing::warn!(error = %e, "libvirt's event loop failed an iteration");
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            });
        spawned.is_ok()
    })
}

/// The C callback of `VIR_DOMAIN_EVENT_ID_LIFECYCLE`: hands the domain's name to the
/// subscriber in `opaque`. Never unwinds into libvirt.
unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    if opaque.is_null() || dom.is_null() {
        return 0;
    }
    // SAFETY: `opaque` is the `Box<Subscriber>` leaked by `subscribe`, freed only by
    // `free_subscriber` after libvirt stops calling this; `dom` is valid for the call and
    // its name is a NUL-terminated string libvirt owns for as long as `dom`.
    let (subscriber, name) = unsafe {
        let name = sys::virDomainGetName(dom);
        if name.is_null() {
            return 0;
        }
        (
            &*(opaque as *const Subscriber),
            CStr::from_ptr(name).to_string_lossy().into_owned(),
        )
    };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| subscriber(name)));
    0
}

/// libvirt's free callback for `opaque` once the registration ends.
unsafe extern "C" fn free_subscriber(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: the pointer came from `Box::into_raw` in `subscribe`; libvirt calls this
        // once, after the last callback.
        drop(unsafe { Box::from_raw(opaque as *mut Subscriber) });
    }
}

/// Calls `subscriber` with a domain's name at every lifecycle event of any domain of
/// `conn`, for as long as the connection lives; the registration id, or `None` when
/// libvirt refused (no event loop, a driver without events).
pub fn subscribe(conn: &Connect, subscriber: Subscriber) -> Option<c_int> {
    let opaque = Box::into_raw(Box::new(subscriber)) as *mut c_void;
    type Lifecycle = unsafe extern "C" fn(
        sys::virConnectPtr,
        sys::virDomainPtr,
        c_int,
        c_int,
        *mut c_void,
    ) -> c_int;
    type Generic = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);
    // SAFETY: libvirt's VIR_DOMAIN_EVENT_CALLBACK: the generic type is a placeholder and
    // libvirt calls the callback with the signature of the event id registered, here
    // VIR_DOMAIN_EVENT_ID_LIFECYCLE's (`virConnectDomainEventCallback`). `conn` is a live
    // connection; on failure libvirt keeps nothing, so `opaque` is freed here.
    let id = unsafe {
        let cb = std::mem::transmute::<Lifecycle, Generic>(on_lifecycle);
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(cb),
            opaque,
            Some(free_subscriber),
        )
    };
    if id < 0 {
        // SAFETY: not registered, so nobody else holds the box.
        drop(unsafe { Box::from_raw(opaque as *mut Subscriber) });
        return None;
    }
    Some(id)
}

/// Ends registration `id` on `conn` (libvirt then frees its subscriber and its own
/// reference to the connection); an error is only logged (a dead connection has nothing
/// left to end).
pub fn unsubscribe(conn: &Connect, id: c_int) {
    // SAFETY: `conn` is a connection object (alive or not); libvirt checks `id`.
    let r = unsafe { sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), id) };
    if r < 0 {
        tracing::debug!(id, "ending a lifecycle event registration failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_test_driver_reports_starts_and_stops_of_its_domains() {
        assert!(ensure_event_loop());
        let dir = tempfile::tempdir().expect("tmp");
        let node = dir.path().join("node.xml");
        std::fs::write(
            &node,
            "<node><domain type='test'><name>seed</name><memory>8192</memory>\
             <os><type>hvm</type></os></domain></node>",
        )
        .expect("node");
        let conn = Connect::open(Some(&format!("test://{}", node.display()))).expect("open");
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let id = subscribe(
            &conn,
            Arc::new(move |name| {
                let _ = tx.lock().map(|t| t.send(name));
            }),
        );
        assert!(
            id.is_some(),
            "the test driver refused a lifecycle subscription"
        );
        let d = conn
            .define_domain_xml(
            "<domain type='test'><name>ev1</name><memory>8192</memory><os><type>hvm</type></os></domain>",
        )
        .expect("define");
        d.create().expect("start");
        d.destroy().expect("destroy");
        let mut seen = Vec::new();
        while seen.len() < 3 {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(n) => seen.push(n),
                Err(_) => break,
            }
        }
        assert_eq!(seen, ["ev1", "ev1", "ev1"], "defined, started, stopped");
        let _ = d.undefine();
    }
}
