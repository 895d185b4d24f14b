//! The driver side of a virtio 1.x split virtqueue (spec §2.7): the descriptor table, available ring and
//! used ring in one DMA region the device shares, and the driver's private bookkeeping beside it (free
//! descriptor list, chain lengths, shadow indices) — nothing the device can write is trusted for
//! bookkeeping. Sans-I/O: the queue never rings a doorbell and never sleeps; it tells its caller when a
//! doorbell is due ([`SplitQueue::kick_prepare`]) and whether it may sleep ([`SplitQueue::enable_cb`],
//! [`SplitQueue::enable_cb_delayed`]).
//!
//! The notification discipline is Linux's (`drivers/virtio/virtio_ring.c`):
//! - every added chain is published at once (descriptors and ring entry, then the available index with
//!   release ordering); [`SplitQueue::kick_prepare`] decides one doorbell for everything added since the
//!   last decision, after a full barrier, with [`vring_need_event`] against the device's `avail_event`
//!   (EVENT_IDX) or else the used ring's NO_NOTIFY flag;
//! - used-buffer notifications are suppressed while the driver drains ([`SplitQueue::disable_cb`]:
//!   `used_event` moved half the index space away, or the NO_INTERRUPT flag) and re-enabled when it is
//!   done, with a full barrier and a re-check of the used index, so a completion that lands in between
//!   is seen instead of slept through.
//!
//! Every shared field is accessed through atomics of its own width; the x86 guest makes release/acquire
//! free and the full barriers `mfence`, but the orderings are the ones the spec asks of any CPU.

use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

use crate::platform::{DmaRegion, PAGE_SIZE};

/// Descriptor flags (§2.7.5).
pub mod desc_flags {
    /// The chain continues in `next`.
    pub const NEXT: u16 = 1;
    /// The device writes this buffer (otherwise it reads it).
    pub const WRITE: u16 = 2;
    /// The buffer is a table of descriptors.
    pub const INDIRECT: u16 = 4;
}

/// Available-ring flag: the driver wants no used-buffer notifications (without EVENT_IDX).
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used-ring flag: the device wants no available-buffer notifications (without EVENT_IDX).
const USED_F_NO_NOTIFY: u16 = 1;
/// Bytes of one descriptor.
pub const DESC_SIZE: usize = 16;
/// Largest split queue (§2.7: Queue Size ≤ 32768).
pub const MAX_SIZE: u16 = 32768;
/// Where `used_event` sits, relative to `last_used`, while notifications are suppressed with EVENT_IDX:
/// as far as the 16-bit index space allows from every window the device can be checking.
const SUPPRESSED_DISTANCE: u16 = 0x8000;

/// Linux's `vring_need_event` (`include/uapi/linux/virtio_ring.h`): one side moved its index from `old`
/// to `new_idx`; the other side asked to be notified once its event index `event_idx` is passed. True
/// exactly when `event_idx` lies in `[old, new_idx)` in wrapping 16-bit arithmetic:
/// `(u16)(new_idx - event_idx - 1) < (u16)(new_idx - old)`.
#[inline]
pub const fn vring_need_event(event_idx: u16, new_idx: u16, old: u16) -> bool {
    new_idx.wrapping_sub(event_idx).wrapping_sub(1) < new_idx.wrapping_sub(old)
}

/// Where the three parts of a queue of `size` entries sit in its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Entries.
    pub size: u16,
    /// Offset of the available ring (the descriptor table is at 0).
    pub avail: usize,
    /// Offset of the used ring (page-aligned, away from the driver-written parts).
    pub used: usize,
    /// Bytes the region needs.
    pub bytes: usize,
}

