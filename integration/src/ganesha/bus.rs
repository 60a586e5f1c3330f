//! A private system bus for nfs-ganesha: a `dbus-daemon` of its own per server, on a unix
//! socket in the server's directory, whose policy lets root own `org.ganesha.nfsd` and
//! call it (what the package's `/etc/dbus-1/system.d/nfs-ganesha-dbus.conf` grants on a
//! real system bus) and nothing else. ganesha finds it through `DBUS_SYSTEM_BUS_ADDRESS`
//! (libdbus honours it for `DBUS_BUS_SYSTEM`), so it never needs, nor meets, the machine's
//! own system bus (there is none here: no systemd), and a grid's ganesha never takes the
//! name from another ganesha on the machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::error::{shown, GaneshaError};
use super::reply::{self, Value};
use crate::netns::Host;
use crate::proc::{die_with_parent, wait_for, Daemon};

/// How long a `dbus-send` waits for its answer.
const REPLY_TIMEOUT_MS: u32 = 10_000;

/// A running private bus; the daemon is killed on drop.
pub struct PrivateBus {
    daemon: Daemon,
    address: String,
    log: PathBuf,
}

/// The bus configuration: a system bus on `socket`, root only, where only
/// `org.ganesha.nfsd` may be owned and called (replies and signals flow as on Debian's
/// system bus, `/usr/share/dbus-1/system.conf`).
fn config(socket: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
  </policy>
  <policy user="root">
    <allow own="{name}"/>
    <allow send_destination="{name}"/>
  </policy>
</busconfig>
"#,
        socket.display(),
        name = super::BUS_NAME,
    )
}

impl PrivateBus {
    /// Starts `dbus-daemon` in `host`'s namespace with its configuration and socket in
    /// `dir` (`bus.conf`, `bus.sock`) and its log in `log_dir/ganesha-dbus.log`; returns
    /// once the bus answers a call.
    pub fn start(host: &Host, dir: &Path, log_dir: &Path) -> Result<Self, GaneshaError> {
        let socket = dir.join("bus.sock");
        let conf = dir.join("bus.conf");
        let log = log_dir.join("ganesha-dbus.log");
        // A socket left by an earlier daemon would make this one fail to listen.
        let _ = std::fs::remove_file(&socket);
        std::fs::write(&conf, config(&socket)).map_err(|source| GaneshaError::Io {
            what: format!("writing {}", conf.display()),
            source,
        })?;
        let mut cmd = host.command("dbus-daemon");
        cmd.arg("--nofork")
            .arg(format!("--config-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(super::append(&log)?);
        let command = shown(&cmd);
        let child = die_with_parent(&mut cmd)
            .spawn()
            .map_err(|source| GaneshaError::Spawn {
                command: command.clone(),
                hint: "package dbus-daemon",
                source,
            })?;
        let bus = PrivateBus {
            daemon: Daemon(child),
            address: format!("unix:path={}", socket.display()),
            log,
        };
        // The bus is up when it answers its own interface (which also checks the policy).
        let secs = 10;
        let mut last = String::new();
        let up = wait_for(Duration::from_secs(secs), || {
            match bus.call(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.GetId",
                &[],
            ) {
                Ok(_) => Some(()),
                Err(e) => {
                    last = crate::error_chain(&e);
                    None
                }
            }
        });
        match up {
            Some(()) => Ok(bus),
            None => Err(GaneshaError::BusNotReady {
                command,
                secs,
                last,
                log: bus.log_text(),
            }),
        }
    }

    /// The bus address (`unix:path=…`), for `DBUS_SYSTEM_BUS_ADDRESS` or `dbus-send --bus`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Kills the daemon (SIGKILL, as a crash); the address stays, answering nothing.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// The daemon's log so far (policy rejections show there).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Calls `member` (`interface.Method`) of `path` on `dest` with `args` in dbus-send's
    /// notation (`string:all`, `uint16:1`) and returns the reply's arguments.
    pub fn call(
        &self,
        dest: &str,
        path: &str,
        member: &str,
        args: &[&str],
    ) -> Result<Vec<Value>, GaneshaError> {
        let mut cmd = Command::new("dbus-send");
        cmd.arg(format!("--bus={}", self.address))
            .arg("--print-reply")
            .arg(format!("--reply-timeout={REPLY_TIMEOUT_MS}"))
            .arg(format!("--dest={dest}"))
            .arg(path)
            .arg(member)
            .args(args)
            .stdin(Stdio::null());
        let command = shown(&cmd);
        let out = cmd.output().map_err(|source| GaneshaError::Spawn {
            command: command.clone(),
            hint: "package dbus-bin",
            source,
        })?;
        if !out.status.success() {
            return Err(GaneshaError::Call {
                command,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let text = String::from_utf8_lossy(&out.stdout);
        reply::parse(&text).map_err(|source| GaneshaError::Reply {
            command,
            reply: text.into_owned(),
            source,
        })
    }

    /// The process id of the connection that owns `name` on this bus, `None` if nobody
    /// owns it.
    pub fn owner_pid(&self, name: &str) -> Result<Option<u32>, GaneshaError> {
        let has = self.call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.NameHasOwner",
            &[&format!("string:{name}")],
        )?;
        if has.first() != Some(&Value::Bool(true)) {
            return Ok(None);
        }
        let args = [format!("string:{name}")];
        let member = "org.freedesktop.DBus.GetConnectionUnixProcessID";
        let pid = self.call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            member,
            &[&args[0]],
        )?;
        match pid.first().and_then(Value::as_u64) {
            Some(p) => Ok(Some(p as u32)),
            None => Err(GaneshaError::Shape {
                method: member.to_owned(),
                expected: "a uint32 process id",
                got: format!("{pid:?}"),
            }),
        }
    }
}
