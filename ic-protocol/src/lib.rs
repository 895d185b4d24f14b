//! Wire format of the Hyper-V integration components ("ICs": heartbeat, shutdown, time sync
//! ([`timesync`]), key-value pair exchange ([`kvp`])) as carried in VMBus
//! in-band packets, byte-compatible with Hyper-V and Linux's `hv_utils`, plus the version negotiation
//! both ends run.
//!
//! Every IC message starts with [`IcHeader`]: an 8-byte pipe header then the 20-byte `icmsg_hdr`.
//! The host sends requests (flags TRANSACTION | REQUEST); the guest answers in place (flags TRANSACTION |
//! RESPONSE) with the same VMBus transaction id. The first exchange on every IC channel negotiates a
//! framework and a message version ([`negotiate`]).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod kvp;
pub mod negotiate;
pub mod timesync;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// An IC protocol version (`major.minor`), 4 bytes on the wire.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct IcVersion {
    pub major: U16,
    pub minor: U16,
}

impl IcVersion {
    /// `major.minor`.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self {
            major: U16::new(major),
            minor: U16::new(minor),
        }
    }
}

/// Framework versions the util ICs speak (newest first).
pub const FRAMEWORK_VERSIONS: &[IcVersion] = &[IcVersion::new(3, 0), IcVersion::new(1, 0)];
/// Heartbeat message versions (newest first).
pub const HEARTBEAT_VERSIONS: &[IcVersion] = &[IcVersion::new(3, 0), IcVersion::new(1, 0)];
/// Shutdown message versions (newest first).
pub const SHUTDOWN_VERSIONS: &[IcVersion] = &[
    IcVersion::new(3, 2),
    IcVersion::new(3, 1),
    IcVersion::new(3, 0),
    IcVersion::new(1, 0),
];

/// IC message types (open: unknown values are representable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcMessageType(pub u16);

impl IcMessageType {
    pub const NEGOTIATE: Self = Self(0);
    pub const HEARTBEAT: Self = Self(1);
    pub const KVP_EXCHANGE: Self = Self(2);
    pub const SHUTDOWN: Self = Self(3);
    pub const TIMESYNC: Self = Self(4);
}

/// `icmsg_hdr.icflags` bits.
pub mod flags {
    pub const TRANSACTION: u8 = 1;
    pub const REQUEST: u8 = 2;
    pub const RESPONSE: u8 = 4;
}

/// Status values in `icmsg_hdr.status`.
pub mod status {
    /// S_OK.
    pub const OK: u32 = 0;
    /// E_FAIL.
    pub const FAIL: u32 = 0x8000_4005;
    /// S_CONT: "no more items" (an enumeration index past the end, a key not found).
    pub const CONT: u32 = 0x8007_0103;
    /// ERROR_NOT_SUPPORTED.
    pub const NOT_SUPPORTED: u32 = 0x8007_0032;
}

/// The pipe header plus `icmsg_hdr`: 28 bytes at the start of every IC message.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct IcHeader {
    /// `vmbuspipe_hdr.flags` (Hyper-V sends 2; nothing reads it).
    pub pipe_flags: U32,
    /// `vmbuspipe_hdr.msgsize`.
    pub pipe_msgsize: U32,
    pub framework_version: IcVersion,
    pub message_type: U16,
    pub message_version: IcVersion,
    /// Bytes of message body after this header.
    pub message_size: U16,
    pub status: U32,
    pub transaction_id: u8,
    pub flags: u8,
    pub reserved: [u8; 2],
}

/// Size of [`IcHeader`].
pub const HEADER_SIZE: usize = 28;

/// Heartbeat body: the host sends a sequence number, the guest answers with it plus one.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct HeartbeatBody {
    pub seq_num: U64,
    pub reserved: [U32; 8],
}

/// Shutdown body: reason, timeout and flags (bit 0 force, bit 1 reboot), then a display message.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct ShutdownBody {
    pub reason_code: U32,
    pub timeout_seconds: U32,
    pub flags: U32,
}

