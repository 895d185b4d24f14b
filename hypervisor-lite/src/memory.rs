//! Guest RAM: sparse anonymous host mappings laid out around the x86 MMIO hole, held as vm-memory's
//! [`GuestMemoryMmap`] (the type virtio-queue and every device model speak), and the access paths hypervisor-lite
//! itself uses on top of it (bounds-checked copies, little-endian scalars, zerocopy objects, atomics on aligned
//! guest words, raw host pointers for shared rings).
//!
//! Layout: RAM occupies `[0, min(size, 3 GiB))`; whatever is left is placed at `[4 GiB, 4 GiB + rest)`.
//! The gap `[3 GiB, 4 GiB)` is the MMIO hole (IOAPIC at 0xFEC00000, LAPIC at 0xFEE00000, ...): no RAM there.
//! The mappings are `MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE`, so a 32 GiB partition costs host memory only
//! for the pages a guest (or the host) actually touches.
//!
//! Concurrency contract: guest memory is shared with running vCPUs and other host threads. Every access here goes
//! through vm-memory's `VolatileSlice` (volatile copies, atomics on aligned words), never through Rust references
//! into guest memory, so a guest writing concurrently cannot cause a data race on the host side; plain copies can
//! still observe torn values, and callers that need single-copy atomicity use the atomic helpers. Every range must
//! lie entirely inside one RAM region: otherwise the access fails as a whole, before any byte is touched.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use vm_memory::mmap::MmapRegionError;
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress, MmapRegion, VolatileMemory, VolatileSlice,
};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// End of the RAM below the MMIO hole (3 GiB).
pub const LOW_RAM_END: u64 = 0xC000_0000;
/// Start of the RAM above the MMIO hole (4 GiB).
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// Host page size assumed for RAM sizes (RAM sizes must be a multiple of it).
pub const PAGE_SIZE: u64 = 4096;
/// Largest RAM size a partition may ask for (1 TiB: far beyond anything we test, well inside 48-bit GPAs).
pub const MAX_RAM_BYTES: u64 = 1 << 40;

/// Errors of guest-memory accesses. Every access error names the guest physical address and length involved.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The range is not entirely inside one RAM region (beyond the end, in the MMIO hole, or overflowing).
    #[error("guest range {gpa:#x}+{len:#x} is not guest RAM")]
    OutOfRange {
        /// First guest physical address of the access.
        gpa: u64,
        /// Length of the access in bytes.
        len: u64,
    },
    /// An atomic access was not naturally aligned.
    #[error("guest address {gpa:#x} (len {len}) is not {len}-byte aligned for an atomic access")]
    Misaligned {
        /// Guest physical address of the access.
        gpa: u64,
        /// Size (and required alignment) of the access.
        len: u64,
    },
    /// The requested RAM size is zero, not page-aligned or too large.
    #[error("invalid guest RAM size {bytes:#x} (must be a non-zero multiple of 4 KiB, at most {MAX_RAM_BYTES:#x})")]
    InvalidSize {
        /// Requested size in bytes.
        bytes: u64,
    },
    /// The host refused the anonymous mapping backing guest RAM at `gpa`.
    #[error("cannot map {len:#x} bytes of host memory for guest RAM at {gpa:#x}")]
    Mmap {
        /// Guest physical address of the region.
        gpa: u64,
        /// Length of the region in bytes.
        len: u64,
        /// Why vm-memory could not map the region.
        source: MmapRegionError,
    },
    /// vm-memory refused the region layout (cannot happen for the fixed layout; reported, not unwrapped).
    #[error("guest RAM regions of {bytes:#x} bytes cannot form a guest memory map")]
    Layout {
        /// Requested size in bytes.
        bytes: u64,
        /// What vm-memory refused.
        source: vm_memory::GuestRegionCollectionError,
    },
}

/// Result of a guest memory access.
pub type Result<T> = std::result::Result<T, MemoryError>;

/// One contiguous guest RAM region and the host mapping behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    /// First guest physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Host virtual address of `gpa` (the region's mapping is `len` bytes long).
    pub host_addr: u64,
}

impl RamRegion {
    /// One past the last guest physical address of the region.
    pub fn end(&self) -> u64 {
        self.gpa + self.len
    }
}

/// Guest physical RAM. Cloning clones the [`GuestMemoryMmap`] (reference-counted regions): every clone sees
/// the same memory, and the mappings live until the last clone of either goes away.
#[derive(Clone)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
}