impl RingLayout {
    /// The layout of a queue of `size` entries (a power of two up to [`MAX_SIZE`]).
    pub fn new(size: u16) -> Result<Self, QueueError> {
        if size == 0 || !size.is_power_of_two() || size > MAX_SIZE {
            return Err(QueueError::Size(size));
        }
        let n = usize::from(size);
        let avail = DESC_SIZE * n;
        // flags, idx, ring[n], used_event
        let avail_end = avail + 4 + 2 * n + 2;
        let used = avail_end.next_multiple_of(PAGE_SIZE);
        // flags, idx, ring[n] of {u32 id, u32 len}, avail_event
        let bytes = used + 4 + 8 * n + 2;
        Ok(Self {
            size,
            avail,
            used,
            bytes,
        })
    }

    /// Pages the region needs.
    pub fn pages(&self) -> usize {
        self.bytes.div_ceil(PAGE_SIZE)
    }

    fn avail_flags(&self) -> usize {
        self.avail
    }

    fn avail_idx(&self) -> usize {
        self.avail + 2
    }

    fn avail_ring(&self, slot: u16) -> usize {
        self.avail + 4 + 2 * usize::from(slot % self.size)
    }

    fn used_event(&self) -> usize {
        self.avail + 4 + 2 * usize::from(self.size)
    }

    fn used_flags(&self) -> usize {
        self.used
    }

    fn used_idx(&self) -> usize {
        self.used + 2
    }

    fn used_elem(&self, slot: u16) -> usize {
        self.used + 4 + 8 * usize::from(slot % self.size)
    }

    fn avail_event(&self) -> usize {
        self.used + 4 + 8 * usize::from(self.size)
    }
}

/// One buffer of a chain, by guest-physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest-physical address.
    pub pa: u64,
    /// Length in bytes.
    pub len: u32,
    /// The device writes it (otherwise it only reads it).
    pub device_writes: bool,
}

/// A chain the device has finished with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor of the chain (what [`SplitQueue::add`] returned).
    pub head: u16,
    /// Bytes the device says it wrote.
    pub len: u32,
}

/// What the queue refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// A queue size the split ring cannot have.
    #[error("queue size {0} is not a power of two in 1..=32768")]
    Size(u16),
    /// The region is too small for the layout.
    #[error("ring region of {have} bytes, the layout needs {need}")]
    Memory {
        /// Bytes given.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Not enough free descriptors for the chain.
    #[error("{needed} descriptors needed, {free} free")]
    Full {
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors free.
        free: u16,
    },
    /// A chain without buffers, or an indirect table too long for a descriptor.
    #[error("a chain of {0} buffers")]
    ChainLength(usize),
    /// The device put a descriptor in the used ring that heads no chain in flight.
    #[error("the device returned descriptor {0}, which heads no chain in flight")]
    BadUsedHead(u32),
    /// The device moved the used index past what is in flight.
    #[error("the device used {used} chains with {in_flight} in flight")]
    UsedOverrun {
        /// Entries the used index moved by.
        used: u16,
        /// Chains in flight.
        in_flight: u16,
    },
}

/// Driver-private state of one head descriptor.
#[derive(Debug, Clone, Copy, Default)]
struct Chain {
    /// Descriptors it holds (0: not a chain in flight).
    len: u16,
    /// Its last descriptor.
    tail: u16,
}

/// A split virtqueue, driver side. See the module documentation.
#[derive(Debug)]
pub struct SplitQueue {
    mem: DmaRegion,
    layout: RingLayout,
    event_idx: bool,
    /// Private free-list links (never read back from the shared table).
    next: Vec<u16>,
    chains: Vec<Chain>,
    free_head: u16,
    num_free: u16,
    /// Chains in flight (added, not yet popped).
    in_flight: u16,
    /// Our copy of the available index.
    avail_idx: u16,
    /// Chains added since the last [`SplitQueue::kick_prepare`].
    num_added: u32,
    /// The next used-ring entry to consume.
    last_used: u16,
    /// Used-buffer notifications are wanted.
    callbacks: bool,
}

