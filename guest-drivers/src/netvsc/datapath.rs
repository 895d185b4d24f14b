//! The sans-I/O data path of netvsc: where frames may lie in the receive buffer
//! ([`ReceiveSections`], from the host's SEND_RECV_BUF_COMPLETE) and the checks every host→guest
//! transfer-page packet passes ([`parse_receive`]); the send-buffer section allocator
//! ([`SendSections`]); and the NVSP messages of a send and of a receive completion.
//!
//! Transaction ids: a data send's is its send-section index (below 2³²); control messages use
//! [`NVSP_TID`] and [`RNDIS_TID`] ranges, so a completion says by its id alone what it completes.
#![forbid(unsafe_code)]

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

use netvsp_protocol::nvsp::{
    MessageType, NvspMessage, NvspMessageRef, NvspStatus, RndisChannelType, SendRndisPacket,
    SendRndisPacketComplete, MAX_TRANSFER_PAGE_RANGES, MIN_SECTION_SIZE, RECEIVE_BUFFER_ID,
    RNDIS_PACKET_COMPLETE_LEN,
};
use vmbus::packet::{Packet, PacketKind, TransferPageRange};
use zerocopy::IntoBytes;

use super::NetvscError;

/// Transaction-id bit of the NVSP control messages (INIT, buffers); the low bits are the type.
pub const NVSP_TID: u64 = 1 << 63;
/// Transaction-id bit of RNDIS control sends; the low bits are the RNDIS request id.
pub const RNDIS_TID: u64 = 1 << 62;

/// Whether `trans_id` is a data send's (a send-section index).
pub fn is_data_tid(trans_id: u64) -> bool {
    trans_id >> 32 == 0
}

/// The receive buffer's one section, as the host described it and we checked it: `count`
/// sub-allocations of `size` bytes from `offset`, all inside the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveSections {
    /// Offset of the first sub-allocation (0, as Linux requires).
    pub offset: u32,
    /// Bytes of one sub-allocation.
    pub size: u32,
    /// Sub-allocations.
    pub count: u32,
    /// Bytes of the receive buffer.
    pub buffer_len: usize,
}

impl ReceiveSections {
    /// Checks the section table of a SEND_RECV_BUF_COMPLETE against a `buffer_len`-byte buffer:
    /// one section, at offset 0, of ≥ 68-byte sub-allocations, all of it (`end` included) inside
    /// the buffer.
    pub fn validate(
        section_count: u32,
        offset: u32,
        size: u32,
        count: u32,
        end: u32,
        buffer_len: usize,
    ) -> Result<Self, NetvscError> {
        let bad = NetvscError::BadReceiveSections {
            count: section_count,
            offset,
            size,
            slots: count,
            end,
            buffer: buffer_len,
        };
        let span = u64::from(size) * u64::from(count);
        if section_count != 1
            || offset != 0
            || size < MIN_SECTION_SIZE
            || count == 0
            || span > buffer_len as u64
            || end as usize > buffer_len
        {
            return Err(bad);
        }
        Ok(Self {
            offset,
            size,
            count,
            buffer_len,
        })
    }

    /// The buffer bytes of a transfer-page range, if it lies inside one sub-allocation.
    pub fn check_range(&self, range: TransferPageRange) -> Result<Range<usize>, NetvscError> {
        let out = NetvscError::RangeOutsideSections {
            offset: range.byte_offset,
            len: range.byte_count,
        };
        let start = u64::from(range.byte_offset);
        let end = start + u64::from(range.byte_count);
        let first = u64::from(self.offset);
        if range.byte_count == 0 || start < first {
            return Err(out);
        }
        let slot = (start - first) / u64::from(self.size);
        let slot_end = first + (slot + 1) * u64::from(self.size);
        if slot >= u64::from(self.count) || end > slot_end || end > self.buffer_len as u64 {
            return Err(out);
        }
        Ok(start as usize..end as usize)
    }
}

/// A host→guest transfer-page packet whose every range has been checked.
#[derive(Debug, Clone)]
pub struct ReceivePacket {
    /// The id the completion must carry.
    pub trans_id: u64,
    /// Data (frames) or control (RNDIS completions and indications).
    pub channel_type: RndisChannelType,
    /// The receive-buffer bytes of each RNDIS message, in order.
    pub ranges: Vec<Range<usize>>,
}

