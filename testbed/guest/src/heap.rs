//! The kernel's memory: the heap (every allocation, and DMA memory by default) is the RAM below the MMIO
//! hole from the end of the kernel image up; the RAM above the hole (above 4 GiB) is a pool of its own that
//! only [`crate::platform`] hands out, as DMA memory, when a scenario asks for memory above 4 GiB.

use core::alloc::Layout;
use core::ptr::NonNull;

use guest_abi::BootInfo;
use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// The RAM above the MMIO hole (empty when the guest has none).
static HIGH: LockedHeap = LockedHeap::empty();

/// The shim identity-maps guest physical memory up to here at most (its page directories are sized
/// for it); RAM beyond it is not used.
pub const IDENTITY_MAP_LIMIT: u64 = 64 << 30;

/// Where the MMIO hole's devices start (IOAPIC): the low heap never reaches past it, whatever the boot
/// info says.
const HOLE_DEVICES: u64 = 0xfec0_0000;

extern "C" {
    static __image_end: u8;
}

/// Hand RAM above the image (below the hole) to the allocator, and the RAM above the hole to the high
/// pool. The ranges come from the host's boot info; the shim identity-maps both.
pub fn init(info: &BootInfo) {
    let start = core::ptr::addr_of!(__image_end) as u64;
    let top = info.low_ram_end.min(HOLE_DEVICES);
    if top > start {
        // SAFETY: [start, top) is guest RAM above our image that nothing else uses, identity mapped and
        // user-accessible by the shim's page tables; `init` runs once, before any allocation.
        unsafe { HEAP.lock().init(start as *mut u8, (top - start) as usize) };
    }
    let low = info.high_ram_start.max(1 << 32);
    let high = info.high_ram_end.min(IDENTITY_MAP_LIMIT);
    if high > low {
        // SAFETY: [low, high) is the RAM above the MMIO hole, which nothing else uses, identity mapped
        // and user-accessible by the shim's page tables (it maps up to `high_ram_end`, at most
        // IDENTITY_MAP_LIMIT); once only.
        unsafe { HIGH.lock().init(low as *mut u8, (high - low) as usize) };
    }
}

/// The high pool's range, `[start, end)` (empty if the guest has no RAM above the hole).
pub fn high_range() -> (u64, u64) {
    let heap = HIGH.lock();
    let start = heap.bottom() as u64;
    (start, start + heap.size() as u64)
}

/// Zeroed memory of `layout` from the RAM above 4 GiB, if there is room.
pub fn alloc_high_zeroed(layout: Layout) -> Option<NonNull<u8>> {
    let ptr = HIGH.lock().allocate_first_fit(layout).ok()?;
    // SAFETY: the allocator just gave us `layout.size()` bytes at `ptr`, identity-mapped RAM.
    unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0, layout.size()) };
    Some(ptr)
}

/// Give back memory from [`alloc_high_zeroed`].
///
/// # Safety
/// `ptr` came from [`alloc_high_zeroed`] with this `layout` and is not used afterwards.
pub unsafe fn free_high(ptr: NonNull<u8>, layout: Layout) {
    // SAFETY: per this function's contract.
    unsafe { HIGH.lock().deallocate(ptr, layout) };
}
