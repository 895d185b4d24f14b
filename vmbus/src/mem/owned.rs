//! Ring memories that need `alloc`: [`PagedMemory`] over scattered pages and the owned
//! [`AlignedRingBuffer`].

use super::copy::Stretches;
use super::{check_range, check_u32, copy, gather_wrapped, CircularRegion};
use super::{ring_memory_via_stretches, RingMemory, PAGE_SIZE};
use alloc::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use alloc::boxed::Box;
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, Ordering};

/// Ring memory scattered over 4 KiB pages, e.g. a host's mapping of guest pages by PFN.
#[derive(Debug)]
pub struct PagedMemory<'a> {
    pages: Box<[NonNull<u8>]>,
    _memory: PhantomData<&'a [AtomicU8]>,
}

// SAFETY: pages are only accessed through the module's atomic(-equivalent) copies; `new`'s
// contract makes them valid for 'a from any thread.
unsafe impl Send for PagedMemory<'_> {}
// SAFETY: as above; all methods take `&self` and perform only atomic(-equivalent) accesses.
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
    /// another party (the guest); this type accesses them only with per-byte-atomic copies and
    /// atomic `u32`s and never forms Rust references to their bytes. Nothing in this process
    /// may hold `&`/`&mut` references to them. Pages may repeat (a page mapped twice is still
    /// sound).
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
}

// SAFETY: byte `off` is byte `off % PAGE_SIZE` of page `off / PAGE_SIZE` (the indexing panics
// for off >= total); a stretch never leaves its page, which `new`'s contract makes valid shared
// memory for the borrow; pages are 8-aligned, so 4-aligned offsets give 4-aligned pointers.
unsafe impl Stretches for PagedMemory<'_> {
    #[inline]
    fn total(&self) -> usize {
        self.pages.len() * PAGE_SIZE
    }

    #[inline]
    fn stretch(&self, off: usize, max: usize) -> (*mut u8, usize) {
        let page = self.pages[off / PAGE_SIZE];
        let in_page = off % PAGE_SIZE;
        (
            page.as_ptr().wrapping_add(in_page),
            max.min(PAGE_SIZE - in_page),
        )
    }
}

ring_memory_via_stretches!(PagedMemory<'_>);

/// Owned, zero-initialised, page-aligned memory for a ring shared between threads.
#[derive(Debug)]
pub struct AlignedRingBuffer {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is owned and only accessed through the module's atomic(-equivalent) copies.
unsafe impl Send for AlignedRingBuffer {}
// SAFETY: all access through `&self` is atomic(-equivalent), so concurrent use cannot race.
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

    /// The buffer as a [`ContiguousMemory`](super::ContiguousMemory) borrowing it (tests compare the two).
    #[cfg(test)]
    pub(super) fn view(&self) -> super::ContiguousMemory<'_> {
        // SAFETY: the allocation is owned by self, live for the borrow, 4096-aligned and only
        // ever accessed through this module's atomic(-equivalent) copies.
        unsafe { super::ContiguousMemory::new(self.base, self.len) }
    }
}

impl Drop for AlignedRingBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout and not yet freed.
        unsafe { dealloc(self.base.as_ptr(), Self::layout(self.len)) }
    }
}

// SAFETY: base..base + len is our own live, page-aligned allocation, never referenced by Rust
// references (only accessed through this module's copies); a stretch at off < len is base + off
// with at most len - off bytes.
unsafe impl Stretches for AlignedRingBuffer {
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

ring_memory_via_stretches!(AlignedRingBuffer);
