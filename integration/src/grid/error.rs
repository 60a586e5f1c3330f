//! What can go wrong starting or driving a grid. Each message says what the harness was
//! doing; the cause is the `#[source]`, never repeated in the message, so
//! [`crate::error_chain`] (or anyhow's `{:#}`) prints the whole chain once.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use crate::bins::BinError;
use crate::ganesha::GaneshaError;
use crate::netns::NetError;
use crate::rootfs::RootError;

/// A failure setting the grid up or talking to it.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant's #[error] message documents it; the fields are named for what they hold"
)]
pub enum GridError {
    /// A file, socket or process operation of the harness failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A program ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    /// Something the grid waits for did not happen in time; the daemons' logs tell why.
    #[error("{what} within {secs} s; the grid's daemons:\n{logs}")]
    Timeout {
        what: String,
        secs: u64,
        logs: String,
    },
    /// No guest kernel is installed.
    #[error("no /boot/vmlinuz-*: run scripts/setup (linux-image-cloud-amd64)")]
    NoKernel,
    /// The base initramfs could not be built.
    #[error("building the base initramfs")]
    Image(#[source] napalm_initramfs::image::ImageError),
    /// The static napalm-init could not be built.
    #[error("building the static napalm-init")]
    StaticInit(#[source] napalm_initramfs::testing::StaticInitError),
    /// The reference root could not be built.
    #[error("building the reference root under {}", .cache.display())]
    Root {
        cache: PathBuf,
        #[source]
        source: RootError,
    },
    /// The private network (namespaces, bridges, veths) could not be set up or entered.
    #[error(transparent)]
    Net(#[from] NetError),
    /// nfs-ganesha or its private bus did not start, or its counters could not be read.
    #[error(transparent)]
    Ganesha(#[from] GaneshaError),
    /// A workspace binary is missing and could not be built.
    #[error(transparent)]
    Bin(#[from] BinError),
    /// A program printed something other than the JSON it promises.
    #[error("{what} did not print valid JSON")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// An address given to the harness is not `IP:PORT`.
    #[error("{addr} is not a socket address")]
    Address {
        addr: String,
        #[source]
        source: std::net::AddrParseError,
    },
    /// A thread the harness ran inside a namespace panicked.
    #[error("the thread {what} panicked")]
    Panicked { what: String },
}

/// Context for I/O failures: `.ctx("opening a log")?` turns an [`io::Error`] into
/// [`GridError::Io`] saying what the harness was doing.
pub(crate) trait Ctx<T> {
    fn ctx(self, what: impl Into<String>) -> Result<T, GridError>;
}

impl<T> Ctx<T> for Result<T, io::Error> {
    fn ctx(self, what: impl Into<String>) -> Result<T, GridError> {
        self.map_err(|source| GridError::Io {
            what: what.into(),
            source,
        })
    }
}
