//! Wire format of the Hyper-V synthetic SCSI controller (storvsc ⇄ storvsp over VMBus), byte-compatible
//! with Linux's `hv_storvsc`.
//!
//! Every message on the channel is one 64-byte [`VstorPacket`]: `{u32 operation, u32 flags, u32 status,
//! 52-byte union}`. The union holds an SRB ([`VmscsiRequest`]) for `EXECUTE_SRB`, a
//! [`ProtocolVersionPayload`] for `QUERY_PROTOCOL_VERSION` and [`ChannelProperties`] for
//! `QUERY_PROPERTIES`. Hosts and guests older than Windows 8 (protocol < 5.1) omit the SRB's 16-byte
//! Windows 8 extension, so their packets are [`vmscsi_size_delta`] bytes shorter; [`VstorPacket::parse`]
//! accepts both sizes and zero-extends the short one.
//!
//! Numeric codes from the peer are open newtypes ([`Operation`], [`NtStatus`], [`SrbStatus`],
//! [`ProtocolVersion`], [`scsi::ScsiStatus`], [`scsi::SenseKey`]) so unknown values stay representable.
//! [`scsi`] holds the SCSI constants and fixed-format sense data both ends use.
#![no_std]
#![forbid(unsafe_code)]

use vmbus::open_enum;
pub mod scsi;
mod srb;

pub use srb::{
    srb_flags, DataDirection, SrbStatus, VmscsiRequest, CDB_MAX_LEN, PRE_WIN8_SENSE_BUFFER_SIZE,
    SENSE_BUFFER_SIZE, VMSCSI_REQUEST_SIZE, VMSCSI_WIN8_EXTENSION_SIZE,
};

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of a [`VstorPacket`] on the wire (Windows 8 and later).
pub const VSTOR_PACKET_SIZE: usize = 64;
/// Size of the union after the 12-byte packet header.
pub const VSTOR_PAYLOAD_SIZE: usize = 52;
/// Size of a packet from a peer that predates the Windows 8 SRB extension.
pub const PRE_WIN8_VSTOR_PACKET_SIZE: usize = VSTOR_PACKET_SIZE - VMSCSI_WIN8_EXTENSION_SIZE;
/// `vstor_packet.flags`: the sender wants a completion (`REQUEST_COMPLETION_FLAG`).
pub const REQUEST_COMPLETION_FLAG: u32 = 1;
/// `vmstorage_channel_properties.flags`: the host supports sub-channels.
pub const STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL: u32 = 1;
/// Transaction id Linux uses for its init (handshake) requests (`VMBUS_RQST_INIT`).
pub const TRANS_ID_INIT: u64 = 0xFFFF_FFFF_FFFF_FFFF;
/// Transaction id Linux uses for its reset request (`VMBUS_RQST_RESET`).
pub const TRANS_ID_RESET: u64 = 0xFFFF_FFFF_FFFF_FFFE;

open_enum! {
    /// `enum vstor_packet_operation`.
    pub struct Operation(u32) {
        /// Completion of a request (every host reply carries it).
        COMPLETE_IO = 1,
        /// The host removed a device.
        REMOVE_DEVICE = 2,
        /// Execute a SCSI request block.
        EXECUTE_SRB = 3,
        /// Reset a LUN.
        RESET_LUN = 4,
        /// Reset the adapter.
        RESET_ADAPTER = 5,
        /// Reset the bus.
        RESET_BUS = 6,
        /// Start of the init handshake.
        BEGIN_INIT = 7,
        /// End of the init handshake.
        END_INIT = 8,
        /// Propose a protocol version.
        QUERY_PROTOCOL_VERSION = 9,
        /// Ask for the channel properties.
        QUERY_PROPERTIES = 10,
        /// The host asks the guest to rescan the bus.
        ENUMERATE_BUS = 11,
        /// Fibre-channel HBA data.
        FCHBA_DATA = 12,
        /// Create sub-channels.
        CREATE_SUB_CHANNELS = 13,
    }
}

