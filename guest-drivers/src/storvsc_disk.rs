//! A storvsc disk on a real VMBus channel: [`crate::storvsc::Storvsc`]'s sans-I/O logic driven over a
//! [`Channel`] — the init handshake, READ CAPACITY, then reads and writes whose data buffers are passed
//! by physical page number (GPA-direct packets, no copies), many outstanding, completed by interrupt.
//!
//! Transitions are batched like everything on VMBus: requests queued by [`StorvscDisk::submit`] cost
//! one HvSignalEvent at [`StorvscDisk::kick`] (and none when the host is still draining the ring);
//! completions are drained in batches with interrupts masked.
//!
//! Nothing on the submit/complete path allocates: the page list is built in a buffer sized at
//! [`StorvscDisk::open`], the caller's tag rides in the driver's request slot, and the receive buffer
//! is preallocated. A transfer shorter than asked is an error here ([`IoError::Short`]); a LUN the
//! host reports gone (`SRB_STATUS_INVALID_LUN`) fails every later submit with [`DiskError::LunGone`].

use alloc::vec;
use alloc::vec::Vec;

use storvsp_protocol::VSTOR_PACKET_SIZE;
use vmbus::ring::RingError;

use crate::hv::hypercall::{EventSignaller, HypercallError};
use crate::hv::synic::EventFlags;
use crate::platform::{Platform, PAGE_SIZE};
use crate::storvsc::{
    parse_capacity16, Completion, Event, HandshakeStep, IoError, Request, Storvsc, StorvscError,
    MAX_DATA_PFNS,
};
use crate::vmbus_client::{Channel, VmbusConnection, VmbusError};

