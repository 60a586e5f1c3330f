//! `napalm.template`: a template boot stops after its modules, says so on the console and
//! waits for its identity, the clone's whole command line, in QEMU's fw_cfg file
//! [`IDENTITY_FILE`]. The host saves the template's memory while it waits and restores it
//! into each clone's QEMU, whose fw_cfg carries that clone's identity; the boot then goes
//! on as that clone: its root, network, `onfail`, `quiet`..., its NIC's MAC
//! (`napalm.mac=`), wall clock (`napalm.now=`) and a seed for the random pool
//! (`napalm.seed=`).

use super::{say, Boot, Step};
use crate::cmdline::{onfail_lenient, BootConfig};
use crate::fsloader;
use crate::fwcfg::IDENTITY_FILE;
use crate::identity::format_mac;
use crate::ip::IpConfig;
use crate::net::iface;
use crate::timings::uptime;
use std::time::{Duration, Instant};

pub use crate::identity::TEMPLATE_READY;

/// How often fw_cfg is polled for the identity.
const POLL: Duration = Duration::from_millis(10);

/// When a restored boot's template was ready and when its identity was seen (seconds of
/// guest uptime), for boot.json.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Restored {
    pub(super) ready_at: f64,
    pub(super) restored_at: f64,
}

impl Boot<'_> {
    /// Says the template is ready, waits (no timeout: the host destroys a template it
    /// does not save) for the identity in fw_cfg and returns it parsed; from here on its
    /// `napalm.onfail=` and `quiet` apply.
    pub(super) fn await_identity(&mut self) -> Step<BootConfig> {
        self.print(TEMPLATE_READY);
        self.log.push(TEMPLATE_READY.into());
        let ready_at = uptime();
        let raw = loop {
            match self.sys.fw_cfg_file(IDENTITY_FILE) {
                Ok(Some(raw)) => break raw,
                Ok(None) => std::thread::sleep(POLL),
                Err(e) => {
                    return Err(
                        self.fail("identity", format!("reading fw_cfg {IDENTITY_FILE}: {e}"))
                    )
                }
            }
        };
        let restored_at = uptime();
        let text = match String::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                let shown = String::from_utf8_lossy(e.as_bytes()).into_owned();
                return Err(self.fail(
                    "identity",
                    format!("fw_cfg {IDENTITY_FILE} is not UTF-8 ({e}): {shown:?}"),
                ));
            }
        };
        let text = text.trim_end_matches(|c: char| c == '\0' || c.is_whitespace());
        let cfg = match BootConfig::parse(text) {
            Ok(cfg) => cfg,
            Err(e) => {
                self.onfail = onfail_lenient(text);
                return Err(self.fail(
                    "identity",
                    format!("the identity {text:?} (fw_cfg {IDENTITY_FILE}): {e}"),
                ));
            }
        };
        self.onfail = cfg.onfail;
        if cfg.template {
            return Err(self.fail(
                "identity",
                format!(
                    "the identity {text:?} (fw_cfg {IDENTITY_FILE}) itself says \
                     napalm.template; a clone's command line must not"
                ),
            ));
        }
        self.quiet = cfg.quiet;
        if cfg.help {
            say(&fsloader::help_text());
        }
        self.restored = Some(Restored {
            ready_at,
            restored_at,
        });
        // /proc/cmdline stays the template's: the clone's own goes to /run/napalm/cmdline
        // (without its seed, which is the CRNG's business only).
        self.identity = Some(
            text.split_whitespace()
                .filter(|w| !w.starts_with("napalm.seed="))
                .collect::<Vec<_>>()
                .join(" "),
        );
        let line = self
            .tm
            .record("template: waiting for the identity", ready_at, restored_at);
        self.note(line);
        self.note(format!(
            "napalm: restored from a template at {restored_at:.3}s (waited {:.3}s)",
            restored_at - ready_at
        ));
        Ok(cfg)
    }

    /// What only an identity does, once its modules are loaded: sets the wall clock
    /// (`napalm.now=`), mixes `napalm.seed=` into the random pool and gives the NIC the
    /// clone's MAC (`napalm.mac=`) before the network step brings it up.
    pub(super) fn apply_identity(&mut self, cfg: &BootConfig) -> Step<()> {
        if let Some(now) = cfg.now {
            self.sys.set_clock(now).map_err(|e| {
                self.fail(
                    "identity",
                    format!("napalm.now={now}: setting the wall clock: {e}"),
                )
            })?;
        }
        if let Some(seed) = &cfg.seed {
            self.sys
                .reseed_random(&self.path("/dev/urandom"), seed)
                .map_err(|e| {
                    self.fail(
                        "identity",
                        format!(
                            "napalm.seed: mixing its {} bytes into the random pool (/dev/urandom, RNDRESEEDCRNG): {e}",
                            seed.len()
                        ),
                    )
                })?;
        }
        if let Some(mac) = cfg.mac {
            let shown = format_mac(&mac);
            let nic = self.nic(cfg).map_err(|e| {
                self.fail(
                    "identity",
                    format!("napalm.mac={shown}: no interface to set it on: {e}"),
                )
            })?;
            self.sys.set_mac(&nic, mac).map_err(|e| {
                self.fail(
                    "identity",
                    format!("napalm.mac={shown}: setting it on {nic} (SIOCSIFHWADDR): {e}"),
                )
            })?;
            self.note(format!("napalm:   {nic} has the clone's MAC {shown}"));
        }
        Ok(())
    }

    /// The interface `ip=` names, else the one that is not `lo` (the first by name, as
    /// the network step takes it); waits `napalm.timeout=` for it to appear.
    fn nic(&self, cfg: &BootConfig) -> std::io::Result<String> {
        let sys_net = self.path("/sys/class/net");
        let timeout = Duration::from_secs(cfg.timeout_secs);
        let device = match &cfg.ip {
            IpConfig::Static(s) => s.device.clone(),
            IpConfig::Dhcp { device, .. } => device.clone(),
            IpConfig::Off => None,
        };
        let Some(d) = device else {
            return iface::first_ethernet(&sys_net, timeout);
        };
        let start = Instant::now();
        while !sys_net.join(&d).exists() {
            if start.elapsed() > timeout {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{d} (named by ip=) did not appear within {timeout:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }
}
