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
    /// Times `pending_send_sz` was set to ask the reader for space. Can exceed `full`: a write
    /// that sets it and then, re-checking, finds the space freed meanwhile goes ahead — and the
    /// reader that freed it may already have seen the request and signalled (a harmless spare
    /// wake-up).
    pub space_requests: u64,
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

    #[inline]
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

    #[inline]
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

    /// Makes sure `len` packet bytes plus padding and trailer fit at `write_index` right now.
    ///
    /// On [`RingError::Full`], if the reader advertises [`FEATURE_PENDING_SEND_SIZE`], sets
    /// `pending_send_sz` so the reader signals once enough space is free.
    #[inline]
    fn claim(&mut self, len: usize) -> Result<(), RingError> {
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
            self.stats.space_requests += 1;
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
        Ok(())
    }

    /// Publishes the packet of `len` bytes (before padding) whose bytes, padding and trailer
    /// have been written at `write_index`, and decides whether to signal.
    #[inline]
    fn publish(&mut self, len: usize) -> Written {
        let old = self.write_index;
        let total = (round_up8(len) + PACKET_TRAILER_SIZE) as u32;
        let new = advance(old, total, self.size);
        // Release: the packet bytes are visible before the index that publishes them.
        self.mem
            .store_u32(WRITE_INDEX_OFFSET, new, Ordering::Release);
        self.write_index = new;
        // Full fence: our index store must be ordered before the loads of interrupt_mask and
        // read_index, pairing with the reader's unmask-then-recheck (Dekker style).
        fence(Ordering::SeqCst);
        let masked = self.mem.load_u32(INTERRUPT_MASK_OFFSET, Ordering::Acquire) != 0;
        // Only compared, never used to address memory, so it needs no validation.
        let signal = !masked && self.mem.load_u32(READ_INDEX_OFFSET, Ordering::Acquire) == old;
        self.stats.packets += 1;
        self.stats.bytes += len as u64;
        self.stats.signals += u64::from(signal);
        Written {
            signal,
            ring_bytes: total as usize,
        }
    }

    /// Reserves ring space for a packet of `len` bytes, to be filled by [`PacketWriter::put`].
    ///
    /// On [`RingError::Full`], if the reader advertises [`FEATURE_PENDING_SEND_SIZE`], the
    /// producer has set `pending_send_sz` so the reader signals once enough space is free.
    #[inline]
    pub fn reserve(&mut self, len: usize) -> Result<PacketWriter<'_, M>, RingError> {
        self.claim(len)?;
        let start = self.write_index;
        Ok(PacketWriter {
            producer: self,
            start,
            reserved: len,
            written: 0,
            staged: 0,
            stage: [0; STAGE_SIZE],
        })
    }

    /// Writes one packet whose bytes are the concatenation of `parts`, padded to 8 bytes,
    /// followed by the trailer. Up to 7 parts are copied into the ring with one gather write
    /// (one range check); more take one more.
    #[inline]
    pub fn write_raw(&mut self, parts: &[&[u8]]) -> Result<Written, RingError> {
        let len = parts.iter().fold(0usize, |n, p| n.saturating_add(p.len()));
        self.claim(len)?;
        let start = self.write_index;
        let (tail, tail_len) = padding_and_trailer(start, len);
        let tail = &tail[..tail_len];
        if parts.len() < GATHER_PARTS {
            let mut all: [&[u8]; GATHER_PARTS] = [&[]; GATHER_PARTS];
            all[..parts.len()].copy_from_slice(parts);
            all[parts.len()] = tail;
            write_wrapping_gather(&self.mem, self.size, start, &all[..=parts.len()]);
        } else {
            write_wrapping_gather(&self.mem, self.size, start, parts);
            let end = advance(start, len as u32, self.size);
            write_wrapping_gather(&self.mem, self.size, end, &[tail]);
        }
        Ok(self.publish(len))
    }
}

/// Parts that [`RingProducer::write_raw`] gathers into one ring copy, the trailer included.
pub(crate) const GATHER_PARTS: usize = 8;

/// Zero padding of a `len`-byte packet to 8 bytes, then the trailer of a packet written at
/// `start`; returns the bytes and how many of them are used.
#[inline]
fn padding_and_trailer(start: u32, len: usize) -> ([u8; 16], usize) {
    let pad = round_up8(len) - len;
    let mut tail = [0u8; 16];
    tail[pad..pad + 8].copy_from_slice(&(u64::from(start) << 32).to_le_bytes());
    (tail, pad + PACKET_TRAILER_SIZE)
}

/// Puts of at most this many bytes (together) are staged and copied into the ring in one go.
const STAGE_SIZE: usize = 128;

/// Space reserved in a producer's ring for one packet; fill it with [`put`](Self::put) and
/// publish it with [`commit`](Self::commit). Dropping it publishes nothing.
///
/// Small puts (descriptor, headers, short payloads) are collected in the writer and copied
/// into the ring together with the next large put, or with the padding and trailer at commit:
/// a packet of up to 128 bytes costs one ring copy, a larger one a copy per large put plus
/// one, each with one range check (the ring copies are gather writes that wrap).
#[derive(Debug)]
pub struct PacketWriter<'a, M: RingMemory> {
    producer: &'a mut RingProducer<M>,
    start: u32,
    reserved: usize,
    /// Bytes put so far (including dropped ones, which fail the commit).
    written: usize,
    /// The last `staged` bytes put are in `stage`, not yet in the ring.
    staged: usize,
    stage: [u8; STAGE_SIZE],
}

impl<M: RingMemory> PacketWriter<'_, M> {
    /// Appends `bytes` to the packet. Bytes beyond the reservation are dropped and make
    /// [`commit`](Self::commit) fail.
    #[inline]
    pub fn put(&mut self, bytes: &[u8]) {
        let room = self.reserved.saturating_sub(self.written);
        if bytes.len() <= room {
            if bytes.len() <= STAGE_SIZE - self.staged {
                self.stage[self.staged..self.staged + bytes.len()].copy_from_slice(bytes);
                self.staged += bytes.len();
            } else {
                self.flush_with(bytes);
            }
        }
        self.written = self.written.saturating_add(bytes.len());
    }

    /// Copies the staged bytes followed by `bytes` (not yet counted in `written`) into the ring.
    #[inline]
    fn flush_with(&mut self, bytes: &[u8]) {
        let p = &*self.producer;
        let pos = advance(self.start, (self.written - self.staged) as u32, p.size);
        write_wrapping_gather(&p.mem, p.size, pos, &[&self.stage[..self.staged], bytes]);
        self.staged = 0;
    }

    /// Bytes still expected before [`commit`](Self::commit).
    pub fn remaining(&self) -> usize {
        self.reserved.saturating_sub(self.written)
    }

    /// Pads, appends the trailer, publishes `write_index` and decides whether to signal.
    #[inline]
    pub fn commit(mut self) -> Result<Written, RingError> {
        if self.written != self.reserved {
            return Err(RingError::LengthMismatch {
                reserved: self.reserved,
                written: self.written,
            });
        }
        let (tail, tail_len) = padding_and_trailer(self.start, self.reserved);
        self.flush_with(&tail[..tail_len]);
        Ok(self.producer.publish(self.reserved))
    }
}
