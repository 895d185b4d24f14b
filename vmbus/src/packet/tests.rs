//! Wire-layout, parsing and building tests for packets.

use super::*;
use crate::mem::AlignedRingBuffer;
use crate::ring::{
    initialize_control_page, RingConsumer, RingError, RingProducer, FEATURE_PENDING_SEND_SIZE,
};
use alloc::vec;
use alloc::vec::Vec;
use core::mem::{offset_of, size_of};

#[test]
fn wire_struct_sizes_and_offsets() {
    assert_eq!(size_of::<PacketDescriptor>(), DESCRIPTOR_SIZE);
    assert_eq!(offset_of!(PacketDescriptor, packet_type), 0);
    assert_eq!(offset_of!(PacketDescriptor, offset8), 2);
    assert_eq!(offset_of!(PacketDescriptor, len8), 4);
    assert_eq!(offset_of!(PacketDescriptor, flags), 6);
    assert_eq!(offset_of!(PacketDescriptor, trans_id), 8);
    assert_eq!(size_of::<GpaDirectHeader>(), 8);
    assert_eq!(offset_of!(GpaDirectHeader, reserved), 0);
    assert_eq!(offset_of!(GpaDirectHeader, range_count), 4);
    assert_eq!(size_of::<GpaRangeHeader>(), 8);
    assert_eq!(offset_of!(GpaRangeHeader, byte_count), 0);
    assert_eq!(offset_of!(GpaRangeHeader, byte_offset), 4);
    assert_eq!(size_of::<TransferPageHeader>(), 8);
    assert_eq!(offset_of!(TransferPageHeader, transfer_page_set_id), 0);
    assert_eq!(offset_of!(TransferPageHeader, sender_owns_set), 2);
    assert_eq!(offset_of!(TransferPageHeader, reserved), 3);
    assert_eq!(offset_of!(TransferPageHeader, range_count), 4);
    assert_eq!(size_of::<TransferPageRange>(), 8);
    assert_eq!(offset_of!(TransferPageRange, byte_count), 0);
    assert_eq!(offset_of!(TransferPageRange, byte_offset), 4);
    assert_eq!(size_of::<PacketType>(), 2);
}

#[test]
fn packet_type_values_match_hyperv_h() {
    let values = [
        (PacketType::INBAND, 6),
        (PacketType::TRANSFER_PAGES, 7),
        (PacketType::GPADL, 8),
        (PacketType::DATA_USING_GPA_DIRECT, 9),
        (PacketType::CANCEL_REQUEST, 10),
        (PacketType::COMPLETION, 0xB),
    ];
    for (t, v) in values {
        assert_eq!(t.0, v);
    }
    assert_eq!(PacketFlags::COMPLETION_REQUESTED.bits(), 1);
    assert_eq!(alloc::format!("{:?}", PacketType(0x77)), "PacketType(0x77)");
    assert_eq!(
        alloc::format!("{:?}", PacketType::COMPLETION),
        "PacketType::COMPLETION"
    );
}

#[test]
fn descriptor_bytes_are_little_endian() {
    let mut buf = [0u8; 32];
    let len = build_packet(
        &mut buf,
        PacketType::INBAND,
        PacketFlags::COMPLETION_REQUESTED,
        0x0102_0304_0506_0708,
        &[],
        b"hi",
    )
    .unwrap();
    assert_eq!(len, 24);
    assert_eq!(
        &buf[..16],
        &[6, 0, 2, 0, 3, 0, 1, 0, 8, 7, 6, 5, 4, 3, 2, 1]
    );
    assert_eq!(&buf[16..24], b"hi\0\0\0\0\0\0");
    let p = Packet::parse(&buf).unwrap();
    assert!(matches!(p.kind, PacketKind::InBand));
    assert_eq!(p.payload, b"hi\0\0\0\0\0\0");
    assert!(p.header.is_empty());
}

#[test]
fn build_rejects_unencodable() {
    let mut buf = vec![0u8; 1 << 20];
    assert!(matches!(
        build_packet(
            &mut buf,
            PacketType::INBAND,
            PacketFlags::empty(),
            0,
            &[0; 4],
            &[]
        ),
        Err(PacketError::Unencodable { header: 20, .. })
    ));
    assert!(matches!(
        build_packet(
            &mut buf,
            PacketType::INBAND,
            PacketFlags::empty(),
            0,
            &[],
            &vec![0; MAX_PACKET_LEN]
        ),
        Err(PacketError::Unencodable { .. })
    ));
    assert_eq!(
        build_packet(
            &mut buf[..20],
            PacketType::INBAND,
            PacketFlags::empty(),
            0,
            &[],
            b"x"
        ),
        Err(PacketError::Truncated { have: 20, len: 24 })
    );
}

