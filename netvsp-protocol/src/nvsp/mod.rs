//! NVSP, the network VSP protocol: the messages netvsc and netvsp exchange in VMBus packets to
//! negotiate a version, hand over the receive and send buffers, carry RNDIS messages and manage
//! sub-channels. Every message is a `u32` [`MessageType`] followed by a type-specific body
//! (Linux's `struct nvsp_message`, [`NVSP_MESSAGE_SIZE`] bytes with the largest body).

use vmbus::open_enum;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `sizeof(struct nvsp_message)`: Linux sends every NVSP message in this many bytes and copies this
/// many out of every completion it waits for.
pub const NVSP_MESSAGE_SIZE: usize = 40;
/// Bytes of the message type in front of every body.
pub const NVSP_HEADER_SIZE: usize = 4;
/// Bytes of the body union of a [`NVSP_MESSAGE_SIZE`] message.
pub const NVSP_BODY_SIZE: usize = NVSP_MESSAGE_SIZE - NVSP_HEADER_SIZE;
/// Smallest INIT_COMPLETE and SEND_RECV_BUF_COMPLETE Linux accepts: its length checks fall through
/// from INIT_COMPLETE to the receive-buffer completion (header + 24-byte body with one section).
pub const MIN_INIT_COMPLETE_LEN: usize = NVSP_HEADER_SIZE + size_of::<SendReceiveBufferComplete>();
/// Smallest SEND_RECV_BUF_COMPLETE Linux accepts.
pub const MIN_RECEIVE_BUFFER_COMPLETE_LEN: usize =
    NVSP_HEADER_SIZE + size_of::<SendReceiveBufferComplete>();
/// Smallest SEND_SEND_BUF_COMPLETE and SUBCHANNEL completion Linux accepts.
pub const MIN_SEND_BUFFER_COMPLETE_LEN: usize =
    NVSP_HEADER_SIZE + size_of::<SendSendBufferComplete>();
/// Size of the SEND_RNDIS_PKT_COMPLETE Linux sends to complete a receive (transfer-page) packet.
pub const RNDIS_PACKET_COMPLETE_LEN: usize =
    NVSP_HEADER_SIZE + size_of::<SendRndisPacketComplete>();

/// `NVSP_INVALID_PROTOCOL_VERSION`.
pub const INVALID_PROTOCOL_VERSION: u32 = 0xFFFF_FFFF;
/// The receive buffer's id and the transfer page set id of every host→guest frame packet
/// (`NETVSC_RECEIVE_BUFFER_ID`).
pub const RECEIVE_BUFFER_ID: u16 = 0xCAFE;
/// The send buffer's id (`NETVSC_SEND_BUFFER_ID`).
pub const SEND_BUFFER_ID: u16 = 0;
/// `send_buf_section_index` of a SEND_RNDIS_PKT whose message is not in the send buffer.
pub const INVALID_SECTION_INDEX: u32 = 0xFFFF_FFFF;
/// Send-buffer section size Linux sizes its send buffer with (the host picks the real one).
pub const LINUX_SEND_SECTION_SIZE: u32 = 6144;
/// Receive-buffer section size Linux sizes its receive buffer with.
pub const LINUX_RECEIVE_SECTION_SIZE: u32 = 1728;
/// Largest receive buffer a host accepts from a guest at version ≥ 2 (31 MiB).
pub const MAX_RECEIVE_BUFFER_SIZE: u32 = 31 << 20;
/// Largest receive buffer a host accepts from a version-1 guest (15 MiB).
pub const MAX_RECEIVE_BUFFER_SIZE_LEGACY: u32 = 15 << 20;
/// Largest send buffer (15 MiB).
pub const MAX_SEND_BUFFER_SIZE: u32 = 15 << 20;
/// Most ranges in one transfer-page packet Linux accepts (`NVSP_RSC_MAX`).
pub const MAX_TRANSFER_PAGE_RANGES: usize = 562;
/// Most ranges in one transfer-page packet without RSC (NDIS ≥ 6.0).
pub const MAX_TRANSFER_PAGE_RANGES_NO_RSC: usize = 375;
/// Entries of the send indirection table (`VRSS_SEND_TAB_SIZE`).
pub const SEND_INDIRECTION_TABLE_ENTRIES: usize = 16;
/// Most channels (primary plus sub-channels) of one NIC (`VRSS_CHANNEL_MAX`).
pub const MAX_CHANNELS: u32 = 64;
/// Every smaller section cannot hold one RNDIS PACKET header and PPIs: Linux refuses receive and
/// send sections below this (`RNDIS_MESSAGE_SIZE(struct rndis_message)`).
pub const MIN_SECTION_SIZE: u32 = 68;