impl fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestRam")
            .field("size", &self.size)
            .field("regions", &self.regions())
            .finish()
    }
}

fn region(gpa: u64, len: u64) -> Result<GuestRegionMmap> {
    let size = usize::try_from(len).map_err(|_| MemoryError::InvalidSize { bytes: len })?;
    // MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, read/write: nothing is committed until touched.
    let mapping = MmapRegion::new(size).map_err(|source| MemoryError::Mmap { gpa, len, source })?;
    // The layout keeps every region below 2^41, so `gpa + len` cannot overflow.
    GuestRegionMmap::new(mapping, GuestAddress(gpa)).ok_or(MemoryError::InvalidSize { bytes: len })
}

impl GuestRam {
    /// Allocates `bytes` of guest RAM (multiple of 4 KiB, up to [`MAX_RAM_BYTES`]) around the MMIO hole.
    /// No host memory is committed until pages are touched.
    pub fn new(bytes: u64) -> Result<Self> {
        if bytes == 0 || !bytes.is_multiple_of(PAGE_SIZE) || bytes > MAX_RAM_BYTES {
            return Err(MemoryError::InvalidSize { bytes });
        }
        let low = bytes.min(LOW_RAM_END);
        let mut regions = vec![region(0, low)?];
        if bytes > low {
            regions.push(region(HIGH_RAM_START, bytes - low)?);
        }
        let mem = GuestMemoryMmap::from_regions(regions)
            .map_err(|source| MemoryError::Layout { bytes, source })?;
        Ok(Self { mem, size: bytes })
    }

    /// The RAM as vm-memory's guest memory map, at the same guest physical addresses. A clone of it keeps the
    /// mappings alive on its own (for device models that outlive the partition object).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Total RAM in bytes (excluding the hole).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The RAM regions in ascending guest-physical order (for KVM memory slots).
    pub fn regions(&self) -> Vec<RamRegion> {
        self.mem
            .iter()
            .map(|r| RamRegion {
                gpa: r.start_addr().raw_value(),
                len: r.len(),
                host_addr: r.as_ptr() as u64,
            })
            .collect()
    }

