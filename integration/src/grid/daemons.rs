//! The grid's daemons as an operator starts them: `napalm-coordinator` and nfs-ganesha in
//! the server namespace, one `napalm-agent` per agent namespace. Each logs to
//! `DIR/log/NAME.log`, dies with the test process and is killed by PID on drop.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::error::{Ctx, GridError};
use super::{
    socket, Grid, Hypervisor, AGENT_GANGLIA, AGENT_GRPC, AGENT_HTTP, GRPC, HTTP, HTTPS, TOKEN,
    TRUST,
};
use crate::bins;
use crate::ganesha::{self, NfsStats};
use crate::netns::Host;
use crate::proc::{die_with_parent, Daemon};

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File, GridError> {
    let path = dir.join("log").join(format!("{name}.log"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .ctx(format!("opening {}", path.display()))
}

/// Whether `port` on `host` accepts TCP connections within `secs`, tried from `from`'s
/// namespace.
fn listens(from: &Host, host: &Host, port: u16, secs: u64) -> Result<bool, GridError> {
    Ok(from.listens(socket(host, port), Duration::from_secs(secs))?)
}

impl Grid {
    /// Starts the coordinator in the server namespace and waits until its gRPC port listens.
    pub(super) fn start_coordinator(&mut self) -> Result<(), GridError> {
        let s = &self.server;
        let d = &self.dir;
        let bin = bins::coordinator()?;
        let mut cmd = s.command("unshare");
        cmd.args([
            "--uts",
            "sh",
            "-c",
            "hostname napalm-server && exec \"$@\"",
            "sh",
        ])
        .arg(bin)
        .args(self.insecure_plain.then_some("--insecure-plain"))
        .args(["--listen", &format!("{}:{GRPC}", s.addr)])
        .args(["--http-listen", &format!("{}:{HTTP}", s.addr)])
        .args([
            "--register-base",
            &if self.register_over_https {
                format!("https://{}:{HTTPS}", s.addr)
            } else {
                format!("http://{}:{HTTP}", s.addr)
            },
        ])
        .arg("--store")
        .arg(d.join("registry.redb"))
        .arg("--secret-file")
        .arg(d.join("secret"))
        .args(["--agent-token", TOKEN])
        .args(["--api-token", TOKEN])
        .arg("--layers-dir")
        .arg(d.join("layers"));
        // What clones need: their kernel and image, addresses, the root and state over NFS.
        if let (Some(kernel), Some(root), Some(net)) = (&self.kernel, &self.root, &self.libvirt_net)
        {
            cmd.arg("--kernel")
                .arg(kernel)
                .arg("--base-image")
                .arg(d.join("base.img"))
                .args(["--server", &s.addr, "--network", net])
                .args(["--clone-addresses", &format!("{}.101/24", self.prefix)])
                .arg("--export-root")
                .arg(root)
                .args(["--export-clients", &format!("{}.0/24", self.prefix)])
                .arg("--export-state-dir")
                .arg(d.join("state"))
                .args(["--state-size-mib", "64"])
                .arg("--ganesha-exports")
                .arg(d.join("ganesha/napalm-exports.conf"))
                .arg("--ganesha-pid-file")
                .arg(d.join("ganesha/ganesha.pid"));
        }
        if let Some(ttl) = self.trust_cert_ttl {
            // The HTTP endpoint over TLS too; clones register there only with
            // `register_over_https` (a root with curl): busybox wget's TLS (no
            // signature_algorithms) is refused by the coordinator's rustls.
            cmd.args(["--trust-listen", &format!("{}:{TRUST}", s.addr)])
                .args(["--trust-cert-ttl", &ttl.as_secs().max(1).to_string()])
                .args(["--https-listen", &format!("{}:{HTTPS}", s.addr)]);
        }
        cmd.args(["--mdns-interface", &s.iface, "--register-timeout", "300"])
            .args([
                "--agent-lost-grace",
                &self.agent_lost_grace.as_secs().to_string(),
            ])
            .args(
                self.coordinator_args
                    .iter()
                    .map(|a| a.replace("{server}", &s.addr)),
            )
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file(d, "coordinator")?)
            .stderr(log_file(d, "coordinator")?);
        let child = die_with_parent(&mut cmd)
            .spawn()
            .ctx("spawning napalm-coordinator")?;
        self.coordinator = Some(Daemon(child));
        // The API: on the plain listener, else on the TLS one.
        let api = if self.insecure_plain { GRPC } else { TRUST };
        if !listens(&self.server, &self.server, api, 30)? {
            return Err(self.timeout(
                format!(
                    "napalm-coordinator did not listen on {}:{api}",
                    self.server.addr
                ),
                30,
            ));
        }
        Ok(())
    }

    /// Starts (or restarts: the running one is killed first, as it holds the port and the
    /// bus name) nfs-ganesha in the server namespace, on the grid's private bus, which is
    /// started with the first ganesha and outlives restarts. Fails, quoting the command,
    /// if ganesha does not listen or does not register on the bus.
    pub fn start_ganesha(&mut self) -> Result<(), GridError> {
        self.kill_ganesha();
        let g = self.dir.join("ganesha");
        let log_dir = self.dir.join("log");
        let bus = match self.ganesha_bus.take() {
            Some(bus) => bus,
            None => ganesha::PrivateBus::start(&self.server, &g, &log_dir)?,
        };
        let started = ganesha::start(&ganesha::Server {
            host: &self.server,
            dir: &g,
            log_dir: &log_dir,
            exports: &g.join("napalm-exports.conf"),
            bus: &bus,
        });
        self.ganesha_bus = Some(bus);
        self.ganesha = Some(started?);
        Ok(())
    }

    /// nfs-ganesha's counters now (NFSv4 operations by name and by minor version, READ and
    /// WRITE bytes per export), read over its private bus; [`NfsStats::since`] gives what
    /// happened between two snapshots.
    pub fn nfs_stats(&self) -> Result<NfsStats, GridError> {
        let bus = self
            .ganesha_bus
            .as_ref()
            .ok_or(ganesha::GaneshaError::NotRunning)?;
        Ok(NfsStats::query(bus)?)
    }

    /// Starts agent `i` (again) in its namespace, as host name `agentN` (N = i + 1).
    pub fn start_agent(&mut self, i: usize) -> Result<(), GridError> {
        let state = self.dir.join(format!("agent{i}"));
        std::fs::create_dir_all(&state).ctx(format!("creating {}", state.display()))?;
        let bin = bins::agent()?;
        let name = format!("agent{}", i + 1);
        // With the PKI, a host not enrolled yet gets a join token of its own.
        let join = match self.trust_cert_ttl {
            Some(_) if !state.join("tls/agent.crt").exists() => Some(self.join_token(&name)?),
            _ => None,
        };
        let h = &self.agent_hosts[i];
        let mut cmd = h.command("unshare");
        cmd.args([
            "--uts",
            "sh",
            "-c",
            &format!("hostname {name} && exec \"$@\""),
            "sh",
        ])
        .arg(bin);
        match self.hypervisor {
            // The clones' taps are made by the host's one libvirtd, in the namespace
            // this test runs in, not in the agent's: its port filters go there.
            Hypervisor::Qemu => cmd
                .args(["--uri", "qemu:///system", "--reconcile-every", "2"])
                .args(["--allow-interface", "network"])
                .arg("--port-filter-netns")
                .arg(format!("/proc/{}/ns/net", std::process::id())),
            Hypervisor::Test => cmd
                .args(["--uri", "test:///default"])
                .args(["--shutdown-timeout", "1"]),
        };
        if !self.rest_prefix.is_empty() {
            cmd.args(["--prefix", &self.rest_prefix]);
        }
        cmd.arg("--state-dir")
            .arg(&state)
            .args(["--http-listen", &format!("{}:{AGENT_HTTP}", h.addr)])
            .args(["--grpc-listen", &format!("{}:{AGENT_GRPC}", h.addr)])
            .args(["--ganglia-listen", &format!("{}:{AGENT_GANGLIA}", h.addr)])
            // A Ganglia cluster per agent: one gmetad polls them all (see ganglia.rs).
            .args(["--ganglia-cluster", &name])
            .args(["--mdns-interface", &h.iface])
            .args(
                self.agent_args
                    .iter()
                    .map(|a| a.replace("{server}", &self.server.addr)),
            )
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file(&self.dir, &name)?)
            .stderr(log_file(&self.dir, &name)?);
        match (&join, self.trust_cert_ttl) {
            (Some(token), _) => {
                cmd.env("NAPALM_JOIN_TOKEN", token);
            }
            (None, Some(_)) => {}
            (None, None) => {
                // Neither enrolled nor enrolling: plain text, the grid's shared token.
                cmd.env("NAPALM_AGENT_TOKEN", TOKEN).arg("--insecure-plain");
            }
        }
        let child = die_with_parent(&mut cmd)
            .spawn()
            .ctx("spawning napalm-agent")?;
        self.agents[i] = Some(Daemon(child));
        Ok(())
    }

    /// A single-use join token for host `name`, made as an operator would.
    fn join_token(&self, name: &str) -> Result<String, GridError> {
        let args = ["agent", "token", "create", "--ttl", "10m", "--name", name];
        let out = self.napalmctl(&args)?;
        if !out.status.success() {
            return Err(GridError::CommandFailed {
                command: format!("napalmctl {}", args.join(" ")),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Waits until agent `i`'s REST and gRPC ports listen, seen from the client host.
    pub(super) fn wait_agent_listens(&mut self, i: usize) -> Result<(), GridError> {
        for port in [AGENT_HTTP, AGENT_GRPC] {
            if !listens(&self.client, &self.agent_hosts[i], port, 30)? {
                let what = format!(
                    "napalm-agent {} did not listen on {}",
                    i + 1,
                    socket(&self.agent_hosts[i], port)
                );
                return Err(self.timeout(what, 30));
            }
        }
        Ok(())
    }
}
