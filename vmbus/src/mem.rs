//! Shared-memory access for rings: the one audited module of this crate allowed to use `unsafe`.
//!
//! A VMBus ring lives in memory that the peer (the other VM, or the host) may modify at any
//! moment. Ring code therefore never forms `&[u8]` / `&mut [u8]` over it; it goes through the
//! offset-based [`RingMemory`] trait, whose implementations use only atomic accesses (plain
//! `mov`s on x86, but no data race in the Rust memory model and no torn reads of the 32-bit
//! control fields). Offsets are validated by the ring code before they reach an implementation;
//! an out-of-range offset here is a programmer error and panics.
//!
//! Implementations:
//! - [`ContiguousMemory`]: one virtually contiguous mapping (a guest's own ring pages);
//! - [`PagedMemory`] (`alloc`): a list of 4 KiB page pointers, e.g. a host's view of guest RAM
//!   where each ring page was found by PFN;
//! - [`AlignedRingBuffer`] (`alloc`): owned, zeroed, page-aligned heap memory, `Send + Sync`,
//!   for in-process rings and tests.
#![allow(unsafe_code)]

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Size of a Hyper-V page; ring control pages and GPADL pages are this size.
pub const PAGE_SIZE: usize = 4096;

/// Byte-addressed access to the memory of one ring (control page followed by the data area).
///
/// Every method takes an offset from the start of the ring memory. Callers (the ring code)
/// guarantee `off + size <= len()` and 4-byte alignment for the `u32` accessors; an
/// implementation may panic when that is violated. Peer-controlled values never reach these
/// methods unvalidated.
pub trait RingMemory {
    /// Total size in bytes.
    fn len(&self) -> usize;

    /// Whether the memory is zero-sized (never true for a usable ring).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Atomically loads the little-endian `u32` at `off` (4-byte aligned).
    fn load_u32(&self, off: usize, order: Ordering) -> u32;

    /// Atomically stores `value` at `off` (4-byte aligned).
    fn store_u32(&self, off: usize, value: u32, order: Ordering);

    /// Copies `dst.len()` bytes starting at `off` into `dst` (a snapshot; the peer may be writing).
    fn read_bytes(&self, off: usize, dst: &mut [u8]);

    /// Copies `src` into the memory starting at `off`.
    fn write_bytes(&self, off: usize, src: &[u8]);
}

impl<T: RingMemory + ?Sized> RingMemory for &T {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        (**self).load_u32(off, order)
    }
    fn store_u32(&self, off: usize, value: u32, order: Ordering) {
        (**self).store_u32(off, value, order)
    }
    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        (**self).read_bytes(off, dst)
    }
    fn write_bytes(&self, off: usize, src: &[u8]) {
        (**self).write_bytes(off, src)
    }
}

#[cfg(feature = "alloc")]
impl<T: RingMemory + ?Sized> RingMemory for alloc::sync::Arc<T> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        (**self).load_u32(off, order)
    }
    fn store_u32(&self, off: usize, value: u32, order: Ordering) {
        (**self).store_u32(off, value, order)
    }
    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        (**self).read_bytes(off, dst)
    }
    fn write_bytes(&self, off: usize, src: &[u8]) {
        (**self).write_bytes(off, src)
    }
}

/// Panics unless `[off, off + size)` lies within `len` (programmer error: ring code validates).
#[inline]
#[track_caller]
fn check_range(off: usize, size: usize, len: usize) {
    let in_range = off.checked_add(size).is_some_and(|end| end <= len);
    assert!(
        in_range,
        "ring memory access out of range: {off:#x}+{size:#x} > {len:#x}"
    );
}

#[inline]
#[track_caller]
fn check_u32(off: usize, len: usize) {
    assert!(off.is_multiple_of(4), "unaligned u32 access at {off:#x}");
    check_range(off, 4, len);
}

// ---- The raw primitives. Everything unsafe in this crate funnels through these four. ----

/// # Safety
/// `p` must be 4-byte aligned and valid for atomic reads and writes of 4 bytes for `'a`.
#[inline]
unsafe fn atomic_u32<'a>(p: *mut u8) -> &'a AtomicU32 {
    // SAFETY: alignment and validity for 'a are the caller's contract; AtomicU32 has the same
    // layout as u32 and permits concurrent modification by other atomic accesses.
    unsafe { AtomicU32::from_ptr(p.cast::<u32>()) }
}

