//! The sans-I/O control path of netvsc: [`NetvscClient`] takes the host's bytes (NVSP completions,
//! RNDIS control messages out of the receive buffer) and queues [`ClientAction`]s (NVSP messages
//! to send, GPADLs to create, RNDIS control messages to send) in Linux's order:
//!
//! 1. NVSP INIT with min = max = 6.1, then 6, 5, 4, 2, 1 until one completes with SUCCESS;
//! 2. from version 2, SEND_NDIS_CONFIG (MTU 1514); SEND_NDIS_VERSION (6.1 up to NVSP 4, else 6.30),
//!    neither answered;
//! 3. the receive buffer's GPADL, SEND_RECV_BUF (id 0xCAFE) and its section table checked;
//! 4. the send buffer's GPADL, SEND_SEND_BUF (id 0) and its section size checked;
//! 5. RNDIS INITIALIZE, QUERY maximum frame size, permanent address, media connect status, link
//!    speed (NVSP ≥ 5, as Linux), SET packet filter 0x0D (directed, all-multicast, broadcast).
//!
//! One RNDIS control message is in flight at a time, and the next is only handed out once the host
//! completed the previous one's packet (the NIC reuses one page for them). Capabilities announced
//! in NDIS_CONFIG are 802.1Q only: this NIC does no SR-IOV, teaming or RSC.
#![forbid(unsafe_code)]

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use netvsp_protocol::ndis::{MediaState, Oid, PacketFilter, LINK_SPEED_UNIT_BPS};
use netvsp_protocol::nvsp::{
    ndis_version_for, Init, InitComplete, MessageType, NvspMessage, NvspMessageRef, NvspStatus,
    NvspVersion, SendNdisConfig, SendNdisVersion, SendReceiveBuffer, SendReceiveBufferComplete,
    SendSendBuffer, SendSendBufferComplete, VscCapabilities, LINUX_NVSP_VERSIONS,
    MIN_INIT_COMPLETE_LEN, MIN_RECEIVE_BUFFER_COMPLETE_LEN, MIN_SEND_BUFFER_COMPLETE_LEN,
    RECEIVE_BUFFER_ID, SEND_BUFFER_ID,
};
use netvsp_protocol::rndis::{
    self, IndicateStatus, InitializeComplete, InitializeRequest, QueryComplete, QueryRequest,
    RndisMessageRef, RndisMessageType, RndisStatus, SetComplete, LINUX_MAX_TRANSFER_SIZE,
    MEDIUM_802_3, RNDIS_MAJOR_VERSION, RNDIS_MINOR_VERSION,
};

use super::datapath::{send_completion_status, ReceiveSections, NVSP_TID, RNDIS_TID};
use super::{NetvscError, ETHERNET_HEADER_LEN, MTU};

/// Bytes of the largest RNDIS control message this client sends (a SET of a `u32`).
pub const MAX_CONTROL_MESSAGE: usize = 8 + 20 + 4;
/// Smallest MTU a host may report (`ETH_MIN_MTU`).
const MIN_MTU: u32 = 68;

/// What the NIC asks of the host.
#[derive(Debug, Clone)]
pub struct NetvscConfig {
    /// NVSP versions to propose, in order.
    pub versions: Vec<NvspVersion>,
    /// Bytes of the receive buffer (a multiple of the page size).
    pub receive_buffer_len: usize,
    /// Bytes of the send buffer (a multiple of the page size).
    pub send_buffer_len: usize,
}

impl Default for NetvscConfig {
    /// Linux's versions, a 1 MiB receive buffer and a 384 KiB send buffer (64 of the 6144-byte
    /// sections hosts use).
    fn default() -> Self {
        Self {
            versions: LINUX_NVSP_VERSIONS.to_vec(),
            receive_buffer_len: 1 << 20,
            send_buffer_len: 64 * 6144,
        }
    }
}

/// Which of the two buffers a GPADL is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferKind {
    /// The receive buffer (host writes frames into it).
    Receive,
    /// The send buffer (we write frames into it).
    Send,
}

/// An RNDIS control message to send (its bytes live inline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlMessage {
    bytes: [u8; MAX_CONTROL_MESSAGE],
    len: usize,
}

