//! [`RamDisk`]: a disk held in host memory, for benchmarks and tests. A read or write is one copy
//! between the disk's bytes and the I/O's buffers.

#![forbid(unsafe_code)]

use std::sync::RwLock;

use super::{check_range, BlockBackend, DiskError, IoBuffers, SECTOR_SIZE};

/// A disk held in host memory.
#[derive(Debug)]
pub struct RamDisk {
    data: RwLock<Vec<u8>>,
    read_only: bool,
}

impl RamDisk {
    /// A zeroed RAM disk of `bytes` bytes (rounded down to whole sectors).
    pub fn new(bytes: u64) -> Self {
        Self {
            data: RwLock::new(vec![0; (bytes - bytes % SECTOR_SIZE) as usize]),
            read_only: false,
        }
    }

    /// A read-only RAM disk with the given contents (truncated to whole sectors).
    pub fn read_only_from(mut contents: Vec<u8>) -> Self {
        contents.truncate(contents.len() - contents.len() % SECTOR_SIZE as usize);
        Self {
            data: RwLock::new(contents),
            read_only: true,
        }
    }

    /// A copy of the whole disk.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl BlockBackend for RamDisk {
    fn capacity(&self) -> u64 {
        self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_vectored(&self, offset: u64, bufs: &IoBuffers<'_>) -> Result<(), DiskError> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        check_range(offset, bufs.len(), data.len() as u64)?;
        let at = offset as usize;
        bufs.copy_from_host(0, &data[at..at + bufs.len() as usize])
    }

    fn write_vectored(
        &self,
        offset: u64,
        bufs: &IoBuffers<'_>,
        _fua: bool,
    ) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        check_range(offset, bufs.len(), data.len() as u64)?;
        let at = offset as usize;
        bufs.copy_to_host(0, &mut data[at..at + bufs.len() as usize])
    }

    fn flush(&self) -> Result<(), DiskError> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        check_range(offset, len, data.len() as u64)?;
        data[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::exercise;
    use crate::backend::IovecStorage;
    use crate::guest_memory::{self, GuestMemoryMmap};
    use vm_memory::GuestAddress;

    #[test]
    fn ram_disk_bounds_and_contents() {
        exercise(&RamDisk::new(1 << 20));
        let ro = RamDisk::read_only_from(vec![1; 1024]);
        assert!(matches!(
            ro.write_at(0, &[0; 512], false),
            Err(DiskError::ReadOnly)
        ));
        assert!(matches!(ro.discard(0, 512), Err(DiskError::ReadOnly)));
    }

    #[test]
    fn vectored_io_copies_once_between_disk_and_guest_regions() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x2000),
            (GuestAddress(0x2000), 0x2000),
            (GuestAddress(0x8000), 0x1000),
        ])
        .unwrap();
        let disk = RamDisk::new(1 << 16);
        let pattern: Vec<u8> = (0..0x3000u32).map(|i| (i % 253) as u8).collect();
        disk.write_at(512, &pattern, false).unwrap();
        let mut storage = IovecStorage::new(2);
        let mut bufs = storage.buffers();
        bufs.push_guest(&mem, 0x1800, 0x2000).unwrap(); // across the touching regions
        bufs.push_guest(&mem, 0x8000, 0x1000).unwrap(); // after the hole
        disk.read_vectored(512, &bufs).unwrap();
        let mut back = vec![0u8; 0x2000];
        guest_memory::read(&mem, 0x1800, &mut back).unwrap();
        assert_eq!(back, pattern[..0x2000]);
        guest_memory::read(&mem, 0x8000, &mut back[..0x1000]).unwrap();
        assert_eq!(back[..0x1000], pattern[0x2000..]);
        // Out of the disk: refused before copying anything.
        assert!(matches!(
            disk.read_vectored((1 << 16) - 0x1000, &bufs),
            Err(DiskError::OutOfRange { .. })
        ));
        disk.write_vectored(0x8000, &bufs, false).unwrap();
        let mut on_disk = vec![0u8; 0x3000];
        disk.read_at(0x8000, &mut on_disk).unwrap();
        assert_eq!(on_disk, pattern);
    }
}
