//! VMBus packets: the 16-byte descriptor every ring packet starts with, the packet types, and
//! the type-specific headers of GPA-direct and transfer-page packets.
//!
//! This module owns the wire structs (zerocopy, `#[repr(C)]`, little-endian as on x86/arm64),
//! [`Packet::parse`] — validating a packet that a [`RingConsumer`](crate::ring::RingConsumer)
//! copied out of shared memory, borrowing from that copy — and building packets, into a buffer
//! ([`build`]) or straight into a ring ([`RingProducer::write_packet`](crate::ring::RingProducer::write_packet)
//! and friends, gathering from several slices without an intermediate copy).

mod build;

pub use build::{build_packet, gpa_direct_header_len, write_gpa_direct_header, GpaRangeSpec};

use zerocopy::byteorder::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::mem::PAGE_SIZE;

const _: () = assert!(
    cfg!(target_endian = "little"),
    "VMBus wire structs are little-endian"
);

/// Size of [`PacketDescriptor`].
pub const DESCRIPTOR_SIZE: usize = 16;
/// Largest packet length expressible in the 16-bit `len8` field.
pub const MAX_PACKET_LEN: usize = u16::MAX as usize * 8;

/// VMBus packet type (`VM_PKT_*`); open so that any value from a peer is representable.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct PacketType(pub u16);

impl PacketType {
    /// `VM_PKT_INVALID`.
    pub const INVALID: Self = Self(0);
    /// `VM_PKT_SYNCH`.
    pub const SYNCH: Self = Self(1);
    /// `VM_PKT_ADD_XFER_PAGESET`.
    pub const ADD_TRANSFER_PAGE_SET: Self = Self(2);
    /// `VM_PKT_RM_XFER_PAGESET`.
    pub const REMOVE_TRANSFER_PAGE_SET: Self = Self(3);
    /// `VM_PKT_ESTABLISH_GPADL`.
    pub const ESTABLISH_GPADL: Self = Self(4);
    /// `VM_PKT_TEARDOWN_GPADL`.
    pub const TEARDOWN_GPADL: Self = Self(5);
    /// `VM_PKT_DATA_INBAND`: payload carried in the ring.
    pub const INBAND: Self = Self(6);
    /// `VM_PKT_DATA_USING_XFER_PAGES`: payload in a transfer page set.
    pub const TRANSFER_PAGES: Self = Self(7);
    /// `VM_PKT_DATA_USING_GPADL`.
    pub const GPADL: Self = Self(8);
    /// `VM_PKT_DATA_USING_GPA_DIRECT`: payload described by guest page numbers.
    pub const DATA_USING_GPA_DIRECT: Self = Self(9);
    /// `VM_PKT_CANCEL_REQUEST`.
    pub const CANCEL_REQUEST: Self = Self(10);
    /// `VM_PKT_COMP`: completion of a request, same `trans_id`.
    pub const COMPLETION: Self = Self(0xB);
    /// `VM_PKT_DATA_USING_ADDITIONAL_PKT`.
    pub const DATA_USING_ADDITIONAL_PACKET: Self = Self(12);
    /// `VM_PKT_ADDITIONAL_DATA`.
    pub const ADDITIONAL_DATA: Self = Self(13);

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::INVALID => "INVALID",
            Self::SYNCH => "SYNCH",
            Self::ADD_TRANSFER_PAGE_SET => "ADD_TRANSFER_PAGE_SET",
            Self::REMOVE_TRANSFER_PAGE_SET => "REMOVE_TRANSFER_PAGE_SET",
            Self::ESTABLISH_GPADL => "ESTABLISH_GPADL",
            Self::TEARDOWN_GPADL => "TEARDOWN_GPADL",
            Self::INBAND => "INBAND",
            Self::TRANSFER_PAGES => "TRANSFER_PAGES",
            Self::GPADL => "GPADL",
            Self::DATA_USING_GPA_DIRECT => "DATA_USING_GPA_DIRECT",
            Self::CANCEL_REQUEST => "CANCEL_REQUEST",
            Self::COMPLETION => "COMPLETION",
            Self::DATA_USING_ADDITIONAL_PACKET => "DATA_USING_ADDITIONAL_PACKET",
            Self::ADDITIONAL_DATA => "ADDITIONAL_DATA",
            _ => return None,
        })
    }
}

