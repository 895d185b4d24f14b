//! NDIS objects carried in RNDIS QUERY/SET information buffers: the OIDs Linux's netvsc queries
//! and sets, the packet filter bits, media state, and the NDIS structures with their per-version
//! sizes — task offload capabilities (`NDIS_OFFLOAD`) and parameters, receive-side scaling
//! capabilities and parameters.

use vmbus::open_enum;
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::nvsp::NvspVersion;

open_enum! {
    /// NDIS object identifiers.
    pub struct Oid(u32) {
        /// Supported OIDs.
        GEN_SUPPORTED_LIST = 0x0001_0101,
        /// Hardware status.
        GEN_HARDWARE_STATUS = 0x0001_0102,
        /// Largest frame payload (u32); Linux lowers its MTU if smaller.
        GEN_MAXIMUM_FRAME_SIZE = 0x0001_0106,
        /// Link speed (u32, 100 bps units).
        GEN_LINK_SPEED = 0x0001_0107,
        /// Packet filter (u32, [`PacketFilter`]); Linux sets it.
        GEN_CURRENT_PACKET_FILTER = 0x0001_010E,
        /// Largest total frame size.
        GEN_MAXIMUM_TOTAL_SIZE = 0x0001_0111,
        /// Media connect status (u32, [`MediaState`]).
        GEN_MEDIA_CONNECT_STATUS = 0x0001_0114,
        /// Receive-scale capabilities ([`NdisReceiveScaleCapabilities`]).
        GEN_RECEIVE_SCALE_CAPABILITIES = 0x0001_0203,
        /// Receive-scale parameters ([`NdisReceiveScaleParameters`]).
        GEN_RECEIVE_SCALE_PARAMETERS = 0x0001_0204,
        /// Friendly name (UCS-2).
        GEN_FRIENDLY_NAME = 0x0002_0216,
        /// Configuration parameter (MAC address change: "NetworkAddress").
        GEN_RNDIS_CONFIG_PARAMETER = 0x0001_021B,
        /// Permanent MAC address (6 bytes).
        IEEE_802_3_PERMANENT_ADDRESS = 0x0101_0101,
        /// Current MAC address (6 bytes).
        IEEE_802_3_CURRENT_ADDRESS = 0x0101_0102,
        /// Multicast list.
        IEEE_802_3_MULTICAST_LIST = 0x0101_0103,
        /// Multicast list size.
        IEEE_802_3_MAXIMUM_LIST_SIZE = 0x0101_0104,
        /// Encapsulation offload.
        OFFLOAD_ENCAPSULATION = 0x0101_010A,
        /// Current offload configuration.
        TCP_OFFLOAD_CURRENT_CONFIG = 0xFC01_020B,
        /// Offload parameters ([`NdisOffloadParameters`], set).
        TCP_OFFLOAD_PARAMETERS = 0xFC01_020C,
        /// Offload hardware capabilities ([`NdisOffload`], query).
        TCP_OFFLOAD_HARDWARE_CAPABILITIES = 0xFC01_020D,
    }
}

/// `OID_GEN_CURRENT_PACKET_FILTER` bits (`NDIS_PACKET_TYPE_*`). 0 stops all receives.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketFilter(pub u32);

impl PacketFilter {
    /// Frames to the NIC's address.
    pub const DIRECTED: Self = Self(0x1);
    /// Listed multicast.
    pub const MULTICAST: Self = Self(0x2);
    /// All multicast.
    pub const ALL_MULTICAST: Self = Self(0x4);
    /// Broadcast.
    pub const BROADCAST: Self = Self(0x8);
    /// Promiscuous.
    pub const PROMISCUOUS: Self = Self(0x20);
    /// What Linux sets when the interface comes up (DIRECTED | ALL_MULTICAST | BROADCAST).
    pub const LINUX_UP: Self = Self(0x0D);

