//! virtio-net over virtio-mmio (virtio 1.x §5.1), on [`crate::virtio`]'s split virtqueue and MMIO
//! transport, held to the discipline of Linux's `virtio_net` driver, and offered to a guest's stack as a
//! [`GuestNic`] (a smoltcp [`Device`]):
//!
//! - **Features.** VERSION_1, MAC, STATUS and EVENT_IDX; no offloads, no mergeable buffers. Every buffer
//!   starts with the 12-byte `virtio_net_hdr` (VERSION_1 always has `num_buffers`), all zero on transmit.
//!   Receive queue 0, transmit queue 1.
//! - **Receive buffers** are 2 KiB slots (header + a 1514-byte frame fit; two per page), one descriptor
//!   each. They are refilled in batches — once half the slots are free, and all of them before the
//!   driver sleeps — with one kick decision per batch (`vring_need_event` against the device's
//!   `avail_event`: the device asks only when it ran out).
//! - **Interrupts, NAPI style.** [`VirtioNet::poll`] drains the used rings with used-buffer notifications
//!   suppressed (`used_event` half the index space away) and leaves them suppressed while the guest is
//!   busy; only [`VirtioNet::wait`], about to sleep, re-enables them and re-checks the used ring (a frame
//!   that landed in between is drained instead of slept through). So an interrupt costs at most one per
//!   sleep, and a guest that never sleeps takes none.
//! - **Transmit.** A frame is copied behind a zero header into a free slot and published at once;
//!   [`VirtioNet::flush`] decides one doorbell for everything published since the last one
//!   (`vring_need_event`). Completed slots are reclaimed by polling (Linux's `free_old_xmit`); transmit
//!   interrupts stay off unless the ring is full when the driver sleeps (`enable_cb_delayed`).
//!
//! Buffers carry guest-physical addresses: the platform is [`IdentityMapped`]. A device that breaks the
//! queue protocol (a used entry naming no buffer in flight, a used index running ahead, a length
//! outside a slot) is reset and the NIC fails from then on.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::ptr::NonNull;

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

use crate::net::{GuestNic, NicCounters};
use crate::platform::{DmaRegion, Platform, PAGE_SIZE};
use crate::virtio::features;
use crate::virtio::mmio::{MmioTransport, TransportError};
use crate::virtio::split_queue::{Buffer, QueueError, RingLayout, SplitQueue};
use crate::virtio_blk::IdentityMapped;

/// virtio device type of a network device.
pub const DEVICE_ID_NET: u32 = 1;
/// virtio-net feature bits (§5.1.3).
pub mod net_features {
    /// `mac` in the configuration space is valid.
    pub const MAC: u64 = 1 << 5;
    /// `status` in the configuration space is valid.
    pub const STATUS: u64 = 1 << 16;
}
/// Features the driver uses.
pub const WANTED_FEATURES: u64 =
    features::VERSION_1 | features::RING_EVENT_IDX | net_features::MAC | net_features::STATUS;
/// Bytes of the header in front of every frame.
pub const NET_HDR_LEN: usize = 12;
/// Largest Ethernet payload.
pub const MTU: usize = 1500;
/// Largest frame (no FCS, no VLAN tag).
pub const MAX_FRAME_LEN: usize = MTU + 14;
/// Largest queue the driver sets up.
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Receive queue index.
pub const RX_QUEUE: u16 = 0;
/// Transmit queue index.
pub const TX_QUEUE: u16 = 1;
/// Bytes of one buffer slot.
const SLOT_BYTES: usize = 2048;
const _: () =
    assert!(NET_HDR_LEN + MAX_FRAME_LEN <= SLOT_BYTES && PAGE_SIZE.is_multiple_of(SLOT_BYTES));
/// `status` bit: link up.
const STATUS_LINK_UP: u16 = 1;

