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

use core::sync::atomic::{fence, Ordering};

use crate::mem::{RingMemory, PAGE_SIZE};
use crate::packet::{PacketDescriptor, PacketError, DESCRIPTOR_SIZE};

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

fn index_valid(index: u32, size: u32) -> bool {
    index < size && index.is_multiple_of(8)
}

/// Bytes from `from` forward to `to` in a ring of `size` (both `< size`).
fn distance(from: u32, to: u32, size: u32) -> u32 {
    if to >= from {
        to - from
    } else {
        size - from + to
    }
}

/// `(a + b) mod size` for `a < size`, `b <= size` (no overflow: size <= 2^31).
fn advance(a: u32, b: u32, size: u32) -> u32 {
    let s = a + b;
    if s >= size {
        s - size
    } else {
        s
    }
}

fn round_up8(n: usize) -> usize {
    (n + 7) & !7
}

/// Copies `dst.len() <= size` bytes starting at data offset `pos < size`, wrapping.
fn read_wrapping<M: RingMemory>(mem: &M, size: u32, pos: u32, dst: &mut [u8]) {
    let first = dst.len().min((size - pos) as usize);
    let (a, b) = dst.split_at_mut(first);
    mem.read_bytes(CONTROL_PAGE_SIZE + pos as usize, a);
    mem.read_bytes(CONTROL_PAGE_SIZE, b);
}

/// Writes `src.len() <= size` bytes starting at data offset `pos < size`, wrapping.
fn write_wrapping<M: RingMemory>(mem: &M, size: u32, pos: u32, src: &[u8]) {
    let first = src.len().min((size - pos) as usize);
    let (a, b) = src.split_at(first);
    mem.write_bytes(CONTROL_PAGE_SIZE + pos as usize, a);
    mem.write_bytes(CONTROL_PAGE_SIZE, b);
}

/// Counters kept by a [`RingProducer`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStats {
    /// Packets published.
    pub packets: u64,
    /// Packet bytes published (descriptor, headers and payload; no padding or trailer).
    pub bytes: u64,
    /// Writes after which the reader had to be signalled.
    pub signals: u64,
    /// Writes refused with [`RingError::Full`].
    pub full: u64,
}

/// Result of a successful write.
#[must_use = "the peer may need a signal"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The ring was empty before this write and the reader has not masked interrupts: signal it.
    pub signal: bool,
    /// Ring bytes consumed (packet, padding and trailer).
    pub ring_bytes: usize,
}

/// The writing half of a ring.
#[derive(Debug)]
pub struct RingProducer<M> {
    mem: M,
    size: u32,
    /// Our write index; the shared copy is only ever written, never trusted.
    write_index: u32,
    pending_set: bool,
    failed: bool,
    stats: ProducerStats,
}

impl<M: RingMemory> RingProducer<M> {
    /// Attaches to a ring, adopting its current `write_index` (validated).
    pub fn new(mem: M) -> Result<Self, RingError> {
        let size = data_size_of(&mem)?;
        let index = mem.load_u32(WRITE_INDEX_OFFSET, Ordering::Acquire);
        if !index_valid(index, size) {
            return Err(RingError::BadWriteIndex { index, size });
        }
        Ok(Self {
            mem,
            size,
            write_index: index,
            pending_set: false,
            failed: false,
            stats: Default::default(),
        })
    }

    /// Size of the data area in bytes.
    pub fn data_size(&self) -> usize {
        self.size as usize
    }

    /// Counters so far.
    pub fn stats(&self) -> ProducerStats {
        self.stats
    }

