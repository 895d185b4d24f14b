//! [`NetvspWorker`]: one netvsc channel served end to end, minus the waiting: the channel's two
//! rings, the guest's buffers, the RNDIS control plane and the network backend.
//!
//! [`NetvspWorker::poll`] writes completions that waited for ring space, drains the guest→host ring
//! (NVSP requests, RNDIS messages and frames to send, the guest's completions of receive packets)
//! with interrupts masked, reports link changes, and moves waiting frames from the backend into
//! free receive sections ([`super::receive`]). Everything the guest sends is validated; a bad
//! request is answered with an error status or dropped and counted, never trusted. The caller
//! learns from [`PollResult`] whether to signal the guest, whether the backend's fd is worth
//! waiting on, and whether work is left.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use netvsp_protocol::nvsp::{
    self, Init, InitComplete, MessageType, NvspMessage, NvspMessageRef, NvspStatus, NvspVersion,
    ReceiveBufferSection, RevokeBuffer, RndisChannelType, SendNdisConfig, SendNdisVersion,
    SendReceiveBuffer, SendReceiveBufferComplete, SendRndisPacket, SendRndisPacketComplete,
    SendSendBufferComplete, SubchannelComplete, INVALID_SECTION_INDEX,
};
use netvsp_protocol::ppi;
use netvsp_protocol::rndis::{
    self, PacketHeader, PacketLayout, RndisHeader, RndisMessageRef, RndisMessageType,
    PACKET_MESSAGE_HEADER_SIZE, RNDIS_HEADER_SIZE,
};
use vmbus::mem::RingMemory;
use vmbus::packet::{GpaRanges, Packet, PacketFlags, PacketKind};
use vmbus::ring::{RingConsumer, RingError, RingProducer};
use zerocopy::byteorder::little_endian::U32;

use super::buffers::{GuestBuffer, ReceiveBuffer, SendBuffer};
use super::control::RndisControl;
use super::transmit::{MessageStream, StreamError};
use super::NetvspConfig;
use crate::guest_memory::GuestMemoryMmap;
use crate::net::{NetBackend, MAX_FRAME_LEN};

/// Finds a GPADL the guest created for this device.
pub type GpadlLookup = Box<dyn Fn(u32) -> Option<Arc<dyn GuestBuffer>> + Send>;

/// Longest control message (QUERY/SET with its information buffer) the host copies out.
pub const MAX_CONTROL_MESSAGE: usize = 8192;
/// Longest per-packet info area of a PACKET the host reads.
pub const MAX_PPI_AREA: usize = 1024;
/// Completions waiting for ring space at most; beyond, the guest's ring is left unread.
pub const MAX_PENDING_COMPLETIONS: usize = 256;
/// RNDIS messages (completions, indications) waiting for a receive section at most.
pub const MAX_PENDING_CONTROL: usize = 64;
/// Packets taken from the guest's ring per poll at most (fairness towards receives).
const BATCH: usize = 64;

/// Counters of a worker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetvspStats {
    /// Packets taken from the guest→host ring.
    pub packets: u64,
    /// Frames the guest sent that reached the backend.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Guest frames dropped: the backend was full.
    pub tx_dropped_backend_full: u64,
    /// Guest frames dropped: empty or longer than a frame may be.
    pub tx_dropped_bad_length: u64,
    /// Guest frames dropped: RNDIS not initialized.
    pub tx_dropped_not_initialized: u64,
    /// Guest frames dropped: the backend or guest memory failed.
    pub tx_errors: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Transfer-page packets written to the guest.
    pub rx_packets: u64,
    /// Frames dropped: the guest's packet filter was 0 (or RNDIS not initialized).
    pub rx_dropped_filtered: u64,
    /// Frames dropped: no receive buffer.
    pub rx_dropped_no_buffer: u64,
    /// Frames dropped: larger than a receive section.
    pub rx_dropped_too_large: u64,
    /// Frames lost: the backend or guest memory failed.
    pub rx_errors: u64,
    /// RNDIS control messages answered.
    pub control_messages: u64,
    /// Control answers and indications dropped (no receive buffer, too many waiting).
    pub control_dropped: u64,
    /// RNDIS requests refused (before INITIALIZE, malformed, unsupported).
    pub rndis_refused: u64,
    /// Link indications queued.
    pub link_indications: u64,
    /// NVSP packets that were malformed or unexpected.
    pub malformed: u64,
    /// SEND_RNDIS_PKTs naming a section or buffer that does not exist.
    pub bad_sections: u64,
    /// Malformed RNDIS messages (lengths or offsets outside their message).
    pub bad_rndis: u64,
    /// Receive completions naming no packet in flight.
    pub stray_completions: u64,
    /// Writes that found the guest's ring full (the worker then waits for room).
    pub ring_full: u64,
    /// Buffers lost because the guest tore their GPADL down while in use.
    pub revoked_buffers: u64,
}

