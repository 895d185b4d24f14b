//! The raw copies between private buffers and shared ring memory, and the walk over a
//! memory's contiguous stretches that every [`RingMemory`](super::RingMemory) implementation
//! of this module shares. Everything unsafe in this crate funnels through this file.
//!
//! # How bytes are copied, and why that is sound
//!
//! The peer may write ring memory at any moment, also bytes we are copying (a hostile peer
//! does so on purpose; a correct one never does, because the ring protocol orders every data
//! byte access by the acquire/release accesses of `read_index`/`write_index`). Rust code may
//! therefore never hold a reference to those bytes, never access them non-atomically where a
//! race is possible, and must read every byte it validates exactly once (no double fetch).
//!
//! - **Bulk copies** (x86-64, `len >= BULK_MIN`): one `rep movsb` in inline assembly. The
//!   compiler treats the `asm!` block as opaque: it runs exactly once where it is written,
//!   cannot be elided, duplicated, split, or turned into a re-read of the source later (the
//!   double fetch a `ptr::copy_nonoverlapping` could in principle become after inlining and
//!   memcpy forwarding), and nothing is assumed about the bytes it produced. What the block
//!   does to memory is a sequence of single-byte loads from the source and single-byte stores
//!   to the destination, each single-copy atomic in hardware. An asm block must behave like
//!   some operations of the Rust abstract machine; here those are relaxed `AtomicU8` loads and
//!   stores, which are not data races even if another thread accesses the same bytes through
//!   atomics concurrently, and which impose no ordering, just like the word copies they
//!   replace. The protocol's ordering comes from the index fences: the writer's release store
//!   of `write_index` follows the asm block in program order (and the asm block is not
//!   `nomem`, so the compiler cannot move memory accesses across it); on the CPU, Intel's SDM
//!   (vol. 3, "fast-string operation") allows the stores *within* one string operation to be
//!   performed out of order and prescribes exactly our pattern for order-dependent data: write
//!   a separate variable (the index) after the string operation. AMD64 behaves the same. The
//!   direction flag is clear on entry to every `asm!` block (a guarantee of Rust's inline
//!   assembly on x86), so `rep movsb` copies forward; it changes no flags.
//! - **Short copies** (and every copy on other architectures or under Miri): relaxed
//!   `AtomicU64` loads/stores where the shared side is 8-byte aligned, `AtomicU8` at the
//!   edges. A `rep movsb` has a start-up cost of a few nanoseconds that dominates below
//!   `BULK_MIN` bytes (descriptors, trailers).
//!
//! Both kinds touch only `[ptr, ptr + len)` of the shared side and the caller's exclusive
//! buffer on the private side; any byte pattern is a valid `u8`, so whatever a hostile peer
//! wrote, the private copy holds initialised bytes and our process has no undefined
//! behaviour. That the copy may then be torn is the peer's problem: the ring validates only
//! its private copies.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Copies of at least this many bytes use the bulk copy; shorter ones atomic words.
pub(super) const BULK_MIN: usize = 256;

/// Copies `len` bytes forward from `src` to `dst` with one `rep movsb`.
///
/// # Safety
/// `src..src + len` must be valid for reads and `dst..dst + len` valid for writes for the
/// duration of the call, and they must not overlap. Either side may be memory another party
/// accesses concurrently through atomic (or another VM's hardware) accesses.
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[inline]
unsafe fn rep_movsb(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: the caller guarantees both ranges are valid and disjoint. The instruction reads
    // exactly [src, src + len) and writes exactly [dst, dst + len) (DF is clear on entry to an
    // asm block, so it copies forward), uses no stack and leaves the flags alone. Its effect is
    // that of relaxed per-byte atomic loads and stores (see the module docs), so it cannot race
    // in the Rust memory model, and the compiler cannot duplicate or elide it.
    unsafe {
        core::arch::asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags),
        );
    }
}

/// Copies `dst.len()` bytes from shared memory at `src` into `dst`.
///
/// # Safety
/// `src..src + dst.len()` must be valid for reads for the duration of the call; other parties
/// may modify it concurrently only through atomic (or another VM's hardware) accesses.
#[inline]
pub(super) unsafe fn copy_from_shared(src: *const u8, dst: &mut [u8]) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if dst.len() >= BULK_MIN {
        // SAFETY: the source range is readable (caller); `dst` is an exclusive buffer of
        // exactly that length, which cannot overlap memory nobody may reference.
        unsafe { rep_movsb(dst.as_mut_ptr(), src, dst.len()) };
        return;
    }
    let len = dst.len();
    let out = dst.as_mut_ptr();
    let mut i = 0;
    while i < len && !(src as usize + i).is_multiple_of(8) {
        // SAFETY: i < len: src + i is readable (caller) and out + i is inside `dst`.
        // AtomicU8 needs no alignment.
        unsafe { *out.add(i) = AtomicU8::from_ptr(src.add(i).cast_mut()).load(Ordering::Relaxed) };
        i += 1;
    }
    while len - i >= 8 {
        // SAFETY: src + i is 8-aligned (loop above) and i + 8 <= len, so these 8 shared bytes
        // are readable and the 8 bytes of `dst` at i exist; the private store is unaligned.
        unsafe {
            let word =
                AtomicU64::from_ptr(src.add(i).cast::<u64>().cast_mut()).load(Ordering::Relaxed);
            out.add(i).cast::<u64>().write_unaligned(word);
        }
        i += 8;
    }
    while i < len {
        // SAFETY: i < len, as in the first loop.
        unsafe { *out.add(i) = AtomicU8::from_ptr(src.add(i).cast_mut()).load(Ordering::Relaxed) };
        i += 1;
    }
}

