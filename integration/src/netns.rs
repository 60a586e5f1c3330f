//! Test hosts in network namespaces this process creates: each [`Host`] is a namespace
//! with loopback up and one veth into a private bridge that lives in its own namespace, so
//! nothing touches the machine's real interfaces and there is no route out. Everything is
//! deleted on drop, also when a test panics.

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Errors building or entering the network.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant's #[error] message documents it; the fields are named for what they hold"
)]
pub enum NetError {
    /// `ip` could not be run at all (package iproute2).
    #[error("cannot run `ip {args}` (is iproute2 installed?)")]
    IpSpawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    /// An `ip` command ran and failed (not root? a name already taken?).
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    /// A namespace could not be opened to enter it.
    #[error("cannot enter network namespace {ns}")]
    Setns {
        ns: String,
        #[source]
        source: std::io::Error,
    },
}

fn ip(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetError::IpSpawn {
            args: args.join(" "),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A private L2 network: a bridge in its own namespace, and hosts attached to it.
pub struct Network {
    tag: String,
    bridge_ns: String,
    /// The /24 prefix, e.g. `10.213.7`.
    pub prefix: String,
    hosts: Vec<String>,
    root_bridge: Option<String>,
}

/// One host on a [`Network`].
#[derive(Debug, Clone)]
pub struct Host {
    /// Namespace name, `TAG-hI` (for `ip netns exec`).
    pub ns: String,
    /// Its veth end inside the namespace, `ethI` (for `--mdns-interface`).
    pub iface: String,
    /// Its IPv4 address on the private /24, `PREFIX.I`.
    pub addr: String,
}

impl Network {
    /// A new network with a unique tag and a /24 chosen from it.
    pub fn new() -> Result<Self, NetError> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id() % 10_000;
        let tag = format!("nap{pid}x{n}");
        let bridge_ns = format!("{tag}-br");
        ip(&["netns", "add", &bridge_ns])?;
        let net = Self {
            prefix: format!("10.{}.{}", 100 + (pid % 100), (n % 250) + 1),
            tag,
            bridge_ns,
            hosts: Vec::new(),
            root_bridge: None,
        };
        ip(&["-n", &net.bridge_ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &net.bridge_ns, "link", "set", "br0", "up"])?;
        Ok(net)
    }

    /// Adds host number `i` (1..=250): namespace, veth into the bridge, address PREFIX.i.
    pub fn host(&mut self, i: u8) -> Result<Host, NetError> {
        let ns = format!("{}-h{i}", self.tag);
        let (inner, outer) = (format!("eth{i}"), format!("v{}h{i}", self.tag));
        ip(&["netns", "add", &ns])?;
        self.hosts.push(ns.clone());
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "add",
            &outer,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
            "netns",
            &ns,
        ])?;
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "set",
            &outer,
            "master",
            "br0",
        ])?;
        ip(&["-n", &self.bridge_ns, "link", "set", &outer, "up"])?;
        let addr = format!("{}.{i}", self.prefix);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &inner,
        ])?;
        ip(&["-n", &ns, "link", "set", &inner, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(Host {
            ns,
            iface: inner,
            addr,
        })
    }

    /// A bridge in the machine's own namespace joined to this network by a veth, for VMs
    /// that libvirtd (one daemon, in the root namespace) starts: they attach to it and are
    /// on the private network. It has no address (IPv6 off too), so the root namespace is
    /// not on that network and guests have no route anywhere else. Returns its name.
    pub fn root_bridge(&mut self) -> Result<String, NetError> {
        if let Some(b) = &self.root_bridge {
            return Ok(b.clone());
        }
        let br = format!("nb{}", self.tag);
        let (outer, inner) = (format!("vr{}", self.tag), format!("vb{}", self.tag));
        ip(&["link", "add", &br, "type", "bridge"])?;
        self.root_bridge = Some(br.clone());
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{br}/disable_ipv6"), "1");
        ip(&[
            "link",
            "add",
            &outer,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
            "netns",
            &self.bridge_ns,
        ])?;
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{outer}/disable_ipv6"), "1");
        ip(&["link", "set", &outer, "master", &br])?;
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "set",
            &inner,
            "master",
            "br0",
        ])?;
        ip(&["-n", &self.bridge_ns, "link", "set", &inner, "up"])?;
        ip(&["link", "set", &outer, "up"])?;
        ip(&["link", "set", &br, "up"])?;
        Ok(br)
    }

    /// Cuts host `h` off the network (its veth goes down), or heals it.
    pub fn set_link(&self, h: &Host, up: bool) -> Result<(), NetError> {
        ip(&[
            "-n",
            &h.ns,
            "link",
            "set",
            &h.iface,
            if up { "up" } else { "down" },
        ])
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Some(br) = &self.root_bridge {
            let _ = Command::new("ip")
                .args(["link", "del", &format!("vr{}", self.tag)])
                .status();
            let _ = Command::new("ip").args(["link", "del", br]).status();
        }
        for ns in self.hosts.iter().chain([&self.bridge_ns]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Host {
    /// A command that runs `program` inside this host's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// Whether `addr` accepts TCP connections within `timeout`, tried from this host's
    /// namespace every 100 ms.
    pub fn listens(
        &self,
        addr: std::net::SocketAddr,
        timeout: std::time::Duration,
    ) -> Result<bool, NetError> {
        let up = self
            .spawn(move || {
                crate::proc::wait_for(timeout, || {
                    std::net::TcpStream::connect_timeout(
                        &addr,
                        std::time::Duration::from_millis(200),
                    )
                    .ok()
                })
                .is_some()
            })?
            .join()
            .unwrap_or(false);
        Ok(up)
    }

    /// Runs `f` on a new thread that has entered this host's namespace (threads it spawns
    /// inherit it).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<T>, NetError> {
        let path = format!("/run/netns/{}", self.ns);
        let ns = self.ns.clone();
        let file = std::fs::File::open(&path).map_err(|source| NetError::Setns {
            ns: ns.clone(),
            source,
        })?;
        Ok(std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a namespace fd we own and keep open.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                r,
                0,
                "setns({ns}) failed: {}",
                std::io::Error::last_os_error()
            );
            f()
        }))
    }
}
