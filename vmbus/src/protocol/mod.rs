//! VMBus channel management messages (`CHANNELMSG_*`): the wire structs, message types, protocol
//! versions, interface GUIDs, and a validating parser plus builders for every message.
//!
//! A channel message is posted with `HvPostMessage` (guest → host) or written into a SynIC message slot
//! (host → guest). Its bytes start with [`MessageHeader`] `{u32 msgtype, u32 padding}`; the whole message,
//! header included, is at most [`MAX_MESSAGE_SIZE`] (240) bytes. The structs here include that header
//! and are laid out exactly like Linux's packed structs in `include/linux/hyperv.h`.
//!
//! Integers on the wire are little-endian; VMBus only exists on little-endian machines, and the structs
//! use native integers, so this module refuses to build for big-endian targets.

mod guid;
mod parse;
mod version;
mod wire;

pub use guid::{interface, Guid};
pub use parse::{parse_message, GpadlBodyMessage, GpadlHeaderMessage, Message};
pub use version::{
    Version, MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_V5, MESSAGE_SINT, SUPPORTED_VERSIONS,
};
pub use wire::*;

use core::fmt;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

#[cfg(target_endian = "big")]
compile_error!("VMBus wire structs use native little-endian integers");

/// Largest channel message, header included: the SynIC message payload size.
pub const MAX_MESSAGE_SIZE: usize = 240;
/// Bytes of user-defined data in an offer and in OPENCHANNEL.
pub const MAX_USER_DEFINED_BYTES: usize = 120;
/// The HvPostMessage / SynIC message type of VMBus channel messages, both ways (Linux's
/// `vmbus_post_msg` posts with type 1, `drivers/hv/connection.c`).
pub const CHANNEL_MESSAGE_TYPE: u32 = 1;
/// Every connection id a guest may post channel messages to (INITIATE_CONTACT of each version family).
pub const MESSAGE_CONNECTION_IDS: [u32; 2] = [MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_V5];

/// Hypercall status: success.
pub const HV_STATUS_SUCCESS: u16 = 0;
/// Hypercall status a host answers a post with when the connection id is wrong for the message
/// (Linux then retries INITIATE_CONTACT with the next older version).
pub const HV_STATUS_INVALID_CONNECTION_ID: u16 = 0x12;
/// Hypercall status: the host has no buffer for the message right now.
pub const HV_STATUS_INSUFFICIENT_BUFFERS: u16 = 0x13;

/// NTSTATUS-style failure the host reports in GPADL_CREATED / OPENCHANNEL_RESULT when the guest's
/// request was invalid (`STATUS_INVALID_PARAMETER`).
pub const STATUS_INVALID_PARAMETER: u32 = 0xC000_000D;
/// NTSTATUS-style failure for requests the host cannot satisfy with its resources
/// (`STATUS_INSUFFICIENT_RESOURCES`).
pub const STATUS_INSUFFICIENT_RESOURCES: u32 = 0xC000_009A;
/// NTSTATUS-style failure for a request on an object in the wrong state (`STATUS_INVALID_DEVICE_STATE`).
pub const STATUS_INVALID_DEVICE_STATE: u32 = 0xC000_0184;

/// A channel message type. Open: values a peer sends that we do not know stay representable.
#[derive(
    Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(transparent)]
pub struct MessageType(pub u32);

impl MessageType {
    pub const INVALID: Self = Self(0);
    pub const OFFERCHANNEL: Self = Self(1);
    pub const RESCIND_CHANNELOFFER: Self = Self(2);
    pub const REQUESTOFFERS: Self = Self(3);
    pub const ALLOFFERS_DELIVERED: Self = Self(4);
    pub const OPENCHANNEL: Self = Self(5);
    pub const OPENCHANNEL_RESULT: Self = Self(6);
    pub const CLOSECHANNEL: Self = Self(7);
    pub const GPADL_HEADER: Self = Self(8);
    pub const GPADL_BODY: Self = Self(9);
    pub const GPADL_CREATED: Self = Self(10);
    pub const GPADL_TEARDOWN: Self = Self(11);
    pub const GPADL_TORNDOWN: Self = Self(12);
    pub const RELID_RELEASED: Self = Self(13);
    pub const INITIATE_CONTACT: Self = Self(14);
    pub const VERSION_RESPONSE: Self = Self(15);
    pub const UNLOAD: Self = Self(16);
    pub const UNLOAD_RESPONSE: Self = Self(17);
    pub const MODIFYCHANNEL: Self = Self(22);
    pub const MODIFYCHANNEL_RESPONSE: Self = Self(24);

