//! Composed `loop+<type>` fsloaders (thesis 3.2.2: `lvm2+md` uses `md` then `lvm2`): the
//! inner loader mounts its device, then the image named by the LAST parameter, found on
//! that device, is loop-mounted as the participant. `loop+nfs` keeps its own loader
//! (annex II listing II.2: a directory of images or one image).

use super::image::mount_image;
use super::{params_err, Fsloader, LoadError, MountCtx, Mounted};
use crate::rootspec::{Device, Role};

/// `loop+<inner>`.
pub struct LoopOver {
    /// The composed name (`loop+block`).
    pub name: &'static str,
    /// The loader of the device holding the image.
    pub inner: &'static dyn Fsloader,
    /// The usage line `napalm.help` prints for the composed type.
    pub usage: &'static str,
}

impl Fsloader for LoopOver {
    fn name(&self) -> &'static str {
        self.name
    }
    fn modules(&self) -> &'static [&'static str] {
        // The inner loader's modules are added by `modules_for` through `components`.
        &["loop", "squashfs", "erofs"]
    }
    fn parameters(&self) -> &'static str {
        "<inner type's parameters> image_path [ro|rw]"
    }
    fn usage(&self) -> &'static str {
        self.usage
    }
    fn help(&self) -> &'static str {
        "example: root=loop+block:/dev/vdb:/images/base.squashfs;tmpfs:rw\n\
         \x20        root=loop+virtiofs:images:/base.erofs;tmpfs:rw\n\
         mounts the inner device (read-only unless :rw), then loop-mounts the image at\n\
         image_path on it (squashfs, erofs, ext4, iso9660); :rw on an ext4 image makes\n\
         it the upper layer"
    }
    fn mount(&self, ctx: &mut MountCtx<'_>, dev: &Device) -> Result<Vec<Mounted>, LoadError> {
        let args = dev.args();
        let Some((image, inner_args)) = args
            .split_last()
            .filter(|(i, rest)| !i.is_empty() && !rest.is_empty())
        else {
            return Err(params_err(
                self,
                dev,
                "expected the inner device's parameters, then the image path",
            ));
        };
        let role = if dev.role() == Role::Rw { "rw" } else { "ro" };
        let mut params = inner_args.to_vec();
        params.push(role.to_string());
        let inner_dev = Device {
            kind: self.inner.name().to_string(),
            params,
            offset: dev.offset,
        };
        let holder = self.inner.mount(ctx, &inner_dev)?;
        let Some(first) = holder.first() else {
            return Err(params_err(self, dev, "the inner loader mounted nothing"));
        };
        let file = first.dir.join(image.trim_start_matches('/'));
        if !file.is_file() {
            return Err(params_err(
                self,
                dev,
                format!("image {image} not found on {}", inner_dev.display()),
            ));
        }
        Ok(vec![mount_image(ctx, dev, &file, dev.role() == Role::Ro)?])
    }
}
