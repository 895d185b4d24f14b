//! Guest physical memory as a device model sees it: [`GuestMemory`] copies bytes in and out at guest
//! physical addresses and refuses any range that is not entirely guest RAM. Implemented for
//! hypervisor-lite's [`GuestRam`] (the real partition) and for [`HeapGuestMemory`] (in-process rings,
//! tests, benchmarks, fuzzing). Also: translating a guest page number plus offset to an address
//! ([`gpa_of_pfn`]) without overflow.

use std::sync::RwLock;

use hypervisor_lite::GuestRam;

/// Size of a guest page as VMBus counts them.
pub const PAGE_SIZE: u64 = 4096;

/// A guest memory access that would leave guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest range {gpa:#x}+{len:#x} is not guest RAM")]
pub struct GuestMemoryError {
    /// First guest physical address of the access.
    pub gpa: u64,
    /// Length of the access.
    pub len: u64,
}

/// Guest physical memory. Implementations must never touch host memory outside guest RAM, whatever
/// the address; a range not entirely in RAM fails as a whole without partial effects.
pub trait GuestMemory: Send + Sync {
    /// Whether `[gpa, gpa + len)` is entirely guest RAM (overflow-safe).
    fn contains(&self, gpa: u64, len: u64) -> bool;
    /// Copies guest memory at `gpa` into `buf`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError>;
    /// Copies `buf` into guest memory at `gpa`.
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), GuestMemoryError>;
}

/// `pfn * 4096 + offset`, or `None` on overflow or an offset outside the page.
pub fn gpa_of_pfn(pfn: u64, offset: u64) -> Option<u64> {
    if offset >= PAGE_SIZE {
        return None;
    }
    pfn.checked_mul(PAGE_SIZE)?.checked_add(offset)
}

impl GuestMemory for GuestRam {
    fn contains(&self, gpa: u64, len: u64) -> bool {
        GuestRam::contains(self, gpa, len)
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        GuestRam::read(self, gpa, buf).map_err(|_| GuestMemoryError {
            gpa,
            len: buf.len() as u64,
        })
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), GuestMemoryError> {
        GuestRam::write(self, gpa, buf).map_err(|_| GuestMemoryError {
            gpa,
            len: buf.len() as u64,
        })
    }
}

impl GuestMemory for vm_memory::GuestMemoryMmap {
    fn contains(&self, gpa: u64, len: u64) -> bool {
        usize::try_from(len).is_ok_and(|len| {
            vm_memory::GuestMemoryBackend::check_range(self, vm_memory::GuestAddress(gpa), len)
        })
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        let err = GuestMemoryError {
            gpa,
            len: buf.len() as u64,
        };
        if !GuestMemory::contains(self, gpa, buf.len() as u64) {
            return Err(err);
        }
        vm_memory::Bytes::read_slice(self, buf, vm_memory::GuestAddress(gpa)).map_err(|_| err)
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), GuestMemoryError> {
        let err = GuestMemoryError {
            gpa,
            len: buf.len() as u64,
        };
        if !GuestMemory::contains(self, gpa, buf.len() as u64) {
            return Err(err);
        }
        vm_memory::Bytes::write_slice(self, buf, vm_memory::GuestAddress(gpa)).map_err(|_| err)
    }
}

impl<T: GuestMemory + ?Sized> GuestMemory for std::sync::Arc<T> {
    fn contains(&self, gpa: u64, len: u64) -> bool {
        (**self).contains(gpa, len)
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        (**self).read(gpa, buf)
    }
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), GuestMemoryError> {
        (**self).write(gpa, buf)
    }
}

/// Guest memory held in a host vector starting at guest physical address 0: for in-process device
/// tests, benchmarks and fuzzing, where no partition exists.
#[derive(Debug)]
pub struct HeapGuestMemory {
    bytes: RwLock<Vec<u8>>,
}

impl HeapGuestMemory {
    /// `pages` zeroed guest pages at GPA 0.
    pub fn new(pages: usize) -> Self {
        Self {
            bytes: RwLock::new(vec![0; pages * PAGE_SIZE as usize]),
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.bytes.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn range(
        &self,
        gpa: u64,
        len: u64,
        size: usize,
    ) -> Result<std::ops::Range<usize>, GuestMemoryError> {
        match gpa.checked_add(len) {
            Some(end) if end <= size as u64 => Ok(gpa as usize..end as usize),
            _ => Err(GuestMemoryError { gpa, len }),
        }
    }
}

impl GuestMemory for HeapGuestMemory {
    fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa.checked_add(len).is_some_and(|end| end <= self.size())
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        let bytes = self.bytes.read().unwrap_or_else(|e| e.into_inner());
        let r = self.range(gpa, buf.len() as u64, bytes.len())?;
        buf.copy_from_slice(&bytes[r]);
        Ok(())
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), GuestMemoryError> {
        let mut bytes = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        let r = self.range(gpa, buf.len() as u64, bytes.len())?;
        bytes[r].copy_from_slice(buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(mem: &dyn GuestMemory, size: u64) {
        mem.write(size - 8, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let mut b = [0u8; 8];
        mem.read(size - 8, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(mem.contains(0, size));
        assert!(!mem.contains(size - 7, 8));
        assert!(!mem.contains(u64::MAX, 2));
        assert_eq!(
            mem.read(size - 7, &mut b),
            Err(GuestMemoryError {
                gpa: size - 7,
                len: 8
            })
        );
        assert!(mem.write(u64::MAX - 3, &b).is_err());
        // A failed write has no partial effect.
        mem.read(size - 8, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn heap_memory_bounds() {
        exercise(&HeapGuestMemory::new(4), 4 * PAGE_SIZE);
    }

    #[test]
    fn guest_ram_bounds() {
        let ram = GuestRam::new(16 * PAGE_SIZE).unwrap();
        exercise(&ram, 16 * PAGE_SIZE);
    }

    #[test]
    fn pfn_translation_is_overflow_checked() {
        assert_eq!(gpa_of_pfn(3, 5), Some(3 * 4096 + 5));
        assert_eq!(gpa_of_pfn(1, 4096), None);
        assert_eq!(gpa_of_pfn(u64::MAX / 4096 + 1, 0), None);
        assert_eq!(gpa_of_pfn(u64::MAX / 4096, 4095), Some(u64::MAX));
    }
}
