//! Guest physical memory as every device model sees it: vm-memory's [`GuestMemoryMmap`] (what
//! hypervisor-lite's RAM is made of, what virtio-queue walks, what tests build with
//! `GuestMemoryMmap::from_ranges`). This module owns the access rules device models add on top of it:
//! translating a guest page number plus offset to an address ([`gpa_of_pfn`]) without overflow, and
//! whole-range checks — a range that is not entirely guest RAM fails as a whole, before any byte is
//! read or written (vm-memory's own copies may stop part-way at the end of a region) — with one error
//! type ([`GuestMemoryError`]) naming the range.

#![forbid(unsafe_code)]

pub use vm_memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};

/// Size of a guest page as VMBus counts them.
pub use vmbus::gpadl::PAGE_SIZE;

/// A guest memory access that would leave guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest range {gpa:#x}+{len:#x} is not guest RAM")]
pub struct GuestMemoryError {
    /// First guest physical address of the access.
    pub gpa: u64,
    /// Length of the access.
    pub len: u64,
}

/// `pfn * 4096 + offset`, or `None` on overflow or an offset outside the page.
pub fn gpa_of_pfn(pfn: u64, offset: u64) -> Option<u64> {
    if offset >= PAGE_SIZE {
        return None;
    }
    pfn.checked_mul(PAGE_SIZE)?.checked_add(offset)
}

/// Whether `[gpa, gpa + len)` is entirely guest RAM (overflow-safe; it may run across regions that
/// touch). An empty range is RAM.
pub fn contains(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> bool {
    check(mem, gpa, len).is_ok()
}

/// `Ok` if `[gpa, gpa + len)` is entirely guest RAM, else the error naming it.
pub fn check(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> Result<(), GuestMemoryError> {
    let err = GuestMemoryError { gpa, len };
    if len == 0 {
        return Ok(());
    }
    let (Some(_), Ok(count)) = (gpa.checked_add(len), usize::try_from(len)) else {
        return Err(err);
    };
    if GuestMemoryBackend::check_range(mem, GuestAddress(gpa), count) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Copies guest memory at `gpa` into `buf`; fails without touching `buf` unless all of it is RAM.
pub fn read(mem: &GuestMemoryMmap, gpa: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
    let err = GuestMemoryError {
        gpa,
        len: buf.len() as u64,
    };
    check(mem, gpa, err.len)?;
    mem.read_slice(buf, GuestAddress(gpa)).map_err(|_| err)
}

/// Copies `buf` into guest memory at `gpa`; fails without writing anything unless all of the range
/// is RAM.
pub fn write(mem: &GuestMemoryMmap, gpa: u64, buf: &[u8]) -> Result<(), GuestMemoryError> {
    let err = GuestMemoryError {
        gpa,
        len: buf.len() as u64,
    };
    check(mem, gpa, err.len)?;
    mem.write_slice(buf, GuestAddress(gpa)).map_err(|_| err)
}

/// The host views of `[gpa, gpa + len)`, one per region it crosses, in order — after checking that
/// the whole range is RAM. `f` sees each slice; the first error it returns stops the walk.
pub fn for_each_slice<'m, E>(
    mem: &'m GuestMemoryMmap,
    gpa: u64,
    len: u64,
    f: impl FnMut(VolatileSlice<'m>) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<GuestMemoryError>,
{
    check(mem, gpa, len)?;
    for_each_slice_unchecked(mem, gpa, len, f)
}

/// Like [`for_each_slice`] but without the check first: `f` may see the slices before the part of
/// the range that is not RAM (the caller undoes what it did with them on error).
pub(crate) fn for_each_slice_unchecked<'m, E>(
    mem: &'m GuestMemoryMmap,
    gpa: u64,
    len: u64,
    mut f: impl FnMut(VolatileSlice<'m>) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<GuestMemoryError>,
{
    let err = GuestMemoryError { gpa, len };
    if len == 0 {
        return Ok(());
    }
    let (Some(_), Ok(count)) = (gpa.checked_add(len), usize::try_from(len)) else {
        return Err(err.into());
    };
    for slice in GuestMemoryBackend::get_slices(mem, GuestAddress(gpa), count) {
        f(slice.map_err(|_| err)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two regions that touch (so ranges may run across them), then a hole, then a third.
    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 2 * PAGE_SIZE as usize),
            (GuestAddress(2 * PAGE_SIZE), 2 * PAGE_SIZE as usize),
            (GuestAddress(8 * PAGE_SIZE), PAGE_SIZE as usize),
        ])
        .unwrap()
    }

    #[test]
    fn bounds_are_whole_range_and_overflow_safe() {
        let m = mem();
        assert!(contains(&m, 0, 4 * PAGE_SIZE));
        assert!(
            contains(&m, PAGE_SIZE + 7, 2 * PAGE_SIZE),
            "across touching regions"
        );
        assert!(!contains(&m, 3 * PAGE_SIZE, PAGE_SIZE + 1), "into the hole");
        assert!(!contains(&m, 4 * PAGE_SIZE, 1));
        assert!(contains(&m, 8 * PAGE_SIZE, PAGE_SIZE));
        assert!(!contains(&m, 9 * PAGE_SIZE - 7, 8));
        assert!(!contains(&m, u64::MAX, 2));
        assert!(!contains(&m, 1, u64::MAX));
        assert!(contains(&m, u64::MAX, 0));
    }

    #[test]
    fn copies_cross_regions_and_fail_without_partial_effect() {
        let m = mem();
        let end = 4 * PAGE_SIZE;
        write(&m, 2 * PAGE_SIZE - 4, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let mut b = [0u8; 8];
        read(&m, 2 * PAGE_SIZE - 4, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8]);
        write(&m, end - 8, &[1; 8]).unwrap();
        // vm-memory alone would write the first 8 bytes and report a short write.
        assert_eq!(
            write(&m, end - 8, &[9; 16]),
            Err(GuestMemoryError {
                gpa: end - 8,
                len: 16
            })
        );
        read(&m, end - 8, &mut b).unwrap();
        assert_eq!(b, [1; 8], "nothing written");
        let mut big = [0xEE; 16];
        assert!(read(&m, end - 8, &mut big).is_err());
        assert_eq!(big, [0xEE; 16], "buffer untouched");
        assert!(write(&m, u64::MAX - 3, &b).is_err());
    }

    #[test]
    fn slices_follow_regions() {
        let m = mem();
        let mut lens = Vec::new();
        for_each_slice(&m, PAGE_SIZE, 2 * PAGE_SIZE + 5, |s| {
            lens.push(s.len());
            Ok::<(), GuestMemoryError>(())
        })
        .unwrap();
        assert_eq!(lens, [PAGE_SIZE as usize, PAGE_SIZE as usize + 5]);
        let mut called = false;
        let r = for_each_slice(&m, 3 * PAGE_SIZE, 2 * PAGE_SIZE, |_| {
            called = true;
            Ok::<(), GuestMemoryError>(())
        });
        assert!(r.is_err());
        assert!(!called, "checked before the first slice");
    }

    #[test]
    fn pfn_translation_is_overflow_checked() {
        assert_eq!(gpa_of_pfn(3, 5), Some(3 * 4096 + 5));
        assert_eq!(gpa_of_pfn(1, 4096), None);
        assert_eq!(gpa_of_pfn(u64::MAX / 4096 + 1, 0), None);
        assert_eq!(gpa_of_pfn(u64::MAX / 4096, 4095), Some(u64::MAX));
    }
}
