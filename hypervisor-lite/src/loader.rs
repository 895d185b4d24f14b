//! Guest image loading: a bounds-checked ELF (ELF64 or ELF32, x86, ET_EXEC) PT_LOAD loader that copies each
//! segment to its physical address in [`GuestRam`] and zeroes the rest of the segment (.bss), so guests need
//! not clear their own .bss.

use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::memory::{GuestRam, MemoryError};

/// Lowest guest physical address a segment may occupy: everything below is the boot area
/// (GDT, page tables, vCPU stacks; see [`crate::boot`]).
pub const MIN_LOAD_ADDR: u64 = 0x10_0000;

const PT_LOAD: u32 = 1;
const ET_EXEC: u16 = 2;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;

/// Errors of loading a guest image. Each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The image could not be read from disk.
    #[error("cannot read guest image {path}")]
    Read {
        /// Path of the image.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The image is not an ELF file we can load.
    #[error("not a loadable x86 ELF executable: {0}")]
    BadElf(&'static str),
    /// A header or segment points outside the file.
    #[error("ELF {what} at file offset {offset:#x}+{len:#x} is beyond the end of the file ({file_len:#x} bytes)")]
    Truncated {
        /// Which structure.
        what: &'static str,
        /// Its file offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// The file length.
        file_len: u64,
    },
    /// A segment's file size exceeds its memory size.
    #[error("segment at {paddr:#x}: file size {filesz:#x} > memory size {memsz:#x}")]
    SegmentSize {
        /// Physical address of the segment.
        paddr: u64,
        /// File size.
        filesz: u64,
        /// Memory size.
        memsz: u64,
    },
    /// A segment would overwrite the boot area below [`MIN_LOAD_ADDR`].
    #[error("segment {paddr:#x}+{memsz:#x} overlaps the boot area below {MIN_LOAD_ADDR:#x}")]
    BootAreaOverlap {
        /// Physical address of the segment.
        paddr: u64,
        /// Memory size.
        memsz: u64,
    },
    /// A segment does not fit in guest RAM.
    #[error("segment does not fit in guest RAM")]
    OutsideRam(#[source] MemoryError),
    /// The entry point is not inside any loaded segment.
    #[error("entry point {entry:#x} is not inside a loaded segment")]
    EntryOutsideImage {
        /// The entry point.
        entry: u64,
    },
}

/// What [`load_elf`] placed in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    /// Entry point (physical = virtual under the identity mapping).
    pub entry: u64,
    /// `true` for an ELF64 image, `false` for ELF32.
    pub is_64bit: bool,
    /// Lowest physical address loaded.
    pub low: u64,
    /// One past the highest physical address loaded (end of .bss).
    pub high: u64,
}

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Ident {
    magic: [u8; 4],
    class: u8,
    data: u8,
    version: u8,
    _pad: [u8; 9],
    e_type: u16,
    e_machine: u16,
}

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Elf64Header {
    _ident: [u8; 16],
    _type: u16,
    _machine: u16,
    _version: u32,
    entry: u64,
    phoff: u64,
    _shoff: u64,
    _flags: u32,
    _ehsize: u16,
    phentsize: u16,
    phnum: u16,
}

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Elf32Header {
    _ident: [u8; 16],
    _type: u16,
    _machine: u16,
    _version: u32,
    entry: u32,
    phoff: u32,
    _shoff: u32,
    _flags: u32,
    _ehsize: u16,
    phentsize: u16,
    phnum: u16,
}

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Elf64Phdr {
    p_type: u32,
    _flags: u32,
    offset: u64,
    _vaddr: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
    _align: u64,
}

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Elf32Phdr {
    p_type: u32,
    offset: u32,
    _vaddr: u32,
    paddr: u32,
    filesz: u32,
    memsz: u32,
    _flags: u32,
    _align: u32,
}

/// A program header, widened to 64 bits.
struct Segment {
    p_type: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn slice<'a>(
    image: &'a [u8],
    what: &'static str,
    offset: u64,
    len: u64,
) -> Result<&'a [u8], LoadError> {
    let end = offset
        .checked_add(len)
        .filter(|&end| end <= image.len() as u64)
        .ok_or(LoadError::Truncated {
            what,
            offset,
            len,
            file_len: image.len() as u64,
        })?;
    Ok(&image[offset as usize..end as usize])
}

