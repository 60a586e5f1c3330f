//! The whole grid as an operator runs it, on this one machine: a server namespace with
//! `napalm-coordinator` and nfs-ganesha (exporting the cached reference root, with the
//! exports the coordinator writes), N agent namespaces each running `napalm-agent` against
//! the host's libvirtd, all on a private bridge. Agents and coordinator find each other
//! by mDNS only. Clones are QEMU guests (libvirtd is one daemon in the root namespace)
//! attached through [`Network::root_bridge`] to the same private network; they get static
//! addresses PREFIX.101+ and mount the root from the server.
//!
//! Everything is torn down on drop: the grid's domains (by name prefix), daemons (by PID),
//! the transient libvirt network, bridges and namespaces.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::bins;
use crate::netns::{Host, Network};
use crate::proc::{wait_for, Daemon};
use crate::rootfs;

/// Token agents and coordinator share.
pub const TOKEN: &str = "napalm-grid-token";
const GRPC: u16 = 7700;
const HTTP: u16 = 7780;
const AGENT_HTTP: u16 = 8480;
const AGENT_GRPC: u16 = 8481;

/// A failure setting the grid up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GridError(pub String);

trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T, GridError>;
}

impl<T, E: std::fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, GridError> {
        self.map_err(|e| GridError(format!("{what}: {e}")))
    }
}

/// The guest kernel (`/boot/vmlinuz-*`, the newest) and its version.
pub fn guest_kernel() -> Result<(PathBuf, String), GridError> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ctx("reading /boot")?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    let k = found.pop().ok_or_else(|| {
        GridError("no /boot/vmlinuz-*: run scripts/setup (linux-image-cloud-amd64)".into())
    })?;
    let ver = k
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_owned();
    Ok((k, ver))
}

/// The static napalm-init, built once into `target/napalm-static` (shared with the
/// initramfs crate's tests).
pub fn static_init() -> Result<PathBuf, GridError> {
    if let Ok(p) = std::env::var("NAPALM_STATIC_INIT") {
        return Ok(PathBuf::from(p));
    }
    let target = bins::profile_dir()
        .parent()
        .map(|t| t.join("napalm-static"))
        .ok_or_else(|| GridError("no target dir".into()))?;
    let bin = target.join("x86_64-unknown-linux-gnu/release/napalm-init");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "--offline", "-p", "napalm-initramfs"])
        .args([
            "--bin",
            "napalm-init",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=symbols",
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ctx("running cargo for the static napalm-init")?;
    if !out.status.success() || !bin.exists() {
        return Err(GridError(format!(
            "static build of napalm-init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(bin)
}

/// Writes the base initramfs (static init + default modules) for `kernel_version`.
pub fn base_image(out: &Path, kernel_version: &str) -> Result<(), GridError> {
    use napalm_initramfs::image::{build, default_modules, Compression, ImageSpec};
    let (modules, optional) = default_modules(false);
    let spec = ImageSpec {
        init: static_init()?,
        kernel_config: Some(PathBuf::from(format!("/boot/config-{kernel_version}"))),
        kernel_version: kernel_version.to_owned(),
        modules_root: PathBuf::from("/lib/modules"),
        modules,
        optional_modules: optional,
        busybox: None,
        layers: Vec::new(),
        compression: Compression::Zstd,
        mtime: 0,
    };
    let img = build(&spec).ctx("building the base initramfs")?;
    std::fs::write(out, img.bytes).ctx("writing the base initramfs")
}

/// Grid settings.
#[derive(Debug, Clone)]
pub struct GridOptions {
    /// Agent hosts.
    pub agents: usize,
    /// Where the reference roots are cached (default `/var/cache/napalm/roots`, or
    /// `NAPALM_CACHE`): kept across runs and clones of the repository, rebuilt only when
    /// their inputs change.
    pub cache: PathBuf,
    /// Keep the grid's directory (logs, layers) after drop.
    pub keep: bool,
    /// The reference root to export (default: the cached busybox root).
    pub root: Option<PathBuf>,
}

impl Default for GridOptions {
    fn default() -> Self {
        Self {
            agents: 2,
            cache: std::env::var_os("NAPALM_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/cache/napalm/roots")),
            keep: false,
            root: None,
        }
    }
}

/// A running grid.
pub struct Grid {
    /// The server host (coordinator, ganesha).
    pub server: Host,
    /// Agent hosts.
    pub agent_hosts: Vec<Host>,
    /// The grid's working directory (logs under `log/`).
    pub dir: PathBuf,
    /// The exported reference root.
    pub root: PathBuf,
    /// Prefix of the private /24.
    pub prefix: String,
    /// Names of domains this grid may have created start with this.
    pub domain_prefix: String,
    coordinator: Option<Daemon>,
    ganesha: Option<Daemon>,
    agents: Vec<Option<Daemon>>,
    libvirt_net: String,
    keep: bool,
    net: Network,
    /// Held for the grid's life: grids (tests, the demo) run one at a time on a machine.
    _lock: std::fs::File,
}

/// Takes the machine-wide grid lock (flock on /run/napalm-grid-harness.lock), waiting.
fn grid_lock() -> Result<std::fs::File, GridError> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/napalm-grid-harness.lock")
        .ctx("opening /run/napalm-grid-harness.lock")?;
    loop {
        // SAFETY: flock on a descriptor we own; released when the file is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(GridError(format!(
                "locking /run/napalm-grid-harness.lock: {e}"
            )));
        }
    }
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File, GridError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log").join(format!("{name}.log")))
        .ctx("opening a log")
}