    /// Whether a fatal error has failed this half.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// The underlying memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    fn fail(&mut self, e: RingError) -> RingError {
        self.failed = true;
        e
    }

    fn load_read_index(&mut self) -> Result<u32, RingError> {
        // Acquire: the reader's copies out of the data area happen before we overwrite it.
        let index = self.mem.load_u32(READ_INDEX_OFFSET, Ordering::Acquire);
        if index_valid(index, self.size) {
            Ok(index)
        } else {
            Err(self.fail(RingError::BadReadIndex {
                index,
                size: self.size,
            }))
        }
    }

    fn free_space(&self, read: u32) -> u32 {
        self.size - distance(read, self.write_index, self.size)
    }

    /// Bytes of packet (before padding and trailer) that could be written right now.
    pub fn writable_len(&mut self) -> Result<usize, RingError> {
        if self.failed {
            return Err(RingError::Failed);
        }
        let read = self.load_read_index()?;
        // A write of `total` ring bytes needs free > total.
        let free = self.free_space(read) as usize;
        Ok(free.saturating_sub(PACKET_TRAILER_SIZE + 8) & !7)
    }

    /// Reserves ring space for a packet of `len` bytes, to be filled by [`PacketWriter::put`].
    ///
    /// On [`RingError::Full`], if the reader advertises [`FEATURE_PENDING_SEND_SIZE`], the
    /// producer has set `pending_send_sz` so the reader signals once enough space is free.
    pub fn reserve(&mut self, len: usize) -> Result<PacketWriter<'_, M>, RingError> {
        if self.failed {
            return Err(RingError::Failed);
        }
        let total = round_up8(len.min(MAX_DATA_SIZE)) + PACKET_TRAILER_SIZE;
        if len > MAX_DATA_SIZE || total >= self.size as usize {
            return Err(RingError::PacketTooLarge { len });
        }
        let total = total as u32;
        let read = self.load_read_index()?;
        if self.free_space(read) <= total {
            self.stats.full += 1;
            let features = self.mem.load_u32(FEATURE_BITS_OFFSET, Ordering::Relaxed);
            if features & FEATURE_PENDING_SEND_SIZE == 0 {
                return Err(RingError::Full { needed: total });
            }
            self.mem
                .store_u32(PENDING_SEND_SIZE_OFFSET, total, Ordering::Relaxed);
            self.pending_set = true;
            // Pairs with the reader's fence between publishing read_index and loading
            // pending_send_sz: either it sees our request, or we see its new read_index.
            fence(Ordering::SeqCst);
            let read = self.load_read_index()?;
            if self.free_space(read) <= total {
                return Err(RingError::Full { needed: total });
            }
            self.stats.full -= 1;
        }
        if self.pending_set {
            self.mem
                .store_u32(PENDING_SEND_SIZE_OFFSET, 0, Ordering::Relaxed);
            self.pending_set = false;
        }
        let start = self.write_index;
        Ok(PacketWriter {
            producer: self,
            start,
            reserved: len,
            written: 0,
        })
    }

    /// Writes one packet whose bytes are the concatenation of `parts` (gathered without an
    /// intermediate copy), padded to 8 bytes, followed by the trailer.
    pub fn write_raw(&mut self, parts: &[&[u8]]) -> Result<Written, RingError> {
        let len = parts.iter().fold(0usize, |n, p| n.saturating_add(p.len()));
        let mut w = self.reserve(len)?;
        for part in parts {
            w.put(part);
        }
        w.commit()
    }
}

/// Space reserved in a producer's ring for one packet; fill it with [`put`](Self::put) and
/// publish it with [`commit`](Self::commit). Dropping it publishes nothing.
#[derive(Debug)]
pub struct PacketWriter<'a, M: RingMemory> {
    producer: &'a mut RingProducer<M>,
    start: u32,
    reserved: usize,
    written: usize,
}

