//! Per-packet info (PPI): the typed records between a PACKET header and its frame (checksum,
//! LSO, VLAN, hash, RSC fragment id), the bit layouts of their values, a checked walker over a PPI
//! area and an encoder for one record.

use vmbus::open_enum;
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::rndis::RndisError;

/// Bytes of a PPI record header.
pub const PPI_HEADER_SIZE: usize = 12;
/// Bit of `type` marking an internal (netvsc-specific) PPI type.
pub const PPI_INTERNAL_BIT: u32 = 1 << 31;

open_enum! {
    /// `enum ndis_per_pkt_info_type` (the public, non-internal types).
    pub struct PpiType(u32) {
        /// TCP/IP checksum info ([`checksum`]).
        TCPIP_CHECKSUM = 0,
        /// IPsec.
        IPSEC = 1,
        /// TCP large send ([`lso`]).
        TCP_LARGE_SEND = 2,
        /// Classification handle.
        CLASSIFICATION_HANDLE = 3,
        /// Reserved.
        NDIS_RESERVED = 4,
        /// Scatter/gather list.
        SG_LIST = 5,
        /// 802.1Q tag ([`vlan`]).
        IEEE_8021Q = 6,
        /// Original packet info.
        ORIGINAL = 7,
        /// Hash value (`NBL_HASH_VALUE`, same number as PACKET_CANCEL_ID); u32.
        NBL_HASH_VALUE = 8,
        /// Original net buffer list.
        ORIGINAL_NET_BUFFER_LIST = 9,
        /// Cached net buffer list.
        CACHED_NET_BUFFER_LIST = 10,
        /// Short packet padding.
        SHORT_PACKET_PAD = 11,
    }
}

open_enum! {
    /// Internal PPI types (`type` with [`PPI_INTERNAL_BIT`]).
    pub struct InternalPpiType(u32) {
        /// [`PktInfoId`]: RSC fragment id.
        PKTINFO_ID = 1,
    }
}

/// PPI record header (`struct rndis_per_packet_info`): `size` counts the header;
/// the value starts `ppi_offset` bytes into the record.
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
pub struct PpiHeader {
    /// Bytes of the whole record.
    pub size: U32,
    /// Type (bits 0–30) and the internal flag (bit 31).
    pub type_and_internal: U32,
    /// Offset of the value from the start of the record (12).
    pub ppi_offset: U32,
}

/// Value of the internal [`InternalPpiType::PKTINFO_ID`] PPI (`struct rndis_pktinfo_id`).
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
pub struct PktInfoId {
    /// Version (1).
    pub version: u8,
    /// [`PktInfoId::SUBALLOC`], [`PktInfoId::FIRST_FRAGMENT`], [`PktInfoId::LAST_FRAGMENT`].
    pub flags: u8,
    /// Packet id.
    pub packet_id: U16,
}

impl PktInfoId {
    /// Sub-allocated fragment.
    pub const SUBALLOC: u8 = 1 << 0;
    /// First fragment of an RSC packet.
    pub const FIRST_FRAGMENT: u8 = 1 << 1;
    /// Last fragment of an RSC packet.
    pub const LAST_FRAGMENT: u8 = 1 << 2;
}

