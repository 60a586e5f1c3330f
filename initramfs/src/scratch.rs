//! `napalm.scratch=`: scratch space mounted BESIDE the union, not through it (thesis 4.2:
//! the union cost 22 % under dbench, so /home left it). Each entry is mounted at a path of
//! the new root after the union is assembled and before switch_root, so writes there never
//! go through overlayfs. An entry is either a tmpfs of a given size (in the clone's RAM), or
//! a disk: a filesystem the host made on a virtual disk of that size and attached to the
//! clone, found by its label ([`disk_label`]: the `n`th disk entry is `napalm-scratchN`).
//! A disk follows the clone's mode: on a stateless root (its union's upper is a tmpfs)
//! napalm-init empties it at every boot ([`empty_dir`]: all but `lost+found`), and the host
//! gives it fresh at every start of the domain; on a stateful root it is kept.
//!
//! Grammar (one kernel word, entries separated by `,`):
//!
//! ```text
//! napalm.scratch = Entry { "," Entry }
//! Entry          = Path ":" Kind ":" Size [ ":" Mode ]
//! Kind           = "tmpfs" | "disk"
//! Size           = Digits [ "K" | "M" | "G" ]        (binary units; > 0)
//! Mode           = 3 or 4 octal digits              (default 1777, as /tmp)
//! ```
//!
//! e.g. `napalm.scratch=/scratch:tmpfs:256M,/var/tmp:tmpfs:64M:1777` or
//! `napalm.scratch=/scratch:disk:4G`. At most [`MAX_DISKS`] disk entries. Paths are absolute,
//! normalized (no `.`, `..`, empty components or trailing `/`), made of
//! `[A-Za-z0-9._+@-]` components, not `/`, not under `/proc`, `/sys`, `/dev`, `/run`
//! (the initramfs moves its own there at switch_root) or `/.unions`, and no entry is the
//! same as or inside another. The builder ([`ScratchSpec::new`]) checks the same rules,
//! so what a host writes is what napalm-init reads.

use std::fmt;
use thiserror::Error;

/// The default mode of a scratch tmpfs: world-writable with the sticky bit, as `/tmp`.
pub const DEFAULT_MODE: u32 = 0o1777;

/// Paths a scratch mount may not be at or under: the initramfs's own mounts move there at
/// switch_root (and would hide it), and `/.unions` holds the union's layers.
pub const RESERVED: [&str; 5] = ["/proc", "/sys", "/dev", "/run", "/.unions"];

/// At most this many disk entries: their labels (`napalm-scratch0`…`napalm-scratch15`)
/// must fit ext4's 16-byte volume label, and each is a virtio disk of the clone.
pub const MAX_DISKS: usize = 16;

/// The smallest scratch disk: ext4's journal and metadata alone take a few MiB.
pub const MIN_DISK: u64 = 16 << 20;

/// The filesystem label of the `index`th disk entry of a spec (0-based, counting disk
/// entries only), which the host gives the filesystem it makes and napalm-init looks for.
pub fn disk_label(index: usize) -> String {
    format!("napalm-scratch{index}")
}

/// What backs a scratch path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScratchKind {
    /// A tmpfs limited to `size` bytes.
    Tmpfs {
        /// `size=` of the tmpfs, in bytes.
        size: u64,
    },
    /// A filesystem on a virtual disk of `size` bytes that the host attaches.
    Disk {
        /// Size of the disk, in bytes.
        size: u64,
    },
}

impl ScratchKind {
    /// The word of the grammar (`tmpfs`, `disk`).
    pub fn word(self) -> &'static str {
        match self {
            ScratchKind::Tmpfs { .. } => "tmpfs",
            ScratchKind::Disk { .. } => "disk",
        }
    }
}

/// One scratch path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchMount {
    /// Absolute, normalized path in the booted system.
    pub path: String,
    /// What is mounted there.
    pub kind: ScratchKind,
    /// Mode of the mount's root directory ([`DEFAULT_MODE`] unless given).
    pub mode: u32,
}

/// The scratch paths of a clone, in the order they are mounted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScratchSpec {
    /// The entries; never two at the same path or one inside another.
    pub mounts: Vec<ScratchMount>,
}

