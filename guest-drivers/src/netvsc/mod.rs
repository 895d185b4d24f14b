//! netvsc: the guest side of the Hyper-V synthetic NIC, as Linux's `hv_netvsc` speaks it.
//!
//! - [`client`]: the sans-I/O control path — NVSP version negotiation (6.1, 6, 5, 4, 2, 1, each
//!   proposed alone), NDIS config and version, the receive and send buffers, then RNDIS INITIALIZE,
//!   the QUERYs (maximum frame size, permanent address, media connect status, link speed) and the
//!   packet filter SET; every host reply is validated before it is believed;
//! - [`datapath`]: the sans-I/O data path — the receive buffer's section table and the checks every
//!   transfer-page range passes, the send-buffer section allocator, the packets of a send;
//! - [`nic`]: [`NetvscNic`], the NIC on a channel ([`NetTransport`]; [`VmbusNetTransport`] on a
//!   real VMBus channel): frames are copied into send-buffer sections behind their RNDIS PACKET
//!   header and announced with SEND_RNDIS_PKT, many per signal; received frames are copied out of
//!   the receive buffer once and the host's packet completed at once;
//! - [`device`]: the smoltcp [`smoltcp::phy::Device`] over a [`NetvscNic`].
//!
//! Wire formats come from `netvsp-protocol`; nothing here defines a protocol number of its own.

pub mod client;
pub mod datapath;
pub mod device;
pub mod nic;
#[cfg(test)]
mod test_replies;

pub use client::{BufferKind, ClientAction, NetvscClient, NetvscConfig, NicInfo};
pub use datapath::{ReceiveSections, SendSections};
pub use nic::{
    GpadlCreator, NetTransport, NetvscNic, NicError, NicStats, VmbusGpadls, VmbusNetTransport,
};

use netvsp_protocol::nvsp::{MessageType, NvspError};
use netvsp_protocol::rndis::{RndisError, RndisMessageType};
use vmbus::packet::{PacketError, PacketType};

/// Ethernet header bytes in front of every frame.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// Largest Ethernet payload this driver carries (the MTU it asks the host for).
pub const MTU: usize = 1500;
/// Largest frame, header included, without FCS or VLAN tag.
pub const MAX_FRAME_LEN: usize = MTU + ETHERNET_HEADER_LEN;

/// Why the host's side of the NIC protocol was refused (the NIC logic's errors; a hostile or
/// broken host is reported here, never trusted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NetvscError {
    /// A VMBus packet from the host is malformed.
    #[error("malformed packet from the host: {0}")]
    Packet(PacketError),
    /// An NVSP message from the host is malformed.
    #[error("NVSP: {0}")]
    Nvsp(NvspError),
    /// An RNDIS message from the host is malformed.
    #[error("RNDIS: {0}")]
    Rndis(RndisError),
    /// A completion for nothing outstanding (unknown, stale or forged transaction id).
    #[error("completion for unknown transaction {0:#x}")]
    UnknownTransaction(u64),
    /// An NVSP message of another type than the step expects.
    #[error("the host answered {expected:?} with {got:?}")]
    UnexpectedNvsp {
        /// The type expected.
        expected: MessageType,
        /// The type received.
        got: MessageType,
    },
    /// An NVSP message shorter than Linux accepts for its type.
    #[error("{message_type:?} of {len} bytes is shorter than {need}")]
    ShortNvsp {
        /// The type.
        message_type: MessageType,
        /// Bytes received.
        len: usize,
        /// Bytes required.
        need: usize,
    },
    /// The host refused every NVSP version proposed.
    #[error("the host refused every NVSP version proposed")]
    NoCommonVersion,
    /// The host refused a step.
    #[error("the host answered {what} with status {status:#x}")]
    HostRefused {
        /// The step.
        what: &'static str,
        /// The status it returned.
        status: u32,
    },
    /// The receive buffer's section table is unusable.
    #[error(
        "receive buffer section table ({count} sections: offset {offset}, {size} × {slots}, end \
         {end}) does not fit a {buffer}-byte buffer as one section of ≥68-byte slots at 0"
    )]
    BadReceiveSections {
        /// Sections reported.
        count: u32,
        /// First section's offset.
        offset: u32,
        /// Its sub-allocation size.
        size: u32,
        /// Its sub-allocation count.
        slots: u32,
        /// Its end offset.
        end: u32,
        /// The receive buffer's size.
        buffer: usize,
    },
    /// The send buffer's section size is unusable.
    #[error("send section size {size} is not 68..={buffer} bytes (the send buffer's size)")]
    BadSendSection {
        /// The size reported.
        size: u32,
        /// The send buffer's size.
        buffer: usize,
    },
    /// An RNDIS reply names another request than the one outstanding.
    #[error("RNDIS {message_type:?} for request {got}, {expected:?} outstanding")]
    UnexpectedRndis {
        /// The reply's type.
        message_type: RndisMessageType,
        /// Its request id (0 if it has none).
        got: u32,
        /// The request outstanding, if any.
        expected: Option<u32>,
    },
    /// A QUERY_COMPLETE's information buffer does not hold the OID's value.
    #[error("QUERY {what}: {len}-byte value at offset {offset} is not a valid answer")]
    BadQueryInfo {
        /// Which query.
        what: &'static str,
        /// `information_buffer_length`.
        len: u32,
        /// `information_buffer_offset`.
        offset: u32,
    },
    /// The host's value for an OID is unusable.
    #[error("the host's {what} {value:#x} is unusable")]
    BadValue {
        /// Which value.
        what: &'static str,
        /// The value (a MAC address as its 48 bits).
        value: u64,
    },
    /// A transfer-page packet does not describe frames in the receive buffer.
    #[error("transfer-page packet: {0}")]
    BadTransferPages(&'static str),
    /// A transfer-page range is outside the receive buffer or crosses a sub-allocation.
    #[error("receive range {offset}+{len} is not inside one receive-buffer sub-allocation")]
    RangeOutsideSections {
        /// `byte_offset`.
        offset: u32,
        /// `byte_count`.
        len: u32,
    },
    /// A packet of a type the host never sends a NIC.
    #[error("unexpected {0:?} packet")]
    UnexpectedPacket(PacketType),
    /// A request before the handshake finished, or after it failed.
    #[error("the NIC is not initialised")]
    NotReady,
    /// A frame to send is empty or longer than the NIC carries.
    #[error("a {len}-byte frame cannot be sent (1..={max} bytes)")]
    BadFrameLength {
        /// Bytes of the frame.
        len: usize,
        /// The largest frame.
        max: usize,
    },
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<PacketError> for NetvscError {
    fn from(e: PacketError) -> Self {
        Self::Packet(e)
    }
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<NvspError> for NetvscError {
    fn from(e: NvspError) -> Self {
        Self::Nvsp(e)
    }
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<RndisError> for NetvscError {
    fn from(e: RndisError) -> Self {
        Self::Rndis(e)
    }
}
