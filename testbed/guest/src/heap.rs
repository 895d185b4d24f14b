//! The kernel heap: everything from the end of the kernel image to the top of guest RAM (capped).

use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

extern "C" {
    static __image_end: u8;
}

/// Hand RAM above the image to the allocator. `ram_bytes` comes from the host's boot info.
pub fn init(ram_bytes: u64) {
    let start = core::ptr::addr_of!(__image_end) as u64;
    // Identity paging covers 4 GiB; the LAPIC hole starts at 0xfec00000.
    let top = ram_bytes.min(0xfec0_0000);
    if top <= start {
        return;
    }
    let size = (top - start) as usize;
    // SAFETY: [start, top) is guest RAM above our image that nothing else uses, identity mapped and
    // user-accessible by the shim's page tables; `init` runs once, before any allocation.
    unsafe { HEAP.lock().init(start as *mut u8, size) };
}
