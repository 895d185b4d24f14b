//! Unit tests of the ring halves: layout, wrap-around, edges, signalling, hostile indices.

use super::*;
use crate::mem::AlignedRingBuffer;
use crate::packet::{Packet, PacketFlags, PacketKind, PacketType};
use alloc::vec;
use alloc::vec::Vec;

const DATA: usize = 4096;

fn ring(data: usize) -> AlignedRingBuffer {
    let m = AlignedRingBuffer::for_ring(data);
    initialize_control_page(&m, FEATURE_PENDING_SEND_SIZE).unwrap();
    m
}

/// A ring whose (empty) indices both start at `index`.
fn ring_at(data: usize, index: u32) -> AlignedRingBuffer {
    let m = ring(data);
    m.store_u32(WRITE_INDEX_OFFSET, index, Ordering::Relaxed);
    m.store_u32(READ_INDEX_OFFSET, index, Ordering::Relaxed);
    m
}

fn halves(
    m: &AlignedRingBuffer,
) -> (
    RingProducer<&AlignedRingBuffer>,
    RingConsumer<&AlignedRingBuffer>,
) {
    (RingProducer::new(m).unwrap(), RingConsumer::new(m).unwrap())
}

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(131).wrapping_add(i * 7) % 251) as u8)
        .collect()
}

fn ctl(m: &AlignedRingBuffer) -> ControlSnapshot {
    ControlSnapshot::read(m)
}

/// Writes a descriptor with arbitrary fields at data offset `at` and publishes `write`.
fn forge(m: &AlignedRingBuffer, at: usize, offset8: u16, len8: u16, write: u32) {
    let desc = PacketDescriptor {
        packet_type: PacketType::INBAND,
        offset8,
        len8,
        flags: 0,
        trans_id: 1,
    };
    m.write_bytes(CONTROL_PAGE_SIZE + at, zerocopy::IntoBytes::as_bytes(&desc));
    m.store_u32(WRITE_INDEX_OFFSET, write, Ordering::Release);
}

#[test]
fn control_page_offsets() {
    assert_eq!(
        (
            WRITE_INDEX_OFFSET,
            READ_INDEX_OFFSET,
            INTERRUPT_MASK_OFFSET,
            PENDING_SEND_SIZE_OFFSET,
            FEATURE_BITS_OFFSET
        ),
        (0x00, 0x04, 0x08, 0x0C, 0x40)
    );
    assert_eq!(CONTROL_PAGE_SIZE, 4096);
    let m = ring(DATA);
    assert_eq!(ctl(&m).feature_bits, 1);
}

/// Memory of any length whose contents must never be touched.
struct Untouchable(usize);

impl RingMemory for Untouchable {
    fn len(&self) -> usize {
        self.0
    }
    fn load_u32(&self, _: usize, _: Ordering) -> u32 {
        unreachable!("layout is checked before any access")
    }
    fn store_u32(&self, _: usize, _: u32, _: Ordering) {
        unreachable!()
    }
    fn read_bytes(&self, _: usize, _: &mut [u8]) {
        unreachable!()
    }
    fn write_bytes(&self, _: usize, _: &[u8]) {
        unreachable!()
    }
}

#[test]
fn rejects_bad_layouts() {
    for len in [
        0,
        4095,
        4096,
        4096 + 8,
        4096 + 24,
        4096 + 36,
        4096 + 4097,
        4096 + (1 << 31) + 8,
    ] {
        assert_eq!(
            RingProducer::new(Untouchable(len)).err(),
            Some(RingError::BadLayout { len })
        );
        assert_eq!(
            RingConsumer::new(Untouchable(len)).err(),
            Some(RingError::BadLayout { len })
        );
        assert_eq!(
            initialize_control_page(&Untouchable(len), 1),
            Err(RingError::BadLayout { len })
        );
    }
    for data in [MIN_DATA_SIZE, 40, 4096, 65536] {
        let m = ring(data);
        assert_eq!(RingProducer::new(&m).unwrap().data_size(), data);
        assert_eq!(RingConsumer::new(&m).unwrap().data_size(), data);
    }
}