/// Copies `src` into shared memory at `dst`.
///
/// # Safety
/// `dst..dst + src.len()` must be valid for writes for the duration of the call; other parties
/// may access it concurrently only through atomic (or another VM's hardware) accesses.
#[inline]
pub(super) unsafe fn copy_to_shared(dst: *mut u8, src: &[u8]) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if src.len() >= BULK_MIN {
        // SAFETY: the destination range is writable (caller); `src` is a buffer of exactly
        // that length that cannot overlap memory nobody may reference.
        unsafe { rep_movsb(dst, src.as_ptr(), src.len()) };
        return;
    }
    let len = src.len();
    let from = src.as_ptr();
    let mut i = 0;
    while i < len && !(dst as usize + i).is_multiple_of(8) {
        // SAFETY: i < len: dst + i is writable (caller) and from + i is inside `src`.
        unsafe { AtomicU8::from_ptr(dst.add(i)).store(*from.add(i), Ordering::Relaxed) };
        i += 1;
    }
    while len - i >= 8 {
        // SAFETY: dst + i is 8-aligned and i + 8 <= len: the 8 shared bytes are writable and
        // the 8 bytes of `src` at i exist (read unaligned).
        unsafe {
            let word = from.add(i).cast::<u64>().read_unaligned();
            AtomicU64::from_ptr(dst.add(i).cast::<u64>()).store(word, Ordering::Relaxed);
        }
        i += 8;
    }
    while i < len {
        // SAFETY: i < len, as in the first loop.
        unsafe { AtomicU8::from_ptr(dst.add(i)).store(*from.add(i), Ordering::Relaxed) };
        i += 1;
    }
}

/// The atomic `u32` at `p`.
///
/// # Safety
/// `p` must be 4-byte aligned and valid for atomic reads and writes of 4 bytes for `'a`.
#[inline]
pub(super) unsafe fn atomic_u32<'a>(p: *mut u8) -> &'a AtomicU32 {
    // SAFETY: alignment and validity for 'a are the caller's contract; AtomicU32 has the same
    // layout as u32 and permits concurrent modification by other atomic accesses.
    unsafe { AtomicU32::from_ptr(p.cast::<u32>()) }
}

/// A memory made of contiguous stretches of shared bytes.
///
/// # Safety
/// Implementors guarantee, for as long as `self` is borrowed: for every `off < len()`,
/// `stretch(off, max)` returns `(p, n)` with `1 <= n <= max` (for `max >= 1`) where
/// `p..p + n` is the memory of bytes `off..off + n`, mapped, readable and writable, accessed by
/// others only atomically (or by another VM), never covered by Rust references; and every
/// stretch at a 4-aligned `off` is 4-aligned.
pub(super) unsafe trait Stretches {
    /// Total size in bytes.
    fn total(&self) -> usize;
    /// Pointer to byte `off < total()` and the number of contiguous bytes from there, at most
    /// `max`.
    fn stretch(&self, off: usize, max: usize) -> (*mut u8, usize);
}

/// Copies `dst.len()` bytes from `off`, which the caller has range-checked.
#[inline]
pub(super) fn read_checked<S: Stretches + ?Sized>(mem: &S, mut off: usize, mut dst: &mut [u8]) {
    while !dst.is_empty() {
        let (p, n) = mem.stretch(off, dst.len());
        let (now, rest) = dst.split_at_mut(n);
        // SAFETY: `Stretches` makes p..p + n shared memory valid for reads while `mem` is
        // borrowed; n <= dst.len() by its contract (and split_at_mut checked it).
        unsafe { copy_from_shared(p, now) };
        dst = rest;
        off += n;
    }
}

/// Copies `src` to `off`, which the caller has range-checked.
#[inline]
pub(super) fn write_checked<S: Stretches + ?Sized>(mem: &S, mut off: usize, mut src: &[u8]) {
    while !src.is_empty() {
        let (p, n) = mem.stretch(off, src.len());
        let (now, rest) = src.split_at(n);
        // SAFETY: `Stretches` makes p..p + n shared memory valid for writes while `mem` is
        // borrowed; n <= src.len() (checked by split_at).
        unsafe { copy_to_shared(p, now) };
        src = rest;
        off += n;
    }
}

/// Loads the `u32` at `off`, which the caller has checked (4-aligned, in range).
#[inline]
pub(super) fn load_u32_checked<S: Stretches + ?Sized>(mem: &S, off: usize, order: Ordering) -> u32 {
    let (p, n) = mem.stretch(off, 4);
    assert!(n == 4, "u32 field split across stretches");
    // SAFETY: p..p + 4 is valid shared memory, 4-aligned as off is (`Stretches` contract).
    unsafe { atomic_u32(p) }.load(order)
}

/// Stores the `u32` at `off`, which the caller has checked (4-aligned, in range).
#[inline]
pub(super) fn store_u32_checked<S: Stretches + ?Sized>(
    mem: &S,
    off: usize,
    value: u32,
    order: Ordering,
) {
    let (p, n) = mem.stretch(off, 4);
    assert!(n == 4, "u32 field split across stretches");
    // SAFETY: as in `load_u32_checked`; the memory is writable.
    unsafe { atomic_u32(p) }.store(value, order)
}
