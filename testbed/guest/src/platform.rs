//! This kernel's implementation of `guest_drivers::platform::Platform`: identity-mapped heap pages as
//! DMA memory, the int3 service gate for MSRs, the boot CPUID snapshot, the shim's interrupt counters.

use core::alloc::Layout;
use core::ptr::NonNull;

use guest_drivers::platform::{DmaRegion, Platform, PAGE_SIZE};

use crate::arch;

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
        // SAFETY: non-zero size checked above.
        let va = NonNull::new(unsafe { alloc::alloc::alloc_zeroed(layout) })?;
        // Identity mapping: virtual == physical.
        Some(DmaRegion {
            va,
            pa: va.as_ptr() as u64,
            len: layout.size(),
        })
    }

    fn free_dma(&self, region: DmaRegion) {
        if let Ok(layout) = Layout::from_size_align(region.len, PAGE_SIZE) {
            // SAFETY: `region` came from `alloc_dma` with this same layout and is given up by the caller.
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
