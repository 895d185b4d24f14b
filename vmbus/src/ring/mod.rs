//! The Hyper-V VMBus ring buffer, byte-compatible with Linux `hv_vmbus`.
//!
//! A ring is one 4 KiB control page followed by a data area. The control page holds
//! `write_index` (0x00), `read_index` (0x04), `interrupt_mask` (0x08), `pending_send_sz` (0x0C)
//! and `feature_bits` (0x40, bit 0 = pending-send-size supported). Indices are byte offsets into
//! the data area; the ring is empty when they are equal and is never filled completely.
//!
//! This module owns the two halves, [`RingProducer`] and [`RingConsumer`], the memory ordering
//! between them and the signalling decisions, which are returned as plain values (`signal`
//! fields) for the caller to act on. The peer is untrusted: every index and descriptor field it
//! controls is read once per operation, validated, and a violation yields a typed
//! [`RingError`] and permanently fails that half. No peer-provided value can cause a panic,
//! an out-of-range access, an overflow or an unbounded loop.

use core::sync::atomic::Ordering;

use crate::mem::{CircularRegion, RingMemory, PAGE_SIZE};
use crate::packet::{PacketDescriptor, PacketError, DESCRIPTOR_SIZE};

mod consumer;
mod producer;

pub use consumer::{ConsumerStats, Drained, PacketInfo, ReadPacket, RingConsumer};
pub(crate) use producer::GATHER_PARTS;
pub use producer::{PacketWriter, ProducerStats, RingProducer, Written};

/// Size of the control page that precedes the data area.
pub const CONTROL_PAGE_SIZE: usize = PAGE_SIZE;
/// Byte offset of `write_index` in the control page.
pub const WRITE_INDEX_OFFSET: usize = 0x00;
/// Byte offset of `read_index` in the control page.
pub const READ_INDEX_OFFSET: usize = 0x04;
/// Byte offset of `interrupt_mask` in the control page.
pub const INTERRUPT_MASK_OFFSET: usize = 0x08;
/// Byte offset of `pending_send_sz` in the control page.
pub const PENDING_SEND_SIZE_OFFSET: usize = 0x0C;
/// Byte offset of `feature_bits` in the control page.
pub const FEATURE_BITS_OFFSET: usize = 0x40;
/// `feature_bits` bit 0: the reader honours `pending_send_sz`.
pub const FEATURE_PENDING_SEND_SIZE: u32 = 1;
/// Every packet is followed by this 8-byte trailer (`(old_write_index as u64) << 32`).
pub const PACKET_TRAILER_SIZE: usize = 8;
/// Smallest data area accepted (a descriptor plus trailer must fit with room to spare).
pub const MIN_DATA_SIZE: usize = 32;
/// Largest data area accepted (indices are `u32`; keeping below 2^31 keeps all sums in range).
pub const MAX_DATA_SIZE: usize = 1 << 31;

/// Errors of the ring halves.
///
/// Variants documented as *fatal* are protocol violations by the peer; they mark the half as
/// failed and every later call returns [`RingError::Failed`]. The others are local conditions
/// that leave the ring usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// The memory cannot hold a control page plus a valid data area (construction only).
    #[error("ring memory of {len:#x} bytes is not a 4 KiB control page plus a data area of 32..2^31 bytes, a multiple of 8")]
    BadLayout {
        /// Length of the memory offered.
        len: usize,
    },
    /// Fatal: the peer's write index is out of range or not 8-byte aligned.
    #[error("peer's write index {index:#x} is invalid for a data area of {size:#x} bytes")]
    BadWriteIndex {
        /// The value read.
        index: u32,
        /// Data area size.
        size: u32,
    },
    /// Fatal: the peer's read index is out of range or not 8-byte aligned.
    #[error("peer's read index {index:#x} is invalid for a data area of {size:#x} bytes")]
    BadReadIndex {
        /// The value read.
        index: u32,
        /// Data area size.
        size: u32,
    },
    /// Fatal: data is available but less than a descriptor plus trailer.
    #[error("only {available} bytes published, less than a descriptor and trailer")]
    Truncated {
        /// Bytes between read and write index.
        available: u32,
    },
    /// Fatal: the descriptor's `len8` is shorter than the descriptor itself (or zero).
    #[error("packet length {len} is shorter than its 16-byte descriptor")]
    PacketTooShort {
        /// `len8 * 8`.
        len: u32,
    },
    /// Fatal: `len8 * 8` plus the trailer exceeds the published bytes.
    #[error("packet length {len} plus trailer exceeds the {available} bytes published")]
    PacketTooLong {
        /// `len8 * 8`.
        len: u32,
        /// Bytes between read and write index.
        available: u32,
    },
    /// Fatal: `offset8 * 8` is inside the descriptor or beyond the packet.
    #[error("packet data offset {offset} is outside 16..={len}")]
    BadDataOffset {
        /// `offset8 * 8`.
        offset: u32,
        /// `len8 * 8`.
        len: u32,
    },
    /// This half failed earlier after a fatal error.
    #[error("ring half failed earlier after a protocol violation by the peer")]
    Failed,
    /// Not enough free space now; `pending_send_sz` was set if the reader supports it.
    #[error("ring full: {needed} bytes needed")]
    Full {
        /// Bytes the write needs (packet, padding, trailer).
        needed: u32,
    },
    /// The packet can never fit this ring (or exceeds the 16-bit `len8`/`offset8` fields).
    #[error("packet of {len} bytes can never be written to this ring")]
    PacketTooLarge {
        /// Requested length.
        len: usize,
    },
    /// The caller's buffer cannot hold the next packet; nothing was consumed.
    #[error("buffer of {len} bytes too small for a {needed}-byte packet")]
    BufferTooSmall {
        /// Packet length.
        needed: usize,
        /// Buffer length.
        len: usize,
    },
    /// The caller asked to write a packet that cannot be encoded (nothing was written).
    #[error("invalid outgoing packet: {0}")]
    InvalidPacket(PacketError),
    /// A [`PacketWriter`] was committed with a different number of bytes than reserved.
    #[error("packet writer got {written} bytes, {reserved} reserved")]
    LengthMismatch {
        /// Bytes reserved.
        reserved: usize,
        /// Bytes put.
        written: usize,
    },
}