/// Why a `napalm.scratch=` value (or a scratch entry) was refused; quotes the input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("napalm.scratch: {what} in {entry:?}")]
pub struct ScratchError {
    /// The offending entry as written (`/scratch:tmpfs:1Q`), or the whole value.
    pub entry: String,
    /// What is wrong, and what is expected.
    pub what: String,
}

fn err(entry: &str, what: impl Into<String>) -> ScratchError {
    ScratchError {
        entry: entry.to_owned(),
        what: what.into(),
    }
}

/// Parses `256M`, `1G`, `64K` or plain bytes (binary units, as tmpfs reads them).
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, mult) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&s[..s.len() - 1], 1 << 20),
        b'g' | b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

/// `size` in the largest binary unit that divides it exactly (`256M`, `1G`, `4097`).
pub fn format_size(size: u64) -> String {
    for (unit, shift) in [("G", 30), ("M", 20), ("K", 10)] {
        if size != 0 && size % (1u64 << shift) == 0 {
            return format!("{}{unit}", size >> shift);
        }
    }
    size.to_string()
}

/// Checks a scratch path: absolute, normalized, of plain components, not reserved.
pub fn check_path(path: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("path {path:?} is not absolute (e.g. /scratch)"));
    };
    if rest.is_empty() {
        return Err(
            "path \"/\" is the root itself: scratch sits beside the union, at a \
                    directory of it (e.g. /scratch)"
                .into(),
        );
    }
    for comp in rest.split('/') {
        match comp {
            "" => {
                return Err(format!(
                    "path {path:?} has an empty component (// or a trailing /)"
                ))
            }
            "." | ".." => return Err(format!("path {path:?} has a {comp:?} component")),
            c if !c
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "._+@-".contains(ch)) =>
            {
                return Err(format!(
                    "path {path:?}: component {c:?} may only hold letters, digits and ._+@-"
                ))
            }
            _ => {}
        }
    }
    if let Some(r) = RESERVED.iter().find(|r| inside(path, r)) {
        return Err(format!(
            "path {path:?} is at or under {r}, which the system mounts itself"
        ));
    }
    Ok(())
}

