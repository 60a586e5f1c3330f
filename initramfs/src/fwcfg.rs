//! QEMU's fw_cfg, as napalm-init reads it to learn a restored template's identity
//! (`napalm.template`, see [`crate::init`]): the file directory's layout (a pure parser,
//! [`parse_dir`] and [`find`]) and [`Reader`], which reads a named file through two I/O
//! ports ([`Ports`]; the real port access is in `syscall/linux.rs`, x86_64 only).
//!
//! The x86 interface: a 16-bit selector port (0x510, written little-endian) and an 8-bit
//! data port (0x511) that streams the selected item from its start. Item 0x0000 is the
//! signature `QEMU`; item 0x0019 the file directory: a big-endian u32 count, then per
//! file 64 bytes: u32 size (big-endian), u16 select key (big-endian), u16 reserved and
//! the name, NUL-padded to 56 bytes (no NUL when the name is 56 bytes long).

use thiserror::Error;

/// The selector port.
pub const SELECTOR_PORT: u16 = 0x510;
/// The data port.
pub const DATA_PORT: u16 = 0x511;
/// The item holding the signature.
pub const SIGNATURE_KEY: u16 = 0x0000;
/// The item holding the file directory.
pub const DIRECTORY_KEY: u16 = 0x0019;
/// What the signature item starts with on QEMU.
pub const SIGNATURE: &[u8; 4] = b"QEMU";
pub use crate::identity::IDENTITY_FILE;
/// Bytes of one directory entry.
pub const ENTRY_LEN: usize = 64;
/// Bytes of an entry's name field.
pub const NAME_LEN: usize = 56;
/// More files than QEMU ever has (its default is 32 slots): a count above it is garbage.
pub const MAX_FILES: u32 = 4096;
/// The largest file [`Reader::file`] reads (a command line is a few KiB at most).
pub const MAX_FILE: u32 = 1 << 20;
/// [`Reader::file`] reads the whole directory again at least this often (calls), even
/// when its count did not change.
pub const RESCAN_EVERY: u32 = 100;

/// One entry of the file directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// The file's name (`opt/napalm/cmdline`), its bytes up to the first NUL.
    pub name: Vec<u8>,
    /// Its size in bytes.
    pub size: u32,
    /// The selector key that streams it.
    pub select: u16,
}

/// What is wrong with fw_cfg or what it holds.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FwCfgError {
    /// The signature item does not say `QEMU`: no fw_cfg behind the ports.
    #[error(
        "napalm.template needs QEMU's fw_cfg (ports 0x510-0x511), not found \
         (signature {0:02x?}, expected \"QEMU\")"
    )]
    Absent([u8; 4]),
    /// The directory is shorter than its count says.
    #[error("fw_cfg file directory truncated: {count} files need {need} bytes, got {got}")]
    Truncated {
        /// The count the directory starts with.
        count: u32,
        /// The bytes those entries need (with the count).
        need: usize,
        /// The bytes there are.
        got: usize,
    },
    /// The directory's count is implausible.
    #[error("fw_cfg file directory claims {0} files (more than {MAX_FILES}): garbage")]
    TooMany(u32),
    /// A file is larger than [`MAX_FILE`].
    #[error("fw_cfg file {name} is {size} bytes, more than the {MAX_FILE} napalm-init reads")]
    TooLarge {
        /// The file's name.
        name: String,
        /// Its size.
        size: u32,
    },
}

/// Parses the file directory (item 0x0019): its count, then that many entries; bytes
/// after them are ignored.
pub fn parse_dir(bytes: &[u8]) -> Result<Vec<FileEntry>, FwCfgError> {
    let count = match bytes.get(..4) {
        Some(c) => be_u32(c),
        None => {
            return Err(FwCfgError::Truncated {
                count: 0,
                need: 4,
                got: bytes.len(),
            })
        }
    };
    if count > MAX_FILES {
        return Err(FwCfgError::TooMany(count));
    }
    let need = dir_len(count);
    let entries = bytes.get(4..need).ok_or(FwCfgError::Truncated {
        count,
        need,
        got: bytes.len(),
    })?;
    Ok(entries.chunks_exact(ENTRY_LEN).map(entry).collect())
}

