//! RNDIS, the remote NDIS message set netvsc and netvsp carry inside NVSP SEND_RNDIS_PKT: the
//! message header, the request, completion and indication bodies, the data PACKET header and the
//! checked helpers both ends use to walk a buffer of batched messages, locate a PACKET's data and
//! per-packet info and a QUERY/SET information buffer, and encode messages. Every length and offset
//! comes from the peer: the helpers return [`RndisError`] and never panic.

use core::ops::Range;
use vmbus::open_enum;

use zerocopy::byteorder::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Bytes of the `{type, length}` header of every RNDIS message.
pub const RNDIS_HEADER_SIZE: usize = 8;
/// Bytes of a PACKET message before its per-packet info and data: header plus [`PacketHeader`].
pub const PACKET_MESSAGE_HEADER_SIZE: usize = RNDIS_HEADER_SIZE + size_of::<PacketHeader>();
/// RNDIS major version both ends use.
pub const RNDIS_MAJOR_VERSION: u32 = 1;
/// RNDIS minor version both ends use.
pub const RNDIS_MINOR_VERSION: u32 = 0;
/// `max_xfer_size` Linux puts in INITIALIZE.
pub const LINUX_MAX_TRANSFER_SIZE: u32 = 0x4000;
/// INITIALIZE_COMPLETE `device_flags`: a connectionless (802.3) device.
pub const DF_CONNECTIONLESS: u32 = 1;
/// INITIALIZE_COMPLETE `medium`: 802.3.
pub const MEDIUM_802_3: u32 = 0;
/// Bit that turns a request type into its completion type.
pub const COMPLETION_BIT: u32 = 0x8000_0000;

open_enum! {
    /// `ndis_msg_type` of an RNDIS message.
    pub struct RndisMessageType(u32) {
        /// A data packet ([`PacketHeader`]).
        PACKET = 1,
        /// Initialize the device ([`InitializeRequest`]).
        INITIALIZE = 2,
        /// Halt the device ([`HaltRequest`]; no completion).
        HALT = 3,
        /// Query an OID ([`QueryRequest`]).
        QUERY = 4,
        /// Set an OID ([`SetRequest`]).
        SET = 5,
        /// Reset the device ([`ResetRequest`]).
        RESET = 6,
        /// Status indication ([`IndicateStatus`]).
        INDICATE_STATUS = 7,
        /// Keepalive ([`KeepaliveRequest`]).
        KEEPALIVE = 8,
        /// [`InitializeComplete`].
        INITIALIZE_COMPLETE = 0x8000_0002,
        /// [`QueryComplete`].
        QUERY_COMPLETE = 0x8000_0004,
        /// [`SetComplete`].
        SET_COMPLETE = 0x8000_0005,
        /// [`ResetComplete`].
        RESET_COMPLETE = 0x8000_0006,
        /// [`KeepaliveComplete`].
        KEEPALIVE_COMPLETE = 0x8000_0008,
    }
}

impl RndisMessageType {
    /// The completion type of this request type.
    pub fn completion(self) -> Self {
        Self(self.0 | COMPLETION_BIT)
    }
}

open_enum! {
    /// RNDIS/NDIS status: completion status and indication codes.
    pub struct RndisStatus(u32) {
        /// Success.
        SUCCESS = 0,
        /// Pending.
        PENDING = 0x0000_0103,
        /// Indication: the medium connected (link up).
        MEDIA_CONNECT = 0x4001_000B,
        /// Indication: the medium disconnected (link down).
        MEDIA_DISCONNECT = 0x4001_000C,
        /// Indication: the link speed changed (status buffer: u32, 100 bps units).
        LINK_SPEED_CHANGE = 0x4001_0013,
        /// Indication: the network changed (Linux bounces the carrier).
        NETWORK_CHANGE = 0x4001_0018,
        /// Buffer overflow.
        BUFFER_OVERFLOW = 0x8000_0005,
        /// Failure.
        FAILURE = 0xC000_0001,
        /// Out of resources.
        RESOURCES = 0xC000_009A,
        /// Not supported.
        NOT_SUPPORTED = 0xC000_00BB,
        /// Bad length.
        INVALID_LENGTH = 0xC001_0014,
        /// Bad data.
        INVALID_DATA = 0xC001_0015,
        /// Buffer too short.
        BUFFER_TOO_SHORT = 0xC001_0016,
        /// Unknown OID.
        INVALID_OID = 0xC001_0017,
    }
}

/// `{ndis_msg_type, msg_len}` in front of every message; `msg_len` counts the whole message.
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
pub struct RndisHeader {
    /// [`RndisMessageType`].
    pub message_type: U32,
    /// Bytes of the whole message, header included.
    pub message_length: U32,
}