/// Driver errors.
#[derive(Debug, thiserror::Error)]
pub enum VirtioNetError {
    /// The window does not hold a usable virtio-mmio device.
    #[error("virtio-mmio transport")]
    Transport(#[source] TransportError),
    /// The device is not a network device.
    #[error("virtio device type {0} is not a network device")]
    NotNet(u32),
    /// The device offers no MAC address.
    #[error("the device offers no MAC address")]
    NoMac,
    /// The platform had no DMA memory.
    #[error("no DMA memory for {0}")]
    NoMemory(&'static str),
    /// A virtqueue could not be set up.
    #[error("virtqueue setup")]
    Queue(#[source] QueueError),
    /// The device broke the queue protocol; the driver reset it.
    #[error("the device broke the virtqueue protocol and was reset")]
    Broken(#[source] QueueError),
}

/// The driver's counters beyond [`NicCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioNetStats {
    /// The counters every NIC keeps.
    pub nic: NicCounters,
    /// Transmit doorbells rung.
    pub tx_kicks: u64,
    /// Receive doorbells rung (refills the device asked to hear about).
    pub rx_kicks: u64,
    /// Refill batches.
    pub refills: u64,
    /// Times the driver slept waiting for an interrupt.
    pub sleeps: u64,
}

/// Buffer slots in one DMA region, their bookkeeping by head descriptor.
struct Slots {
    mem: DmaRegion,
    free: Vec<u16>,
    /// Slot of each chain in flight, by head descriptor.
    by_head: Vec<Option<u16>>,
}

impl Slots {
    fn new(mem: DmaRegion, count: u16, heads: u16) -> Self {
        Self {
            mem,
            free: (0..count).rev().collect(),
            by_head: alloc::vec![None; usize::from(heads)],
        }
    }

    fn offset(slot: u16) -> usize {
        usize::from(slot) * SLOT_BYTES
    }

    fn pa(&self, slot: u16) -> u64 {
        self.mem.pa + Self::offset(slot) as u64
    }

    /// The slot the device returned as `head`, taken out of flight.
    fn finish(&mut self, head: u16) -> Result<u16, QueueError> {
        self.by_head
            .get_mut(usize::from(head))
            .and_then(Option::take)
            .ok_or(QueueError::BadUsedHead(u32::from(head)))
    }
}

/// The receive side.
struct RxPath {
    queue: SplitQueue,
    slots: Slots,
    /// Received frames the stack has not taken: (slot, frame length).
    ready: VecDeque<(u16, usize)>,
    staging: Vec<u8>,
    frames: u64,
    errors: u64,
}

/// The transmit side.
struct TxPath {
    queue: SplitQueue,
    slots: Slots,
    staging: Vec<u8>,
    frames: u64,
    busy: u64,
}

/// A virtio-net NIC. See the module documentation.
pub struct VirtioNet<P: IdentityMapped> {
    transport: MmioTransport,
    rx: RxPath,
    tx: TxPath,
    mac: [u8; 6],
    link_up: bool,
    features: u64,
    stats: VirtioNetStats,
    broken: Option<QueueError>,
    _platform: PhantomData<P>,
}

impl<P: IdentityMapped> core::fmt::Debug for VirtioNet<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioNet")
            .field("mac", &self.mac)
            .field("features", &format_args!("{:#x}", self.features))
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
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

/// Whether a used length is a header plus a frame.
fn valid_rx_len(len: u32) -> bool {
    (NET_HDR_LEN + 1..=NET_HDR_LEN + MAX_FRAME_LEN).contains(&(len as usize))
}

/// A queue of up to [`MAX_QUEUE_SIZE`] entries with its ring memory and `entries` buffer slots.
fn make_queue(
    platform: &impl Platform,
    transport: &MmioTransport,
    index: u16,
    event_idx: bool,
) -> Result<(SplitQueue, Slots), VirtioNetError> {
    let max = transport.queue_max(index);
    let entries = queue_size(max);
    if entries == 0 {
        return Err(VirtioNetError::Transport(TransportError::QueueSize {
            index,
            max,
            wanted: 1,
        }));
    }
    let layout = RingLayout::new(entries).map_err(VirtioNetError::Queue)?;
    let ring = platform
        .alloc_dma(layout.pages())
        .ok_or(VirtioNetError::NoMemory("a virtqueue"))?;
    let Some(bufs) = platform.alloc_dma((usize::from(entries) * SLOT_BYTES).div_ceil(PAGE_SIZE))
    else {
        platform.free_dma(ring);
        return Err(VirtioNetError::NoMemory("buffer slots"));
    };
    match SplitQueue::new(ring, entries, event_idx) {
        Ok(q) => Ok((q, Slots::new(bufs, entries, entries))),
        Err(e) => {
            platform.free_dma(bufs);
            Err(VirtioNetError::Queue(e))
        }
    }
}

impl<P: IdentityMapped> VirtioNet<P> {
    /// Initialises the virtio-mmio network device whose window (at least 0x108 bytes) is at `gpa`:
    /// negotiates [`WANTED_FEATURES`], sets up both queues and their buffers, sets DRIVER_OK, reads
    /// the MAC and link status and posts every receive buffer.
    ///
    /// # Safety
    /// `gpa..gpa + size` must be a virtio-mmio device window, identity mapped and used by nothing else
    /// for as long as the returned driver lives.
    pub unsafe fn probe(gpa: u64, size: usize) -> Result<Self, VirtioNetError> {
        let base = NonNull::new(gpa as *mut u8)
            .ok_or(VirtioNetError::Transport(TransportError::Window(size)))?;
        // SAFETY: the caller guarantees the window is a virtio-mmio device mapped for our lifetime.
        let transport =
            unsafe { MmioTransport::new(base, size) }.map_err(VirtioNetError::Transport)?;
        let kind = transport.device_id();
        if kind != DEVICE_ID_NET {
            return Err(VirtioNetError::NotNet(kind));
        }
        let features = transport
            .negotiate(WANTED_FEATURES)
            .map_err(VirtioNetError::Transport)?;
        if features & net_features::MAC == 0 {
            transport.fail();
            return Err(VirtioNetError::NoMac);
        }
        let event_idx = features & features::RING_EVENT_IDX != 0;
        let platform = P::platform();
        let (rxq, rx_slots) = make_queue(&platform, &transport, RX_QUEUE, event_idx)?;
        let (txq, tx_slots) = match make_queue(&platform, &transport, TX_QUEUE, event_idx) {
            Ok(t) => t,
            Err(e) => {
                let mut rxq = rxq;
                platform.free_dma(rxq.release_memory());
                platform.free_dma(rx_slots.mem);
                return Err(e);
            }
        };
        // From here on, dropping `nic` resets the device and frees the memory.
        let mut nic = Self {
            transport,
            rx: RxPath {
                queue: rxq,
                slots: rx_slots,
                ready: VecDeque::new(),
                staging: alloc::vec![0; MAX_FRAME_LEN],
                frames: 0,
                errors: 0,
            },
            tx: TxPath {
                queue: txq,
                slots: tx_slots,
                staging: alloc::vec![0; MAX_FRAME_LEN],
                frames: 0,
                busy: 0,
            },
            mac: [0; 6],
            link_up: true,
            features,
            stats: VirtioNetStats::default(),
            broken: None,
            _platform: PhantomData,
        };
        for (index, q) in [(RX_QUEUE, &nic.rx.queue), (TX_QUEUE, &nic.tx.queue)] {
            nic.transport
                .setup_queue(index, q.size(), q.desc_pa(), q.avail_pa(), q.used_pa())
                .map_err(VirtioNetError::Transport)?;
        }
        // Used-buffer notifications stay off until the driver is about to sleep.
        nic.rx.queue.disable_cb();
        nic.tx.queue.disable_cb();
        nic.transport.driver_ok();
        let config = nic
            .transport
            .config_u64(0)
            .ok_or(VirtioNetError::Transport(TransportError::Window(size)))?
            .to_le_bytes();
        nic.mac.copy_from_slice(&config[..6]);
        if features & net_features::STATUS != 0 {
            nic.link_up = u16::from_le_bytes([config[6], config[7]]) & STATUS_LINK_UP != 0;
        }
        nic.refill();
        Ok(nic)
    }

    /// The negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The driver's counters.
    pub fn stats(&self) -> VirtioNetStats {
        let mut s = self.stats;
        s.nic.rx_frames = self.rx.frames;
        s.nic.rx_errors = self.rx.errors;
        s.nic.tx_frames = self.tx.frames;
        s.nic.tx_busy = self.tx.busy;
        s.nic.signals = s.tx_kicks + s.rx_kicks;
        s
    }

    /// Receive buffers posted to the device now.
    pub fn rx_posted(&self) -> usize {
        usize::from(self.rx.queue.in_flight())
    }

    /// Reads the link status from the configuration space again (a register access: an exit).
    pub fn refresh_link(&mut self) -> bool {
        if self.features & net_features::STATUS != 0 {
            if let Some(c) = self.transport.config_u64(0) {
                let b = c.to_le_bytes();
                self.link_up = u16::from_le_bytes([b[6], b[7]]) & STATUS_LINK_UP != 0;
            }
        }
        self.link_up
    }

    /// The device broke the protocol: reset it (it stops touching memory) and fail from now on.
    fn break_device(&mut self, e: QueueError) -> VirtioNetError {
        if self.broken.is_none() {
            self.transport.reset();
            self.broken = Some(e);
        }
        VirtioNetError::Broken(e)
    }

    /// Posts every free receive slot, then one kick decision for the batch.
    fn refill(&mut self) {
        let rx = &mut self.rx;
        if rx.slots.free.is_empty() || self.broken.is_some() {
            return;
        }
        while let Some(slot) = rx.slots.free.pop() {
            let buf = Buffer {
                pa: rx.slots.pa(slot),
                len: SLOT_BYTES as u32,
                device_writes: true,
            };
            match rx.queue.add(&[buf]) {
                Ok(head) => rx.slots.by_head[usize::from(head)] = Some(slot),
                Err(_) => {
                    rx.slots.free.push(slot);
                    break;
                }
            }
        }
        self.stats.refills += 1;
        if rx.queue.kick_prepare() {
            self.transport.notify(RX_QUEUE);
            self.stats.rx_kicks += 1;
        }
    }

    /// Takes every used receive buffer (as frames for the stack) and every used transmit slot.
    fn drain(&mut self) -> Result<usize, VirtioNetError> {
        let mut events = 0;
        loop {
            let used = match self.rx.queue.pop_used() {
                Ok(Some(u)) => u,
                Ok(None) => break,
                Err(e) => return Err(self.break_device(e)),
            };
            let slot = match self.rx.slots.finish(used.head) {
                Ok(s) => s,
                Err(e) => return Err(self.break_device(e)),
            };
            events += 1;
            if valid_rx_len(used.len) {
                self.rx
                    .ready
                    .push_back((slot, used.len as usize - NET_HDR_LEN));
                self.rx.frames += 1;
            } else {
                self.rx.errors += 1;
                self.rx.slots.free.push(slot);
            }
        }
        events += self.reap_tx()?;
        Ok(events)
    }

    fn reap_tx(&mut self) -> Result<usize, VirtioNetError> {
        let mut n = 0;
        loop {
            match self.tx.queue.pop_used() {
                Ok(Some(u)) => match self.tx.slots.finish(u.head) {
                    Ok(slot) => {
                        self.tx.slots.free.push(slot);
                        n += 1;
                    }
                    Err(e) => return Err(self.break_device(e)),
                },
                Ok(None) => return Ok(n),
                Err(e) => return Err(self.break_device(e)),
            }
        }
    }

    /// Handles what the device did: drains both used rings with notifications suppressed (and
    /// leaves them so while the guest is busy), refills once half the receive slots are free.
    pub fn poll(&mut self) -> Result<usize, VirtioNetError> {
        if let Some(e) = self.broken {
            return Err(VirtioNetError::Broken(e));
        }
        self.rx.queue.disable_cb();
        self.tx.queue.disable_cb();
        let events = self.drain()?;
        if self.rx.slots.free.len() >= usize::from(self.rx.queue.size()) / 2 {
            self.refill();
        }
        Ok(events)
    }

    /// One doorbell for every frame published since the last one, if the device asked for it.
    pub fn flush(&mut self) -> Result<bool, VirtioNetError> {
        if let Some(e) = self.broken {
            return Err(VirtioNetError::Broken(e));
        }
        if !self.tx.queue.kick_prepare() {
            return Ok(false);
        }
        self.transport.notify(TX_QUEUE);
        self.stats.tx_kicks += 1;
        Ok(true)
    }

    /// Sleeps until the device interrupts: refills every free receive slot, re-enables receive
    /// notifications (and transmit ones if no slot is free) and re-checks; returns at once if
    /// anything is already there to drain. Returns whether it slept.
    pub fn wait(&mut self) -> bool {
        if self.broken.is_some() || !self.rx.ready.is_empty() {
            return false;
        }
        self.refill();
        let platform = P::platform();
        // Before the re-enable: an interrupt after it ends the sleep at once.
        let seen = platform.interrupt_total();
        if !self.rx.queue.enable_cb() {
            return false;
        }
        if self.tx.slots.free.is_empty() && !self.tx.queue.enable_cb_delayed() {
            return false;
        }
        self.stats.sleeps += 1;
        platform.wait_for_interrupt(seen);
        true
    }

    /// Copies `frame` behind a zero header into a free transmit slot and publishes it (the doorbell
    /// waits for [`VirtioNet::flush`]). False when no slot is free (the frame is not queued).
    pub fn send(&mut self, frame: &[u8]) -> bool {
        let _ = self.reap_tx();
        if frame.len() > MAX_FRAME_LEN || self.broken.is_some() {
            self.tx.busy += 1;
            return false;
        }
        self.tx.staging[..frame.len()].copy_from_slice(frame);
        self.tx.queue_staged(frame.len())
    }
}

impl TxPath {
    fn can_send(&self) -> bool {
        !self.slots.free.is_empty() && self.queue.num_free() > 0
    }

    /// Queues the first `len` staged bytes as a frame.
    fn queue_staged(&mut self, len: usize) -> bool {
        let Some(slot) = self.slots.free.pop() else {
            self.busy += 1;
            return false;
        };
        let at = Slots::offset(slot);
        self.slots.mem.write(at, &[0; NET_HDR_LEN]);
        self.slots.mem.write(at + NET_HDR_LEN, &self.staging[..len]);
        let buf = Buffer {
            pa: self.slots.pa(slot),
            len: (NET_HDR_LEN + len) as u32,
            device_writes: false,
        };
        match self.queue.add(&[buf]) {
            Ok(head) => {
                self.slots.by_head[usize::from(head)] = Some(slot);
                self.frames += 1;
                true
            }
            Err(_) => {
                self.slots.free.push(slot);
                self.busy += 1;
                false
            }
        }
    }
}

impl<P: IdentityMapped> Drop for VirtioNet<P> {
    fn drop(&mut self) {
        // The device must stop using the rings and every buffer before the memory goes back.
        self.transport.reset();
        let platform = P::platform();
        platform.free_dma(self.rx.queue.release_memory());
        platform.free_dma(self.tx.queue.release_memory());
        platform.free_dma(core::mem::replace(
            &mut self.rx.slots.mem,
            DmaRegion::empty(),
        ));
        platform.free_dma(core::mem::replace(
            &mut self.tx.slots.mem,
            DmaRegion::empty(),
        ));
    }
}

/// Receive token: the oldest received frame, copied once out of its slot.
#[derive(Debug)]
pub struct VirtioRxToken<'a> {
    rx: &'a mut RxPath,
}

impl core::fmt::Debug for RxPath {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RxPath")
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl core::fmt::Debug for TxPath {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TxPath")
            .field("free", &self.slots.free.len())
            .finish_non_exhaustive()
    }
}

impl RxToken for VirtioRxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        // Tokens are only made while a frame waits.
        let Some((slot, len)) = self.rx.ready.pop_front() else {
            return f(&[]);
        };
        let rx = self.rx;
        rx.slots
            .mem
            .read(Slots::offset(slot) + NET_HDR_LEN, &mut rx.staging[..len]);
        rx.slots.free.push(slot);
        f(&rx.staging[..len])
    }
}