/// The big-endian `u32` `b` starts with (at least 4 bytes).
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The bytes a directory of `count` files takes, its count included.
pub fn dir_len(count: u32) -> usize {
    4 + count as usize * ENTRY_LEN
}

/// One 64-byte entry.
fn entry(e: &[u8]) -> FileEntry {
    let raw = &e[8..8 + NAME_LEN];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    FileEntry {
        name: raw[..end].to_vec(),
        size: be_u32(e),
        select: u16::from_be_bytes([e[4], e[5]]),
    }
}

/// The entry named `name` in the directory `bytes`; `None` when there is none.
pub fn find(bytes: &[u8], name: &str) -> Result<Option<FileEntry>, FwCfgError> {
    Ok(parse_dir(bytes)?
        .into_iter()
        .find(|e| e.name == name.as_bytes()))
}

/// The two ports of fw_cfg.
pub trait Ports {
    /// Writes `key` to the selector port: the data port streams that item from its start.
    fn select(&mut self, key: u16);
    /// Reads `buf.len()` bytes from the data port.
    fn read(&mut self, buf: &mut [u8]);
}

/// Reads named files through [`Ports`], cheaply enough to be polled: the signature is
/// checked once, and the whole directory is read again only when its count changed or
/// every [`RESCAN_EVERY`] calls (a restored clone's QEMU has one file more than its
/// template's); otherwise a poll reads the 4-byte count.
#[derive(Debug)]
pub struct Reader<P> {
    ports: P,
    checked: bool,
    /// The count of the directory last read whole, and the calls since.
    last: Option<(u32, u32)>,
}

impl<P: Ports> Reader<P> {
    /// A reader over `ports`; nothing is read yet.
    pub fn new(ports: P) -> Self {
        Reader {
            ports,
            checked: false,
            last: None,
        }
    }

    fn item(&mut self, key: u16, len: usize) -> Vec<u8> {
        self.ports.select(key);
        let mut buf = vec![0; len];
        self.ports.read(&mut buf);
        buf
    }

    /// The whole directory, read twice and kept only when both reads agree: a save and
    /// restore between two port reads would otherwise join two machines' directories.
    fn directory(&mut self) -> Result<Option<Vec<u8>>, FwCfgError> {
        let mut reads = Vec::with_capacity(2);
        for _ in 0..2 {
            let count = be_u32(&self.item(DIRECTORY_KEY, 4));
            if count > MAX_FILES {
                return Err(FwCfgError::TooMany(count));
            }
            reads.push(self.item(DIRECTORY_KEY, dir_len(count)));
        }
        Ok((reads[0] == reads[1]).then(|| reads.swap_remove(0)))
    }