/// Bits of the TCP/IP checksum PPI value (`struct ndis_tcp_ip_checksum_info`).
pub mod checksum {
    /// Transmit: the packet is IPv4.
    pub const TX_IPV4: u32 = 1 << 0;
    /// Transmit: the packet is IPv6.
    pub const TX_IPV6: u32 = 1 << 1;
    /// Transmit: compute the TCP checksum.
    pub const TX_TCP: u32 = 1 << 2;
    /// Transmit: compute the UDP checksum.
    pub const TX_UDP: u32 = 1 << 3;
    /// Transmit: compute the IP header checksum.
    pub const TX_IP_HEADER: u32 = 1 << 4;
    /// Transmit: shift of the 10-bit TCP header offset.
    pub const TX_TCP_HEADER_OFFSET_SHIFT: u32 = 16;
    /// Receive: TCP checksum failed.
    pub const RX_TCP_FAILED: u32 = 1 << 0;
    /// Receive: UDP checksum failed.
    pub const RX_UDP_FAILED: u32 = 1 << 1;
    /// Receive: IP checksum failed.
    pub const RX_IP_FAILED: u32 = 1 << 2;
    /// Receive: TCP checksum good.
    pub const RX_TCP_SUCCEEDED: u32 = 1 << 3;
    /// Receive: UDP checksum good.
    pub const RX_UDP_SUCCEEDED: u32 = 1 << 4;
    /// Receive: IP checksum good.
    pub const RX_IP_SUCCEEDED: u32 = 1 << 5;
    /// Receive: loopback.
    pub const RX_LOOPBACK: u32 = 1 << 6;
    /// Receive: TCP checksum value invalid.
    pub const RX_TCP_VALUE_INVALID: u32 = 1 << 7;
    /// Receive: IP checksum value invalid.
    pub const RX_IP_VALUE_INVALID: u32 = 1 << 8;
}

/// Fields of the 802.1Q PPI value (`struct ndis_pkt_8021q_info`).
pub mod vlan {
    /// User priority (bits 0–2).
    pub const PRIORITY_MASK: u32 = 0x7;
    /// Canonical format id (bit 3).
    pub const CFI: u32 = 1 << 3;
    /// Shift of the 12-bit VLAN id.
    pub const VLAN_ID_SHIFT: u32 = 4;
    /// The VLAN id mask (after shifting).
    pub const VLAN_ID_MASK: u32 = 0xFFF;
}

/// Fields of the LSOv2 transmit PPI value (`struct ndis_tcp_lso_info`).
pub mod lso {
    /// MSS (bits 0–19).
    pub const MSS_MASK: u32 = 0xF_FFFF;
    /// Shift of the 10-bit TCP header offset.
    pub const TCP_HEADER_OFFSET_SHIFT: u32 = 20;
    /// Type bit (30): 1 = LSOv2.
    pub const TYPE_V2: u32 = 1 << 30;
    /// IP version bit (31): 1 = IPv6.
    pub const IPV6: u32 = 1 << 31;
}

/// One PPI record of a received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ppi<'a> {
    /// Type (bits 0–30 of `type`; see [`PpiType`] and [`InternalPpiType`]).
    pub ppi_type: u32,
    /// Whether the type is internal.
    pub internal: bool,
    /// The value: the record's bytes from `ppi_offset` to `size`.
    pub data: &'a [u8],
}

impl Ppi<'_> {
    /// The public type (meaningful when not [`Ppi::internal`]).
    pub fn public_type(&self) -> PpiType {
        PpiType(self.ppi_type)
    }

    /// The first four value bytes as a `u32` (checksum, VLAN, LSO, hash), if present.
    pub fn value_u32(&self) -> Option<u32> {
        let b: [u8; 4] = self.data.get(..4)?.try_into().ok()?;
        Some(u32::from_le_bytes(b))
    }
}

/// Walks the PPI records of a PPI area; every `size` and `ppi_offset` is checked against the
/// bytes left. Yields an error and then stops at the first bad record.
#[derive(Debug, Clone)]
pub struct Ppis<'a> {
    area: &'a [u8],
    at: usize,
    failed: bool,
}

/// Iterates over the records of the PPI area `area`.
pub fn ppis(area: &[u8]) -> Ppis<'_> {
    Ppis {
        area,
        at: 0,
        failed: false,
    }
}