    /// Whether no frame may be delivered.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

open_enum! {
    /// `OID_GEN_MEDIA_CONNECT_STATUS` values.
    pub struct MediaState(u32) {
        /// Link up.
        CONNECTED = 0,
        /// Link down.
        DISCONNECTED = 1,
    }
}

/// Link speed unit of `OID_GEN_LINK_SPEED`: 100 bits per second.
pub const LINK_SPEED_UNIT_BPS: u64 = 100;

/// `ndis_object_header.type` values.
pub mod object_type {
    /// Default (offload parameters).
    pub const DEFAULT: u8 = 0x80;
    /// RSS capabilities.
    pub const RSS_CAPABILITIES: u8 = 0x88;
    /// RSS parameters.
    pub const RSS_PARAMETERS: u8 = 0x89;
    /// Offload capabilities.
    pub const OFFLOAD: u8 = 0xA7;
}

/// `struct ndis_object_header`.
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
pub struct NdisObjectHeader {
    /// [`object_type`].
    pub object_type: u8,
    /// Revision.
    pub revision: u8,
    /// Bytes of the object.
    pub size: U16,
}

/// Checksum offload capabilities (`struct ndis_csum_offload`).
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
pub struct NdisChecksumOffload {
    /// IPv4 transmit encapsulation.
    pub ip4_tx_encapsulation: U32,
    /// IPv4 transmit checksum capabilities.
    pub ip4_tx_checksum: U32,
    /// IPv4 receive encapsulation.
    pub ip4_rx_encapsulation: U32,
    /// IPv4 receive checksum capabilities.
    pub ip4_rx_checksum: U32,
    /// IPv6 transmit encapsulation.
    pub ip6_tx_encapsulation: U32,
    /// IPv6 transmit checksum capabilities.
    pub ip6_tx_checksum: U32,
    /// IPv6 receive encapsulation.
    pub ip6_rx_encapsulation: U32,
    /// IPv6 receive checksum capabilities.
    pub ip6_rx_checksum: U32,
}

/// LSOv1 capabilities (`struct ndis_lsov1_offload`).
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
pub struct NdisLsoV1Offload {
    /// Encapsulation.
    pub encapsulation: U32,
    /// Largest offload size.
    pub max_size: U32,
    /// Fewest segments.
    pub min_segments: U32,
    /// Options.
    pub options: U32,
}

/// IPsecv1 capabilities (`struct ndis_ipsecv1_offload`).
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
pub struct NdisIpsecV1Offload {
    /// Encapsulation.
    pub encapsulation: U32,
    /// AH+ESP.
    pub ah_esp: U32,
    /// Transport/tunnel.
    pub transport_tunnel: U32,
    /// IPv4 options.
    pub ip4_options: U32,
    /// Flags.
    pub flags: U32,
    /// IPv4 AH.
    pub ip4_ah: U32,
    /// IPv4 ESP.
    pub ip4_esp: U32,
}

/// LSOv2 capabilities (`struct ndis_lsov2_offload`).
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
pub struct NdisLsoV2Offload {
    /// IPv4 encapsulation.
    pub ip4_encapsulation: U32,
    /// IPv4 largest size.
    pub ip4_max_size: U32,
    /// IPv4 fewest segments.
    pub ip4_min_segments: U32,
    /// IPv6 encapsulation.
    pub ip6_encapsulation: U32,
    /// IPv6 largest size.
    pub ip6_max_size: U32,
    /// IPv6 fewest segments.
    pub ip6_min_segments: U32,
    /// IPv6 options.
    pub ip6_options: U32,
}

/// IPsecv2 capabilities (`struct ndis_ipsecv2_offload`, natural alignment: one pad byte).
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
pub struct NdisIpsecV2Offload {
    /// Encapsulation.
    pub encapsulation: U32,
    /// IPv6.
    pub ip6: u8,
    /// IPv4 options.
    pub ip4_options: u8,
    /// IPv6 extension headers.
    pub ip6_extensions: u8,
    /// AH.
    pub ah: u8,
    /// ESP.
    pub esp: u8,
    /// AH+ESP.
    pub ah_esp: u8,
    /// Transport.
    pub transport: u8,
    /// Tunnel.
    pub tunnel: u8,
    /// Transport+tunnel.
    pub transport_tunnel: u8,
    /// LSO.
    pub lso: u8,
    /// Extended sequence numbers.
    pub extended_sequence: u8,
    /// Alignment padding.
    pub padding: u8,
    /// UDP ESP.
    pub udp_esp: U32,
    /// Authentication algorithms.
    pub authentication: U32,
    /// Crypto algorithms.
    pub crypto: U32,
    /// SA capabilities.
    pub sa_capabilities: U32,
}

/// `struct ndis_offload`: answer to `OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES`
/// ([`ndis_offload_size`] bytes of it, by version).
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
pub struct NdisOffload {
    /// Type [`object_type::OFFLOAD`], revision [`ndis_offload_revision`], size.
    pub header: NdisObjectHeader,
    /// Checksum.
    pub checksum: NdisChecksumOffload,
    /// LSOv1.
    pub lso_v1: NdisLsoV1Offload,
    /// IPsecv1.
    pub ipsec_v1: NdisIpsecV1Offload,
    /// LSOv2.
    pub lso_v2: NdisLsoV2Offload,
    /// Flags.
    pub flags: U32,
    /// IPsecv2 (NDIS ≥ 6.1).
    pub ipsec_v2: NdisIpsecV2Offload,
    /// RSC IPv4 (NDIS ≥ 6.30).
    pub rsc_ip4: u8,
    /// RSC IPv6.
    pub rsc_ip6: u8,
    /// Alignment padding.
    pub padding: [u8; 2],
    /// GRE encapsulation flags.
    pub encapsulation_gre_flags: U32,
    /// GRE encapsulation largest header.
    pub encapsulation_gre_max_header: U32,
}

/// `NDIS_OFFLOAD_SIZE_6_0`: [`NdisOffload`] up to `flags` (revision 1).
pub const NDIS_OFFLOAD_SIZE_6_0: usize = 112;
/// `NDIS_OFFLOAD_SIZE_6_1`: up to IPsecv2 (revision 2).
pub const NDIS_OFFLOAD_SIZE_6_1: usize = 144;
/// `NDIS_OFFLOAD_SIZE`: the whole structure (revision 3).
pub const NDIS_OFFLOAD_SIZE: usize = 156;

/// Size of the [`NdisOffload`] a host answers a guest at `version` with: 112 below NVSP 4,
/// 144 at 4, 156 from 5.
pub fn ndis_offload_size(version: NvspVersion) -> usize {
    if version < NvspVersion::V4 {
        NDIS_OFFLOAD_SIZE_6_0
    } else if version == NvspVersion::V4 {
        NDIS_OFFLOAD_SIZE_6_1
    } else {
        NDIS_OFFLOAD_SIZE
    }
}

/// Revision of that [`NdisOffload`] (1, 2 or 3).
pub fn ndis_offload_revision(version: NvspVersion) -> u8 {
    match ndis_offload_size(version) {
        NDIS_OFFLOAD_SIZE_6_0 => 1,
        NDIS_OFFLOAD_SIZE_6_1 => 2,
        _ => 3,
    }
}

/// `struct ndis_offload_params`: `OID_TCP_OFFLOAD_PARAMETERS` (natural alignment: one pad byte
/// before `flags`, two at the end). Values are [`offload_parameter`] codes.
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
pub struct NdisOffloadParameters {
    /// Type [`object_type::DEFAULT`], revision 1..=3, size.
    pub header: NdisObjectHeader,
    /// IPv4 header checksum.
    pub ip4_checksum: u8,
    /// TCP/IPv4 checksum.
    pub tcp4_checksum: u8,
    /// UDP/IPv4 checksum.
    pub udp4_checksum: u8,
    /// TCP/IPv6 checksum.
    pub tcp6_checksum: u8,
    /// UDP/IPv6 checksum.
    pub udp6_checksum: u8,
    /// LSOv1.
    pub lso_v1: u8,
    /// IPsecv1.
    pub ipsec_v1: u8,
    /// LSOv2 IPv4.
    pub lso_v2_ip4: u8,
    /// LSOv2 IPv6.
    pub lso_v2_ip6: u8,
    /// TCP connection offload IPv4.
    pub tcp_connection_ip4: u8,
    /// TCP connection offload IPv6.
    pub tcp_connection_ip6: u8,
    /// Alignment padding.
    pub padding: u8,
    /// Flags.
    pub flags: U32,
    /// IPsecv2.
    pub ipsec_v2: u8,
    /// IPsecv2 IPv4.
    pub ipsec_v2_ip4: u8,
    /// RSC IPv4.
    pub rsc_ip4: u8,
    /// RSC IPv6.
    pub rsc_ip6: u8,
    /// Encapsulated packet task offload.
    pub encapsulated_packet_task_offload: u8,
    /// Encapsulation types.
    pub encapsulation_types: u8,
    /// Alignment padding.
    pub padding2: [u8; 2],
}

/// Bytes of [`NdisOffloadParameters`] Linux sends up to NVSP 4 (`VERSION_4_OFFLOAD_SIZE`).
pub const OFFLOAD_PARAMETERS_SIZE_V4: usize = 22;
/// Bytes Linux sends from NVSP 5 (the whole structure).
pub const OFFLOAD_PARAMETERS_SIZE: usize = 28;

/// Values of [`NdisOffloadParameters`] fields.
pub mod offload_parameter {
    /// Leave unchanged.
    pub const NO_CHANGE: u8 = 0;
    /// Checksum: transmit and receive off.
    pub const TX_RX_DISABLED: u8 = 1;
    /// Checksum: transmit on, receive off.
    pub const TX_ENABLED_RX_DISABLED: u8 = 2;
    /// Checksum: receive on, transmit off.
    pub const RX_ENABLED_TX_DISABLED: u8 = 3;
    /// Checksum: both on.
    pub const TX_RX_ENABLED: u8 = 4;
    /// LSOv2 off.
    pub const LSOV2_DISABLED: u8 = 1;
    /// LSOv2 on.
    pub const LSOV2_ENABLED: u8 = 2;
    /// RSC off.
    pub const RSC_DISABLED: u8 = 1;
    /// RSC on.
    pub const RSC_ENABLED: u8 = 2;
}

/// `struct ndis_recv_scale_cap` (packed): answer to `OID_GEN_RECEIVE_SCALE_CAPABILITIES`.
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
pub struct NdisReceiveScaleCapabilities {
    /// Type [`object_type::RSS_CAPABILITIES`], revision 2, size 18.
    pub header: NdisObjectHeader,
    /// Capability flags.
    pub capabilities: U32,
    /// Interrupt messages.
    pub interrupt_messages: U32,
    /// Receive queues (Linux opens at most this many channels).
    pub receive_queues: U32,
    /// Indirection table entries.
    pub indirection_table_entries: U16,
}

/// `struct ndis_recv_scale_param` (natural alignment): `OID_GEN_RECEIVE_SCALE_PARAMETERS`;
/// the indirection table and hash key follow at their offsets from the start of this object.
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
pub struct NdisReceiveScaleParameters {
    /// Type [`object_type::RSS_PARAMETERS`], revision 2, size.
    pub header: NdisObjectHeader,
    /// Flags (0x10 disables RSS).
    pub flags: U16,
    /// Base CPU.
    pub base_cpu_number: U16,
    /// Hash function and types.
    pub hash_information: U32,
    /// Bytes of the indirection table.
    pub indirection_table_size: U16,
    /// Alignment padding.
    pub padding: U16,
    /// Offset of the indirection table.
    pub indirection_table_offset: U32,
    /// Bytes of the hash key.
    pub hash_key_size: U16,
    /// Alignment padding.
    pub padding2: U16,
    /// Offset of the hash key.
    pub hash_key_offset: U32,
    /// Offset of processor masks.
    pub processor_masks_offset: U32,
    /// Processor masks.
    pub processor_mask_count: U32,
    /// Bytes of each processor mask.
    pub processor_mask_entry_size: U32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn offload_layouts_match_linux() {
        assert_eq!(size_of::<NdisObjectHeader>(), 4);
        assert_eq!(size_of::<NdisChecksumOffload>(), 32);
        assert_eq!(size_of::<NdisLsoV1Offload>(), 16);
        assert_eq!(size_of::<NdisIpsecV1Offload>(), 28);
        assert_eq!(size_of::<NdisLsoV2Offload>(), 28);
        assert_eq!(size_of::<NdisIpsecV2Offload>(), 32);
        assert_eq!(offset_of!(NdisIpsecV2Offload, udp_esp), 16);
        assert_eq!(offset_of!(NdisOffload, checksum), 4);
        assert_eq!(offset_of!(NdisOffload, lso_v1), 36);
        assert_eq!(offset_of!(NdisOffload, ipsec_v1), 52);
        assert_eq!(offset_of!(NdisOffload, lso_v2), 80);
        assert_eq!(offset_of!(NdisOffload, flags), 108);
        assert_eq!(offset_of!(NdisOffload, ipsec_v2), NDIS_OFFLOAD_SIZE_6_0);
        assert_eq!(offset_of!(NdisOffload, rsc_ip4), NDIS_OFFLOAD_SIZE_6_1);
        assert_eq!(offset_of!(NdisOffload, encapsulation_gre_flags), 148);
        assert_eq!(size_of::<NdisOffload>(), NDIS_OFFLOAD_SIZE);
        assert_eq!(ndis_offload_size(NvspVersion::V2), 112);
        assert_eq!(ndis_offload_size(NvspVersion::V4), 144);
        assert_eq!(ndis_offload_size(NvspVersion::V61), 156);
        assert_eq!(ndis_offload_revision(NvspVersion::V1), 1);
        assert_eq!(ndis_offload_revision(NvspVersion::V5), 3);
    }