impl<M: RingMemory> PacketWriter<'_, M> {
    /// Appends `bytes` to the packet. Bytes beyond the reservation are dropped and make
    /// [`commit`](Self::commit) fail.
    pub fn put(&mut self, bytes: &[u8]) {
        let room = self.reserved.saturating_sub(self.written);
        if bytes.len() <= room {
            let p = &*self.producer;
            let pos = advance(self.start, self.written as u32, p.size);
            write_wrapping(&p.mem, p.size, pos, bytes);
        }
        self.written = self.written.saturating_add(bytes.len());
    }

    /// Bytes still expected before [`commit`](Self::commit).
    pub fn remaining(&self) -> usize {
        self.reserved.saturating_sub(self.written)
    }

    /// Pads, appends the trailer, publishes `write_index` and decides whether to signal.
    pub fn commit(self) -> Result<Written, RingError> {
        if self.written != self.reserved {
            return Err(RingError::LengthMismatch {
                reserved: self.reserved,
                written: self.written,
            });
        }
        let p = self.producer;
        let size = p.size;
        let old = self.start;
        let padded = round_up8(self.reserved);
        let mut tail = [0u8; 16];
        let pad = padded - self.reserved;
        tail[pad..pad + 8].copy_from_slice(&((old as u64) << 32).to_le_bytes());
        let pos = advance(old, self.reserved as u32, size);
        write_wrapping(&p.mem, size, pos, &tail[..pad + 8]);
        let total = (padded + PACKET_TRAILER_SIZE) as u32;
        let new = advance(old, total, size);
        // Release: the packet bytes are visible before the index that publishes them.
        p.mem.store_u32(WRITE_INDEX_OFFSET, new, Ordering::Release);
        p.write_index = new;
        // Full fence: our index store must be ordered before the loads of interrupt_mask and
        // read_index, pairing with the reader's unmask-then-recheck (Dekker style).
        fence(Ordering::SeqCst);
        let masked = p.mem.load_u32(INTERRUPT_MASK_OFFSET, Ordering::Acquire) != 0;
        // Only compared, never used to address memory, so it needs no validation.
        let signal = !masked && p.mem.load_u32(READ_INDEX_OFFSET, Ordering::Acquire) == old;
        p.stats.packets += 1;
        p.stats.bytes += self.reserved as u64;
        p.stats.signals += u64::from(signal);
        Ok(Written {
            signal,
            ring_bytes: total as usize,
        })
    }
}

/// Counters kept by a [`RingConsumer`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Packets consumed.
    pub packets: u64,
    /// Packet bytes consumed (`len8 * 8` each; no trailer).
    pub bytes: u64,
    /// Commits after which the writer had to be signalled.
    pub signals: u64,
}

/// A packet copied out of the ring: its validated descriptor and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// The descriptor as validated (the copy in the buffer is identical).
    pub desc: PacketDescriptor,
    /// Packet length `len8 * 8`: the bytes copied into the caller's buffer.
    pub len: usize,
}

impl PacketInfo {
    /// Header length `offset8 * 8` (descriptor plus type-specific header).
    pub fn data_offset(&self) -> usize {
        usize::from(self.desc.offset8) * 8
    }
}

/// A packet read and consumed by [`RingConsumer::read_packet`].
#[must_use = "the writer may need a signal"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPacket {
    /// The packet.
    pub info: PacketInfo,
    /// Publishing the new read index gave a blocked writer enough room: signal it.
    pub signal: bool,
}

/// Result of [`RingConsumer::drain`].
#[must_use = "the writer may need a signal and more data may be waiting"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Packets handed to the callback.
    pub packets: usize,
    /// The writer must be signalled.
    pub signal: bool,
    /// Data is (still or again) available: drain again rather than wait for an interrupt.
    pub more: bool,
}

/// The reading half of a ring.
#[derive(Debug)]
pub struct RingConsumer<M> {
    mem: M,
    size: u32,
    /// The read index we last published; the shared copy is never trusted.
    read_index: u32,
    /// Private read position, ahead of `read_index` by consumed-but-uncommitted packets.
    cursor: u32,
    /// Ring bytes (packet + trailer) of the last peeked packet.
    peeked: Option<u32>,
    failed: bool,
    stats: ConsumerStats,
}

impl<M: RingMemory> RingConsumer<M> {
    /// Attaches to a ring, adopting its current `read_index` (validated).
    pub fn new(mem: M) -> Result<Self, RingError> {
        let size = data_size_of(&mem)?;
        let index = mem.load_u32(READ_INDEX_OFFSET, Ordering::Acquire);
        if !index_valid(index, size) {
            return Err(RingError::BadReadIndex { index, size });
        }
        Ok(Self {
            mem,
            size,
            read_index: index,
            cursor: index,
            peeked: None,
            failed: false,
            stats: Default::default(),
        })
    }