open_enum! {
    /// NVSP protocol version (`NVSP_PROTOCOL_VERSION_*`).
    pub struct NvspVersion(u32) {
        /// Version 1.
        V1 = 0x2,
        /// Version 2 (NDIS config).
        V2 = 0x30002,
        /// Version 4 (VF association).
        V4 = 0x40000,
        /// Version 5 (sub-channels, send table).
        V5 = 0x50000,
        /// Version 6.
        V6 = 0x60000,
        /// Version 6.1 (RSC).
        V61 = 0x60001,
    }
}

impl PartialOrd for NvspVersion {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NvspVersion {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// The versions Linux's netvsc proposes, in order (each INIT has min = max = the version); the first
/// INIT_COMPLETE with [`NvspStatus::SUCCESS`] wins.
pub const LINUX_NVSP_VERSIONS: [NvspVersion; 6] = [
    NvspVersion::V61,
    NvspVersion::V6,
    NvspVersion::V5,
    NvspVersion::V4,
    NvspVersion::V2,
    NvspVersion::V1,
];

/// NDIS version a guest announces in SEND_NDIS_VER: 6.1 up to NVSP 4, 6.30 from NVSP 5.
pub fn ndis_version_for(version: NvspVersion) -> (u32, u32) {
    if version <= NvspVersion::V4 {
        (6, 1)
    } else {
        (6, 30)
    }
}

open_enum! {
    /// `msg_type` of an NVSP message.
    pub struct MessageType(u32) {
        /// No message.
        NONE = 0,
        /// Guest proposes a version ([`Init`]).
        INIT = 1,
        /// Host answers INIT ([`InitComplete`]).
        INIT_COMPLETE = 2,
        /// Guest's NDIS version ([`SendNdisVersion`]).
        SEND_NDIS_VERSION = 100,
        /// Guest hands over the receive buffer ([`SendReceiveBuffer`]).
        SEND_RECEIVE_BUFFER = 101,
        /// Host accepts it ([`SendReceiveBufferComplete`]).
        SEND_RECEIVE_BUFFER_COMPLETE = 102,
        /// Guest takes it back ([`RevokeBuffer`]).
        REVOKE_RECEIVE_BUFFER = 103,
        /// Guest hands over the send buffer ([`SendSendBuffer`]).
        SEND_SEND_BUFFER = 104,
        /// Host accepts it ([`SendSendBufferComplete`]).
        SEND_SEND_BUFFER_COMPLETE = 105,
        /// Guest takes it back ([`RevokeBuffer`]).
        REVOKE_SEND_BUFFER = 106,
        /// An RNDIS message, either direction ([`SendRndisPacket`]).
        SEND_RNDIS_PACKET = 107,
        /// Its completion ([`SendRndisPacketComplete`]).
        SEND_RNDIS_PACKET_COMPLETE = 108,
        /// Version 2 chimney: delegated buffer (unused by Linux).
        SEND_CHIMNEY_DELEGATED_BUFFER = 109,
        /// Version 2 receive-buffer allocation (unused by Linux).
        ALLOCATE_RECEIVE_BUFFER = 120,
        /// Version 2 VMQ RNDIS packet (unused by Linux).
        SEND_VMQ_RNDIS_PACKET = 123,
        /// Guest's MTU and capabilities, version ≥ 2 ([`SendNdisConfig`]).
        SEND_NDIS_CONFIG = 125,
        /// Host tells the guest about a VF ([`VfAssociation`]).
        SEND_VF_ASSOCIATION = 128,
        /// Guest switches the data path ([`SwitchDataPath`]).
        SWITCH_DATA_PATH = 129,
        /// Deprecated uplink state.
        UPLINK_CONNECT_STATE_DEPRECATED = 130,
        /// Extended OID query (unused by Linux).
        OID_QUERY_EX = 131,
        /// Its completion.
        OID_QUERY_EX_COMPLETE = 132,
        /// Guest asks for sub-channels ([`SubchannelRequest`]; answered by a completion).
        SUBCHANNEL = 133,
        /// Host's send indirection table ([`SendIndirectionTable`]).
        SEND_INDIRECTION_TABLE = 134,
        /// PacketDirect API (unused by Linux).
        PD_API = 135,
        /// PacketDirect batch (unused by Linux).
        PD_POST_BATCH = 136,
    }
}

open_enum! {
    /// Status in NVSP completions (`NVSP_STAT_*`).
    pub struct NvspStatus(u32) {
        /// None.
        NONE = 0,
        /// Success.
        SUCCESS = 1,
        /// Failure.
        FAIL = 2,
        /// The proposed protocol is too new.
        PROTOCOL_TOO_NEW = 3,
        /// The proposed protocol is too old.
        PROTOCOL_TOO_OLD = 4,
        /// A malformed RNDIS packet.
        INVALID_RNDIS_PACKET = 5,
        /// Busy.
        BUSY = 6,
        /// The protocol is not supported.
        PROTOCOL_UNSUPPORTED = 7,
    }
}

open_enum! {
    /// `channel_type` of SEND_RNDIS_PKT: which RNDIS channel the message belongs to.
    pub struct RndisChannelType(u32) {
        /// Data (RNDIS PACKET messages).
        DATA = 0,
        /// Control (INITIALIZE, QUERY, SET, …; completions and indications).
        CONTROL = 1,
    }
}

open_enum! {
    /// `active_datapath` of SWITCH_DATA_PATH.
    pub struct DataPath(u32) {
        /// The synthetic NIC.
        SYNTHETIC = 0,
        /// The VF.
        VF = 1,
    }
}

open_enum! {
    /// `op` of a SUBCHANNEL request.
    pub struct SubchannelOperation(u32) {
        /// None.
        NONE = 0,
        /// Allocate sub-channels.
        ALLOCATE = 1,
    }
}

/// `struct nvsp_2_vsc_capability`: what the guest's netvsc can do (SEND_NDIS_CONFIG).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VscCapabilities(pub u64);

impl VscCapabilities {
    /// VMQ.
    pub const VMQ: Self = Self(1 << 0);
    /// TCP chimney.
    pub const CHIMNEY: Self = Self(1 << 1);
    /// SR-IOV (Linux sets it from version 5).
    pub const SRIOV: Self = Self(1 << 2);
    /// 802.1Q tagging (Linux always sets it).
    pub const IEEE_8021Q: Self = Self(1 << 3);
    /// Correlation id.
    pub const CORRELATION_ID: Self = Self(1 << 4);
    /// Teaming (Linux sets it from version 5).
    pub const TEAMING: Self = Self(1 << 5);
    /// Virtual subnet id.
    pub const VSUBNET_ID: Self = Self(1 << 6);
    /// Receive segment coalescing (Linux sets it from version 6.1).
    pub const RSC: Self = Self(1 << 7);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for VscCapabilities {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// INIT body (`struct nvsp_message_init`).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct Init {
    /// Lowest version the guest accepts.
    pub min_protocol_version: U32,
    /// Highest version the guest accepts.
    pub max_protocol_version: U32,
}

/// INIT_COMPLETE body (`struct nvsp_message_init_complete`).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct InitComplete {
    /// The version agreed.
    pub negotiated_protocol_version: U32,
    /// Longest MDL chain the host handles.
    pub max_mdl_chain_length: U32,
    /// [`NvspStatus`].
    pub status: U32,
}

/// SEND_NDIS_VER body (`struct nvsp_1_message_send_ndis_version`).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct SendNdisVersion {
    /// NDIS major version.
    pub ndis_major_version: U32,
    /// NDIS minor version.
    pub ndis_minor_version: U32,
}

/// SEND_RECV_BUF body (`struct nvsp_1_message_send_receive_buffer`, packed).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct SendReceiveBuffer {
    /// GPADL of the buffer.
    pub gpadl_handle: U32,
    /// Buffer id ([`RECEIVE_BUFFER_ID`] from Linux).
    pub id: U16,
}