impl core::fmt::Debug for PacketType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(name) => write!(f, "PacketType::{name}"),
            None => write!(f, "PacketType({:#x})", self.0),
        }
    }
}

bitflags::bitflags! {
    /// Descriptor `flags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct PacketFlags: u16 {
        /// `VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED`: the receiver must send a completion.
        const COMPLETION_REQUESTED = 1;
    }
}

/// `struct vmpacket_descriptor`: starts every packet in a ring.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct PacketDescriptor {
    /// Packet type.
    pub packet_type: PacketType,
    /// Header length (descriptor + type-specific header) in 8-byte units.
    pub offset8: u16,
    /// Total packet length (header + padded payload, no trailer) in 8-byte units.
    pub len8: u16,
    /// [`PacketFlags`] bits.
    pub flags: u16,
    /// Transaction id, echoed by the completion.
    pub trans_id: u64,
}

impl PacketDescriptor {
    /// Reinterprets 16 wire bytes.
    pub fn from_wire(raw: [u8; DESCRIPTOR_SIZE]) -> Self {
        zerocopy::transmute!(raw)
    }

    /// Known flag bits (unknown bits dropped).
    pub fn packet_flags(&self) -> PacketFlags {
        PacketFlags::from_bits_truncate(self.flags)
    }
}

/// GPA-direct header after the descriptor: `{u32 reserved, u32 rangecount}`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct GpaDirectHeader {
    /// Reserved, zero.
    pub reserved: u32,
    /// Number of ranges that follow.
    pub range_count: u32,
}

/// Head of one GPA range (`struct hv_mpb_array`), followed by `pfn_count` `u64` page numbers.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct GpaRangeHeader {
    /// Bytes in the range.
    pub byte_count: u32,
    /// Offset of the first byte in the first page (`< 4096`).
    pub byte_offset: u32,
}

/// Transfer-page header after the descriptor (`vmtransfer_page_packet_header` minus descriptor).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct TransferPageHeader {
    /// Transfer page set id.
    pub transfer_page_set_id: u16,
    /// Non-zero if the sender owns the set.
    pub sender_owns_set: u8,
    /// Reserved.
    pub reserved: u8,
    /// Number of [`TransferPageRange`]s that follow.
    pub range_count: u32,
}

/// One range in a transfer page set (`struct vmtransfer_page_range`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct TransferPageRange {
    /// Bytes in the range.
    pub byte_count: u32,
    /// Offset in the transfer page set.
    pub byte_offset: u32,
}

/// Number of pages a GPA range `{byte_count, byte_offset}` spans (`HVPFN_UP(offset + count)`).
pub fn gpa_range_pfn_count(byte_count: u32, byte_offset: u32) -> u64 {
    (u64::from(byte_offset) + u64::from(byte_count)).div_ceil(PAGE_SIZE as u64)
}

/// Errors parsing a packet from the peer, or building one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Fewer bytes than the descriptor says (or than a descriptor).
    #[error("packet buffer of {have} bytes is shorter than its length {len}")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Length required.
        len: usize,
    },
    /// `offset8`/`len8` are inconsistent.
    #[error("packet data offset {offset} outside 16..={len}")]
    BadDataOffset {
        /// `offset8 * 8`.
        offset: usize,
        /// `len8 * 8`.
        len: usize,
    },
    /// The type-specific header is shorter than its fixed part or than its ranges need.
    #[error("{packet_type:?} header of {have} bytes cannot hold {need} bytes")]
    HeaderTooShort {
        /// The packet type.
        packet_type: PacketType,
        /// Header bytes after the descriptor.
        have: usize,
        /// Bytes needed.
        need: u64,
    },
    /// A GPA range's offset is not inside its first page.
    #[error("GPA range byte offset {0:#x} is not below 4096")]
    BadRangeOffset(u32),
    /// A GPA range has zero length.
    #[error("empty GPA range")]
    EmptyRange,
    /// A GPA range's pfn list does not match `ceil((offset + count) / 4096)` (building).
    #[error("GPA range needs {need} PFNs, {have} given")]
    PfnCountMismatch {
        /// PFNs required.
        need: u64,
        /// PFNs given.
        have: usize,
    },
    /// The packet exceeds the 16-bit length fields, or the header is not a multiple of 8.
    #[error("packet of {header} header and {len} total bytes cannot be encoded")]
    Unencodable {
        /// Header bytes including the descriptor.
        header: usize,
        /// Total bytes.
        len: usize,
    },
}