/// Shutdown flag: force (do not wait for applications).
pub const SHUTDOWN_FLAG_FORCE: u32 = 1;
/// Shutdown flag: reboot instead of power off.
pub const SHUTDOWN_FLAG_REBOOT: u32 = 2;
/// Length of the shutdown display message that follows [`ShutdownBody`].
pub const SHUTDOWN_MESSAGE_LEN: usize = 2048;

/// A malformed IC message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IcError {
    #[error("IC message of {0} bytes is shorter than its 28-byte header")]
    TooShort(usize),
    #[error("IC message body of {declared} bytes does not fit the {available} bytes received")]
    BodyTruncated { declared: usize, available: usize },
    #[error("IC message type {0} is not expected here")]
    UnexpectedType(u16),
    #[error("negotiate message lists {framework} framework + {message} message versions, more than it carries")]
    BadVersionCounts { framework: usize, message: usize },
    #[error("no common version")]
    NoCommonVersion,
    #[error("buffer too small for the IC reply")]
    BufferTooSmall,
}

/// Split an IC message into its header and body (bounded by the header's `message_size`).
pub fn parse(message: &[u8]) -> Result<(IcHeader, &[u8]), IcError> {
    let (header, rest) =
        IcHeader::read_from_prefix(message).map_err(|_| IcError::TooShort(message.len()))?;
    let declared = usize::from(header.message_size.get());
    let body = rest.get(..declared).ok_or(IcError::BodyTruncated {
        declared,
        available: rest.len(),
    })?;
    Ok((header, body))
}

/// Build a request header for `message_type` with a body of `body_len` bytes.
pub fn request_header(
    message_type: IcMessageType,
    framework_version: IcVersion,
    message_version: IcVersion,
    body_len: u16,
    transaction_id: u8,
) -> IcHeader {
    IcHeader {
        pipe_flags: U32::new(2),
        pipe_msgsize: U32::new(u32::from(body_len) + 20),
        framework_version,
        message_type: U16::new(message_type.0),
        message_version,
        message_size: U16::new(body_len),
        status: U32::new(status::OK),
        transaction_id,
        flags: flags::TRANSACTION | flags::REQUEST,
        reserved: [0; 2],
    }
}

/// Turn a request's header into the response header (status and flags).
pub fn response_header(request: &IcHeader, status_code: u32) -> IcHeader {
    IcHeader {
        status: U32::new(status_code),
        flags: flags::TRANSACTION | flags::RESPONSE,
        ..*request
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_hv_utils() {
        assert_eq!(size_of::<IcVersion>(), 4);
        assert_eq!(size_of::<IcHeader>(), HEADER_SIZE);
        assert_eq!(offset_of!(IcHeader, framework_version), 8);
        assert_eq!(offset_of!(IcHeader, message_type), 12);
        assert_eq!(offset_of!(IcHeader, message_version), 14);
        assert_eq!(offset_of!(IcHeader, message_size), 18);
        assert_eq!(offset_of!(IcHeader, status), 20);
        assert_eq!(offset_of!(IcHeader, transaction_id), 24);
        assert_eq!(offset_of!(IcHeader, flags), 25);
        assert_eq!(size_of::<HeartbeatBody>(), 40);
        assert_eq!(size_of::<ShutdownBody>(), 12);
    }

    #[test]
    fn parse_bounds_the_body() {
        let h = request_header(
            IcMessageType::HEARTBEAT,
            FRAMEWORK_VERSIONS[0],
            HEARTBEAT_VERSIONS[0],
            40,
            7,
        );
        let mut msg = h.as_bytes().to_vec();
        msg.extend_from_slice(&[0u8; 40]);
        let (hdr, body) = parse(&msg).unwrap();
        assert_eq!(hdr.transaction_id, 7);
        assert_eq!(body.len(), 40);
        assert_eq!(
            parse(&msg[..30]),
            Err(IcError::BodyTruncated {
                declared: 40,
                available: 2
            })
        );
        assert_eq!(parse(&msg[..10]), Err(IcError::TooShort(10)));
        let resp = response_header(&hdr, status::OK);
        assert_eq!(resp.flags, flags::TRANSACTION | flags::RESPONSE);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse(&bytes);
            let _ = negotiate::answer(&bytes, FRAMEWORK_VERSIONS, HEARTBEAT_VERSIONS, &mut [0u8; 256]);
        }
    }
}
