//! storvsc logic tests: handshake with fallback and refusals, request encoding, completions in any
//! order, error decoding, host-initiated packets. Completion semantics are in `completion_tests`,
//! the slot table and allocation counts in `slot_tests`.
use super::*;
use storvsp_protocol::scsi::{AdditionalSense, FixedSense, ScsiStatus, SenseKey};
use storvsp_protocol::SrbStatus;
use vmbus::packet::{build_packet, PacketFlags};
use vmbus::ring::RingProducer;
use zerocopy::byteorder::little_endian::U32;

pub(super) fn completion(trans_id: u64, vstor: &VstorPacket) -> Vec<u8> {
    let mut buf = alloc::vec![0u8; 128];
    let n = build_packet(
        &mut buf,
        PacketType::COMPLETION,
        PacketFlags::empty(),
        trans_id,
        &[],
        vstor.as_wire(),
    )
    .unwrap();
    buf.truncate(n);
    buf
}

/// The host's answer to `request`: the packet echoed as COMPLETE_IO with `status`.
fn answer(request: &Request, status: NtStatus) -> Vec<u8> {
    let mut p = request.packet;
    p.operation.set(Operation::COMPLETE_IO.0);
    p.set_status(status);
    if request.packet.operation() == Operation::QUERY_PROPERTIES {
        let mut props = ChannelProperties::new_zeroed();
        props.max_transfer_bytes = U32::new(0x20_0000);
        p.set_properties(&props);
    }
    completion(request.trans_id, &p)
}

/// Runs the handshake; `refuse` lists the versions the host refuses.
fn handshake(s: &mut Storvsc, refuse: &[u16]) -> Result<ProtocolVersion, StorvscError> {
    let mut next = s.begin_init();
    loop {
        let status = match next.packet.operation() {
            Operation::QUERY_PROTOCOL_VERSION
                if refuse.contains(&next.packet.version().major_minor.get()) =>
            {
                NtStatus::REVISION_MISMATCH
            }
            _ => NtStatus::SUCCESS,
        };
        match s.handle_packet(&answer(&next, status))? {
            Event::Handshake(HandshakeStep::Send(r)) => next = *r,
            Event::Handshake(HandshakeStep::Ready(v)) => return Ok(v),
            other => panic!("unexpected {other:?}"),
        }
    }
}

pub(super) fn ready() -> Storvsc {
    ready_with(Storvsc::new())
}

/// `s` after a successful handshake.
pub(super) fn ready_with(mut s: Storvsc) -> Storvsc {
    assert_eq!(handshake(&mut s, &[]), Ok(ProtocolVersion::WIN10));
    s
}

#[test]
fn handshake_sequence_and_fallback() {
    let mut s = Storvsc::new();
    let r = s.begin_init();
    assert_eq!(r.trans_id, TRANS_ID_INIT);
    assert_eq!(r.packet.operation(), Operation::BEGIN_INIT);
    assert_eq!(r.packet.flags.get(), REQUEST_COMPLETION_FLAG);
    let Event::Handshake(HandshakeStep::Send(q)) =
        s.handle_packet(&answer(&r, NtStatus::SUCCESS)).unwrap()
    else {
        panic!()
    };
    assert_eq!(q.packet.version().major_minor.get(), 0x0602);
    let mut s = Storvsc::new();
    assert_eq!(handshake(&mut s, &[0x0602]), Ok(ProtocolVersion::WIN8_1));
    let mut s = Storvsc::new();
    assert_eq!(
        handshake(&mut s, &[0x0602, 0x0600]),
        Ok(ProtocolVersion::WIN8)
    );
    assert_eq!(s.version(), Some(ProtocolVersion::WIN8));
    assert_eq!(s.host_max_transfer_bytes(), Some(0x20_0000));
    // Capped so a request's page list fits inline.
    assert_eq!(s.max_transfer_bytes(), Some(MAX_INLINE_TRANSFER));
    let mut s = Storvsc::new();
    assert_eq!(
        handshake(&mut s, &[0x0602, 0x0600, 0x0501]),
        Err(StorvscError::NoCommonVersion)
    );
    assert_eq!(s.version(), None);
}

