//! [`NetvscNic`]: a synthetic NIC on a channel. It runs [`NetvscClient`]'s initialisation over a
//! [`NetTransport`] (the two rings of a channel and its signal: [`VmbusNetTransport`] on a real
//! VMBus channel, a scripted peer in tests), owns the receive buffer, the send buffer and one page
//! for RNDIS control messages, and moves frames:
//!
//! - **send**: a frame is copied behind its RNDIS PACKET header into a free send-buffer section
//!   and announced with SEND_RNDIS_PKT (data channel, completion requested, the section index as
//!   transaction id). Frames queued between two [`NetvscNic::flush`]es cost at most one signal,
//!   and none when the host is still reading the ring (the ring's empty-before-write rule). The
//!   section comes back when the host completes the packet.
//! - **receive**: [`NetvscNic::poll`] drains the inbound ring with the host's interrupts masked;
//!   each transfer-page packet is checked against the receive buffer's section table, each
//!   RNDIS PACKET's frame copied once out of the receive buffer into the NIC's receive queue (a
//!   host may rewrite its pages at any time: nothing is read from them twice), RNDIS control
//!   messages go to the client (replies, link indications), and the packet is completed (status
//!   SUCCESS, or FAIL if it was malformed) so the host reuses its sections. Completions the ring
//!   has no room for wait for the next poll, in order.
//!
//! A malformed packet after initialisation is counted ([`NicStats::rx_errors`], with
//! [`NetvscNic::last_error`]) and skipped; during initialisation it fails [`NetvscNic::open`].

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use netvsp_protocol::nvsp::NvspStatus;
use netvsp_protocol::rndis::{
    self, PacketHeader, PacketLayout, RndisHeader, RndisMessageType, PACKET_MESSAGE_HEADER_SIZE,
};
use vmbus::packet::{GpaRangeSpec, Packet, PacketFlags, PacketKind};
use vmbus::ring::{Drained, RingError};

use super::client::{BufferKind, ClientAction, LinkEvent, NetvscClient, NetvscConfig, NicInfo};
use super::datapath::{
    is_data_tid, parse_receive, receive_completion, send_completion_status, send_rndis_packet,
    SendSections,
};
use super::{NetvscError, MAX_FRAME_LEN};
use crate::hv::hypercall::HypercallError;
use crate::platform::{DmaRegion, Platform, PAGE_SIZE};
use crate::vmbus_client::VmbusError;

#[path = "vmbus_transport.rs"]
mod vmbus_transport;
pub use vmbus_transport::{VmbusGpadls, VmbusNetTransport};

/// Frames the receive queue holds before further frames are dropped (and counted).
pub const RECEIVE_QUEUE_FRAMES: usize = 64;
/// Packets one [`NetvscNic::poll`] takes from the ring per drain batch.
const DRAIN_BATCH: usize = 64;
/// Bytes of an in-band SEND_RNDIS_PKT packet in the ring (descriptor + 40-byte message).
const SEND_PACKET_LEN: usize = 16 + 40;

