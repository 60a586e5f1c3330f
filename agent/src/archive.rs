//! Domain archives (thesis listing 2.4): a tar, optionally gzip- or zstd-compressed, holding
//! `config.xml` and the files it references. Extraction is confined: only regular files and
//! directories, relative paths without `..`, no links or devices, and limits on entry count,
//! per-file size and total unpacked size (an archive bomb stops at the limit).

use std::io::{BufRead, Read, Write};
use std::path::Path;

use crate::error::{AgentError, Result};
use crate::names;

/// Limits applied while unpacking.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most entries (files and directories).
    pub max_entries: usize,
    /// Most bytes unpacked in total.
    pub max_total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: 1024,
            max_total_bytes: 8 << 30,
        }
    }
}

/// Counts bytes read through it and fails past a limit (stops decompression bombs early).
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "archive unpacks past the size limit",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn decoder<'a, R: BufRead + 'a>(mut r: R) -> Result<Box<dyn Read + 'a>> {
    let head = r
        .fill_buf()
        .map_err(|e| AgentError::invalid("archive", format!("unreadable: {e}")))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::GzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let d = zstd::stream::read::Decoder::with_buffer(r)
            .map_err(|e| AgentError::invalid("archive", format!("bad zstd stream: {e}")))?;
        Ok(Box::new(d))
    } else {
        Ok(Box::new(r))
    }
}

fn archive_err(e: std::io::Error) -> AgentError {
    if e.kind() == std::io::ErrorKind::FileTooLarge {
        AgentError::TooLarge(e.to_string())
    } else {
        AgentError::invalid("archive", format!("not a readable tar archive: {e}"))
    }
}

/// Unpacks the archive read from `src` into the empty directory `dest`. Returns the
/// relative paths of files.
pub fn extract<R: Read>(src: R, dest: &Path, limits: Limits) -> Result<Vec<String>> {
    // The tar header tail (headers + padding) is counted too, which is what a bomb inflates.
    let capped = Capped {
        inner: decoder(std::io::BufReader::with_capacity(1 << 16, src))?,
        left: limits.max_total_bytes.saturating_add(1 << 20),
    };
    let mut ar = tar::Archive::new(capped);
    let mut files = Vec::new();
    let mut total = 0u64;
    for (count, entry) in ar.entries().map_err(archive_err)?.enumerate() {
        let mut entry = entry.map_err(archive_err)?;
        if count >= limits.max_entries {
            return Err(AgentError::TooLarge(format!(
                "archive has more than {} entries",
                limits.max_entries
            )));
        }
        let raw = entry.path_bytes().into_owned();
        let raw = String::from_utf8(raw)
            .map_err(|_| AgentError::invalid("archive", "an entry name is not UTF-8"))?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            if raw
                .trim_end_matches('/')
                .trim_start_matches("./")
                .is_empty()
            {
                continue;
            }
            let rel = names::check_relative("archive entry", raw.trim_end_matches('/'))?;
            crate::durable::create_dir(&dest.join(rel))?;
            continue;
        }
        if !kind.is_file() {
            let what = if kind.is_symlink() {
                "a symbolic link"
            } else if kind.is_hard_link() {
                "a hard link"
            } else if kind.is_character_special() || kind.is_block_special() {
                "a device node"
            } else if kind.is_fifo() {
                "a FIFO"
            } else {
                "not a regular file"
            };
            if matches!(
                kind,
                tar::EntryType::XHeader
                    | tar::EntryType::XGlobalHeader
                    | tar::EntryType::GNULongName
            ) {
                continue;
            }
            return Err(AgentError::Policy(format!(
                "archive entry {raw:?} is {what}; only regular files and directories are accepted"
            )));
        }
        let rel = names::check_relative("archive entry", &raw)?;
        let rel_str = rel.to_string_lossy().into_owned();
        if files.contains(&rel_str) {
            return Err(AgentError::invalid(
                "archive",
                format!("entry {raw:?} appears twice"),
            ));
        }
        total = total.saturating_add(entry.header().size().map_err(archive_err)?);
        if total > limits.max_total_bytes {
            return Err(AgentError::TooLarge(format!(
                "archive unpacks to more than {} bytes",
                limits.max_total_bytes
            )));
        }
        let target = dest.join(&rel);
        if let Some(parent) = target.parent() {
            crate::durable::create_dir(parent)?;
            // A directory component could only be a symlink if we had made one; we never do,
            // but check anyway so that extraction can never leave `dest`.
            let canon = parent
                .canonicalize()
                .map_err(|e| AgentError::io(parent, e))?;
            let root = dest.canonicalize().map_err(|e| AgentError::io(dest, e))?;
            if !canon.starts_with(&root) {
                return Err(AgentError::Policy(format!(
                    "archive entry {raw:?} would land outside the domain directory"
                )));
            }
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(|e| AgentError::io(&target, e))?;
        std::io::copy(&mut entry, &mut out).map_err(archive_err)?;
        out.flush().map_err(|e| AgentError::io(&target, e))?;
        files.push(rel_str);
    }
    Ok(files)
}

/// Builds a gzip-compressed tar of `files` (relative to `dir`) plus `config.xml` from memory.
pub fn build(config_xml: &[u8], dir: &Path, files: &[String]) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(config_xml.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    let io = |e: std::io::Error| AgentError::io(dir, e);
    b.append_data(&mut h, "config.xml", config_xml)
        .map_err(io)?;
    for f in files {
        let p = dir.join(f);
        if p.is_file() {
            b.append_path_with_name(&p, f).map_err(io)?;
        }
    }
    let gz = b.into_inner().map_err(io)?;
    gz.finish().map_err(io)
}
