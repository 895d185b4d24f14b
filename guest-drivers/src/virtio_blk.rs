//! virtio-blk over virtio-mmio (virtio 1.x §5.2), on [`crate::virtio`]'s split virtqueue and MMIO
//! transport, held to the discipline of Linux's virtio-blk driver:
//!
//! - **Depth.** With VIRTIO_RING_F_INDIRECT_DESC every request is one ring descriptor pointing at its own
//!   three-entry indirect table (header, data, status), so a 256-entry queue holds 256 requests
//!   ([`VirtioBlk::max_in_flight`]); without it a request takes three ring descriptors.
//! - **Doorbells.** [`VirtioBlk::submit`] only adds and publishes a request; [`VirtioBlk::kick`] decides
//!   one doorbell for the whole batch with `vring_need_event` against the device's `avail_event`
//!   (VIRTIO_RING_F_EVENT_IDX) and counts the doorbells it rings ([`VirtioBlk::doorbells`]).
//! - **Interrupts.** Completions are taken as Linux's interrupt handler takes them: [`VirtioBlk::poll`]
//!   drains once an interrupt arrived, with used-buffer notifications suppressed while draining, then
//!   re-enables them for when three quarters of what is in flight has completed
//!   (`virtqueue_enable_cb_delayed`) with a barrier and a re-check of the used ring that drains again
//!   if more arrived — a completion racing the re-enable is seen, never slept through. Between polls
//!   notifications stay enabled and [`VirtioBlk::wait`] halts until the next interrupt. The device
//!   interrupts once per pass over the queue, after the pass, so a drain sees whole passes: one
//!   interrupt per batch however the host's worker and the vCPU are scheduled.
//!
//! Requests carry guest-physical addresses; the slice APIs ([`VirtioBlk::read`], the batches) rely on
//! [`IdentityMapped`]. The header, status byte and indirect table of each request live in a DMA slot of
//! the driver's own.

use alloc::vec::Vec;
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use crate::platform::{DmaRegion, Platform, PAGE_SIZE};
use crate::virtio::features;
use crate::virtio::mmio::{MmioTransport, TransportError};
use crate::virtio::split_queue::{
    write_indirect_table, Buffer, QueueError, RingLayout, SplitQueue,
};

/// Bytes per sector (virtio-blk addresses the disk in 512-byte sectors whatever its block size).
pub const SECTOR_SIZE: usize = 512;
/// virtio device type of a block device.
pub const DEVICE_ID_BLOCK: u32 = 2;
/// Largest queue the driver sets up.
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Features the driver can use.
pub const WANTED_FEATURES: u64 = features::VERSION_1
    | features::RING_EVENT_IDX
    | features::RING_INDIRECT_DESC
    | features::BLK_FLUSH
    | features::BLK_RO;
/// The request queue.
const QUEUE: u16 = 0;
/// Per-request DMA slot: indirect table (3 × 16 bytes) at 0, header at 64, status byte at 80.
const SLOT_BYTES: usize = 128;
const TABLE_AT: usize = 0;
const HEADER_AT: usize = 64;
const STATUS_AT: usize = 80;
// The three parts of a slot do not overlap, and slots tile pages.
const _: () = assert!(
    TABLE_AT + 3 * crate::virtio::split_queue::DESC_SIZE <= HEADER_AT
        && HEADER_AT + 16 <= STATUS_AT
        && STATUS_AT < SLOT_BYTES
        && PAGE_SIZE.is_multiple_of(SLOT_BYTES)
);
/// What the status byte holds until the device writes it.
const STATUS_UNSET: u8 = 0xff;
/// Longest device id string (GET_ID).
const ID_BYTES: usize = 20;

/// Request types (§5.2.6).
mod req_type {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
}

/// Request status values (§5.2.6).
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// The device failed the request.
    pub const IOERR: u8 = 1;
    /// The device does not support the request.
    pub const UNSUPP: u8 = 2;
}

