//! Building packets: into a caller's buffer, or straight into a ring through
//! [`RingProducer`], gathering descriptor, header and payload slices without a staging copy.

use zerocopy::IntoBytes;

use super::{
    gpa_range_pfn_count, GpaDirectHeader, GpaRangeHeader, PacketDescriptor, PacketError,
    PacketFlags, PacketType, TransferPageHeader, TransferPageRange, DESCRIPTOR_SIZE,
    MAX_PACKET_LEN,
};
use crate::mem::{RingMemory, PAGE_SIZE};
use crate::ring::{PacketWriter, RingError, RingProducer, Written, GATHER_PARTS};

/// A GPA range to send: `pfns` must hold exactly `ceil((byte_offset + byte_count) / 4096)`
/// page numbers and `byte_offset` must be below 4096 (as Linux's storvsc/netvsc send them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaRangeSpec<'a> {
    /// Bytes in the range (non-zero).
    pub byte_count: u32,
    /// Offset of the first byte in the first page.
    pub byte_offset: u32,
    /// Page numbers.
    pub pfns: &'a [u64],
}

impl GpaRangeSpec<'_> {
    fn validate(&self) -> Result<(), PacketError> {
        if self.byte_offset >= PAGE_SIZE as u32 {
            return Err(PacketError::BadRangeOffset(self.byte_offset));
        }
        if self.byte_count == 0 {
            return Err(PacketError::EmptyRange);
        }
        let need = gpa_range_pfn_count(self.byte_count, self.byte_offset);
        if need != self.pfns.len() as u64 {
            return Err(PacketError::PfnCountMismatch {
                need,
                have: self.pfns.len(),
            });
        }
        Ok(())
    }
}

