//! [`FileDisk`]: a raw disk image file. Data moves with `preadv`/`pwritev` straight between the file
//! and the I/O's buffers (guest pages included: no host bounce buffer); `O_DIRECT` is optional and
//! then needs 512-byte aligned buffers, lengths and offsets. Flush is `fdatasync`, FUA a write
//! followed by one. Once a flush or FUA write has failed, every later flush (and FUA write) of the
//! disk fails too: the kernel may have dropped the dirty pages it could not write, so a later
//! `fdatasync` succeeding would claim durability for data that is gone (QEMU behaves the same way).

#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{check_range, BlockBackend, DiskError, IoBuffers, SECTOR_SIZE};

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
    /// A flush or FUA write failed: no flush may succeed any more.
    flush_failed: AtomicBool,
    /// How data is made durable (`fdatasync`; tests substitute a failing one).
    sync_data: fn(&File) -> io::Result<()>,
}

impl FileDisk {
    /// Open an existing raw image; its size must be a non-zero multiple of 512. Errors do not repeat
    /// `path`: the caller names the file.
    pub fn open(path: &Path, options: FileDiskOptions) -> Result<Self, DiskError> {
        let mut open = OpenOptions::new();
        open.read(true).write(!options.read_only);
        if options.direct {
            open.custom_flags(libc::O_DIRECT);
        }
        let file = open.open(path)?;
        let capacity = file.metadata()?.len();
        if capacity == 0 || !capacity.is_multiple_of(SECTOR_SIZE) {
            // The caller names the file (as for every other error of opening it).
            return Err(DiskError::Invalid(format!(
                "size {capacity} is not a non-zero multiple of {SECTOR_SIZE}"
            )));
        }
        Ok(Self::new(file, capacity, options.read_only))
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
        Ok(Self::new(file, bytes, false))
    }

    fn new(file: File, capacity: u64, read_only: bool) -> Self {
        Self {
            file,
            capacity,
            read_only,
            flush_failed: AtomicBool::new(false),
            sync_data: File::sync_data,
        }
    }

    /// `fdatasync`, refused for good once it has failed.
    fn sync(&self) -> Result<(), DiskError> {
        if self.flush_failed.load(Ordering::Acquire) {
            return Err(DiskError::EarlierFlushFailed);
        }
        (self.sync_data)(&self.file).map_err(|e| {
            self.flush_failed.store(true, Ordering::Release);
            tracing::error!(error = %e, "disk flush failed: every later flush of this disk fails");
            DiskError::Io(e)
        })
    }
}

impl BlockBackend for FileDisk {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_vectored(&self, offset: u64, bufs: &IoBuffers<'_>) -> Result<(), DiskError> {
        check_range(offset, bufs.len(), self.capacity)?;
        bufs.read_from_file(&self.file, offset)
    }