/// Transmit token: a frame built in the staging buffer, queued when smoltcp is done.
#[derive(Debug)]
pub struct VirtioTxToken<'a> {
    tx: &'a mut TxPath,
}

impl TxToken for VirtioTxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        if len > MAX_FRAME_LEN {
            // Larger than the MTU we announced: smoltcp never asks; build and drop it.
            let mut scratch = alloc::vec![0u8; len];
            self.tx.busy += 1;
            return f(&mut scratch);
        }
        let result = f(&mut self.tx.staging[..len]);
        // Transmit tokens are only made while a slot is free.
        let _ = self.tx.queue_staged(len);
        result
    }
}

impl<P: IdentityMapped> Device for VirtioNet<P> {
    type RxToken<'a> = VirtioRxToken<'a>;
    type TxToken<'a> = VirtioTxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.rx.ready.is_empty() {
            return None;
        }
        Some((
            VirtioRxToken { rx: &mut self.rx },
            VirtioTxToken { tx: &mut self.tx },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if self.broken.is_some() {
            return None;
        }
        if !self.tx.can_send() && self.reap_tx().is_err() {
            return None;
        }
        if !self.tx.can_send() {
            return None;
        }
        Some(VirtioTxToken { tx: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // For Ethernet, smoltcp's MTU counts the header.
        caps.max_transmission_unit = MAX_FRAME_LEN;
        caps
    }
}

impl<P: IdentityMapped> GuestNic for VirtioNet<P> {
    type Error = VirtioNetError;

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn mtu(&self) -> usize {
        MTU
    }

    fn link_up(&self) -> bool {
        self.link_up
    }

    fn poll(&mut self) -> Result<usize, Self::Error> {
        VirtioNet::poll(self)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        VirtioNet::flush(self).map(drop)
    }

    fn wait(&mut self) {
        VirtioNet::wait(self);
    }

    fn counters(&self) -> NicCounters {
        self.stats().nic
    }
}

#[cfg(test)]
#[path = "virtio_net_tests.rs"]
mod tests;
