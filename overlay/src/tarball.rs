//! A reproducible tar.gz of a layer (for `unpack=` at boot): sorted entries, mtime 0, numeric
//! owners only, a gzip header without name or time. One ordinary gzip member.
//!
//! Cluster-wide files (`/etc/hosts`, known_hosts, the MPI hostfile) are the same bytes in every
//! clone and grow with the cluster, so compressing them per clone costs O(clones²). A
//! [`SharedTail`] holds them tarred and deflated once per cluster; each clone's archive is its
//! own entries deflated up to a sync flush, followed by the shared deflate blocks, with the
//! CRC-32 combined: still a single, standard gzip member.

use std::io;
use std::sync::Arc;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use tar::{EntryType, Header};

use crate::layer::{Layer, Meta, Portable};

/// gzip member header: deflate, no flags, mtime 0, no extra flags, OS "unknown".
const GZ_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

fn header(kind: EntryType, m: &Meta, mode: u32, size: u64) -> Header {
    let mut h = Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(m.uid.into());
    h.set_gid(m.gid.into());
    h.set_mtime(0);
    h.set_size(size);
    h
}

fn append(tar: &mut tar::Builder<Vec<u8>>, path: &str, p: &Portable<'_>) -> io::Result<()> {
    match p {
        Portable::Dir(m) => {
            let mut h = header(EntryType::Directory, m, m.mode, 0);
            tar.append_data(&mut h, format!("{path}/"), io::empty())
        }
        Portable::File(m, data) => {
            let mut h = header(EntryType::Regular, m, m.mode, data.len() as u64);
            tar.append_data(&mut h, path, *data)
        }
        Portable::Symlink(m, target) => {
            let mut h = header(EntryType::Symlink, m, 0o777, 0);
            tar.append_link(&mut h, path, target)
        }
    }
}

/// Tar `entries`; without `end`, the two end-of-archive blocks are cut off.
fn tar_bytes<'a>(
    entries: impl Iterator<Item = (String, Portable<'a>)>,
    end: bool,
) -> io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    for (path, p) in entries {
        append(&mut tar, &path, &p)?;
    }
    let mut bytes = tar.into_inner()?;
    if !end {
        bytes.truncate(bytes.len().saturating_sub(1024));
    }
    Ok(bytes)
}

/// Raw deflate of `data`, ending with `flush` (`Sync`: byte-aligned, not final; `Finish`).
fn deflate(data: &[u8], flush: FlushCompress) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(Compression::fast(), false);
    let mut out = Vec::with_capacity(data.len() / 3 + 128);
    loop {
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&data[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == data.len();
        match status {
            Status::StreamEnd => break,
            _ if all_in && out.len() < out.capacity() => break,
            _ => out.reserve(out.capacity().max(4096)),
        }
    }
    Ok(out)
}

/// Files shared by every clone of a plan, tarred and deflated once.
#[derive(Debug)]
pub struct SharedTail {
    files: Vec<(String, Meta, Arc<[u8]>)>,
    deflated: Vec<u8>,
    crc: Crc,
}

impl SharedTail {
    /// Tar (with the end-of-archive blocks) and deflate `files` once.
    pub fn new(mut files: Vec<(String, Meta, Arc<[u8]>)>) -> io::Result<SharedTail> {
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let tar = tar_bytes(
            files
                .iter()
                .map(|(p, m, d)| (p.clone(), Portable::File(*m, d))),
            true,
        )?;
        let mut crc = Crc::new();
        crc.update(&tar);
        Ok(SharedTail {
            deflated: deflate(&tar, FlushCompress::Finish)?,
            files,
            crc,
        })
    }

    /// Whether `layer` holds exactly these files (same path, owner, mode and bytes).
    pub fn covers(&self, layer: &Layer) -> bool {
        self.files.iter().all(|(p, m, d)| {
            matches!(layer.entries.get(p),
                Some(crate::layer::Entry::File { meta, data })
                    if meta == m && (Arc::ptr_eq(data, d) || data[..] == d[..]))
        })
    }
}

/// The archive of `layer` as bytes; with a `tail` that [`SharedTail::covers`] the layer, its
/// files are taken from the tail instead of being compressed again.
pub fn to_vec_with(layer: &Layer, tail: Option<&SharedTail>) -> io::Result<Vec<u8>> {
    let tail = tail.filter(|t| t.covers(layer));
    let portable = layer.portable();
    let own = portable.into_iter().filter(|(p, _)| match tail {
        Some(t) => !t.files.iter().any(|(tp, _, _)| tp == p),
        None => true,
    });
    let tar = tar_bytes(own, tail.is_none())?;
    let mut crc = Crc::new();
    crc.update(&tar);
    let mut out = Vec::with_capacity(tar.len() / 3 + 256);
    out.extend_from_slice(&GZ_HEADER);
    match tail {
        None => out.extend_from_slice(&deflate(&tar, FlushCompress::Finish)?),
        Some(t) => {
            out.extend_from_slice(&deflate(&tar, FlushCompress::Sync)?);
            out.extend_from_slice(&t.deflated);
            crc.combine(&t.crc);
        }
    }
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&crc.amount().to_le_bytes());
    Ok(out)
}

/// The archive as bytes.
pub fn to_vec(layer: &Layer) -> io::Result<Vec<u8>> {
    to_vec_with(layer, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Entry;
    use std::io::Read;

    fn unpack(gz: &[u8]) -> Vec<(String, Vec<u8>)> {
        // A single-member decoder: the shared tail must not need a multi-member reader.
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut tar)
            .unwrap();
        let mut a = tar::Archive::new(&tar[..]);
        let mut out = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let mut d = Vec::new();
            e.read_to_end(&mut d).unwrap();
            out.push((e.path().unwrap().display().to_string(), d));
        }
        out.sort();
        out
    }

    #[test]
    fn shared_tail_gives_the_same_content_in_one_gzip_member() {
        let shared: Arc<[u8]> = Arc::from(b"10.0.0.2 c1\n".repeat(50));
        let mut l = Layer::default();
        l.entries.insert(
            "etc/hostname".into(),
            Entry::File {
                meta: Meta::root(0o644),
                data: Arc::from(&b"c1\n"[..]),
            },
        );
        l.entries.insert(
            "etc/hosts".into(),
            Entry::File {
                meta: Meta::root(0o644),
                data: shared.clone(),
            },
        );
        l.add_parents();
        let tail = SharedTail::new(vec![("etc/hosts".into(), Meta::root(0o644), shared)]).unwrap();
        assert!(tail.covers(&l));
        let with = to_vec_with(&l, Some(&tail)).unwrap();
        let without = to_vec(&l).unwrap();
        assert_eq!(unpack(&with), unpack(&without));
        assert_eq!(unpack(&with).len(), 3);
    }
}