#[test]
fn pfn_count_follows_offset_and_length() {
    assert_eq!(gpa_range_pfn_count(1, 0), 1);
    assert_eq!(gpa_range_pfn_count(4096, 0), 1);
    assert_eq!(gpa_range_pfn_count(4096, 1), 2);
    assert_eq!(gpa_range_pfn_count(4097, 0), 2);
    assert_eq!(gpa_range_pfn_count(1, 4095), 1);
    assert_eq!(gpa_range_pfn_count(2, 4095), 2);
    assert_eq!(gpa_range_pfn_count(u32::MAX, 4095), (1 << 20) + 1);
}

fn gpa_packet(ranges: &[GpaRangeSpec<'_>], payload: &[u8]) -> Vec<u8> {
    let mut header = vec![0u8; gpa_direct_header_len(ranges)];
    write_gpa_direct_header(&mut header, ranges).unwrap();
    let mut buf = vec![0u8; 16 + header.len() + payload.len() + 8];
    let len = build_packet(
        &mut buf,
        PacketType::DATA_USING_GPA_DIRECT,
        PacketFlags::COMPLETION_REQUESTED,
        5,
        &header,
        payload,
    )
    .unwrap();
    buf.truncate(len);
    buf
}

#[test]
fn gpa_direct_roundtrip() {
    let pfns_a = [0x1000, 0x1001, 0x2000];
    let pfns_b = [0x42];
    let ranges = [
        GpaRangeSpec {
            byte_count: 8192,
            byte_offset: 512,
            pfns: &pfns_a,
        },
        GpaRangeSpec {
            byte_count: 100,
            byte_offset: 0,
            pfns: &pfns_b,
        },
    ];
    let bytes = gpa_packet(&ranges, &[9; 64]);
    // 16 descriptor + 8 header + (8 + 24) + (8 + 8) = 72 = offset8 9.
    assert_eq!(u16::from_le_bytes([bytes[2], bytes[3]]), 9);
    let p = Packet::parse(&bytes).unwrap();
    let PacketKind::GpaDirect(r) = p.kind else {
        panic!("{:?}", p.kind)
    };
    assert_eq!(r.len(), 2);
    assert_eq!(r.total_bytes(), 8292);
    let got: Vec<(u32, u32, Vec<u64>)> = r
        .iter()
        .map(|g| {
            (
                g.byte_count,
                g.byte_offset,
                g.pfns.iter().map(|p| p.get()).collect(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [(8192, 512, pfns_a.to_vec()), (100, 0, pfns_b.to_vec())]
    );
    assert_eq!(r.iter().next().unwrap().pfn(2), Some(0x2000));
    assert_eq!(p.payload, &[9; 64]);
}

#[test]
fn gpa_direct_allows_trailing_header_bytes() {
    // Older Linux storvsc sends a fixed-size PFN array larger than the range needs.
    let mut header = vec![0u8; 8 + 8 + 8 * 4];
    header[4] = 1; // range_count
    header[8] = 16; // byte_count 16, byte_offset 0: one PFN
    header[16] = 0x77;
    let mut buf = vec![0u8; 128];
    let len = build_packet(
        &mut buf,
        PacketType::DATA_USING_GPA_DIRECT,
        PacketFlags::empty(),
        1,
        &header,
        &[],
    )
    .unwrap();
    let p = Packet::parse(&buf[..len]).unwrap();
    let PacketKind::GpaDirect(r) = p.kind else {
        panic!()
    };
    assert_eq!(r.iter().map(|g| g.pfn(0)).collect::<Vec<_>>(), [Some(0x77)]);
}

fn gpa_with_header(header: &[u8]) -> Result<(), PacketError> {
    let mut buf = vec![0u8; 16 + header.len()];
    let len = build_packet(
        &mut buf,
        PacketType::DATA_USING_GPA_DIRECT,
        PacketFlags::empty(),
        1,
        header,
        &[],
    )
    .unwrap();
    Packet::parse(&buf[..len]).map(|_| ())
}

fn header_words(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[test]
fn gpa_direct_hostile_headers() {
    assert!(matches!(
        gpa_with_header(&[]),
        Err(PacketError::HeaderTooShort {
            have: 0,
            need: 8,
            ..
        })
    ));
    // range_count says 1 but no range follows.
    assert!(matches!(
        gpa_with_header(&header_words(&[0, 1])),
        Err(PacketError::HeaderTooShort { .. })
    ));
    // Huge range_count, few bytes: bounded by the header, not by the count.
    assert!(matches!(
        gpa_with_header(&header_words(&[0, u32::MAX, 8, 0, 1, 0])),
        Err(PacketError::HeaderTooShort { .. })
    ));
    // Offset outside the first page.
    assert_eq!(
        gpa_with_header(&header_words(&[0, 1, 8, 4096, 1, 0])),
        Err(PacketError::BadRangeOffset(4096))
    );
    // Empty range.
    assert_eq!(
        gpa_with_header(&header_words(&[0, 1, 0, 0, 1, 0])),
        Err(PacketError::EmptyRange)
    );
    // Needs 2 PFNs (offset 4095 + 2 bytes), only 1 present.
    assert!(matches!(
        gpa_with_header(&header_words(&[0, 1, 2, 4095, 1, 0])),
        Err(PacketError::HeaderTooShort { .. })
    ));
    // u32::MAX bytes needs 2^20 PFNs: no overflow, just too short.
    assert!(matches!(
        gpa_with_header(&header_words(&[0, 1, u32::MAX, 4095, 1, 0])),
        Err(PacketError::HeaderTooShort { .. })
    ));
    // Zero ranges is a valid (if useless) packet.
    assert!(gpa_with_header(&header_words(&[0, 0])).is_ok());
}

#[test]
fn gpa_spec_validation() {
    let pfn = [1u64];
    let mut buf = [0u8; 64];
    let bad = |spec: GpaRangeSpec<'_>| write_gpa_direct_header(&mut [0u8; 64], &[spec]);
    assert_eq!(
        bad(GpaRangeSpec {
            byte_count: 1,
            byte_offset: 4096,
            pfns: &pfn
        }),
        Err(PacketError::BadRangeOffset(4096))
    );
    assert_eq!(
        bad(GpaRangeSpec {
            byte_count: 0,
            byte_offset: 0,
            pfns: &pfn
        }),
        Err(PacketError::EmptyRange)
    );
    assert_eq!(
        bad(GpaRangeSpec {
            byte_count: 4096,
            byte_offset: 1,
            pfns: &pfn
        }),
        Err(PacketError::PfnCountMismatch { need: 2, have: 1 })
    );
    assert_eq!(
        write_gpa_direct_header(
            &mut buf[..8],
            &[GpaRangeSpec {
                byte_count: 1,
                byte_offset: 0,
                pfns: &pfn
            }]
        ),
        Err(PacketError::Truncated { have: 8, len: 24 })
    );
}

#[test]
fn transfer_pages_parse_and_hostile_counts() {
    let mut header = header_words(&[0x0103_0007, 2, 10, 20, 30, 40]);
    header[3] = 0; // reserved
    let mut buf = vec![0u8; 64];
    let len = build_packet(
        &mut buf,
        PacketType::TRANSFER_PAGES,
        PacketFlags::empty(),
        3,
        &header,
        &[],
    )
    .unwrap();
    let p = Packet::parse(&buf[..len]).unwrap();
    let PacketKind::TransferPages(t) = p.kind else {
        panic!()
    };
    assert_eq!(
        (t.transfer_page_set_id, t.sender_owns_set, t.len()),
        (7, true, 2)
    );
    let ranges: Vec<_> = t.iter().map(|r| (r.byte_count, r.byte_offset)).collect();
    assert_eq!(ranges, [(10, 20), (30, 40)]);

    let header = header_words(&[7, u32::MAX]);
    let len = build_packet(
        &mut buf,
        PacketType::TRANSFER_PAGES,
        PacketFlags::empty(),
        3,
        &header,
        &[],
    )
    .unwrap();
    assert!(matches!(
        Packet::parse(&buf[..len]),
        Err(PacketError::HeaderTooShort { .. })
    ));
}

#[test]
fn parse_rejects_inconsistent_descriptors() {
    let desc = |offset8: u16, len8: u16| {
        let d = PacketDescriptor {
            packet_type: PacketType::INBAND,
            offset8,
            len8,
            flags: 0,
            trans_id: 0,
        };
        let mut v = zerocopy::IntoBytes::as_bytes(&d).to_vec();
        v.resize(64, 0);
        v
    };
    assert_eq!(
        Packet::parse(&[0u8; 15]).err(),
        Some(PacketError::Truncated { have: 15, len: 16 })
    );
    assert_eq!(
        Packet::parse(&desc(2, 9)).err(),
        Some(PacketError::Truncated { have: 64, len: 72 })
    );
    assert_eq!(
        Packet::parse(&desc(1, 4)).err(),
        Some(PacketError::BadDataOffset { offset: 8, len: 32 })
    );
    assert_eq!(
        Packet::parse(&desc(5, 4)).err(),
        Some(PacketError::BadDataOffset {
            offset: 40,
            len: 32
        })
    );
    assert_eq!(
        Packet::parse(&desc(2, 0)).err(),
        Some(PacketError::BadDataOffset { offset: 16, len: 0 })
    );
    let bytes = desc(4, 4);
    let p = Packet::parse(&bytes).unwrap();
    assert_eq!((p.header.len(), p.payload.len()), (16, 0));
    let mut bytes = desc(3, 4);
    bytes[0] = 0x55;
    let unknown = Packet::parse(&bytes).unwrap();
    assert!(matches!(unknown.kind, PacketKind::Other));
    assert_eq!(unknown.header.len(), 8);
}

#[test]
fn producer_writes_every_kind_through_the_ring() {
    let m = AlignedRingBuffer::for_ring(4096);
    initialize_control_page(&m, FEATURE_PENDING_SEND_SIZE).unwrap();
    let mut p = RingProducer::new(&m).unwrap();
    let mut c = RingConsumer::new(&m).unwrap();
    let pfns = [10u64, 11];
    let _ = p
        .write_gpa_direct(
            1,
            PacketFlags::COMPLETION_REQUESTED,
            &[GpaRangeSpec {
                byte_count: 5000,
                byte_offset: 8,
                pfns: &pfns,
            }],
            &[b"srb", b"-bytes"],
        )
        .unwrap();
    let _ = p
        .write_transfer_pages(
            2,
            PacketFlags::empty(),
            0xcafe,
            false,
            &[TransferPageRange {
                byte_count: 1,
                byte_offset: 2,
            }],
            &[],
        )
        .unwrap();
    let _ = p.write_completion(3, &[&[1, 2, 3]]).unwrap();
    let _ = p
        .write_packet(
            PacketType(0x99),
            PacketFlags::empty(),
            4,
            &[0xee; 8],
            &[b"z"],
        )
        .unwrap();
    assert_eq!(
        p.write_packet(PacketType::INBAND, PacketFlags::empty(), 5, &[1; 3], &[]),
        Err(RingError::InvalidPacket(PacketError::Unencodable {
            header: 19,
            len: 19
        }))
    );
    assert_eq!(
        p.write_gpa_direct(
            6,
            PacketFlags::empty(),
            &[GpaRangeSpec {
                byte_count: 5000,
                byte_offset: 8,
                pfns: &pfns[..1]
            }],
            &[]
        ),
        Err(RingError::InvalidPacket(PacketError::PfnCountMismatch {
            need: 2,
            have: 1
        }))
    );

    let mut buf = vec![0u8; 4096];
    let info = c.read_packet(&mut buf).unwrap().unwrap().info;
    let pk = Packet::parse(&buf[..info.len]).unwrap();
    let PacketKind::GpaDirect(r) = pk.kind else {
        panic!()
    };
    let r0 = r.iter().next().unwrap();
    assert_eq!(
        (r0.byte_count, r0.byte_offset, r0.pfn(0), r0.pfn(1)),
        (5000, 8, Some(10), Some(11))
    );
    assert_eq!(&pk.payload[..9], b"srb-bytes");
    assert_eq!(pk.desc.trans_id, 1);

    let info = c.read_packet(&mut buf).unwrap().unwrap().info;
    let pk = Packet::parse(&buf[..info.len]).unwrap();
    let PacketKind::TransferPages(t) = pk.kind else {
        panic!()
    };
    assert_eq!(
        (t.transfer_page_set_id, t.sender_owns_set, t.len()),
        (0xcafe, false, 1)
    );

    let info = c.read_packet(&mut buf).unwrap().unwrap().info;
    let pk = Packet::parse(&buf[..info.len]).unwrap();
    assert!(matches!(pk.kind, PacketKind::Completion));
    assert_eq!((pk.desc.trans_id, &pk.payload[..3]), (3, &[1u8, 2, 3][..]));

    let info = c.read_packet(&mut buf).unwrap().unwrap().info;
    let pk = Packet::parse(&buf[..info.len]).unwrap();
    assert!(matches!(pk.kind, PacketKind::Other));
    assert_eq!((pk.header, &pk.payload[..1]), (&[0xee; 8][..], &b"z"[..]));
    assert!(c.read_packet(&mut buf).unwrap().is_none());
}