/// The daemon dies with the test process even if that is killed before drop runs.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no Rust state.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

fn ensure_libvirtd() -> Result<(), GridError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services");
    let st = Command::new("bash")
        .arg(script)
        .arg("start")
        .stdout(Stdio::null())
        .status()
        .ctx("scripts/services start")?;
    if st.success() {
        Ok(())
    } else {
        Err(GridError(
            "scripts/services start failed: libvirtd is needed".into(),
        ))
    }
}

fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .args(["-q", "-c", "qemu:///system"])
        .args(args)
        .output()
        .unwrap_or_else(|e| Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(1 << 8),
            stdout: Vec::new(),
            stderr: e.to_string().into_bytes(),
        })
}

impl Grid {
    /// Builds and starts everything; returns when every agent is registered.
    pub fn start(opts: GridOptions, domain_prefix: &str) -> Result<Grid, GridError> {
        let lock = grid_lock()?;
        ensure_libvirtd()?;
        std::fs::create_dir_all(&opts.cache).ctx("creating the cache")?;
        let root = match &opts.root {
            Some(r) => r.clone(),
            None => rootfs::busybox_root(&opts.cache).ctx("reference root")?,
        };
        let dir = tempfile::Builder::new()
            .prefix("napalm-grid-")
            .tempdir()
            .ctx("grid dir")?
            .keep();
        for d in ["log", "ganesha", "state", "layers"] {
            std::fs::create_dir_all(dir.join(d)).ctx("grid dirs")?;
        }
        let (kernel, kver) = guest_kernel()?;
        base_image(&dir.join("base.img"), &kver)?;

        let mut net = Network::new().ctx("private network")?;
        let server = net.host(1).ctx("server host")?;
        let mut agent_hosts = Vec::new();
        for i in 0..opts.agents {
            agent_hosts.push(net.host(11 + i as u8).ctx("agent host")?);
        }
        let bridge = net.root_bridge().ctx("clone bridge")?;
        let libvirt_net = format!("napalm-{bridge}");
        let xml = dir.join("net.xml");
        std::fs::write(
            &xml,
            format!("<network><name>{libvirt_net}</name><forward mode='bridge'/><bridge name='{bridge}'/></network>"),
        )
        .ctx("net xml")?;
        let prefix = net.prefix.clone();
        let mut grid = Grid {
            server,
            agent_hosts,
            dir,
            root,
            prefix,
            domain_prefix: domain_prefix.to_owned(),
            coordinator: None,
            ganesha: None,
            agents: Vec::new(),
            libvirt_net,
            keep: opts.keep,
            net,
            _lock: lock,
        };
        let out = virsh(&["net-create", &xml.display().to_string()]);
        if !out.status.success() {
            return Err(GridError(format!(
                "virsh net-create: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        grid.start_coordinator(&kernel)?;
        grid.start_ganesha()?;
        for i in 0..grid.agent_hosts.len() {
            grid.agents.push(None);
            grid.start_agent(i)?;
        }
        let want = grid.agent_hosts.len();
        let mut last = String::new();
        let ready = wait_for(Duration::from_secs(60), || {
            let out = match grid.napalmctl(&["--output", "json", "agents"]) {
                Ok(o) => o,
                Err(e) => {
                    last = e.to_string();
                    return None;
                }
            };
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let n = v
                .as_array()?
                .iter()
                .filter(|a| {
                    a["state"]
                        .as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case("ready"))
                })
                .count();
            (n >= want).then_some(())
        });
        if ready.is_none() {
            return Err(GridError(format!(
                "{want} agents did not register by mDNS within 60 s (napalmctl agents: {last}); see {}/log",
                grid.dir.display()
            )));
        }
        Ok(grid)
    }

    /// The coordinator's gRPC address.
    pub fn coordinator_addr(&self) -> String {
        format!("{}:{GRPC}", self.server.addr)
    }

    /// Agent `i`'s REST base URL.
    pub fn agent_rest(&self, i: usize) -> String {
        format!("http://{}:{AGENT_HTTP}", self.agent_hosts[i].addr)
    }

    /// The address of clone `index` (1-based).
    pub fn clone_addr(&self, index: u32) -> String {
        format!("{}.{}", self.prefix, 100 + index)
    }

    fn start_coordinator(&mut self, kernel: &Path) -> Result<(), GridError> {
        let s = &self.server;
        let d = &self.dir;
        let bin = bins::coordinator().ctx("napalm-coordinator")?;
        let mut cmd = s.command("unshare");
        cmd.args([
            "--uts",
            "sh",
            "-c",
            "hostname napalm-server && exec \"$@\"",
            "sh",
        ])
        .arg(bin)
        .args(["--listen", &format!("{}:{GRPC}", s.addr)])
        .args(["--http-listen", &format!("{}:{HTTP}", s.addr)])
        .args(["--register-base", &format!("http://{}:{HTTP}", s.addr)])
        .arg("--store")
        .arg(d.join("registry.redb"))
        .arg("--secret-file")
        .arg(d.join("secret"))
        .args(["--agent-token", TOKEN])
        .args(["--api-token", TOKEN])
        .arg("--kernel")
        .arg(kernel)
        .arg("--base-image")
        .arg(d.join("base.img"))
        .arg("--layers-dir")
        .arg(d.join("layers"))
        .args(["--server", &s.addr, "--network", &self.libvirt_net])
        .args(["--clone-addresses", &format!("{}.101/24", self.prefix)])
        .arg("--export-root")
        .arg(&self.root)
        .args(["--export-clients", &format!("{}.0/24", self.prefix)])
        .arg("--export-state-dir")
        .arg(d.join("state"))
        .args(["--state-size-mib", "64"])
        .arg("--ganesha-exports")
        .arg(d.join("ganesha/napalm-exports.conf"))
        .arg("--ganesha-pid-file")
        .arg(d.join("ganesha/ganesha.pid"))
        .args(["--mdns-interface", &s.iface, "--register-timeout", "300"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log_file(d, "coordinator")?)
        .stderr(log_file(d, "coordinator")?);
        let child = die_with_parent(&mut cmd)
            .spawn()
            .ctx("spawning napalm-coordinator")?;
        self.coordinator = Some(Daemon(child));
        let addr: SocketAddr = self.coordinator_addr().parse().ctx("coordinator address")?;
        let host = self.server.clone();
        let up = host
            .spawn(move || {
                wait_for(Duration::from_secs(30), || {
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
                })
                .is_some()
            })
            .ctx("probing the coordinator")?
            .join()
            .unwrap_or(false);
        if !up {
            return Err(GridError(format!(
                "napalm-coordinator did not listen on {addr}; see {}/log/coordinator.log",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Starts (or restarts) nfs-ganesha in the server namespace.
    pub fn start_ganesha(&mut self) -> Result<(), GridError> {
        let g = self.dir.join("ganesha");
        let conf = g.join("ganesha.conf");
        std::fs::write(
            &conf,
            format!(
                "NFS_CORE_PARAM {{ Protocols = 4; Bind_addr = {}; Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false; }}\n\
                 NFSV4 {{ Graceless = true; Lease_Lifetime = 10; Only_Numeric_Owners = true; }}\n\
                 NFS_KRB5 {{ Active_krb5 = false; }}\n\
                 %include \"{}\"\n",
                self.server.addr,
                g.join("napalm-exports.conf").display()
            ),
        )
        .ctx("ganesha.conf")?;
        let _ = std::fs::remove_file(g.join("ganesha.pid"));
        let mut cmd = self.server.command("ganesha.nfsd");
        let child = die_with_parent(&mut cmd)
            .arg("-F")
            .arg("-f")
            .arg(&conf)
            .arg("-L")
            .arg(self.dir.join("log/ganesha.log"))
            .arg("-p")
            .arg(g.join("ganesha.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir, "ganesha-stderr")?)
            .spawn()
            .ctx("ganesha.nfsd (nfs-ganesha, nfs-ganesha-vfs)")?;
        self.ganesha = Some(Daemon(child));
        let addr: SocketAddr = format!("{}:2049", self.server.addr)
            .parse()
            .ctx("nfs address")?;
        let up = self
            .server
            .spawn(move || {
                wait_for(Duration::from_secs(30), || {
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
                })
                .is_some()
            })
            .ctx("probing ganesha")?
            .join()
            .unwrap_or(false);
        if up {
            Ok(())
        } else {
            Err(GridError(format!(
                "ganesha did not listen on {addr}; see {}/log/ganesha.log",
                self.dir.display()
            )))
        }
    }

    /// Kills nfs-ganesha (SIGKILL, as a crash).
    pub fn kill_ganesha(&mut self) {
        if let Some(mut g) = self.ganesha.take() {
            g.kill();
        }
    }

    /// Starts agent `i` (again).
    pub fn start_agent(&mut self, i: usize) -> Result<(), GridError> {
        let h = &self.agent_hosts[i];
        let state = self.dir.join(format!("agent{i}"));
        std::fs::create_dir_all(&state).ctx("agent state dir")?;
        let bin = bins::agent().ctx("napalm-agent")?;
        let name = format!("agent{}", i + 1);
        let child = h
            .command("unshare")
            .args([
                "--uts",
                "sh",
                "-c",
                &format!("hostname {name} && exec \"$@\""),
                "sh",
            ])
            .arg(bin)
            .args(["--uri", "qemu:///system", "--reconcile-every", "2"])
            .args(["--allow-interface", "network"])
            .arg("--state-dir")
            .arg(&state)
            .args(["--http-listen", &format!("{}:{AGENT_HTTP}", h.addr)])
            .args(["--grpc-listen", &format!("{}:{AGENT_GRPC}", h.addr)])
            .args(["--mdns-interface", &h.iface])
            .env("NAPALM_AGENT_TOKEN", TOKEN)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file(&self.dir, &name)?)
            .stderr(log_file(&self.dir, &name)?)
            .spawn()
            .ctx("spawning napalm-agent")?;
        self.agents[i] = Some(Daemon(child));
        Ok(())
    }

    /// Kills agent `i` (SIGKILL).
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut a) = self.agents[i].take() {
            a.kill();
        }
    }

    /// Kills the coordinator (SIGKILL).
    pub fn kill_coordinator(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            c.kill();
        }
    }

    /// Restarts the coordinator on its registry.
    pub fn restart_coordinator(&mut self) -> Result<(), GridError> {
        self.kill_coordinator();
        let (kernel, _) = guest_kernel()?;
        self.start_coordinator(&kernel)
    }

    /// Cuts agent host `i` off the network, or heals it.
    pub fn set_agent_link(&self, i: usize, up: bool) -> Result<(), GridError> {
        self.net
            .set_link(&self.agent_hosts[i], up)
            .ctx("setting the link")
    }

    /// `napalmctl --coordinator SERVER` to run in the server namespace (add arguments).
    pub fn napalmctl_command(&self) -> Result<Command, GridError> {
        let bin = bins::napalmctl().ctx("napalmctl")?;
        let mut c = self.server.command(bin);
        c.args(["--coordinator", &self.coordinator_addr()])
            .args(["--token", TOKEN])
            // `domain --agent ID` asks the coordinator (NAPALM_TOKEN) for the agent's REST
            // endpoint and calls the agent with --token.
            .env("NAPALM_TOKEN", TOKEN)
            .stdin(Stdio::null());
        Ok(c)
    }

    /// Runs `napalmctl --coordinator SERVER ARGS` in the server namespace.
    pub fn napalmctl(&self, args: &[&str]) -> Result<Output, GridError> {
        self.napalmctl_command()?
            .args(args)
            .output()
            .ctx("running napalmctl")
    }

    /// The deployment's clones as napalmctl prints them in JSON.
    pub fn clones(&self, deployment: &str) -> Result<Vec<serde_json::Value>, GridError> {
        let out = self.napalmctl(&["clones", "--deployment", deployment, "--output", "json"])?;
        if !out.status.success() {
            return Err(GridError(format!(
                "napalmctl clones: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).ctx("napalmctl clones JSON")?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Runs a shell command inside the clone at `addr` (its test shell on port 5000),
    /// from the server namespace; returns what it printed.
    pub fn clone_sh(
        &self,
        addr: &str,
        script: &str,
        timeout: Duration,
    ) -> Result<String, GridError> {
        let target: SocketAddr = format!("{addr}:{}", rootfs::SHELL_PORT)
            .parse()
            .ctx("clone address")?;
        let script = format!("{script}\nexit\n");
        self.server
            .spawn(move || -> Result<String, String> {
                let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3))
                    .map_err(|e| format!("connecting to {target}: {e}"))?;
                s.set_read_timeout(Some(timeout))
                    .map_err(|e| e.to_string())?;
                s.write_all(script.as_bytes()).map_err(|e| e.to_string())?;
                let mut out = String::new();
                s.read_to_string(&mut out)
                    .map_err(|e| format!("reading from {target}: {e}"))?;
                Ok(out)
            })
            .ctx("entering the server namespace")?
            .join()
            .map_err(|_| GridError("clone shell thread panicked".into()))?
            .map_err(GridError)
    }

    /// Waits until the clone's shell answers.
    pub fn wait_clone_shell(&self, addr: &str, timeout: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self
                .clone_sh(addr, "echo alive", Duration::from_secs(15))
                .is_ok_and(|o| o.contains("alive"))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        false
    }

    /// Names of libvirt domains of this grid.
    pub fn domains(&self) -> Vec<String> {
        String::from_utf8_lossy(&virsh(&["list", "--all", "--name"]).stdout)
            .lines()
            .map(str::trim)
            .filter(|n| n.starts_with(&self.domain_prefix))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Grid {
    fn drop(&mut self) {
        for a in &mut self.agents {
            if let Some(mut a) = a.take() {
                a.kill();
            }
        }
        self.kill_coordinator();
        for d in self.domains() {
            let _ = virsh(&["destroy", &d]);
            let _ = virsh(&["undefine", &d]);
        }
        self.kill_ganesha();
        let _ = virsh(&["net-destroy", &self.libvirt_net]);
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("grid directory kept: {}", self.dir.display());
        }
    }
}
