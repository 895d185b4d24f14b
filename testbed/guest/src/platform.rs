//! This kernel's implementation of `guest_drivers::platform::Platform`: identity-mapped heap pages as
//! DMA memory, the int3 service gate for MSRs, the boot CPUID snapshot, the shim's interrupt counters.
//!
//! DMA placement: memory comes from the heap below 4 GiB unless a scenario runs code under
//! [`with_dma_placement`]`(`[`DmaPlacement::Above4G`]`, ..)`, which takes every DMA allocation made
//! meanwhile (rings, GPADLs, I/O buffers) from the RAM above 4 GiB — for devices that take 64-bit
//! addresses (VMBus GPADLs and GPA-direct ranges, virtio); nothing that needs a 32-bit address may be set
//! up inside it. [`Platform::free_dma`] gives memory back to the pool it came from, whatever the placement.

use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use guest_drivers::platform::{DmaRegion, Platform, PAGE_SIZE};

use crate::{arch, heap};

/// Where [`Kernel::alloc_dma`] takes memory from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaPlacement {
    /// The kernel heap, below the MMIO hole (the default).
    Below4G,
    /// The RAM above 4 GiB (allocation fails when the guest has none, or it is used up).
    Above4G,
}

static ABOVE_4G: AtomicBool = AtomicBool::new(false);

/// Run `f` with DMA memory placed as `placement`, then restore the placement before.
pub fn with_dma_placement<R>(placement: DmaPlacement, f: impl FnOnce() -> R) -> R {
    let before = ABOVE_4G.swap(placement == DmaPlacement::Above4G, Ordering::Relaxed);
    let result = f();
    ABOVE_4G.store(before, Ordering::Relaxed);
    result
}

/// The kernel's platform (stateless: everything lives in the shim or the heap).
#[derive(Debug, Clone, Copy)]
pub struct Kernel;

impl Platform for Kernel {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        arch::cpuid(leaf, subleaf)
    }

    fn rdmsr(&self, msr: u32) -> u64 {
        arch::rdmsr(msr)
    }

    fn wrmsr(&self, msr: u32, value: u64) {
        arch::wrmsr(msr, value)
    }

    fn alloc_dma(&self, pages: usize) -> Option<DmaRegion> {
        let layout = Layout::from_size_align(pages.checked_mul(PAGE_SIZE)?, PAGE_SIZE).ok()?;
        if layout.size() == 0 {
            return None;
        }
        let va = if ABOVE_4G.load(Ordering::Relaxed) {
            heap::alloc_high_zeroed(layout)?
        } else {
            // SAFETY: non-zero size checked above.
            NonNull::new(unsafe { alloc::alloc::alloc_zeroed(layout) })?
        };
        // Identity mapping: virtual == physical.
        Some(DmaRegion {
            va,
            pa: va.as_ptr() as u64,
            len: layout.size(),
        })
    }

    fn free_dma(&self, region: DmaRegion) {
        let Ok(layout) = Layout::from_size_align(region.len, PAGE_SIZE) else {
            return;
        };
        let (high_start, high_end) = heap::high_range();
        if (high_start..high_end).contains(&region.pa) {
            // SAFETY: `region` came from `alloc_dma` (the high pool: its address is there) with this
            // same layout and is given up by the caller.
            unsafe { heap::free_high(region.va, layout) };
        } else {
            // SAFETY: `region` came from `alloc_dma` (the heap) with this same layout and is given up
            // by the caller.
            unsafe { alloc::alloc::dealloc(region.va.as_ptr(), layout) };
        }
    }

    fn interrupt_count(&self, vector: u8) -> u64 {
        arch::interrupts_on(vector)
    }

    fn interrupt_total(&self) -> u64 {
        arch::interrupts_total()
    }

    fn wait_for_interrupt(&self, seen_total: u64) -> u64 {
        arch::halt(seen_total)
    }
}
