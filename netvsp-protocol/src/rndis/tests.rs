//! Layout and behaviour tests of [`super`] against Linux's definitions.
use super::*;
use core::mem::offset_of;

#[test]
fn layouts_match_linux() {
    assert_eq!(size_of::<RndisHeader>(), 8);
    assert_eq!(size_of::<InitializeRequest>(), 16);
    assert_eq!(offset_of!(InitializeRequest, max_transfer_size), 12);
    assert_eq!(size_of::<InitializeComplete>(), 44);
    assert_eq!(offset_of!(InitializeComplete, medium), 20);
    assert_eq!(offset_of!(InitializeComplete, max_packets_per_message), 24);
    assert_eq!(offset_of!(InitializeComplete, packet_alignment_factor), 32);
    assert_eq!(offset_of!(InitializeComplete, af_list_size), 40);
    assert_eq!(size_of::<HaltRequest>(), 4);
    assert_eq!(size_of::<QueryRequest>(), 20);
    assert_eq!(offset_of!(QueryRequest, information_buffer_offset), 12);
    assert_eq!(offset_of!(QueryRequest, device_vc_handle), 16);
    assert_eq!(size_of::<QueryComplete>(), 16);
    assert_eq!(offset_of!(QueryComplete, information_buffer_offset), 12);
    assert_eq!(size_of::<SetComplete>(), 8);
    assert_eq!(size_of::<ResetRequest>(), 4);
    assert_eq!(size_of::<ResetComplete>(), 8);
    assert_eq!(size_of::<IndicateStatus>(), 12);
    assert_eq!(size_of::<KeepaliveRequest>(), 4);
    assert_eq!(size_of::<KeepaliveComplete>(), 8);
    assert_eq!(size_of::<PacketHeader>(), 36);
    assert_eq!(offset_of!(PacketHeader, per_packet_info_offset), 20);
    assert_eq!(offset_of!(PacketHeader, per_packet_info_length), 24);
    assert_eq!(offset_of!(PacketHeader, vc_handle), 28);
    assert_eq!(PACKET_MESSAGE_HEADER_SIZE, 44);
}

#[test]
fn codes_match_linux() {
    assert_eq!(
        RndisMessageType::QUERY.completion(),
        RndisMessageType::QUERY_COMPLETE
    );
    assert_eq!(RndisMessageType::KEEPALIVE_COMPLETE.0, 0x8000_0008);
    assert_eq!(RndisStatus::MEDIA_CONNECT.0, 0x4001_000B);
    assert_eq!(RndisStatus::NOT_SUPPORTED.0, 0xC000_00BB);
    assert_eq!(RndisStatus::INVALID_DATA.0, 0xC001_0015);
}

#[test]
fn batched_messages_are_walked_and_a_bad_length_stops_the_walk() {
    let mut buf = [0u8; 128];
    let q = KeepaliveRequest {
        request_id: U32::new(7),
    };
    let a = encode(&mut buf, RndisMessageType::KEEPALIVE, &q, &[]).unwrap();
    let b = encode(&mut buf[a..], RndisMessageType::HALT, &q, &[0; 4]).unwrap();
    let mut it = messages(&buf[..a + b]);
    let m = it.next().unwrap().unwrap();
    assert_eq!(m.message_type, RndisMessageType::KEEPALIVE);
    assert_eq!(m.body_as::<KeepaliveRequest>().unwrap().request_id.get(), 7);
    let m = it.next().unwrap().unwrap();
    assert_eq!((m.message_type, m.len()), (RndisMessageType::HALT, 16));
    assert!(it.next().is_none());

    buf[a + 4..a + 8].copy_from_slice(&1000u32.to_le_bytes());
    let mut it = messages(&buf[..a + b]);
    assert!(it.next().unwrap().is_ok());
    assert_eq!(
        it.next().unwrap().unwrap_err(),
        RndisError::BadMessageLength {
            len: 1000,
            available: b
        }
    );
    assert!(it.next().is_none());
    buf[4..8].copy_from_slice(&3u32.to_le_bytes());
    assert!(matches!(
        messages(&buf[..a]).next(),
        Some(Err(RndisError::BadMessageLength { len: 3, .. }))
    ));
}

#[test]
fn packet_layout_checks_every_region() {
    let h = packet_message_header(100, 12);
    let header: PacketHeader = read_prefix(&h[8..], "p").unwrap();
    let layout = PacketLayout::validate(&header, 44 + 12 + 100).unwrap();
    assert_eq!(layout.data, 56..156);
    assert_eq!(layout.per_packet_info, 44..56);
    // One byte short.
    assert!(PacketLayout::validate(&header, 155).is_err());
    // Data overlapping the fixed header.
    let mut bad = header;
    bad.data_offset.set(4);
    assert!(PacketLayout::validate(&bad, 200).is_err());
    // Offsets that wrap.
    let mut bad = header;
    bad.data_offset.set(u32::MAX);
    assert!(PacketLayout::validate(&bad, 200).is_err());
    let mut bad = header;
    bad.per_packet_info_length.set(u32::MAX - 10);
    assert!(PacketLayout::validate(&bad, 200).is_err());
    let mut bad = header;
    bad.oob_data_length.set(4);
    assert!(PacketLayout::validate(&bad, 200).is_err());
    assert!(PacketLayout::validate(&header, 20).is_err());
}

#[test]
fn information_buffers_are_bounded_by_the_message() {
    let mut buf = [0u8; 64];
    let q = QueryRequest {
        request_id: U32::new(1),
        oid: U32::new(0x0001_010E),
        information_buffer_length: U32::new(4),
        information_buffer_offset: U32::new(20),
        device_vc_handle: U32::new(0),
    };
    let n = encode(&mut buf, RndisMessageType::SET, &q, &[0x0D, 0, 0, 0]).unwrap();
    let m = RndisMessageRef::parse(&buf[..n]).unwrap();
    assert_eq!(m.buffer(20, 4).unwrap(), &[0x0D, 0, 0, 0]);
    assert!(m.buffer(21, 4).is_err());
    assert!(m.buffer(u32::MAX, 2).is_err());
    assert_eq!(m.buffer(9999, 0).unwrap(), &[] as &[u8]);
    assert_eq!(
        encode(&mut buf[..10], RndisMessageType::SET, &q, &[]),
        Err(RndisError::BufferTooSmall { need: 28, have: 10 })
    );
}

mod random {
    extern crate std;
    use super::*;
    use crate::nvsp::{NvspMessageRef, SendRndisPacket};
    use crate::ppi::ppis;
    use proptest::prelude::*;
    use std::vec::Vec;

    proptest! {
        #[test]
        fn walkers_never_panic_and_stay_inside_their_input(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut total = 0;
            for m in messages(&bytes) {
                let Ok(m) = m else { break };
                total += m.len();
                prop_assert!(total <= bytes.len());
                if let Ok(h) = m.body_as::<PacketHeader>() {
                    if let Ok(layout) = PacketLayout::validate(&h, m.len()) {
                        prop_assert!(layout.data.end <= m.len() && layout.per_packet_info.end <= m.len());
                        prop_assert!(layout.data.is_empty() || layout.data.start >= PACKET_MESSAGE_HEADER_SIZE);
                    }
                }
                let _ = m.buffer(u32::from(bytes.first().copied().unwrap_or(0)), 4);
            }
            let records: Vec<_> = ppis(&bytes).collect();
            prop_assert!(records.iter().filter(|r| r.is_err()).count() <= 1);
            if let Ok(n) = NvspMessageRef::parse(&bytes) {
                let _ = n.body_as::<SendRndisPacket>();
            }
        }
    }
}
