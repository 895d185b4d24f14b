//! A `vm_memory::GuestMemoryMmap` view of hypervisor-lite's guest RAM, so rust-vmm's `virtio-queue` can walk
//! rings and descriptors in it. The view borrows hypervisor-lite's existing host mappings (it maps nothing
//! and unmaps nothing) and keeps a clone of the [`GuestRam`] so those mappings outlive it.

use hypervisor_lite::GuestRam;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// Guest RAM as `vm_memory` sees it.
#[derive(Debug)]
pub struct GuestView {
    /// The regions, at the same guest-physical addresses as hypervisor-lite's RAM.
    pub mem: GuestMemoryMmap,
    _ram: GuestRam,
}

impl GuestView {
    /// Builds the view over every RAM region of `ram`.
    pub fn new(ram: &GuestRam) -> Result<Self, String> {
        let mut regions = Vec::new();
        for r in ram.regions() {
            let len = usize::try_from(r.len).map_err(|e| e.to_string())?;
            // SAFETY: `host_addr..host_addr + len` is one live anonymous read/write mapping owned by `ram`
            // (hypervisor-lite's RAM region contract), and we keep a clone of `ram` in the view, so the
            // mapping outlives every `MmapRegion` built here. `build_raw` records the pointer without taking
            // ownership: dropping the region never unmaps it. The memory is shared with the guest, which
            // `vm_memory` accesses through volatile copies and atomics only.
            let region = unsafe {
                MmapRegion::build_raw(
                    r.host_addr as *mut u8,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE,
                )
            }
            .map_err(|e| format!("region {:#x}+{:#x}: {e}", r.gpa, r.len))?;
            let region = GuestRegionMmap::new(region, GuestAddress(r.gpa))
                .ok_or_else(|| format!("region {:#x}+{:#x} overflows", r.gpa, r.len))?;
            regions.push(region);
        }
        let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| e.to_string())?;
        Ok(Self {
            mem,
            _ram: ram.clone(),
        })
    }
}
