//! One virtio-blk request (virtio 1.x §5.2.6), from a descriptor chain to a status byte, without any
//! assumption about how the driver framed it: the device-readable descriptors form one byte stream
//! (16-byte header `{u32 type, u32 reserved, u64 sector}`, then OUT data), the device-writable ones another
//! (IN data, then the final status byte). Data moves straight between the disk backend and the guest's
//! buffers: the data part of the stream becomes [`IoBuffers`] after every piece of it has been checked
//! to be guest RAM (no I/O happens otherwise); the header and status byte are checked copies. Every
//! disk range goes through the backend's checks; a malformed chain gets IOERR when there is a writable
//! byte to report it in, and is otherwise completed with length 0. The segment lists and iovecs live
//! in [`RequestStorage`], reused from chain to chain.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, GuestAddress};

use crate::backend::{check_range, BlockBackend, IoBuffers, IovecStorage, SECTOR_SIZE};
use crate::guest_memory::{self, GuestMemoryMmap};

/// Request types.
pub mod req_type {
    /// Read from the disk into the device-writable buffers.
    pub const IN: u32 = 0;
    /// Write the device-readable buffers to the disk.
    pub const OUT: u32 = 1;
    /// Make completed writes durable.
    pub const FLUSH: u32 = 4;
    /// Report the device id string (up to 20 bytes).
    pub const GET_ID: u32 = 8;
}

/// Status byte values.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// The request failed (bad range, bad chain, backend error, read-only disk).
    pub const IOERR: u8 = 1;
    /// The request type is not supported.
    pub const UNSUPP: u8 = 2;
}

/// Size of the request header.
pub const HEADER_LEN: usize = 16;
/// Longest device id string.
pub const ID_LEN: usize = 20;
/// Most data segments one request may use (advertised as `seg_max`).
pub const SEG_MAX: u32 = 126;
/// Largest data transfer of one request (advertised as `size_max` per segment times `seg_max` bounds it too).
pub const MAX_DATA_BYTES: usize = 4 << 20;

/// What processing a chain did, for accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Bytes written to the device-writable buffers (the used-ring length).
    pub used_len: u32,
    /// The status reported (None if the chain had nowhere to put it).
    pub status: Option<u8>,
    /// The request type, if the header could be read.
    pub kind: Option<u32>,
}

/// A run of guest memory taken from one descriptor.
#[derive(Debug, Clone, Copy)]
struct Segment {
    addr: GuestAddress,
    len: usize,
}

/// A byte stream over segments.
#[derive(Debug, Default)]
struct Stream {
    segs: Vec<Segment>,
    len: usize,
}

impl Stream {
    fn clear(&mut self) {
        self.segs.clear();
        self.len = 0;
    }

    fn push(&mut self, addr: GuestAddress, len: u32) {
        if len > 0 {
            self.segs.push(Segment {
                addr,
                len: len as usize,
            });
            self.len = self.len.saturating_add(len as usize);
        }
    }

    /// Visit the pieces of `[offset, offset + len)` as (guest address, range in the caller's buffer).
    fn for_each_piece(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
    ) -> bool {
        let (mut skip, mut done) = (offset, 0);
        for seg in &self.segs {
            if done == len {
                break;
            }
            if skip >= seg.len {
                skip -= seg.len;
                continue;
            }
            let n = (seg.len - skip).min(len - done);
            let Some(addr) = seg.addr.checked_add(skip as u64) else {
                return false;
            };
            if !f(addr, done..done + n) {
                return false;
            }
            done += n;
            skip = 0;
        }
        done == len
    }

    fn read(&self, mem: &GuestMemoryMmap, offset: usize, buf: &mut [u8]) -> bool {
        let len = buf.len();
        self.for_each_piece(offset, len, |addr, r| {
            guest_memory::read(mem, addr.raw_value(), &mut buf[r]).is_ok()
        })
    }

    fn write(&self, mem: &GuestMemoryMmap, offset: usize, buf: &[u8]) -> bool {
        self.for_each_piece(offset, buf.len(), |addr, r| {
            guest_memory::write(mem, addr.raw_value(), &buf[r]).is_ok()
        })
    }

    /// Pushes the guest memory of `[offset, offset + len)` of the stream into `bufs`; false if any
    /// piece is not guest RAM.
    fn push_to<'m>(
        &self,
        mem: &'m GuestMemoryMmap,
        offset: usize,
        len: usize,
        bufs: &mut IoBuffers<'m>,
    ) -> bool {
        self.for_each_piece(offset, len, |addr, r| {
            bufs.push_guest(mem, addr.raw_value(), r.len() as u64)
                .is_ok()
        })
    }
}