    /// The content of the file `name`, `None` while the directory has no such file.
    pub fn file(&mut self, name: &str) -> Result<Option<Vec<u8>>, FwCfgError> {
        if !self.checked {
            let sig = self.item(SIGNATURE_KEY, 4);
            let sig = [sig[0], sig[1], sig[2], sig[3]];
            if &sig != SIGNATURE {
                return Err(FwCfgError::Absent(sig));
            }
            self.checked = true;
        }
        let count = be_u32(&self.item(DIRECTORY_KEY, 4));
        if let Some((c, calls)) = &mut self.last {
            *calls += 1;
            if *c == count && *calls < RESCAN_EVERY {
                return Ok(None);
            }
        }
        let Some(dir) = self.directory()? else {
            return Ok(None);
        };
        let found = find(&dir, name)?;
        let read_count = be_u32(&dir);
        let Some(f) = found else {
            self.last = Some((read_count, 0));
            return Ok(None);
        };
        if f.size > MAX_FILE {
            return Err(FwCfgError::TooLarge {
                name: name.to_string(),
                size: f.size,
            });
        }
        Ok(Some(self.item(f.select, f.size as usize)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn dir(files: &[(&[u8], u32, u16)]) -> Vec<u8> {
        let mut d = (files.len() as u32).to_be_bytes().to_vec();
        for (name, size, select) in files {
            d.extend(size.to_be_bytes());
            d.extend(select.to_be_bytes());
            d.extend([0, 0]);
            let mut n = name.to_vec();
            n.resize(NAME_LEN, 0);
            d.extend(n);
        }
        d
    }

    #[test]
    fn a_directory_is_parsed_and_searched_by_name() {
        let d = dir(&[
            (b"bootorder", 0, 0x20),
            (b"etc/e820", 40, 0x21),
            (b"opt/napalm/cmdline", 123, 0x2a),
        ]);
        assert_eq!(d.len(), 4 + 3 * 64);
        let all = parse_dir(&d).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].name, b"etc/e820");
        assert_eq!(
            find(&d, IDENTITY_FILE).unwrap(),
            Some(FileEntry {
                name: IDENTITY_FILE.as_bytes().to_vec(),
                size: 123,
                select: 0x2a
            })
        );
        // A prefix or an extension of a name is another name.
        assert_eq!(find(&d, "opt/napalm/cmd").unwrap(), None);
        assert_eq!(find(&d, "opt/napalm/cmdline2").unwrap(), None);
        assert_eq!(parse_dir(&dir(&[])).unwrap(), []);
    }

    #[test]
    fn an_absent_name_is_none() {
        let d = dir(&[(b"bootorder", 0, 0x20), (b"etc/e820", 40, 0x21)]);
        assert_eq!(find(&d, IDENTITY_FILE).unwrap(), None);
    }

    #[test]
    fn a_truncated_directory_is_an_error() {
        let d = dir(&[(b"bootorder", 0, 0x20), (b"opt/napalm/cmdline", 9, 0x21)]);
        let e = find(&d[..d.len() - 1], IDENTITY_FILE).unwrap_err();
        assert_eq!(
            e,
            FwCfgError::Truncated {
                count: 2,
                need: 132,
                got: 131
            }
        );
        assert!(e.to_string().contains("truncated"), "{e}");
        assert!(matches!(
            parse_dir(&[0, 0]),
            Err(FwCfgError::Truncated {
                need: 4,
                got: 2,
                ..
            })
        ));
        let mut huge = dir(&[]);
        huge[..4].copy_from_slice(&(MAX_FILES + 1).to_be_bytes());
        assert_eq!(parse_dir(&huge), Err(FwCfgError::TooMany(MAX_FILES + 1)));
    }

    #[test]
    fn a_name_of_exactly_56_bytes_has_no_nul() {
        let long = "opt/napalm/".to_string() + &"x".repeat(NAME_LEN - 11);
        assert_eq!(long.len(), NAME_LEN);
        let d = dir(&[(b"bootorder", 0, 0x20), (long.as_bytes(), 7, 0x30)]);
        let e = find(&d, &long).unwrap().unwrap();
        assert_eq!((e.size, e.select), (7, 0x30));
        assert_eq!(e.name.len(), NAME_LEN);
        // One byte longer cannot be stored, and is not found.
        assert_eq!(find(&d, &(long.clone() + "x")).unwrap(), None);
    }

    /// A fw_cfg device in memory: items by key, a selected item and an offset in it.
    #[derive(Default)]
    struct FakeFwCfg {
        items: BTreeMap<u16, Vec<u8>>,
        cur: (u16, usize),
        reads: usize,
        /// After this many bytes read, the directory becomes this one (a restore into
        /// another QEMU between two port reads).
        restore: Option<(usize, Vec<u8>)>,
    }

    impl Ports for &mut FakeFwCfg {
        fn select(&mut self, key: u16) {
            self.cur = (key, 0);
        }
        fn read(&mut self, buf: &mut [u8]) {
            let item = self.items.get(&self.cur.0).cloned().unwrap_or_default();
            let mut item = item;
            for b in buf.iter_mut() {
                if self.restore.as_ref().is_some_and(|r| r.0 == self.reads) {
                    if let Some((_, dir)) = self.restore.take() {
                        self.items.insert(DIRECTORY_KEY, dir);
                        item = self.items.get(&self.cur.0).cloned().unwrap_or_default();
                    }
                }
                *b = item.get(self.cur.1).copied().unwrap_or(0);
                self.cur.1 += 1;
                self.reads += 1;
            }
        }
    }

    /// A QEMU fw_cfg whose directory lists `files`.
    fn qemu_with(files: &[(&[u8], u32, u16)]) -> FakeFwCfg {
        let mut dev = FakeFwCfg::default();
        dev.items.insert(SIGNATURE_KEY, b"QEMU".to_vec());
        dev.items.insert(DIRECTORY_KEY, dir(files));
        dev
    }

    #[test]
    fn the_reader_polls_the_count_and_reads_the_file_once_it_appears() {
        let mut dev = qemu_with(&[(b"bootorder", 0, 0x20)]);
        let mut r = Reader::new(&mut dev);
        assert_eq!(r.file(IDENTITY_FILE).unwrap(), None);
        assert_eq!(r.file(IDENTITY_FILE).unwrap(), None);
        // The second poll read only the directory's count.
        let dev = r.ports;
        assert_eq!(dev.reads, 4 + 4 + 2 * (4 + 68) + 4);
        dev.items.insert(
            DIRECTORY_KEY,
            dir(&[(b"bootorder", 0, 0x20), (b"opt/napalm/cmdline", 6, 0x21)]),
        );
        dev.items.insert(0x21, b"root=x".to_vec());
        let mut r = Reader {
            ports: dev,
            checked: true,
            last: Some((1, 0)),
        };
        assert_eq!(r.file(IDENTITY_FILE).unwrap(), Some(b"root=x".to_vec()));
    }

    #[test]
    fn the_reader_rescans_a_directory_of_unchanged_count_now_and_then() {
        let mut dev = qemu_with(&[(b"bootorder", 0, 0x20)]);
        let mut r = Reader::new(&mut dev);
        assert_eq!(r.file(IDENTITY_FILE).unwrap(), None);
        r.ports
            .items
            .insert(DIRECTORY_KEY, dir(&[(b"opt/napalm/cmdline", 2, 0x20)]));
        r.ports.items.insert(0x20, b"ok".to_vec());
        let polls = (1..=RESCAN_EVERY)
            .find(|_| r.file(IDENTITY_FILE).unwrap().is_some())
            .unwrap();
        assert_eq!(polls, RESCAN_EVERY);
    }

    #[test]
    fn a_directory_read_across_a_restore_is_read_again() {
        let mut dev = qemu_with(&[(b"bootorder", 0, 0x20)]);
        dev.items.insert(0x21, b"root=x".to_vec());
        // Restored 10 bytes into the first whole read of the directory: its count and
        // the first entry's size and key are the template's, the name the clone's.
        let clone = dir(&[(b"opt/napalm/cmdline", 6, 0x21), (b"zzz", 0, 0x20)]);
        dev.restore = Some((4 + 4 + 4 + 10, clone));
        let mut r = Reader::new(&mut dev);
        assert_eq!(r.file(IDENTITY_FILE).unwrap(), None);
        assert_eq!(r.file(IDENTITY_FILE).unwrap(), Some(b"root=x".to_vec()));
    }

    #[test]
    fn no_signature_means_no_fw_cfg() {
        let mut dev = FakeFwCfg::default();
        dev.items.insert(SIGNATURE_KEY, vec![0xff; 4]);
        let e = Reader::new(&mut dev).file(IDENTITY_FILE).unwrap_err();
        assert_eq!(e, FwCfgError::Absent([0xff; 4]));
        assert!(
            e.to_string()
                .contains("napalm.template needs QEMU's fw_cfg (ports 0x510-0x511), not found"),
            "{e}"
        );
    }

    #[test]
    fn a_huge_file_is_refused() {
        let mut dev = FakeFwCfg::default();
        dev.items.insert(SIGNATURE_KEY, b"QEMU".to_vec());
        dev.items.insert(
            DIRECTORY_KEY,
            dir(&[(b"opt/napalm/cmdline", MAX_FILE + 1, 0x20)]),
        );
        let e = Reader::new(&mut dev).file(IDENTITY_FILE).unwrap_err();
        assert!(matches!(e, FwCfgError::TooLarge { .. }), "{e}");
    }
}