/// A [`Platform`] whose memory is identity mapped, reachable without an instance.
///
/// # Safety
/// Implementors guarantee that every address the driver hands to the device — heap, stack, DMA pages —
/// has guest physical address == virtual address, and that the device's MMIO window is mapped at its
/// physical address, uncached or at least without write combining across registers.
pub unsafe trait IdentityMapped: Platform + 'static {
    /// The platform.
    fn platform() -> Self;
}

/// Driver errors.
#[derive(Debug, thiserror::Error)]
pub enum VirtioBlkError {
    /// The window does not hold a usable virtio-mmio device.
    #[error("virtio-mmio transport")]
    Transport(#[source] TransportError),
    /// The device is not a block device.
    #[error("virtio device type {0} is not a block device")]
    NotBlock(u32),
    /// The platform had no DMA memory.
    #[error("no DMA memory for {0}")]
    NoMemory(&'static str),
    /// The virtqueue could not be set up.
    #[error("virtqueue setup")]
    Queue(#[source] QueueError),
    /// No room for another request; retry after completions were polled.
    #[error("the queue is full")]
    QueueFull,
    /// A request completed with a status other than OK.
    #[error("the device completed the request with status {0}")]
    Status(u8),
    /// A request of a batch failed.
    #[error("request {index} of the batch failed with status {status}")]
    Request {
        /// Index of the buffer in the batch.
        index: usize,
        /// The status byte.
        status: u8,
    },
    /// A buffer is not a non-empty multiple of the sector size.
    #[error("buffer of {0} bytes is not whole sectors")]
    BadLength(usize),
    /// The batch API needs the queue API idle.
    #[error("{0} requests of the queue API are outstanding")]
    Outstanding(usize),
    /// The device broke the queue protocol; the driver reset it and failed everything in flight.
    #[error("the device broke the virtqueue protocol and was reset")]
    Broken(#[source] QueueError),
}

impl VirtioBlkError {
    /// The queue had no room for the request (retry after completions were polled).
    pub fn is_queue_full(&self) -> bool {
        matches!(self, Self::QueueFull)
    }
}

/// How a batch waits for completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Sleep until the device's interrupt when nothing has completed.
    Interrupt,
    /// Spin on the used ring (interrupts stay suppressed).
    Poll,
}

/// What a batch cost on the guest side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Requests completed.
    pub requests: usize,
    /// Times the driver slept waiting for an interrupt.
    pub sleeps: u64,
    /// Most requests in flight at once.
    pub max_in_flight: usize,
}

/// Who waits for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The queue API, with the caller's tag.
    Caller(u32),
    /// A synchronous call of the driver's own, spinning on it.
    Sync,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    owner: Owner,
    slot: u16,
}

/// A virtio-blk disk. See the module documentation.
pub struct VirtioBlk<P: IdentityMapped> {
    transport: MmioTransport,
    queue: SplitQueue,
    slots: DmaRegion,
    free_slots: Vec<u16>,
    /// By head descriptor.
    heads: Vec<Option<InFlight>>,
    /// Requests the slots allow in flight.
    depth: usize,
    features: u64,
    capacity: u64,
    doorbells: u64,
    /// Queue-API completions reaped by a synchronous call, returned by the next `poll`.
    early: Vec<(u32, Result<(), VirtioBlkError>)>,
    /// The platform's interrupt total when the last interrupt-driven drain began.
    interrupts_seen: u64,
    /// Completions may be waiting that no interrupt will announce (they came while notifications were
    /// off): the next `poll` drains without waiting for one.
    drain_pending: bool,
    /// Poll for completions with used-buffer notifications suppressed while requests are in flight.
    polling: bool,
    broken: Option<QueueError>,
    _platform: PhantomData<P>,
}

impl<P: IdentityMapped> core::fmt::Debug for VirtioBlk<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioBlk")
            .field("capacity", &self.capacity)
            .field("features", &format_args!("{:#x}", self.features))
            .field("queue_size", &self.queue.size())
            .field("in_flight", &self.queue.in_flight())
            .field("doorbells", &self.doorbells)
            .finish_non_exhaustive()
    }
}

