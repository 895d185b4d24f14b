//! The writing half of a ring: [`RingProducer`] reserves space, [`PacketWriter`] fills it and
//! publishes `write_index`, deciding whether the reader must be signalled.

use core::sync::atomic::fence;

use super::*;
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