    /// The Linux-style name of a known type.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "OFFERCHANNEL",
            2 => "RESCIND_CHANNELOFFER",
            3 => "REQUESTOFFERS",
            4 => "ALLOFFERS_DELIVERED",
            5 => "OPENCHANNEL",
            6 => "OPENCHANNEL_RESULT",
            7 => "CLOSECHANNEL",
            8 => "GPADL_HEADER",
            9 => "GPADL_BODY",
            10 => "GPADL_CREATED",
            11 => "GPADL_TEARDOWN",
            12 => "GPADL_TORNDOWN",
            13 => "RELID_RELEASED",
            14 => "INITIATE_CONTACT",
            15 => "VERSION_RESPONSE",
            16 => "UNLOAD",
            17 => "UNLOAD_RESPONSE",
            22 => "MODIFYCHANNEL",
            24 => "MODIFYCHANNEL_RESPONSE",
            _ => return None,
        })
    }

    /// Whether the guest sends this type to the host (as opposed to the host sending it to the guest).
    pub const fn is_guest_to_host(self) -> bool {
        matches!(self.0, 3 | 5 | 7 | 8 | 9 | 11 | 13 | 14 | 16 | 22)
    }

    /// Whether the host sends this type to the guest.
    pub const fn is_host_to_guest(self) -> bool {
        matches!(self.0, 1 | 2 | 4 | 6 | 10 | 12 | 15 | 17 | 24)
    }
}

impl fmt::Debug for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw = self.0;
        match self.name() {
            Some(name) => write!(f, "{name}"),
            None => write!(f, "MessageType({raw})"),
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The header every channel message starts with.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C, packed)]
pub struct MessageHeader {
    pub msgtype: MessageType,
    pub padding: u32,
}

impl MessageHeader {
    /// A header for `msgtype` with zero padding.
    pub const fn new(msgtype: MessageType) -> Self {
        Self {
            msgtype,
            padding: 0,
        }
    }
}

/// Why a message could not be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("message of {len} bytes is shorter than its header")]
    NoHeader { len: usize },
    #[error("message of {len} bytes exceeds the {MAX_MESSAGE_SIZE}-byte limit")]
    TooLong { len: usize },
    #[error("{msgtype} message of {len} bytes is shorter than the required {min}")]
    TooShort {
        msgtype: MessageType,
        len: usize,
        min: usize,
    },
    #[error("{msgtype} message has {extra} trailing bytes that are not a whole PFN")]
    PartialPfn { msgtype: MessageType, extra: usize },
    #[error("unknown channel message type {0:?}")]
    UnknownType(MessageType),
    #[error("user-defined data of {len} bytes exceeds {MAX_USER_DEFINED_BYTES}")]
    UserDataTooLong { len: usize },
}

/// A channel message ready to post or deliver: up to [`MAX_MESSAGE_SIZE`] bytes, header included.
#[derive(Clone, PartialEq, Eq)]
pub struct MessageBuf {
    len: u8,
    data: [u8; MAX_MESSAGE_SIZE],
}