fn check_len(len: usize) -> Result<u32, VirtioBlkError> {
    if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
        return Err(VirtioBlkError::BadLength(len));
    }
    u32::try_from(len).map_err(|_| VirtioBlkError::BadLength(len))
}

/// The largest power of two ≤ `max`, capped at [`MAX_QUEUE_SIZE`].
fn queue_size(max: u32) -> u16 {
    let capped = max.min(u32::from(MAX_QUEUE_SIZE));
    if capped == 0 {
        0
    } else {
        1 << (31 - capped.leading_zeros())
    }
}

impl<P: IdentityMapped> VirtioBlk<P> {
    /// Initialises the virtio-mmio block device whose window (at least 0x108 bytes) is at `gpa`:
    /// negotiates [`WANTED_FEATURES`], sets up a queue of up to [`MAX_QUEUE_SIZE`] entries and the request
    /// slots, and sets DRIVER_OK. Used-buffer notifications start suppressed.
    ///
    /// # Safety
    /// `gpa..gpa + size` must be a virtio-mmio device window, identity mapped and used by nothing else
    /// for as long as the returned driver lives.
    pub unsafe fn probe(gpa: u64, size: usize) -> Result<Self, VirtioBlkError> {
        let base = NonNull::new(gpa as *mut u8)
            .ok_or(VirtioBlkError::Transport(TransportError::Window(size)))?;
        // SAFETY: the caller guarantees the window is a virtio-mmio device mapped for our lifetime.
        let transport =
            unsafe { MmioTransport::new(base, size) }.map_err(VirtioBlkError::Transport)?;
        let kind = transport.device_id();
        if kind != DEVICE_ID_BLOCK {
            return Err(VirtioBlkError::NotBlock(kind));
        }
        let features = transport
            .negotiate(WANTED_FEATURES)
            .map_err(VirtioBlkError::Transport)?;
        let max = transport.queue_max(QUEUE);
        let entries = queue_size(max);
        if entries == 0 {
            transport.fail();
            return Err(VirtioBlkError::Transport(TransportError::QueueSize {
                index: QUEUE,
                max,
                wanted: 1,
            }));
        }
        let layout = RingLayout::new(entries).map_err(VirtioBlkError::Queue)?;
        let indirect = features & features::RING_INDIRECT_DESC != 0;
        let depth = if indirect {
            entries
        } else {
            (entries / 3).max(1)
        };
        let platform = P::platform();
        let ring = platform
            .alloc_dma(layout.pages())
            .ok_or(VirtioBlkError::NoMemory("the virtqueue"))?;
        let Some(slots) = platform.alloc_dma((usize::from(depth) * SLOT_BYTES).div_ceil(PAGE_SIZE))
        else {
            platform.free_dma(ring);
            return Err(VirtioBlkError::NoMemory("request slots"));
        };
        let queue = match SplitQueue::new(ring, entries, features & features::RING_EVENT_IDX != 0) {
            Ok(q) => q,
            Err(e) => {
                platform.free_dma(slots);
                return Err(VirtioBlkError::Queue(e));
            }
        };
        // From here on, dropping `disk` resets the device and frees the memory.
        let mut disk = Self {
            transport,
            queue,
            slots,
            free_slots: (0..depth).rev().collect(),
            heads: alloc::vec![None; usize::from(entries)],
            depth: usize::from(depth),
            features,
            capacity: 0,
            doorbells: 0,
            early: Vec::new(),
            interrupts_seen: platform.interrupt_total(),
            drain_pending: false,
            polling: false,
            broken: None,
            _platform: PhantomData,
        };
        disk.transport
            .setup_queue(
                QUEUE,
                entries,
                disk.queue.desc_pa(),
                disk.queue.avail_pa(),
                disk.queue.used_pa(),
            )
            .map_err(VirtioBlkError::Transport)?;
        disk.transport.driver_ok();
        disk.capacity = disk
            .transport
            .config_u64(0)
            .ok_or(VirtioBlkError::Transport(TransportError::Window(size)))?;
        Ok(disk)
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the device is read-only.
    pub fn read_only(&self) -> bool {
        self.features & features::BLK_RO != 0
    }

    /// The negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Entries of the virtqueue.
    pub fn queue_size(&self) -> usize {
        usize::from(self.queue.size())
    }

    /// Requests the driver can have in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.depth
    }