    /// Whether `[gpa, gpa + len)` lies entirely within one RAM region. Overflow-safe; an empty range is
    /// contained if `gpa` is inside a region or at its end.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        self.slice(gpa, len).is_ok()
    }

    /// The volatile view of `[gpa, gpa + len)`, which must lie within one region (checked before anything is
    /// touched, so a failing access has no partial effect).
    fn slice(&self, gpa: u64, len: u64) -> Result<VolatileSlice<'_>> {
        let out_of_range = || MemoryError::OutOfRange { gpa, len };
        let end = gpa.checked_add(len).ok_or_else(out_of_range)?;
        let count = usize::try_from(len).map_err(|_| out_of_range())?;
        let region = self
            .mem
            .iter()
            .find(|r| {
                let start = r.start_addr().raw_value();
                gpa >= start && end <= start + r.len()
            })
            .ok_or_else(out_of_range)?;
        let offset = MemoryRegionAddress(gpa - region.start_addr().raw_value());
        region.get_slice(offset, count).map_err(|_| out_of_range())
    }

    /// Host pointer to `[gpa, gpa + len)`, which must lie within one contiguous RAM region.
    ///
    /// Contract for callers (e.g. VMBus ring code mapping GPADL pages): the pointer is valid for reads and writes
    /// of `len` bytes as long as any clone of this `GuestRam` (or of its [`memory`](Self::memory)) is alive. The
    /// memory is concurrently modified by the guest and other host threads: never form `&`/`&mut` references to
    /// it; use volatile or atomic accesses (or copy into private buffers and validate afterwards), and treat every
    /// value as untrusted and possibly changing between two reads.
    pub fn host_ptr_range(&self, gpa: u64, len: u64) -> Result<*mut u8> {
        Ok(self.slice(gpa, len)?.ptr_guard_mut().as_ptr())
    }

    /// Copies guest memory at `gpa` into `buf` (volatile copy).
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        self.slice(gpa, buf.len() as u64)?.copy_to(buf);
        Ok(())
    }

    /// Copies `data` into guest memory at `gpa` (volatile copy).
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        self.slice(gpa, data.len() as u64)?.copy_from(data);
        Ok(())
    }

    /// Fills `[gpa, gpa + len)` with zero bytes.
    pub fn zero(&self, gpa: u64, len: u64) -> Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut rest = self.slice(gpa, len)?;
        while !rest.is_empty() {
            let n = rest.len().min(ZEROS.len());
            let (head, tail) = rest
                .split_at(n)
                .map_err(|_| MemoryError::OutOfRange { gpa, len })?;
            head.copy_from(&ZEROS[..n]);
            rest = tail;
        }
        Ok(())
    }

    /// Reads a little-endian u32.
    pub fn read_u32(&self, gpa: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian u64.
    pub fn read_u64(&self, gpa: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian u32.
    pub fn write_u32(&self, gpa: u64, value: u32) -> Result<()> {
        self.write(gpa, &value.to_le_bytes())
    }

    /// Writes a little-endian u64.
    pub fn write_u64(&self, gpa: u64, value: u64) -> Result<()> {
        self.write(gpa, &value.to_le_bytes())
    }

    /// Reads a plain-old-data object (no alignment requirement on `gpa`).
    pub fn read_obj<T: FromBytes + IntoBytes>(&self, gpa: u64) -> Result<T> {
        let mut value = T::new_zeroed();
        self.read(gpa, value.as_mut_bytes())?;
        Ok(value)
    }

    /// Writes a plain-old-data object (no alignment requirement on `gpa`).
    pub fn write_obj<T: IntoBytes + Immutable>(&self, gpa: u64, value: &T) -> Result<()> {
        self.write(gpa, value.as_bytes())
    }

    /// The naturally aligned `size`-byte guest word at `gpa` (regions start page-aligned in page-aligned
    /// mappings, so an aligned GPA is an aligned host address).
    fn atomic_slice(&self, gpa: u64, size: u64) -> Result<VolatileSlice<'_>> {
        if !gpa.is_multiple_of(size) {
            return Err(MemoryError::Misaligned { gpa, len: size });
        }
        self.slice(gpa, size)
    }

    fn with_u32<R>(&self, gpa: u64, f: impl FnOnce(&AtomicU32) -> R) -> Result<R> {
        let slice = self.atomic_slice(gpa, 4)?;
        let word = slice
            .get_atomic_ref::<AtomicU32>(0)
            .map_err(|_| MemoryError::Misaligned { gpa, len: 4 })?;
        Ok(f(word))
    }

    fn with_u64<R>(&self, gpa: u64, f: impl FnOnce(&AtomicU64) -> R) -> Result<R> {
        let slice = self.atomic_slice(gpa, 8)?;
        let word = slice
            .get_atomic_ref::<AtomicU64>(0)
            .map_err(|_| MemoryError::Misaligned { gpa, len: 8 })?;
        Ok(f(word))
    }

    /// Atomically loads an aligned guest u32.
    pub fn load_u32(&self, gpa: u64, order: Ordering) -> Result<u32> {
        self.with_u32(gpa, |w| w.load(order))
    }

    /// Atomically stores an aligned guest u32.
    pub fn store_u32(&self, gpa: u64, value: u32, order: Ordering) -> Result<()> {
        self.with_u32(gpa, |w| w.store(value, order))
    }

    /// Atomically loads an aligned guest u64.
    pub fn load_u64(&self, gpa: u64, order: Ordering) -> Result<u64> {
        self.with_u64(gpa, |w| w.load(order))
    }

    /// Atomically ORs `bits` into an 8-aligned guest u64 (SeqCst); returns the previous value.
    pub fn fetch_or_u64(&self, gpa: u64, bits: u64) -> Result<u64> {
        self.with_u64(gpa, |w| w.fetch_or(bits, Ordering::SeqCst))
    }

    /// Atomically ANDs `mask` into an 8-aligned guest u64 (SeqCst); returns the previous value.
    pub fn fetch_and_u64(&self, gpa: u64, mask: u64) -> Result<u64> {
        self.with_u64(gpa, |w| w.fetch_and(mask, Ordering::SeqCst))
    }

    /// Atomically ORs `bits` into a 4-aligned guest u32 (SeqCst); returns the previous value.
    pub fn fetch_or_u32(&self, gpa: u64, bits: u32) -> Result<u32> {
        self.with_u32(gpa, |w| w.fetch_or(bits, Ordering::SeqCst))
    }

    /// Atomic compare-exchange on a 4-aligned guest u32 (SeqCst). `Ok(Ok(previous))` on success,
    /// `Ok(Err(actual))` when the current value was not `current`.
    pub fn compare_exchange_u32(
        &self,
        gpa: u64,
        current: u32,
        new: u32,
    ) -> Result<std::result::Result<u32, u32>> {
        self.with_u32(gpa, |w| {
            w.compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_ram_has_one_region_and_exact_bounds() {
        let ram = GuestRam::new(4 * MIB).unwrap();
        assert_eq!(ram.size(), 4 * MIB);
        assert_eq!(ram.regions().len(), 1);
        assert!(ram.contains(0, 4 * MIB));
        assert!(ram.contains(4 * MIB - 1, 1));
        assert!(ram.contains(4 * MIB, 0));
        assert!(!ram.contains(4 * MIB, 1));
        assert!(!ram.contains(4 * MIB - 1, 2));
        assert!(!ram.contains(u64::MAX, 1));
        assert!(!ram.contains(1, u64::MAX));
    }

    #[test]
    fn last_byte_round_trips_and_straddling_the_end_fails() {
        let ram = GuestRam::new(2 * MIB).unwrap();
        ram.write(2 * MIB - 1, &[0xAB]).unwrap();
        let mut b = [0u8; 1];
        ram.read(2 * MIB - 1, &mut b).unwrap();
        assert_eq!(b, [0xAB]);
        let err = ram.write_u32(2 * MIB - 2, 1).unwrap_err();
        assert!(
            matches!(err, MemoryError::OutOfRange { gpa, len: 4 } if gpa == 2 * MIB - 2),
            "{err}"
        );
        let err = ram.read_u64(u64::MAX).unwrap_err();
        assert!(matches!(
            err,
            MemoryError::OutOfRange {
                gpa: u64::MAX,
                len: 8
            }
        ));
        assert!(err.to_string().contains("0xffffffffffffffff"));
    }

    #[test]
    fn invalid_sizes_are_rejected() {
        for bytes in [0, 4095, MAX_RAM_BYTES + PAGE_SIZE] {
            assert!(
                matches!(GuestRam::new(bytes), Err(MemoryError::InvalidSize { .. })),
                "{bytes:#x}"
            );
        }
    }

    #[test]
    fn large_ram_splits_around_the_hole_without_committing_memory() {
        let ram = GuestRam::new(32 * GIB).unwrap();
        let regions = ram.regions();
        assert_eq!(regions.len(), 2);
        assert_eq!((regions[0].gpa, regions[0].len), (0, LOW_RAM_END));
        assert_eq!(
            (regions[1].gpa, regions[1].len),
            (HIGH_RAM_START, 32 * GIB - LOW_RAM_END)
        );
        // The hole is not RAM, also not for a range straddling either edge.
        assert!(!ram.contains(0xFEE0_0000, 4));
        assert!(!ram.contains(LOW_RAM_END - 4, 8));
        assert!(!ram.contains(HIGH_RAM_START - 4, 8));
        assert!(ram.contains(LOW_RAM_END - 8, 8));
        assert!(ram.contains(HIGH_RAM_START, 8));
        let last = HIGH_RAM_START + 32 * GIB - LOW_RAM_END - 8;
        ram.write_u64(last, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(ram.read_u64(last).unwrap(), 0x1122_3344_5566_7788);
        assert!(ram.read_u64(last + 1).is_err());
        assert!(matches!(
            ram.read_u32(0xFEC0_0000),
            Err(MemoryError::OutOfRange {
                gpa: 0xFEC0_0000,
                len: 4
            })
        ));
    }

    #[test]
    fn scalars_are_little_endian() {
        let ram = GuestRam::new(MIB).unwrap();
        ram.write_u32(0x100, 0x0403_0201).unwrap();
        let mut b = [0u8; 4];
        ram.read(0x100, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        ram.write_u64(0x203, 0x0807_0605_0403_0201).unwrap();
        assert_eq!(ram.read_u32(0x207).unwrap(), 0x0807_0605);
    }

    #[derive(Debug, PartialEq, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
    #[repr(C)]
    struct Header {
        kind: u32,
        size: u16,
        flags: u16,
        id: u64,
    }

    #[test]
    fn objects_round_trip_unaligned() {
        let ram = GuestRam::new(MIB).unwrap();
        let h = Header {
            kind: 7,
            size: 240,
            flags: 1,
            id: 0xDEAD_BEEF_0000_0001,
        };
        ram.write_obj(0x1001, &h).unwrap();
        assert_eq!(ram.read_obj::<Header>(0x1001).unwrap(), h);
        assert_eq!(ram.read_u32(0x1001).unwrap(), 7);
        assert!(ram.read_obj::<Header>(MIB - 8).is_err());
    }

    #[test]
    fn atomics_check_alignment_and_bounds() {
        let ram = GuestRam::new(MIB).unwrap();
        assert_eq!(ram.fetch_or_u64(0x40, 0b101).unwrap(), 0);
        assert_eq!(ram.fetch_or_u64(0x40, 0b010).unwrap(), 0b101);
        assert_eq!(ram.fetch_and_u64(0x40, !0b001).unwrap(), 0b111);
        assert_eq!(ram.read_u64(0x40).unwrap(), 0b110);
        assert!(matches!(
            ram.fetch_or_u64(0x44, 1),
            Err(MemoryError::Misaligned { gpa: 0x44, len: 8 })
        ));
        assert!(matches!(
            ram.fetch_or_u64(MIB, 1),
            Err(MemoryError::OutOfRange { .. })
        ));
        ram.store_u32(0x80, 5, Ordering::Release).unwrap();
        assert_eq!(ram.load_u32(0x80, Ordering::Acquire).unwrap(), 5);
        assert_eq!(ram.compare_exchange_u32(0x80, 5, 9).unwrap(), Ok(5));
        assert_eq!(ram.compare_exchange_u32(0x80, 5, 1).unwrap(), Err(9));
        assert!(matches!(
            ram.load_u32(0x82, Ordering::Relaxed),
            Err(MemoryError::Misaligned { .. })
        ));
        assert!(ram.load_u32(u64::MAX - 3, Ordering::Relaxed).is_err());
    }

    #[test]
    fn clones_share_memory_across_threads() {
        let ram = GuestRam::new(MIB).unwrap();
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let ram = ram.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        ram.fetch_or_u64(0x10, 1 << i).unwrap();
                        ram.fetch_or_u32(0x20 + 4 * i, 0).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(ram.read_u64(0x10).unwrap(), 0xF);
    }

    #[test]
    fn host_ptr_range_stays_within_a_region() {
        let ram = GuestRam::new(4 * GIB).unwrap();
        let p = ram.host_ptr_range(0x2000, 0x1000).unwrap();
        assert_eq!(p as u64, ram.regions()[0].host_addr + 0x2000);
        assert!(ram.host_ptr_range(LOW_RAM_END - 0x1000, 0x2000).is_err());
        let hp = ram.host_ptr_range(HIGH_RAM_START, 0x1000).unwrap();
        assert_eq!(hp as u64, ram.regions()[1].host_addr);
    }

    #[test]
    fn memory_is_the_same_ram_and_outlives_the_handle() {
        use vm_memory::Bytes;
        let ram = GuestRam::new(4 * GIB).unwrap();
        let mem = ram.memory().clone();
        assert_eq!(mem.num_regions(), 2);
        ram.write_u64(HIGH_RAM_START + 8, 0xfeed).unwrap();
        let v: u64 = mem
            .read_obj(GuestAddress(HIGH_RAM_START + 8))
            .expect("visible through vm-memory");
        assert_eq!(v, 0xfeed);
        drop(ram);
        // The clone keeps the mapping alive.
        mem.write_obj(7u32, GuestAddress(0x10)).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x10)).unwrap(), 7);
    }

    #[test]
    fn failed_accesses_have_no_partial_effect() {
        let ram = GuestRam::new(4 * GIB).unwrap();
        ram.write(LOW_RAM_END - 4, &[1, 2, 3, 4]).unwrap();
        // Straddles the end of low RAM into the hole: nothing is written, not even the first 4 bytes.
        assert!(ram.write(LOW_RAM_END - 4, &[9; 8]).is_err());
        assert!(ram.zero(LOW_RAM_END - 4, 8).is_err());
        let mut b = [0u8; 4];
        ram.read(LOW_RAM_END - 4, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        let mut big = [0xEEu8; 8];
        assert!(ram.read(LOW_RAM_END - 4, &mut big).is_err());
        assert_eq!(big, [0xEE; 8], "a failed read leaves the buffer alone");
        ram.zero(LOW_RAM_END - 4, 4).unwrap();
        ram.read(LOW_RAM_END - 4, &mut b).unwrap();
        assert_eq!(b, [0; 4]);
    }
}
