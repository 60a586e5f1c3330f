//! A reproducible newc ("070701") cpio writer, for a segment appended to an initramfs (the
//! kernel unpacks concatenated archives). Entries are sorted, mtimes are 0, inode numbers
//! count from 1, and the segment is padded to 512 bytes after `TRAILER!!!`. No maintained
//! crate writes newc deterministically from memory, and the format is 13 hex fields.

use std::io::{self, Write};

use crate::layer::{Layer, Portable};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

fn pad4(w: &mut impl Write, len: usize) -> io::Result<usize> {
    let n = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..n])?;
    Ok(n)
}

#[allow(clippy::too_many_arguments)]
fn entry(
    w: &mut impl Write,
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    name: &str,
    data: &[u8],
) -> io::Result<usize> {
    let header = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{z:08x}{z:08x}{z:08x}{z:08x}{namesize:08x}{z:08x}",
        mtime = 0,
        size = data.len(),
        z = 0,
        namesize = name.len() + 1,
    );
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    let mut n = header.len() + name.len() + 1;
    n += pad4(w, n)?;
    w.write_all(data)?;
    n += data.len();
    n += pad4(w, data.len())?;
    Ok(n)
}

/// Write `layer` as a newc archive.
pub fn write(layer: &Layer, w: &mut impl Write) -> io::Result<()> {
    let mut total = 0usize;
    for (ino, (path, p)) in (1u32..).zip(layer.portable()) {
        total += match p {
            Portable::Dir(m) => entry(w, ino, S_IFDIR | m.mode, m.uid, m.gid, 2, &path, &[])?,
            Portable::File(m, data) => {
                entry(w, ino, S_IFREG | m.mode, m.uid, m.gid, 1, &path, data)?
            }
            Portable::Symlink(m, target) => entry(
                w,
                ino,
                S_IFLNK | 0o777,
                m.uid,
                m.gid,
                1,
                &path,
                target.as_bytes(),
            )?,
        };
    }
    total += entry(w, 0, 0, 0, 0, 1, "TRAILER!!!", &[])?;
    let pad = (512 - total % 512) % 512;
    w.write_all(&vec![0u8; pad])?;
    Ok(())
}

/// The archive as bytes.
pub fn to_vec(layer: &Layer) -> Vec<u8> {
    let mut v = Vec::with_capacity(layer.content_bytes() + layer.entries.len() * 160 + 512);
    // Writing to a Vec cannot fail.
    let _ = write(layer, &mut v);
    v
}