    #[test]
    fn offload_parameters_and_rss_layouts_match_linux() {
        assert_eq!(offset_of!(NdisOffloadParameters, ip4_checksum), 4);
        assert_eq!(offset_of!(NdisOffloadParameters, tcp_connection_ip6), 14);
        assert_eq!(offset_of!(NdisOffloadParameters, flags), 16);
        assert_eq!(offset_of!(NdisOffloadParameters, ipsec_v2), 20);
        assert_eq!(
            offset_of!(NdisOffloadParameters, rsc_ip4),
            OFFLOAD_PARAMETERS_SIZE_V4
        );
        assert_eq!(size_of::<NdisOffloadParameters>(), OFFLOAD_PARAMETERS_SIZE);
        assert_eq!(size_of::<NdisReceiveScaleCapabilities>(), 18);
        assert_eq!(offset_of!(NdisReceiveScaleCapabilities, receive_queues), 12);
        assert_eq!(size_of::<NdisReceiveScaleParameters>(), 40);
        assert_eq!(offset_of!(NdisReceiveScaleParameters, hash_information), 8);
        assert_eq!(
            offset_of!(NdisReceiveScaleParameters, indirection_table_offset),
            16
        );
        assert_eq!(offset_of!(NdisReceiveScaleParameters, hash_key_offset), 24);
        assert_eq!(
            offset_of!(NdisReceiveScaleParameters, processor_mask_entry_size),
            36
        );
    }

    #[test]
    fn oids_and_filter_match_linux() {
        assert_eq!(Oid::IEEE_802_3_PERMANENT_ADDRESS.0, 0x0101_0101);
        assert_eq!(Oid::GEN_CURRENT_PACKET_FILTER.0, 0x0001_010E);
        assert_eq!(Oid::TCP_OFFLOAD_HARDWARE_CAPABILITIES.0, 0xFC01_020D);
        assert_eq!(Oid::GEN_MEDIA_CONNECT_STATUS.0, 0x0001_0114);
        assert_eq!(
            PacketFilter::LINUX_UP.0,
            PacketFilter::DIRECTED.0 | PacketFilter::ALL_MULTICAST.0 | PacketFilter::BROADCAST.0
        );
        assert!(PacketFilter(0).is_empty());
    }
}