open_enum! {
    /// Protocol version `(major << 8) | minor` (`VMSTOR_PROTO_VERSION`).
    pub struct ProtocolVersion(u16) {
        /// Windows Server 2008.
        WIN6 = 0x0200,
        /// Windows 7 / Server 2008 R2.
        WIN7 = 0x0402,
        /// Windows 8 / Server 2012: adds the SRB extension.
        WIN8 = 0x0501,
        /// Windows 8.1 / Server 2012 R2.
        WIN8_1 = 0x0600,
        /// Windows 10 / Server 2016 and later.
        WIN10 = 0x0602,
    }
}

impl ProtocolVersion {
    /// Major number (high byte).
    pub fn major(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// Minor number (low byte).
    pub fn minor(self) -> u8 {
        self.0 as u8
    }
}

impl PartialOrd for ProtocolVersion {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ProtocolVersion {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// The versions Linux's storvsc proposes, newest first; it falls back on a non-zero status.
pub const LINUX_PROTOCOL_VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::WIN10,
    ProtocolVersion::WIN8_1,
    ProtocolVersion::WIN8,
];

/// Bytes missing from an SRB packet at `version`: the Windows 8 extension before [`ProtocolVersion::WIN8`],
/// none from it on (Linux's `vmscsi_size_delta`). Before a version is negotiated, old guests assume the
/// short form, so a host must accept handshake packets of [`PRE_WIN8_VSTOR_PACKET_SIZE`] bytes.
pub fn vmscsi_size_delta(version: ProtocolVersion) -> usize {
    if version < ProtocolVersion::WIN8 {
        VMSCSI_WIN8_EXTENSION_SIZE
    } else {
        0
    }
}

/// Size of a vstor packet at `version` (`sizeof(struct vstor_packet) - vmscsi_size_delta`).
pub fn vstor_packet_size(version: ProtocolVersion) -> usize {
    VSTOR_PACKET_SIZE - vmscsi_size_delta(version)
}

/// Sense buffer size at `version` (`sense_buffer_size` in Linux).
pub fn sense_buffer_size(version: ProtocolVersion) -> usize {
    if version < ProtocolVersion::WIN8 {
        PRE_WIN8_SENSE_BUFFER_SIZE
    } else {
        SENSE_BUFFER_SIZE
    }
}

open_enum! {
    /// NT status in `vstor_packet.status` (0 = success; the high bit marks an error).
    pub struct NtStatus(u32) {
        /// Success.
        SUCCESS = 0,
        /// The device is busy (warning).
        DEVICE_BUSY = 0x8000_0011,
        /// A malformed request.
        INVALID_PARAMETER = 0xC000_000D,
        /// An operation the device does not support.
        INVALID_DEVICE_REQUEST = 0xC000_0010,
        /// The proposed protocol version is not supported.
        REVISION_MISMATCH = 0xC000_0059,
        /// The request is not valid in the current state (e.g. I/O before END_INIT).
        INVALID_DEVICE_STATE = 0xC000_0184,
    }
}

impl NtStatus {
    /// Whether this status reports an error (severity bits `11`).
    pub fn is_error(self) -> bool {
        self.0 >> 30 == 3
    }
}

/// `struct vmstorage_protocol_version`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct ProtocolVersionPayload {
    /// `(major << 8) | minor`.
    pub major_minor: U16,
    /// Build revision (Linux sends 0; informational only).
    pub revision: U16,
}

/// `struct vmstorage_channel_properties` (answer to `QUERY_PROPERTIES`).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct ChannelProperties {
    /// Reserved.
    pub reserved: U32,
    /// Sub-channels the host can create.
    pub max_channel_count: U16,
    /// Reserved.
    pub reserved1: U16,
    /// [`STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL`].
    pub flags: U32,
    /// Largest data transfer of one SRB (a non-zero multiple of 4096).
    pub max_transfer_bytes: U32,
    /// Reserved.
    pub reserved2: U64,
}

/// `struct vstor_packet`: every message on a storvsc channel.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct VstorPacket {
    /// [`Operation`].
    pub operation: U32,
    /// [`REQUEST_COMPLETION_FLAG`].
    pub flags: U32,
    /// [`NtStatus`] (replies).
    pub status: U32,
    /// The union: SRB, version, properties or sub-channel count.
    pub payload: [u8; VSTOR_PAYLOAD_SIZE],
}

