//! `block`: a block device by path, `LABEL=` or `UUID=` (thesis 3.2.3; `root=/dev/sda1` is
//! `root=block:/dev/sda1`). The filesystem is detected from its superblock.

use super::{
    detect_fs, fs_label_uuid, params_err, read_only, retry, sys_err, Fsloader, LoadError, MountCtx,
    Mounted,
};
use crate::rootspec::Device;
use std::io;
use std::path::{Path, PathBuf};

/// Local disks by path, `LABEL=` or `UUID=`, waiting for them to appear; the
/// filesystem is detected by its magic unless given.
pub struct Block;

impl Fsloader for Block {
    fn modules(&self) -> &'static [&'static str] {
        &[
            "virtio_pci",
            "virtio_blk",
            "xen_blkfront",
            "squashfs",
            "erofs",
        ]
    }
    fn name(&self) -> &'static str {
        "block"
    }
    fn parameters(&self) -> &'static str {
        "device [fstype] [ro|rw]"
    }
    fn usage(&self) -> &'static str {
        "block:<device>[:<fstype>][:ro|rw] or /dev/... or LABEL=<l> or UUID=<u>"
    }
    fn help(&self) -> &'static str {
        "example: root=/dev/vda  root=block:/dev/sda1;/dev/sda2  root=LABEL=state:rw\n\
         <device>  /dev path, LABEL=<volume label> or UUID=<filesystem uuid>\n\
         [fstype]  ext4, squashfs, erofs... (detected from the superblock when omitted)\n\
         waits napalm.timeout= seconds for the device to appear"
    }
    fn mount(&self, ctx: &mut MountCtx<'_>, dev: &Device) -> Result<Vec<Mounted>, LoadError> {
        let args = dev.args();
        let Some(spec) = args.first() else {
            return Err(params_err(self, dev, "missing device"));
        };
        let path = retry(ctx.timeout, super::device_not_ready, || {
            resolve(&ctx.base, spec)
        })
        .map_err(sys_err(dev, format!("waiting for block device {spec}")))?;
        let fstype = match args.get(1).filter(|s| !s.is_empty()) {
            Some(t) => t.clone(),
            None => probe(&path).map_err(sys_err(
                dev,
                format!("reading the superblock of {}", path.display()),
            ))?,
        };
        let dir = ctx.mountpoint("block").map_err(sys_err(dev, "mkdir"))?;
        let shown = format!(
            "/{}",
            path.strip_prefix(&ctx.base).unwrap_or(&path).display()
        );
        ctx.sys
            .mount(&shown, &dir, &fstype, read_only(dev), "")
            .map_err(sys_err(
                dev,
                format!("mount -t {fstype} {shown} {}", dir.display()),
            ))?;
        Ok(vec![Mounted {
            dir,
            desc: format!("{spec} ({fstype})"),
            converted: false,
        }])
    }
}

/// Reads the first 64 KiB of a device or image and names its filesystem.
pub(crate) fn probe(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut head = vec![0u8; 65536];
    let mut f = std::fs::File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    head.truncate(n);
    detect_fs(&head).map(String::from).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "unknown filesystem (not squashfs, erofs, ext2/3/4 or iso9660)",
        )
    })
}

/// Finds the device node for `/dev/x`, `LABEL=` or `UUID=` under `base`.
pub(crate) fn resolve(base: &Path, spec: &str) -> io::Result<PathBuf> {
    let want = if let Some(l) = spec.strip_prefix("LABEL=") {
        (Some(l), None)
    } else if let Some(u) = spec.strip_prefix("UUID=") {
        (None, Some(u.to_ascii_lowercase()))
    } else {
        let p = base.join(spec.trim_start_matches('/'));
        std::fs::metadata(&p)?;
        return Ok(p);
    };
    let class = base.join("sys/class/block");
    let mut names: Vec<String> = std::fs::read_dir(&class)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let node = base.join("dev").join(&name);
        let Ok((label, uuid)) = read_ids(&node) else {
            continue;
        };
        if want.0.is_some_and(|l| label.as_deref() == Some(l))
            || want
                .1
                .as_ref()
                .is_some_and(|u| uuid.as_deref() == Some(u.as_str()))
        {
            return Ok(node);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no block device with {spec}"),
    ))
}

fn read_ids(node: &Path) -> io::Result<(Option<String>, Option<String>)> {
    use std::io::Read;
    let mut head = vec![0u8; 4096];
    std::fs::File::open(node)?.read_exact(&mut head)?;
    Ok(fs_label_uuid(&head))
}
