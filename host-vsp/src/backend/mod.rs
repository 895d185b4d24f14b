//! Disk backends shared by every storage device model (storvsp, the emulated IDE controller, virtio-blk):
//! one [`BlockBackend`] trait whose data methods move bytes straight between the disk and the I/O's
//! buffers ([`IoBuffers`]: guest pages or a device's own buffer), a raw image file ([`FileDisk`]:
//! `preadv`/`pwritev`, optional `O_DIRECT`, flush = `fdatasync`, FUA honoured, a failed flush never
//! forgotten) and a RAM disk ([`RamDisk`]: one copy) for benchmarks. Offsets and lengths are in bytes
//! and always bounds-checked here, so no device model can touch bytes outside the image whatever a
//! guest asks.
//!
//! - [`iov`] — the iovec edge (the only `unsafe` on the data path);
//! - [`file`] — [`FileDisk`];
//! - [`ram`] — [`RamDisk`].

pub mod file;
pub mod iov;
pub mod ram;
pub mod write_cache;

use std::io;

pub use file::{FileDisk, FileDiskOptions};
pub use iov::{IoBuffers, IovecStorage};
pub use ram::RamDisk;
pub use write_cache::VolatileCacheDisk;

/// Logical sector size every device model exposes.
pub const SECTOR_SIZE: u64 = 512;

/// Errors of a disk backend.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The request reaches outside the disk.
    #[error("request {offset:#x}+{len:#x} is outside the {capacity:#x}-byte disk")]
    OutOfRange {
        /// First byte of the request.
        offset: u64,
        /// Bytes requested.
        len: u64,
        /// Disk size.
        capacity: u64,
    },
    /// A write (or discard) to a read-only disk.
    #[error("disk is read-only")]
    ReadOnly,
    /// The host I/O failed.
    #[error("disk I/O failed")]
    Io(#[from] io::Error),
    /// A flush (or FUA write) of this disk failed earlier: writes since may never reach stable
    /// storage, so no later flush can succeed (the kernel may already have dropped the dirty pages).
    #[error("an earlier flush of this disk failed; completed writes may not be durable")]
    EarlierFlushFailed,
    /// A read was given buffers that may only be read (a device model bug).
    #[error("a disk read was given read-only buffers")]
    ReadOnlyBuffers,
    /// A copy reaches outside the I/O's buffers (a backend bug).
    #[error("copy {pos:#x}+{len:#x} is outside the {buffers:#x} bytes of the I/O buffers")]
    BufferRange {
        /// Position in the transfer.
        pos: u64,
        /// Bytes copied.
        len: u64,
        /// Bytes of the buffers.
        buffers: u64,
    },
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
    /// Reads `bufs.len()` bytes at `offset` straight into `bufs`, in order. On error the buffers'
    /// contents are unspecified.
    fn read_vectored(&self, offset: u64, bufs: &IoBuffers<'_>) -> Result<(), DiskError>;
    /// Writes `bufs` at `offset`; with `fua` the data is durable when this returns.
    fn write_vectored(&self, offset: u64, bufs: &IoBuffers<'_>, fua: bool)
        -> Result<(), DiskError>;
    /// Make every completed write durable.
    fn flush(&self) -> Result<(), DiskError>;
    /// Discard (unmap) a range: afterwards it reads as zeros.
    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError>;
    /// Capacity in sectors.
    fn sectors(&self) -> u64 {
        self.capacity() / SECTOR_SIZE
    }
    /// Reads `buf.len()` bytes at `offset` into one host buffer: for preparing and checking images
    /// (device models use [`read_vectored`](Self::read_vectored) on their own storage).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let mut storage = IovecStorage::new(1);
        let mut bufs = storage.buffers();
        bufs.push(buf.into());
        self.read_vectored(offset, &bufs)
    }
    /// Writes one host buffer at `offset` (see [`read_at`](Self::read_at)).
    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> Result<(), DiskError> {
        let mut storage = IovecStorage::new(1);
        let mut bufs = storage.buffers();
        bufs.push_readonly(buf);
        self.write_vectored(offset, &bufs, fua)
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

/// Checks shared by the backends' tests.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Bounds, contents and discard of any writable backend.
    pub fn exercise(disk: &dyn BlockBackend) {
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
    fn error_messages_do_not_repeat_their_source() {
        let e = DiskError::Io(io::Error::other("boom"));
        assert!(!e.to_string().contains("boom"), "{e}");
    }
}