    /// Size of the data area in bytes.
    pub fn data_size(&self) -> usize {
        self.size as usize
    }

    /// Counters so far.
    pub fn stats(&self) -> ConsumerStats {
        self.stats
    }

    /// Whether a fatal error has failed this half.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// The underlying memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    fn fail(&mut self, e: RingError) -> RingError {
        self.failed = true;
        e
    }

    fn check(&self) -> Result<(), RingError> {
        if self.failed {
            Err(RingError::Failed)
        } else {
            Ok(())
        }
    }

    fn load_write_index(&mut self) -> Result<u32, RingError> {
        // Acquire: packet bytes published before the index are visible to our copies.
        let index = self.mem.load_u32(WRITE_INDEX_OFFSET, Ordering::Acquire);
        if index_valid(index, self.size) {
            Ok(index)
        } else {
            Err(self.fail(RingError::BadWriteIndex {
                index,
                size: self.size,
            }))
        }
    }

    /// Bytes published by the writer beyond our private read position.
    pub fn available(&mut self) -> Result<usize, RingError> {
        self.check()?;
        let write = self.load_write_index()?;
        Ok(distance(self.cursor, write, self.size) as usize)
    }

    /// Copies the next packet into `buf` without consuming it. Repeated peeks return the same
    /// packet; [`advance`](Self::advance) moves past it.
    pub fn peek_packet(&mut self, buf: &mut [u8]) -> Result<Option<PacketInfo>, RingError> {
        self.check()?;
        self.peeked = None;
        let size = self.size;
        let write = self.load_write_index()?;
        let available = distance(self.cursor, write, size);
        if available == 0 {
            return Ok(None);
        }
        if (available as usize) < DESCRIPTOR_SIZE + PACKET_TRAILER_SIZE {
            return Err(self.fail(RingError::Truncated { available }));
        }
        let mut raw = [0u8; DESCRIPTOR_SIZE];
        read_wrapping(&self.mem, size, self.cursor, &mut raw);
        let desc = PacketDescriptor::from_wire(raw);
        let len = u32::from(desc.len8) * 8;
        let offset = u32::from(desc.offset8) * 8;
        if (len as usize) < DESCRIPTOR_SIZE {
            return Err(self.fail(RingError::PacketTooShort { len }));
        }
        if len as usize + PACKET_TRAILER_SIZE > available as usize {
            return Err(self.fail(RingError::PacketTooLong { len, available }));
        }
        if (offset as usize) < DESCRIPTOR_SIZE || offset > len {
            return Err(self.fail(RingError::BadDataOffset { offset, len }));
        }
        let Some(dst) = buf.get_mut(..len as usize) else {
            return Err(RingError::BufferTooSmall {
                needed: len as usize,
                len: buf.len(),
            });
        };
        // The descriptor comes from our validated snapshot, not a second read of the ring.
        let (head, body) = dst.split_at_mut(DESCRIPTOR_SIZE);
        head.copy_from_slice(&raw);
        read_wrapping(
            &self.mem,
            size,
            advance(self.cursor, DESCRIPTOR_SIZE as u32, size),
            body,
        );
        self.peeked = Some(len + PACKET_TRAILER_SIZE as u32);
        Ok(Some(PacketInfo {
            desc,
            len: len as usize,
        }))
    }

    /// Moves the private read position past the packet returned by the last successful
    /// [`peek_packet`](Self::peek_packet). The writer does not see the space until
    /// [`commit`](Self::commit). Returns `false` if there was no peeked packet.
    pub fn advance(&mut self) -> bool {
        match self.peeked.take() {
            Some(total) if !self.failed => {
                self.cursor = advance(self.cursor, total, self.size);
                self.stats.packets += 1;
                self.stats.bytes += u64::from(total) - PACKET_TRAILER_SIZE as u64;
                true
            }
            _ => false,
        }
    }

    /// Copies out and consumes the next packet without publishing the read index (batching);
    /// call [`commit`](Self::commit) afterwards.
    pub fn read_packet_deferred(
        &mut self,
        buf: &mut [u8],
    ) -> Result<Option<PacketInfo>, RingError> {
        let info = self.peek_packet(buf)?;
        if info.is_some() {
            self.advance();
        }
        Ok(info)
    }

    /// Copies out and consumes the next packet, publishing the new read index.
    pub fn read_packet(&mut self, buf: &mut [u8]) -> Result<Option<ReadPacket>, RingError> {
        let Some(info) = self.read_packet_deferred(buf)? else {
            return Ok(None);
        };
        let signal = self.commit()?;
        Ok(Some(ReadPacket { info, signal }))
    }

    /// Publishes the private read position as `read_index`. Returns whether the writer must be
    /// signalled: it set `pending_send_sz` (and the feature bit is set) and the space freed by
    /// this commit moved free space from "not enough" (`<= pending_send_sz`, as exactly filling
    /// the ring is not allowed) to "enough" (`> pending_send_sz`).
    pub fn commit(&mut self) -> Result<bool, RingError> {
        self.check()?;
        let start = self.read_index;
        if self.cursor == start {
            return Ok(false);
        }
        // Release: our copies out of the freed space happen before the writer may reuse it.
        self.mem
            .store_u32(READ_INDEX_OFFSET, self.cursor, Ordering::Release);
        self.read_index = self.cursor;
        if self.mem.load_u32(FEATURE_BITS_OFFSET, Ordering::Relaxed) & FEATURE_PENDING_SEND_SIZE
            == 0
        {
            return Ok(false);
        }
        // Full fence: the read_index store is ordered before the pending_send_sz load, pairing
        // with the writer's fence between setting pending_send_sz and re-reading read_index.
        fence(Ordering::SeqCst);
        let pending = self
            .mem
            .load_u32(PENDING_SEND_SIZE_OFFSET, Ordering::Acquire);
        if pending == 0 {
            return Ok(false);
        }
        let write = self.load_write_index()?;
        let free_after = self.size - distance(self.cursor, write, self.size);
        let bytes_read = distance(start, self.cursor, self.size);
        // If the writer already reused more than we freed, it is not blocked.
        let signal = match free_after.checked_sub(bytes_read) {
            Some(free_before) => free_before <= pending && free_after > pending,
            None => false,
        };
        self.stats.signals += u64::from(signal);
        Ok(signal)
    }

    /// Sets `interrupt_mask`: the writer will not signal while we poll.
    pub fn mask_interrupts(&mut self) {
        self.mem
            .store_u32(INTERRUPT_MASK_OFFSET, 1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Clears `interrupt_mask` and re-checks for data that raced in while masked (the writer
    /// did not signal it). Returns whether unread data is available: if so, keep reading
    /// instead of waiting for a signal.
    pub fn unmask_interrupts(&mut self) -> Result<bool, RingError> {
        self.check()?;
        self.mem
            .store_u32(INTERRUPT_MASK_OFFSET, 0, Ordering::Relaxed);
        // Full fence: the unmask is ordered before the write_index load, pairing with the
        // writer's fence between publishing write_index and loading interrupt_mask.
        fence(Ordering::SeqCst);
        let write = self.load_write_index()?;
        Ok(write != self.cursor)
    }

    /// A batched read: masks interrupts, hands up to `limit` packets to `f`, commits once,
    /// unmasks and re-checks for data that raced in.
    ///
    /// On error nothing is committed and interrupts stay masked; packets already handed to `f`
    /// are published by the next successful commit (whose signal decision covers them too).
    pub fn drain<F>(&mut self, buf: &mut [u8], limit: usize, mut f: F) -> Result<Drained, RingError>
    where
        F: FnMut(&PacketInfo, &[u8]),
    {
        self.check()?;
        self.mask_interrupts();
        let mut packets = 0;
        while packets < limit {
            let Some(info) = self.read_packet_deferred(buf)? else {
                break;
            };
            f(&info, &buf[..info.len]);
            packets += 1;
        }
        let signal = self.commit()?;
        let more = self.unmask_interrupts()?;
        Ok(Drained {
            packets,
            signal,
            more,
        })
    }
}

#[cfg(test)]
mod tests;