#[test]
fn roundtrip_inband_packet() {
    let m = ring(DATA);
    let (mut p, mut c) = halves(&m);
    let body = pattern(1, 37);
    let w = p
        .write_inband(
            42,
            PacketFlags::COMPLETION_REQUESTED,
            &[&body[..10], &body[10..]],
        )
        .unwrap();
    assert_eq!(w.ring_bytes, 16 + 40 + 8);
    assert!(w.signal, "first write into an empty, unmasked ring signals");
    assert_eq!(ctl(&m).write_index, 64);
    let mut buf = [0u8; 128];
    let r = c.read_packet(&mut buf).unwrap().unwrap();
    assert!(!r.signal);
    assert_eq!(r.info.len, 56);
    assert_eq!(r.info.data_offset(), 16);
    let pkt = Packet::parse(&buf[..r.info.len]).unwrap();
    assert!(matches!(pkt.kind, PacketKind::InBand));
    assert_eq!(pkt.desc.trans_id, 42);
    assert_eq!(pkt.desc.packet_flags(), PacketFlags::COMPLETION_REQUESTED);
    assert_eq!(&pkt.payload[..37], &body[..]);
    assert_eq!(&pkt.payload[37..], &[0, 0, 0]);
    assert_eq!(ctl(&m).read_index, 64);
    assert!(c.read_packet(&mut buf).unwrap().is_none());
    assert_eq!(
        p.stats(),
        ProducerStats {
            packets: 1,
            bytes: 56,
            signals: 1,
            full: 0,
            space_requests: 0
        }
    );
    assert_eq!(
        c.stats(),
        ConsumerStats {
            packets: 1,
            bytes: 56,
            signals: 0
        }
    );
}

#[test]
fn wraps_at_every_8_byte_offset() {
    for start in (0..DATA as u32).step_by(8) {
        for payload_len in [0usize, 5, 64, 1000, DATA - 40] {
            let m = ring_at(DATA, start);
            let (mut p, mut c) = halves(&m);
            let body = pattern(start as usize + payload_len, payload_len);
            let w = p
                .write_inband(u64::from(start), PacketFlags::empty(), &[&body])
                .unwrap();
            let len = 16 + payload_len.div_ceil(8) * 8;
            assert_eq!(w.ring_bytes, len + 8);
            // The trailer sits right after the packet, wrapped, and holds the old write index.
            let mut trailer = [0u8; 8];
            read_wrapping(
                &m,
                DATA as u32,
                ((start as usize + len) % DATA) as u32,
                &mut trailer,
            );
            assert_eq!(u64::from_le_bytes(trailer), u64::from(start) << 32);
            assert_eq!(
                ctl(&m).write_index as usize,
                (start as usize + len + 8) % DATA
            );
            let mut buf = vec![0u8; DATA];
            let r = c.read_packet(&mut buf).unwrap().unwrap();
            let pkt = Packet::parse(&buf[..r.info.len]).unwrap();
            assert_eq!(pkt.desc.trans_id, u64::from(start));
            assert_eq!(
                &pkt.payload[..payload_len],
                &body[..],
                "start {start} len {payload_len}"
            );
            assert_eq!(ctl(&m).read_index, ctl(&m).write_index);
        }
    }
}

#[test]
fn never_fills_completely() {
    let m = ring(DATA);
    let (mut p, _c) = halves(&m);
    // A packet whose ring bytes equal the whole data area can never be written.
    assert_eq!(
        p.write_raw(&[&[0u8; DATA - 8]]),
        Err(RingError::PacketTooLarge { len: DATA - 8 })
    );
    // One 8-byte unit less fits: free space DATA > needed DATA - 8.
    assert_eq!(p.writable_len().unwrap(), DATA - 16);
    let w = p.write_raw(&[&pattern(0, DATA - 16)]).unwrap();
    assert_eq!(w.ring_bytes, DATA - 8);
    assert_eq!(p.writable_len().unwrap(), 0);
    assert_eq!(p.write_raw(&[]), Err(RingError::Full { needed: 8 }));
}

#[test]
fn write_needing_exactly_all_free_space_fails() {
    let m = ring(DATA);
    let (mut p, mut c) = halves(&m);
    // Occupy half the ring: free = DATA / 2.
    let half = DATA / 2 - 16 - 8;
    let _ = p
        .write_inband(1, PacketFlags::empty(), &[&pattern(1, half)])
        .unwrap();
    // Needs exactly DATA / 2 ring bytes: refused.
    assert_eq!(
        p.write_inband(2, PacketFlags::empty(), &[&pattern(2, half)]),
        Err(RingError::Full {
            needed: (DATA / 2) as u32
        })
    );
    assert_eq!(ctl(&m).pending_send_size, (DATA / 2) as u32);
    // 8 bytes less fits, and clears the pending request.
    let _ = p
        .write_inband(3, PacketFlags::empty(), &[&pattern(3, half - 8)])
        .unwrap();
    assert_eq!(ctl(&m).pending_send_size, 0);
    assert_eq!(p.stats().full, 1);
    let mut buf = vec![0u8; DATA];
    assert_eq!(
        c.read_packet(&mut buf).unwrap().unwrap().info.desc.trans_id,
        1
    );
    assert_eq!(
        c.read_packet(&mut buf).unwrap().unwrap().info.desc.trans_id,
        3
    );
    assert!(c.read_packet(&mut buf).unwrap().is_none());
}