/// Copies `dst.len()` bytes from `src` using relaxed atomic loads (8 bytes at a time where aligned).
///
/// # Safety
/// `src..src + dst.len()` must be valid for reads for the duration of the call; other parties
/// may modify it concurrently only through atomic (or hardware-atomic, for another VM) accesses.
#[inline]
unsafe fn copy_from_shared(src: *const u8, dst: &mut [u8]) {
    let len = dst.len();
    let mut i = 0;
    while i < len && !(src as usize + i).is_multiple_of(8) {
        // SAFETY: i < len, so src + i is within the readable range; AtomicU8 needs no alignment.
        dst[i] = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
        i += 1;
    }
    while len - i >= 8 {
        // SAFETY: src + i is 8-aligned (loop above) and i + 8 <= len, so the 8 bytes are readable.
        let word = unsafe { AtomicU64::from_ptr(src.add(i).cast::<u64>().cast_mut()) }
            .load(Ordering::Relaxed);
        dst[i..i + 8].copy_from_slice(&word.to_ne_bytes());
        i += 8;
    }
    while i < len {
        // SAFETY: i < len, within the readable range.
        dst[i] = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
        i += 1;
    }
}

/// Copies `src` to `dst` using relaxed atomic stores (8 bytes at a time where aligned).
///
/// # Safety
/// `dst..dst + src.len()` must be valid for writes for the duration of the call; other parties
/// may access it concurrently only through atomic (or hardware-atomic) accesses.
#[inline]
unsafe fn copy_to_shared(dst: *mut u8, src: &[u8]) {
    let len = src.len();
    let mut i = 0;
    while i < len && !(dst as usize + i).is_multiple_of(8) {
        // SAFETY: i < len, so dst + i is within the writable range.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(src[i], Ordering::Relaxed);
        i += 1;
    }
    while len - i >= 8 {
        let mut word = [0u8; 8];
        word.copy_from_slice(&src[i..i + 8]);
        // SAFETY: dst + i is 8-aligned and i + 8 <= len, so the 8 bytes are writable.
        unsafe { AtomicU64::from_ptr(dst.add(i).cast::<u64>()) }
            .store(u64::from_ne_bytes(word), Ordering::Relaxed);
        i += 8;
    }
    while i < len {
        // SAFETY: i < len, within the writable range.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(src[i], Ordering::Relaxed);
        i += 1;
    }
}

/// A virtually contiguous shared mapping, e.g. a guest's own ring pages.
#[derive(Debug)]
pub struct ContiguousMemory<'a> {
    base: NonNull<u8>,
    len: usize,
    _memory: PhantomData<&'a [AtomicU8]>,
}

// SAFETY: the memory is only accessed through atomics, so sharing the handle between threads
// cannot cause data races; `new`'s contract makes the mapping valid for 'a from any thread.
unsafe impl Send for ContiguousMemory<'_> {}
// SAFETY: as above; all methods take `&self` and perform only atomic accesses.
unsafe impl Sync for ContiguousMemory<'_> {}

impl<'a> ContiguousMemory<'a> {
    /// Wraps `len` bytes at `base`.
    ///
    /// # Panics
    /// If `base` is not 8-byte aligned.
    ///
    /// # Safety
    /// For `'a`, `base..base + len` must be mapped, readable and writable, and must not be
    /// deallocated or remapped. It may be modified concurrently by another party (another thread,
    /// VM or device); this type accesses it only atomically and never forms Rust references to
    /// its bytes, so that is allowed. Nothing else in this process may hold `&`/`&mut` references
    /// to it (other atomic or volatile accessors are fine).
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        assert!(
            (base.as_ptr() as usize).is_multiple_of(8),
            "ring memory must be 8-byte aligned"
        );
        Self {
            base,
            len,
            _memory: PhantomData,
        }
    }
}

impl RingMemory for ContiguousMemory<'_> {
    fn len(&self) -> usize {
        self.len
    }

    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        check_u32(off, self.len);
        // SAFETY: off + 4 <= len and off is 4-aligned on an 8-aligned base; valid per `new`.
        unsafe { atomic_u32(self.base.as_ptr().add(off)) }.load(order)
    }

    fn store_u32(&self, off: usize, value: u32, order: Ordering) {
        check_u32(off, self.len);
        // SAFETY: as in `load_u32`; the mapping is writable per `new`.
        unsafe { atomic_u32(self.base.as_ptr().add(off)) }.store(value, order)
    }

    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        check_range(off, dst.len(), self.len);
        // SAFETY: the range is within the mapping, which is readable per `new`.
        unsafe { copy_from_shared(self.base.as_ptr().add(off), dst) }
    }

    fn write_bytes(&self, off: usize, src: &[u8]) {
        check_range(off, src.len(), self.len);
        // SAFETY: the range is within the mapping, which is writable per `new`.
        unsafe { copy_to_shared(self.base.as_ptr().add(off), src) }
    }
}