    /// Doorbells (QueueNotify writes) rung so far.
    pub fn doorbells(&self) -> u64 {
        self.doorbells
    }

    /// Requests submitted through [`VirtioBlk::submit`] and not yet returned by [`VirtioBlk::poll`].
    pub fn outstanding(&self) -> usize {
        usize::from(self.queue.in_flight()) + self.early.len()
    }

    fn slot_base(slot: u16) -> usize {
        usize::from(slot) * SLOT_BYTES
    }

    /// Frames a request in a free slot and adds it to the queue (published, not yet kicked).
    fn start(
        &mut self,
        owner: Owner,
        kind: u32,
        sector: u64,
        data: Option<Buffer>,
    ) -> Result<(), VirtioBlkError> {
        if let Some(e) = self.broken {
            return Err(VirtioBlkError::Broken(e));
        }
        let slot = self.free_slots.pop().ok_or(VirtioBlkError::QueueFull)?;
        let base = Self::slot_base(slot);
        let s = &self.slots;
        s.atomic_u32(base + HEADER_AT)
            .store(kind.to_le(), Ordering::Relaxed);
        s.atomic_u32(base + HEADER_AT + 4)
            .store(0, Ordering::Relaxed);
        s.atomic_u64(base + HEADER_AT + 8)
            .store(sector.to_le(), Ordering::Relaxed);
        s.write(base + STATUS_AT, &[STATUS_UNSET]);
        let pa = s.pa + base as u64;
        let header = Buffer {
            pa: pa + HEADER_AT as u64,
            len: 16,
            device_writes: false,
        };
        let status = Buffer {
            pa: pa + STATUS_AT as u64,
            len: 1,
            device_writes: true,
        };
        let chain = match data {
            Some(d) => [header, d, status],
            None => [header, status, status],
        };
        let chain = &chain[..if data.is_some() { 3 } else { 2 }];
        let added = if self.features & features::RING_INDIRECT_DESC != 0 {
            write_indirect_table(s, base + TABLE_AT, chain);
            self.queue.add_indirect(pa + TABLE_AT as u64, chain.len())
        } else {
            self.queue.add(chain)
        };
        match added {
            Ok(head) => {
                self.heads[usize::from(head)] = Some(InFlight { owner, slot });
                Ok(())
            }
            Err(e) => {
                self.free_slots.push(slot);
                Err(match e {
                    QueueError::Full { .. } => VirtioBlkError::QueueFull,
                    e => VirtioBlkError::Queue(e),
                })
            }
        }
    }

    /// The next finished request, if any.
    fn reap_one(&mut self) -> Option<(Owner, Result<(), VirtioBlkError>)> {
        let used = match self.queue.pop_used() {
            Ok(Some(used)) => used,
            Ok(None) => return None,
            Err(e) => {
                self.break_device(e);
                return None;
            }
        };
        let Some(r) = self.heads[usize::from(used.head)].take() else {
            self.break_device(QueueError::BadUsedHead(u32::from(used.head)));
            return None;
        };
        let mut st = [STATUS_UNSET];
        self.slots
            .read(Self::slot_base(r.slot) + STATUS_AT, &mut st);
        self.free_slots.push(r.slot);
        let result = match st[0] {
            status::OK => Ok(()),
            other => Err(VirtioBlkError::Status(other)),
        };
        Some((r.owner, result))
    }