fn write_desc(mem: &DmaRegion, at: usize, pa: u64, len: u32, flags: u16, next: u16) {
    mem.atomic_u64(at).store(pa.to_le(), Ordering::Relaxed);
    mem.atomic_u32(at + 8).store(len.to_le(), Ordering::Relaxed);
    mem.atomic_u16(at + 12)
        .store(flags.to_le(), Ordering::Relaxed);
    mem.atomic_u16(at + 14)
        .store(next.to_le(), Ordering::Relaxed);
}

/// Writes `bufs` as a descriptor table of their own at `offset` in `mem` (linked 0 → 1 → …), for an
/// indirect descriptor. Published to the device by the release store of the available index that makes
/// the chain pointing at it visible.
pub fn write_indirect_table(mem: &DmaRegion, offset: usize, bufs: &[Buffer]) {
    for (i, b) in bufs.iter().enumerate() {
        let last = i + 1 == bufs.len();
        let mut flags = if b.device_writes {
            desc_flags::WRITE
        } else {
            0
        };
        if !last {
            flags |= desc_flags::NEXT;
        }
        let next = if last { 0 } else { (i + 1) as u16 };
        write_desc(mem, offset + i * DESC_SIZE, b.pa, b.len, flags, next);
    }
}

impl SplitQueue {
    /// A queue of `size` entries in `mem` (at least [`RingLayout::bytes`], page-aligned), which it zeroes.
    /// `event_idx`: VIRTIO_RING_F_EVENT_IDX was negotiated. Used-buffer notifications start enabled (at
    /// the first completion), as zeroed rings and Linux have them.
    pub fn new(mem: DmaRegion, size: u16, event_idx: bool) -> Result<Self, QueueError> {
        let layout = RingLayout::new(size)?;
        if mem.len < layout.bytes {
            return Err(QueueError::Memory {
                have: mem.len,
                need: layout.bytes,
            });
        }
        mem.write(0, &alloc::vec![0u8; layout.bytes]);
        let n = usize::from(size);
        Ok(Self {
            mem,
            layout,
            event_idx,
            next: (1..=n).map(|i| (i % n) as u16).collect(),
            chains: alloc::vec![Chain::default(); n],
            free_head: 0,
            num_free: size,
            in_flight: 0,
            avail_idx: 0,
            num_added: 0,
            last_used: 0,
            callbacks: true,
        })
    }

