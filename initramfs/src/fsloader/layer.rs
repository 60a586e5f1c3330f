//! `layer`: a differentiation layer carried inside the initramfs as an appended cpio
//! segment (`napalm-mkinitramfs --append-layer`), unpacked by the kernel under
//! `/napalm/layers/<name>` and copied onto a tmpfs with its whiteouts converted.

use super::{params_err, sys_err, Fsloader, LoadError, MountCtx, Mounted};
use crate::rootspec::Device;
use crate::whiteout::copy_convert;

/// Where the kernel unpacks appended layer segments.
pub const LAYERS_DIR: &str = "/napalm/layers";

/// A differentiation layer appended to the initramfs as a segment, found under
/// [`LAYERS_DIR`] by name.
pub struct Layer;

impl Fsloader for Layer {
    fn modules(&self) -> &'static [&'static str] {
        &[]
    }
    fn name(&self) -> &'static str {
        "layer"
    }
    fn parameters(&self) -> &'static str {
        "name [ro|rw]"
    }
    fn usage(&self) -> &'static str {
        "layer:<name>[:ro|rw]"
    }
    fn help(&self) -> &'static str {
        "example: root=nfs:10.0.2.100::ro;layer:clone01;tmpfs:rw\n\
         <name>  a layer appended to the initramfs (napalm-mkinitramfs --append-layer DIR:NAME),\n\
         \x20       found under /napalm/layers/<name>; portable whiteouts (.wh.NAME,\n\
         \x20       .wh..wh..opq) become overlayfs whiteouts on a tmpfs copy"
    }
    fn mount(&self, ctx: &mut MountCtx<'_>, dev: &Device) -> Result<Vec<Mounted>, LoadError> {
        let Some(name) = dev
            .args()
            .first()
            .filter(|n| !n.is_empty() && !n.contains('/'))
        else {
            return Err(params_err(self, dev, "missing or invalid layer name"));
        };
        let src = ctx.path(LAYERS_DIR).join(name);
        if !src.is_dir() {
            let mut have: Vec<String> = std::fs::read_dir(ctx.path(LAYERS_DIR))
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            have.sort();
            return Err(params_err(
                self,
                dev,
                format!(
                    "no layer {name:?} in this initramfs (layers present: [{}])",
                    have.join(", ")
                ),
            ));
        }
        let dir = ctx.mountpoint("layer").map_err(sys_err(dev, "mkdir"))?;
        ctx.sys
            .mount("tmpfs", &dir, "tmpfs", false, "mode=0755")
            .map_err(sys_err(
                dev,
                format!("mount -t tmpfs tmpfs {}", dir.display()),
            ))?;
        let stats = copy_convert(ctx.sys, &src, &dir).map_err(sys_err(
            dev,
            format!("copying layer {} to {}", src.display(), dir.display()),
        ))?;
        Ok(vec![Mounted {
            dir,
            desc: format!(
                "layer {name} ({} entries, {} whiteouts, {} opaque)",
                stats.copied, stats.whiteouts, stats.opaque
            ),
            converted: true,
        }])
    }
}