#[test]
fn handshake_refusals_and_bad_properties() {
    let mut s = Storvsc::new();
    let r = s.begin_init();
    assert_eq!(
        s.handle_packet(&answer(&r, NtStatus::INVALID_DEVICE_STATE))
            .unwrap_err(),
        StorvscError::Handshake {
            operation: Operation::BEGIN_INIT,
            status: NtStatus::INVALID_DEVICE_STATE
        }
    );
    let mut s = Storvsc::new();
    let r = s.begin_init();
    let Ok(Event::Handshake(HandshakeStep::Send(q))) =
        s.handle_packet(&answer(&r, NtStatus::SUCCESS))
    else {
        panic!()
    };
    let Ok(Event::Handshake(HandshakeStep::Send(p))) =
        s.handle_packet(&answer(&q, NtStatus::SUCCESS))
    else {
        panic!()
    };
    let mut bad = p.packet;
    bad.operation.set(Operation::COMPLETE_IO.0);
    let mut props = ChannelProperties::new_zeroed();
    props.max_transfer_bytes = U32::new(1000);
    bad.set_properties(&props);
    assert_eq!(
        s.handle_packet(&completion(TRANS_ID_INIT, &bad))
            .unwrap_err(),
        StorvscError::BadProperties(1000)
    );
}

#[test]
fn io_before_ready_and_bad_buffers_are_refused() {
    let mut s = Storvsc::new();
    assert_eq!(
        s.read(0, 0, 8, &[1], 0).unwrap_err(),
        StorvscError::NotReady
    );
    let mut s = ready();
    assert!(matches!(
        s.read(0, 0, 8, &[1, 2], 0),
        Err(StorvscError::BadBuffer {
            need: 1,
            have: 2,
            ..
        })
    ));
    assert!(matches!(
        s.read(0, 0, 8, &[1], 1),
        Err(StorvscError::BadBuffer { need: 2, .. })
    ));
    assert!(matches!(
        s.read(0, 0, 8, &[1], 4096),
        Err(StorvscError::BadBuffer { .. })
    ));
    let pfns: Vec<u64> = (0..513).collect();
    assert!(matches!(
        s.read(0, 0, 4097, &pfns, 0),
        Err(StorvscError::TooLarge { .. })
    ));
    // Above the inline cap (but within the host's 2 MiB): refused, not allocated.
    assert!(matches!(
        s.read(0, 0, MAX_INLINE_TRANSFER / 512 + 1, &pfns[..130], 0),
        Err(StorvscError::TooLarge { .. })
    ));
    // The largest transfer at the worst offset fits.
    let r = s
        .read(
            0,
            0,
            MAX_INLINE_TRANSFER / 512,
            &pfns[..MAX_DATA_PFNS],
            4095,
        )
        .unwrap();
    assert_eq!(r.range().unwrap().pfns, &pfns[..MAX_DATA_PFNS]);
    assert_eq!(s.cancel(r.trans_id), Some(0));
    assert_eq!(
        s.scsi(0, &[0; 17], DataDirection::UNKNOWN, None)
            .unwrap_err(),
        StorvscError::BadCdb(17)
    );
    assert_eq!(s.outstanding(), 0);
}