/// Bytes of the GPA-direct header after the descriptor for `ranges`.
pub fn gpa_direct_header_len(ranges: &[GpaRangeSpec<'_>]) -> usize {
    ranges.iter().fold(8usize, |n, r| {
        n.saturating_add(8)
            .saturating_add(r.pfns.len().saturating_mul(8))
    })
}

/// Writes the GPA-direct header (after the descriptor) for `ranges` into `buf`; returns its length.
pub fn write_gpa_direct_header(
    buf: &mut [u8],
    ranges: &[GpaRangeSpec<'_>],
) -> Result<usize, PacketError> {
    let len = gpa_direct_header_len(ranges);
    let range_count = checked_range_count(ranges.len(), len)?;
    for r in ranges {
        r.validate()?;
    }
    let Some(out) = buf.get_mut(..len) else {
        return Err(PacketError::Truncated {
            have: buf.len(),
            len,
        });
    };
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        out[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(GpaDirectHeader {
        reserved: 0,
        range_count,
    }
    .as_bytes());
    for r in ranges {
        put(GpaRangeHeader {
            byte_count: r.byte_count,
            byte_offset: r.byte_offset,
        }
        .as_bytes());
        put(r.pfns.as_bytes());
    }
    Ok(len)
}

fn checked_range_count(count: usize, header_len: usize) -> Result<u32, PacketError> {
    let header = DESCRIPTOR_SIZE.saturating_add(header_len);
    match u32::try_from(count) {
        Ok(n) if header <= MAX_PACKET_LEN => Ok(n),
        _ => Err(PacketError::Unencodable {
            header,
            len: header,
        }),
    }
}

/// `(offset8, len8, len)` for a packet with `header_len` bytes after the descriptor.
fn encode_lengths(header_len: usize, payload_len: usize) -> Result<(u16, u16, usize), PacketError> {
    let header = DESCRIPTOR_SIZE.saturating_add(header_len);
    let raw = header.saturating_add(payload_len);
    let len = raw.saturating_add(7) & !7;
    let bad = PacketError::Unencodable { header, len: raw };
    if !header.is_multiple_of(8) || len > MAX_PACKET_LEN {
        return Err(bad);
    }
    Ok(((header / 8) as u16, (len / 8) as u16, len))
}

/// Builds a complete packet (descriptor, `header`, `payload`, zero padding) into `buf` and
/// returns its length (`len8 * 8`). `header` must be a multiple of 8 bytes.
pub fn build_packet(
    buf: &mut [u8],
    packet_type: PacketType,
    flags: PacketFlags,
    trans_id: u64,
    header: &[u8],
    payload: &[u8],
) -> Result<usize, PacketError> {
    let (offset8, len8, len) = encode_lengths(header.len(), payload.len())?;
    let Some(out) = buf.get_mut(..len) else {
        return Err(PacketError::Truncated {
            have: buf.len(),
            len,
        });
    };
    let desc = PacketDescriptor {
        packet_type,
        offset8,
        len8,
        flags: flags.bits(),
        trans_id,
    };
    let (d, rest) = out.split_at_mut(DESCRIPTOR_SIZE);
    d.copy_from_slice(desc.as_bytes());
    let (h, rest) = rest.split_at_mut(header.len());
    h.copy_from_slice(header);
    let (p, pad) = rest.split_at_mut(payload.len());
    p.copy_from_slice(payload);
    pad.fill(0);
    Ok(len)
}

fn total_len(parts: &[&[u8]]) -> usize {
    parts.iter().fold(0usize, |n, p| n.saturating_add(p.len()))
}

impl<M: RingMemory> RingProducer<M> {
    /// Writes a packet of any type: descriptor, `header` (a multiple of 8 bytes, the
    /// type-specific header), then the concatenated `payload` slices padded to 8.
    pub fn write_packet(
        &mut self,
        packet_type: PacketType,
        flags: PacketFlags,
        trans_id: u64,
        header: &[u8],
        payload: &[&[u8]],
    ) -> Result<Written, RingError> {
        // Descriptor, header, payload and padding in one gather write when they fit.
        if payload.len() + 3 < GATHER_PARTS {
            let payload_len = total_len(payload);
            let (offset8, len8, len) =
                encode_lengths(header.len(), payload_len).map_err(RingError::InvalidPacket)?;
            let desc = PacketDescriptor {
                packet_type,
                offset8,
                len8,
                flags: flags.bits(),
                trans_id,
            };
            let pad = len - (DESCRIPTOR_SIZE + header.len() + payload_len);
            let mut parts: [&[u8]; GATHER_PARTS] = [&[]; GATHER_PARTS];
            parts[0] = desc.as_bytes();
            parts[1] = header;
            parts[2..2 + payload.len()].copy_from_slice(payload);
            parts[2 + payload.len()] = &[0u8; 8][..pad];
            return self.write_raw(&parts[..payload.len() + 3]);
        }
        self.write_with(
            packet_type,
            flags,
            trans_id,
            header.len(),
            |w| w.put(header),
            payload,
        )
    }

    /// Writes an in-band data packet.
    pub fn write_inband(
        &mut self,
        trans_id: u64,
        flags: PacketFlags,
        payload: &[&[u8]],
    ) -> Result<Written, RingError> {
        self.write_packet(PacketType::INBAND, flags, trans_id, &[], payload)
    }

    /// Writes a completion for the request `trans_id`.
    pub fn write_completion(
        &mut self,
        trans_id: u64,
        payload: &[&[u8]],
    ) -> Result<Written, RingError> {
        self.write_packet(
            PacketType::COMPLETION,
            PacketFlags::empty(),
            trans_id,
            &[],
            payload,
        )
    }

    /// Writes a GPA-direct packet describing `ranges` of guest memory, with an in-band `payload`.
    pub fn write_gpa_direct(
        &mut self,
        trans_id: u64,
        flags: PacketFlags,
        ranges: &[GpaRangeSpec<'_>],
        payload: &[&[u8]],
    ) -> Result<Written, RingError> {
        let header_len = gpa_direct_header_len(ranges);
        let range_count =
            checked_range_count(ranges.len(), header_len).map_err(RingError::InvalidPacket)?;
        for r in ranges {
            r.validate().map_err(RingError::InvalidPacket)?;
        }
        let put_header = |w: &mut PacketWriter<'_, M>| {
            w.put(
                GpaDirectHeader {
                    reserved: 0,
                    range_count,
                }
                .as_bytes(),
            );
            for r in ranges {
                w.put(
                    GpaRangeHeader {
                        byte_count: r.byte_count,
                        byte_offset: r.byte_offset,
                    }
                    .as_bytes(),
                );
                w.put(r.pfns.as_bytes());
            }
        };
        self.write_with(
            PacketType::DATA_USING_GPA_DIRECT,
            flags,
            trans_id,
            header_len,
            put_header,
            payload,
        )
    }

    /// Writes a transfer-page packet referring to `ranges` of transfer page set `set_id`.
    pub fn write_transfer_pages(
        &mut self,
        trans_id: u64,
        flags: PacketFlags,
        set_id: u16,
        sender_owns_set: bool,
        ranges: &[TransferPageRange],
        payload: &[&[u8]],
    ) -> Result<Written, RingError> {
        let header_len = ranges.len().saturating_mul(8).saturating_add(8);
        let range_count =
            checked_range_count(ranges.len(), header_len).map_err(RingError::InvalidPacket)?;
        let fixed = TransferPageHeader {
            transfer_page_set_id: set_id,
            sender_owns_set: u8::from(sender_owns_set),
            reserved: 0,
            range_count,
        };
        let put_header = |w: &mut PacketWriter<'_, M>| {
            w.put(fixed.as_bytes());
            w.put(ranges.as_bytes());
        };
        self.write_with(
            PacketType::TRANSFER_PAGES,
            flags,
            trans_id,
            header_len,
            put_header,
            payload,
        )
    }

    fn write_with(
        &mut self,
        packet_type: PacketType,
        flags: PacketFlags,
        trans_id: u64,
        header_len: usize,
        put_header: impl FnOnce(&mut PacketWriter<'_, M>),
        payload: &[&[u8]],
    ) -> Result<Written, RingError> {
        let (offset8, len8, len) =
            encode_lengths(header_len, total_len(payload)).map_err(RingError::InvalidPacket)?;
        let desc = PacketDescriptor {
            packet_type,
            offset8,
            len8,
            flags: flags.bits(),
            trans_id,
        };
        let mut w = self.reserve(len)?;
        w.put(desc.as_bytes());
        put_header(&mut w);
        for part in payload {
            w.put(part);
        }
        let pad = w.remaining().min(8);
        w.put(&[0u8; 8][..pad]);
        w.commit()
    }
}
