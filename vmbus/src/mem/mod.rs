//! Shared-memory access for rings: the one audited module of this crate allowed to use `unsafe`.
//!
//! A VMBus ring lives in memory that the peer (the other VM, or the host) may modify at any
//! moment. Ring code therefore never forms `&[u8]` / `&mut [u8]` over it; it goes through the
//! offset-based [`RingMemory`] trait. Implementations here access the control fields with
//! atomic `u32` operations and copy data bytes with copies that are atomic per byte in the
//! memory model (bulk `rep movsb` on x86-64, relaxed atomic words elsewhere and for short
//! copies); the soundness argument is in the private `copy` submodule, the only place with
//! `unsafe` blocks besides the constructors and `Send`/`Sync` impls below. Memory ordering
//! between the peers comes from the acquire/release accesses to the ring indices, not from the
//! data copies.
//!
//! Offsets are validated by the ring code before they reach an implementation; an
//! out-of-range offset here is a programmer error and panics. A ring packet costs one range
//! check per copy: [`RingMemory::read_wrapped`] and [`RingMemory::write_wrapped`] copy a whole
//! (possibly wrapping, for writes gathered from several slices) span of the data area at once.
//!
//! Implementations:
//! - [`ContiguousMemory`]: one virtually contiguous mapping (a guest's own ring pages);
//! - [`PagedMemory`] (`alloc`): a list of 4 KiB page pointers, e.g. a host's view of guest RAM
//!   where each ring page was found by PFN;
//! - [`AlignedRingBuffer`] (`alloc`): owned, zeroed, page-aligned heap memory, `Send + Sync`,
//!   for in-process rings and tests.
#![allow(unsafe_code)]

mod copy;
#[cfg(feature = "alloc")]
mod owned;
#[cfg(all(test, feature = "alloc"))]
mod tests;

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, Ordering};

use copy::Stretches;
#[cfg(feature = "alloc")]
pub use owned::{AlignedRingBuffer, PagedMemory};

/// Size of a Hyper-V page; ring control pages and GPADL pages are this size.
pub const PAGE_SIZE: usize = 4096;

/// A circular span of a ring memory: `size` bytes from offset `start`, where the byte after
/// the last one is the first one again (a ring's data area).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircularRegion {
    /// Offset of the region's first byte in the memory.
    pub start: usize,
    /// Size in bytes.
    pub size: usize,
}

impl CircularRegion {
    /// The one range check of a wrapped access: panics unless the region lies within
    /// `mem_len`, `pos < size` and `len <= size`. Returns the memory offset of byte `pos` and
    /// how many of the `len` bytes lie before the region's end (the rest start at `start`).
    #[inline]
    #[track_caller]
    fn split(self, pos: usize, len: usize, mem_len: usize) -> (usize, usize) {
        let fits = self
            .start
            .checked_add(self.size)
            .is_some_and(|end| end <= mem_len);
        assert!(
            fits && pos < self.size && len <= self.size,
            "ring memory access out of range: {len:#x} bytes at {pos:#x} of {self:x?} in {mem_len:#x}"
        );
        (self.start + pos, len.min(self.size - pos))
    }
}

/// Byte-addressed access to the memory of one ring (control page followed by the data area).
///
/// Every method takes an offset from the start of the ring memory. Callers (the ring code)
/// guarantee `off + size <= len()` and 4-byte alignment for the `u32` accessors; an
/// implementation may panic when that is violated. Peer-controlled values never reach these
/// methods unvalidated.
///
/// Implementors provide the first six methods; the wrapped copies have default
/// implementations in terms of [`read_bytes`](Self::read_bytes) and
/// [`write_bytes`](Self::write_bytes). A wrapper around another `RingMemory` should forward
/// them too, so that the inner memory's single-check versions are used.
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

    /// Copies `dst.len()` bytes of `region`, from `pos` bytes into it and wrapping from its end
    /// to its start, into `dst` (a snapshot; the peer may be writing).
    ///
    /// # Panics
    /// Unless `region` lies within the memory, `pos < region.size` and
    /// `dst.len() <= region.size`.
    #[inline]
    fn read_wrapped(&self, region: CircularRegion, pos: usize, dst: &mut [u8]) {
        let (off, first) = region.split(pos, dst.len(), self.len());
        let (a, b) = dst.split_at_mut(first);
        self.read_bytes(off, a);
        if !b.is_empty() {
            self.read_bytes(region.start, b);
        }
    }

    /// Writes the concatenation of `parts` into `region` from `pos` bytes into it, wrapping
    /// from its end to its start (a gather write).
    ///
    /// # Panics
    /// Unless `region` lies within the memory, `pos < region.size` and the parts hold at most
    /// `region.size` bytes together.
    #[inline]
    fn write_wrapped(&self, region: CircularRegion, pos: usize, parts: &[&[u8]]) {
        gather_wrapped(region, pos, parts, self.len(), |off, bytes| {
            self.write_bytes(off, bytes)
        })
    }
}

