//! The clones' side of a QEMU grid: what they need before the daemons start (root, kernel,
//! base image, the libvirt network on the clone bridge), and how a test reaches them
//! (addresses, `napalmctl clones`, the test shell, libvirt domains).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::error::{Ctx, GridError};
use super::guest::{base_image, guest_kernel};
use super::{Grid, GridOptions, Hypervisor};
use crate::rootfs;

/// The first address of a clone as `napalmctl clones --output json` prints it, without
/// its prefix length (empty when it has none yet).
pub fn clone_address(c: &serde_json::Value) -> String {
    c["addresses"][0]
        .as_str()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `virsh -q -c qemu:///system ARGS`; a virsh that cannot run is a failed exit.
pub(super) fn virsh(args: &[&str]) -> Output {
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
    /// What QEMU clones need before the daemons start: the reference root, the kernel, the
    /// base image and the libvirt network on the clone bridge.
    pub(super) fn prepare_clones(&mut self, opts: &GridOptions) -> Result<(), GridError> {
        std::fs::create_dir_all(&opts.cache)
            .ctx(format!("creating the cache {}", opts.cache.display()))?;
        self.root = Some(match &opts.root {
            Some(r) => r.clone(),
            None => rootfs::busybox_root(&opts.cache).map_err(|source| GridError::Root {
                cache: opts.cache.clone(),
                source,
            })?,
        });
        let (kernel, kver) = guest_kernel()?;
        base_image(&self.dir.join("base.img"), &kver, opts.module_signatures)?;
        self.kernel = Some(kernel);
        let bridge = self.net.root_bridge()?;
        let name = format!("napalm-{bridge}");
        let xml = self.dir.join("net.xml");
        std::fs::write(
            &xml,
            format!("<network><name>{name}</name><forward mode='bridge'/><bridge name='{bridge}'/></network>"),
        )
        .ctx(format!("writing {}", xml.display()))?;
        let out = virsh(&["net-create", &xml.display().to_string()]);
        if !out.status.success() {
            return Err(GridError::CommandFailed {
                command: format!("virsh net-create {}", xml.display()),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        self.libvirt_net = Some(name);
        Ok(())
    }

    /// The address of clone `index` (1-based).
    pub fn clone_addr(&self, index: u32) -> String {
        format!("{}.{}", self.prefix, 100 + index)
    }

    /// The deployment's clones as napalmctl prints them in JSON.
    pub fn clones(&self, deployment: &str) -> Result<Vec<serde_json::Value>, GridError> {
        let args = ["clones", "--deployment", deployment, "--output", "json"];
        let out = self.napalmctl(&args)?;
        if !out.status.success() {
            return Err(GridError::CommandFailed {
                command: format!("napalmctl {}", args.join(" ")),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|source| GridError::Json {
                what: "napalmctl clones".into(),
                source,
            })?;
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
        let target = format!("{addr}:{}", rootfs::SHELL_PORT);
        let target: SocketAddr = target.parse().map_err(|source| GridError::Address {
            addr: target.clone(),
            source,
        })?;
        let script = format!("{script}\nexit\n");
        let what = format!("talking to the shell of {target}");
        self.server
            .spawn(move || -> Result<String, GridError> {
                let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3))
                    .ctx(format!("connecting to {target}"))?;
                s.set_read_timeout(Some(timeout))
                    .ctx(format!("setting a timeout on {target}"))?;
                s.write_all(script.as_bytes())
                    .ctx(format!("sending the script to {target}"))?;
                let mut out = String::new();
                s.read_to_string(&mut out)
                    .ctx(format!("reading from {target}"))?;
                Ok(out)
            })?
            .join()
            .map_err(|_| GridError::Panicked { what })?
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

    /// Names of libvirt domains of this grid (none with [`Hypervisor::Test`]): those named
    /// with its prefix, and any other one its agents created (each keeps a directory per
    /// domain in its state directory), and any template guest whose console is in the
    /// grid's directory, so that a deployment named without the prefix, or a template guest
    /// being made, does not outlive the grid.
    pub fn domains(&self) -> Vec<String> {
        if self.hypervisor != Hypervisor::Qemu {
            return Vec::new();
        }
        let recorded: std::collections::HashSet<String> = (0..self.agent_hosts.len())
            .filter_map(|i| std::fs::read_dir(self.dir.join(format!("agent{i}/domains"))).ok())
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        let dir = self.dir.to_string_lossy().into_owned();
        // A template guest one of its agents was making: its console is in the grid.
        let ours = |n: &str| {
            n.starts_with("napalm-tpl-")
                && String::from_utf8_lossy(&virsh(&["dumpxml", n]).stdout).contains(&dir)
        };
        String::from_utf8_lossy(&virsh(&["list", "--all", "--name"]).stdout)
            .lines()
            .map(str::trim)
            .filter(|n| n.starts_with(&self.domain_prefix) || recorded.contains(*n) || ours(n))
            .map(str::to_owned)
            .collect()
    }
}

/// The tap devices of domain `d`'s interfaces (`virsh domiflist`; a running domain's, or
/// the names its definition gives).
pub(crate) fn taps(d: &str) -> Vec<String> {
    String::from_utf8_lossy(&virsh(&["domiflist", d]).stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|t| *t != "-")
        .map(str::to_owned)
        .collect()
}