/// Whether `path` is `dir` or under it.
fn inside(path: &str, dir: &str) -> bool {
    path == dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

impl ScratchMount {
    /// A tmpfs of `size` bytes at `path`, mode [`DEFAULT_MODE`].
    pub fn tmpfs(path: &str, size: u64) -> Result<ScratchMount, ScratchError> {
        let m = ScratchMount {
            path: path.to_owned(),
            kind: ScratchKind::Tmpfs { size },
            mode: DEFAULT_MODE,
        };
        m.check()?;
        Ok(m)
    }

    /// A disk of `size` bytes at `path`, mode [`DEFAULT_MODE`].
    pub fn disk(path: &str, size: u64) -> Result<ScratchMount, ScratchError> {
        let m = ScratchMount {
            path: path.to_owned(),
            kind: ScratchKind::Disk { size },
            mode: DEFAULT_MODE,
        };
        m.check()?;
        Ok(m)
    }

    /// The same with `mode` (at most 0o7777).
    pub fn with_mode(mut self, mode: u32) -> Result<ScratchMount, ScratchError> {
        self.mode = mode;
        self.check()?;
        Ok(self)
    }

    /// The size of the tmpfs or of the disk, in bytes.
    pub fn size(&self) -> u64 {
        match self.kind {
            ScratchKind::Tmpfs { size } | ScratchKind::Disk { size } => size,
        }
    }

    /// Whether this entry is a disk.
    pub fn is_disk(&self) -> bool {
        matches!(self.kind, ScratchKind::Disk { .. })
    }

    /// The tmpfs mount options napalm-init passes (`size=268435456,mode=1777`); a disk's
    /// filesystem takes none (its root directory is given `mode` once mounted).
    pub fn mount_options(&self) -> String {
        match self.kind {
            ScratchKind::Tmpfs { size } => format!("size={size},mode={:o}", self.mode),
            ScratchKind::Disk { .. } => String::new(),
        }
    }

    fn check(&self) -> Result<(), ScratchError> {
        let me = self.to_string();
        check_path(&self.path).map_err(|w| err(&me, w))?;
        if self.size() == 0 {
            return Err(err(&me, "size 0: give a size such as 256M"));
        }
        if self.mode > 0o7777 {
            return Err(err(&me, format!("mode {:o} is more than 7777", self.mode)));
        }
        if self.is_disk() && self.size() < MIN_DISK {
            return Err(err(
                &me,
                format!(
                    "a scratch disk needs at least {} (its filesystem's own metadata); give 64M or more",
                    format_size(MIN_DISK)
                ),
            ));
        }
        Ok(())
    }

    fn parse(entry: &str) -> Result<ScratchMount, ScratchError> {
        let parts: Vec<&str> = entry.split(':').collect();
        let (path, kind, size, mode) = match parts[..] {
            [p, k, s] => (p, k, s, None),
            [p, k, s, m] => (p, k, s, Some(m)),
            _ => {
                return Err(err(
                    entry,
                    "expected PATH:tmpfs|disk:SIZE[:MODE] (e.g. /scratch:tmpfs:256M)",
                ))
            }
        };
        check_path(path).map_err(|w| err(entry, w))?;
        let size_of = |size: &str| {
            parse_size(size).ok_or_else(|| {
                err(
                    entry,
                    format!("size {size:?}: use a number with K, M or G (256M)"),
                )
            })
        };
        let kind = match kind {
            "tmpfs" => ScratchKind::Tmpfs {
                size: size_of(size)?,
            },
            "disk" => ScratchKind::Disk {
                size: size_of(size)?,
            },
            other => {
                return Err(err(
                    entry,
                    format!("unknown scratch type {other:?}; known: tmpfs, disk"),
                ))
            }
        };
        let mut m = ScratchMount {
            path: path.to_owned(),
            kind,
            mode: DEFAULT_MODE,
        };
        if let Some(mode) = mode {
            let ok =
                (3..=4).contains(&mode.len()) && mode.bytes().all(|b| (b'0'..=b'7').contains(&b));
            m.mode = u32::from_str_radix(mode, 8)
                .ok()
                .filter(|_| ok)
                .ok_or_else(|| {
                    err(
                        entry,
                        format!("mode {mode:?}: use 3 or 4 octal digits (1777)"),
                    )
                })?;
        }
        m.check().map_err(|e| err(entry, e.what))?;
        Ok(m)
    }
}

impl fmt::Display for ScratchMount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.path,
            self.kind.word(),
            format_size(self.size())
        )?;
        if self.mode != DEFAULT_MODE {
            write!(f, ":{:04o}", self.mode)?;
        }
        Ok(())
    }
}

impl ScratchSpec {
    /// The entries, checked one by one and against each other (no two at the same path,
    /// none inside another).
    pub fn new(
        mounts: impl IntoIterator<Item = ScratchMount>,
    ) -> Result<ScratchSpec, ScratchError> {
        let mounts: Vec<ScratchMount> = mounts.into_iter().collect();
        let written: Vec<String> = mounts.iter().map(|m| m.to_string()).collect();
        for m in &mounts {
            m.check()?;
        }
        check_collisions(&mounts, &written)?;
        Ok(ScratchSpec { mounts })
    }

    /// Parses the value of `napalm.scratch=`; an empty value is no scratch.
    pub fn parse(value: &str) -> Result<ScratchSpec, ScratchError> {
        let written: Vec<String> = value
            .split(',')
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        let mounts = written
            .iter()
            .map(|e| ScratchMount::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        check_collisions(&mounts, &written)?;
        Ok(ScratchSpec { mounts })
    }

    /// Whether there is no scratch path.
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty()
    }

    /// The tmpfs sizes added up, in bytes (saturating); disks take no RAM.
    pub fn tmpfs_bytes(&self) -> u64 {
        self.mounts
            .iter()
            .filter(|m| !m.is_disk())
            .fold(0u64, |a, m| a.saturating_add(m.size()))
    }

    /// The disk entries in order, each with its filesystem label ([`disk_label`]).
    pub fn disks(&self) -> impl Iterator<Item = (String, &ScratchMount)> {
        self.mounts
            .iter()
            .filter(|m| m.is_disk())
            .enumerate()
            .map(|(i, m)| (disk_label(i), m))
    }

    /// The label of `m`'s disk, when `m` is a disk entry of this spec.
    pub fn label_of(&self, m: &ScratchMount) -> Option<String> {
        self.disks().find(|(_, d)| *d == m).map(|(l, _)| l)
    }
}