impl<'a> Iterator for Ppis<'a> {
    type Item = Result<Ppi<'a>, RndisError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.area.len() {
            return None;
        }
        let rest = &self.area[self.at..];
        let result = match PpiHeader::read_from_prefix(rest) {
            Err(_) => Err(RndisError::BadPerPacketInfo {
                at: self.at,
                size: 0,
                offset: 0,
                remaining: rest.len(),
            }),
            Ok((h, _)) => {
                let size = h.size.get();
                let offset = h.ppi_offset.get();
                let bad = RndisError::BadPerPacketInfo {
                    at: self.at,
                    size,
                    offset,
                    remaining: rest.len(),
                };
                let (s, o) = (size as usize, offset as usize);
                if s < PPI_HEADER_SIZE || s > rest.len() || o < PPI_HEADER_SIZE || o > s {
                    Err(bad)
                } else {
                    self.at += s;
                    let t = h.type_and_internal.get();
                    Ok(Ppi {
                        ppi_type: t & !PPI_INTERNAL_BIT,
                        internal: t & PPI_INTERNAL_BIT != 0,
                        data: &rest[o..s],
                    })
                }
            }
        };
        self.failed = result.is_err();
        Some(result)
    }
}

/// Encodes one PPI record (header then `value`) into `out`; returns its size.
pub fn encode_ppi(
    out: &mut [u8],
    ppi_type: u32,
    internal: bool,
    value: &[u8],
) -> Result<usize, RndisError> {
    let size = PPI_HEADER_SIZE + value.len();
    let too_small = RndisError::BufferTooSmall {
        need: size,
        have: out.len(),
    };
    let size32 = u32::try_from(size).map_err(|_| too_small)?;
    let out = out.get_mut(..size).ok_or(too_small)?;
    let header = PpiHeader {
        size: U32::new(size32),
        type_and_internal: U32::new(
            (ppi_type & !PPI_INTERNAL_BIT) | if internal { PPI_INTERNAL_BIT } else { 0 },
        ),
        ppi_offset: U32::new(PPI_HEADER_SIZE as u32),
    };
    out[..PPI_HEADER_SIZE].copy_from_slice(header.as_bytes());
    out[PPI_HEADER_SIZE..].copy_from_slice(value);
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn layouts_and_codes_match_linux() {
        assert_eq!(size_of::<PpiHeader>(), PPI_HEADER_SIZE);
        assert_eq!(offset_of!(PpiHeader, type_and_internal), 4);
        assert_eq!(offset_of!(PpiHeader, ppi_offset), 8);
        assert_eq!(size_of::<PktInfoId>(), 4);
        assert_eq!(offset_of!(PktInfoId, packet_id), 2);
        assert_eq!(PpiType::IEEE_8021Q.0, 6);
        assert_eq!(PpiType::NBL_HASH_VALUE.0, 8);
        assert_eq!(lso::TYPE_V2, 0x4000_0000);
    }

    #[test]
    fn records_roundtrip_and_bad_records_stop_the_walk() {
        let mut area = [0u8; 64];
        let a = encode_ppi(
            &mut area,
            PpiType::IEEE_8021Q.0,
            false,
            &0x123u32.to_le_bytes(),
        )
        .unwrap();
        let b = encode_ppi(
            &mut area[a..],
            InternalPpiType::PKTINFO_ID.0,
            true,
            &[1, PktInfoId::LAST_FRAGMENT, 9, 0],
        )
        .unwrap();
        let got: [_; 2] = {
            let mut it = ppis(&area[..a + b]);
            [it.next().unwrap().unwrap(), it.next().unwrap().unwrap()]
        };
        assert_eq!(got[0].public_type(), PpiType::IEEE_8021Q);
        assert_eq!(got[0].value_u32(), Some(0x123));
        assert!(got[1].internal);
        assert_eq!(got[1].ppi_type, 1);
        assert_eq!(ppis(&area[..a + b]).count(), 2);

        // size larger than the area, size below the header, offset beyond size, a torn header.
        for (size, offset, len) in [(100u32, 12u32, a), (4, 12, a), (16, 20, a), (16, 12, 8)] {
            let mut bad = area;
            bad[..4].copy_from_slice(&size.to_le_bytes());
            bad[8..12].copy_from_slice(&offset.to_le_bytes());
            let mut it = ppis(&bad[..len]);
            assert!(matches!(
                it.next(),
                Some(Err(RndisError::BadPerPacketInfo { .. }))
            ));
            assert!(it.next().is_none());
        }
    }
}