    /// The device broke the protocol: reset it (it stops touching memory) and fail everything in flight.
    fn break_device(&mut self, e: QueueError) {
        self.transport.reset();
        self.broken = Some(e);
        for r in self.heads.iter_mut().filter_map(Option::take) {
            self.free_slots.push(r.slot);
            if let Owner::Caller(tag) = r.owner {
                self.early.push((tag, Err(VirtioBlkError::Broken(e))));
            }
        }
    }

    /// Queues one request (the queue API: many in flight, one [`VirtioBlk::kick`] per batch, completions
    /// by [`VirtioBlk::poll`]). [`VirtioBlkError::QueueFull`] when [`VirtioBlk::max_in_flight`] are in
    /// flight.
    ///
    /// # Safety
    /// `pa..pa + len` must be memory the caller owns at that guest-physical address, left allocated and
    /// untouched until [`VirtioBlk::poll`] returns `tag` (dropping the driver resets the device first).
    pub unsafe fn submit(
        &mut self,
        tag: u32,
        write: bool,
        lba: u64,
        pa: u64,
        len: usize,
    ) -> Result<(), VirtioBlkError> {
        let len = check_len(len)?;
        let kind = if write { req_type::OUT } else { req_type::IN };
        let data = Buffer {
            pa,
            len,
            device_writes: !write,
        };
        self.start(Owner::Caller(tag), kind, lba, Some(data))
    }

    /// Notifies the device of the requests submitted since the last kick, if the device asked for it
    /// (`vring_need_event` over the batch). Returns whether the doorbell rang.
    pub fn kick(&mut self) -> bool {
        if self.polling && self.queue.in_flight() > 0 {
            // These completions will be polled for: the device need not interrupt.
            self.queue.disable_cb();
        }
        if self.broken.is_some() || !self.queue.kick_prepare() {
            return false;
        }
        self.transport.notify(QUEUE);
        self.doorbells += 1;
        true
    }

    /// Appends finished queue-API requests as `(tag, result)` to `out` without blocking; returns how
    /// many. Completions are taken the way Linux's interrupt handler takes them (`virtblk_done`): only
    /// once an interrupt arrived since the last drain (or while notifications are off, when nothing else
    /// would say so), with used-buffer notifications suppressed while draining and then re-enabled
    /// (`enable_cb_delayed`) with a re-check that drains again if more completed meanwhile. Between polls
    /// notifications stay enabled, so every completion is followed by an interrupt or seen by a drain.
    pub fn poll(&mut self, out: &mut Vec<(u32, Result<(), VirtioBlkError>)>) -> usize {
        let before = out.len();
        out.append(&mut self.early);
        if self.polling {
            // Poll mode: reap with notifications left off while requests are in flight; once none
            // is, turn them back on (with the re-check) so an idle driver can sleep.
            self.drain(out, false);
            if self.queue.in_flight() == 0 && !self.queue.callbacks_enabled() {
                self.drain(out, true);
            }
            return out.len() - before;
        }
        // Read before draining: an interrupt during the drain makes the next poll drain again.
        let interrupts = P::platform().interrupt_total();
        if interrupts != self.interrupts_seen
            || self.drain_pending
            || !self.queue.callbacks_enabled()
        {
            self.interrupts_seen = interrupts;
            self.drain_pending = false;
            self.drain(out, true);
        }
        out.len() - before
    }

    /// Reaps everything used into `out`; `rearm`: then re-enable notifications with the re-check
    /// (otherwise they stay suppressed, for spinning callers).
    fn drain(&mut self, out: &mut Vec<(u32, Result<(), VirtioBlkError>)>, rearm: bool) -> usize {
        let before = out.len();
        loop {
            if self.broken.is_some() {
                break;
            }
            self.queue.disable_cb();
            while let Some((owner, result)) = self.reap_one() {
                if let Owner::Caller(tag) = owner {
                    out.push((tag, result));
                }
            }
            if !rearm || self.broken.is_some() || self.queue.enable_cb_delayed() {
                break;
            }
        }
        out.append(&mut self.early);
        out.len() - before
    }