/// Removes everything in `dir` but `lost+found` (a stateless clone's scratch disk at
/// boot, before anything is mounted inside it); returns how many entries it removed.
pub fn empty_dir(dir: &std::path::Path) -> std::io::Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name() == "lost+found" {
            continue;
        }
        let p = e.path();
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
        n += 1;
    }
    Ok(n)
}

/// No two entries at the same path, none inside another, at most [`MAX_DISKS`] disks;
/// errors quote `written[i]`, the later entry of the pair as the operator wrote it.
fn check_collisions(mounts: &[ScratchMount], written: &[String]) -> Result<(), ScratchError> {
    if let Some((i, _)) = mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| m.is_disk())
        .nth(MAX_DISKS)
    {
        return Err(err(
            &written[i],
            format!("more than {MAX_DISKS} disk entries: put several paths on one disk's directories, or use tmpfs"),
        ));
    }
    for (i, m) in mounts.iter().enumerate() {
        for o in &mounts[..i] {
            if o.path == m.path {
                return Err(err(&written[i], format!("{} is given twice", m.path)));
            }
            let (outer, inner) = if inside(&m.path, &o.path) {
                (o, m)
            } else {
                (m, o)
            };
            if inside(&inner.path, &outer.path) {
                return Err(err(
                    &written[i],
                    format!(
                        "{} is inside {}: scratch paths may not nest",
                        inner.path, outer.path
                    ),
                ));
            }
        }
    }
    Ok(())
}