impl MessageBuf {
    /// Copies `bytes` into a buffer; `None` if longer than [`MAX_MESSAGE_SIZE`].
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let len = u8::try_from(bytes.len()).ok()?;
        let mut data = [0; MAX_MESSAGE_SIZE];
        data.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(Self { len, data })
    }

    /// Serializes a fixed-size message struct. Sizes are checked at compile time.
    pub fn from_struct<T: IntoBytes + Immutable>(msg: &T) -> Self {
        const { assert!(size_of::<T>() <= MAX_MESSAGE_SIZE) };
        let bytes = msg.as_bytes();
        let mut data = [0; MAX_MESSAGE_SIZE];
        data[..bytes.len()].copy_from_slice(bytes);
        Self {
            len: bytes.len() as u8,
            data,
        }
    }

    /// Builds a buffer from a fixed part followed by an array of PFNs; `None` if it would not fit.
    pub(crate) fn with_pfns<T: IntoBytes + Immutable>(fixed: &T, pfns: &[u64]) -> Option<Self> {
        let head = fixed.as_bytes();
        let total = head.len().checked_add(pfns.len().checked_mul(8)?)?;
        if total > MAX_MESSAGE_SIZE {
            return None;
        }
        let mut data = [0; MAX_MESSAGE_SIZE];
        data.get_mut(..head.len())?.copy_from_slice(head);
        for (chunk, pfn) in data
            .get_mut(head.len()..total)?
            .chunks_exact_mut(8)
            .zip(pfns)
        {
            chunk.copy_from_slice(&pfn.to_le_bytes());
        }
        Some(Self {
            len: total as u8,
            data,
        })
    }

    /// The message bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.data.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// The message length in bytes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether the buffer holds no bytes at all (never true for built messages).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The type in the header (INVALID if the buffer is too short to have one).
    pub fn message_type(&self) -> MessageType {
        MessageHeader::read_from_prefix(self.as_bytes())
            .map(|(h, _)| h.msgtype)
            .unwrap_or(MessageType::INVALID)
    }

    /// Parses the buffer back into a [`Message`].
    pub fn parse(&self) -> Result<Message<'_>, ProtocolError> {
        parse_message(self.as_bytes())
    }
}

impl AsRef<[u8]> for MessageBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for MessageBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageBuf")
            .field("type", &self.message_type())
            .field("len", &self.len)
            .finish()
    }
}

/// A fixed-size channel message struct (header included) with its message type.
pub trait ChannelMessage:
    IntoBytes + FromBytes + KnownLayout + Immutable + Unaligned + Sized
{
    /// The type stored in the header.
    const TYPE: MessageType;

    /// Serializes the message.
    fn to_message(&self) -> MessageBuf {
        MessageBuf::from_struct(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        assert_eq!(size_of::<MessageHeader>(), 8);
        assert_eq!(core::mem::offset_of!(MessageHeader, msgtype), 0);
        assert_eq!(core::mem::offset_of!(MessageHeader, padding), 4);
        assert_eq!(
            MessageHeader::new(MessageType::UNLOAD).as_bytes(),
            &[16, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn message_type_values_and_names() {
        assert_eq!(MessageType::OFFERCHANNEL.0, 1);
        assert_eq!(MessageType::UNLOAD_RESPONSE.0, 17);
        assert_eq!(MessageType::MODIFYCHANNEL.0, 22);
        assert_eq!(MessageType::MODIFYCHANNEL_RESPONSE.0, 24);
        assert_eq!(MessageType::GPADL_BODY.name(), Some("GPADL_BODY"));
        assert_eq!(MessageType(99).name(), None);
        assert_eq!(format!("{:?}", MessageType(99)), "MessageType(99)");
        for t in 0..30 {
            let t = MessageType(t);
            assert!(!(t.is_guest_to_host() && t.is_host_to_guest()));
            assert_eq!(
                t.name().is_some(),
                t.is_guest_to_host() || t.is_host_to_guest()
            );
        }
    }

    #[test]
    fn message_buf_bounds() {
        assert!(MessageBuf::from_slice(&[0; MAX_MESSAGE_SIZE]).is_some());
        assert!(MessageBuf::from_slice(&[0; MAX_MESSAGE_SIZE + 1]).is_none());
        let b = MessageBuf::from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(b.message_type(), MessageType::REQUESTOFFERS);
        assert_eq!(
            MessageBuf::from_slice(&[1]).unwrap().message_type(),
            MessageType::INVALID
        );
        let hdr = MessageHeader::new(MessageType::GPADL_BODY);
        assert!(MessageBuf::with_pfns(&hdr, &[0; 29]).is_some());
        assert!(MessageBuf::with_pfns(&hdr, &[0; 30]).is_none());
    }
}
