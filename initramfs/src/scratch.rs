//! `napalm.scratch=`: scratch space mounted BESIDE the union, not through it (thesis 4.2:
//! the union cost 22 % under dbench, so /home left it). Each entry is a tmpfs of a given
//! size mounted at a path of the new root after the union is assembled and before
//! switch_root, so writes there never go through overlayfs.
//!
//! Grammar (one kernel word, entries separated by `,`):
//!
//! ```text
//! napalm.scratch = Entry { "," Entry }
//! Entry          = Path ":" "tmpfs" ":" Size [ ":" Mode ]
//! Size           = Digits [ "K" | "M" | "G" ]        (binary units; > 0)
//! Mode           = 3 or 4 octal digits              (default 1777, as /tmp)
//! ```
//!
//! e.g. `napalm.scratch=/scratch:tmpfs:256M,/var/tmp:tmpfs:64M:1777`. Paths are absolute,
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

/// What backs a scratch path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScratchKind {
    /// A tmpfs limited to `size` bytes.
    Tmpfs {
        /// `size=` of the tmpfs, in bytes.
        size: u64,
    },
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

    /// The same with `mode` (at most 0o7777).
    pub fn with_mode(mut self, mode: u32) -> Result<ScratchMount, ScratchError> {
        self.mode = mode;
        self.check()?;
        Ok(self)
    }

    /// The tmpfs size, in bytes.
    pub fn size(&self) -> u64 {
        match self.kind {
            ScratchKind::Tmpfs { size } => size,
        }
    }

    /// The mount options napalm-init passes (`size=268435456,mode=1777`).
    pub fn mount_options(&self) -> String {
        format!("size={},mode={:o}", self.size(), self.mode)
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
                    "expected PATH:tmpfs:SIZE[:MODE] (e.g. /scratch:tmpfs:256M)",
                ))
            }
        };
        check_path(path).map_err(|w| err(entry, w))?;
        if kind != "tmpfs" {
            return Err(err(
                entry,
                format!("unknown scratch type {kind:?}; known: tmpfs"),
            ));
        }
        let size = parse_size(size).ok_or_else(|| {
            err(
                entry,
                format!("size {size:?}: use a number with K, M or G (256M)"),
            )
        })?;
        let mut m = ScratchMount {
            path: path.to_owned(),
            kind: ScratchKind::Tmpfs { size },
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
        match self.kind {
            ScratchKind::Tmpfs { size } => write!(f, "{}:tmpfs:{}", self.path, format_size(size))?,
        }
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

    /// The tmpfs sizes added up, in bytes (saturating).
    pub fn tmpfs_bytes(&self) -> u64 {
        self.mounts
            .iter()
            .fold(0u64, |a, m| a.saturating_add(m.size()))
    }
}

/// No two entries at the same path, none inside another; errors quote `written[i]`, the
/// later entry of the pair as the operator wrote it.
fn check_collisions(mounts: &[ScratchMount], written: &[String]) -> Result<(), ScratchError> {
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
            ("/s:disk:1M", "/s:disk:1M", "unknown scratch type \"disk\""),
            ("/s:tmpfs:1Q", "/s:tmpfs:1Q", "size \"1Q\""),
            ("/s:tmpfs:", "/s:tmpfs:", "size \"\""),
            ("/s:tmpfs:0", "/s:tmpfs:0", "size 0"),
            ("/s:tmpfs:99999999999G", "/s:tmpfs:99999999999G", "size"),
            ("/s:tmpfs:1M:17777", "/s:tmpfs:1M:17777", "mode \"17777\""),
            ("/s:tmpfs:1M:0o755", "/s:tmpfs:1M:0o755", "octal"),
            ("/s:tmpfs", "/s:tmpfs", "expected PATH:tmpfs:SIZE"),
            ("/s", "/s", "expected PATH:tmpfs:SIZE"),
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
    fn builders_check_the_same_rules() {
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