    /// Sleeps until an interrupt arrives, unless one already did since the last drain (the next
    /// [`VirtioBlk::poll`] takes its completions). Returns whether it halted.
    pub fn wait(&mut self) -> bool {
        if self.queue.in_flight() == 0 || self.broken.is_some() {
            return false;
        }
        if self.polling {
            // No interrupt will come: the caller polls again.
            core::hint::spin_loop();
            return false;
        }
        if self.drain_pending
            || (!self.queue.callbacks_enabled() && !self.queue.enable_cb_delayed())
        {
            // Completions arrived while notifications were off: `poll` drains them.
            self.drain_pending = true;
            return false;
        }
        P::platform().wait_for_interrupt(self.interrupts_seen);
        true
    }

    /// Runs one request of the driver's own to completion, spinning with used-buffer notifications
    /// suppressed (it costs a doorbell and no interrupt); queue-API completions it meets wait in `early`.
    fn run_sync(
        &mut self,
        kind: u32,
        sector: u64,
        data: Option<Buffer>,
    ) -> Result<(), VirtioBlkError> {
        let rearm = self.queue.callbacks_enabled();
        self.queue.disable_cb();
        let result = self.start(Owner::Sync, kind, sector, data).and_then(|()| {
            self.kick();
            loop {
                match self.reap_one() {
                    Some((Owner::Sync, result)) => break result,
                    Some((Owner::Caller(tag), result)) => self.early.push((tag, result)),
                    None => match self.broken {
                        Some(e) => break Err(VirtioBlkError::Broken(e)),
                        None => core::hint::spin_loop(),
                    },
                }
            }
        });
        if rearm && self.broken.is_none() && !self.queue.enable_cb_delayed() {
            self.drain_pending = true;
        }
        result
    }

    /// Poll for completions (used-buffer notifications suppressed while requests are in flight)
    /// instead of waiting for interrupts; switching it off re-enables them.
    pub fn set_polling(&mut self, on: bool) {
        self.polling = on;
        if !on
            && !self.queue.callbacks_enabled()
            && self.broken.is_none()
            && !self.queue.enable_cb_delayed()
        {
            self.drain_pending = true;
        }
    }

    /// The device id string (GET_ID), up to 20 bytes.
    pub fn device_id(&mut self) -> Result<Vec<u8>, VirtioBlkError> {
        let mut id = [0u8; ID_BYTES];
        let buf = Buffer {
            pa: id.as_mut_ptr() as u64,
            len: ID_BYTES as u32,
            device_writes: true,
        };
        self.run_sync(req_type::GET_ID, 0, Some(buf))?;
        let n = id.iter().position(|&b| b == 0).unwrap_or(ID_BYTES);
        Ok(id[..n].to_vec())
    }