/// The two rings of a NIC's channel and its signal, as the NIC uses them.
pub trait NetTransport {
    /// Queues an in-band packet (signal deferred to [`NetTransport::flush`]).
    fn write_inband(
        &mut self,
        trans_id: u64,
        flags: PacketFlags,
        payload: &[&[u8]],
    ) -> Result<(), RingError>;
    /// Queues a GPA-direct packet naming one range of guest pages.
    fn write_gpa_direct(
        &mut self,
        trans_id: u64,
        flags: PacketFlags,
        range: GpaRangeSpec<'_>,
        payload: &[&[u8]],
    ) -> Result<(), RingError>;
    /// Queues the completion of the host's packet `trans_id`.
    fn write_completion(&mut self, trans_id: u64, payload: &[&[u8]]) -> Result<(), RingError>;
    /// Packet bytes the outbound ring takes right now.
    fn writable_len(&mut self) -> Result<usize, RingError>;
    /// Hands up to `limit` inbound packets to `f` (host interrupts masked meanwhile).
    fn drain(
        &mut self,
        buf: &mut [u8],
        limit: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<Drained, RingError>;
    /// Signals the host once if anything queued since the last flush needs it.
    fn flush(&mut self) -> Result<bool, HypercallError>;
    /// Sleeps until the host may have written to the inbound ring (returns at once if it has).
    fn wait(&mut self);
}

/// Creates the GPADL the host maps one of the NIC's buffers through.
pub trait GpadlCreator {
    /// The GPADL handle of `region`.
    fn create_gpadl(&mut self, region: &DmaRegion) -> Result<u32, NicError>;
}

/// Why the NIC failed.
#[derive(Debug, thiserror::Error)]
pub enum NicError {
    #[error("netvsc: {0}")]
    Protocol(NetvscError),
    #[error("VMBus: {0}")]
    Vmbus(VmbusError),
    #[error("ring: {0}")]
    Ring(RingError),
    #[error("hypercall: {0}")]
    Hypercall(HypercallError),
    #[error("out of memory for the NIC's buffers")]
    NoMemory,
    #[error("no free send section or ring space for the frame")]
    Busy,
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<NetvscError> for NicError {
    fn from(e: NetvscError) -> Self {
        Self::Protocol(e)
    }
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<VmbusError> for NicError {
    fn from(e: VmbusError) -> Self {
        Self::Vmbus(e)
    }
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<RingError> for NicError {
    fn from(e: RingError) -> Self {
        Self::Ring(e)
    }
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<HypercallError> for NicError {
    fn from(e: HypercallError) -> Self {
        Self::Hypercall(e)
    }
}

/// Counters of one NIC.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NicStats {
    /// Frames queued to the host.
    pub tx_frames: u64,
    /// Sends refused for want of a section or ring space.
    pub tx_busy: u64,
    /// Sends the host completed with a status other than success.
    pub tx_errors: u64,
    /// Frames received into the queue.
    pub rx_frames: u64,
    /// Frames dropped because the receive queue was full.
    pub rx_dropped: u64,
    /// Malformed packets or messages from the host (skipped).
    pub rx_errors: u64,
    /// Receive packets completed to the host.
    pub rx_completed: u64,
    /// Link state indications.
    pub link_events: u64,
    /// Signals sent to the host (at most one per flush).
    pub signals: u64,
}

/// Received frames waiting for the stack, in fixed slots.
#[derive(Debug)]
pub(super) struct ReceiveQueue {
    slots: Vec<u8>,
    lens: VecDeque<(usize, usize)>,
    next: usize,
}

impl ReceiveQueue {
    fn new() -> Self {
        Self {
            slots: vec![0; RECEIVE_QUEUE_FRAMES * MAX_FRAME_LEN],
            lens: VecDeque::with_capacity(RECEIVE_QUEUE_FRAMES),
            next: 0,
        }
    }

    /// Whether no frame waits.
    pub(super) fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// A `len`-byte slot to fill, or `None` when the queue is full.
    fn push(&mut self, len: usize) -> Option<&mut [u8]> {
        if self.lens.len() == RECEIVE_QUEUE_FRAMES {
            return None;
        }
        let slot = self.next;
        self.next = (self.next + 1) % RECEIVE_QUEUE_FRAMES;
        self.lens.push_back((slot, len));
        let at = slot * MAX_FRAME_LEN;
        Some(&mut self.slots[at..at + len])
    }

    /// The oldest frame.
    pub(super) fn front(&self) -> Option<&[u8]> {
        let &(slot, len) = self.lens.front()?;
        Some(&self.slots[slot * MAX_FRAME_LEN..slot * MAX_FRAME_LEN + len])
    }

    /// Drops the oldest frame.
    pub(super) fn pop(&mut self) {
        self.lens.pop_front();
    }
}

/// The sending half of a NIC: what a transmit token needs.
#[derive(Debug)]
pub(super) struct TxPath<T> {
    pub(super) transport: T,
    send_buf: DmaRegion,
    sections: Option<SendSections>,
    /// Where the stack builds a frame before it is copied into its section.
    pub(super) staging: Vec<u8>,
    max_frame: usize,
}

impl<T: NetTransport> TxPath<T> {
    /// Whether a frame could be queued now.
    pub(super) fn can_send(&mut self) -> bool {
        self.sections.as_ref().is_some_and(|s| s.has_free())
            && self
                .transport
                .writable_len()
                .is_ok_and(|n| n >= SEND_PACKET_LEN)
    }

    /// Queues the first `len` bytes of the staging buffer.
    pub(super) fn send_staged(&mut self, len: usize, stats: &mut NicStats) -> Result<(), NicError> {
        let Self {
            transport,
            send_buf,
            sections,
            staging,
            max_frame,
        } = self;
        let frame = staging.get(..len).ok_or(NetvscError::BadFrameLength {
            len,
            max: *max_frame,
        })?;
        queue_frame(transport, send_buf, sections, *max_frame, frame, stats)
    }
}

fn queue_frame<T: NetTransport>(
    transport: &mut T,
    send_buf: &DmaRegion,
    sections: &mut Option<SendSections>,
    max_frame: usize,
    frame: &[u8],
    stats: &mut NicStats,
) -> Result<(), NicError> {
    let sections = sections.as_mut().ok_or(NetvscError::NotReady)?;
    if frame.is_empty() || frame.len() > max_frame {
        return Err(NetvscError::BadFrameLength {
            len: frame.len(),
            max: max_frame,
        }
        .into());
    }
    if transport.writable_len()? < SEND_PACKET_LEN {
        stats.tx_busy += 1;
        return Err(NicError::Busy);
    }
    let Some(index) = sections.alloc() else {
        stats.tx_busy += 1;
        return Err(NicError::Busy);
    };
    let at = sections.offset(index);
    let header = rndis::packet_message_header(frame.len() as u32, 0);
    send_buf.write(at, &header);
    send_buf.write(at + header.len(), frame);
    let message = send_rndis_packet(Some(index), (header.len() + frame.len()) as u32);
    let written = transport.write_inband(
        u64::from(index),
        PacketFlags::COMPLETION_REQUESTED,
        &[message.as_wire()],
    );
    if let Err(e) = written {
        // Never announced: the section is ours again.
        let _ = sections.free(index);
        return Err(match e {
            RingError::Full { .. } => {
                stats.tx_busy += 1;
                NicError::Busy
            }
            e => e.into(),
        });
    }
    stats.tx_frames += 1;
    Ok(())
}

/// A synthetic NIC. See the module documentation.
#[derive(Debug)]
pub struct NetvscNic<T> {
    pub(super) tx: TxPath<T>,
    pub(super) rx: ReceiveQueue,
    pub(super) stats: NicStats,
    client: NetvscClient,
    info: Option<NicInfo>,
    receive_buf: DmaRegion,
    control_page: DmaRegion,
    gpadls: [u32; 2],
    packet: Vec<u8>,
    control: Vec<u8>,
    completions: VecDeque<(u64, NvspStatus)>,
    last_error: Option<NetvscError>,
}

fn alloc(platform: &impl Platform, len: usize) -> Result<DmaRegion, NicError> {
    platform
        .alloc_dma(len.div_ceil(PAGE_SIZE).max(1))
        .ok_or(NicError::NoMemory)
}

impl<T: NetTransport> NetvscNic<T> {
    /// Initialises the NIC over `transport`: allocates its buffers from `platform`, has `gpadls`
    /// describe them to the host and runs the whole NVSP/RNDIS initialisation, waiting on the
    /// transport between host replies. Any host reply that fails validation fails it.
    pub fn open(
        transport: T,
        gpadls: &mut impl GpadlCreator,
        platform: &impl Platform,
        mut config: NetvscConfig,
    ) -> Result<Self, NicError> {
        config.receive_buffer_len = config.receive_buffer_len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        config.send_buffer_len = config.send_buffer_len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let receive_buf = alloc(platform, config.receive_buffer_len)?;
        let send_buf = alloc(platform, config.send_buffer_len)?;
        let control_page = alloc(platform, PAGE_SIZE)?;
        let mut nic = Self {
            tx: TxPath {
                transport,
                send_buf,
                sections: None,
                staging: vec![0; MAX_FRAME_LEN],
                max_frame: MAX_FRAME_LEN,
            },
            rx: ReceiveQueue::new(),
            stats: NicStats::default(),
            client: NetvscClient::new(config),
            info: None,
            receive_buf,
            control_page,
            gpadls: [0; 2],
            packet: vec![0; 16 * 1024],
            control: Vec::new(),
            completions: VecDeque::new(),
            last_error: None,
        };
        nic.client.start()?;
        loop {
            while let Some(action) = nic.client.poll_action() {
                nic.perform(action, gpadls)?;
            }
            nic.tx.transport.flush()?;
            if let Some(info) = nic.client.info() {
                nic.ready(info)?;
                return Ok(nic);
            }
            if nic.process(true)? == 0 {
                nic.tx.transport.wait();
            }
        }
    }

    fn perform(
        &mut self,
        action: ClientAction,
        gpadls: &mut impl GpadlCreator,
    ) -> Result<(), NicError> {
        match action {
            ClientAction::SendNvsp {
                trans_id,
                message,
                completion,
            } => {
                let flags = if completion {
                    PacketFlags::COMPLETION_REQUESTED
                } else {
                    PacketFlags::empty()
                };
                self.tx
                    .transport
                    .write_inband(trans_id, flags, &[message.as_wire()])?;
            }
            ClientAction::CreateGpadl(kind) => {
                let (region, slot) = match kind {
                    BufferKind::Receive => (&self.receive_buf, 0),
                    BufferKind::Send => (&self.tx.send_buf, 1),
                };
                let gpadl = gpadls.create_gpadl(region)?;
                self.gpadls[slot] = gpadl;
                self.client.buffer_gpadl(kind, gpadl)?;
            }
            ClientAction::SendControl { trans_id, message } => {
                let bytes = message.as_bytes();
                self.control_page.write(0, bytes);
                let pfn = [self.control_page.pa / PAGE_SIZE as u64];
                let range = GpaRangeSpec {
                    byte_count: bytes.len() as u32,
                    byte_offset: 0,
                    pfns: &pfn,
                };
                let nvsp = send_rndis_packet(None, 0);
                self.tx.transport.write_gpa_direct(
                    trans_id,
                    PacketFlags::COMPLETION_REQUESTED,
                    range,
                    &[nvsp.as_wire()],
                )?;
            }
            ClientAction::Ready => {}
        }
        Ok(())
    }

    fn ready(&mut self, info: NicInfo) -> Result<(), NicError> {
        let sections = SendSections::new(info.send_section_size, self.tx.send_buf.len)?;
        let room = (sections.size() as usize).saturating_sub(PACKET_MESSAGE_HEADER_SIZE);
        self.tx.max_frame = room.min(info.mtu as usize + super::ETHERNET_HEADER_LEN);
        self.tx.sections = Some(sections);
        self.info = Some(info);
        Ok(())
    }

    /// What initialisation learnt (MAC address, MTU, version, buffers).
    pub fn info(&self) -> NicInfo {
        // `open` only returns a NIC whose client is ready.
        self.info.expect("an open NIC is initialised")
    }

    /// Largest frame [`NetvscNic::send`] takes (header included).
    pub fn max_frame_len(&self) -> usize {
        self.tx.max_frame
    }

    /// Whether the link is up (media connected, as last queried or indicated by the host).
    pub fn link_up(&self) -> bool {
        self.client.link_up()
    }

    /// Counters.
    pub fn stats(&self) -> NicStats {
        self.stats
    }

    /// The last malformed packet or message the host sent (skipped and counted).
    pub fn last_error(&self) -> Option<NetvscError> {
        self.last_error
    }

    /// Send sections the host has not completed yet.
    pub fn sends_in_flight(&self) -> u32 {
        self.tx.sections.as_ref().map_or(0, |s| s.in_flight())
    }

    /// The transport (a test's scripted peer, or the VMBus channel).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.tx.transport
    }

    /// Queues one frame (the host sees it at the next [`NetvscNic::flush`]). [`NicError::Busy`]
    /// when no send section is free or the ring is full: [`NetvscNic::poll`], then retry.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), NicError> {
        let tx = &mut self.tx;
        queue_frame(
            &mut tx.transport,
            &tx.send_buf,
            &mut tx.sections,
            tx.max_frame,
            frame,
            &mut self.stats,
        )
    }

    /// Tells the host about everything queued since the last flush (at most one signal).
    pub fn flush(&mut self) -> Result<bool, NicError> {
        let signaled = self.tx.transport.flush()?;
        self.stats.signals += u64::from(signaled);
        Ok(signaled)
    }

    /// Takes the next received frame, if any.
    pub fn receive(&mut self, f: impl FnOnce(&[u8])) -> bool {
        let Some(frame) = self.rx.front() else {
            return false;
        };
        f(frame);
        self.rx.pop();
        true
    }

    /// Handles everything the host sent (send completions, frames, indications), completes its
    /// receive packets and signals it if the ring rules say so. Returns the packets handled.
    pub fn poll(&mut self) -> Result<usize, NicError> {
        let n = self.process(false)?;
        self.flush()?;
        Ok(n)
    }

    /// Sleeps until the host may have sent something (returns at once if it has).
    pub fn wait(&mut self) {
        self.tx.transport.wait();
    }

    /// Drains the inbound ring. `strict` (initialisation): the first bad packet is an error.
    fn process(&mut self, strict: bool) -> Result<usize, NicError> {
        let mut total = 0;
        loop {
            let Self {
                tx,
                rx,
                stats,
                client,
                receive_buf,
                packet,
                control,
                completions,
                last_error,
                ..
            } = self;
            let mut inbound = Inbound {
                sections: &mut tx.sections,
                rx,
                stats,
                client,
                receive_buf,
                control,
                completions,
                max_frame: tx.max_frame,
            };
            let mut handled = 0;
            let mut first_error = None;
            let drained = tx.transport.drain(packet, DRAIN_BATCH, &mut |bytes| {
                handled += 1;
                if let Err(e) = inbound.packet(bytes) {
                    inbound.stats.rx_errors += 1;
                    *last_error = Some(e);
                    first_error.get_or_insert(e);
                }
            })?;
            total += handled;
            self.complete_pending()?;
            if let (true, Some(e)) = (strict, first_error) {
                return Err(e.into());
            }
            if !drained.more {
                return Ok(total);
            }
        }
    }

    /// Writes the receive completions owed to the host, oldest first, while the ring has room.
    fn complete_pending(&mut self) -> Result<(), NicError> {
        while let Some(&(trans_id, status)) = self.completions.front() {
            let message = receive_completion(status);
            match self.tx.transport.write_completion(trans_id, &[&message]) {
                Ok(()) => {
                    self.completions.pop_front();
                    self.stats.rx_completed += 1;
                }
                Err(RingError::Full { .. }) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Everything but the transport, for handling inbound packets while the transport drains.
struct Inbound<'a> {
    sections: &'a mut Option<SendSections>,
    rx: &'a mut ReceiveQueue,
    stats: &'a mut NicStats,
    client: &'a mut NetvscClient,
    receive_buf: &'a DmaRegion,
    control: &'a mut Vec<u8>,
    completions: &'a mut VecDeque<(u64, NvspStatus)>,
    max_frame: usize,
}

impl Inbound<'_> {
    fn packet(&mut self, bytes: &[u8]) -> Result<(), NetvscError> {
        let packet = Packet::parse(bytes)?;
        let trans_id = packet.desc.trans_id;
        match packet.kind {
            PacketKind::Completion if is_data_tid(trans_id) => {
                let sections = self
                    .sections
                    .as_mut()
                    .ok_or(NetvscError::UnknownTransaction(trans_id))?;
                sections.free(trans_id as u32)?;
                if send_completion_status(packet.payload)? != NvspStatus::SUCCESS {
                    self.stats.tx_errors += 1;
                }
                Ok(())
            }
            PacketKind::Completion => self.client.handle_completion(trans_id, packet.payload),
            PacketKind::TransferPages(_) => {
                // Whatever is wrong with it, the host gets its sections back.
                let result = self.transfer_pages(&packet);
                let status = match result {
                    Ok(()) => NvspStatus::SUCCESS,
                    Err(_) => NvspStatus::FAIL,
                };
                self.completions.push_back((trans_id, status));
                result
            }
            PacketKind::InBand => self.client.handle_inband(packet.payload),
            _ => Err(NetvscError::UnexpectedPacket(packet.desc.packet_type)),
        }
    }

    fn transfer_pages(&mut self, packet: &Packet<'_>) -> Result<(), NetvscError> {
        let sections = self
            .client
            .receive_sections()
            .ok_or(NetvscError::NotReady)?;
        let received = parse_receive(packet, &sections)?;
        let mut result = Ok(());
        for range in received.ranges {
            if let Err(e) = self.message(range) {
                result = Err(e);
            }
        }
        result
    }

    /// One RNDIS message at `range` of the receive buffer (checked to lie in one sub-allocation).
    fn message(&mut self, range: core::ops::Range<usize>) -> Result<(), NetvscError> {
        let available = range.len();
        let mut head = [0u8; PACKET_MESSAGE_HEADER_SIZE];
        let head_len = available.min(head.len());
        self.receive_buf.read(range.start, &mut head[..head_len]);
        let header: RndisHeader = rndis::read_prefix(&head[..head_len], "RNDIS header")?;
        let message_len = rndis::checked_message_length(&header, available)?;
        if header.message_type.get() != RndisMessageType::PACKET.0 {
            // Control: completions of our requests and indications, copied once, then parsed.
            self.control.resize(message_len, 0);
            self.receive_buf.read(range.start, &mut self.control[..]);
            if let Some(event) = self.client.handle_rndis(&self.control[..])? {
                self.stats.link_events +=
                    u64::from(matches!(event, LinkEvent::Up | LinkEvent::Down));
            }
            return Ok(());
        }
        let body: PacketHeader = rndis::read_prefix(&head[8..head_len], "RNDIS packet header")?;
        let layout = PacketLayout::validate(&body, message_len)?;
        let len = layout.data.len();
        if len == 0 || len > self.max_frame {
            return Err(NetvscError::BadFrameLength {
                len,
                max: self.max_frame,
            });
        }
        match self.rx.push(len) {
            Some(slot) => {
                self.receive_buf.read(range.start + layout.data.start, slot);
                self.stats.rx_frames += 1;
            }
            None => self.stats.rx_dropped += 1,
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "nic_tests.rs"]
mod tests;