/// INITIALIZE body (`struct rndis_initialize_request`).
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
pub struct InitializeRequest {
    /// Request id (echoed).
    pub request_id: U32,
    /// [`RNDIS_MAJOR_VERSION`].
    pub major_version: U32,
    /// [`RNDIS_MINOR_VERSION`].
    pub minor_version: U32,
    /// Largest message the guest takes.
    pub max_transfer_size: U32,
}

/// INITIALIZE_COMPLETE body (`struct rndis_initialize_complete`).
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
pub struct InitializeComplete {
    /// Request id.
    pub request_id: U32,
    /// [`RndisStatus`].
    pub status: U32,
    /// Major version.
    pub major_version: U32,
    /// Minor version.
    pub minor_version: U32,
    /// [`DF_CONNECTIONLESS`].
    pub device_flags: U32,
    /// [`MEDIUM_802_3`].
    pub medium: U32,
    /// Most PACKET messages the guest may batch in one transfer.
    pub max_packets_per_message: U32,
    /// Largest transfer.
    pub max_transfer_size: U32,
    /// Batched messages align to `1 << packet_alignment_factor` bytes.
    pub packet_alignment_factor: U32,
    /// Address-family list offset (call managers only).
    pub af_list_offset: U32,
    /// Address-family list size.
    pub af_list_size: U32,
}

/// HALT body.
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
pub struct HaltRequest {
    /// Request id.
    pub request_id: U32,
}

/// QUERY body (`struct rndis_query_request`); the information buffer follows at
/// `information_buffer_offset` from the start of this body.
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
pub struct QueryRequest {
    /// Request id.
    pub request_id: U32,
    /// [`crate::ndis::Oid`].
    pub oid: U32,
    /// Bytes of the information buffer.
    pub information_buffer_length: U32,
    /// Offset of the information buffer from the start of this body (Linux: 20).
    pub information_buffer_offset: U32,
    /// VC handle (0).
    pub device_vc_handle: U32,
}

/// SET body (`struct rndis_set_request`): the QUERY layout.
pub type SetRequest = QueryRequest;

/// QUERY_COMPLETE body; the information buffer follows at `information_buffer_offset` from the
/// start of this body.
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
pub struct QueryComplete {
    /// Request id.
    pub request_id: U32,
    /// [`RndisStatus`].
    pub status: U32,
    /// Bytes of the information buffer.
    pub information_buffer_length: U32,
    /// Offset from the start of this body (16 when it directly follows).
    pub information_buffer_offset: U32,
}

/// SET_COMPLETE body.
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
pub struct SetComplete {
    /// Request id.
    pub request_id: U32,
    /// [`RndisStatus`].
    pub status: U32,
}

/// RESET body.
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
pub struct ResetRequest {
    /// Reserved.
    pub reserved: U32,
}

/// RESET_COMPLETE body.
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
pub struct ResetComplete {
    /// [`RndisStatus`].
    pub status: U32,
    /// Whether addressing information was reset (the guest must re-set its filter).
    pub addressing_reset: U32,
}

/// INDICATE_STATUS body (`struct rndis_indicate_status`); the status buffer follows at
/// `status_buffer_offset` from the start of this body.
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
pub struct IndicateStatus {
    /// [`RndisStatus`] indication code.
    pub status: U32,
    /// Bytes of the status buffer.
    pub status_buffer_length: U32,
    /// Offset from the start of this body.
    pub status_buffer_offset: U32,
}

/// KEEPALIVE body.
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
pub struct KeepaliveRequest {
    /// Request id.
    pub request_id: U32,
}

/// KEEPALIVE_COMPLETE body.
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
pub struct KeepaliveComplete {
    /// Request id.
    pub request_id: U32,
    /// [`RndisStatus`].
    pub status: U32,
}

/// PACKET body (`struct rndis_packet`). Offsets count from the start of this body (message
/// offset 8). Linux sends PPIs at offset 36 and the frame right after them.
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
pub struct PacketHeader {
    /// Offset of the frame.
    pub data_offset: U32,
    /// Bytes of the frame.
    pub data_length: U32,
    /// Offset of out-of-band data (unused).
    pub oob_data_offset: U32,
    /// Bytes of out-of-band data.
    pub oob_data_length: U32,
    /// Out-of-band elements.
    pub oob_element_count: U32,
    /// Offset of the per-packet info.
    pub per_packet_info_offset: U32,
    /// Bytes of per-packet info.
    pub per_packet_info_length: U32,
    /// VC handle (0).
    pub vc_handle: U32,
    /// Reserved.
    pub reserved: U32,
}