impl fmt::Display for ScratchSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.mounts.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{m}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_examples() {
        let s = ScratchSpec::parse("/scratch:tmpfs:256M,/var/tmp:tmpfs:64M").unwrap();
        assert_eq!(s.mounts.len(), 2);
        assert_eq!(s.mounts[0].path, "/scratch");
        assert_eq!(s.mounts[0].size(), 256 << 20);
        assert_eq!(s.mounts[0].mode, 0o1777);
        assert_eq!(s.mounts[0].mount_options(), "size=268435456,mode=1777");
        assert_eq!(s.tmpfs_bytes(), 320 << 20);
        assert_eq!(s.to_string(), "/scratch:tmpfs:256M,/var/tmp:tmpfs:64M");
        let m = ScratchSpec::parse("/data:tmpfs:1g:0755").unwrap();
        assert_eq!(m.mounts[0].mode, 0o755);
        assert_eq!(m.mounts[0].size(), 1 << 30);
        assert_eq!(m.to_string(), "/data:tmpfs:1G:0755");
        assert_eq!(ScratchSpec::parse("").unwrap(), ScratchSpec::default());
        assert_eq!(format_size(4097), "4097");
        assert_eq!(format_size(1536 << 10), "1536K");
    }

    #[test]
    fn errors_quote_the_entry_and_say_what_is_expected() {
        let cases = [
            ("scratch:tmpfs:1M", "scratch:tmpfs:1M", "not absolute"),
            ("/:tmpfs:1M", "/:tmpfs:1M", "root itself"),
            (
                "/a/../etc:tmpfs:1M",
                "/a/../etc:tmpfs:1M",
                "\"..\" component",
            ),
            ("/a/./b:tmpfs:1M", "/a/./b:tmpfs:1M", "\".\" component"),
            ("/a//b:tmpfs:1M", "/a//b:tmpfs:1M", "empty component"),
            ("/a/:tmpfs:1M", "/a/:tmpfs:1M", "empty component"),
            ("/a b:tmpfs:1M", "/a b:tmpfs:1M", "letters, digits"),
            ("/run/x:tmpfs:1M", "/run/x:tmpfs:1M", "under /run"),
            ("/proc:tmpfs:1M", "/proc:tmpfs:1M", "under /proc"),
            (
                "/.unions/0:tmpfs:1M",
                "/.unions/0:tmpfs:1M",
                "under /.unions",
            ),
            ("/s:nvme:1M", "/s:nvme:1M", "unknown scratch type \"nvme\""),
            ("/s:disk:0", "/s:disk:0", "size 0"),
            ("/s:disk:1T", "/s:disk:1T", "size \"1T\""),
            ("/s:disk:1M", "/s:disk:1M", "at least 16M"),
            ("/s:tmpfs:1Q", "/s:tmpfs:1Q", "size \"1Q\""),
            ("/s:tmpfs:", "/s:tmpfs:", "size \"\""),
            ("/s:tmpfs:0", "/s:tmpfs:0", "size 0"),
            ("/s:tmpfs:99999999999G", "/s:tmpfs:99999999999G", "size"),
            ("/s:tmpfs:1M:17777", "/s:tmpfs:1M:17777", "mode \"17777\""),
            ("/s:tmpfs:1M:0o755", "/s:tmpfs:1M:0o755", "octal"),
            ("/s:tmpfs", "/s:tmpfs", "expected PATH:tmpfs|disk:SIZE"),
            ("/s", "/s", "expected PATH:tmpfs|disk:SIZE"),
            ("/s:tmpfs:1M,/s:tmpfs:2M", "/s:tmpfs:2M", "given twice"),
            (
                "/s:tmpfs:1M,/s/x:tmpfs:2M",
                "/s/x:tmpfs:2M",
                "/s/x is inside /s",
            ),
            (
                "/s/x:tmpfs:1M,/s:tmpfs:2M",
                "/s:tmpfs:2M",
                "/s/x is inside /s",
            ),
        ];
        for (input, entry, what) in cases {
            let e = ScratchSpec::parse(input).expect_err(input);
            assert_eq!(e.entry, entry, "{input}: {e}");
            assert!(e.to_string().contains(what), "{input}: {e}");
            assert!(
                e.to_string().contains(&format!("{entry:?}")),
                "{input}: {e}"
            );
        }
        // Siblings sharing a prefix do not nest.
        assert!(ScratchSpec::parse("/s:tmpfs:1M,/sx:tmpfs:1M").is_ok());
        assert!(ScratchSpec::parse("/running:tmpfs:1M").is_ok());
    }

    #[test]
    fn disks_are_labelled_in_order_and_take_no_ram() {
        let s =
            ScratchSpec::parse("/scratch:disk:4G,/tmp:tmpfs:64M,/var/tmp:disk:1G:0755").unwrap();
        assert_eq!(
            s.to_string(),
            "/scratch:disk:4G,/tmp:tmpfs:64M,/var/tmp:disk:1G:0755"
        );
        assert_eq!(s.tmpfs_bytes(), 64 << 20);
        let disks: Vec<(String, &str, u64)> = s
            .disks()
            .map(|(l, m)| (l, m.path.as_str(), m.size()))
            .collect();
        assert_eq!(
            disks,
            vec![
                ("napalm-scratch0".to_owned(), "/scratch", 4 << 30),
                ("napalm-scratch1".to_owned(), "/var/tmp", 1 << 30)
            ]
        );
        assert_eq!(s.label_of(&s.mounts[2]).as_deref(), Some("napalm-scratch1"));
        assert_eq!(s.label_of(&s.mounts[1]), None);
        assert_eq!(s.mounts[0].mount_options(), "");
        assert!(disk_label(MAX_DISKS - 1).len() <= 16);
        let many: Vec<String> = (0..=MAX_DISKS).map(|i| format!("/d{i}:disk:16M")).collect();
        let e = ScratchSpec::parse(&many.join(",")).unwrap_err();
        assert_eq!(e.entry, format!("/d{MAX_DISKS}:disk:16M"), "{e}");
        assert!(e.to_string().contains("more than 16 disk entries"), "{e}");
        assert!(ScratchSpec::parse(&many[..MAX_DISKS].join(",")).is_ok());
    }

    #[test]
    fn builders_check_the_same_rules() {
        assert!(ScratchMount::disk("/scratch", 1 << 30).is_ok_and(|m| m.is_disk()));
        assert!(ScratchMount::disk("/proc/x", 1 << 30).is_err());
        assert!(ScratchMount::tmpfs("/scratch", 1 << 20).is_ok());
        assert!(ScratchMount::tmpfs("/", 1 << 20).is_err());
        assert!(ScratchMount::tmpfs("/x", 0).is_err());
        assert!(ScratchMount::tmpfs("/x", 1)
            .and_then(|m| m.with_mode(0o10000))
            .is_err());
        let a = ScratchMount::tmpfs("/tmp", 1 << 20).unwrap();
        assert!(ScratchSpec::new([a.clone(), a]).is_err());
    }
}