/// What the caller of [`NetvspWorker::poll`] must do.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollResult {
    /// Interrupt the guest.
    pub signal_guest: bool,
    /// Something moved.
    pub progressed: bool,
    /// Packets were left in the guest's ring (poll again).
    pub more: bool,
    /// Frames can be taken from the backend now: wait on its fd too.
    pub rx_ready: bool,
    /// A ring failed: the guest broke the ring protocol; stop serving.
    pub failed: bool,
}

/// See the module documentation.
pub struct NetvspWorker<M: RingMemory> {
    pub(super) inbound: RingConsumer<M>,
    pub(super) outbound: RingProducer<M>,
    pub(super) memory: GuestMemoryMmap,
    gpadls: GpadlLookup,
    pub(super) backend: Box<dyn NetBackend>,
    pub(super) config: NetvspConfig,
    pub(super) version: Option<NvspVersion>,
    ndis_version: Option<(u32, u32)>,
    guest_mtu: Option<u32>,
    pub(super) recv: Option<ReceiveBuffer>,
    send: Option<SendBuffer>,
    pub(super) control: RndisControl,
    pending_completions: VecDeque<(u64, NvspMessage)>,
    pub(super) pending_control: VecDeque<Vec<u8>>,
    /// Receive packets lent to the guest: trans id → sections.
    pub(super) in_flight: BTreeMap<u64, Vec<u32>>,
    pub(super) next_trans_id: u64,
    link_up: bool,
    pub(super) outbound_blocked: bool,
    pub(super) stats: NetvspStats,
    packet_buf: Vec<u8>,
    pub(super) scratch: Vec<u8>,
    pub(super) failed: bool,
}

