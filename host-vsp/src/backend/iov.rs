//! The buffers of one disk I/O as an iovec array — the audited edge between safe device models and
//! the host's vectored I/O, and the only `unsafe` on the disk data path.
//!
//! A device model pushes the host views of its buffers — vm-memory [`VolatileSlice`]s of guest pages
//! after its whole-range checks, or its own host buffer — into [`IoBuffers`], built on per-worker
//! [`IovecStorage`] that is reused across requests (no allocation once it has grown to the largest
//! request). Backends then move data straight between the disk and those buffers: `preadv`/`pwritev`
//! for files ([`IoBuffers::read_from_file`], [`IoBuffers::write_to_file`]: continued after short
//! transfers, retried on `EINTR`), one volatile copy for memory ([`IoBuffers::copy_from_host`],
//! [`IoBuffers::copy_to_host`]). The iovecs never outlive the buffers: `IoBuffers<'a>` borrows
//! every buffer pushed into it for `'a`.

use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;

use vm_memory::VolatileSlice;

use super::DiskError;
use crate::guest_memory::{self, GuestMemoryError, GuestMemoryMmap};

/// Most iovecs one `preadv`/`pwritev` call takes (Linux `UIO_MAXIOV`).
const IOV_MAX: usize = libc::UIO_MAXIOV as usize;

const EMPTY: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

/// Reusable storage for the iovecs of one request at a time (one per worker or executor thread).
#[derive(Debug)]
pub struct IovecStorage {
    iov: Vec<libc::iovec>,
}

// SAFETY: the storage holds raw pointers only between `IovecStorage::buffers` and the end of the
// `IoBuffers` borrow that filled them, and nothing reads them outside that borrow (every use goes
// through `IoBuffers`, which is tied to the buffers' lifetime); moving the empty or stale vector to
// another thread cannot reach the memory behind them.
unsafe impl Send for IovecStorage {}
// SAFETY: `&IovecStorage` gives no access to the pointers at all (filling it needs `&mut`).
unsafe impl Sync for IovecStorage {}

impl IovecStorage {
    /// Storage for requests of up to `segments` buffers without growing.
    pub fn new(segments: usize) -> Self {
        Self {
            iov: Vec::with_capacity(segments),
        }
    }

    /// An empty buffer list for the next request (forgetting the previous one).
    pub fn buffers(&mut self) -> IoBuffers<'_> {
        self.iov.clear();
        IoBuffers {
            iov: &mut self.iov,
            len: 0,
            writable: true,
            _buffers: PhantomData,
        }
    }
}

/// The host memory of one disk I/O, in transfer order. See the module documentation.
#[derive(Debug)]
pub struct IoBuffers<'a> {
    iov: &'a mut Vec<libc::iovec>,
    len: u64,
    writable: bool,
    _buffers: PhantomData<VolatileSlice<'a>>,
}

impl<'a> IoBuffers<'a> {
    /// Appends writable memory (a guest range or a device's own buffer via
    /// `VolatileSlice::from(&mut [u8])`).
    pub fn push(&mut self, slice: VolatileSlice<'a>) {
        if !slice.is_empty() {
            self.append(slice.ptr_guard_mut().as_ptr(), slice.len());
        }
    }

    /// Appends the guest range `[gpa, gpa + len)` (one buffer per region it crosses) after checking
    /// that all of it is guest RAM; on error nothing of the range is appended.
    pub fn push_guest(
        &mut self,
        mem: &'a GuestMemoryMmap,
        gpa: u64,
        len: u64,
    ) -> Result<(), GuestMemoryError> {
        // One walk over the regions: push as we go, take it all back if the range leaves RAM.
        let (segments, bytes) = (self.iov.len(), self.len);
        let pushed = guest_memory::for_each_slice_unchecked(mem, gpa, len, |s| {
            self.push(s);
            Ok::<(), GuestMemoryError>(())
        });
        if pushed.is_err() {
            self.iov.truncate(segments);
            self.len = bytes;
        }
        pushed
    }

    /// Appends a host buffer that may only be read (the source of a write): reading from the disk
    /// into these buffers is refused.
    pub fn push_readonly(&mut self, buf: &'a [u8]) {
        self.writable = false;
        if !buf.is_empty() {
            self.append(buf.as_ptr().cast_mut(), buf.len());
        }
    }

    fn append(&mut self, base: *mut u8, len: usize) {
        self.iov.push(libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        });
        self.len += len as u64;
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of separate buffers.
    pub fn segments(&self) -> usize {
        self.iov.len()
    }

    fn check_writable(&self) -> Result<(), DiskError> {
        if self.writable {
            Ok(())
        } else {
            Err(DiskError::ReadOnlyBuffers)
        }
    }