#[test]
fn full_without_feature_bit_leaves_pending_alone() {
    let m = ring(64);
    m.store_u32(FEATURE_BITS_OFFSET, 0, Ordering::Relaxed);
    let (mut p, _c) = halves(&m);
    let _ = p.write_raw(&[&[1u8; 24]]).unwrap();
    assert_eq!(
        p.write_raw(&[&[1u8; 24]]),
        Err(RingError::Full { needed: 32 })
    );
    assert_eq!(ctl(&m).pending_send_size, 0);
}

#[test]
fn writer_signals_only_into_empty_unmasked_ring() {
    let m = ring(DATA);
    let (mut p, mut c) = halves(&m);
    let mut buf = vec![0u8; DATA];
    assert!(
        p.write_inband(1, PacketFlags::empty(), &[b"a"])
            .unwrap()
            .signal,
        "empty + unmasked"
    );
    assert!(
        !p.write_inband(2, PacketFlags::empty(), &[b"b"])
            .unwrap()
            .signal,
        "not empty"
    );
    while c.read_packet(&mut buf).unwrap().is_some() {}
    c.mask_interrupts();
    assert!(
        !p.write_inband(3, PacketFlags::empty(), &[b"c"])
            .unwrap()
            .signal,
        "masked"
    );
    // Data raced in while masked: unmask reports it so the reader keeps going.
    assert!(c.unmask_interrupts().unwrap());
    while c.read_packet(&mut buf).unwrap().is_some() {}
    assert!(!c.unmask_interrupts().unwrap());
    // Read but not yet committed: the writer still sees a non-empty ring.
    let _ = p.write_inband(4, PacketFlags::empty(), &[b"d"]).unwrap();
    c.read_packet_deferred(&mut buf).unwrap().unwrap();
    assert!(
        !p.write_inband(5, PacketFlags::empty(), &[b"e"])
            .unwrap()
            .signal
    );
    assert_eq!(p.stats().signals, 2);
}

/// Sets up: ring of `DATA`, `used` bytes of packets published, `pending` requested.
fn reader_signal_case(
    used_packets: usize,
    read_packets: usize,
    pending: u32,
    features: u32,
) -> (bool, u32) {
    let m = ring(DATA);
    m.store_u32(FEATURE_BITS_OFFSET, features, Ordering::Relaxed);
    let (mut p, mut c) = halves(&m);
    for i in 0..used_packets {
        // 16 + 488 + 8 = 512 ring bytes each.
        let _ = p
            .write_inband(i as u64, PacketFlags::empty(), &[&[0u8; 488]])
            .unwrap();
    }
    m.store_u32(PENDING_SEND_SIZE_OFFSET, pending, Ordering::Relaxed);
    let mut buf = vec![0u8; DATA];
    for _ in 0..read_packets {
        c.read_packet_deferred(&mut buf).unwrap().unwrap();
    }
    let signal = c.commit().unwrap();
    let free = DATA as u32 - distance(ctl(&m).read_index, ctl(&m).write_index, DATA as u32);
    (signal, free)
}