/// Why the disk failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("VMBus: {0}")]
    Vmbus(VmbusError),
    #[error("storvsc: {0}")]
    Storvsc(StorvscError),
    #[error("ring: {0}")]
    Ring(RingError),
    #[error("hypercall: {0}")]
    Hypercall(HypercallError),
    #[error("I/O error: {0:?}")]
    Io(IoError),
    #[error("out of memory")]
    NoMemory,
    #[error("the ring or the request slots have no room for the request")]
    Busy,
    #[error("the host reports LUN {0} gone")]
    LunGone(u8),
    #[error("unexpected host packet during setup")]
    Unexpected,
    #[error("buffer {pa:#x}+{len:#x} is not a whole number of blocks")]
    BadBuffer { pa: u64, len: usize },
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<VmbusError> for DiskError {
    fn from(e: VmbusError) -> Self {
        Self::Vmbus(e)
    }
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<StorvscError> for DiskError {
    fn from(e: StorvscError) -> Self {
        Self::Storvsc(e)
    }
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<RingError> for DiskError {
    fn from(e: RingError) -> Self {
        Self::Ring(e)
    }
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<HypercallError> for DiskError {
    fn from(e: HypercallError) -> Self {
        Self::Hypercall(e)
    }
}

/// Packet bytes a GPA-direct SRB of `pages` pages occupies (descriptor, GPA header, range, PFNs, vstor).
fn srb_packet_bytes(pages: usize) -> usize {
    16 + 8 + 8 + 8 * pages + VSTOR_PACKET_SIZE
}

/// One LUN of a synthetic SCSI controller.
#[derive(Debug)]
pub struct StorvscDisk {
    channel: Channel,
    storvsc: Storvsc,
    signaller: EventSignaller,
    flags: EventFlags,
    lun: u8,
    blocks: u64,
    block_size: u32,
    packet: Vec<u8>,
    pfns: Vec<u64>,
    lun_gone: bool,
    polling: bool,
}

impl StorvscDisk {
    /// Open the controller channel `relid` with rings of `ring_pages` pages each and room for
    /// `max_outstanding` requests, run the storvsc handshake and read the capacity of `lun`.
    pub fn open<P: Platform>(
        conn: &mut VmbusConnection<'_, P>,
        platform: &P,
        relid: u32,
        ring_pages: usize,
        max_outstanding: usize,
        lun: u8,
    ) -> Result<Self, DiskError> {
        let channel = conn.open_channel(relid, ring_pages, ring_pages)?;
        let mut disk = Self {
            channel,
            storvsc: Storvsc::with_capacity(max_outstanding),
            signaller: conn.hypercalls().signaller(),
            flags: conn.synic().event_flags(),
            lun,
            blocks: 0,
            block_size: 0,
            packet: vec![0u8; 4096],
            pfns: Vec::with_capacity(MAX_DATA_PFNS),
            lun_gone: false,
            polling: false,
        };
        let mut next = disk.storvsc.begin_init();
        loop {
            disk.send(&next)?;
            disk.kick()?;
            match disk.next_event(platform)? {
                Event::Handshake(HandshakeStep::Send(request)) => next = *request,
                Event::Handshake(HandshakeStep::Ready(_)) => break,
                _ => return Err(DiskError::Unexpected),
            }
        }
        let page = platform.alloc_dma(1).ok_or(DiskError::NoMemory)?;
        let request = disk
            .storvsc
            .read_capacity(lun, &[page.pa / PAGE_SIZE as u64], 0);
        let capacity = request.map_err(DiskError::from).and_then(|request| {
            disk.send_or_cancel(&request)?;
            disk.kick()?;
            match disk.next_event(platform)? {
                Event::Completed(c) => c.result.map_err(DiskError::Io)?,
                _ => return Err(DiskError::Unexpected),
            };
            let mut data = [0u8; 32];
            page.read(0, &mut data);
            parse_capacity16(&data).ok_or(DiskError::Unexpected)
        });
        platform.free_dma(page);
        let (blocks, block_size) = capacity?;
        disk.blocks = blocks;
        disk.block_size = block_size;
        Ok(disk)
    }

    /// Sub-channels the host can create for this controller (0: not multi-channel).
    pub fn max_sub_channels(&self) -> u16 {
        self.storvsc.max_sub_channels()
    }

    /// Ask the host for `count` sub-channels (CREATE_SUB_CHANNELS; nothing else outstanding) and wait
    /// for its answer. The host then offers them on VMBus (`VmbusConnection::subchannel_offers`); open
    /// each with [`StorvscDisk::open_sub_channel`].
    pub fn create_sub_channels<P: Platform>(
        &mut self,
        platform: &P,
        count: u16,
    ) -> Result<(), DiskError> {
        let request = self.storvsc.create_sub_channels(count)?;
        self.send(&request)?;
        self.kick()?;
        match self.next_event(platform)? {
            Event::Handshake(HandshakeStep::Ready(_)) => Ok(()),
            _ => Err(DiskError::Unexpected),
        }
    }

    /// Open the sub-channel `relid` of this controller (rings of `ring_pages` pages each, room for
    /// `max_outstanding` requests) with its interrupts sent to `target_vp`, whose SynIC event flags
    /// are `flags`: a disk of its own on the same LUN, ready at once (a sub-channel has no handshake).
    /// Use it from `target_vp`: its completions interrupt that VP.
    #[allow(clippy::too_many_arguments)]
    pub fn open_sub_channel<P: Platform>(
        &self,
        conn: &mut VmbusConnection<'_, P>,
        relid: u32,
        ring_pages: usize,
        max_outstanding: usize,
        target_vp: u32,
        flags: EventFlags,
    ) -> Result<Self, DiskError> {
        let storvsc = self.storvsc.for_sub_channel(max_outstanding)?;
        let channel = conn.open_channel_on(relid, ring_pages, ring_pages, target_vp)?;
        Ok(Self {
            channel,
            storvsc,
            signaller: self.signaller,
            flags,
            lun: self.lun,
            blocks: self.blocks,
            block_size: self.block_size,
            packet: vec![0u8; 4096],
            pfns: Vec::with_capacity(MAX_DATA_PFNS),
            lun_gone: false,
            polling: false,
        })
    }

    /// Take this channel's events from `flags` from now on: the SynIC event flags of the VP the
    /// channel was moved to (`VmbusConnection::modify_channel`).
    pub fn set_event_flags(&mut self, flags: EventFlags) {
        self.flags = flags;
    }

    /// Capacity in blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Largest transfer the host accepts.
    pub fn max_transfer_bytes(&self) -> u32 {
        self.storvsc
            .max_transfer_bytes()
            .unwrap_or(PAGE_SIZE as u32)
    }

    /// Requests submitted and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.storvsc.outstanding()
    }

    /// Requests that may be outstanding at once (fixed at [`StorvscDisk::open`]).
    pub fn max_outstanding(&self) -> usize {
        self.storvsc.capacity()
    }

    /// HvSignalEvent calls made on this disk's channel.
    pub fn signals(&self) -> u64 {
        self.channel.stats.signals
    }

    fn send(&mut self, request: &Request) -> Result<(), DiskError> {
        match request.range() {
            Some(range) => self.channel.write_gpa_direct(
                request.trans_id,
                request.flags(),
                &[range],
                &[request.payload()],
            )?,
            None => self.channel.write_inband(
                request.trans_id,
                request.flags(),
                &[request.payload()],
            )?,
        }
        Ok(())
    }

    /// Sends an SRB; if the ring refuses it, frees its slot so it is not left outstanding.
    fn send_or_cancel(&mut self, request: &Request) -> Result<(), DiskError> {
        self.send(request).inspect_err(|_| {
            let _ = self.storvsc.cancel(request.trans_id);
        })
    }

    /// Wait for the next packet during setup (one at a time, nothing else outstanding).
    fn next_event<P: Platform>(&mut self, platform: &P) -> Result<Event, DiskError> {
        loop {
            let seen = platform.interrupt_total();
            self.channel.take_event_from(&self.flags);
            let mut event = None;
            let mut error = None;
            let storvsc = &mut self.storvsc;
            let drained = self.channel.drain(&mut self.packet, 1, |_, bytes| {
                match storvsc.handle_packet(bytes) {
                    Ok(e) => event = Some(e),
                    Err(e) => error = Some(e),
                }
            })?;
            if let Some(e) = error {
                return Err(e.into());
            }
            if let Some(event) = event {
                return Ok(event);
            }
            // A packet that landed while interrupts were masked raised none: the re-check after
            // unmasking says so, and sleeping now would wait forever.
            if !drained.more {
                platform.wait_for_interrupt(seen);
            }
        }
    }

    /// Queue a read (`write == false`) or write of the buffer at guest physical `pa`, `len` bytes, at
    /// block `lba`; `tag` comes back in its [`Completion`]. The host sees it at the next
    /// [`StorvscDisk::kick`]. [`DiskError::Busy`] when the ring or the request slots have no room
    /// (poll completions, then retry).
    pub fn submit(
        &mut self,
        tag: u32,
        write: bool,
        lba: u64,
        pa: u64,
        len: usize,
    ) -> Result<(), DiskError> {
        if self.lun_gone {
            return Err(DiskError::LunGone(self.lun));
        }
        let block = self.block_size.max(1) as usize;
        if len == 0 || !len.is_multiple_of(block) {
            return Err(DiskError::BadBuffer { pa, len });
        }
        let offset = (pa % PAGE_SIZE as u64) as u32;
        let first = pa / PAGE_SIZE as u64;
        let pages = (offset as usize + len).div_ceil(PAGE_SIZE);
        if self.channel.writable_len()? < srb_packet_bytes(pages) {
            return Err(DiskError::Busy);
        }
        // At most MAX_DATA_PFNS pages pass `Storvsc`'s size check; more would only make it refuse
        // the request. The buffer's capacity covers them, so this never reallocates.
        self.pfns.clear();
        self.pfns
            .extend((first..first + pages as u64).take(MAX_DATA_PFNS));
        let sectors = (len / block) as u32;
        let (lun, pfns) = (self.lun, &self.pfns[..]);
        let request = if write {
            self.storvsc
                .write_tagged(tag, lun, lba, sectors, pfns, offset, false)
        } else {
            self.storvsc
                .read_tagged(tag, lun, lba, sectors, pfns, offset)
        };
        let request = match request {
            Ok(request) => request,
            Err(StorvscError::Busy(_)) => return Err(DiskError::Busy),
            Err(e) => return Err(e.into()),
        };
        self.send_or_cancel(&request)
    }

    /// Tell the host about everything submitted since the last kick (at most one signal).
    pub fn kick(&mut self) -> Result<bool, DiskError> {
        if self.polling && self.storvsc.outstanding() > 0 {
            // We will poll for these completions: the host need not interrupt us for them.
            self.channel.suppress_interrupts();
        }
        Ok(self.channel.flush(&self.signaller)?)
    }

    /// Collect finished requests (non-blocking). A completion whose SRB succeeded with fewer bytes
    /// than asked has `result` [`IoError::Short`]. `out` only grows when it lacks capacity.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> Result<usize, DiskError> {
        self.channel.take_event_from(&self.flags);
        let before = out.len();
        let mut error = None;
        loop {
            let storvsc = &mut self.storvsc;
            let lun_gone = &mut self.lun_gone;
            let polling = self.polling && storvsc.outstanding() > 0;
            let handle =
                |_: &vmbus::ring::PacketInfo, bytes: &[u8]| match storvsc.handle_packet(bytes) {
                    Ok(Event::Completed(mut c)) => {
                        match c.result {
                            Ok(n) if n < c.requested => {
                                c.result = Err(IoError::Short {
                                    transferred: n,
                                    requested: c.requested,
                                });
                            }
                            Err(e) if e.is_invalid_lun() => *lun_gone = true,
                            _ => {}
                        }
                        out.push(c);
                    }
                    Ok(_) => {}
                    Err(e) => error = Some(e),
                };
            // Polling with requests outstanding: take completions with the host's interrupts left
            // suppressed; once nothing is outstanding, the plain drain re-arms them.
            let drained = if polling {
                self.channel.drain_polling(&mut self.packet, 256, handle)?
            } else {
                self.channel.drain(&mut self.packet, 256, handle)?
            };
            if !drained.more {
                break;
            }
        }
        // Reading may have made room the host is waiting for: tell it (only if the ring rules say so).
        self.kick()?;
        match error {
            Some(e) => Err(e.into()),
            None => Ok(out.len() - before),
        }
    }

    /// Sleep until the host may have completed something (an interrupt), unless data is already there.
    /// While polling, never sleeps: the caller polls again (no interrupt will come).
    pub fn wait<P: Platform>(&mut self, platform: &P) {
        let seen = platform.interrupt_total();
        if self.storvsc.outstanding() == 0 || self.channel.has_data().unwrap_or(true) {
            return;
        }
        if self.polling {
            core::hint::spin_loop();
            return;
        }
        platform.wait_for_interrupt(seen);
    }

    /// Poll for completions (host interrupts suppressed while requests are outstanding) instead of
    /// sleeping for interrupts. Switching it off re-arms the interrupts.
    pub fn set_polling(&mut self, on: bool) -> Result<(), DiskError> {
        self.polling = on;
        if !on {
            self.channel.rearm()?;
        }
        Ok(())
    }

    /// SYNCHRONIZE CACHE, waiting for its completion (nothing else may be outstanding).
    pub fn flush<P: Platform>(&mut self, platform: &P) -> Result<(), DiskError> {
        let request = self.storvsc.synchronize_cache(self.lun)?;
        self.send_or_cancel(&request)?;
        self.kick()?;
        match self.next_event(platform)? {
            Event::Completed(c) => c.result.map(|_| ()).map_err(DiskError::Io),
            _ => Err(DiskError::Unexpected),
        }
    }

    /// The controller channel's relid.
    pub fn relid(&self) -> u32 {
        self.channel.relid
    }

    /// Guest physical address of the controller channel's rings ([`Channel::ring_gpa`]).
    pub fn ring_gpa(&self) -> u64 {
        self.channel.ring_gpa()
    }

    /// Close the controller's channel and give its ring pages back (after the host rescinded it too:
    /// no message is sent then). Outstanding requests are abandoned.
    pub fn close<P: Platform>(self, conn: &mut VmbusConnection<'_, P>) -> Result<(), DiskError> {
        conn.close_channel(self.channel)?;
        Ok(())
    }
}
