//! The reading half of a ring: [`RingConsumer`] validates each packet the peer published,
//! copies it out, publishes `read_index` (per packet or once per drained batch) and decides
//! whether a blocked writer must be signalled.

use core::sync::atomic::fence;

use super::*;
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
    /// The writer's `write_index` as last loaded and validated. The bytes from `cursor` up to
    /// it are known to be published, so packets are read up to it before it is loaded again
    /// (one acquire load of the writer's cache line per batch, not per packet).
    published: u32,
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
            published: index,
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

    #[inline]
    fn check(&self) -> Result<(), RingError> {
        if self.failed {
            Err(RingError::Failed)
        } else {
            Ok(())
        }
    }

    #[inline]
    fn load_write_index(&mut self) -> Result<u32, RingError> {
        // Acquire: packet bytes published before the index are visible to our copies.
        let index = self.mem.load_u32(WRITE_INDEX_OFFSET, Ordering::Acquire);
        if index_valid(index, self.size) {
            self.published = index;
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
    ///
    /// `write_index` is loaded again only once the packets published at its last load are
    /// consumed. Per packet, the ring is read twice: the descriptor (validated on our copy),
    /// then the rest of the packet, each one wrapped copy with one range check.
    #[inline]
    pub fn peek_packet(&mut self, buf: &mut [u8]) -> Result<Option<PacketInfo>, RingError> {
        self.check()?;
        self.peeked = None;
        let size = self.size;
        let write = if self.cursor == self.published {
            self.load_write_index()?
        } else {
            self.published
        };
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
    #[inline]
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
    #[inline]
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
    #[inline]
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
    #[inline]
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