#[test]
fn read_request_is_a_gpa_direct_srb() {
    let mut s = ready();
    let pfns = [10, 11, 20];
    let r = s.read(3, 0x1_0000_0001, 16, &pfns, 0x800).unwrap();
    let range = r.range().unwrap();
    assert_eq!(
        (range.byte_count, range.byte_offset, range.pfns),
        (8192, 0x800, &pfns[..])
    );
    assert_eq!(r.packet.operation(), Operation::EXECUTE_SRB);
    let srb = r.packet.srb();
    assert_eq!(srb.length.get(), 0x34);
    assert_eq!(srb.lun, 3);
    assert_eq!(srb.cdb_length, 16);
    assert_eq!(srb.cdb().unwrap()[0], opcode::READ_16);
    assert_eq!(&srb.cdb().unwrap()[2..10], &0x1_0000_0001u64.to_be_bytes());
    assert_eq!(&srb.cdb().unwrap()[10..14], &16u32.to_be_bytes());
    assert_eq!(srb.data_in, DataDirection::READ.0);
    assert_eq!(srb.data_transfer_length.get(), 8192);
    assert_eq!(srb.sense_info_length, 0x14);
    assert_ne!(srb.srb_flags.get() & srb_flags::DATA_IN, 0);
    let w = s.write(3, 0, 1, &[5], 0, true).unwrap();
    assert_eq!(w.packet.srb().cdb().unwrap()[1], 0x08);
    assert_eq!(w.packet.srb().data_in, DataDirection::WRITE.0);
    assert_ne!(w.trans_id, r.trans_id);
    let f = s.synchronize_cache(3).unwrap();
    assert!(f.range().is_none());
    assert_eq!(s.outstanding(), 3);
    // It goes through a ring as a GPA-direct packet that parses back to the same range.
    let ring = vmbus::mem::AlignedRingBuffer::for_ring(16384);
    vmbus::ring::initialize_control_page(&ring, 1).unwrap();
    let mut producer = RingProducer::new(&ring).unwrap();
    let _written = r.write_to(&mut producer).unwrap();
    let mut consumer = vmbus::ring::RingConsumer::new(&ring).unwrap();
    let mut buf = alloc::vec![0u8; 4096];
    let info = consumer.read_packet(&mut buf).unwrap().unwrap().info;
    let p = Packet::parse(&buf[..info.len]).unwrap();
    assert_eq!(p.desc.trans_id, r.trans_id);
    assert_eq!(p.desc.packet_type, PacketType::DATA_USING_GPA_DIRECT);
    let PacketKind::GpaDirect(ranges) = p.kind else {
        panic!()
    };
    assert_eq!(ranges.total_bytes(), 8192);
    assert_eq!(&p.payload[..64], r.payload());
}

#[test]
fn completions_match_by_transaction_id_in_any_order() {
    let mut s = ready();
    let reqs: Vec<Request> = (0..8).map(|i| s.read(0, i, 1, &[1], 0).unwrap()).collect();
    for r in reqs.iter().rev() {
        let mut p = r.packet;
        p.operation.set(Operation::COMPLETE_IO.0);
        let mut srb = p.srb();
        srb.srb_status = SrbStatus::SUCCESS.0;
        srb.data_transfer_length.set(512);
        p.set_srb(&srb);
        let c = s.complete(&completion(r.trans_id, &p)).unwrap();
        assert_eq!(
            (c.trans_id, c.lun, c.opcode, c.result),
            (r.trans_id, 0, opcode::READ_16, Ok(512))
        );
    }
    assert_eq!(s.outstanding(), 0);
    let p = reqs[0].packet;
    assert_eq!(
        s.complete(&completion(reqs[0].trans_id, &p)).unwrap_err(),
        StorvscError::UnknownTransaction(reqs[0].trans_id)
    );
}

#[test]
fn errors_decode_status_and_sense() {
    let mut s = ready();
    let r = s.read(0, 1 << 40, 1, &[1], 0).unwrap();
    let mut p = r.packet;
    p.operation.set(Operation::COMPLETE_IO.0);
    let mut srb = p.srb();
    srb.srb_status = SrbStatus::ERROR.with_autosense().0;
    srb.scsi_status = ScsiStatus::CHECK_CONDITION.0;
    let sense = FixedSense::new(SenseKey::ILLEGAL_REQUEST, AdditionalSense::LBA_OUT_OF_RANGE);
    srb.cdb_or_sense = [0; 20];
    srb.cdb_or_sense[..18].copy_from_slice(&sense.to_bytes());
    srb.sense_info_length = 18;
    p.set_srb(&srb);
    let c = s.complete(&completion(r.trans_id, &p)).unwrap();
    assert_eq!(
        c.result,
        Err(IoError::Scsi {
            srb_status: SrbStatus(0x84),
            scsi_status: ScsiStatus::CHECK_CONDITION,
            sense: Some(sense)
        })
    );
    let r = s.test_unit_ready(9).unwrap();
    let mut p = r.packet;
    p.operation.set(Operation::COMPLETE_IO.0);
    p.set_status(NtStatus::INVALID_PARAMETER);
    let c = s.complete(&completion(r.trans_id, &p)).unwrap();
    assert_eq!(c.result, Err(IoError::Status(NtStatus::INVALID_PARAMETER)));
}