/// One receive-buffer section (`struct nvsp_1_receive_buffer_section`).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct ReceiveBufferSection {
    /// Offset of the section in the buffer.
    pub offset: U32,
    /// Size of each sub-allocation.
    pub sub_allocation_size: U32,
    /// Number of sub-allocations.
    pub sub_allocation_count: U32,
    /// End of the section.
    pub end_offset: U32,
}

/// SEND_RECV_BUF_COMPLETE body with its one section
/// (`struct nvsp_1_message_send_receive_buffer_complete`).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct SendReceiveBufferComplete {
    /// [`NvspStatus`].
    pub status: U32,
    /// Sections that follow (Linux requires 1).
    pub section_count: U32,
    /// The section.
    pub section: ReceiveBufferSection,
}

/// REVOKE_RECV_BUF and REVOKE_SEND_BUF body.
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct RevokeBuffer {
    /// Buffer id.
    pub id: U16,
}

/// SEND_SEND_BUF body (`struct nvsp_1_message_send_send_buffer`, packed).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct SendSendBuffer {
    /// GPADL of the buffer.
    pub gpadl_handle: U32,
    /// Buffer id ([`SEND_BUFFER_ID`] from Linux).
    pub id: U16,
}

/// SEND_SEND_BUF_COMPLETE body (`struct nvsp_1_message_send_send_buffer_complete`).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct SendSendBufferComplete {
    /// [`NvspStatus`].
    pub status: U32,
    /// Section size the host chose.
    pub section_size: U32,
}

/// SEND_RNDIS_PKT body (`struct nvsp_1_message_send_rndis_packet`).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct SendRndisPacket {
    /// [`RndisChannelType`].
    pub channel_type: U32,
    /// Send-buffer section holding the message, or [`INVALID_SECTION_INDEX`].
    pub send_buffer_section_index: U32,
    /// Bytes used in that section.
    pub send_buffer_section_size: U32,
}