    /// Entries in the queue.
    pub fn size(&self) -> u16 {
        self.layout.size
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Chains added and not yet popped.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Whether used-buffer notifications are enabled (the last call was an `enable_cb*`, not
    /// [`SplitQueue::disable_cb`]).
    pub fn callbacks_enabled(&self) -> bool {
        self.callbacks
    }

    /// Whether EVENT_IDX is in use.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Guest-physical address of the descriptor table.
    pub fn desc_pa(&self) -> u64 {
        self.mem.pa
    }

    /// Guest-physical address of the available ring ("driver area").
    pub fn avail_pa(&self) -> u64 {
        self.mem.pa + self.layout.avail as u64
    }

    /// Guest-physical address of the used ring ("device area").
    pub fn used_pa(&self) -> u64 {
        self.mem.pa + self.layout.used as u64
    }

    /// Adds a chain of `bufs` (device-readable ones first) and publishes it; returns its head.
    pub fn add(&mut self, bufs: &[Buffer]) -> Result<u16, QueueError> {
        if bufs.is_empty() {
            return Err(QueueError::ChainLength(0));
        }
        self.push(bufs.len(), |i| {
            let b = bufs[i];
            let flags = if b.device_writes {
                desc_flags::WRITE
            } else {
                0
            };
            (b.pa, b.len, flags)
        })
    }

    /// Adds one descriptor pointing at an indirect table of `count` descriptors at `table_pa` (written
    /// with [`write_indirect_table`]) and publishes it; returns its head. The caller negotiated
    /// VIRTIO_RING_F_INDIRECT_DESC.
    pub fn add_indirect(&mut self, table_pa: u64, count: usize) -> Result<u16, QueueError> {
        let len = count
            .checked_mul(DESC_SIZE)
            .and_then(|l| u32::try_from(l).ok())
            .filter(|_| count > 0)
            .ok_or(QueueError::ChainLength(count))?;
        self.push(1, |_| (table_pa, len, desc_flags::INDIRECT))
    }

    fn push(
        &mut self,
        count: usize,
        desc: impl Fn(usize) -> (u64, u32, u16),
    ) -> Result<u16, QueueError> {
        if count > usize::from(self.num_free) {
            return Err(QueueError::Full {
                needed: count,
                free: self.num_free,
            });
        }
        let head = self.free_head;
        let mut at = head;
        let mut tail = head;
        for i in 0..count {
            let following = self.next[usize::from(at)];
            let (pa, len, mut flags) = desc(i);
            let more = i + 1 < count;
            if more {
                flags |= desc_flags::NEXT;
            }
            let link = if more { following } else { 0 };
            write_desc(&self.mem, usize::from(at) * DESC_SIZE, pa, len, flags, link);
            tail = at;
            at = following;
        }
        self.free_head = at;
        self.num_free -= count as u16;
        self.chains[usize::from(head)] = Chain {
            len: count as u16,
            tail,
        };
        self.in_flight += 1;
        let l = &self.layout;
        self.mem
            .atomic_u16(l.avail_ring(self.avail_idx))
            .store(head.to_le(), Ordering::Relaxed);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The descriptors and the ring entry are visible before the index that publishes them (the
        // spec's write barrier before the idx update).
        self.mem
            .atomic_u16(l.avail_idx())
            .store(self.avail_idx.to_le(), Ordering::Release);
        self.num_added += 1;
        Ok(head)
    }

    /// Whether the device must be notified of the chains added since the last call (which this call
    /// accounts for): Linux's `virtqueue_kick_prepare`. The caller rings the doorbell when it says so.
    pub fn kick_prepare(&mut self) -> bool {
        // The available index must be visible before we read what the device asked for (it writes
        // avail_event, then re-reads our index: one of the two sides sees the other's store).
        fence(Ordering::SeqCst);
        let added = core::mem::take(&mut self.num_added);
        if added == 0 {
            return false;
        }
        if added >= u32::from(u16::MAX) {
            // The window [old, new) cannot be expressed in 16 bits any more: always notify.
            return true;
        }
        let new = self.avail_idx;
        let old = new.wrapping_sub(added as u16);
        if self.event_idx {
            let event = u16::from_le(
                self.mem
                    .atomic_u16(self.layout.avail_event())
                    .load(Ordering::Relaxed),
            );
            vring_need_event(event, new, old)
        } else {
            let flags = u16::from_le(
                self.mem
                    .atomic_u16(self.layout.used_flags())
                    .load(Ordering::Relaxed),
            );
            flags & USED_F_NO_NOTIFY == 0
        }
    }

    fn used_idx(&self, order: Ordering) -> u16 {
        u16::from_le(self.mem.atomic_u16(self.layout.used_idx()).load(order))
    }

    /// Whether the device has used a chain the driver has not popped yet.
    pub fn has_used(&self) -> bool {
        self.used_idx(Ordering::Acquire) != self.last_used
    }

    /// The next chain the device finished with, its descriptors returned to the free list.
    pub fn pop_used(&mut self) -> Result<Option<Used>, QueueError> {
        // Acquire: the used element and everything the device wrote for the request (data, status)
        // before publishing the index are visible after this load.
        let idx = self.used_idx(Ordering::Acquire);
        if idx == self.last_used {
            return Ok(None);
        }
        let ahead = idx.wrapping_sub(self.last_used);
        if ahead > self.in_flight {
            return Err(QueueError::UsedOverrun {
                used: ahead,
                in_flight: self.in_flight,
            });
        }
        let at = self.layout.used_elem(self.last_used);
        let id = u32::from_le(self.mem.atomic_u32(at).load(Ordering::Relaxed));
        let len = u32::from_le(self.mem.atomic_u32(at + 4).load(Ordering::Relaxed));
        let chain = usize::try_from(id)
            .ok()
            .and_then(|i| self.chains.get(i).copied())
            .filter(|c| c.len > 0)
            .ok_or(QueueError::BadUsedHead(id))?;
        let head = id as u16;
        self.next[usize::from(chain.tail)] = self.free_head;
        self.free_head = head;
        self.num_free += chain.len;
        self.chains[usize::from(head)] = Chain::default();
        self.in_flight -= 1;
        self.last_used = self.last_used.wrapping_add(1);
        if self.callbacks && self.event_idx {
            // Interrupt at the next entry: tell the device before looking at it (Linux's get_buf).
            self.set_used_event(self.last_used);
            fence(Ordering::SeqCst);
        }
        Ok(Some(Used { head, len }))
    }

    fn set_used_event(&self, value: u16) {
        self.mem
            .atomic_u16(self.layout.used_event())
            .store(value.to_le(), Ordering::Relaxed);
    }

    fn set_avail_flags(&self, flags: u16) {
        self.mem
            .atomic_u16(self.layout.avail_flags())
            .store(flags.to_le(), Ordering::Relaxed);
    }

    /// Suppresses used-buffer notifications (Linux's `virtqueue_disable_cb`). With EVENT_IDX the event
    /// index moves half the index space away from `last_used`; calling this again after draining keeps it
    /// there. Best effort by nature: a device already past its check may still notify once.
    pub fn disable_cb(&mut self) {
        self.callbacks = false;
        if self.event_idx {
            self.set_used_event(self.last_used.wrapping_add(SUPPRESSED_DISTANCE));
        } else {
            self.set_avail_flags(AVAIL_F_NO_INTERRUPT);
        }
    }

    fn enable_at(&mut self, event: u16) -> u16 {
        self.callbacks = true;
        if self.event_idx {
            self.set_used_event(event);
        } else {
            self.set_avail_flags(0);
        }
        // The event index (or flag) must be visible before we re-read the used index (the device
        // publishes its index, then reads ours).
        fence(Ordering::SeqCst);
        self.used_idx(Ordering::Acquire)
            .wrapping_sub(self.last_used)
    }

    /// Re-enables used-buffer notifications at the next completion and re-checks (Linux's
    /// `virtqueue_enable_cb`): true if nothing is pending, so the caller may sleep until notified; false if
    /// chains completed meanwhile (drain them first).
    pub fn enable_cb(&mut self) -> bool {
        self.enable_at(self.last_used) == 0
    }

    /// Re-enables used-buffer notifications once about three quarters of what is outstanding has been used
    /// (Linux's `virtqueue_enable_cb_delayed`, same threshold) and re-checks: true if fewer than that have
    /// completed, so the caller may sleep until notified; false if the threshold was already passed.
    /// Without EVENT_IDX the threshold cannot be expressed and this is [`SplitQueue::enable_cb`].
    pub fn enable_cb_delayed(&mut self) -> bool {
        let outstanding = self.avail_idx.wrapping_sub(self.last_used);
        let bufs = (u32::from(outstanding) * 3 / 4) as u16;
        if !self.event_idx {
            return self.enable_cb();
        }
        self.enable_at(self.last_used.wrapping_add(bufs)) <= bufs
    }

    /// Gives the ring memory back; the queue is unusable afterwards (every access would be out of
    /// bounds). Reset the device first: it must not touch the rings any more.
    pub fn release_memory(&mut self) -> DmaRegion {
        self.num_free = 0;
        core::mem::replace(&mut self.mem, DmaRegion::empty())
    }
}

#[cfg(test)]
#[path = "split_queue_tests.rs"]
mod tests;
