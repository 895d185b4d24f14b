//! Disk backends shared by every storage device model (storvsp, the emulated IDE controller, virtio-blk):
//! one [`BlockBackend`] trait, a raw image file ([`FileDisk`]: optional `O_DIRECT`, flush = `fdatasync`,
//! FUA honoured) and a RAM disk ([`RamDisk`]) for benchmarks. Offsets and lengths are in bytes and always
//! bounds-checked here, so no device model can touch bytes outside the image whatever a guest asks.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::RwLock;

/// Logical sector size every device model exposes.
pub const SECTOR_SIZE: u64 = 512;

/// Errors of a disk backend.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The request reaches outside the disk.
    #[error("request {offset:#x}+{len:#x} is outside the {capacity:#x}-byte disk")]
    OutOfRange {
        offset: u64,
        len: u64,
        capacity: u64,
    },
    /// A write (or discard) to a read-only disk.
    #[error("disk is read-only")]
    ReadOnly,
    /// The host I/O failed.
    #[error("disk I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The image cannot be used as a disk.
    #[error("invalid disk image: {0}")]
    Invalid(String),
}

/// A block device the device models serve guests from. Implementations are shared between worker
/// threads and must be safe to call concurrently.
pub trait BlockBackend: Send + Sync {
    /// Capacity in bytes (a multiple of [`SECTOR_SIZE`]).
    fn capacity(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// Read `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError>;
    /// Write `buf` at `offset`; with `fua` the data is durable when this returns.
    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> Result<(), DiskError>;
    /// Make every completed write durable.
    fn flush(&self) -> Result<(), DiskError>;
    /// Discard (unmap) a range: afterwards it reads as zeros.
    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError>;
    /// Capacity in sectors.
    fn sectors(&self) -> u64 {
        self.capacity() / SECTOR_SIZE
    }
}

/// Check that `[offset, offset + len)` lies inside a disk of `capacity` bytes (overflow-safe).
pub fn check_range(offset: u64, len: u64, capacity: u64) -> Result<(), DiskError> {
    match offset.checked_add(len) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(DiskError::OutOfRange {
            offset,
            len,
            capacity,
        }),
    }
}

/// Options for opening a raw image.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileDiskOptions {
    /// Refuse writes.
    pub read_only: bool,
    /// Bypass the host page cache (`O_DIRECT`); requests must then be 512-byte aligned in memory and size.
    pub direct: bool,
}

/// A raw disk image file.
#[derive(Debug)]
pub struct FileDisk {
    file: File,
    capacity: u64,
    read_only: bool,
}

impl FileDisk {
    /// Open an existing raw image; its size must be a non-zero multiple of 512.
    pub fn open(path: &Path, options: FileDiskOptions) -> Result<Self, DiskError> {
        let mut open = OpenOptions::new();
        open.read(true).write(!options.read_only);
        if options.direct {
            open.custom_flags(libc_o_direct());
        }
        let file = open.open(path)?;
        let capacity = file.metadata()?.len();
        if capacity == 0 || !capacity.is_multiple_of(SECTOR_SIZE) {
            return Err(DiskError::Invalid(format!(
                "{}: size {capacity} is not a non-zero multiple of {SECTOR_SIZE}",
                path.display()
            )));
        }
        Ok(Self {
            file,
            capacity,
            read_only: options.read_only,
        })
    }

    /// Create (or truncate) a zero-filled sparse image of `bytes` bytes.
    pub fn create(path: &Path, bytes: u64) -> Result<Self, DiskError> {
        if bytes == 0 || !bytes.is_multiple_of(SECTOR_SIZE) {
            return Err(DiskError::Invalid(format!(
                "size {bytes} is not a non-zero multiple of {SECTOR_SIZE}"
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(bytes)?;
        Ok(Self {
            file,
            capacity: bytes,
            read_only: false,
        })
    }
}

const fn libc_o_direct() -> i32 {
    0o40000 // O_DIRECT on x86-64 Linux
}

impl BlockBackend for FileDisk {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_range(offset, buf.len() as u64, self.capacity)?;
        Ok(self.file.read_exact_at(buf, offset)?)
    }

    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        check_range(offset, buf.len() as u64, self.capacity)?;
        self.file.write_all_at(buf, offset)?;
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), DiskError> {
        if !self.read_only {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        check_range(offset, len, self.capacity)?;
        // Zero the range in bounded chunks (portable; punching holes would need fallocate).
        let zeros = vec![0u8; 64 << 10];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
}

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

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        check_range(offset, buf.len() as u64, data.len() as u64)?;
        buf.copy_from_slice(&data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8], _fua: bool) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        check_range(offset, buf.len() as u64, data.len() as u64)?;
        data[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
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

    fn exercise(disk: &dyn BlockBackend) {
        let cap = disk.capacity();
        disk.write_at(cap - 512, &[0xAB; 512], false).unwrap();
        let mut buf = [0u8; 512];
        disk.read_at(cap - 512, &mut buf).unwrap();
        assert_eq!(buf, [0xAB; 512]);
        assert!(matches!(
            disk.read_at(cap - 511, &mut buf),
            Err(DiskError::OutOfRange { .. })
        ));
        assert!(matches!(
            disk.write_at(u64::MAX - 10, &buf, false),
            Err(DiskError::OutOfRange { .. })
        ));
        disk.discard(cap - 512, 512).unwrap();
        disk.read_at(cap - 512, &mut buf).unwrap();
        assert_eq!(buf, [0; 512]);
        assert!(matches!(
            disk.discard(cap, 1),
            Err(DiskError::OutOfRange { .. })
        ));
        disk.flush().unwrap();
    }

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
    fn file_disk_bounds_contents_and_reopen() {
        let dir = std::env::temp_dir().join(format!("viridian-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.img");
        let disk = FileDisk::create(&path, 1 << 20).unwrap();
        exercise(&disk);
        disk.write_at(4096, &[7; 4096], true).unwrap();
        drop(disk);
        let ro = FileDisk::open(
            &path,
            FileDiskOptions {
                read_only: true,
                direct: false,
            },
        )
        .unwrap();
        let mut buf = [0u8; 4096];
        ro.read_at(4096, &mut buf).unwrap();
        assert_eq!(buf, [7; 4096]);
        assert!(matches!(
            ro.write_at(0, &buf, false),
            Err(DiskError::ReadOnly)
        ));
        std::fs::write(dir.join("odd.img"), [0u8; 1000]).unwrap();
        assert!(matches!(
            FileDisk::open(&dir.join("odd.img"), FileDiskOptions::default()),
            Err(DiskError::Invalid(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