impl ControlMessage {
    /// The message's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// What the client needs done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Write `message` in-band with `trans_id`, asking for a completion if `completion`.
    SendNvsp {
        /// Transaction id.
        trans_id: u64,
        /// The 40-byte message.
        message: NvspMessage,
        /// Whether the host must complete it.
        completion: bool,
    },
    /// Create the buffer's GPADL, then call [`NetvscClient::buffer_gpadl`].
    CreateGpadl(BufferKind),
    /// Send this RNDIS message on the control channel (SEND_RNDIS_PKT channel type 1, the message
    /// in a page passed GPA-direct), completion requested, with `trans_id`.
    SendControl {
        /// Transaction id.
        trans_id: u64,
        /// The message.
        message: ControlMessage,
    },
    /// Initialisation finished: see [`NetvscClient::info`].
    Ready,
}

/// What initialisation learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NicInfo {
    /// The NVSP version agreed.
    pub version: NvspVersion,
    /// The NDIS version announced (major, minor).
    pub ndis_version: (u32, u32),
    /// The permanent MAC address.
    pub mac: [u8; 6],
    /// MTU: ours, lowered to the host's maximum frame size.
    pub mtu: u32,
    /// The receive buffer's checked section table.
    pub receive: ReceiveSections,
    /// Bytes of a send section (the host's choice).
    pub send_section_size: u32,
    /// The host's link speed, if it told.
    pub link_speed_bps: Option<u64>,
}

/// A change of link state the host indicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// Media connected.
    Up,
    /// Media disconnected.
    Down,
    /// The link speed changed (bits per second).
    Speed(u64),
    /// The network changed (Linux bounces the carrier).
    NetworkChange,
    /// An indication this driver does not act on.
    Other(RndisStatus),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Idle,
    Init(usize),
    ReceiveGpadl,
    ReceiveBuffer,
    SendGpadl,
    SendBuffer,
    Rndis(RndisStep),
    Ready,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RndisStep {
    Initialize,
    MaxFrameSize,
    PermanentAddress,
    MediaConnect,
    LinkSpeed,
    PacketFilter,
}

impl RndisStep {
    fn reply_type(self) -> RndisMessageType {
        match self {
            Self::Initialize => RndisMessageType::INITIALIZE_COMPLETE,
            Self::PacketFilter => RndisMessageType::SET_COMPLETE,
            _ => RndisMessageType::QUERY_COMPLETE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Initialize => "RNDIS INITIALIZE",
            Self::MaxFrameSize => "maximum frame size",
            Self::PermanentAddress => "permanent address",
            Self::MediaConnect => "media connect status",
            Self::LinkSpeed => "link speed",
            Self::PacketFilter => "SET packet filter",
        }
    }
}

/// The netvsc control path for one NIC. See the module documentation.
#[derive(Debug, Clone)]
pub struct NetvscClient {
    config: NetvscConfig,
    step: Step,
    actions: VecDeque<ClientAction>,
    version: Option<NvspVersion>,
    receive: Option<ReceiveSections>,
    send_section_size: u32,
    mtu: u32,
    mac: Option<[u8; 6]>,
    link_up: bool,
    link_speed_bps: Option<u64>,
    next_request_id: u32,
    /// The RNDIS request whose reply we wait for.
    awaiting: Option<u32>,
    /// The control send the host has not completed yet.
    control_in_flight: Option<u64>,
    /// A control message held back until `control_in_flight` completes.
    held: Option<ClientAction>,
}

