//! Union assembly (thesis 3.2.5 with overlayfs instead of UnionFS): every participant is
//! mounted under a tmpfs at `/mnt/unions/N-type`, layers in the portable whiteout form are
//! converted on a tmpfs copy, overlayfs is mounted on the new root with the lowerdir order
//! REVERSED (overlayfs gives the leftmost lowerdir priority, `root=` the rightmost device),
//! and `/mnt/unions` is moved to `/.unions` in the new root so every layer stays reachable.

use crate::fsloader::{self, LoadError, MountCtx, Mounted};
use crate::rootspec::{Role, RootSpec};
use crate::whiteout::{copy_convert, has_portable_whiteouts};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why the root could not be assembled.
#[derive(Debug, Error)]
pub enum UnionError {
    /// `root=` names a type no fsloader serves.
    #[error("root=: no fsloader for type {kind:?} (device {index} `{device}`, position {position}); known types: {known}")]
    UnknownType {
        /// The type as written.
        kind: String,
        /// 1-based device number.
        index: usize,
        /// The device as written.
        device: String,
        /// Byte offset in the root= value.
        position: usize,
        /// Known loader names.
        known: String,
    },
    /// The rw layer rules are broken.
    #[error("root=: {0}")]
    Upper(String),
    /// An fsloader failed.
    #[error("mounting {0}")]
    Load(#[from] LoadError),
    /// A step of the assembly itself failed.
    #[error("{step}: {source}")]
    Sys {
        /// What was done, with its inputs.
        step: String,
        /// The error of the syscall.
        source: std::io::Error,
    },
}

/// The assembled root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    /// The overlayfs options used.
    pub overlay_options: String,
    /// Console descriptions of the participants, leftmost first, with their `/.unions` name.
    pub participants: Vec<(String, String)>,
    /// Whether the root is writable (an upper layer exists).
    pub writable: bool,
}

