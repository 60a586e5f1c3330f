//! Why a deployment, or one clone of it, did not come up. Messages are sentences that
//! never repeat their `#[source]`: [`chain`] prints the whole chain once, where it is
//! stored (a clone's `last_error`) or shown.
//!
//! Errors are `Clone` (sources behind `Arc`): one failed layer build fails every clone of
//! the batch with the same error.

use std::path::PathBuf;
use std::sync::Arc;

use crate::exports::ExportError;
use crate::registry::RegistryError;

/// A step of the deploy pipeline that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeployError {
    /// An undeploy or a newer deploy of the deployment came while the clone waited to
    /// start.
    #[error("not started: {0}")]
    Withdrawn(super::holds::WithdrawnBy),
    /// The ROM `--guest-firmware` names is unreadable.
    #[error(
        "cannot read the guest firmware {} (--guest-firmware): give a readable ROM file, `auto` (qboot when installed) or `default` (libvirt's SeaBIOS)",
        path.display()
    )]
    Firmware {
        /// The ROM's path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// An input file of every clone (kernel, base initramfs) is unreadable.
    #[error(
        "cannot read the {what} {}; build it with napalm-mkinitramfs or pass another path",
        path.display()
    )]
    Input {
        /// Which input.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The kernel could not be turned into the ELF QEMU boots through PVH.
    #[error("the kernel cannot be booted through its PVH entry")]
    Kernel(#[source] Arc<napalm_initramfs::kernel::KernelError>),
    /// `--kernel-entry pvh` with a kernel built without `CONFIG_PVH`.
    #[error(
        "{} has no PVH entry (no Xen note of type 18, XEN_ELFNOTE_PHYS32_ENTRY): give a \
         kernel built with CONFIG_PVH=y, or boot the bzImage (--kernel-entry bzimage or auto)",
        path.display()
    )]
    NoPvhEntry {
        /// The kernel.
        path: PathBuf,
    },
    /// A named template set is in none of the set directories.
    #[error("unknown layer set {name:?}: no directory {name}/ in {searched}")]
    UnknownSet {
        /// The set asked for.
        name: String,
        /// The directories searched, comma-separated.
        searched: String,
    },
    /// A template set exists but does not load.
    #[error("template set {name:?} does not load")]
    BadSet {
        /// The set.
        name: String,
        /// Why.
        #[source]
        source: Arc<napalm_overlay::TemplateError>,
    },
    /// The deployment's values do not resolve into a cluster.
    #[error("the deployment's values do not resolve")]
    Cluster(#[source] Arc<napalm_overlay::ConfigError>),
    /// A file or directory of the layers could not be written or read.
    #[error("{what} {}", path.display())]
    Io {
        /// What it is.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// napalm-overlay could not build a layer (of one clone, or of the whole batch).
    #[error("building the layer")]
    Layer(#[source] Arc<napalm_overlay::BuildError>),
    /// A clone's layer could not be packed as an initramfs segment.
    #[error("packing the layer of {clone} as an initramfs segment")]
    Segment {
        /// The clone.
        clone: String,
        /// Why.
        #[source]
        source: Arc<napalm_initramfs::image::ImageError>,
    },
    /// A worker thread or blocking task died.
    #[error("the {0} task panicked")]
    TaskPanicked(&'static str),
    /// The NFS exports could not be written or reloaded.
    #[error("NFS exports")]
    Exports(#[source] Arc<ExportError>),
    /// An agent refused or failed a step; `message` is the agent's.
    #[error("{step}: {message}")]
    Agent {
        /// The step (`shipping`, `creating the domain`, …).
        step: &'static str,
        /// The gRPC code the agent answered.
        code: tonic::Code,
        /// The agent's message.
        message: String,
    },
    /// A clone's `root=` would not read back (a root, server or path the grammar cannot
    /// carry).
    #[error("the clone's root= cannot be written")]
    Cmdline(#[source] Arc<napalm_initramfs::rootspec::RootParseError>),
    /// A clone's `ip=` would not read back.
    #[error("the clone's ip= cannot be written")]
    Ip(#[source] Arc<napalm_initramfs::ip::IpParseError>),
    /// A clone's `napalm.scratch=` would not read back.
    #[error("the clone's napalm.scratch= cannot be written")]
    Scratch(#[source] Arc<napalm_initramfs::scratch::ScratchError>),
    /// The agent a clone is placed on left the registry.
    #[error("agent {0} is gone")]
    AgentGone(String),
    /// The registry could not be read or written.
    #[error("the registry")]
    Registry(#[source] Arc<RegistryError>),
}

impl DeployError {
    /// An agent's answer to `step` as an error.
    pub fn agent(step: &'static str, status: &tonic::Status) -> Self {
        Self::Agent {
            step,
            code: status.code(),
            message: status.message().to_owned(),
        }
    }

    /// An I/O error at `path` while doing `what`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source: Arc::new(source),
        }
    }
}

impl From<RegistryError> for DeployError {
    fn from(e: RegistryError) -> Self {
        Self::Registry(Arc::new(e))
    }
}

/// The error and its sources, each once: `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        next = cause.source();
    }
    s
}