/// Errors decoding or encoding RNDIS messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RndisError {
    /// Fewer bytes than a fixed part needs.
    #[error("{what} needs {need} bytes, {have} present")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes present.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// `msg_len` is smaller than a header or larger than the bytes that carry it.
    #[error("RNDIS message length {len} outside {RNDIS_HEADER_SIZE}..={available}")]
    BadMessageLength {
        /// `msg_len`.
        len: u32,
        /// Bytes available for the message.
        available: usize,
    },
    /// An offset/length pair reaches outside its message.
    #[error("{what} {offset}+{len} reaches outside {limit} bytes")]
    OutOfBounds {
        /// Which region.
        what: &'static str,
        /// Its offset.
        offset: u32,
        /// Its length.
        len: u32,
        /// Bytes it must fit in.
        limit: usize,
    },
    /// A per-packet info record's size or offset is inconsistent.
    #[error("per-packet info at {at}: size {size}, data offset {offset}, {remaining} bytes left")]
    BadPerPacketInfo {
        /// Offset of the record in the PPI area.
        at: usize,
        /// Its `size`.
        size: u32,
        /// Its `ppi_offset`.
        offset: u32,
        /// Bytes left in the PPI area.
        remaining: usize,
    },
    /// An output buffer is too small for the message being encoded.
    #[error("encoding needs {need} bytes, the buffer holds {have}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// Reads a `T` from the front of `bytes`, naming `what` in the error.
pub fn read_prefix<T: FromBytes>(bytes: &[u8], what: &'static str) -> Result<T, RndisError> {
    T::read_from_prefix(bytes)
        .map(|(t, _)| t)
        .map_err(|_| RndisError::Truncated {
            what,
            have: bytes.len(),
            need: size_of::<T>(),
        })
}

/// Checks a message header against the `available` bytes it arrived in: returns the message
/// length (at least [`RNDIS_HEADER_SIZE`], at most `available`).
pub fn checked_message_length(header: &RndisHeader, available: usize) -> Result<usize, RndisError> {
    let len = header.message_length.get();
    let bad = RndisError::BadMessageLength { len, available };
    let n = usize::try_from(len).map_err(|_| bad)?;
    if n < RNDIS_HEADER_SIZE || n > available {
        return Err(bad);
    }
    Ok(n)
}

/// `offset..offset + len` if it lies within `limit` bytes.
pub fn checked_range(
    what: &'static str,
    offset: u32,
    len: u32,
    limit: usize,
) -> Result<Range<usize>, RndisError> {
    let out = RndisError::OutOfBounds {
        what,
        offset,
        len,
        limit,
    };
    let start = offset as usize;
    let end = start.checked_add(len as usize).ok_or(out)?;
    if end > limit {
        return Err(out);
    }
    Ok(start..end)
}

/// One RNDIS message borrowed from a buffer: its type and the bytes after the header up to
/// `msg_len`.
#[derive(Debug, Clone, Copy)]
pub struct RndisMessageRef<'a> {
    /// The type.
    pub message_type: RndisMessageType,
    /// `msg_len - 8` bytes after the header.
    pub body: &'a [u8],
}

impl<'a> RndisMessageRef<'a> {
    /// The message at the start of `bytes` (its `msg_len` must fit in `bytes`).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, RndisError> {
        let header: RndisHeader = read_prefix(bytes, "RNDIS header")?;
        let len = checked_message_length(&header, bytes.len())?;
        Ok(Self {
            message_type: RndisMessageType(header.message_type.get()),
            body: &bytes[RNDIS_HEADER_SIZE..len],
        })
    }

    /// Bytes of the whole message.
    pub fn len(&self) -> usize {
        RNDIS_HEADER_SIZE + self.body.len()
    }

    /// Whether the message has no body.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The body read as `T`.
    pub fn body_as<T: FromBytes>(&self) -> Result<T, RndisError> {
        read_prefix(self.body, "RNDIS message body")
    }

    /// The request's information buffer (QUERY/SET, QUERY_COMPLETE) or status buffer (INDICATE):
    /// `len` bytes at `offset` from the start of the body. A zero length is an empty buffer
    /// whatever the offset.
    pub fn buffer(&self, offset: u32, len: u32) -> Result<&'a [u8], RndisError> {
        if len == 0 {
            return Ok(&[]);
        }
        let r = checked_range("information buffer", offset, len, self.body.len())?;
        Ok(&self.body[r])
    }
}

/// The RNDIS messages batched back to back in a buffer (a send-buffer section), each `msg_len`
/// long (Linux includes each message's alignment padding in its `msg_len`). Yields an error and
/// then stops at the first bad message.
#[derive(Debug, Clone)]
pub struct RndisMessages<'a> {
    rest: &'a [u8],
    failed: bool,
}

/// Iterates over the messages batched in `bytes`.
pub fn messages(bytes: &[u8]) -> RndisMessages<'_> {
    RndisMessages {
        rest: bytes,
        failed: false,
    }
}