impl NetvscClient {
    /// A client that will ask the host for `config`.
    pub fn new(config: NetvscConfig) -> Self {
        Self {
            config,
            step: Step::Idle,
            actions: VecDeque::new(),
            version: None,
            receive: None,
            send_section_size: 0,
            mtu: MTU as u32,
            mac: None,
            link_up: true,
            link_speed_bps: None,
            next_request_id: 1,
            awaiting: None,
            control_in_flight: None,
            held: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NetvscConfig {
        &self.config
    }

    /// Starts initialisation: the first INIT.
    pub fn start(&mut self) -> Result<(), NetvscError> {
        if self.config.versions.is_empty() {
            self.step = Step::Failed;
            return Err(NetvscError::NoCommonVersion);
        }
        self.propose(0);
        Ok(())
    }

    /// The next thing to do, in order.
    pub fn poll_action(&mut self) -> Option<ClientAction> {
        self.actions.pop_front()
    }

    /// Whether initialisation finished.
    pub fn is_ready(&self) -> bool {
        self.step == Step::Ready
    }

    /// What initialisation learnt, once it finished.
    pub fn info(&self) -> Option<NicInfo> {
        if self.step != Step::Ready {
            return None;
        }
        Some(NicInfo {
            version: self.version?,
            ndis_version: ndis_version_for(self.version?),
            mac: self.mac?,
            mtu: self.mtu,
            receive: self.receive?,
            send_section_size: self.send_section_size,
            link_speed_bps: self.link_speed_bps,
        })
    }

    /// The receive buffer's section table, once the host described it.
    pub fn receive_sections(&self) -> Option<ReceiveSections> {
        self.receive
    }

    /// Whether the link is up (media connected), as last queried or indicated.
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    fn nvsp<T: zerocopy::IntoBytes + zerocopy::Immutable>(
        &mut self,
        message_type: MessageType,
        body: &T,
        completion: bool,
    ) {
        self.actions.push_back(ClientAction::SendNvsp {
            trans_id: NVSP_TID | u64::from(message_type.0),
            message: NvspMessage::new(message_type, body),
            completion,
        });
    }

    fn propose(&mut self, index: usize) {
        let version = self.config.versions[index];
        self.step = Step::Init(index);
        let body = Init {
            min_protocol_version: version.0.into(),
            max_protocol_version: version.0.into(),
        };
        self.nvsp(MessageType::INIT, &body, true);
    }

    fn fail<T>(&mut self, e: NetvscError) -> Result<T, NetvscError> {
        self.step = Step::Failed;
        Err(e)
    }

    /// The GPADL handle of a buffer the client asked for ([`ClientAction::CreateGpadl`]).
    pub fn buffer_gpadl(&mut self, kind: BufferKind, gpadl: u32) -> Result<(), NetvscError> {
        match (self.step, kind) {
            (Step::ReceiveGpadl, BufferKind::Receive) => {
                self.step = Step::ReceiveBuffer;
                let body = SendReceiveBuffer {
                    gpadl_handle: gpadl.into(),
                    id: RECEIVE_BUFFER_ID.into(),
                };
                self.nvsp(MessageType::SEND_RECEIVE_BUFFER, &body, true);
                Ok(())
            }
            (Step::SendGpadl, BufferKind::Send) => {
                self.step = Step::SendBuffer;
                let body = SendSendBuffer {
                    gpadl_handle: gpadl.into(),
                    id: SEND_BUFFER_ID.into(),
                };
                self.nvsp(MessageType::SEND_SEND_BUFFER, &body, true);
                Ok(())
            }
            _ => Err(NetvscError::NotReady),
        }
    }

    /// Handles the host's completion of one of our control packets (NVSP init messages, RNDIS
    /// control sends). Data-send completions belong to the data path, not here.
    pub fn handle_completion(&mut self, trans_id: u64, payload: &[u8]) -> Result<(), NetvscError> {
        if trans_id & RNDIS_TID != 0 && self.control_in_flight == Some(trans_id) {
            // The host's word on the packet itself; the RNDIS reply comes separately.
            send_completion_status(payload)?;
            self.control_in_flight = None;
            if let Some(held) = self.held.take() {
                self.send_control(held);
            }
            return Ok(());
        }
        let expected = match self.step {
            Step::Init(_) => MessageType::INIT,
            Step::ReceiveBuffer => MessageType::SEND_RECEIVE_BUFFER,
            Step::SendBuffer => MessageType::SEND_SEND_BUFFER,
            _ => return Err(NetvscError::UnknownTransaction(trans_id)),
        };
        if trans_id != NVSP_TID | u64::from(expected.0) {
            return Err(NetvscError::UnknownTransaction(trans_id));
        }
        let result = self.completion(payload);
        if result.is_err() {
            self.step = Step::Failed;
        }
        result
    }

    fn completion(&mut self, payload: &[u8]) -> Result<(), NetvscError> {
        let message = NvspMessageRef::parse(payload)?;
        let check = |want: MessageType, min: usize| {
            if message.message_type != want {
                return Err(NetvscError::UnexpectedNvsp {
                    expected: want,
                    got: message.message_type,
                });
            }
            if payload.len() < min {
                return Err(NetvscError::ShortNvsp {
                    message_type: want,
                    len: payload.len(),
                    need: min,
                });
            }
            Ok(())
        };
        match self.step {
            Step::Init(index) => {
                check(MessageType::INIT_COMPLETE, MIN_INIT_COMPLETE_LEN)?;
                let body: InitComplete = message.body_as()?;
                if NvspStatus(body.status.get()) != NvspStatus::SUCCESS {
                    if index + 1 < self.config.versions.len() {
                        self.propose(index + 1);
                        return Ok(());
                    }
                    return Err(NetvscError::NoCommonVersion);
                }
                let version = self.config.versions[index];
                self.version = Some(version);
                if version >= NvspVersion::V2 {
                    let config = SendNdisConfig {
                        mtu: ((MTU + ETHERNET_HEADER_LEN) as u32).into(),
                        reserved: 0.into(),
                        capabilities: VscCapabilities::IEEE_8021Q.0.into(),
                    };
                    self.nvsp(MessageType::SEND_NDIS_CONFIG, &config, false);
                }
                let (major, minor) = ndis_version_for(version);
                let ndis = SendNdisVersion {
                    ndis_major_version: major.into(),
                    ndis_minor_version: minor.into(),
                };
                self.nvsp(MessageType::SEND_NDIS_VERSION, &ndis, false);
                self.step = Step::ReceiveGpadl;
                self.actions
                    .push_back(ClientAction::CreateGpadl(BufferKind::Receive));
            }
            Step::ReceiveBuffer => {
                check(
                    MessageType::SEND_RECEIVE_BUFFER_COMPLETE,
                    MIN_RECEIVE_BUFFER_COMPLETE_LEN,
                )?;
                let body: SendReceiveBufferComplete = message.body_as()?;
                if NvspStatus(body.status.get()) != NvspStatus::SUCCESS {
                    return Err(NetvscError::HostRefused {
                        what: "SEND_RECV_BUF",
                        status: body.status.get(),
                    });
                }
                let s = body.section;
                self.receive = Some(ReceiveSections::validate(
                    body.section_count.get(),
                    s.offset.get(),
                    s.sub_allocation_size.get(),
                    s.sub_allocation_count.get(),
                    s.end_offset.get(),
                    self.config.receive_buffer_len,
                )?);
                self.step = Step::SendGpadl;
                self.actions
                    .push_back(ClientAction::CreateGpadl(BufferKind::Send));
            }
            Step::SendBuffer => {
                check(
                    MessageType::SEND_SEND_BUFFER_COMPLETE,
                    MIN_SEND_BUFFER_COMPLETE_LEN,
                )?;
                let body: SendSendBufferComplete = message.body_as()?;
                if NvspStatus(body.status.get()) != NvspStatus::SUCCESS {
                    return Err(NetvscError::HostRefused {
                        what: "SEND_SEND_BUF",
                        status: body.status.get(),
                    });
                }
                let size = body.section_size.get();
                // The same checks the data path's allocator makes, before anything depends on it.
                super::datapath::SendSections::new(size, self.config.send_buffer_len)?;
                self.send_section_size = size;
                let init = InitializeRequest {
                    request_id: 0.into(),
                    major_version: RNDIS_MAJOR_VERSION.into(),
                    minor_version: RNDIS_MINOR_VERSION.into(),
                    max_transfer_size: LINUX_MAX_TRANSFER_SIZE.into(),
                };
                self.rndis_request(
                    RndisStep::Initialize,
                    RndisMessageType::INITIALIZE,
                    init,
                    &[],
                );
            }
            _ => unreachable!("only steps waiting for a completion get here"),
        }
        Ok(())
    }

    /// Queues an RNDIS request (its request id filled in here) and moves to `step`.
    fn rndis_request<T>(
        &mut self,
        step: RndisStep,
        message_type: RndisMessageType,
        mut body: T,
        data: &[u8],
    ) where
        T: zerocopy::IntoBytes + zerocopy::FromBytes + zerocopy::Immutable,
    {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        // Every request body starts with its request id.
        body.as_mut_bytes()[..4].copy_from_slice(&id.to_le_bytes());
        let mut message = ControlMessage {
            bytes: [0; MAX_CONTROL_MESSAGE],
            len: 0,
        };
        // Our own requests always fit MAX_CONTROL_MESSAGE.
        message.len = rndis::encode(&mut message.bytes, message_type, &body, data)
            .expect("control requests fit MAX_CONTROL_MESSAGE");
        self.step = Step::Rndis(step);
        self.awaiting = Some(id);
        self.send_control(ClientAction::SendControl {
            trans_id: RNDIS_TID | u64::from(id),
            message,
        });
    }

    fn send_control(&mut self, action: ClientAction) {
        if self.control_in_flight.is_some() {
            self.held = Some(action);
            return;
        }
        if let ClientAction::SendControl { trans_id, .. } = action {
            self.control_in_flight = Some(trans_id);
        }
        self.actions.push_back(action);
    }

    fn query(&mut self, step: RndisStep, oid: Oid) {
        let body = QueryRequest {
            request_id: 0.into(),
            oid: oid.0.into(),
            information_buffer_length: 0.into(),
            information_buffer_offset: (size_of::<QueryRequest>() as u32).into(),
            device_vc_handle: 0.into(),
        };
        self.rndis_request(step, RndisMessageType::QUERY, body, &[]);
    }

    /// Handles an RNDIS message the host put in the receive buffer on the control path (a
    /// completion of our request or an indication). Returns the link change it indicated, if any.
    pub fn handle_rndis(&mut self, bytes: &[u8]) -> Result<Option<LinkEvent>, NetvscError> {
        let message = RndisMessageRef::parse(bytes)?;
        if message.message_type == RndisMessageType::INDICATE_STATUS {
            return self.indication(&message).map(Some);
        }
        let Step::Rndis(step) = self.step else {
            return Err(NetvscError::UnexpectedRndis {
                message_type: message.message_type,
                got: message.body_as::<u32>().unwrap_or(0),
                expected: None,
            });
        };
        let request_id: u32 = message.body_as()?;
        if message.message_type != step.reply_type() || Some(request_id) != self.awaiting {
            return self.fail(NetvscError::UnexpectedRndis {
                message_type: message.message_type,
                got: request_id,
                expected: self.awaiting,
            });
        }
        match self.reply(step, &message) {
            Ok(()) => Ok(None),
            Err(e) => self.fail(e),
        }
    }

    fn indication(&mut self, message: &RndisMessageRef<'_>) -> Result<LinkEvent, NetvscError> {
        let body: IndicateStatus = message.body_as()?;
        let status = RndisStatus(body.status.get());
        Ok(match status {
            RndisStatus::MEDIA_CONNECT => {
                self.link_up = true;
                LinkEvent::Up
            }
            RndisStatus::MEDIA_DISCONNECT => {
                self.link_up = false;
                LinkEvent::Down
            }
            RndisStatus::LINK_SPEED_CHANGE => {
                let buffer = message.buffer(
                    body.status_buffer_offset.get(),
                    body.status_buffer_length.get(),
                )?;
                let speed: u32 = rndis::read_prefix(buffer, "link speed")?;
                let bps = u64::from(speed) * LINK_SPEED_UNIT_BPS;
                self.link_speed_bps = Some(bps);
                LinkEvent::Speed(bps)
            }
            RndisStatus::NETWORK_CHANGE => LinkEvent::NetworkChange,
            other => LinkEvent::Other(other),
        })
    }

    /// The `u32` (or `need`-byte) answer of a successful QUERY_COMPLETE.
    fn query_value<'a>(
        step: RndisStep,
        message: &RndisMessageRef<'a>,
        body: &QueryComplete,
        need: usize,
    ) -> Result<&'a [u8], NetvscError> {
        let (len, offset) = (
            body.information_buffer_length.get(),
            body.information_buffer_offset.get(),
        );
        let bad = NetvscError::BadQueryInfo {
            what: step.name(),
            len,
            offset,
        };
        // The value must not overlap the completion's own fields.
        if (len as usize) < need || (offset as usize) < size_of::<QueryComplete>() {
            return Err(bad);
        }
        message.buffer(offset, len).map_err(|_| bad)
    }

