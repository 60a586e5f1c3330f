//! `tmpfs` (thesis 3.2.3): an empty filesystem in memory, the upper layer of stateless clones.

use super::{sys_err, Fsloader, LoadError, MountCtx, Mounted};
use crate::rootspec::Device;

/// A fresh tmpfs; the default (and usual) writable upper layer of a stateless clone.
pub struct Tmpfs;

impl Fsloader for Tmpfs {
    fn modules(&self) -> &'static [&'static str] {
        &[]
    }
    fn name(&self) -> &'static str {
        "tmpfs"
    }
    fn parameters(&self) -> &'static str {
        "[tmpfs_opts] [ro|rw]"
    }
    fn usage(&self) -> &'static str {
        "tmpfs[:size=<n>[,...]][:rw]"
    }
    fn help(&self) -> &'static str {
        "example: root=nfs:10.0.0.1::ro;tmpfs:rw   root=layer:clone01;tmpfs:size=256m:rw\n\
         an empty in-memory filesystem; as the rightmost layer it makes a stateless clone\n\
         writable (changes vanish at shutdown; unpack= fills it at boot)"
    }
    fn mount(&self, ctx: &mut MountCtx<'_>, dev: &Device) -> Result<Vec<Mounted>, LoadError> {
        let mut data = String::from("mode=0755");
        for a in dev.args().iter().filter(|a| !a.is_empty()) {
            data.push(',');
            data.push_str(a);
        }
        let dir = ctx.mountpoint("tmpfs").map_err(sys_err(dev, "mkdir"))?;
        ctx.sys
            .mount("tmpfs", &dir, "tmpfs", false, &data)
            .map_err(sys_err(
                dev,
                format!("mount -t tmpfs -o {data} tmpfs {}", dir.display()),
            ))?;
        Ok(vec![Mounted {
            dir,
            desc: format!("tmpfs ({data})"),
            converted: true,
        }])
    }
}