impl<'a> Iterator for RndisMessages<'a> {
    type Item = Result<RndisMessageRef<'a>, RndisError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        match RndisMessageRef::parse(self.rest) {
            Ok(m) => {
                self.rest = &self.rest[m.len()..];
                Some(Ok(m))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Where a PACKET message's parts lie, as offsets from the start of the message (not the body),
/// every range checked to lie inside the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketLayout {
    /// The frame.
    pub data: Range<usize>,
    /// The per-packet info area (empty if none).
    pub per_packet_info: Range<usize>,
}

impl PacketLayout {
    /// Checks `header` of a PACKET message of `message_len` bytes (its `msg_len`): the frame and the
    /// PPI area must lie after the PACKET header and inside the message; out-of-band data is not
    /// used by netvsc and must be empty.
    pub fn validate(header: &PacketHeader, message_len: usize) -> Result<Self, RndisError> {
        let body_len = message_len.saturating_sub(RNDIS_HEADER_SIZE);
        let fixed = size_of::<PacketHeader>();
        if body_len < fixed {
            return Err(RndisError::Truncated {
                what: "RNDIS packet header",
                have: body_len,
                need: fixed,
            });
        }
        let region = |what, offset: U32, len: U32| -> Result<Range<usize>, RndisError> {
            let (offset, len) = (offset.get(), len.get());
            let r = checked_range(what, offset, len, body_len)?;
            if len > 0 && r.start < fixed {
                return Err(RndisError::OutOfBounds {
                    what,
                    offset,
                    len,
                    limit: body_len,
                });
            }
            Ok(r.start + RNDIS_HEADER_SIZE..r.end + RNDIS_HEADER_SIZE)
        };
        if header.oob_data_length.get() != 0 || header.oob_element_count.get() != 0 {
            return Err(RndisError::OutOfBounds {
                what: "out-of-band data",
                offset: header.oob_data_offset.get(),
                len: header.oob_data_length.get(),
                limit: 0,
            });
        }
        let data = region("packet data", header.data_offset, header.data_length)?;
        let per_packet_info = if header.per_packet_info_length.get() == 0 {
            0..0
        } else {
            region(
                "per-packet info",
                header.per_packet_info_offset,
                header.per_packet_info_length,
            )?
        };
        Ok(Self {
            data,
            per_packet_info,
        })
    }
}

/// Encodes a message of `message_type` with `body` followed by `trailing` bytes into `out`;
/// returns the message length (also written as `msg_len`).
pub fn encode<T: IntoBytes + Immutable>(
    out: &mut [u8],
    message_type: RndisMessageType,
    body: &T,
    trailing: &[u8],
) -> Result<usize, RndisError> {
    let body = body.as_bytes();
    let len = RNDIS_HEADER_SIZE + body.len() + trailing.len();
    let too_small = RndisError::BufferTooSmall {
        need: len,
        have: out.len(),
    };
    let msg_len = u32::try_from(len).map_err(|_| too_small)?;
    let out = out.get_mut(..len).ok_or(too_small)?;
    let header = RndisHeader {
        message_type: U32::new(message_type.0),
        message_length: U32::new(msg_len),
    };
    out[..RNDIS_HEADER_SIZE].copy_from_slice(header.as_bytes());
    out[RNDIS_HEADER_SIZE..RNDIS_HEADER_SIZE + body.len()].copy_from_slice(body);
    out[RNDIS_HEADER_SIZE + body.len()..].copy_from_slice(trailing);
    Ok(len)
}

/// The header of a PACKET message carrying a `frame_len`-byte frame right after `ppi_len` bytes
/// of per-packet info (the layout Linux sends and expects): the RNDIS header with
/// `msg_len = 44 + ppi_len + frame_len`, and the PACKET body.
pub fn packet_message_header(frame_len: u32, ppi_len: u32) -> [u8; PACKET_MESSAGE_HEADER_SIZE] {
    let fixed = size_of::<PacketHeader>() as u32;
    let header = RndisHeader {
        message_type: U32::new(RndisMessageType::PACKET.0),
        message_length: U32::new(
            (PACKET_MESSAGE_HEADER_SIZE as u32)
                .saturating_add(ppi_len)
                .saturating_add(frame_len),
        ),
    };
    let body = PacketHeader {
        data_offset: U32::new(fixed.saturating_add(ppi_len)),
        data_length: U32::new(frame_len),
        per_packet_info_offset: U32::new(if ppi_len == 0 { 0 } else { fixed }),
        per_packet_info_length: U32::new(ppi_len),
        ..PacketHeader::default()
    };
    let mut out = [0u8; PACKET_MESSAGE_HEADER_SIZE];
    out[..RNDIS_HEADER_SIZE].copy_from_slice(header.as_bytes());
    out[RNDIS_HEADER_SIZE..].copy_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests;
