use std::io::Write as _;
use std::path::Path;

use super::*;

/// A minimal ELF64 with one PT_NOTE segment holding `notes`, and `tail` bytes after it
/// (standing for the relocations the kernel build appends).
fn elf(notes: &[u8], tail: usize) -> Vec<u8> {
    let mut e = vec![0u8; 64 + 56];
    e[0..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // ELF64
    e[5] = 1; // little-endian
    e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = 64;
    e[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
    e[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
    e[ph + 0x20..ph + 0x28].copy_from_slice(&(notes.len() as u64).to_le_bytes());
    e.extend_from_slice(notes);
    e.extend(std::iter::repeat_n(0xee, tail));
    e
}

fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend_from_slice(&(name.len() as u32).to_le_bytes());
    n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    n.extend_from_slice(&kind.to_le_bytes());
    n.extend_from_slice(name);
    n.resize(n.len().next_multiple_of(4), 0);
    n.extend_from_slice(desc);
    n.resize(n.len().next_multiple_of(4), 0);
    n
}

fn pvh_notes() -> Vec<u8> {
    let mut n = note(b"GNU\0", 3, &[1, 2, 3, 4]);
    n.extend(note(b"Xen\0", 5, b"xen-3.0\0"));
    n.extend(note(b"Xen\0", 18, &0x0100_0ab0u32.to_le_bytes()));
    n
}

/// A bzImage around `payload` (one setup sector, boot protocol 2.15).
fn bz(payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    b[0x1f1] = 1;
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    b[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
    b[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(payload);
    b
}

fn with_size(mut compressed: Vec<u8>, size: usize) -> Vec<u8> {
    compressed.extend_from_slice(&(size as u32).to_le_bytes());
    compressed
}

/// LZ4 legacy frames of `data`, blocks of `block` bytes (the kernel's are 8 MiB).
fn lz4_legacy_frames(data: &[u8], block: usize) -> Vec<u8> {
    let mut out = LZ4_LEGACY_MAGIC.to_vec();
    for chunk in data.chunks(block) {
        let c = lz4_flex::block::compress(chunk);
        out.extend_from_slice(&(c.len() as u32).to_le_bytes());
        out.extend_from_slice(&c);
    }
    with_size(out, data.len())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

const F: &str = "/boot/vmlinuz-test";

#[test]
fn every_compression_gives_the_elf_back_without_its_tail() {
    let inner = elf(&pvh_notes(), 0);
    let whole = elf(&pvh_notes(), 3000);
    let zstd = with_size(
        zstd::encode_all(whole.as_slice(), 3).expect("zstd"),
        whole.len(),
    );
    for (what, payload) in [
        ("lz4", lz4_legacy_frames(&whole, 1000)),
        ("gzip", gzip(&whole)),
        ("zstd", zstd),
    ] {
        let out = extract_elf(Path::new(F), &bz(&payload)).expect(what);
        assert_eq!(out, inner, "{what}");
        assert_eq!(
            pvh_entry(Path::new(F), &out).expect(what),
            Some(0x0100_0ab0),
            "{what}"
        );
    }
}

#[test]
fn a_kernel_without_the_note_has_no_pvh_entry() {
    let e = elf(&note(b"Xen\0", 5, b"xen-3.0\0"), 0);
    assert_eq!(pvh_entry(Path::new(F), &e).expect("elf"), None);
}

#[test]
fn not_a_bzimage_is_refused_with_what_was_found() {
    let e = extract_elf(Path::new(F), &[0x7f; 0x300]).expect_err("not bz");
    let m = e.to_string();
    assert!(matches!(e, KernelError::NotBzImage { .. }), "{m}");
    assert!(m.contains(F) && m.contains("7f 7f 7f 7f"), "{m}");
    assert!(m.contains("--kernel-entry bzimage"), "{m}");
    let e = extract_elf(Path::new(F), b"short").expect_err("tiny");
    assert!(e.to_string().contains("found nothing"), "{e}");
}

#[test]
fn a_truncated_payload_is_refused_with_its_extent() {
    let mut b = bz(&lz4_legacy_frames(&elf(&pvh_notes(), 0), 64));
    let len = b.len();
    b.truncate(len - 10);
    let e = extract_elf(Path::new(F), &b).expect_err("truncated");
    let m = e.to_string();
    assert!(matches!(e, KernelError::Truncated { .. }), "{m}");
    assert!(m.contains(&format!("ends at byte {len}")), "{m}");
    assert!(m.contains(&format!("the file has {}", len - 10)), "{m}");
}

#[test]
fn a_payload_cut_inside_a_block_does_not_decompress() {
    // The header's length is consistent, but the last block lost its end.
    let frames = lz4_legacy_frames(&elf(&pvh_notes(), 500), 64);
    let (body, size) = frames.split_at(frames.len() - 4);
    let mut cut = body[..body.len() - 7].to_vec();
    cut.extend_from_slice(size);
    let e = extract_elf(Path::new(F), &bz(&cut)).expect_err("cut");
    assert!(matches!(e, KernelError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("LZ4 legacy payload"), "{e}");
}

#[test]
fn a_wrong_size_trailer_is_refused() {
    let whole = elf(&pvh_notes(), 0);
    let mut frames = lz4_legacy_frames(&whole, 64);
    let n = frames.len();
    frames[n - 4..].copy_from_slice(&(whole.len() as u32 + 8).to_le_bytes());
    let e = extract_elf(Path::new(F), &bz(&frames)).expect_err("size");
    assert!(matches!(e, KernelError::SizeMismatch { .. }), "{e}");
}

#[test]
fn an_unknown_compression_is_named() {
    let xz = [0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2, 3, 4];
    let e = extract_elf(Path::new(F), &bz(&xz)).expect_err("xz");
    let m = e.to_string();
    assert!(matches!(e, KernelError::UnknownCompression { .. }), "{m}");
    assert!(m.contains("XZ") && m.contains("fd 37 7a 58"), "{m}");
    assert!(m.contains("uncompressed vmlinux"), "{m}");
}

#[test]
fn a_payload_that_is_not_elf_is_refused() {
    let data = b"MZ this is no ELF at all".repeat(10);
    let e = extract_elf(Path::new(F), &bz(&lz4_legacy_frames(&data, 64))).expect_err("pe");
    assert!(matches!(e, KernelError::NotElf64 { .. }), "{e}");
    assert!(e.to_string().contains("4d 5a"), "{e}");
}

/// The host's guest kernel (Debian's cloud kernel: LZ4, CONFIG_PVH=y), when installed.
#[test]
fn the_installed_guest_kernel_extracts_with_a_pvh_entry() {
    let Some(path) = installed_guest_kernel() else {
        eprintln!("no /boot/vmlinuz-*: skipped");
        return;
    };
    let Ok(bz) = std::fs::read(&path) else {
        eprintln!("{} unreadable: skipped", path.display());
        return;
    };
    let elf = extract_elf(&path, &bz).expect("extracts");
    assert!(
        elf.len() > bz.len() && elf.len() < 512 << 20,
        "{} bytes from {}",
        elf.len(),
        bz.len()
    );
    let entry = pvh_entry(&path, &elf).expect("elf").expect("PVH note");
    eprintln!(
        "{}: {} bytes, ELF {} bytes, PVH entry {entry:#x}",
        path.display(),
        bz.len(),
        elf.len()
    );
    // A physical address below 4 GiB (the kernel loads at 16 MiB on x86_64).
    assert!(entry > 0x10_0000 && entry < 1 << 32, "{entry:#x}");
}
