//! A reproducible tar.gz of a layer (for `unpack=` at boot): sorted entries, mtime 0, numeric
//! owners only, gzip header without name or time.

use std::io::{self, Write};

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use tar::{EntryType, Header};

use crate::layer::{Layer, Portable};

fn header(path_kind: EntryType, mode: u32, uid: u32, gid: u32, size: u64) -> Header {
    let mut h = Header::new_ustar();
    h.set_entry_type(path_kind);
    h.set_mode(mode);
    h.set_uid(uid.into());
    h.set_gid(gid.into());
    h.set_mtime(0);
    h.set_size(size);
    h
}

/// Write `layer` as tar.gz into `w`.
pub fn write(layer: &Layer, w: impl Write) -> io::Result<()> {
    let gz: GzEncoder<_> = GzBuilder::new().mtime(0).write(w, Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for (path, p) in layer.portable() {
        match p {
            Portable::Dir(m) => {
                let mut h = header(EntryType::Directory, m.mode, m.uid, m.gid, 0);
                tar.append_data(&mut h, format!("{path}/"), io::empty())?;
            }
            Portable::File(m, data) => {
                let mut h = header(EntryType::Regular, m.mode, m.uid, m.gid, data.len() as u64);
                tar.append_data(&mut h, &path, data)?;
            }
            Portable::Symlink(m, target) => {
                let mut h = header(EntryType::Symlink, 0o777, m.uid, m.gid, 0);
                tar.append_link(&mut h, &path, target)?;
            }
        }
    }
    tar.into_inner()?.finish()?;
    Ok(())
}

/// The archive as bytes.
pub fn to_vec(layer: &Layer) -> io::Result<Vec<u8>> {
    let mut v = Vec::with_capacity(layer.content_bytes() / 2 + 1024);
    write(layer, &mut v)?;
    Ok(v)
}