/// Errors decoding a vstor packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Fewer bytes than even a pre-Windows 8 packet.
    #[error("vstor packet of {len} bytes is shorter than {PRE_WIN8_VSTOR_PACKET_SIZE}")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
}

impl VstorPacket {
    /// A zeroed packet with `operation` and `flags`.
    pub fn new(operation: Operation, flags: u32) -> Self {
        let mut p = Self::new_zeroed();
        p.operation.set(operation.0);
        p.flags.set(flags);
        p
    }

    /// Decodes the first [`VSTOR_PACKET_SIZE`] bytes of `bytes`; a packet of at least
    /// [`PRE_WIN8_VSTOR_PACKET_SIZE`] bytes (no SRB extension) is zero-extended. Longer input is truncated.
    pub fn parse(bytes: &[u8]) -> Result<Self, ProtocolError> {
        if bytes.len() < PRE_WIN8_VSTOR_PACKET_SIZE {
            return Err(ProtocolError::Truncated { len: bytes.len() });
        }
        let mut raw = [0u8; VSTOR_PACKET_SIZE];
        let n = bytes.len().min(VSTOR_PACKET_SIZE);
        raw[..n].copy_from_slice(&bytes[..n]);
        Ok(zerocopy::transmute!(raw))
    }

    /// The 64 wire bytes.
    pub fn as_wire(&self) -> &[u8] {
        self.as_bytes()
    }

    /// The operation.
    pub fn operation(&self) -> Operation {
        Operation(self.operation.get())
    }

    /// The status.
    pub fn status(&self) -> NtStatus {
        NtStatus(self.status.get())
    }

    /// Sets the status.
    pub fn set_status(&mut self, status: NtStatus) {
        self.status.set(status.0);
    }

    /// The union read as an SRB.
    pub fn srb(&self) -> VmscsiRequest {
        zerocopy::transmute!(self.payload)
    }

    /// Stores an SRB in the union.
    pub fn set_srb(&mut self, srb: &VmscsiRequest) {
        self.payload = zerocopy::transmute!(*srb);
    }

    /// The union read as a protocol version.
    pub fn version(&self) -> ProtocolVersionPayload {
        let (v, _) = ProtocolVersionPayload::read_from_prefix(&self.payload)
            .unwrap_or_else(|_| unreachable!("payload holds 52 bytes"));
        v
    }