fn read<T: FromBytes + KnownLayout + Immutable>(
    image: &[u8],
    what: &'static str,
    offset: u64,
) -> Result<T, LoadError> {
    let bytes = slice(image, what, offset, std::mem::size_of::<T>() as u64)?;
    T::read_from_bytes(bytes).map_err(|_| LoadError::BadElf("header size"))
}

fn parse(image: &[u8]) -> Result<(u64, bool, Vec<Segment>), LoadError> {
    let ident: Ident = read(image, "ELF header", 0)?;
    if ident.magic != *b"\x7fELF" {
        return Err(LoadError::BadElf("bad magic"));
    }
    if ident.data != 1 || ident.version != 1 {
        return Err(LoadError::BadElf("not little-endian ELF version 1"));
    }
    if ident.e_type != ET_EXEC {
        return Err(LoadError::BadElf("not ET_EXEC (link with -static -no-pie)"));
    }
    match (ident.class, ident.e_machine) {
        (2, EM_X86_64) => {
            let h: Elf64Header = read(image, "ELF header", 0)?;
            if usize::from(h.phentsize) != std::mem::size_of::<Elf64Phdr>() {
                return Err(LoadError::BadElf("unexpected program header size"));
            }
            let segs = (0..u64::from(h.phnum))
                .map(|i| {
                    let p: Elf64Phdr =
                        read(image, "program header", h.phoff.saturating_add(i * 56))?;
                    Ok(Segment {
                        p_type: p.p_type,
                        offset: p.offset,
                        paddr: p.paddr,
                        filesz: p.filesz,
                        memsz: p.memsz,
                    })
                })
                .collect::<Result<_, LoadError>>()?;
            Ok((h.entry, true, segs))
        }
        (1, EM_386) | (1, EM_X86_64) => {
            let h: Elf32Header = read(image, "ELF header", 0)?;
            if usize::from(h.phentsize) != std::mem::size_of::<Elf32Phdr>() {
                return Err(LoadError::BadElf("unexpected program header size"));
            }
            let segs = (0..u64::from(h.phnum))
                .map(|i| {
                    let p: Elf32Phdr = read(image, "program header", u64::from(h.phoff) + i * 32)?;
                    Ok(Segment {
                        p_type: p.p_type,
                        offset: p.offset.into(),
                        paddr: p.paddr.into(),
                        filesz: p.filesz.into(),
                        memsz: p.memsz.into(),
                    })
                })
                .collect::<Result<_, LoadError>>()?;
            Ok((h.entry.into(), false, segs))
        }
        _ => Err(LoadError::BadElf("not an x86 or x86-64 ELF")),
    }
}

/// Loads every PT_LOAD segment of `image` into `ram` at its physical address, zeroing `memsz - filesz`.
/// Validates everything before writing anything.
pub fn load_elf(ram: &GuestRam, image: &[u8]) -> Result<LoadedImage, LoadError> {
    let (entry, is_64bit, segments) = parse(image)?;
    let loads: Vec<&Segment> = segments
        .iter()
        .filter(|s| s.p_type == PT_LOAD && s.memsz > 0)
        .collect();
    if loads.is_empty() {
        return Err(LoadError::BadElf("no PT_LOAD segment"));
    }
    for s in &loads {
        if s.filesz > s.memsz {
            return Err(LoadError::SegmentSize {
                paddr: s.paddr,
                filesz: s.filesz,
                memsz: s.memsz,
            });
        }
        if s.paddr < MIN_LOAD_ADDR {
            return Err(LoadError::BootAreaOverlap {
                paddr: s.paddr,
                memsz: s.memsz,
            });
        }
        if !ram.contains(s.paddr, s.memsz) {
            return Err(LoadError::OutsideRam(MemoryError::OutOfRange {
                gpa: s.paddr,
                len: s.memsz,
            }));
        }
        slice(image, "segment", s.offset, s.filesz)?;
    }
    if !loads
        .iter()
        .any(|s| entry >= s.paddr && entry < s.paddr + s.memsz)
    {
        return Err(LoadError::EntryOutsideImage { entry });
    }
    for s in &loads {
        let data = slice(image, "segment", s.offset, s.filesz)?;
        ram.write(s.paddr, data).map_err(LoadError::OutsideRam)?;
        ram.zero(s.paddr + s.filesz, s.memsz - s.filesz)
            .map_err(LoadError::OutsideRam)?;
    }
    let low = loads.iter().map(|s| s.paddr).min().unwrap_or(0);
    let high = loads.iter().map(|s| s.paddr + s.memsz).max().unwrap_or(0);
    Ok(LoadedImage {
        entry,
        is_64bit,
        low,
        high,
    })
}