impl RingError {
    /// Whether this error is a peer protocol violation that fails the ring half.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::BadWriteIndex { .. }
                | Self::BadReadIndex { .. }
                | Self::Truncated { .. }
                | Self::PacketTooShort { .. }
                | Self::PacketTooLong { .. }
                | Self::BadDataOffset { .. }
                | Self::Failed
        )
    }
}

/// Validates the memory layout and returns the data area size.
fn data_size_of<M: RingMemory>(mem: &M) -> Result<u32, RingError> {
    let len = mem.len();
    let bad = RingError::BadLayout { len };
    let data = len.checked_sub(CONTROL_PAGE_SIZE).ok_or(bad)?;
    if !(MIN_DATA_SIZE..=MAX_DATA_SIZE).contains(&data) || data % 8 != 0 {
        return Err(bad);
    }
    u32::try_from(data).map_err(|_| bad)
}

/// Zeroes the control fields and advertises `feature_bits` (normally
/// [`FEATURE_PENDING_SEND_SIZE`]). Done once by the ring's owner (the guest) before sharing it.
pub fn initialize_control_page<M: RingMemory>(mem: &M, feature_bits: u32) -> Result<(), RingError> {
    data_size_of(mem)?;
    mem.write_bytes(0, &[0u8; CONTROL_PAGE_SIZE]);
    mem.store_u32(FEATURE_BITS_OFFSET, feature_bits, Ordering::Release);
    Ok(())
}

/// A racy snapshot of the control fields, for diagnostics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlSnapshot {
    /// `write_index`.
    pub write_index: u32,
    /// `read_index`.
    pub read_index: u32,
    /// `interrupt_mask`.
    pub interrupt_mask: u32,
    /// `pending_send_sz`.
    pub pending_send_size: u32,
    /// `feature_bits`.
    pub feature_bits: u32,
}

impl ControlSnapshot {
    /// Reads the control fields of `mem` (each atomically, not as a whole).
    pub fn read<M: RingMemory>(mem: &M) -> Self {
        let load = |off| mem.load_u32(off, Ordering::Acquire);
        Self {
            write_index: load(WRITE_INDEX_OFFSET),
            read_index: load(READ_INDEX_OFFSET),
            interrupt_mask: load(INTERRUPT_MASK_OFFSET),
            pending_send_size: load(PENDING_SEND_SIZE_OFFSET),
            feature_bits: load(FEATURE_BITS_OFFSET),
        }
    }
}

#[inline]
fn index_valid(index: u32, size: u32) -> bool {
    index < size && index.is_multiple_of(8)
}

/// Bytes from `from` forward to `to` in a ring of `size` (both `< size`).
#[inline]
fn distance(from: u32, to: u32, size: u32) -> u32 {
    if to >= from {
        to - from
    } else {
        size - from + to
    }
}

/// `(a + b) mod size` for `a < size`, `b <= size` (no overflow: size <= 2^31).
#[inline]
fn advance(a: u32, b: u32, size: u32) -> u32 {
    let s = a + b;
    if s >= size {
        s - size
    } else {
        s
    }
}

#[inline]
fn round_up8(n: usize) -> usize {
    (n + 7) & !7
}

/// The data area of a ring whose data area is `size` bytes, for the wrapped copies.
#[inline]
fn data_area(size: u32) -> CircularRegion {
    CircularRegion {
        start: CONTROL_PAGE_SIZE,
        size: size as usize,
    }
}

/// Copies `dst.len() <= size` bytes starting at data offset `pos < size`, wrapping.
#[inline]
fn read_wrapping<M: RingMemory>(mem: &M, size: u32, pos: u32, dst: &mut [u8]) {
    mem.read_wrapped(data_area(size), pos as usize, dst);
}

/// Writes the concatenation of `parts` (at most `size` bytes) starting at data offset
/// `pos < size`, wrapping.
#[inline]
fn write_wrapping_gather<M: RingMemory>(mem: &M, size: u32, pos: u32, parts: &[&[u8]]) {
    mem.write_wrapped(data_area(size), pos as usize, parts);
}

/// Writes `src.len() <= size` bytes starting at data offset `pos < size`, wrapping.
#[cfg(test)]
fn write_wrapping<M: RingMemory>(mem: &M, size: u32, pos: u32, src: &[u8]) {
    write_wrapping_gather(mem, size, pos, &[src]);
}

#[cfg(test)]
mod access_tests;
#[cfg(test)]
mod tests;
