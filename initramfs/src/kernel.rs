//! The guest kernel in the form QEMU boots fastest: the uncompressed ELF (`vmlinux`) found
//! inside a bzImage, entered through its PVH note.
//!
//! A bzImage starts in 16-bit real mode, sets itself up, then decompresses its payload
//! (Debian's cloud kernel: ~14 MB of LZ4) before Linux proper starts; under QEMU's TCG each
//! of those steps is emulated on every boot of every clone. QEMU's `-kernel` also takes an
//! ELF carrying the note `XEN_ELFNOTE_PHYS32_ENTRY` (name `Xen`, type 18, `CONFIG_PVH=y`)
//! and jumps straight to that 32-bit entry with the initrd described in the PVH start
//! info: no setup, no decompression. [`extract_elf`] takes the payload out of a bzImage
//! (x86 boot protocol ≥ 2.08: `payload_offset`, `payload_length`), decompresses it (LZ4
//! legacy frames, gzip or zstd, each followed by the 4-byte uncompressed size the kernel
//! build appends) and checks it is an ELF64; [`pvh_entry`] finds the note.

use std::io::Read as _;
use std::path::{Path, PathBuf};

/// The ELF note type of the PVH entry point (`XEN_ELFNOTE_PHYS32_ENTRY`).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// What to do when a kernel cannot be booted through PVH (ends every error of this module
/// that is about the input).
const WHAT_TO_DO: &str = "give an uncompressed vmlinux carrying the PVH note \
     (XEN_ELFNOTE_PHYS32_ENTRY, CONFIG_PVH=y), or boot the bzImage as it is \
     (napalm-coordinator --kernel-entry bzimage)";

/// Largest uncompressed kernel accepted (the appended size is read before allocating).
const MAX_KERNEL: usize = 1 << 30;

/// LZ4 legacy frames: each block decompresses to at most 8 MiB.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
const LZ4_LEGACY_MAGIC: [u8; 4] = 0x184C_2102u32.to_le_bytes();
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = 0xFD2F_B528u32.to_le_bytes();

