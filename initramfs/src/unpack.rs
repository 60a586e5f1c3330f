//! `unpack=` (thesis 3.2.6): `;`-separated archives or directories of archives (`.tar`,
//! `.tar.gz`/`.tgz`, `.tar.zst`/`.tzst`), paths in the new root, unpacked onto it (so onto
//! the upper layer) in name order.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why unpacking failed.
#[derive(Debug, Error)]
pub enum UnpackError {
    /// The root is read-only.
    #[error("unpack={0}: the root has no rw layer to unpack onto (add tmpfs:rw to root=)")]
    ReadOnly(String),
    /// Not an archive we know.
    #[error("unpack: {0}: not a .tar, .tar.gz, .tgz, .tar.zst or .tzst archive")]
    Unknown(PathBuf),
    /// I/O on a path.
    #[error("unpack: {path}: {source}")]
    Io {
        /// The archive or directory.
        path: PathBuf,
        /// The error of reading it or writing an entry.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn is_archive(p: &Path) -> bool {
    let n = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst"]
        .iter()
        .any(|s| n.ends_with(s))
}

/// The archives `unpack=` designates, resolved under `root`, in order.
pub fn archives(root: &Path, items: &[PathBuf]) -> Result<Vec<PathBuf>, UnpackError> {
    let mut out = Vec::new();
    for item in items {
        let p = root.join(item.strip_prefix("/").unwrap_or(item));
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&p)
                .map_err(io_err(&p))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.is_file() && is_archive(f))
                .collect();
            found.sort();
            out.extend(found);
        } else if is_archive(&p) {
            std::fs::metadata(&p).map_err(io_err(&p))?;
            out.push(p);
        } else {
            return Err(UnpackError::Unknown(item.clone()));
        }
    }
    Ok(out)
}

/// Unpacks one archive onto `root`; returns the number of entries.
pub fn unpack_one(archive: &Path, root: &Path) -> Result<usize, UnpackError> {
    let f = File::open(archive).map_err(io_err(archive))?;
    let name = archive.to_string_lossy();
    let reader: Box<dyn Read> = if name.ends_with(".gz") || name.ends_with(".tgz") {
        Box::new(flate2::read::GzDecoder::new(f))
    } else if name.ends_with(".zst") || name.ends_with(".tzst") {
        Box::new(zstd::Decoder::new(f).map_err(io_err(archive))?)
    } else {
        Box::new(f)
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_overwrite(true);
    let mut n = 0;
    for entry in ar.entries().map_err(io_err(archive))? {
        let mut entry = entry.map_err(io_err(archive))?;
        entry.unpack_in(root).map_err(io_err(archive))?;
        n += 1;
    }
    Ok(n)
}

/// Unpacks everything `unpack=` names onto the (writable) root.
pub fn unpack_all(
    root: &Path,
    items: &[PathBuf],
    writable: bool,
) -> Result<Vec<(PathBuf, usize)>, UnpackError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    if !writable {
        let s: Vec<String> = items.iter().map(|p| p.display().to_string()).collect();
        return Err(UnpackError::ReadOnly(s.join(";")));
    }
    let mut done = Vec::new();
    for a in archives(root, items)? {
        let n = unpack_one(&a, root)?;
        done.push((a, n));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, data.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn unpacks_directory_and_files_in_order() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("var/tmpfs-overlay")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(
            &mut gz,
            &tarball(&[("opt/pkg1/README", "one"), ("etc/motd", "first")]),
        )
        .unwrap();
        std::fs::write(
            r.join("var/tmpfs-overlay/pkg1.tar.gz"),
            gz.finish().unwrap(),
        )
        .unwrap();
        let zst = zstd::encode_all(&tarball(&[("etc/motd", "second")])[..], 3).unwrap();
        std::fs::write(r.join("var/tmpfs-overlay/pkg2.tar.zst"), zst).unwrap();
        std::fs::write(r.join("var/tmpfs-overlay/notes.txt"), "ignored").unwrap();
        std::fs::write(r.join("data.tar"), tarball(&[("data/set1", "42")])).unwrap();
        let items = [
            PathBuf::from("/var/tmpfs-overlay"),
            PathBuf::from("/data.tar"),
        ];
        let done = unpack_all(r, &items, true).unwrap();
        assert_eq!(done.iter().map(|d| d.1).collect::<Vec<_>>(), vec![2, 1, 1]);
        assert_eq!(
            std::fs::read_to_string(r.join("opt/pkg1/README")).unwrap(),
            "one"
        );
        assert_eq!(
            std::fs::read_to_string(r.join("etc/motd")).unwrap(),
            "second"
        );
        assert_eq!(std::fs::read_to_string(r.join("data/set1")).unwrap(), "42");
    }

    #[test]
    fn errors() {
        let root = tempfile::tempdir().unwrap();
        let items = [PathBuf::from("/x.tar")];
        assert!(matches!(
            unpack_all(root.path(), &items, false),
            Err(UnpackError::ReadOnly(_))
        ));
        let e = unpack_all(root.path(), &items, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.tar"), "{e}");
        let e = unpack_all(root.path(), &[PathBuf::from("/pkg.rpm")], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/pkg.rpm") && e.contains("not a .tar"), "{e}");
        assert!(unpack_all(root.path(), &[], false).unwrap().is_empty());
    }
}
