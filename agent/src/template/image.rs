//! A template's image: the file libvirt's `virDomainSave` wrote, read only as far as where
//! QEMU's own migration stream starts in it. The agent hands that stream to each clone's
//! QEMU (`-incoming unix:`) itself: libvirt's restore would take the saved domain's name
//! and UUID with it, one domain per image at a time.
//!
//! The layout (libvirt's `qemu_saveimage.h`, version 2 since libvirt 0.7): a 92-byte
//! header — the magic `LibvirtQemudSave`, then native-endian `u32`s `version`,
//! `data_len`, `was_running`, `compressed`, `cookieOffset` and fifteen unused — then
//! `data_len` bytes of domain XML and migration cookie, then QEMU's stream (`QEVM`).

use std::io::Read;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// libvirt's magic for a complete save image.
const MAGIC: &[u8; 16] = b"LibvirtQemudSave";
/// libvirt's magic while the image is still being written.
const PARTIAL: &[u8; 16] = b"LibvirtQemudPart";
/// The header's size: the magic and twenty `u32`s.
const HEADER: u64 = 16 + 19 * 4;
/// QEMU's migration stream magic.
const QEVM: &[u8; 4] = b"QEVM";

/// Why an image cannot be used.
#[derive(Debug, Error)]
pub enum ImageError {
    /// It could not be read.
    #[error("reading the template image {path}: {source}")]
    Io {
        /// The image.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not what libvirt writes, or not finished, or compressed.
    #[error("the template image {path} {why}")]
    Format {
        /// The image.
        path: PathBuf,
        /// What is wrong, as a phrase.
        why: String,
    },
}

/// A template image and where QEMU's stream starts in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The file.
    pub path: PathBuf,
    /// The offset of QEMU's stream.
    pub stream_offset: u64,
}

impl Image {
    /// Reads `path`'s header and checks QEMU's stream starts where it says.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let io = |source| ImageError::Io {
            path: path.to_owned(),
            source,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        let mut head = [0u8; HEADER as usize];
        f.read_exact(&mut head).map_err(io)?;
        let offset = stream_offset(&head).map_err(|why| ImageError::Format {
            path: path.to_owned(),
            why,
        })?;
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(offset)).map_err(io)?;
        let mut magic = [0u8; 4];
        f.read_exact(&mut magic).map_err(io)?;
        if &magic != QEVM {
            return Err(ImageError::Format {
                path: path.to_owned(),
                why: format!(
                    "has {} at {offset} where QEMU's stream (QEVM) should start",
                    hex::encode(magic)
                ),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            stream_offset: offset,
        })
    }
}

/// Where QEMU's stream starts, from libvirt's header; why not as a phrase.
pub fn stream_offset(head: &[u8]) -> Result<u64, String> {
    if head.len() < HEADER as usize {
        return Err(format!(
            "is {} bytes, shorter than libvirt's header",
            head.len()
        ));
    }
    if &head[..16] == PARTIAL {
        return Err("was not finished (libvirt's partial magic)".into());
    }
    if &head[..16] != MAGIC {
        return Err(format!(
            "does not start with libvirt's magic LibvirtQemudSave ({:?})",
            String::from_utf8_lossy(&head[..16])
        ));
    }
    let word = |i: usize| {
        let at = 16 + 4 * i;
        u32::from_ne_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]])
    };
    let (version, data_len, compressed) = (word(0), word(1), word(3));
    if version != 2 {
        return Err(format!("has libvirt's save format {version}, not 2"));
    }
    if compressed != 0 {
        return Err(format!(
            "is compressed (libvirt's format {compressed}; set save_image_format = \"raw\" in qemu.conf)"
        ));
    }
    Ok(HEADER + u64::from(data_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(magic: &[u8; 16], version: u32, data_len: u32, compressed: u32) -> Vec<u8> {
        let mut h = magic.to_vec();
        for w in [version, data_len, 1, compressed, 10] {
            h.extend(w.to_ne_bytes());
        }
        h.resize(HEADER as usize, 0);
        h
    }

    #[test]
    fn the_stream_starts_after_the_header_and_the_xml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let mut f = header(MAGIC, 2, 7, 0);
        f.extend(b"<x/>\0\0\0QEVM\0\0\0\x03");
        std::fs::write(&path, &f).unwrap();
        let image = Image::open(&path).unwrap();
        assert_eq!(image.stream_offset, 92 + 7);
    }

    #[test]
    fn what_is_not_a_finished_raw_image_is_refused_saying_why() {
        assert!(stream_offset(&header(PARTIAL, 2, 7, 0))
            .unwrap_err()
            .contains("not finished"));
        assert!(stream_offset(&header(MAGIC, 2, 7, 1))
            .unwrap_err()
            .contains("save_image_format"));
        assert!(stream_offset(&header(MAGIC, 3, 7, 0))
            .unwrap_err()
            .contains("format 3"));
        assert!(stream_offset(&header(b"0123456789abcdef", 2, 7, 0))
            .unwrap_err()
            .contains("0123456789abcdef"));
        assert!(stream_offset(&[0; 10]).unwrap_err().contains("10 bytes"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let mut f = header(MAGIC, 2, 3, 0);
        f.extend(b"<x/XXXX");
        std::fs::write(&path, &f).unwrap();
        let e = Image::open(&path).unwrap_err().to_string();
        assert!(e.contains("58585858") && e.contains("QEVM"), "{e}");
    }
}