/// Reads the file at `path` and loads it with [`load_elf`].
pub fn load_elf_file(ram: &GuestRam, path: &std::path::Path) -> Result<LoadedImage, LoadError> {
    let image = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    load_elf(ram, &image)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a minimal ELF64 ET_EXEC with one PT_LOAD segment.
    fn elf64(entry: u64, paddr: u64, data: &[u8], memsz: u64) -> Vec<u8> {
        let mut v = vec![0u8; 64 + 56];
        v[..4].copy_from_slice(b"\x7fELF");
        v[4] = 2;
        v[5] = 1;
        v[6] = 1;
        v[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        v[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        v[24..32].copy_from_slice(&entry.to_le_bytes());
        v[32..40].copy_from_slice(&64u64.to_le_bytes());
        v[54..56].copy_from_slice(&56u16.to_le_bytes());
        v[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        v[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        v[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes());
        v[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
        v[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        v[ph + 32..ph + 40].copy_from_slice(&(data.len() as u64).to_le_bytes());
        v[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn loads_segment_and_zeroes_bss() {
        let ram = GuestRam::new(4 << 20).unwrap();
        ram.write(0x10_0000, &[0xAA; 64]).unwrap();
        let img = elf64(0x10_0000, 0x10_0000, &[1, 2, 3, 4], 32);
        let li = load_elf(&ram, &img).unwrap();
        assert_eq!(
            li,
            LoadedImage {
                entry: 0x10_0000,
                is_64bit: true,
                low: 0x10_0000,
                high: 0x10_0020
            }
        );
        let mut buf = [0u8; 40];
        ram.read(0x10_0000, &mut buf).unwrap();
        assert_eq!(&buf[..4], &[1, 2, 3, 4]);
        assert!(buf[4..32].iter().all(|&b| b == 0));
        assert!(buf[32..].iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn rejects_bad_images_without_panicking() {
        let ram = GuestRam::new(2 << 20).unwrap();
        assert!(matches!(
            load_elf(&ram, b"\x7fEL"),
            Err(LoadError::Truncated { .. })
        ));
        assert!(matches!(
            load_elf(&ram, &[0u8; 200]),
            Err(LoadError::BadElf(_))
        ));
        let beyond = elf64(0x1F_FFF0, 0x1F_FFF0, &[0; 4], 0x100);
        assert!(matches!(
            load_elf(&ram, &beyond),
            Err(LoadError::OutsideRam(_))
        ));
        let low = elf64(0x1000, 0x1000, &[0; 4], 4);
        assert!(matches!(
            load_elf(&ram, &low),
            Err(LoadError::BootAreaOverlap { .. })
        ));
        let entry = elf64(0x18_0000, 0x10_0000, &[0; 4], 4);
        assert!(matches!(
            load_elf(&ram, &entry),
            Err(LoadError::EntryOutsideImage { entry: 0x18_0000 })
        ));
        let mut cut = elf64(0x10_0000, 0x10_0000, &[0; 16], 16);
        cut.truncate(cut.len() - 8);
        assert!(matches!(
            load_elf(&ram, &cut),
            Err(LoadError::Truncated {
                what: "segment",
                ..
            })
        ));
        let mut huge_off = elf64(0x10_0000, 0x10_0000, &[0; 4], 4);
        huge_off[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            load_elf(&ram, &huge_off),
            Err(LoadError::Truncated { .. })
        ));
    }
}