    fn write_vectored(
        &self,
        offset: u64,
        bufs: &IoBuffers<'_>,
        fua: bool,
    ) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        check_range(offset, bufs.len(), self.capacity)?;
        bufs.write_to_file(&self.file, offset)?;
        if fua {
            self.sync()?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), DiskError> {
        if self.read_only {
            return Ok(());
        }
        self.sync()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::exercise;
    use crate::backend::IovecStorage;
    use crate::guest_memory::{self, GuestMemoryMmap};
    use vm_memory::GuestAddress;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("viridian-disk-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn file_disk_bounds_contents_and_reopen() {
        let dir = temp_dir("basic");
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

    /// Guest memory in two regions that touch, then a hole, then a third region.
    fn guest() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x4000),
            (GuestAddress(0x4000), 0x4000),
            (GuestAddress(0x10000), 0x2000),
        ])
        .unwrap()
    }

    /// A request over several guest pages, across a region boundary and into a second region
    /// after a hole, moves straight between the file and guest memory in order.
    #[test]
    fn vectored_io_spans_pages_and_regions() {
        let dir = temp_dir("vectored");
        let disk = FileDisk::create(&dir.join("v.img"), 1 << 20).unwrap();
        let mem = guest();
        let pattern: Vec<u8> = (0..0x5000u32).map(|i| (i * 7 % 251) as u8).collect();
        // 0x3100..0x6100 crosses the 0x4000 region boundary; 0x10000..0x12000 is another region.
        let ranges = [(0x3100u64, 0x3000u64), (0x10000, 0x2000)];
        let mut at = 0;
        for (gpa, len) in ranges {
            guest_memory::write(&mem, gpa, &pattern[at..at + len as usize]).unwrap();
            at += len as usize;
        }
        let mut storage = IovecStorage::new(4);
        let mut bufs = storage.buffers();
        for (gpa, len) in ranges {
            bufs.push_guest(&mem, gpa, len).unwrap();
        }
        assert_eq!((bufs.len(), bufs.segments()), (0x5000, 3));
        disk.write_vectored(8192, &bufs, false).unwrap();
        let mut on_disk = vec![0u8; 0x5000];
        disk.read_at(8192, &mut on_disk).unwrap();
        assert_eq!(on_disk, pattern);
        // Back into guest memory shifted by 512 bytes on disk.
        disk.read_vectored(8192 - 512, &bufs).unwrap();
        let mut first = vec![0u8; 0x3000];
        guest_memory::read(&mem, 0x3100, &mut first).unwrap();
        assert_eq!(&first[..512], &[0u8; 512][..]);
        assert_eq!(&first[512..], &pattern[..0x3000 - 512]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A buffer list that cannot be built (part of a range outside RAM) fails before any I/O.
    #[test]
    fn a_range_outside_ram_is_refused_as_a_whole() {
        let mem = guest();
        let mut storage = IovecStorage::new(4);
        let mut bufs = storage.buffers();
        bufs.push_guest(&mem, 0x1000, 0x1000).unwrap();
        // 0x7000..0x9000 runs off the second region into the hole.
        let err = bufs.push_guest(&mem, 0x7000, 0x2000).unwrap_err();
        assert_eq!((err.gpa, err.len), (0x7000, 0x2000));
        assert_eq!(
            (bufs.len(), bufs.segments()),
            (0x1000, 1),
            "nothing of it pushed"
        );
        assert!(bufs.push_guest(&mem, u64::MAX - 10, 20).is_err());
    }

    #[test]
    fn direct_io_works_on_aligned_guest_pages() {
        let dir = temp_dir("direct");
        let path = dir.join("d.img");
        drop(FileDisk::create(&path, 1 << 20).unwrap());
        let disk = match FileDisk::open(
            &path,
            FileDiskOptions {
                read_only: false,
                direct: true,
            },
        ) {
            Ok(d) => d,
            Err(e) => {
                // tmpfs and some overlay file systems refuse O_DIRECT.
                eprintln!("skipping: O_DIRECT not supported here: {e:?}");
                std::fs::remove_dir_all(&dir).unwrap();
                return;
            }
        };
        let mem = guest();
        guest_memory::write(&mem, 0x2000, &[0x3C; 0x3000]).unwrap();
        let mut storage = IovecStorage::new(2);
        let mut bufs = storage.buffers();
        bufs.push_guest(&mem, 0x2000, 0x3000).unwrap();
        disk.write_vectored(4096, &bufs, true).unwrap();
        let mut bufs = storage.buffers();
        bufs.push_guest(&mem, 0x10000, 0x2000).unwrap();
        disk.read_vectored(4096 + 0x1000, &bufs).unwrap();
        let mut back = vec![0u8; 0x2000];
        guest_memory::read(&mem, 0x10000, &mut back).unwrap();
        assert_eq!(back, vec![0x3C; 0x2000]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn failing_sync(_: &File) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EIO))
    }

    #[test]
    fn a_failed_flush_is_never_forgotten() {
        let dir = temp_dir("flush");
        let mut disk = FileDisk::create(&dir.join("f.img"), 1 << 20).unwrap();
        disk.flush().unwrap();
        disk.sync_data = failing_sync;
        assert!(matches!(disk.flush(), Err(DiskError::Io(_))));
        // The device behind it recovers; the lost writeback does not.
        disk.sync_data = File::sync_data;
        for _ in 0..3 {
            assert!(matches!(disk.flush(), Err(DiskError::EarlierFlushFailed)));
        }
        assert!(matches!(
            disk.write_at(0, &[1; 512], true),
            Err(DiskError::EarlierFlushFailed)
        ));
        // Plain writes and reads still work.
        disk.write_at(512, &[2; 512], false).unwrap();
        let mut b = [0u8; 512];
        disk.read_at(512, &mut b).unwrap();
        assert_eq!(b, [2; 512]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_fua_write_fails_later_flushes() {
        let dir = temp_dir("fua");
        let mut disk = FileDisk::create(&dir.join("f.img"), 1 << 20).unwrap();
        disk.sync_data = failing_sync;
        assert!(matches!(
            disk.write_at(0, &[1; 512], true),
            Err(DiskError::Io(_))
        ));
        disk.sync_data = File::sync_data;
        assert!(matches!(disk.flush(), Err(DiskError::EarlierFlushFailed)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
