//! A reproducible newc ("070701") cpio writer: entries sorted by path, parents created,
//! uid/gid 0, one fixed mtime, inode numbers in path order.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory with its permission bits.
    Dir(u32),
    /// A regular file: permission bits and content.
    File(u32, Vec<u8>),
    /// A symbolic link to the target.
    Symlink(String),
    /// A character device: permission bits, major, minor.
    CharDev(u32, u32, u32),
}

/// An archive under construction.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `path` (relative, no leading `/`) and any missing parent directories (0755).
    pub fn add(&mut self, path: &str, entry: Entry) {
        let path = path
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        let mut parent = Path::new(&path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.entries
                .entry(p.to_string_lossy().into_owned())
                .or_insert(Entry::Dir(0o755));
            parent = p.parent();
        }
        self.entries.insert(path, entry);
    }

    /// Adds the tree under `src` at `prefix` (files, dirs, symlinks; modes kept).
    pub fn add_tree(&mut self, src: &Path, prefix: &str) -> io::Result<usize> {
        let mut n = 0;
        for e in walkdir::WalkDir::new(src).min_depth(1).sort_by_file_name() {
            let e = e.map_err(io::Error::other)?;
            let rel = e.path().strip_prefix(src).map_err(io::Error::other)?;
            let dest = format!("{}/{}", prefix.trim_end_matches('/'), rel.display());
            let meta = e.path().symlink_metadata()?;
            let mode = meta.permissions().mode() & 0o7777;
            let entry = if meta.is_dir() {
                Entry::Dir(mode)
            } else if meta.file_type().is_symlink() {
                Entry::Symlink(std::fs::read_link(e.path())?.to_string_lossy().into_owned())
            } else if meta.is_file() {
                Entry::File(mode, std::fs::read(e.path())?)
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{}: only files, directories and symlinks go into a layer",
                        e.path().display()
                    ),
                ));
            };
            self.add(&dest, entry);
            n += 1;
        }
        Ok(n)
    }

    /// How many entries (directories, files, links, nodes) the archive holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was added yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Serialises in newc format with every mtime set to `mtime`.
    pub fn write(&self, mtime: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (path, entry)) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir(m) => (0o040000 | m, &[], (0, 0)),
                Entry::File(m, d) => (0o100000 | m, d, (0, 0)),
                Entry::Symlink(t) => (0o120777, t.as_bytes(), (0, 0)),
                Entry::CharDev(m, ma, mi) => (0o020000 | m, &[], (*ma, *mi)),
            };
            let nlink = if matches!(entry, Entry::Dir(_)) { 2 } else { 1 };
            header(
                &mut out,
                i as u32 + 1,
                mode,
                nlink,
                mtime,
                data.len() as u32,
                rdev,
                path,
            );
            out.extend_from_slice(data);
            pad4(&mut out);
        }
        header(&mut out, 0, 0, 1, 0, 0, (0, 0), "TRAILER!!!");
        while out.len() % 512 != 0 {
            out.push(0);
        }
        out
    }
}

#[allow(clippy::too_many_arguments)]
fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
    name: &str,
) {
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        mtime,
        size,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout_is_sorted_and_reproducible() {
        let mut a = Archive::new();
        a.add("init", Entry::File(0o755, b"#!/bin/sh\n".to_vec()));
        a.add("dev/console", Entry::CharDev(0o600, 5, 1));
        a.add("bin/sh", Entry::Symlink("busybox".into()));
        let bytes = a.write(0);
        assert_eq!(bytes, a.clone().write(0));
        assert_eq!(bytes.len() % 512, 0);
        assert_eq!(&bytes[..6], b"070701");
        // Parents were added, then everything sorted by path.
        let names: Vec<String> = bytes
            .windows(6)
            .enumerate()
            .filter(|(_, w)| *w == b"070701")
            .map(|(i, _)| {
                let namesize = usize::from_str_radix(
                    std::str::from_utf8(&bytes[i + 94..i + 102]).unwrap(),
                    16,
                )
                .unwrap();
                String::from_utf8_lossy(&bytes[i + 110..i + 110 + namesize - 1]).into_owned()
            })
            .collect();
        assert_eq!(
            names,
            vec!["bin", "bin/sh", "dev", "dev/console", "init", "TRAILER!!!"]
        );
    }

    #[test]
    fn cpio_tool_reads_it() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("src/etc")).unwrap();
        std::fs::write(t.path().join("src/etc/hostname"), "clone01\n").unwrap();
        std::fs::write(t.path().join("src/etc/.wh.motd"), "").unwrap();
        let mut a = Archive::new();
        assert_eq!(
            a.add_tree(&t.path().join("src"), "napalm/layers/c1")
                .unwrap(),
            3
        );
        std::fs::write(t.path().join("x.cpio"), a.write(0)).unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-i", "-d", "--quiet", "-F"])
            .arg(t.path().join("x.cpio"))
            .current_dir(t.path())
            .output();
        let Ok(out) = out else {
            panic!("cpio(1) is needed for this test (Debian package cpio)")
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(t.path().join("napalm/layers/c1/etc/hostname")).unwrap(),
            "clone01\n"
        );
        assert!(t.path().join("napalm/layers/c1/etc/.wh.motd").exists());
    }
}