    fn reply(&mut self, step: RndisStep, message: &RndisMessageRef<'_>) -> Result<(), NetvscError> {
        let version = self.version.unwrap_or(NvspVersion::V1);
        let refused = |status: u32| NetvscError::HostRefused {
            what: step.name(),
            status,
        };
        match step {
            RndisStep::Initialize => {
                let body: InitializeComplete = message.body_as()?;
                if body.status.get() != RndisStatus::SUCCESS.0 {
                    return Err(refused(body.status.get()));
                }
                if body.medium.get() != MEDIUM_802_3 {
                    return Err(NetvscError::BadValue {
                        what: "RNDIS medium",
                        value: body.medium.get().into(),
                    });
                }
                self.query(RndisStep::MaxFrameSize, Oid::GEN_MAXIMUM_FRAME_SIZE);
            }
            RndisStep::PacketFilter => {
                let body: SetComplete = message.body_as()?;
                if body.status.get() != RndisStatus::SUCCESS.0 {
                    return Err(refused(body.status.get()));
                }
                self.awaiting = None;
                self.step = Step::Ready;
                self.actions.push_back(ClientAction::Ready);
            }
            _ => {
                let body: QueryComplete = message.body_as()?;
                let ok = body.status.get() == RndisStatus::SUCCESS.0;
                match step {
                    RndisStep::MaxFrameSize => {
                        if !ok {
                            return Err(refused(body.status.get()));
                        }
                        let value = Self::query_value(step, message, &body, 4)?;
                        let mtu: u32 = rndis::read_prefix(value, "maximum frame size")?;
                        if mtu < MIN_MTU {
                            return Err(NetvscError::BadValue {
                                what: "maximum frame size",
                                value: mtu.into(),
                            });
                        }
                        self.mtu = self.mtu.min(mtu);
                        self.query(
                            RndisStep::PermanentAddress,
                            Oid::IEEE_802_3_PERMANENT_ADDRESS,
                        );
                    }
                    RndisStep::PermanentAddress => {
                        if !ok {
                            return Err(refused(body.status.get()));
                        }
                        let value = Self::query_value(step, message, &body, 6)?;
                        let mut mac = [0u8; 6];
                        mac.copy_from_slice(&value[..6]);
                        if mac[0] & 1 != 0 || mac == [0; 6] {
                            let mut bits = [0u8; 8];
                            bits[2..].copy_from_slice(&mac);
                            return Err(NetvscError::BadValue {
                                what: "MAC address",
                                value: u64::from_be_bytes(bits),
                            });
                        }
                        self.mac = Some(mac);
                        self.query(RndisStep::MediaConnect, Oid::GEN_MEDIA_CONNECT_STATUS);
                    }
                    RndisStep::MediaConnect => {
                        // A failed query leaves the link up, as in Linux.
                        if ok {
                            let value = Self::query_value(step, message, &body, 4)?;
                            let state: u32 = rndis::read_prefix(value, "media state")?;
                            self.link_up = MediaState(state) == MediaState::CONNECTED;
                        }
                        if version >= NvspVersion::V5 {
                            self.query(RndisStep::LinkSpeed, Oid::GEN_LINK_SPEED);
                        } else {
                            self.set_filter();
                        }
                    }
                    RndisStep::LinkSpeed => {
                        if ok {
                            let value = Self::query_value(step, message, &body, 4)?;
                            let speed: u32 = rndis::read_prefix(value, "link speed")?;
                            self.link_speed_bps = Some(u64::from(speed) * LINK_SPEED_UNIT_BPS);
                        }
                        self.set_filter();
                    }
                    RndisStep::Initialize | RndisStep::PacketFilter => unreachable!(),
                }
            }
        }
        Ok(())
    }

    fn set_filter(&mut self) {
        let body = QueryRequest {
            request_id: 0.into(),
            oid: Oid::GEN_CURRENT_PACKET_FILTER.0.into(),
            information_buffer_length: 4.into(),
            information_buffer_offset: (size_of::<QueryRequest>() as u32).into(),
            device_vc_handle: 0.into(),
        };
        let filter = PacketFilter::LINUX_UP.0.to_le_bytes();
        self.rndis_request(
            RndisStep::PacketFilter,
            RndisMessageType::SET,
            body,
            &filter,
        );
    }

    /// Handles an in-band NVSP message the host sent on its own (send indirection table, VF
    /// association): this NIC uses one channel and no VF, so they are checked and ignored.
    pub fn handle_inband(&mut self, payload: &[u8]) -> Result<(), NetvscError> {
        let message = NvspMessageRef::parse(payload)?;
        match message.message_type {
            MessageType::SEND_INDIRECTION_TABLE | MessageType::SEND_VF_ASSOCIATION => Ok(()),
            other => Err(NetvscError::UnexpectedNvsp {
                expected: MessageType::SEND_INDIRECTION_TABLE,
                got: other,
            }),
        }
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
