//! What can go wrong starting nfs-ganesha on its private bus or reading its counters. Each
//! message quotes the command that failed, as an operator would type it again.

use std::process::{Command, ExitStatus};

use crate::netns::NetError;

use super::reply::ParseError;

/// A failure of the bus, of ganesha's start, or of a statistics call.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant's #[error] message documents it; the fields are named for what they hold"
)]
pub enum GaneshaError {
    /// A file operation of the harness failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A program could not be run at all.
    #[error("cannot run `{command}` ({hint})")]
    Spawn {
        command: String,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The private dbus-daemon did not answer.
    #[error("the private bus started by `{command}` did not answer within {secs} s (last: {last}); its log:\n{log}")]
    BusNotReady {
        command: String,
        secs: u64,
        last: String,
        log: String,
    },
    /// ganesha did not listen (or exited).
    #[error("`{command}` did not listen on {addr} within {secs} s; its log:\n{log}")]
    NotListening {
        command: String,
        addr: String,
        secs: u64,
        log: String,
    },
    /// ganesha serves NFS but its counters cannot be read: it is not on the bus.
    #[error("`{command}` serves NFS but does not own org.ganesha.nfsd on the bus {bus} ({owner}), so its statistics cannot be read; ganesha's D-Bus log lines:\n{log}")]
    NotOnBus {
        command: String,
        bus: String,
        owner: String,
        log: String,
    },
    /// A D-Bus call ran and failed (no such name or method, policy, timeout).
    #[error("`{command}` failed ({status}): {stderr}")]
    Call {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    /// dbus-send printed something that is not a reply.
    #[error("`{command}` printed an unreadable reply:\n{reply}")]
    Reply {
        command: String,
        reply: String,
        #[source]
        source: ParseError,
    },
    /// A reply's arguments are not those the method sends (another ganesha version?).
    #[error("{method} answered {got} where ganesha 4.3 sends {expected}")]
    Shape {
        method: String,
        expected: &'static str,
        got: String,
    },
    /// ganesha answered, but not with its counters (status false, or counting disabled).
    #[error("ganesha refused {method}: {message}")]
    Refused { method: String, message: String },
    /// The server host's address is not an IP address.
    #[error("the server's address {addr} is not an IP address")]
    Address {
        addr: String,
        #[source]
        source: std::net::AddrParseError,
    },
    /// This grid runs no nfs-ganesha ([`crate::grid::Hypervisor::Test`]).
    #[error("this grid runs no nfs-ganesha (only QEMU grids do)")]
    NotRunning,
    /// The server's namespace could not be entered.
    #[error(transparent)]
    Net(#[from] NetError),
}

/// `cmd` as a shell line: the variables it sets, the program and its arguments.
pub(crate) fn shown(cmd: &Command) -> String {
    let mut words: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    words.push(cmd.get_program().to_string_lossy().into_owned());
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}