#[cfg(feature = "alloc")]
pub use owned::{AlignedRingBuffer, PagedMemory};

#[cfg(feature = "alloc")]
mod owned {
    use super::*;
    use alloc::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
    use alloc::boxed::Box;

    /// Ring memory scattered over 4 KiB pages, e.g. a host's mapping of guest pages by PFN.
    #[derive(Debug)]
    pub struct PagedMemory<'a> {
        pages: Box<[NonNull<u8>]>,
        _memory: PhantomData<&'a [AtomicU8]>,
    }

    // SAFETY: pages are only accessed atomically; `new`'s contract makes them valid for 'a from
    // any thread.
    unsafe impl Send for PagedMemory<'_> {}
    // SAFETY: as above; all methods take `&self` and perform only atomic accesses.
    unsafe impl Sync for PagedMemory<'_> {}

    impl<'a> PagedMemory<'a> {
        /// Wraps pages given by their base addresses, in ring order.
        ///
        /// # Panics
        /// If a page base is not 8-byte aligned.
        ///
        /// # Safety
        /// For `'a`, each pointer must address [`PAGE_SIZE`] mapped, readable and writable bytes
        /// that are not deallocated or remapped. The pages may be modified concurrently by
        /// another party (the guest); this type accesses them only atomically and never forms
        /// Rust references to their bytes. Nothing in this process may hold `&`/`&mut`
        /// references to them. Pages may repeat (a page mapped twice is still sound).
        pub unsafe fn new(pages: impl Into<Box<[NonNull<u8>]>>) -> Self {
            let pages = pages.into();
            for page in pages.iter() {
                assert!(
                    (page.as_ptr() as usize).is_multiple_of(8),
                    "page base must be 8-byte aligned"
                );
            }
            Self {
                pages,
                _memory: PhantomData,
            }
        }

        /// Pointer to byte `off`, which the caller has range-checked.
        fn byte(&self, off: usize) -> *mut u8 {
            let page = self.pages[off / PAGE_SIZE];
            // SAFETY: off % PAGE_SIZE < PAGE_SIZE stays within the page's allocation.
            unsafe { page.as_ptr().add(off % PAGE_SIZE) }
        }
    }

    impl RingMemory for PagedMemory<'_> {
        fn len(&self) -> usize {
            self.pages.len() * PAGE_SIZE
        }

        fn load_u32(&self, off: usize, order: Ordering) -> u32 {
            check_u32(off, self.len());
            // SAFETY: 4-aligned offsets never cross a page; the page is 8-aligned and valid per
            // `new`.
            unsafe { atomic_u32(self.byte(off)) }.load(order)
        }

        fn store_u32(&self, off: usize, value: u32, order: Ordering) {
            check_u32(off, self.len());
            // SAFETY: as in `load_u32`; pages are writable per `new`.
            unsafe { atomic_u32(self.byte(off)) }.store(value, order)
        }

        fn read_bytes(&self, mut off: usize, mut dst: &mut [u8]) {
            check_range(off, dst.len(), self.len());
            while !dst.is_empty() {
                let n = dst.len().min(PAGE_SIZE - off % PAGE_SIZE);
                let (now, rest) = dst.split_at_mut(n);
                // SAFETY: the n bytes lie within one page (n <= bytes left in it), valid per `new`.
                unsafe { copy_from_shared(self.byte(off), now) };
                dst = rest;
                off += n;
            }
        }

        fn write_bytes(&self, mut off: usize, mut src: &[u8]) {
            check_range(off, src.len(), self.len());
            while !src.is_empty() {
                let n = src.len().min(PAGE_SIZE - off % PAGE_SIZE);
                let (now, rest) = src.split_at(n);
                // SAFETY: the n bytes lie within one writable page, valid per `new`.
                unsafe { copy_to_shared(self.byte(off), now) };
                src = rest;
                off += n;
            }
        }
    }

    /// Owned, zero-initialised, page-aligned memory for a ring shared between threads.
    #[derive(Debug)]
    pub struct AlignedRingBuffer {
        base: NonNull<u8>,
        len: usize,
    }

    // SAFETY: the buffer is owned and only accessed through atomics.
    unsafe impl Send for AlignedRingBuffer {}
    // SAFETY: all access through `&self` is atomic, so concurrent use cannot race.
    unsafe impl Sync for AlignedRingBuffer {}

    impl AlignedRingBuffer {
        /// Allocates `len` zeroed bytes aligned to [`PAGE_SIZE`].
        ///
        /// # Panics
        /// If `len` is 0 or not a multiple of 8.
        pub fn new(len: usize) -> Self {
            assert!(
                len > 0 && len.is_multiple_of(8),
                "ring memory length must be a non-zero multiple of 8"
            );
            let layout = Self::layout(len);
            // SAFETY: the layout has a non-zero size.
            let ptr = unsafe { alloc_zeroed(layout) };
            let Some(base) = NonNull::new(ptr) else {
                handle_alloc_error(layout)
            };
            Self { base, len }
        }

        /// Memory for a ring with a data area of `data_size` bytes after the control page.
        pub fn for_ring(data_size: usize) -> Self {
            Self::new(PAGE_SIZE + data_size)
        }

        fn layout(len: usize) -> Layout {
            match Layout::from_size_align(len, PAGE_SIZE) {
                Ok(layout) => layout,
                Err(_) => panic!("ring memory length {len:#x} too large"),
            }
        }

        pub(super) fn view(&self) -> ContiguousMemory<'_> {
            // SAFETY: the allocation is owned by self, live for the borrow, 4096-aligned and
            // only ever accessed atomically.
            unsafe { ContiguousMemory::new(self.base, self.len) }
        }
    }

    impl Drop for AlignedRingBuffer {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with exactly this layout and not yet freed.
            unsafe { dealloc(self.base.as_ptr(), Self::layout(self.len)) }
        }
    }

    impl RingMemory for AlignedRingBuffer {
        fn len(&self) -> usize {
            self.len
        }
        fn load_u32(&self, off: usize, order: Ordering) -> u32 {
            self.view().load_u32(off, order)
        }
        fn store_u32(&self, off: usize, value: u32, order: Ordering) {
            self.view().store_u32(off, value, order)
        }
        fn read_bytes(&self, off: usize, dst: &mut [u8]) {
            self.view().read_bytes(off, dst)
        }
        fn write_bytes(&self, off: usize, src: &[u8]) {
            self.view().write_bytes(off, src)
        }
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn aligned_buffer_roundtrip_at_every_alignment() {
        let mem = AlignedRingBuffer::new(256);
        for off in 0..32 {
            for len in 0..40 {
                let src: Vec<u8> = (0..len).map(|i| (off * 7 + i * 13 + 1) as u8).collect();
                mem.write_bytes(off, &src);
                let mut dst = alloc::vec![0u8; len];
                mem.read_bytes(off, &mut dst);
                assert_eq!(src, dst, "off {off} len {len}");
            }
        }
    }

    #[test]
    fn u32_fields_are_little_endian_in_bytes() {
        let mem = AlignedRingBuffer::new(64);
        mem.store_u32(4, 0x1122_3344, Ordering::Relaxed);
        let mut b = [0u8; 4];
        mem.read_bytes(4, &mut b);
        assert_eq!(u32::from_ne_bytes(b), 0x1122_3344);
        assert_eq!(mem.load_u32(4, Ordering::Relaxed), 0x1122_3344);
        assert_eq!(mem.load_u32(0, Ordering::Relaxed), 0);
    }

    #[test]
    fn paged_memory_translates_through_scattered_pages() {
        // Three pages in reverse physical order: ring offset 0 lives in the last page.
        let backing = AlignedRingBuffer::new(3 * PAGE_SIZE);
        let base = backing.view().base;
        let pages: Vec<NonNull<u8>> = (0..3)
            .rev()
            .map(|i| NonNull::new(base.as_ptr().wrapping_add(i * PAGE_SIZE)).unwrap())
            .collect();
        // SAFETY: the pages are live, writable and only accessed atomically while `paged` lives.
        let paged = unsafe { PagedMemory::new(pages) };
        assert_eq!(paged.len(), 3 * PAGE_SIZE);
        let src: Vec<u8> = (0..PAGE_SIZE + 100).map(|i| i as u8).collect();
        paged.write_bytes(PAGE_SIZE - 50, &src);
        let mut dst = alloc::vec![0u8; src.len()];
        paged.read_bytes(PAGE_SIZE - 50, &mut dst);
        assert_eq!(src, dst);
        // Ring byte PAGE_SIZE - 50 is physical byte 2 * PAGE_SIZE + PAGE_SIZE - 50.
        let mut b = [0u8; 1];
        backing.read_bytes(3 * PAGE_SIZE - 50, &mut b);
        assert_eq!(b[0], src[0]);
        paged.store_u32(PAGE_SIZE, 7, Ordering::Release);
        assert_eq!(backing.load_u32(PAGE_SIZE, Ordering::Acquire), 7);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn out_of_range_is_a_programmer_error() {
        let mem = AlignedRingBuffer::new(64);
        let mut b = [0u8; 8];
        mem.read_bytes(60, &mut b);
    }
}