    /// The buffers overlapping `[pos, pos + len)` of the transfer, as volatile slices.
    fn for_each_slice(
        &self,
        pos: u64,
        len: usize,
        mut f: impl FnMut(usize, VolatileSlice<'_>),
    ) -> Result<(), DiskError> {
        let fits = pos
            .checked_add(len as u64)
            .is_some_and(|end| end <= self.len);
        if !fits {
            return Err(DiskError::BufferRange {
                pos,
                len: len as u64,
                buffers: self.len,
            });
        }
        let (mut skip, mut done) = (pos, 0usize);
        for v in self.iov.iter() {
            if done == len {
                break;
            }
            if skip >= v.iov_len as u64 {
                skip -= v.iov_len as u64;
                continue;
            }
            let start = skip as usize;
            let n = (v.iov_len - start).min(len - done);
            // SAFETY: `v` was built in `push`/`push_readonly` from a buffer borrowed for `'a`, which
            // `self` still holds, so `iov_base..iov_base + iov_len` is live host memory, and
            // `start + n <= iov_len`. Writes through the slice only happen for writable buffers
            // (callers check `writable`). Guest memory is accessed only through volatile copies.
            let slice = unsafe { VolatileSlice::new(v.iov_base.cast::<u8>().add(start), n) };
            f(done, slice);
            done += n;
            skip = 0;
        }
        Ok(())
    }

    /// Copies `src` into the buffers at transfer position `pos` (a disk read served from memory).
    pub fn copy_from_host(&self, pos: u64, src: &[u8]) -> Result<(), DiskError> {
        self.check_writable()?;
        self.for_each_slice(pos, src.len(), |at, s| s.copy_from(&src[at..at + s.len()]))
    }

    /// Copies the buffers at transfer position `pos` into `dst` (a disk write into memory).
    pub fn copy_to_host(&self, pos: u64, dst: &mut [u8]) -> Result<(), DiskError> {
        self.for_each_slice(pos, dst.len(), |at, s| {
            s.copy_to(&mut dst[at..at + s.len()]);
        })
    }

    /// Fills all the buffers from `file` at `offset` with `preadv`.
    pub fn read_from_file(&self, file: &File, offset: u64) -> Result<(), DiskError> {
        self.check_writable()?;
        let fd = file.as_raw_fd();
        transfer_all(
            self.iov,
            offset,
            io::ErrorKind::UnexpectedEof,
            |batch, at| {
                let at = file_offset(at)?;
                // SAFETY: every iovec in `batch` is (a suffix of) one built from a writable buffer
                // borrowed for `'a` (checked above), so the kernel writes only into live host memory
                // owned by those buffers; `batch.len() <= IOV_MAX`.
                let rc =
                    unsafe { libc::preadv(fd, batch.as_ptr(), batch.len() as libc::c_int, at) };
                syscall_result(rc)
            },
        )
        .map_err(DiskError::Io)
    }

    /// Writes all the buffers to `file` at `offset` with `pwritev`.
    pub fn write_to_file(&self, file: &File, offset: u64) -> Result<(), DiskError> {
        let fd = file.as_raw_fd();
        transfer_all(self.iov, offset, io::ErrorKind::WriteZero, |batch, at| {
            let at = file_offset(at)?;
            // SAFETY: every iovec in `batch` is (a suffix of) one built from a buffer borrowed for
            // `'a`, so the kernel only reads live host memory; `batch.len() <= IOV_MAX`.
            let rc = unsafe { libc::pwritev(fd, batch.as_ptr(), batch.len() as libc::c_int, at) };
            syscall_result(rc)
        })
        .map_err(DiskError::Io)
    }
}

fn file_offset(at: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(at).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn syscall_result(rc: isize) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Moves every byte of `iov` with `op`, which transfers a prefix of the iovecs it is given at a file
/// offset and returns the bytes it moved (as `preadv`/`pwritev` do): retried on `EINTR`, continued
/// after short transfers (a partly done iovec is finished through a one-element array pointing at
/// its rest), failing with `zero` if `op` moves nothing.
fn transfer_all(
    iov: &[libc::iovec],
    mut offset: u64,
    zero: io::ErrorKind,
    mut op: impl FnMut(&[libc::iovec], u64) -> io::Result<usize>,
) -> io::Result<()> {
    let (mut i, mut skip) = (0usize, 0usize);
    let mut rest = [EMPTY];
    while i < iov.len() {
        let batch: &[libc::iovec] = if skip == 0 {
            &iov[i..iov.len().min(i + IOV_MAX)]
        } else {
            rest[0] = libc::iovec {
                iov_base: iov[i].iov_base.cast::<u8>().wrapping_add(skip).cast(),
                iov_len: iov[i].iov_len - skip,
            };
            &rest
        };
        let asked: usize = batch.iter().map(|v| v.iov_len).sum();
        let mut n = match op(batch, offset) {
            Ok(0) => return Err(zero.into()),
            Ok(n) if n > asked => return Err(io::Error::other("transfer beyond the buffers")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        offset += n as u64;
        while n > 0 {
            let left = iov[i].iov_len - skip;
            if n >= left {
                n -= left;
                i += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn host_buffers_round_trip_at_any_position() {
        let (mut a, mut b) = ([0u8; 5], [0u8; 7]);
        let mut storage = IovecStorage::new(2);
        let mut bufs = storage.buffers();
        bufs.push(VolatileSlice::from(&mut a[..]));
        bufs.push(VolatileSlice::from(&mut b[..]));
        assert_eq!((bufs.len(), bufs.segments()), (12, 2));
        bufs.copy_from_host(3, &[1, 2, 3, 4, 5]).unwrap();
        let mut back = [0u8; 12];
        bufs.copy_to_host(0, &mut back).unwrap();
        assert_eq!(back, [0, 0, 0, 1, 2, 3, 4, 5, 0, 0, 0, 0]);
        assert!(matches!(
            bufs.copy_from_host(8, &[0; 5]),
            Err(DiskError::BufferRange { pos: 8, len: 5, .. })
        ));
        assert_eq!((a, b), ([0, 0, 0, 1, 2], [3, 4, 5, 0, 0, 0, 0]));
    }

    #[test]
    fn readonly_buffers_are_never_written() {
        let data = [7u8; 16];
        let mut storage = IovecStorage::new(1);
        let mut bufs = storage.buffers();
        bufs.push_readonly(&data);
        assert!(matches!(
            bufs.copy_from_host(0, &[0; 4]),
            Err(DiskError::ReadOnlyBuffers)
        ));
        let file = tempfile::tempfile().unwrap();
        assert!(matches!(
            bufs.read_from_file(&file, 0),
            Err(DiskError::ReadOnlyBuffers)
        ));
        bufs.write_to_file(&file, 0).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 16);
    }

    /// `op` moving at most `step` bytes per call and failing with EINTR every third call: every byte
    /// of every iovec is moved exactly once, in order, at the right file offset.
    #[test]
    fn short_transfers_and_eintr_are_continued() {
        let mut bufs = [vec![0u8; 10], vec![0u8; 1], vec![0u8; 4096], vec![0u8; 3]];
        let iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let expected: Vec<usize> = iov
            .iter()
            .flat_map(|v| (0..v.iov_len).map(move |k| v.iov_base as usize + k))
            .collect();
        for step in [1usize, 3, 7, 4096, 1 << 20] {
            let (mut calls, mut moved, mut offsets) = (0, Vec::new(), Vec::new());
            transfer_all(&iov, 1000, io::ErrorKind::UnexpectedEof, |batch, at| {
                calls += 1;
                if calls % 3 == 0 {
                    return Err(io::Error::from_raw_os_error(libc::EINTR));
                }
                let mut n = 0;
                for v in batch {
                    let k = v.iov_len.min(step - n);
                    moved.extend((0..k).map(|j| v.iov_base as usize + j));
                    n += k;
                    if n == step {
                        break;
                    }
                }
                offsets.push((at, n));
                Ok(n)
            })
            .unwrap();
            assert_eq!(moved, expected, "step {step}");
            let mut at = 1000;
            for (o, n) in offsets {
                assert_eq!(o, at, "step {step}");
                at += n as u64;
            }
            assert_eq!(at, 1000 + expected.len() as u64);
        }
    }

    #[test]
    fn a_transfer_that_stops_is_an_error() {
        let mut b = [0u8; 8];
        let iov = [libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        }];
        let mut first = true;
        let r = transfer_all(&iov, 0, io::ErrorKind::UnexpectedEof, |_, _| {
            Ok(if std::mem::take(&mut first) { 5 } else { 0 })
        });
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let r = transfer_all(&iov, 0, io::ErrorKind::WriteZero, |_, _| Ok(9));
        assert!(r.is_err(), "more than asked");
    }

    /// A file shorter than the request: preadv returns short, the rest reads 0 bytes — an error,
    /// with the bytes before the end delivered.
    #[test]
    fn short_read_from_a_file_at_its_end() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[0x42; 6000]).unwrap();
        let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
        let mut storage = IovecStorage::new(2);
        let mut bufs = storage.buffers();
        bufs.push(VolatileSlice::from(&mut a[..]));
        bufs.push(VolatileSlice::from(&mut b[..]));
        let err = bufs.read_from_file(&file, 0).unwrap_err();
        assert!(
            matches!(&err, DiskError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{err}"
        );
        assert_eq!(a, vec![0x42; 4096]);
        assert_eq!(&b[..6000 - 4096], &[0x42; 6000 - 4096][..]);
        assert!(b[6000 - 4096..].iter().all(|&x| x == 0));
    }
}
