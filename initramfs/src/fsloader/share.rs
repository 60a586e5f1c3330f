//! `9p` and `virtiofs`: a host directory shared with the guest, by tag.

use super::{params_err, read_only, sys_err, Fsloader, LoadError, MountCtx, Mounted};
use crate::rootspec::Device;

fn mount_tag(
    l: &dyn Fsloader,
    ctx: &mut MountCtx<'_>,
    dev: &Device,
    fstype: &str,
    base_opts: &str,
) -> Result<Vec<Mounted>, LoadError> {
    let args = dev.args();
    let Some(tag) = args.first().filter(|t| !t.is_empty()) else {
        return Err(params_err(l, dev, "missing tag"));
    };
    let mut data = base_opts.to_string();
    if let Some(extra) = args.get(1).filter(|o| !o.is_empty()) {
        if !data.is_empty() {
            data.push(',');
        }
        data.push_str(extra);
    }
    let dir = ctx.mountpoint(l.name()).map_err(sys_err(dev, "mkdir"))?;
    ctx.sys
        .mount(tag, &dir, fstype, read_only(dev), &data)
        .map_err(sys_err(
            dev,
            format!("mount -t {fstype} -o {data} {tag} {}", dir.display()),
        ))?;
    Ok(vec![Mounted {
        dir,
        desc: format!("{tag} ({fstype})"),
        converted: false,
    }])
}

/// A host directory shared over virtio 9p, by mount tag.
pub struct NineP;

impl Fsloader for NineP {
    fn modules(&self) -> &'static [&'static str] {
        &["virtio_pci", "9p", "9pnet_virtio"]
    }
    fn name(&self) -> &'static str {
        "9p"
    }
    fn parameters(&self) -> &'static str {
        "tag [mount_opts] [ro|rw]"
    }
    fn usage(&self) -> &'static str {
        "9p:<tag>[:mount_opts][:ro|rw]"
    }
    fn help(&self) -> &'static str {
        "example: root=9p:rootfs:ro;tmpfs:rw\n\
         <tag>  the mount tag of a virtio-9p device (-virtfs ...,mount_tag=<tag>)\n\
         mounted with trans=virtio,version=9p2000.L (needs CONFIG_NET_9P_VIRTIO)"
    }
    fn refuse_upper(&self) -> Option<&'static str> {
        Some("overlayfs cannot use 9p as its upper layer; use tmpfs:rw or a block device")
    }
    fn mount(&self, ctx: &mut MountCtx<'_>, dev: &Device) -> Result<Vec<Mounted>, LoadError> {
        mount_tag(self, ctx, dev, "9p", "trans=virtio,version=9p2000.L")
    }
}

/// A host directory shared over virtiofs, by tag.
pub struct Virtiofs;

impl Fsloader for Virtiofs {
    fn modules(&self) -> &'static [&'static str] {
        &["virtio_pci", "virtiofs"]
    }
    fn name(&self) -> &'static str {
        "virtiofs"
    }
    fn parameters(&self) -> &'static str {
        "tag [mount_opts] [ro|rw]"
    }
    fn usage(&self) -> &'static str {
        "virtiofs:<tag>[:mount_opts][:ro|rw]"
    }
    fn help(&self) -> &'static str {
        "example: root=virtiofs:rootfs:ro;tmpfs:rw\n\
         <tag>  the tag of a vhost-user-fs device (virtiofsd on the host)"
    }
    fn mount(&self, ctx: &mut MountCtx<'_>, dev: &Device) -> Result<Vec<Mounted>, LoadError> {
        mount_tag(self, ctx, dev, "virtiofs", "")
    }
}