#[test]
fn reader_signal_decisions() {
    // 7 packets = 3584 used, free 512. Reading one frees 512 -> free 1024.
    let (s, free) = reader_signal_case(7, 1, 600, FEATURE_PENDING_SEND_SIZE);
    assert_eq!(free, 1024);
    assert!(s, "crossed from 512 <= 600 to 1024 > 600");
    assert!(
        !reader_signal_case(7, 1, 0, FEATURE_PENDING_SEND_SIZE).0,
        "no pending request"
    );
    assert!(
        !reader_signal_case(7, 1, 600, 0).0,
        "feature not advertised"
    );
    assert!(
        !reader_signal_case(7, 1, 400, FEATURE_PENDING_SEND_SIZE).0,
        "was already enough (512 > 400)"
    );
    assert!(
        !reader_signal_case(7, 1, 1500, FEATURE_PENDING_SEND_SIZE).0,
        "still not enough"
    );
    assert!(
        !reader_signal_case(7, 1, 1024, FEATURE_PENDING_SEND_SIZE).0,
        "exactly equal is not enough"
    );
    assert!(
        reader_signal_case(7, 1, 1016, FEATURE_PENDING_SEND_SIZE).0,
        "1016 < 1024"
    );
    assert!(
        reader_signal_case(7, 1, 512, FEATURE_PENDING_SEND_SIZE).0,
        "512 <= 512 then 1024"
    );
    assert!(
        reader_signal_case(7, 3, 1500, FEATURE_PENDING_SEND_SIZE).0,
        "batched commit crosses"
    );
    assert!(
        !reader_signal_case(7, 0, 600, FEATURE_PENDING_SEND_SIZE).0,
        "nothing read"
    );
}

#[test]
fn full_writer_is_woken_by_reader() {
    let m = ring(DATA);
    let (mut p, mut c) = halves(&m);
    let mut n = 0u64;
    let err = loop {
        match p.write_inband(n, PacketFlags::empty(), &[&[7u8; 488]]) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
    };
    assert_eq!((n, err), (7, RingError::Full { needed: 512 }));
    let mut buf = vec![0u8; DATA];
    let r = c.read_packet(&mut buf).unwrap().unwrap();
    assert!(r.signal, "reader must wake the blocked writer");
    assert_eq!(c.stats().signals, 1);
    let r = c.read_packet(&mut buf).unwrap().unwrap();
    assert!(!r.signal, "writer already had room");
    let _ = p
        .write_inband(n, PacketFlags::empty(), &[&[7u8; 488]])
        .unwrap();
    assert_eq!(ctl(&m).pending_send_size, 0);
}

#[test]
fn drain_batches_and_rechecks() {
    let m = ring(DATA);
    let (mut p, mut c) = halves(&m);
    for i in 0..5 {
        let _ = p
            .write_inband(i, PacketFlags::empty(), &[&pattern(i as usize, 40)])
            .unwrap();
    }
    let mut buf = vec![0u8; DATA];
    let mut seen = Vec::new();
    let d = c
        .drain(&mut buf, 3, |info, bytes| {
            seen.push((info.desc.trans_id, bytes.len()))
        })
        .unwrap();
    assert_eq!(
        d,
        Drained {
            packets: 3,
            signal: false,
            more: true
        }
    );
    let d = c
        .drain(&mut buf, usize::MAX, |info, _| {
            seen.push((info.desc.trans_id, 0))
        })
        .unwrap();
    assert_eq!(
        d,
        Drained {
            packets: 2,
            signal: false,
            more: false
        }
    );
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert_eq!(ctl(&m).interrupt_mask, 0);
    assert_eq!(ctl(&m).read_index, ctl(&m).write_index);
}

#[test]
fn peek_then_advance() {
    let m = ring(DATA);
    let (mut p, mut c) = halves(&m);
    let _ = p.write_completion(9, &[b"xyz"]).unwrap();
    let mut buf = [0u8; 64];
    let a = c.peek_packet(&mut buf).unwrap().unwrap();
    let b = c.peek_packet(&mut buf).unwrap().unwrap();
    assert_eq!(a, b);
    assert_eq!(a.desc.packet_type, PacketType::COMPLETION);
    assert!(c.advance());
    assert!(!c.advance(), "nothing peeked");
    assert_eq!(ctl(&m).read_index, 0, "not committed yet");
    assert!(!c.commit().unwrap());
    assert_eq!(ctl(&m).read_index, 32);
}

#[test]
fn small_buffer_is_not_fatal() {
    let m = ring(DATA);
    let (mut p, mut c) = halves(&m);
    let _ = p
        .write_inband(1, PacketFlags::empty(), &[&[0u8; 100]])
        .unwrap();
    let mut small = [0u8; 64];
    assert_eq!(
        c.read_packet(&mut small),
        Err(RingError::BufferTooSmall {
            needed: 120,
            len: 64
        })
    );
    assert!(!c.is_failed());
    let mut big = [0u8; 128];
    assert_eq!(c.read_packet(&mut big).unwrap().unwrap().info.len, 120);
}