/// Why a kernel image could not be turned into a PVH-bootable ELF.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant's #[error] message documents it; the fields are named for what they hold"
)]
pub enum KernelError {
    /// The file could not be read.
    #[error("cannot read the kernel {}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not an x86 bzImage (no `HdrS` at 0x202).
    #[error("{} is not an x86 bzImage (found {found} at 0x202, not \"HdrS\"): {WHAT_TO_DO}", file.display())]
    NotBzImage { file: PathBuf, found: String },
    /// A boot protocol too old to say where its payload is.
    #[error("{} speaks boot protocol {major}.{minor:02}, older than 2.08 which locates the payload: {WHAT_TO_DO}", file.display())]
    OldProtocol { file: PathBuf, major: u8, minor: u8 },
    /// The header or payload points past the end of the file.
    #[error("{} is truncated: {what} ends at byte {end}, the file has {len}: {WHAT_TO_DO}", file.display())]
    Truncated {
        file: PathBuf,
        what: &'static str,
        end: u64,
        len: u64,
    },
    /// The payload is compressed in a format this module does not decompress.
    #[error("{}: the payload is compressed with {magic} (first bytes {found}), not LZ4 legacy, gzip or zstd: {WHAT_TO_DO}", file.display())]
    UnknownCompression {
        file: PathBuf,
        magic: &'static str,
        found: String,
    },
    /// The payload did not decompress.
    #[error("{}: the {format} payload does not decompress (at payload byte {at}): {WHAT_TO_DO}", file.display())]
    Corrupt {
        file: PathBuf,
        format: &'static str,
        at: usize,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The size the kernel build appended to the payload disagrees with what came out.
    #[error("{}: the {format} payload decompressed to {got} bytes, its trailer says {expected}: {WHAT_TO_DO}", file.display())]
    SizeMismatch {
        file: PathBuf,
        format: &'static str,
        expected: u64,
        got: u64,
    },
    /// What came out is not a little-endian ELF64.
    #[error("{}: the decompressed kernel is not a little-endian ELF64 (starts with {found}): {WHAT_TO_DO}", file.display())]
    NotElf64 { file: PathBuf, found: String },
    /// The ELF's program or note headers point outside it.
    #[error("{}: the kernel ELF is malformed: {what}: {WHAT_TO_DO}", file.display())]
    BadElf { file: PathBuf, what: String },
}

/// A compression the kernel build may use for the payload, told by its first bytes.
fn compression(payload: &[u8]) -> Result<&'static str, &'static str> {
    match payload {
        [a, b, c, d, ..] if [*a, *b, *c, *d] == LZ4_LEGACY_MAGIC => Ok("LZ4 legacy"),
        [a, b, ..] if [*a, *b] == GZIP_MAGIC => Ok("gzip"),
        [a, b, c, d, ..] if [*a, *b, *c, *d] == ZSTD_MAGIC => Ok("zstd"),
        [b'B', b'Z', b'h', ..] => Err("bzip2"),
        [0x5d, 0, 0, ..] => Err("LZMA"),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Err("XZ"),
        [0x89, b'L', b'Z', b'O', ..] => Err("LZO"),
        [0x02, 0x21, 0x4c, 0x18, ..] => Err("LZ4 (big-endian?)"),
        [0x04, 0x22, 0x4d, 0x18, ..] => Err("LZ4 frame (not the legacy format)"),
        _ => Err("an unknown format"),
    }
}

/// Up to 8 bytes of `b` as hex, quoted in errors.
fn hex_head(b: &[u8]) -> String {
    let head: Vec<String> = b.iter().take(8).map(|x| format!("{x:02x}")).collect();
    if head.is_empty() {
        "nothing".into()
    } else {
        head.join(" ")
    }
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The newest guest kernel installed on this host (`/boot/vmlinuz-*`, by name), if any:
/// what the test grids and the demo boot their clones with.
pub fn installed_guest_kernel() -> Option<PathBuf> {
    std::fs::read_dir("/boot")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .max()
}

/// Reads the kernel at `path` and extracts its ELF ([`extract_elf`]).
pub fn extract_elf_file(path: &Path) -> Result<Vec<u8>, KernelError> {
    let bytes = std::fs::read(path).map_err(|source| KernelError::Read {
        file: path.to_owned(),
        source,
    })?;
    extract_elf(path, &bytes)
}

/// The uncompressed ELF inside the bzImage `bz` (read from `file`, which errors name),
/// trimmed to the ELF's own extent (the build appends relocations after it, which only
/// the bzImage's decompressor uses).
pub fn extract_elf(file: &Path, bz: &[u8]) -> Result<Vec<u8>, KernelError> {
    let truncated = |what, end: usize| KernelError::Truncated {
        file: file.to_owned(),
        what,
        end: end as u64,
        len: bz.len() as u64,
    };
    let magic = bz
        .get(0x202..0x206)
        .ok_or_else(|| KernelError::NotBzImage {
            file: file.to_owned(),
            found: hex_head(bz.get(0x202..).unwrap_or_default()),
        })?;
    if magic != b"HdrS" {
        return Err(KernelError::NotBzImage {
            file: file.to_owned(),
            found: hex_head(magic),
        });
    }
    let version = le16(bz, 0x206).ok_or_else(|| truncated("the boot header", 0x208))?;
    let (major, minor) = ((version >> 8) as u8, (version & 0xff) as u8);
    if version < 0x0208 {
        return Err(KernelError::OldProtocol {
            file: file.to_owned(),
            major,
            minor,
        });
    }
    let setup_sects = match bz.get(0x1f1) {
        Some(0) => 4,
        Some(n) => usize::from(*n),
        None => return Err(truncated("the boot header", 0x1f2)),
    };
    let offset = le32(bz, 0x248).ok_or_else(|| truncated("the boot header", 0x24c))? as usize;
    let length = le32(bz, 0x24c).ok_or_else(|| truncated("the boot header", 0x250))? as usize;
    let start = (setup_sects + 1) * 512 + offset;
    let end = start + length;
    let payload = bz
        .get(start..end)
        .ok_or_else(|| truncated("the payload", end))?;
    let format = compression(payload).map_err(|magic| KernelError::UnknownCompression {
        file: file.to_owned(),
        magic,
        found: hex_head(payload),
    })?;
    // Every format's payload ends with the uncompressed size (gzip's own ISIZE; appended
    // by the kernel build for the others).
    let (body, trailer) = payload.split_at(payload.len().saturating_sub(4));
    let expected = le32(trailer, 0).ok_or_else(|| truncated("the payload's size trailer", end))?;
    let expected = expected as usize;
    if expected > MAX_KERNEL {
        return Err(KernelError::SizeMismatch {
            file: file.to_owned(),
            format,
            expected: expected as u64,
            got: 0,
        });
    }
    let corrupt = |at, source| KernelError::Corrupt {
        file: file.to_owned(),
        format,
        at,
        source,
    };
    let elf = match format {
        "LZ4 legacy" => lz4_legacy(body, expected).map_err(|(at, e)| corrupt(at, e))?,
        "gzip" => {
            let mut out = Vec::with_capacity(expected);
            // ISIZE, the trailer, is the end of the gzip stream itself.
            flate2::read::GzDecoder::new(payload)
                .read_to_end(&mut out)
                .map_err(|e| corrupt(0, Box::new(e)))?;
            out
        }
        _ => {
            let mut out = Vec::with_capacity(expected);
            zstd::stream::read::Decoder::new(body)
                .and_then(|mut d| d.read_to_end(&mut out))
                .map_err(|e| corrupt(0, Box::new(e)))?;
            out
        }
    };
    if elf.len() != expected {
        return Err(KernelError::SizeMismatch {
            file: file.to_owned(),
            format,
            expected: expected as u64,
            got: elf.len() as u64,
        });
    }
    let mut elf = elf;
    let len = elf_extent(file, &elf)?;
    elf.truncate(len);
    Ok(elf)
}

/// Where in the payload an LZ4 block failed, and why.
type Lz4Failure = (usize, Box<dyn std::error::Error + Send + Sync>);

/// Decompresses LZ4 legacy frames (`lz4 -l`) into `expected` bytes at most: the magic,
/// then blocks each prefixed by its 4-byte little-endian compressed size, each
/// decompressing to at most 8 MiB; a repeated magic starts another frame.
fn lz4_legacy(body: &[u8], expected: usize) -> Result<Vec<u8>, Lz4Failure> {
    let mut out = vec![0u8; expected];
    let mut written = 0;
    let mut at = 4;
    while at < body.len() {
        let size = le32(body, at).ok_or_else(|| (at, "a block size is cut short".into()))?;
        if size.to_le_bytes() == LZ4_LEGACY_MAGIC {
            at += 4;
            continue;
        }
        let block = body.get(at + 4..at + 4 + size as usize).ok_or_else(|| {
            (
                at,
                format!("a block of {size} bytes runs past the payload").into(),
            )
        })?;
        let room = out.len().min(written + LZ4_LEGACY_BLOCK);
        let dst = out.get_mut(written..room).unwrap_or_default();
        let n = lz4_flex::block::decompress_into(block, dst).map_err(|e| (at, e.into()))?;
        written += n;
        at += 4 + size as usize;
    }
    out.truncate(written);
    Ok(out)
}

/// Where the ELF `elf` ends: past its last segment, section table or program table.
fn elf_extent(file: &Path, elf: &[u8]) -> Result<usize, KernelError> {
    if elf.get(0..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err(KernelError::NotElf64 {
            file: file.to_owned(),
            found: hex_head(elf),
        });
    }
    let bad = |what: String| KernelError::BadElf {
        file: file.to_owned(),
        what,
    };
    let (table_end, segments) = program_headers(elf).map_err(bad)?;
    let mut end = table_end.max(64);
    for s in segments {
        end = end.max(s.offset + s.size);
    }
    let shoff = le64(elf, 0x28).unwrap_or(0) as usize;
    let shentsize = le16(elf, 0x3a).unwrap_or(0) as usize;
    let shnum = le16(elf, 0x3c).unwrap_or(0) as usize;
    if shoff != 0 {
        let table = shentsize
            .checked_mul(shnum)
            .and_then(|n| n.checked_add(shoff))
            .ok_or_else(|| bad(format!("section header table at {shoff} overflows")))?;
        end = end.max(table);
    }
    if end > elf.len() {
        return Err(KernelError::BadElf {
            file: file.to_owned(),
            what: format!("it claims {end} bytes, {} came out", elf.len()),
        });
    }
    Ok(end)
}

/// One program header: its type, and where its bytes are in the file.
struct Segment {
    kind: u32,
    offset: usize,
    size: usize,
}

/// The program headers of `elf`, each checked to lie within it, and where their table ends.
fn program_headers(elf: &[u8]) -> Result<(usize, Vec<Segment>), String> {
    let phoff = le64(elf, 0x20).ok_or("no program header offset")? as usize;
    let phentsize = le16(elf, 0x36).ok_or("no program header size")? as usize;
    let phnum = le16(elf, 0x38).ok_or("no program header count")? as usize;
    if phentsize < 0x38 {
        return Err(format!(
            "program headers of {phentsize} bytes, fewer than 56"
        ));
    }
    let mut all = Vec::with_capacity(phnum);
    let table_end = phentsize
        .checked_mul(phnum)
        .and_then(|n| n.checked_add(phoff))
        .filter(|&e| e <= elf.len())
        .ok_or_else(|| format!("the program header table at byte {phoff} is past the end"))?;
    for i in 0..phnum {
        // Within the table, which is within the file: no overflow.
        let at = phoff + i * phentsize;
        let ph = elf
            .get(at..at + phentsize)
            .ok_or_else(|| format!("program header {i} at byte {at} is past the end"))?;
        let kind = le32(ph, 0).unwrap_or(0);
        let offset = le64(ph, 0x08).unwrap_or(0) as usize;
        let size = le64(ph, 0x20).unwrap_or(0) as usize;
        if offset.checked_add(size).is_none_or(|e| e > elf.len()) {
            return Err(format!(
                "segment {i} ({size} bytes at {offset}) is past the end ({} bytes)",
                elf.len()
            ));
        }
        all.push(Segment { kind, offset, size });
    }
    Ok((table_end, all))
}

/// The PVH entry point of the ELF64 `elf` (read from `file`): the 32-bit physical address
/// in its `Xen` note of type [`XEN_ELFNOTE_PHYS32_ENTRY`], found in its `PT_NOTE`
/// segments; `None` when it has no such note (a kernel built without `CONFIG_PVH`).
pub fn pvh_entry(file: &Path, elf: &[u8]) -> Result<Option<u64>, KernelError> {
    const PT_NOTE: u32 = 4;
    elf_extent(file, elf)?;
    let bad = |what: String| KernelError::BadElf {
        file: file.to_owned(),
        what,
    };
    let (_, segments) = program_headers(elf).map_err(bad)?;
    for Segment { offset, size, .. } in segments.into_iter().filter(|s| s.kind == PT_NOTE) {
        let notes = elf.get(offset..offset + size).unwrap_or_default();
        let mut at = 0;
        while at + 12 <= notes.len() {
            let (Some(namesz), Some(descsz), Some(kind)) =
                (le32(notes, at), le32(notes, at + 4), le32(notes, at + 8))
            else {
                break;
            };
            let name_at = at + 12;
            let desc_at = name_at + (namesz as usize).next_multiple_of(4);
            let next = desc_at + (descsz as usize).next_multiple_of(4);
            if next > notes.len() {
                return Err(bad(format!(
                    "a note at byte {} runs past its segment",
                    offset + at
                )));
            }
            let name = &notes[name_at..name_at + namesz as usize];
            if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY {
                let entry = match descsz {
                    4 => le32(notes, desc_at).map(u64::from),
                    8 => le64(notes, desc_at),
                    n => {
                        return Err(bad(format!(
                            "the PVH note's entry is {n} bytes, not 4 or 8"
                        )))
                    }
                };
                return Ok(entry);
            }
            at = next;
        }
    }
    Ok(None)
}

#[cfg(test)]
#[path = "kernel_tests.rs"]
mod tests;