impl<M: RingMemory> std::fmt::Debug for NetvspWorker<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetvspWorker")
            .field("version", &self.version)
            .field("recv", &self.recv)
            .field("send", &self.send)
            .field("control", &self.control)
            .field("in_flight", &self.in_flight.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<M: RingMemory> NetvspWorker<M> {
    /// A worker on the channel's guest→host ring (`inbound`) and host→guest ring (`outbound`),
    /// finding the guest's buffers with `gpadls`, GPA-direct pages in `memory`, and moving frames
    /// to and from `backend`.
    pub fn new(
        inbound: RingConsumer<M>,
        outbound: RingProducer<M>,
        memory: GuestMemoryMmap,
        gpadls: GpadlLookup,
        backend: Box<dyn NetBackend>,
        config: NetvspConfig,
    ) -> Self {
        let packet_buf = vec![0u8; inbound.data_size()];
        let link_up = backend.link_up();
        Self {
            inbound,
            outbound,
            memory,
            gpadls,
            backend,
            control: RndisControl::new(&config),
            config,
            version: None,
            ndis_version: None,
            guest_mtu: None,
            recv: None,
            send: None,
            pending_completions: VecDeque::new(),
            pending_control: VecDeque::new(),
            in_flight: BTreeMap::new(),
            next_trans_id: 1,
            link_up,
            outbound_blocked: false,
            stats: NetvspStats::default(),
            packet_buf,
            scratch: vec![0u8; MAX_FRAME_LEN],
            failed: false,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> NetvspStats {
        self.stats
    }

    /// The negotiated NVSP version.
    pub fn version(&self) -> Option<NvspVersion> {
        self.version
    }

    /// The NDIS version and MTU the guest announced.
    pub fn guest_ndis(&self) -> (Option<(u32, u32)>, Option<u32>) {
        (self.ndis_version, self.guest_mtu)
    }

    /// The RNDIS control plane.
    pub fn control(&self) -> &RndisControl {
        &self.control
    }

    /// Free receive sections (0 without a receive buffer).
    pub fn free_receive_sections(&self) -> usize {
        self.recv.as_ref().map_or(0, |r| r.free())
    }

    /// The backend's link state as last seen.
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// The backend (to wait on its fd).
    pub fn backend(&self) -> &dyn NetBackend {
        &*self.backend
    }

    /// Gives the backend back (when the channel closes).
    pub fn into_backend(self) -> Box<dyn NetBackend> {
        self.backend
    }

    /// Serves the channel once; see the module documentation. `host_link_up` is the host's say
    /// on the link (ANDed with the backend's).
    pub fn poll(&mut self, host_link_up: bool) -> PollResult {
        let mut r = PollResult::default();
        if self.failed {
            r.failed = true;
            return r;
        }
        self.flush_completions(&mut r);
        self.drain(&mut r);
        self.check_link(host_link_up);
        self.receive(&mut r);
        self.flush_completions(&mut r);
        r.rx_ready = self.rx_ready();
        r.failed = self.failed;
        r
    }

    fn check_link(&mut self, host_link_up: bool) {
        let up = host_link_up && self.backend.link_up();
        if up == self.link_up {
            return;
        }
        self.link_up = up;
        if self.control.is_initialized() {
            self.stats.link_indications += 1;
            self.queue_control(RndisControl::link_indication(up));
        }
    }

    pub(super) fn fail(&mut self, what: &str, error: RingError) {
        tracing::warn!(%error, what, "netvsp: ring failed; channel stopped");
        self.failed = true;
    }

    fn can_take_packets(&self) -> bool {
        self.pending_completions.len() < MAX_PENDING_COMPLETIONS
            && self.pending_control.len() < MAX_PENDING_CONTROL
    }

    fn drain(&mut self, r: &mut PollResult) {
        if !self.can_take_packets() {
            // Waiting for ring room or for the guest to return sections: both end with a guest
            // signal (pending_send_sz, a completion packet), so do not report more work to spin on.
            return;
        }
        self.inbound.mask_interrupts();
        let mut buf = std::mem::take(&mut self.packet_buf);
        let mut took = 0;
        while took < BATCH && self.can_take_packets() {
            match self.inbound.read_packet_deferred(&mut buf) {
                Ok(Some(info)) => {
                    took += 1;
                    self.handle_packet(&buf[..info.len]);
                }
                Ok(None) => break,
                Err(e) => {
                    self.fail("inbound", e);
                    break;
                }
            }
        }
        self.packet_buf = buf;
        self.stats.packets += took as u64;
        r.progressed |= took > 0;
        if self.failed {
            return;
        }
        match self.inbound.commit() {
            Ok(signal) => r.signal_guest |= signal,
            Err(e) => return self.fail("inbound", e),
        }
        match self.inbound.unmask_interrupts() {
            Ok(more) => r.more |= more,
            Err(e) => self.fail("inbound", e),
        }
    }

    fn flush_completions(&mut self, r: &mut PollResult) {
        while let Some((trans_id, msg)) = self.pending_completions.front() {
            match self.outbound.write_completion(*trans_id, &[msg.as_wire()]) {
                Ok(written) => {
                    r.signal_guest |= written.signal;
                    r.progressed = true;
                    self.pending_completions.pop_front();
                }
                Err(RingError::Full { .. }) => {
                    self.stats.ring_full += 1;
                    self.outbound_blocked = true;
                    return;
                }
                Err(e) => return self.fail("outbound", e),
            }
        }
    }

    fn complete<T: zerocopy::IntoBytes + zerocopy::Immutable>(
        &mut self,
        trans_id: u64,
        message_type: MessageType,
        body: &T,
    ) {
        self.pending_completions
            .push_back((trans_id, NvspMessage::new(message_type, body)));
    }

    pub(super) fn queue_control(&mut self, message: Vec<u8>) {
        if self.recv.is_none() || self.pending_control.len() >= MAX_PENDING_CONTROL {
            self.stats.control_dropped += 1;
            return;
        }
        self.pending_control.push_back(message);
    }

    fn handle_packet(&mut self, bytes: &[u8]) {
        let Ok(packet) = Packet::parse(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        let trans_id = packet.desc.trans_id;
        let wants_completion = packet
            .desc
            .packet_flags()
            .contains(PacketFlags::COMPLETION_REQUESTED);
        let Ok(msg) = NvspMessageRef::parse(packet.payload) else {
            self.stats.malformed += 1;
            return;
        };
        match packet.kind {
            PacketKind::Completion => self.receive_completed(trans_id, &msg),
            PacketKind::InBand => self.handle_nvsp(trans_id, wants_completion, &msg, None),
            PacketKind::GpaDirect(ranges) => {
                self.handle_nvsp(trans_id, wants_completion, &msg, Some(&ranges))
            }
            _ => self.stats.malformed += 1,
        }
    }

    fn receive_completed(&mut self, trans_id: u64, msg: &NvspMessageRef<'_>) {
        if msg.message_type != MessageType::SEND_RNDIS_PACKET_COMPLETE {
            self.stats.malformed += 1;
            return;
        }
        let Some(sections) = self.in_flight.remove(&trans_id) else {
            self.stats.stray_completions += 1;
            return;
        };
        if let Some(recv) = &mut self.recv {
            for s in sections {
                recv.give_back(s);
            }
        }
    }

    fn handle_nvsp(
        &mut self,
        trans_id: u64,
        wants_completion: bool,
        msg: &NvspMessageRef<'_>,
        ranges: Option<&GpaRanges<'_>>,
    ) {
        if msg.message_type == MessageType::INIT {
            return self.init(trans_id, msg);
        }
        let Some(version) = self.version else {
            tracing::debug!(?msg.message_type, "netvsp: message before INIT");
            self.stats.malformed += 1;
            return;
        };
        match msg.message_type {
            MessageType::SEND_NDIS_VERSION => match msg.body_as::<SendNdisVersion>() {
                Ok(v) => {
                    self.ndis_version =
                        Some((v.ndis_major_version.get(), v.ndis_minor_version.get()))
                }
                Err(_) => self.stats.malformed += 1,
            },
            MessageType::SEND_NDIS_CONFIG if version >= NvspVersion::V2 => {
                match msg.body_as::<SendNdisConfig>() {
                    Ok(c) => self.guest_mtu = Some(c.mtu.get()),
                    Err(_) => self.stats.malformed += 1,
                }
            }
            MessageType::SEND_RECEIVE_BUFFER => self.receive_buffer(trans_id, version, msg),
            MessageType::SEND_SEND_BUFFER => self.send_buffer(trans_id, msg),
            MessageType::REVOKE_RECEIVE_BUFFER => match msg.body_as::<RevokeBuffer>() {
                Ok(b) if self.recv.as_ref().is_some_and(|r| r.id == b.id.get()) => {
                    self.recv = None;
                    self.in_flight.clear();
                    self.pending_control.clear();
                }
                _ => self.stats.malformed += 1,
            },
            MessageType::REVOKE_SEND_BUFFER => match msg.body_as::<RevokeBuffer>() {
                Ok(b) if self.send.as_ref().is_some_and(|s| s.id == b.id.get()) => {
                    self.send = None;
                }
                _ => self.stats.malformed += 1,
            },
            MessageType::SEND_RNDIS_PACKET => {
                let status = match msg.body_as::<SendRndisPacket>() {
                    Ok(body) => self.rndis_packet(version, &body, ranges),
                    Err(_) => {
                        self.stats.malformed += 1;
                        NvspStatus::INVALID_RNDIS_PACKET
                    }
                };
                if wants_completion {
                    let body = SendRndisPacketComplete {
                        status: U32::new(status.0),
                    };
                    self.complete(trans_id, MessageType::SEND_RNDIS_PACKET_COMPLETE, &body);
                }
            }
            MessageType::SUBCHANNEL if version >= NvspVersion::V5 => {
                // One channel: no RSS, so no sub-channels (Linux then stays on the primary).
                let body = SubchannelComplete {
                    status: U32::new(NvspStatus::FAIL.0),
                    count: U32::new(0),
                };
                self.complete(trans_id, MessageType::SUBCHANNEL, &body);
            }
            MessageType::SWITCH_DATA_PATH if version >= NvspVersion::V4 => {
                // There is no VF: the data path stays synthetic whatever the guest asks.
                if wants_completion {
                    let body: [u8; 4] = msg
                        .body
                        .get(..4)
                        .and_then(|b| b.try_into().ok())
                        .unwrap_or([0; 4]);
                    self.complete(trans_id, MessageType::SWITCH_DATA_PATH, &body);
                }
            }
            other => {
                tracing::debug!(?other, "netvsp: unexpected NVSP message");
                self.stats.malformed += 1;
            }
        }
    }

    fn init(&mut self, trans_id: u64, msg: &NvspMessageRef<'_>) {
        let Ok(init) = msg.body_as::<Init>() else {
            self.stats.malformed += 1;
            return;
        };
        let (min, max) = (
            init.min_protocol_version.get(),
            init.max_protocol_version.get(),
        );
        let chosen = self
            .config
            .versions
            .iter()
            .copied()
            .filter(|v| (min..=max).contains(&v.0))
            .max();
        // A new INIT starts the NIC over.
        if chosen.is_some() {
            self.version = chosen;
            self.recv = None;
            self.send = None;
            self.in_flight.clear();
            self.pending_control.clear();
            self.control = RndisControl::new(&self.config);
        }
        let body = InitComplete {
            negotiated_protocol_version: U32::new(
                chosen.map_or(nvsp::INVALID_PROTOCOL_VERSION, |v| v.0),
            ),
            max_mdl_chain_length: U32::new(34),
            status: U32::new(if chosen.is_some() {
                NvspStatus::SUCCESS.0
            } else {
                NvspStatus::FAIL.0
            }),
        };
        self.complete(trans_id, MessageType::INIT_COMPLETE, &body);
    }

    fn receive_buffer(&mut self, trans_id: u64, version: NvspVersion, msg: &NvspMessageRef<'_>) {
        let fail = SendReceiveBufferComplete {
            status: U32::new(NvspStatus::FAIL.0),
            ..Default::default()
        };
        let Ok(req) = msg.body_as::<SendReceiveBuffer>() else {
            self.stats.malformed += 1;
            return self.complete(trans_id, MessageType::SEND_RECEIVE_BUFFER_COMPLETE, &fail);
        };
        let max = if version <= NvspVersion::V2 {
            nvsp::MAX_RECEIVE_BUFFER_SIZE_LEGACY
        } else {
            nvsp::MAX_RECEIVE_BUFFER_SIZE
        };
        let handle = req.gpadl_handle.get();
        let buffer = (self.gpadls)(handle).filter(|b| b.len() <= u64::from(max));
        let recv = match (&self.recv, buffer) {
            (None, Some(buffer)) => ReceiveBuffer::new(
                buffer,
                handle,
                req.id.get(),
                self.config.receive_section_size,
                u32::MAX,
            ),
            _ => None,
        };
        let Some(recv) = recv else {
            self.stats.malformed += 1;
            return self.complete(trans_id, MessageType::SEND_RECEIVE_BUFFER_COMPLETE, &fail);
        };
        let body = SendReceiveBufferComplete {
            status: U32::new(NvspStatus::SUCCESS.0),
            section_count: U32::new(1),
            section: ReceiveBufferSection {
                offset: U32::new(0),
                sub_allocation_size: U32::new(recv.sub_allocation_size),
                sub_allocation_count: U32::new(recv.count),
                end_offset: U32::new(recv.count * recv.sub_allocation_size),
            },
        };
        self.recv = Some(recv);
        self.complete(trans_id, MessageType::SEND_RECEIVE_BUFFER_COMPLETE, &body);
    }

    fn send_buffer(&mut self, trans_id: u64, msg: &NvspMessageRef<'_>) {
        let req = msg.body_as::<SendReceiveBuffer>();
        let send = match (&self.send, &req) {
            (None, Ok(req)) => (self.gpadls)(req.gpadl_handle.get())
                .filter(|b| b.len() <= u64::from(nvsp::MAX_SEND_BUFFER_SIZE))
                .and_then(|b| {
                    SendBuffer::new(
                        b,
                        req.gpadl_handle.get(),
                        req.id.get(),
                        self.config.send_section_size,
                    )
                }),
            _ => None,
        };
        let body = match send {
            Some(send) => {
                let body = SendSendBufferComplete {
                    status: U32::new(NvspStatus::SUCCESS.0),
                    section_size: U32::new(send.section_size),
                };
                self.send = Some(send);
                body
            }
            None => {
                self.stats.malformed += 1;
                SendSendBufferComplete {
                    status: U32::new(NvspStatus::FAIL.0),
                    section_size: U32::new(0),
                }
            }
        };
        self.complete(trans_id, MessageType::SEND_SEND_BUFFER_COMPLETE, &body);
    }

    /// Runs the RNDIS messages of one SEND_RNDIS_PKT; returns the completion status.
    fn rndis_packet(
        &mut self,
        version: NvspVersion,
        body: &SendRndisPacket,
        ranges: Option<&GpaRanges<'_>>,
    ) -> NvspStatus {
        let index = body.send_buffer_section_index.get();
        let size = body.send_buffer_section_size.get();
        let section = if index == INVALID_SECTION_INDEX {
            None
        } else {
            let found = self
                .send
                .as_ref()
                .and_then(|s| Some((s.buffer.clone(), s.section(index, size)?)));
            match found {
                Some((buffer, offset)) => Some((buffer, offset, u64::from(size))),
                None => {
                    self.stats.bad_sections += 1;
                    return NvspStatus::FAIL;
                }
            }
        };
        let memory = self.memory.clone();
        let stream = match MessageStream::new(&memory, section, ranges) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "netvsp: bad GPA-direct ranges");
                self.stats.bad_sections += 1;
                return NvspStatus::FAIL;
            }
        };
        if stream.is_empty() {
            self.stats.bad_rndis += 1;
            return NvspStatus::INVALID_RNDIS_PACKET;
        }
        let mut at = 0u64;
        while at < stream.len() {
            match self.rndis_message(version, &stream, at) {
                Ok(len) => at += len,
                Err(status) => return status,
            }
        }
        NvspStatus::SUCCESS
    }

    /// Runs the message at `at`; returns its length.
    fn rndis_message(
        &mut self,
        version: NvspVersion,
        stream: &MessageStream<'_>,
        at: u64,
    ) -> Result<u64, NvspStatus> {
        let left = (stream.len() - at) as usize;
        let mut raw = [0u8; RNDIS_HEADER_SIZE];
        let header = stream
            .read(at, &mut raw)
            .ok()
            .and_then(|()| rndis::read_prefix::<RndisHeader>(&raw, "RNDIS header").ok())
            .and_then(|h| Some((h, rndis::checked_message_length(&h, left).ok()?)));
        let Some((header, len)) = header else {
            self.stats.bad_rndis += 1;
            return Err(NvspStatus::INVALID_RNDIS_PACKET);
        };
        let message_type = RndisMessageType(header.message_type.get());
        if message_type == RndisMessageType::PACKET {
            self.data_message(stream, at, len)?;
        } else {
            if len > MAX_CONTROL_MESSAGE {
                self.stats.bad_rndis += 1;
                return Err(NvspStatus::INVALID_RNDIS_PACKET);
            }
            let mut bytes = vec![0u8; len];
            if stream.read(at, &mut bytes).is_err() {
                self.stats.bad_rndis += 1;
                return Err(NvspStatus::INVALID_RNDIS_PACKET);
            }
            let Ok(msg) = RndisMessageRef::parse(&bytes) else {
                self.stats.bad_rndis += 1;
                return Err(NvspStatus::INVALID_RNDIS_PACKET);
            };
            let outcome = self.control.handle(&msg, version, self.link_up);
            self.stats.rndis_refused += u64::from(outcome.refused);
            if let Some(response) = outcome.response {
                self.stats.control_messages += 1;
                self.queue_control(response);
            }
        }
        Ok(len as u64)
    }

    /// Sends the frame of the PACKET message of `len` bytes at `at`.
    fn data_message(
        &mut self,
        stream: &MessageStream<'_>,
        at: u64,
        len: usize,
    ) -> Result<(), NvspStatus> {
        let mut raw = [0u8; PACKET_MESSAGE_HEADER_SIZE];
        let layout = if len < PACKET_MESSAGE_HEADER_SIZE {
            None
        } else {
            stream
                .read(at, &mut raw)
                .ok()
                .and_then(|()| {
                    rndis::read_prefix::<PacketHeader>(&raw[RNDIS_HEADER_SIZE..], "p").ok()
                })
                .and_then(|h| PacketLayout::validate(&h, len).ok())
        };
        let Some(layout) = layout else {
            self.stats.bad_rndis += 1;
            return Err(NvspStatus::INVALID_RNDIS_PACKET);
        };
        let ppi_len = layout.per_packet_info.len();
        if ppi_len > 0 {
            let mut area = vec![0u8; ppi_len];
            let valid = ppi_len <= MAX_PPI_AREA
                && stream
                    .read(at + layout.per_packet_info.start as u64, &mut area)
                    .is_ok()
                && ppi::ppis(&area).all(|p| p.is_ok());
            if !valid {
                self.stats.bad_rndis += 1;
                return Err(NvspStatus::INVALID_RNDIS_PACKET);
            }
        }
        let frame_len = layout.data.len();
        if !self.control.is_initialized() {
            self.stats.tx_dropped_not_initialized += 1;
            return Ok(());
        }
        if frame_len == 0 || frame_len > MAX_FRAME_LEN {
            self.stats.tx_dropped_bad_length += 1;
            return Ok(());
        }
        match stream.send(
            at + layout.data.start as u64,
            frame_len as u64,
            &mut *self.backend,
        ) {
            Ok(true) => {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += frame_len as u64;
                Ok(())
            }
            Ok(false) => {
                self.stats.tx_dropped_backend_full += 1;
                Ok(())
            }
            Err(StreamError::Backend(error)) => {
                tracing::debug!(%error, "netvsp: backend refused a frame");
                self.stats.tx_errors += 1;
                Ok(())
            }
            Err(error) => {
                tracing::debug!(%error, "netvsp: frame outside guest memory");
                self.stats.tx_errors += 1;
                Err(NvspStatus::FAIL)
            }
        }
    }

    /// Drops the receive buffer after its GPADL was torn down under it.
    pub(super) fn lose_receive_buffer(&mut self) {
        self.stats.revoked_buffers += 1;
        self.recv = None;
        self.in_flight.clear();
        self.pending_control.clear();
    }

    /// The header of a SEND_RNDIS_PKT carried by a transfer-page packet.
    pub(super) fn transfer_message(channel: RndisChannelType) -> NvspMessage {
        NvspMessage::new(
            MessageType::SEND_RNDIS_PACKET,
            &SendRndisPacket {
                channel_type: U32::new(channel.0),
                send_buffer_section_index: U32::new(INVALID_SECTION_INDEX),
                send_buffer_section_size: U32::new(0),
            },
        )
    }
}
