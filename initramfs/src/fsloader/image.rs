//! `loop` (an image file on an earlier layer) and `loop+nfs` (thesis annex II listing II.2:
//! a directory of images on NFS, each a layer, or one image file). squashfs, erofs, ext4
//! and iso9660 images are recognised by their magic numbers.

use super::block::probe;
use super::nfs::{mount_nfs, NfsTarget};
use super::{params_err, read_only, sys_err, Fsloader, LoadError, MountCtx, Mounted};
use crate::rootspec::{Device, Role};
use std::path::{Path, PathBuf};

/// Names the filesystem in the first bytes (up to 64 KiB) of a device or image.
pub fn detect_fs(head: &[u8]) -> Option<&'static str> {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(0, b"hsqs") {
        Some("squashfs")
    } else if at(1024, &[0xE2, 0xE1, 0xF5, 0xE0]) {
        Some("erofs")
    } else if at(1024 + 56, &[0x53, 0xEF]) {
        Some("ext4")
    } else if at(0x8001, b"CD001") {
        Some("iso9660")
    } else {
        None
    }
}

/// The volume label and UUID of an ext2/3/4 or erofs superblock (first 4 KiB).
pub fn fs_label_uuid(head: &[u8]) -> (Option<String>, Option<String>) {
    let (label_off, uuid_off) = match detect_fs(head) {
        Some("ext4") => (1024 + 120, 1024 + 104),
        Some("erofs") => (1024 + 64, 1024 + 48),
        _ => return (None, None),
    };
    let label = head.get(label_off..label_off + 16).map(|b| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    });
    let uuid = head.get(uuid_off..uuid_off + 16).map(|b| {
        let h = hex::encode(b);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    });
    (label.filter(|l| !l.is_empty()), uuid)
}

/// Attaches `file` to a loop device and mounts it at a new participant mount point.
pub(crate) fn mount_image(
    ctx: &mut MountCtx<'_>,
    dev: &Device,
    file: &Path,
    ro: bool,
) -> Result<Mounted, LoadError> {
    let fstype = probe(file).map_err(sys_err(dev, format!("probing image {}", file.display())))?;
    let loopdev = ctx.sys.loop_attach(file, ro).map_err(sys_err(
        dev,
        format!("attaching {} to a loop device", file.display()),
    ))?;
    let dir = ctx.mountpoint("loop").map_err(sys_err(dev, "mkdir"))?;
    let src = loopdev.display().to_string();
    ctx.sys.mount(&src, &dir, &fstype, ro, "").map_err(sys_err(
        dev,
        format!("mount -t {fstype} {src} {}", dir.display()),
    ))?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Mounted {
        dir,
        desc: format!("{name} ({fstype} on {src})"),
        converted: false,
    })
}

/// The loop fsloader.
pub struct Loop;

impl Fsloader for Loop {
    fn modules(&self) -> &'static [&'static str] {
        &["loop", "squashfs", "erofs"]
    }
    fn name(&self) -> &'static str {
        "loop"
    }
    fn parameters(&self) -> &'static str {
        "path [ro|rw]"
    }
    fn usage(&self) -> &'static str {
        "loop:<path>[:ro|rw]"
    }
    fn help(&self) -> &'static str {
        "example: root=nfs:10.0.2.100:/images:ro;loop:/base.squashfs\n\
         <path>  an image file (squashfs, erofs, ext4, iso9660), looked up in the layers\n\
                 already mounted on its left, rightmost first"
    }
    fn mount(&self, ctx: &mut MountCtx<'_>, dev: &Device) -> Result<Vec<Mounted>, LoadError> {
        let Some(path) = dev.args().first().filter(|p| !p.is_empty()) else {
            return Err(params_err(self, dev, "missing image path"));
        };
        let rel = path.trim_start_matches('/');
        let found: Option<PathBuf> = ctx
            .earlier
            .iter()
            .rev()
            .map(|d| d.join(rel))
            .find(|p| p.is_file());
        let Some(file) = found else {
            return Err(params_err(
                self,
                dev,
                format!(
                    "image {path} is not on any earlier layer ({} searched)",
                    ctx.earlier.len()
                ),
            ));
        };
        Ok(vec![mount_image(ctx, dev, &file, read_only(dev))?])
    }
}

/// The loop+nfs fsloader.
pub struct LoopNfs;

impl Fsloader for LoopNfs {
    fn modules(&self) -> &'static [&'static str] {
        &[
            "virtio_pci",
            "virtio_net",
            "xen_netfront",
            "nfsv4",
            "loop",
            "squashfs",
            "erofs",
        ]
    }
    fn name(&self) -> &'static str {
        "loop+nfs"
    }
    fn parameters(&self) -> &'static str {
        "ip path [ro|rw]"
    }
    fn usage(&self) -> &'static str {
        "loop+nfs:<ip>:<path>[:ro|rw]"
    }
    fn help(&self) -> &'static str {
        "example: root=loop+nfs:10.0.0.1:/mnt/modules\n\
         \x20        root=loop+nfs:10.0.0.9:/mnt/images/image.squashfs\n\
         <ip>    IP address of the NFS server\n\
         <path>  directory containing images (each becomes a layer, in name order)\n\
         \x20       OR a single image's full path (rw: an ext4 image used as the upper layer)"
    }
    fn mount(&self, ctx: &mut MountCtx<'_>, dev: &Device) -> Result<Vec<Mounted>, LoadError> {
        let args = dev.args();
        let (Some(server), Some(path)) = (args.first(), args.get(1)) else {
            return Err(params_err(self, dev, "expected <ip>:<path>"));
        };
        let server = server
            .parse()
            .map_err(|_| params_err(self, dev, format!("{server:?} is not an IPv4 address")))?;
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path.clone()
        };
        let rw = dev.role() == Role::Rw;
        let helper = ctx
            .mountpoint("nfs-images")
            .map_err(sys_err(dev, "mkdir"))?;
        // Try 1 (as the thesis): the path is a directory, loop-mount every image in it.
        let as_dir = NfsTarget {
            server,
            dir: path.clone(),
            opts: String::new(),
            read_only: !rw,
        };
        if !rw && mount_nfs(ctx, dev, &as_dir, &helper).is_ok() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&helper)
                .map_err(sys_err(dev, format!("listing {path}")))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            let mut out = Vec::new();
            for f in files {
                match mount_image(ctx, dev, &f, true) {
                    Ok(m) => out.push(m),
                    Err(e) => ctx.log.push(format!("skipping {}: {e}", f.display())),
                }
            }
            if out.is_empty() {
                return Err(params_err(
                    self,
                    dev,
                    format!("no mountable image in directory {path}"),
                ));
            }
            return Ok(out);
        }
        // Try 2: the path is one image; mount its directory and loop-mount the file.
        let p = Path::new(&path);
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
            return Err(params_err(
                self,
                dev,
                format!("{path} is neither a directory nor an image file"),
            ));
        };
        let as_file = NfsTarget {
            server,
            dir: parent.display().to_string(),
            opts: String::new(),
            read_only: !rw,
        };
        mount_nfs(ctx, dev, &as_file, &helper)?;
        Ok(vec![mount_image(ctx, dev, &helper.join(name), !rw)?])
    }
}