    /// Stores a protocol version (revision 0) in the union.
    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.payload = [0; VSTOR_PAYLOAD_SIZE];
        let v = ProtocolVersionPayload {
            major_minor: U16::new(version.0),
            revision: U16::new(0),
        };
        self.payload[..4].copy_from_slice(v.as_bytes());
    }

    /// The union read as channel properties.
    pub fn properties(&self) -> ChannelProperties {
        let (p, _) = ChannelProperties::read_from_prefix(&self.payload)
            .unwrap_or_else(|_| unreachable!("payload holds 52 bytes"));
        p
    }

    /// Stores channel properties in the union.
    pub fn set_properties(&mut self, properties: &ChannelProperties) {
        self.payload = [0; VSTOR_PAYLOAD_SIZE];
        self.payload[..size_of::<ChannelProperties>()].copy_from_slice(properties.as_bytes());
    }

    /// The union read as a sub-channel count (`CREATE_SUB_CHANNELS`).
    pub fn sub_channel_count(&self) -> u16 {
        u16::from_le_bytes([self.payload[0], self.payload[1]])
    }

    /// Stores a sub-channel count in the union (`CREATE_SUB_CHANNELS`).
    pub fn set_sub_channel_count(&mut self, count: u16) {
        self.payload = [0; VSTOR_PAYLOAD_SIZE];
        self.payload[..2].copy_from_slice(&count.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::offset_of;
    use std::format;

    #[test]
    fn vstor_packet_layout_matches_linux() {
        assert_eq!(size_of::<VstorPacket>(), 64);
        assert_eq!(offset_of!(VstorPacket, operation), 0);
        assert_eq!(offset_of!(VstorPacket, flags), 4);
        assert_eq!(offset_of!(VstorPacket, status), 8);
        assert_eq!(offset_of!(VstorPacket, payload), 12);
        assert_eq!(PRE_WIN8_VSTOR_PACKET_SIZE, 48);
    }

    #[test]
    fn properties_and_version_layout() {
        assert_eq!(size_of::<ChannelProperties>(), 24);
        assert_eq!(offset_of!(ChannelProperties, max_channel_count), 4);
        assert_eq!(offset_of!(ChannelProperties, flags), 8);
        assert_eq!(offset_of!(ChannelProperties, max_transfer_bytes), 12);
        assert_eq!(offset_of!(ChannelProperties, reserved2), 16);
        assert_eq!(size_of::<ProtocolVersionPayload>(), 4);
        assert_eq!(offset_of!(ProtocolVersionPayload, revision), 2);
    }

    #[test]
    fn operation_codes_and_versions() {
        assert_eq!(Operation::COMPLETE_IO.0, 1);
        assert_eq!(Operation::EXECUTE_SRB.0, 3);
        assert_eq!(Operation::BEGIN_INIT.0, 7);
        assert_eq!(Operation::QUERY_PROPERTIES.0, 10);
        assert_eq!(Operation::CREATE_SUB_CHANNELS.0, 13);
        assert_eq!(
            LINUX_PROTOCOL_VERSIONS.map(|v| v.0),
            [0x0602, 0x0600, 0x0501]
        );
        assert_eq!(ProtocolVersion::WIN10.major(), 6);
        assert_eq!(ProtocolVersion::WIN8.minor(), 1);
        assert!(ProtocolVersion::WIN7 < ProtocolVersion::WIN8);
        assert_eq!(format!("{:?}", Operation(99)), "Operation(0x63)");
        assert_eq!(format!("{:?}", Operation::END_INIT), "Operation::END_INIT");
    }

    #[test]
    fn size_delta_follows_the_win8_rule() {
        assert_eq!(vmscsi_size_delta(ProtocolVersion::WIN7), 16);
        assert_eq!(vstor_packet_size(ProtocolVersion::WIN7), 48);
        assert_eq!(vstor_packet_size(ProtocolVersion::WIN8), 64);
        assert_eq!(vstor_packet_size(ProtocolVersion::WIN10), 64);
        assert_eq!(sense_buffer_size(ProtocolVersion::WIN7), 0x12);
        assert_eq!(sense_buffer_size(ProtocolVersion::WIN8_1), 0x14);
    }

    #[test]
    fn parse_accepts_short_packets_and_zero_extends() {
        let mut p = VstorPacket::new(Operation::BEGIN_INIT, REQUEST_COMPLETION_FLAG);
        p.payload = [0xAA; VSTOR_PAYLOAD_SIZE];
        let short = &p.as_wire()[..48];
        let q = VstorPacket::parse(short).unwrap();
        assert_eq!(q.operation(), Operation::BEGIN_INIT);
        assert_eq!(q.payload[..36], [0xAA; 36]);
        assert_eq!(q.payload[36..], [0; 16]);
        assert_eq!(
            VstorPacket::parse(&[0; 47]),
            Err(ProtocolError::Truncated { len: 47 })
        );
        assert_eq!(
            VstorPacket::parse(&[0xFF; 100]).unwrap().as_wire(),
            &[0xFF; 64]
        );
    }

    #[test]
    fn union_views_roundtrip() {
        let mut p = VstorPacket::new(Operation::QUERY_PROTOCOL_VERSION, 1);
        p.set_version(ProtocolVersion::WIN8_1);
        assert_eq!(&p.as_wire()[12..16], &[0x00, 0x06, 0, 0]);
        assert_eq!(p.version().major_minor.get(), 0x0600);
        let props = ChannelProperties {
            reserved: U32::new(0),
            max_channel_count: U16::new(0),
            reserved1: U16::new(0),
            flags: U32::new(0),
            max_transfer_bytes: U32::new(0x20_0000),
            reserved2: U64::new(0),
        };
        p.set_properties(&props);
        assert_eq!(&p.as_wire()[24..28], &0x20_0000u32.to_le_bytes());
        assert_eq!(p.properties(), props);
        p.set_status(NtStatus::REVISION_MISMATCH);
        assert_eq!(&p.as_wire()[8..12], &0xC000_0059u32.to_le_bytes());
        assert!(p.status().is_error());
        assert!(!NtStatus::DEVICE_BUSY.is_error());
    }
}