#[test]
fn writer_length_mismatch_publishes_nothing() {
    let m = ring(DATA);
    let (mut p, _c) = halves(&m);
    let mut w = p.reserve(16).unwrap();
    w.put(&[1; 8]);
    assert_eq!(
        w.commit(),
        Err(RingError::LengthMismatch {
            reserved: 16,
            written: 8
        })
    );
    let mut w = p.reserve(8).unwrap();
    w.put(&[1; 16]);
    assert_eq!(
        w.commit(),
        Err(RingError::LengthMismatch {
            reserved: 8,
            written: 16
        })
    );
    assert_eq!(ctl(&m).write_index, 0);
    assert!(!p.is_failed());
}

fn assert_consumer_fails(m: &AlignedRingBuffer, expected: RingError) {
    let mut c = RingConsumer::new(m).unwrap();
    let mut buf = vec![0u8; DATA];
    assert_eq!(c.read_packet(&mut buf), Err(expected));
    assert!(expected.is_fatal());
    assert!(c.is_failed());
    assert_eq!(c.read_packet(&mut buf), Err(RingError::Failed));
    assert_eq!(c.available(), Err(RingError::Failed));
    assert_eq!(c.commit(), Err(RingError::Failed));
}

#[test]
fn hostile_write_index() {
    let size = DATA as u32;
    for bad in [size, size + 8, u32::MAX, 4, 13] {
        let m = ring(DATA);
        m.store_u32(WRITE_INDEX_OFFSET, bad, Ordering::Relaxed);
        assert_consumer_fails(&m, RingError::BadWriteIndex { index: bad, size });
        assert_eq!(
            RingProducer::new(&m).err(),
            Some(RingError::BadWriteIndex { index: bad, size })
        );
    }
}

#[test]
fn hostile_read_index() {
    let size = DATA as u32;
    for bad in [size, u32::MAX - 7, 12] {
        let m = ring(DATA);
        let (mut p, _c) = halves(&m);
        m.store_u32(READ_INDEX_OFFSET, bad, Ordering::Relaxed);
        let e = RingError::BadReadIndex { index: bad, size };
        assert_eq!(p.write_inband(1, PacketFlags::empty(), &[]), Err(e));
        assert!(p.is_failed());
        assert_eq!(
            p.write_inband(1, PacketFlags::empty(), &[]),
            Err(RingError::Failed)
        );
        assert_eq!(p.writable_len(), Err(RingError::Failed));
        assert_eq!(RingConsumer::new(&m).err(), Some(e));
    }
}

#[test]
fn hostile_descriptors() {
    let cases: [(u16, u16, u32, RingError); 8] = [
        (2, 0, 64, RingError::PacketTooShort { len: 0 }),
        (2, 1, 64, RingError::PacketTooShort { len: 8 }),
        (
            2,
            8,
            64,
            RingError::PacketTooLong {
                len: 64,
                available: 64,
            },
        ),
        (
            2,
            u16::MAX,
            64,
            RingError::PacketTooLong {
                len: u32::from(u16::MAX) * 8,
                available: 64,
            },
        ),
        (0, 4, 64, RingError::BadDataOffset { offset: 0, len: 32 }),
        (1, 4, 64, RingError::BadDataOffset { offset: 8, len: 32 }),
        (
            5,
            4,
            64,
            RingError::BadDataOffset {
                offset: 40,
                len: 32,
            },
        ),
        (2, 2, 16, RingError::Truncated { available: 16 }),
    ];
    for (offset8, len8, write, expected) in cases {
        let m = ring(DATA);
        forge(&m, 0, offset8, len8, write);
        assert_consumer_fails(&m, expected);
    }
    // A packet that claims exactly what is published minus the trailer is fine.
    let m = ring(DATA);
    forge(&m, 0, 2, 7, 64);
    let mut c = RingConsumer::new(&m).unwrap();
    assert_eq!(c.read_packet(&mut [0u8; 64]).unwrap().unwrap().info.len, 56);
}

#[test]
fn hostile_descriptor_across_the_wrap() {
    // Descriptor starting 8 bytes before the end, claiming more than published.
    let m = ring_at(DATA, DATA as u32 - 8);
    let desc = PacketDescriptor {
        packet_type: PacketType(0xffff),
        offset8: 2,
        len8: 100,
        flags: 0,
        trans_id: 0,
    };
    let bytes = zerocopy::IntoBytes::as_bytes(&desc);
    write_wrapping(&m, DATA as u32, DATA as u32 - 8, bytes);
    m.store_u32(WRITE_INDEX_OFFSET, 24, Ordering::Release);
    assert_consumer_fails(
        &m,
        RingError::PacketTooLong {
            len: 800,
            available: 32,
        },
    );
}
