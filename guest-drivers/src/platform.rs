//! The boundary between these drivers and the guest kernel that links them.
//!
//! The kernel implements [`Platform`]: privileged operations (MSRs, CPUID as the hypervisor defines it),
//! page-aligned memory the host can address by guest physical address, and interrupt counters — the
//! drivers never take interrupts themselves; the kernel's interrupt stubs count vectors and the drivers
//! poll the counts or sleep until they change.

use core::ptr::NonNull;

/// Size of a guest page (VMBus's, which is Hyper-V's).
pub use vmbus::mem::PAGE_SIZE;

/// Zeroed, page-aligned memory that the host can reach by guest physical address.
#[derive(Debug)]
pub struct DmaRegion {
    /// Guest virtual address of the first byte.
    pub va: NonNull<u8>,
    /// Guest physical address of the first byte.
    pub pa: u64,
    /// Length in bytes (a multiple of [`PAGE_SIZE`]).
    pub len: usize,
}

impl DmaRegion {
    /// A region of no bytes: what an owner holds after giving its memory back (every access is out of
    /// bounds; never pass it to [`Platform::free_dma`]).
    pub const fn empty() -> Self {
        Self {
            va: NonNull::dangling(),
            pa: 0,
            len: 0,
        }
    }

    /// Number of pages in the region.
    pub fn pages(&self) -> usize {
        self.len / PAGE_SIZE
    }

    /// Guest page frame numbers of the region's pages, in order.
    pub fn pfns(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.pages() as u64).map(move |i| self.pa / PAGE_SIZE as u64 + i)
    }
}

/// What a guest kernel provides to the drivers.
pub trait Platform {
    /// CPUID as the hypervisor defines it (on KVM-PVM it must run at CPL0).
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// Read an MSR.
    fn rdmsr(&self, msr: u32) -> u64;
    /// Write an MSR.
    fn wrmsr(&self, msr: u32, value: u64);
    /// Allocate `pages` zeroed, physically contiguous, page-aligned pages.
    fn alloc_dma(&self, pages: usize) -> Option<DmaRegion>;
    /// Free a region from [`Platform::alloc_dma`].
    fn free_dma(&self, region: DmaRegion);
    /// Interrupts taken on `vector` since boot.
    fn interrupt_count(&self, vector: u8) -> u64;
    /// Interrupts taken on all vectors since boot.
    fn interrupt_total(&self) -> u64;
    /// Sleep until an interrupt arrives, unless one arrived since the caller saw `seen_total`.
    /// Returns the new total.
    fn wait_for_interrupt(&self, seen_total: u64) -> u64;
}

impl DmaRegion {
    fn check(&self, offset: usize, len: usize, align: usize) {
        assert!(
            offset.is_multiple_of(align)
                && offset.checked_add(len).is_some_and(|end| end <= self.len),
            "DMA access {offset:#x}+{len} outside region of {:#x} bytes",
            self.len
        );
    }

    /// Copy bytes out of the region (the host may be writing it concurrently: volatile, no references).
    pub fn read(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len(), 1);
        for (i, b) in dst.iter_mut().enumerate() {
            // SAFETY: bounds checked above; the region is live memory owned by this `DmaRegion`.
            *b = unsafe { core::ptr::read_volatile(self.va.as_ptr().add(offset + i)) };
        }
    }

    /// Copy bytes into the region.
    pub fn write(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len(), 1);
        for (i, b) in src.iter().enumerate() {
            // SAFETY: bounds checked above; the region is live memory owned by this `DmaRegion`.
            unsafe { core::ptr::write_volatile(self.va.as_ptr().add(offset + i), *b) };
        }
    }

    /// The atomic u16 at a 2-aligned offset (shared with the host).
    pub fn atomic_u16(&self, offset: usize) -> &core::sync::atomic::AtomicU16 {
        self.check(offset, 2, 2);
        // SAFETY: in bounds and 2-aligned (checked); the memory lives as long as `self`, and every access
        // to shared words goes through atomics.
        unsafe { core::sync::atomic::AtomicU16::from_ptr(self.va.as_ptr().add(offset).cast()) }
    }

    /// The atomic u32 at a 4-aligned offset (shared with the host).
    pub fn atomic_u32(&self, offset: usize) -> &core::sync::atomic::AtomicU32 {
        self.check(offset, 4, 4);
        // SAFETY: in bounds and 4-aligned (checked); the memory lives as long as `self`, and every access
        // to shared words goes through atomics.
        unsafe { core::sync::atomic::AtomicU32::from_ptr(self.va.as_ptr().add(offset).cast()) }
    }

    /// The atomic u64 at an 8-aligned offset (shared with the host).
    pub fn atomic_u64(&self, offset: usize) -> &core::sync::atomic::AtomicU64 {
        self.check(offset, 8, 8);
        // SAFETY: as for `atomic_u32`.
        unsafe { core::sync::atomic::AtomicU64::from_ptr(self.va.as_ptr().add(offset).cast()) }
    }
}