/// SEND_RNDIS_PKT_COMPLETE body.
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct SendRndisPacketComplete {
    /// [`NvspStatus`].
    pub status: U32,
}

/// SEND_NDIS_CONFIG body (`struct nvsp_2_send_ndis_config`).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct SendNdisConfig {
    /// MTU including the Ethernet header (Linux: ifmtu + 14).
    pub mtu: U32,
    /// Reserved.
    pub reserved: U32,
    /// [`VscCapabilities`].
    pub capabilities: U64,
}

/// SEND_VF_ASSOCIATION body (`struct nvsp_4_send_vf_association`).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct VfAssociation {
    /// 1 if a VF is allocated and `serial` is valid.
    pub allocated: U32,
    /// Serial number of the VF.
    pub serial: U32,
}

/// SWITCH_DATA_PATH body (`struct nvsp_4_sw_datapath`).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct SwitchDataPath {
    /// [`DataPath`].
    pub active_data_path: U32,
}

/// SUBCHANNEL request body (`struct nvsp_5_subchannel_request`).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct SubchannelRequest {
    /// [`SubchannelOperation`].
    pub operation: U32,
    /// Sub-channels wanted.
    pub count: U32,
}

/// SUBCHANNEL completion body (`struct nvsp_5_subchannel_complete`).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct SubchannelComplete {
    /// [`NvspStatus`].
    pub status: U32,
    /// Sub-channels the host will offer.
    pub count: U32,
}

/// SEND_INDIRECTION_TABLE body (`struct nvsp_5_send_indirect_table`); the table follows.
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct SendIndirectionTable {
    /// Entries ([`SEND_INDIRECTION_TABLE_ENTRIES`]).
    pub count: U32,
    /// Offset of the table from the start of the NVSP message.
    pub offset: U32,
}

/// Errors decoding an NVSP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NvspError {
    /// Fewer bytes than the message type.
    #[error("NVSP message of {len} bytes has no type")]
    NoType {
        /// Bytes received.
        len: usize,
    },
    /// The body is shorter than its type requires.
    #[error("{message_type:?} body of {have} bytes is shorter than {need}")]
    ShortBody {
        /// The message type.
        message_type: MessageType,
        /// Body bytes received.
        have: usize,
        /// Body bytes required.
        need: usize,
    },
}

/// A received NVSP message: its type and body, borrowed from the packet payload.
#[derive(Debug, Clone, Copy)]
pub struct NvspMessageRef<'a> {
    /// The type.
    pub message_type: MessageType,
    /// Every byte after the type (a payload padded to 8 carries trailing zeros).
    pub body: &'a [u8],
}

impl<'a> NvspMessageRef<'a> {
    /// Splits `bytes` into the type and the body.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, NvspError> {
        let Some((ty, body)) = bytes.split_first_chunk::<4>() else {
            return Err(NvspError::NoType { len: bytes.len() });
        };
        Ok(Self {
            message_type: MessageType(u32::from_le_bytes(*ty)),
            body,
        })
    }

    /// The body read as `T` (its first `size_of::<T>()` bytes); an error if it is shorter.
    pub fn body_as<T: FromBytes>(&self) -> Result<T, NvspError> {
        T::read_from_prefix(self.body)
            .map(|(t, _)| t)
            .map_err(|_| NvspError::ShortBody {
                message_type: self.message_type,
                have: self.body.len(),
                need: size_of::<T>(),
            })
    }
}

/// A whole NVSP message as Linux sends it: the type and a [`NVSP_BODY_SIZE`]-byte body.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct NvspMessage {
    /// [`MessageType`].
    pub message_type: U32,
    /// The body union, zero-padded.
    pub body: [u8; NVSP_BODY_SIZE],
}

impl NvspMessage {
    /// A message of `message_type` with `body` (its bytes beyond [`NVSP_BODY_SIZE`], which no NVSP
    /// body has, are not stored).
    pub fn new<T: IntoBytes + Immutable>(message_type: MessageType, body: &T) -> Self {
        let mut m = Self::new_zeroed();
        m.message_type.set(message_type.0);
        let bytes = body.as_bytes();
        let n = bytes.len().min(NVSP_BODY_SIZE);
        m.body[..n].copy_from_slice(&bytes[..n]);
        m
    }

    /// The [`NVSP_MESSAGE_SIZE`] wire bytes.
    pub fn as_wire(&self) -> &[u8] {
        self.as_bytes()
    }

    /// The type.
    pub fn message_type(&self) -> MessageType {
        MessageType(self.message_type.get())
    }
}

#[cfg(test)]
mod tests;
