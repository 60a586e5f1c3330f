//! nfs-ganesha as the grid runs it, and its counters: the server of the clones' root, layers
//! and state (NFSv4 only, VFS FSAL, EXPORT blocks from a file the coordinator writes), on a
//! [`PrivateBus`] of its own so that its statistics can be read over D-Bus
//! ([`NfsStats::query`]). [`start`] fails, quoting the command, when ganesha serves NFS
//! but did not take `org.ganesha.nfsd` on that bus: a ganesha whose counters cannot be
//! read is a broken setup here, not a degraded one.
//!
//! Used by [`crate::grid`] (its server namespace) and on its own by tests that need only
//! an NFS server: a [`crate::netns::Host`], a directory and a file of EXPORT blocks.

mod bus;
mod error;
mod reply;
mod stats;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

pub use bus::PrivateBus;
pub use error::GaneshaError;
pub use reply::{ParseError, Value};
pub use stats::{ExportIo, NfsStats, Transfer};

use crate::netns::Host;
use crate::proc::{die_with_parent, wait_for, Daemon};
use error::shown;

/// The bus name ganesha requests (`Dbus_Name_Prefix` unset).
pub const BUS_NAME: &str = "org.ganesha.nfsd";
/// The object that carries the statistics.
pub const STATS_PATH: &str = "/org/ganesha/nfsd/ExportMgr";
/// The statistics interface of [`STATS_PATH`].
pub const STATS_INTERFACE: &str = "org.ganesha.nfsd.exportstats";
/// ganesha's NFS port.
pub const NFS_PORT: u16 = 2049;

/// How long ganesha may take to listen on [`NFS_PORT`].
const LISTEN_SECS: u64 = 30;
/// How long, once it listens, until its bus name shows. ganesha requests the name before it
/// opens its listeners (`nfs_init.c`: `gsh_dbus_pkginit` before `nfs_Init_svc`), so this is
/// only slack.
const BUS_SECS: u64 = 5;

/// Where and how one nfs-ganesha runs.
pub struct Server<'a> {
    /// The namespace it runs in; it binds to this host's address only.
    pub host: &'a Host,
    /// Its directory: `ganesha.conf` (written by [`start`]) and `ganesha.pid`.
    pub dir: &'a Path,
    /// Where `ganesha.log` and `ganesha-stderr.log` go (appended to across restarts).
    pub log_dir: &'a Path,
    /// The file of EXPORT blocks `ganesha.conf` includes (SIGHUP re-reads it).
    pub exports: &'a Path,
    /// The bus it registers on.
    pub bus: &'a PrivateBus,
}

/// ganesha.conf: NFSv4 over TCP on `bind` only, no NLM/RQUOTA/krb5, short grace-less
/// leases (clones come and go), the counters [`NfsStats`] reads, then `exports`.
fn config(bind: &str, exports: &Path) -> String {
    format!(
        "NFS_CORE_PARAM {{ Protocols = 4; Bind_addr = {bind}; Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false; Enable_NFS_Stats = true; Enable_Fast_Stats = false; }}\n\
         NFSV4 {{ Graceless = true; Lease_Lifetime = 10; Only_Numeric_Owners = true; }}\n\
         NFS_KRB5 {{ Active_krb5 = false; }}\n\
         %include \"{}\"\n",
        exports.display()
    )
}

/// Opens `path` for appending (a daemon's log).
pub(crate) fn append(path: &Path) -> Result<std::fs::File, GaneshaError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| GaneshaError::Io {
            what: format!("opening {}", path.display()),
            source,
        })
}

/// The last `n` lines of `path` that `keep` accepts.
fn tail(path: &Path, n: usize, keep: impl Fn(&str) -> bool) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Writes `ganesha.conf` and starts `ganesha.nfsd` in the foreground in the server's
/// namespace, with `DBUS_SYSTEM_BUS_ADDRESS` set to its bus. Returns once it listens on
/// `HOST:2049` and owns [`BUS_NAME`] on the bus (checked by process id, so not a ganesha
/// of before); otherwise kills it and says why, quoting the command.
pub fn start(s: &Server<'_>) -> Result<Daemon, GaneshaError> {
    let ip = s
        .host
        .addr
        .parse()
        .map_err(|source| GaneshaError::Address {
            addr: s.host.addr.clone(),
            source,
        })?;
    let addr = std::net::SocketAddr::new(ip, NFS_PORT);
    let conf = s.dir.join("ganesha.conf");
    let pid_file = s.dir.join("ganesha.pid");
    let log = s.log_dir.join("ganesha.log");
    std::fs::write(&conf, config(&s.host.addr, s.exports)).map_err(|source| GaneshaError::Io {
        what: format!("writing {}", conf.display()),
        source,
    })?;
    let _ = std::fs::remove_file(&pid_file);
    let mut cmd = s.host.command("ganesha.nfsd");
    cmd.env("DBUS_SYSTEM_BUS_ADDRESS", s.bus.address())
        .arg("-F")
        .arg("-f")
        .arg(&conf)
        .arg("-L")
        .arg(&log)
        .arg("-p")
        .arg(&pid_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(append(&s.log_dir.join("ganesha-stderr.log"))?);
    let command = shown(&cmd);
    // `ip netns exec` execs ganesha.nfsd, and -F keeps it from forking: this is its pid.
    let mut daemon = die_with_parent(&mut cmd)
        .spawn()
        .map(Daemon)
        .map_err(|source| GaneshaError::Spawn {
            command: command.clone(),
            hint: "packages nfs-ganesha, nfs-ganesha-vfs",
            source,
        })?;
    if !s.host.listens(addr, Duration::from_secs(LISTEN_SECS))? {
        let exited = match daemon.0.try_wait() {
            Ok(Some(st)) => format!(" (it exited: {st})"),
            _ => String::new(),
        };
        return Err(GaneshaError::NotListening {
            command: command + &exited,
            addr: addr.to_string(),
            secs: LISTEN_SECS,
            log: tail(&log, 40, |_| true),
        });
    }
    let pid = daemon.pid();
    let mut owner = String::from("not asked");
    let owned = wait_for(Duration::from_secs(BUS_SECS), || {
        match s.bus.owner_pid(BUS_NAME) {
            Ok(Some(p)) if p == pid => return Some(()),
            Ok(Some(p)) => owner = format!("owned by process {p}, not {pid}"),
            Ok(None) => owner = "nobody owns it".into(),
            Err(e) => owner = crate::error_chain(&e),
        }
        None
    });
    if owned.is_none() {
        daemon.kill();
        return Err(GaneshaError::NotOnBus {
            command,
            bus: s.bus.address().to_owned(),
            owner,
            log: tail(&log, 20, |l| l.contains(":DBUS :")),
        });
    }
    Ok(daemon)
}