/// What processing a chain reuses: its two byte streams and the iovecs of its data.
#[derive(Debug)]
pub struct RequestStorage {
    readable: Stream,
    writable: Stream,
    iovecs: IovecStorage,
}

impl Default for RequestStorage {
    fn default() -> Self {
        Self {
            readable: Stream::default(),
            writable: Stream::default(),
            iovecs: IovecStorage::new(SEG_MAX as usize + 2),
        }
    }
}

/// Processes one descriptor chain against `disk` and writes its status byte.
///
/// `descriptors` is the chain as the queue yields it; `truncated` says the chain did not end properly
/// (it still pointed to a next descriptor when the queue stopped walking it: a loop or a bad index).
pub fn process(
    mem: &GuestMemoryMmap,
    descriptors: impl IntoIterator<Item = Descriptor>,
    disk: &dyn BlockBackend,
    id: &[u8; ID_LEN],
    storage: &mut RequestStorage,
) -> Completion {
    let RequestStorage {
        readable,
        writable,
        iovecs,
    } = storage;
    readable.clear();
    writable.clear();
    let mut malformed = false;
    let mut count = 0u32;
    let mut ended = false;
    for d in descriptors {
        count += 1;
        if count > SEG_MAX + 2 {
            malformed = true;
            break;
        }
        if d.is_write_only() {
            writable.push(d.addr(), d.len());
        } else if writable.len > 0 {
            // Readable buffers after writable ones are forbidden (§2.7.4.2).
            malformed = true;
        } else {
            readable.push(d.addr(), d.len());
        }
        ended = !d.has_next();
    }
    malformed |= !ended;
    if writable.len == 0 {
        return Completion {
            used_len: 0,
            status: None,
            kind: None,
        };
    }
    let status_at = writable.len - 1;
    let mut header = [0u8; HEADER_LEN];
    let kind = if !malformed && readable.len >= HEADER_LEN && readable.read(mem, 0, &mut header) {
        Some(u32::from_le_bytes([
            header[0], header[1], header[2], header[3],
        ]))
    } else {
        None
    };
    let sector = u64::from_le_bytes([
        header[8], header[9], header[10], header[11], header[12], header[13], header[14],
        header[15],
    ]);
    let (status, data_written) = match kind {
        None => (status::IOERR, 0),
        Some(k) => execute(
            mem, k, sector, readable, writable, status_at, disk, id, iovecs,
        ),
    };
    let used_len = if writable.write(mem, status_at, &[status]) {
        data_written + 1
    } else {
        data_written
    };
    Completion {
        used_len: used_len as u32,
        status: Some(status),
        kind,
    }
}

#[allow(clippy::too_many_arguments)]
fn execute(
    mem: &GuestMemoryMmap,
    kind: u32,
    sector: u64,
    readable: &Stream,
    writable: &Stream,
    data_in_len: usize,
    disk: &dyn BlockBackend,
    id: &[u8; ID_LEN],
    iovecs: &mut IovecStorage,
) -> (u8, usize) {
    let range_ok = |len: usize| {
        len.is_multiple_of(SECTOR_SIZE as usize)
            && len <= MAX_DATA_BYTES
            && sector
                .checked_mul(SECTOR_SIZE)
                .is_some_and(|off| check_range(off, len as u64, disk.capacity()).is_ok())
    };
    match kind {
        req_type::IN => {
            if !range_ok(data_in_len) {
                return (status::IOERR, 0);
            }
            let mut bufs = iovecs.buffers();
            if !writable.push_to(mem, 0, data_in_len, &mut bufs) {
                return (status::IOERR, 0);
            }
            if disk.read_vectored(sector * SECTOR_SIZE, &bufs).is_err() {
                return (status::IOERR, 0);
            }
            (status::OK, data_in_len)
        }
        req_type::OUT => {
            let len = readable.len - HEADER_LEN;
            if disk.read_only() || !range_ok(len) {
                return (status::IOERR, 0);
            }
            let mut bufs = iovecs.buffers();
            if !readable.push_to(mem, HEADER_LEN, len, &mut bufs) {
                return (status::IOERR, 0);
            }
            match disk.write_vectored(sector * SECTOR_SIZE, &bufs, false) {
                Ok(()) => (status::OK, 0),
                Err(_) => (status::IOERR, 0),
            }
        }
        req_type::FLUSH => match disk.flush() {
            Ok(()) => (status::OK, 0),
            Err(_) => (status::IOERR, 0),
        },
        req_type::GET_ID => {
            let n = data_in_len.min(ID_LEN);
            if writable.write(mem, 0, &id[..n]) {
                (status::OK, n)
            } else {
                (status::IOERR, 0)
            }
        }
        _ => (status::UNSUPP, 0),
    }
}