    /// Reads `buf` from sector `lba`, one request, spinning until it completes.
    pub fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), VirtioBlkError> {
        let len = check_len(buf.len())?;
        let data = Buffer {
            pa: buf.as_mut_ptr() as u64,
            len,
            device_writes: true,
        };
        self.run_sync(req_type::IN, lba, Some(data))
    }

    /// Writes `buf` at sector `lba`, one request, spinning until it completes.
    pub fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), VirtioBlkError> {
        let len = check_len(buf.len())?;
        let data = Buffer {
            pa: buf.as_ptr() as u64,
            len,
            device_writes: false,
        };
        self.run_sync(req_type::OUT, lba, Some(data))
    }

    /// FLUSH (nothing to do if the device did not offer VIRTIO_BLK_F_FLUSH).
    pub fn flush(&mut self) -> Result<(), VirtioBlkError> {
        if self.features & features::BLK_FLUSH == 0 {
            return Ok(());
        }
        self.run_sync(req_type::FLUSH, 0, None)
    }

    /// Reads consecutive extents into `bufs` (buffer `i` at `lba` + the sectors of the buffers before it)
    /// with as many requests in flight as the driver holds.
    pub fn read_batch(
        &mut self,
        lba: u64,
        bufs: &mut [Vec<u8>],
        wait: Completion,
    ) -> Result<BatchStats, VirtioBlkError> {
        self.batch(false, lba, bufs, wait)
    }

    /// Writes `bufs` to consecutive extents starting at `lba`, as many requests in flight as fit.
    pub fn write_batch(
        &mut self,
        lba: u64,
        bufs: &mut [Vec<u8>],
        wait: Completion,
    ) -> Result<BatchStats, VirtioBlkError> {
        self.batch(true, lba, bufs, wait)
    }

    fn batch(
        &mut self,
        write: bool,
        lba: u64,
        bufs: &mut [Vec<u8>],
        wait: Completion,
    ) -> Result<BatchStats, VirtioBlkError> {
        if self.outstanding() > 0 {
            return Err(VirtioBlkError::Outstanding(self.outstanding()));
        }
        let mut starts = Vec::with_capacity(bufs.len());
        let mut at = lba;
        for b in bufs.iter() {
            check_len(b.len())?;
            starts.push(at);
            at += (b.len() / SECTOR_SIZE) as u64;
        }
        let mut stats = BatchStats::default();
        let (mut next, mut in_flight) = (0usize, 0usize);
        let mut failed = None;
        let mut done = Vec::new();
        // On a failed request, stop submitting but reap everything in flight: the device may still be
        // writing into those buffers.
        while in_flight > 0 || (failed.is_none() && next < bufs.len()) {
            let mut submitted = false;
            while next < bufs.len() && failed.is_none() {
                let b = &mut bufs[next];
                // SAFETY: `bufs` is borrowed mutably for the whole call and never resized; this loop
                // only ends once nothing is in flight (or the device was reset), and the kernel is
                // identity mapped (`IdentityMapped`), so `b`'s address is its guest-physical address.
                let r = unsafe {
                    self.submit(
                        next as u32,
                        write,
                        starts[next],
                        b.as_mut_ptr() as u64,
                        b.len(),
                    )
                };
                match r {
                    Ok(()) => {
                        next += 1;
                        in_flight += 1;
                        submitted = true;
                        stats.max_in_flight = stats.max_in_flight.max(in_flight);
                    }
                    Err(VirtioBlkError::QueueFull) if in_flight > 0 => break,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if submitted {
                self.kick();
            }
            done.clear();
            let reaped = match wait {
                Completion::Interrupt => self.poll(&mut done),
                Completion::Poll => self.drain(&mut done, false),
            };
            for (tag, result) in done.drain(..) {
                in_flight -= 1;
                stats.requests += 1;
                if let Err(e) = result {
                    failed.get_or_insert(match e {
                        VirtioBlkError::Status(status) => VirtioBlkError::Request {
                            index: tag as usize,
                            status,
                        },
                        e => e,
                    });
                }
            }
            if reaped == 0 && in_flight > 0 {
                match wait {
                    Completion::Interrupt => stats.sleeps += u64::from(self.wait()),
                    Completion::Poll => core::hint::spin_loop(),
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }
}

impl<P: IdentityMapped> Drop for VirtioBlk<P> {
    fn drop(&mut self) {
        // The device must stop using the rings and every buffer before the memory goes back.
        self.transport.reset();
        let platform = P::platform();
        platform.free_dma(self.queue.release_memory());
        platform.free_dma(core::mem::replace(&mut self.slots, DmaRegion::empty()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_size_is_the_largest_power_of_two_allowed() {
        assert_eq!(queue_size(0), 0);
        assert_eq!(queue_size(1), 1);
        assert_eq!(queue_size(100), 64);
        assert_eq!(queue_size(256), 256);
        assert_eq!(queue_size(1024), MAX_QUEUE_SIZE);
    }

    #[test]
    fn lengths_are_whole_sectors() {
        assert_eq!(check_len(4096).unwrap(), 4096);
        for bad in [0, 1, 511, 4097] {
            assert!(matches!(check_len(bad), Err(VirtioBlkError::BadLength(l)) if l == bad));
        }
    }
}