/// A validated packet borrowing from a buffer the consumer copied out of the ring.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// The descriptor.
    pub desc: PacketDescriptor,
    /// The type-specific part.
    pub kind: PacketKind<'a>,
    /// Bytes between the descriptor and the data offset (the raw type-specific header).
    pub header: &'a [u8],
    /// Bytes from the data offset to `len8 * 8` (payload including its padding to 8).
    pub payload: &'a [u8],
}

/// The type-specific part of a [`Packet`].
#[derive(Debug, Clone, Copy)]
pub enum PacketKind<'a> {
    /// [`PacketType::INBAND`].
    InBand,
    /// [`PacketType::COMPLETION`].
    Completion,
    /// [`PacketType::DATA_USING_GPA_DIRECT`].
    GpaDirect(GpaRanges<'a>),
    /// [`PacketType::TRANSFER_PAGES`].
    TransferPages(TransferPages<'a>),
    /// Any other type; see [`Packet::header`].
    Other,
}

/// The validated ranges of a GPA-direct packet.
#[derive(Debug, Clone, Copy)]
pub struct GpaRanges<'a> {
    count: u32,
    /// Exactly the bytes of the `count` ranges (heads and PFNs).
    bytes: &'a [u8],
}

/// One GPA range of a received packet.
#[derive(Debug, Clone, Copy)]
pub struct GpaRange<'a> {
    /// Bytes in the range.
    pub byte_count: u32,
    /// Offset of the first byte in the first page (`< 4096`).
    pub byte_offset: u32,
    /// Page numbers, `ceil((byte_offset + byte_count) / 4096)` of them.
    pub pfns: &'a [U64],
}

impl GpaRange<'_> {
    /// Page number `i`.
    pub fn pfn(&self, i: usize) -> Option<u64> {
        self.pfns.get(i).map(|p| p.get())
    }
}

impl<'a> GpaRanges<'a> {
    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether there are no ranges.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Sum of the ranges' byte counts.
    pub fn total_bytes(&self) -> u64 {
        self.iter().map(|r| u64::from(r.byte_count)).sum()
    }

    /// Iterates over the ranges.
    pub fn iter(&self) -> impl Iterator<Item = GpaRange<'a>> + 'a {
        let mut rest = self.bytes;
        (0..self.count).map_while(move |_| {
            let (r, tail) = parse_gpa_range(rest).ok()?;
            rest = tail;
            Some(r)
        })
    }
}

/// Parses one range from the front of `bytes`, returning it and the rest.
fn parse_gpa_range(bytes: &[u8]) -> Result<(GpaRange<'_>, &[u8]), PacketError> {
    let too_short = |need| PacketError::HeaderTooShort {
        packet_type: PacketType::DATA_USING_GPA_DIRECT,
        have: bytes.len(),
        need,
    };
    let (head, rest) = GpaRangeHeader::read_from_prefix(bytes).map_err(|_| too_short(8))?;
    if head.byte_offset >= PAGE_SIZE as u32 {
        return Err(PacketError::BadRangeOffset(head.byte_offset));
    }
    if head.byte_count == 0 {
        return Err(PacketError::EmptyRange);
    }
    let count = gpa_range_pfn_count(head.byte_count, head.byte_offset);
    // count <= 2^20 + 1, so the product cannot overflow.
    let need = count * 8;
    if need > rest.len() as u64 {
        return Err(too_short(need + 8));
    }
    let (pfn_bytes, rest) = rest.split_at(need as usize);
    let pfns = <[U64]>::ref_from_bytes(pfn_bytes).map_err(|_| too_short(need + 8))?;
    Ok((
        GpaRange {
            byte_count: head.byte_count,
            byte_offset: head.byte_offset,
            pfns,
        },
        rest,
    ))
}