#[test]
fn host_requests_and_garbage() {
    let mut s = ready();
    let mut buf = alloc::vec![0u8; 128];
    let p = VstorPacket::new(Operation::ENUMERATE_BUS, 0);
    let n = build_packet(
        &mut buf,
        PacketType::INBAND,
        PacketFlags::empty(),
        0,
        &[],
        p.as_wire(),
    )
    .unwrap();
    assert!(matches!(
        s.handle_packet(&buf[..n]),
        Ok(Event::HostRequest(Operation::ENUMERATE_BUS))
    ));
    let n = build_packet(
        &mut buf,
        PacketType::COMPLETION,
        PacketFlags::empty(),
        5,
        &[],
        &[0; 40],
    )
    .unwrap();
    assert_eq!(
        s.handle_packet(&buf[..n]).unwrap_err(),
        StorvscError::Truncated { len: 40 }
    );
    assert!(s.handle_packet(&[1, 2, 3]).is_err());
    assert!(matches!(
        parse_capacity16(&[0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 2, 0]),
        Some((8, 512))
    ));
}

/// `s` after a handshake with a host that reports `max` sub-channels (multi-channel flag set).
fn ready_multi_channel(max: u16) -> Storvsc {
    let mut s = Storvsc::new();
    let mut next = s.begin_init();
    loop {
        let mut p = next.packet;
        p.operation.set(Operation::COMPLETE_IO.0);
        p.set_status(NtStatus::SUCCESS);
        if next.packet.operation() == Operation::QUERY_PROPERTIES {
            let mut props = ChannelProperties::new_zeroed();
            props.max_transfer_bytes = U32::new(0x20_0000);
            props.max_channel_count.set(max);
            props.flags = U32::new(STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL);
            p.set_properties(&props);
        }
        match s.handle_packet(&completion(next.trans_id, &p)).unwrap() {
            Event::Handshake(HandshakeStep::Send(r)) => next = *r,
            Event::Handshake(HandshakeStep::Ready(_)) => return s,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn sub_channels_are_asked_for_within_the_hosts_count() {
    // A host without the multi-channel flag creates none.
    let mut single = ready();
    assert_eq!(single.max_sub_channels(), 0);
    assert_eq!(
        single.create_sub_channels(1).unwrap_err(),
        StorvscError::TooManySubChannels { asked: 1, max: 0 }
    );
    let mut s = ready_multi_channel(3);
    assert_eq!(s.max_sub_channels(), 3);
    for bad in [0, 4] {
        assert!(matches!(
            s.create_sub_channels(bad),
            Err(StorvscError::TooManySubChannels { max: 3, .. })
        ));
    }
    let r = s.create_sub_channels(3).unwrap();
    assert_eq!(r.trans_id, TRANS_ID_INIT);
    assert_eq!(r.packet.operation(), Operation::CREATE_SUB_CHANNELS);
    assert_eq!(r.packet.sub_channel_count(), 3);
    // I/O goes on while the answer is awaited.
    assert!(s.read(0, 0, 1, &[5], 0).is_ok());
    assert!(matches!(
        s.handle_packet(&answer(&r, NtStatus::SUCCESS)),
        Ok(Event::Handshake(HandshakeStep::Ready(
            ProtocolVersion::WIN10
        )))
    ));
    // A refusal is an error but leaves the channel usable.
    let r = s.create_sub_channels(1).unwrap();
    assert!(matches!(
        s.handle_packet(&answer(&r, NtStatus::INVALID_PARAMETER)),
        Err(StorvscError::Handshake {
            operation: Operation::CREATE_SUB_CHANNELS,
            ..
        })
    ));
    assert_eq!(s.version(), Some(ProtocolVersion::WIN10));
    assert!(s.read(0, 0, 1, &[5], 0).is_ok());
}

#[test]
fn a_sub_channel_driver_is_ready_with_the_primarys_version_and_own_slots() {
    assert_eq!(
        Storvsc::new().for_sub_channel(4).unwrap_err(),
        StorvscError::NotReady
    );
    let primary = ready_multi_channel(2);
    let mut sub = primary.for_sub_channel(2).unwrap();
    assert_eq!(sub.version(), Some(ProtocolVersion::WIN10));
    assert_eq!(sub.capacity(), 2);
    assert_eq!(sub.max_transfer_bytes(), primary.max_transfer_bytes());
    assert!(sub.read(0, 0, 1, &[5], 0).is_ok());
    assert!(sub.read(0, 8, 1, &[6], 0).is_ok());
    assert!(matches!(
        sub.read(0, 16, 1, &[7], 0),
        Err(StorvscError::Busy(2))
    ));
    assert_eq!(primary.outstanding(), 0);
}