/// Checks a host→guest packet that must carry RNDIS messages: a transfer-page packet of the
/// receive buffer's set (0xCAFE), with 1..=562 ranges each inside one sub-allocation of
/// `sections`, and SEND_RNDIS_PKT as its NVSP payload.
pub fn parse_receive(
    packet: &Packet<'_>,
    sections: &ReceiveSections,
) -> Result<ReceivePacket, NetvscError> {
    let PacketKind::TransferPages(pages) = packet.kind else {
        return Err(NetvscError::UnexpectedPacket(packet.desc.packet_type));
    };
    if pages.transfer_page_set_id != RECEIVE_BUFFER_ID {
        return Err(NetvscError::BadTransferPages(
            "transfer page set is not the receive buffer",
        ));
    }
    if pages.is_empty() || pages.len() > MAX_TRANSFER_PAGE_RANGES {
        return Err(NetvscError::BadTransferPages("range count outside 1..=562"));
    }
    let nvsp = NvspMessageRef::parse(packet.payload)?;
    if nvsp.message_type != MessageType::SEND_RNDIS_PACKET {
        return Err(NetvscError::UnexpectedNvsp {
            expected: MessageType::SEND_RNDIS_PACKET,
            got: nvsp.message_type,
        });
    }
    let body: SendRndisPacket = nvsp.body_as()?;
    let ranges = pages
        .iter()
        .map(|r| sections.check_range(r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ReceivePacket {
        trans_id: packet.desc.trans_id,
        channel_type: RndisChannelType(body.channel_type.get()),
        ranges,
    })
}

/// The 8-byte completion of a receive packet (SEND_RNDIS_PKT_COMPLETE with `status`), as Linux
/// sends it.
pub fn receive_completion(status: NvspStatus) -> [u8; RNDIS_PACKET_COMPLETE_LEN] {
    let message = NvspMessage::new(
        MessageType::SEND_RNDIS_PACKET_COMPLETE,
        &SendRndisPacketComplete {
            status: status.0.into(),
        },
    );
    let mut out = [0u8; RNDIS_PACKET_COMPLETE_LEN];
    out.copy_from_slice(&message.as_bytes()[..RNDIS_PACKET_COMPLETE_LEN]);
    out
}

/// The status in a SEND_RNDIS_PKT_COMPLETE from the host.
pub fn send_completion_status(payload: &[u8]) -> Result<NvspStatus, NetvscError> {
    let nvsp = NvspMessageRef::parse(payload)?;
    if nvsp.message_type != MessageType::SEND_RNDIS_PACKET_COMPLETE {
        return Err(NetvscError::UnexpectedNvsp {
            expected: MessageType::SEND_RNDIS_PACKET_COMPLETE,
            got: nvsp.message_type,
        });
    }
    let body: SendRndisPacketComplete = nvsp.body_as()?;
    Ok(NvspStatus(body.status.get()))
}

/// SEND_RNDIS_PKT for `len` bytes of RNDIS message in send section `index` (data channel), or
/// for a control message outside the send buffer (`index = None`).
pub fn send_rndis_packet(index: Option<u32>, len: u32) -> NvspMessage {
    let (channel_type, index, size) = match index {
        Some(i) => (RndisChannelType::DATA, i, len),
        None => (
            RndisChannelType::CONTROL,
            netvsp_protocol::nvsp::INVALID_SECTION_INDEX,
            0,
        ),
    };
    NvspMessage::new(
        MessageType::SEND_RNDIS_PACKET,
        &SendRndisPacket {
            channel_type: channel_type.0.into(),
            send_buffer_section_index: index.into(),
            send_buffer_section_size: size.into(),
        },
    )
}

/// The send buffer cut into the host's sections, each free or carrying one frame until the host
/// completes its SEND_RNDIS_PKT.
#[derive(Debug, Clone)]
pub struct SendSections {
    size: u32,
    count: u32,
    /// One bit per section, set while in flight.
    busy: Vec<u64>,
    in_flight: u32,
    /// Where the next search starts (sections are used round-robin).
    next: u32,
}

impl SendSections {
    /// Sections of `size` bytes (the host's choice) in a `buffer_len`-byte buffer: at least one,
    /// each ≥ 68 bytes.
    pub fn new(size: u32, buffer_len: usize) -> Result<Self, NetvscError> {
        if size < MIN_SECTION_SIZE || size as usize > buffer_len {
            return Err(NetvscError::BadSendSection {
                size,
                buffer: buffer_len,
            });
        }
        let count = u32::try_from(buffer_len / size as usize).unwrap_or(u32::MAX);
        Ok(Self {
            size,
            count,
            busy: vec![0; (count as usize).div_ceil(64)],
            in_flight: 0,
            next: 0,
        })
    }

    /// Bytes of one section.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Sections.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Sections carrying a frame the host has not completed.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Whether a section is free.
    pub fn has_free(&self) -> bool {
        self.in_flight < self.count
    }

    /// Takes a free section.
    pub fn alloc(&mut self) -> Option<u32> {
        if !self.has_free() {
            return None;
        }
        for step in 0..self.count {
            let i = (self.next + step) % self.count;
            let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
            if self.busy[word] & bit == 0 {
                self.busy[word] |= bit;
                self.in_flight += 1;
                self.next = (i + 1) % self.count;
                return Some(i);
            }
        }
        None
    }

    /// Returns section `index` (its send completed). A section not in flight is a forged or
    /// repeated completion.
    pub fn free(&mut self, index: u32) -> Result<(), NetvscError> {
        let unknown = NetvscError::UnknownTransaction(u64::from(index));
        if index >= self.count {
            return Err(unknown);
        }
        let (word, bit) = ((index / 64) as usize, 1u64 << (index % 64));
        if self.busy[word] & bit == 0 {
            return Err(unknown);
        }
        self.busy[word] &= !bit;
        self.in_flight -= 1;
        Ok(())
    }

    /// Byte offset of section `index` in the send buffer.
    pub fn offset(&self, index: u32) -> usize {
        index as usize * self.size as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmbus::packet::PacketFlags;
    use vmbus::ring::{initialize_control_page, RingConsumer, RingProducer};

    fn sections() -> ReceiveSections {
        ReceiveSections::validate(1, 0, 1728, 4, 4 * 1728, 8192).unwrap()
    }

    fn range(byte_offset: u32, byte_count: u32) -> TransferPageRange {
        TransferPageRange {
            byte_count,
            byte_offset,
        }
    }

    #[test]
    fn section_tables_outside_the_buffer_or_unlike_linux_are_refused() {
        assert!(ReceiveSections::validate(1, 0, 1728, 4, 6912, 8192).is_ok());
        for (n, off, size, count, end) in [
            (2, 0, 1728, 4, 6912),         // two sections
            (1, 64, 1728, 4, 6912),        // not at 0
            (1, 0, 67, 4, 268),            // sub-allocation too small
            (1, 0, 1728, 0, 0),            // none
            (1, 0, 1728, 5, 8640),         // beyond the buffer
            (1, 0, 1728, 4, 8193),         // end beyond the buffer
            (1, 0, u32::MAX, u32::MAX, 0), // product overflows u32
        ] {
            let err = ReceiveSections::validate(n, off, size, count, end, 8192).unwrap_err();
            assert!(
                matches!(err, NetvscError::BadReceiveSections { .. }),
                "{n} {off} {size} {count} {end}: {err:?}"
            );
        }
    }

    #[test]
    fn a_range_must_stay_inside_one_sub_allocation() {
        let s = sections();
        assert_eq!(s.check_range(range(0, 1728)).unwrap(), 0..1728);
        assert_eq!(s.check_range(range(1728 * 3 + 8, 100)).unwrap(), 5192..5292);
        for (off, len) in [
            (0, 0),               // empty
            (1700, 100),          // crosses into the next slot
            (1728 * 4, 10),       // past the last slot
            (8000, 300),          // past the buffer
            (u32::MAX, u32::MAX), // overflow
        ] {
            assert_eq!(
                s.check_range(range(off, len)),
                Err(NetvscError::RangeOutsideSections { offset: off, len })
            );
        }
    }

    fn transfer_packet(set_id: u16, ranges: &[TransferPageRange], nvsp: &[u8]) -> Vec<u8> {
        let ring = vmbus::mem::AlignedRingBuffer::for_ring(16384);
        initialize_control_page(&ring, 1).unwrap();
        let mut producer = RingProducer::new(&ring).unwrap();
        let _ = producer
            .write_transfer_pages(
                9,
                PacketFlags::COMPLETION_REQUESTED,
                set_id,
                false,
                ranges,
                &[nvsp],
            )
            .unwrap();
        let mut consumer = RingConsumer::new(&ring).unwrap();
        let mut buf = vec![0u8; 16384];
        let info = consumer.read_packet(&mut buf).unwrap().unwrap().info;
        buf.truncate(info.len);
        buf
    }

    #[test]
    fn receive_packets_are_checked_before_any_range_is_used() {
        let s = sections();
        let rndis = send_rndis_packet(Some(0), 0);
        let ok = transfer_packet(
            RECEIVE_BUFFER_ID,
            &[range(0, 60), range(1728, 90)],
            rndis.as_wire(),
        );
        let got = parse_receive(&Packet::parse(&ok).unwrap(), &s).unwrap();
        assert_eq!(got.trans_id, 9);
        assert_eq!(got.channel_type, RndisChannelType::DATA);
        assert_eq!(got.ranges, [0..60, 1728..1818]);

        let wrong_set = transfer_packet(0x1234, &[range(0, 60)], rndis.as_wire());
        assert!(matches!(
            parse_receive(&Packet::parse(&wrong_set).unwrap(), &s),
            Err(NetvscError::BadTransferPages(_))
        ));
        let none = transfer_packet(RECEIVE_BUFFER_ID, &[], rndis.as_wire());
        assert!(matches!(
            parse_receive(&Packet::parse(&none).unwrap(), &s),
            Err(NetvscError::BadTransferPages(_))
        ));
        let outside = transfer_packet(
            RECEIVE_BUFFER_ID,
            &[range(0, 60), range(8000, 60)],
            rndis.as_wire(),
        );
        assert!(matches!(
            parse_receive(&Packet::parse(&outside).unwrap(), &s),
            Err(NetvscError::RangeOutsideSections { offset: 8000, .. })
        ));
        let init = NvspMessage::new(MessageType::INIT, &[0u8; 8]);
        let not_rndis = transfer_packet(RECEIVE_BUFFER_ID, &[range(0, 60)], init.as_wire());
        assert!(matches!(
            parse_receive(&Packet::parse(&not_rndis).unwrap(), &s),
            Err(NetvscError::UnexpectedNvsp { .. })
        ));
        let short = transfer_packet(RECEIVE_BUFFER_ID, &[range(0, 60)], &rndis.as_wire()[..8]);
        assert!(matches!(
            parse_receive(&Packet::parse(&short).unwrap(), &s),
            Err(NetvscError::Nvsp(_))
        ));
    }

    #[test]
    fn send_sections_cycle_and_refuse_forged_completions() {
        let mut s = SendSections::new(6144, 3 * 6144 + 100).unwrap();
        assert_eq!(s.count(), 3);
        assert_eq!(
            [s.alloc(), s.alloc(), s.alloc(), s.alloc()],
            [Some(0), Some(1), Some(2), None]
        );
        assert_eq!(s.offset(2), 12288);
        s.free(1).unwrap();
        assert_eq!(s.free(1), Err(NetvscError::UnknownTransaction(1)), "twice");
        assert_eq!(
            s.free(3),
            Err(NetvscError::UnknownTransaction(3)),
            "no such section"
        );
        assert_eq!(s.alloc(), Some(1));
        assert_eq!(s.in_flight(), 3);
        assert!(matches!(
            SendSections::new(67, 8192),
            Err(NetvscError::BadSendSection { .. })
        ));
        assert!(matches!(
            SendSections::new(8193, 8192),
            Err(NetvscError::BadSendSection { .. })
        ));
    }

    #[test]
    fn completions_have_linux_layout() {
        assert_eq!(
            receive_completion(NvspStatus::SUCCESS),
            [108, 0, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(
            send_completion_status(&receive_completion(NvspStatus::FAIL)).unwrap(),
            NvspStatus::FAIL
        );
        assert!(send_completion_status(&[2, 0, 0, 0, 1, 0, 0, 0]).is_err());
        let control = send_rndis_packet(None, 0);
        assert_eq!(
            &control.as_wire()[..16],
            &[107, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]
        );
        assert!(is_data_tid(5) && !is_data_tid(NVSP_TID | 1) && !is_data_tid(RNDIS_TID | 1));
    }
}