/// The validated header of a transfer-page packet.
#[derive(Debug, Clone, Copy)]
pub struct TransferPages<'a> {
    /// Transfer page set id.
    pub transfer_page_set_id: u16,
    /// Whether the sender owns the set.
    pub sender_owns_set: bool,
    ranges: &'a [u8],
}

impl TransferPages<'_> {
    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.ranges.len() / 8
    }

    /// Whether there are no ranges.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Iterates over the ranges.
    pub fn iter(&self) -> impl Iterator<Item = TransferPageRange> + '_ {
        self.ranges
            .chunks_exact(8)
            .filter_map(|c| TransferPageRange::read_from_bytes(c).ok())
    }
}

impl<'a> Packet<'a> {
    /// Validates the packet at the start of `bytes` (the first `len8 * 8` bytes are used).
    ///
    /// Every length and count comes from the peer and is checked against the bytes present;
    /// nothing here can panic or overflow.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PacketError> {
        let (desc, _) =
            PacketDescriptor::read_from_prefix(bytes).map_err(|_| PacketError::Truncated {
                have: bytes.len(),
                len: DESCRIPTOR_SIZE,
            })?;
        let len = usize::from(desc.len8) * 8;
        let offset = usize::from(desc.offset8) * 8;
        let Some(packet) = bytes.get(..len) else {
            return Err(PacketError::Truncated {
                have: bytes.len(),
                len,
            });
        };
        if offset < DESCRIPTOR_SIZE || offset > len {
            return Err(PacketError::BadDataOffset { offset, len });
        }
        let header = &packet[DESCRIPTOR_SIZE..offset];
        let payload = &packet[offset..];
        let kind = match desc.packet_type {
            PacketType::INBAND => PacketKind::InBand,
            PacketType::COMPLETION => PacketKind::Completion,
            PacketType::DATA_USING_GPA_DIRECT => PacketKind::GpaDirect(parse_gpa_direct(header)?),
            PacketType::TRANSFER_PAGES => PacketKind::TransferPages(parse_transfer_pages(header)?),
            _ => PacketKind::Other,
        };
        Ok(Self {
            desc,
            kind,
            header,
            payload,
        })
    }
}

fn parse_gpa_direct(header: &[u8]) -> Result<GpaRanges<'_>, PacketError> {
    let (fixed, mut rest) =
        GpaDirectHeader::read_from_prefix(header).map_err(|_| PacketError::HeaderTooShort {
            packet_type: PacketType::DATA_USING_GPA_DIRECT,
            have: header.len(),
            need: 8,
        })?;
    let ranges_start = rest;
    // Each range consumes at least 16 bytes, so this loop ends within header.len() / 16 steps
    // whatever range_count says.
    for _ in 0..fixed.range_count {
        let (_, tail) = parse_gpa_range(rest)?;
        rest = tail;
    }
    let used = ranges_start.len() - rest.len();
    // Trailing header bytes are allowed (older Linux sends a fixed-size PFN array).
    Ok(GpaRanges {
        count: fixed.range_count,
        bytes: &ranges_start[..used],
    })
}

fn parse_transfer_pages(header: &[u8]) -> Result<TransferPages<'_>, PacketError> {
    let too_short = |need| PacketError::HeaderTooShort {
        packet_type: PacketType::TRANSFER_PAGES,
        have: header.len(),
        need,
    };
    let (fixed, rest) = TransferPageHeader::read_from_prefix(header).map_err(|_| too_short(8))?;
    let need = u64::from(fixed.range_count) * 8;
    if need > rest.len() as u64 {
        return Err(too_short(need + 8));
    }
    Ok(TransferPages {
        transfer_page_set_id: fixed.transfer_page_set_id,
        sender_owns_set: fixed.sender_owns_set != 0,
        ranges: &rest[..need as usize],
    })
}

#[cfg(test)]
mod tests;