/// Checks a gather write once, then hands each contiguous piece to `put(offset, bytes)`.
#[inline]
#[track_caller]
fn gather_wrapped(
    region: CircularRegion,
    pos: usize,
    parts: &[&[u8]],
    mem_len: usize,
    mut put: impl FnMut(usize, &[u8]),
) {
    let total = parts.iter().fold(0usize, |n, p| n.saturating_add(p.len()));
    region.split(pos, total, mem_len);
    let mut at = pos;
    for part in parts {
        let mut part: &[u8] = part;
        // At most two pieces per part, as all parts together fit the region once.
        while !part.is_empty() {
            let (now, rest) = part.split_at(part.len().min(region.size - at));
            put(region.start + at, now);
            at += now.len();
            if at == region.size {
                at = 0;
            }
            part = rest;
        }
    }
}

macro_rules! forward_ring_memory {
    () => {
        #[inline]
        fn len(&self) -> usize {
            (**self).len()
        }
        #[inline]
        fn load_u32(&self, off: usize, order: Ordering) -> u32 {
            (**self).load_u32(off, order)
        }
        #[inline]
        fn store_u32(&self, off: usize, value: u32, order: Ordering) {
            (**self).store_u32(off, value, order)
        }
        #[inline]
        fn read_bytes(&self, off: usize, dst: &mut [u8]) {
            (**self).read_bytes(off, dst)
        }
        #[inline]
        fn write_bytes(&self, off: usize, src: &[u8]) {
            (**self).write_bytes(off, src)
        }
        #[inline]
        fn read_wrapped(&self, region: CircularRegion, pos: usize, dst: &mut [u8]) {
            (**self).read_wrapped(region, pos, dst)
        }
        #[inline]
        fn write_wrapped(&self, region: CircularRegion, pos: usize, parts: &[&[u8]]) {
            (**self).write_wrapped(region, pos, parts)
        }
    };
}

impl<T: RingMemory + ?Sized> RingMemory for &T {
    forward_ring_memory!();
}

#[cfg(feature = "alloc")]
impl<T: RingMemory + ?Sized> RingMemory for alloc::sync::Arc<T> {
    forward_ring_memory!();
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

/// Implements [`RingMemory`] for a type implementing the private `Stretches` walk: one range
/// check per call, then copies per contiguous stretch.
macro_rules! ring_memory_via_stretches {
    ($ty:ty) => {
        impl RingMemory for $ty {
            #[inline]
            fn len(&self) -> usize {
                Stretches::total(self)
            }

            #[inline]
            fn load_u32(&self, off: usize, order: Ordering) -> u32 {
                check_u32(off, self.total());
                copy::load_u32_checked(self, off, order)
            }

            #[inline]
            fn store_u32(&self, off: usize, value: u32, order: Ordering) {
                check_u32(off, self.total());
                copy::store_u32_checked(self, off, value, order)
            }

            #[inline]
            fn read_bytes(&self, off: usize, dst: &mut [u8]) {
                check_range(off, dst.len(), self.total());
                copy::read_checked(self, off, dst)
            }

            #[inline]
            fn write_bytes(&self, off: usize, src: &[u8]) {
                check_range(off, src.len(), self.total());
                copy::write_checked(self, off, src)
            }

            #[inline]
            fn read_wrapped(&self, region: CircularRegion, pos: usize, dst: &mut [u8]) {
                let (off, first) = region.split(pos, dst.len(), self.total());
                let (a, b) = dst.split_at_mut(first);
                copy::read_checked(self, off, a);
                copy::read_checked(self, region.start, b);
            }

            #[inline]
            fn write_wrapped(&self, region: CircularRegion, pos: usize, parts: &[&[u8]]) {
                gather_wrapped(region, pos, parts, self.total(), |off, bytes| {
                    copy::write_checked(self, off, bytes)
                })
            }
        }
    };
}
#[cfg(feature = "alloc")]
use ring_memory_via_stretches;

/// A virtually contiguous shared mapping, e.g. a guest's own ring pages.
#[derive(Debug)]
pub struct ContiguousMemory<'a> {
    base: NonNull<u8>,
    len: usize,
    _memory: PhantomData<&'a [AtomicU8]>,
}

// SAFETY: the memory is only accessed through this module's copies, which are atomic in the
// memory model, so sharing the handle between threads cannot cause data races; `new`'s contract
// makes the mapping valid for 'a from any thread.
unsafe impl Send for ContiguousMemory<'_> {}
// SAFETY: as above; all methods take `&self` and perform only atomic(-equivalent) accesses.
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
    /// VM or device); this type accesses it only with per-byte-atomic copies and atomic `u32`s and
    /// never forms Rust references to its bytes, so that is allowed. Nothing else in this process
    /// may hold `&`/`&mut` references to it (other atomic or volatile accessors are fine).
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

// SAFETY: `new`'s contract makes base..base + len valid shared memory for the borrow; a stretch
// at off < len is base + off with at most len - off bytes, and base is 8-aligned.
unsafe impl Stretches for ContiguousMemory<'_> {
    #[inline]
    fn total(&self) -> usize {
        self.len
    }

    #[inline]
    fn stretch(&self, off: usize, max: usize) -> (*mut u8, usize) {
        assert!(off < self.len, "stretch offset out of range");
        (
            self.base.as_ptr().wrapping_add(off),
            max.min(self.len - off),
        )
    }
}

ring_memory_via_stretches!(ContiguousMemory<'_>);
