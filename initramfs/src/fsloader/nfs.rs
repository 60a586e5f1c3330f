//! `nfs` (thesis annex II listing II.1): `nfs:<server>:<dir>[:<mount opts>][:ro|rw]`, an
//! empty dir meaning `/`, NFSv4.1 over TCP unless the options say otherwise. The kernel
//! does not resolve names here: the server is an IPv4 address.

use super::{
    network_not_ready, params_err, read_only, retry, sys_err, Fsloader, LoadError, MountCtx,
    Mounted,
};
use crate::rootspec::Device;
use std::net::Ipv4Addr;
use std::path::Path;

/// Network drivers and the NFSv4 client.
pub(crate) const NET_MODULES: &[&str] = &["virtio_pci", "virtio_net", "xen_netfront", "nfsv4"];

/// An NFSv4.1/TCP export; read-only only (never the union's upper layer).
pub struct Nfs;

/// The server and directory of an `nfs:` device, with its extra mount options.
pub(crate) struct NfsTarget {
    pub server: Ipv4Addr,
    pub dir: String,
    pub opts: String,
    pub read_only: bool,
}

/// The option string passed to mount(2): ours first, the user's after (they win).
pub(crate) fn nfs_options(t: &NfsTarget, client: Option<Ipv4Addr>) -> String {
    let mut o = Vec::new();
    if !t
        .opts
        .split(',')
        .any(|x| x.starts_with("vers=") || x.starts_with("nfsvers="))
    {
        o.push("vers=4.1".to_string());
    }
    o.push(format!("addr={}", t.server));
    o.push(format!(
        "clientaddr={}",
        client.unwrap_or(Ipv4Addr::UNSPECIFIED)
    ));
    o.push("proto=tcp".into());
    o.extend(
        t.opts
            .split(',')
            .filter(|x| !x.is_empty() && *x != "ro" && *x != "rw")
            .map(String::from),
    );
    o.join(",")
}

/// Mounts `t` on `dir`, retrying while the network or the server comes up.
pub(crate) fn mount_nfs(
    ctx: &MountCtx<'_>,
    dev: &Device,
    t: &NfsTarget,
    dir: &Path,
) -> Result<(), LoadError> {
    let source = format!("{}:{}", t.server, t.dir);
    let data = nfs_options(t, ctx.client_ip);
    let fstype = if data.contains("vers=3") || data.contains("vers=2") {
        "nfs"
    } else {
        "nfs4"
    };
    retry(ctx.timeout, network_not_ready, || {
        ctx.sys.mount(&source, dir, fstype, t.read_only, &data)
    })
    .map_err(sys_err(
        dev,
        format!("mount -t {fstype} -o {data} {source} {}", dir.display()),
    ))
}

impl Fsloader for Nfs {
    fn modules(&self) -> &'static [&'static str] {
        NET_MODULES
    }
    fn name(&self) -> &'static str {
        "nfs"
    }
    fn parameters(&self) -> &'static str {
        "ip dir mount_opts [ro|rw]"
    }
    fn usage(&self) -> &'static str {
        "nfs:<ip>:<dir>[:mount_opts][:ro|rw]"
    }
    fn help(&self) -> &'static str {
        "example: root=nfs:192.168.0.1:/mnt/rootfs\n\
         \x20        root=nfs:10.0.0.2:/mnt/system1:ro,nolock\n\
         \x20        root=nfs:10.0.0.1::ro;nfs:10.0.0.1:/var/state/systems/clone01:ro;tmpfs:rw\n\
         <ip>          IP address of the NFS server\n\
         <dir>         directory to mount (empty: /)\n\
         [mount_opts]  parameters to pass at mounting (default vers=4.1,proto=tcp)\n\
         NFS cannot be the rw upper layer of overlayfs: use tmpfs:rw, a block device or\n\
         loop+nfs:<ip>:<image>:rw for a stateful clone"
    }
    fn refuse_upper(&self) -> Option<&'static str> {
        Some(
            "overlayfs cannot use NFS as its upper layer (it needs xattrs and whiteout devices); \
             keep the clone's state on a block device (`/dev/vdb:rw`, `LABEL=state:rw`) or a loop \
             image (`loop+nfs:<ip>:/path/clone01.img:rw`), or use `tmpfs:rw` for a stateless clone",
        )
    }
    fn mount(&self, ctx: &mut MountCtx<'_>, dev: &Device) -> Result<Vec<Mounted>, LoadError> {
        let args = dev.args();
        let Some(server) = args.first().filter(|s| !s.is_empty()) else {
            return Err(params_err(self, dev, "missing server address"));
        };
        let server: Ipv4Addr = server.parse().map_err(|_| {
            params_err(
                self,
                dev,
                format!("{server:?} is not an IPv4 address (no DNS in the initramfs)"),
            )
        })?;
        let dir = match args.get(1).map(String::as_str) {
            None | Some("") => "/".to_string(),
            Some(d) if d.starts_with('/') => d.to_string(),
            Some(d) => {
                return Err(params_err(
                    self,
                    dev,
                    format!("directory {d:?} must be absolute"),
                ))
            }
        };
        let opts = args.get(2).cloned().unwrap_or_default();
        let ro = read_only(dev) || opts.split(',').any(|o| o == "ro");
        let t = NfsTarget {
            server,
            dir,
            opts,
            read_only: ro,
        };
        let mnt = ctx.mountpoint("nfs").map_err(sys_err(dev, "mkdir"))?;
        mount_nfs(ctx, dev, &t, &mnt)?;
        Ok(vec![Mounted {
            dir: mnt,
            desc: format!("{}:{} ({})", t.server, t.dir, if ro { "ro" } else { "rw" }),
            converted: false,
        }])
    }
}