fn sys(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> UnionError {
    let step = step.into();
    move |source| UnionError::Sys { step, source }
}

/// Checks types and the upper rules before anything is mounted.
pub fn validate(spec: &RootSpec) -> Result<(), UnionError> {
    let known = fsloader::registry()
        .iter()
        .map(|l| l.name())
        .collect::<Vec<_>>()
        .join(", ");
    for (i, d) in spec.devices.iter().enumerate() {
        if fsloader::find(&d.kind).is_none() {
            return Err(UnionError::UnknownType {
                kind: d.kind.clone(),
                index: i + 1,
                device: d.display(),
                position: d.offset,
                known: known.clone(),
            });
        }
    }
    if let Some(u) = spec.upper().map_err(UnionError::Upper)? {
        let d = &spec.devices[u];
        if let Some(why) = fsloader::find(&d.kind).and_then(|l| l.refuse_upper()) {
            return Err(UnionError::Upper(format!(
                "{} cannot be the rw upper layer: {why}",
                d.display()
            )));
        }
    }
    Ok(())
}

/// Mounts every participant and the overlay on `newroot`, then moves `/mnt/unions` to
/// `newroot/.unions`.
pub fn assemble(
    ctx: &mut MountCtx<'_>,
    spec: &RootSpec,
    newroot: &Path,
) -> Result<Assembled, UnionError> {
    validate(spec)?;
    let unions = ctx.unions();
    ctx.sys
        .mkdir_all(&unions)
        .map_err(sys(format!("mkdir {}", unions.display())))?;
    ctx.sys
        .mount("tmpfs", &unions, "tmpfs", false, "mode=0755")
        .map_err(sys(format!("mount -t tmpfs tmpfs {}", unions.display())))?;
    let mut lowers: Vec<Mounted> = Vec::new();
    let mut upper: Option<Mounted> = None;
    for dev in &spec.devices {
        let loader = fsloader::find(&dev.kind)
            .ok_or_else(|| UnionError::Upper(format!("no fsloader {}", dev.kind)))?;
        let start = crate::timings::uptime();
        let mounted = loader.mount(ctx, dev)?;
        ctx.phases
            .push((dev.display(), start, crate::timings::uptime()));
        for mut m in mounted {
            ctx.earlier.push(m.dir.clone());
            if dev.role() == Role::Rw {
                upper = Some(m);
                continue;
            }
            // Whiteouts in the bottom layer hide nothing; any layer above it may carry them.
            if !m.converted && !lowers.is_empty() && has_portable_whiteouts(&m.dir) {
                let copy = ctx.mountpoint("converted").map_err(sys("mkdir"))?;
                ctx.sys
                    .mount("tmpfs", &copy, "tmpfs", false, "mode=0755")
                    .map_err(sys(format!("mount -t tmpfs tmpfs {}", copy.display())))?;
                let st = copy_convert(ctx.sys, &m.dir, &copy).map_err(sys(format!(
                    "converting whiteouts of {} into {}",
                    m.dir.display(),
                    copy.display()
                )))?;
                ctx.log.push(format!(
                    "  converted {} whiteouts, {} opaque dirs",
                    st.whiteouts, st.opaque
                ));
                m = Mounted {
                    dir: copy,
                    desc: format!("{} (whiteouts converted)", m.desc),
                    converted: true,
                };
            }
            lowers.push(m);
        }
    }
    // A read-only root gets a tiny tmpfs top lower holding `.unions`, the mount point of
    // the participants; overlayfs also needs at least one lowerdir.
    if upper.is_none() || lowers.is_empty() {
        let tiny = ctx.mountpoint("unions-mountpoint").map_err(sys("mkdir"))?;
        ctx.sys
            .mount("tmpfs", &tiny, "tmpfs", false, "mode=0755,size=64k")
            .map_err(sys(format!("mount -t tmpfs tmpfs {}", tiny.display())))?;
        ctx.sys
            .mkdir_all(&tiny.join(".unions"))
            .map_err(sys("mkdir .unions"))?;
        lowers.push(Mounted {
            dir: tiny,
            desc: "tmpfs (/.unions mount point)".into(),
            converted: true,
        });
    }
    let lowerdir: Vec<String> = lowers
        .iter()
        .rev()
        .map(|m| m.dir.display().to_string())
        .collect();
    let mut options = format!("lowerdir={}", lowerdir.join(":"));
    if let Some(u) = &upper {
        let (up, work) = (u.dir.join("upper"), u.dir.join("work"));
        ctx.sys
            .mkdir_all(&up)
            .map_err(sys(format!("mkdir {}", up.display())))?;
        ctx.sys
            .mkdir_all(&work)
            .map_err(sys(format!("mkdir {}", work.display())))?;
        options.push_str(&format!(
            ",upperdir={},workdir={}",
            up.display(),
            work.display()
        ));
    }
    ctx.sys
        .mkdir_all(newroot)
        .map_err(sys(format!("mkdir {}", newroot.display())))?;
    ctx.sys
        .mount("overlay", newroot, "overlay", upper.is_none(), &options)
        .map_err(sys(format!(
            "mount -t overlay -o {options} overlay {}",
            newroot.display()
        )))?;
    let dot_unions = newroot.join(".unions");
    if upper.is_some() {
        ctx.sys
            .mkdir_all(&dot_unions)
            .map_err(sys(format!("mkdir {}", dot_unions.display())))?;
    }
    ctx.sys
        .mount_move(&unions, &dot_unions)
        .map_err(sys(format!(
            "mount --move {} {}",
            unions.display(),
            dot_unions.display()
        )))?;
    let name = |m: &Mounted| -> String {
        let d: PathBuf = m.dir.file_name().map(PathBuf::from).unwrap_or_default();
        format!("/.unions/{}", d.display())
    };
    let mut participants: Vec<(String, String)> =
        lowers.iter().map(|m| (m.desc.clone(), name(m))).collect();
    if let Some(u) = &upper {
        participants.push((format!("{} (upper)", u.desc), name(u)));
    }
    Ok(Assembled {
        overlay_options: options,
        participants,
        writable: upper.is_some(),
    })
}
