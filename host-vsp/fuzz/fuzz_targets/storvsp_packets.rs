//! Arbitrary bytes as guest→host ring packets for a StorvspWorker on a small RAM disk.
//!
//! The input is split into packets: each chunk `[type selector, flags, header words, trans id,
//! payload...]` is written as one well-framed ring packet (so the ring itself stays valid and every
//! packet reaches storvsp's parsers), after a handshake so SRBs are executed. The guest memory is
//! small so that GPA ranges mostly fall outside it. The worker must never panic; the completion ring
//! is drained between polls so completions keep flowing.
#![no_main]

use std::sync::Arc;

use host_vsp::backend::RamDisk;
use host_vsp::guest_memory::GuestMemoryMmap;
use host_vsp::synthetic::storvsp::{LunMap, StorvspConfig, StorvspWorker};
use libfuzzer_sys::fuzz_target;
use storvsp_protocol::{Operation, ProtocolVersion, VstorPacket};
use vm_memory::GuestAddress;
use vmbus::mem::AlignedRingBuffer;
use vmbus::packet::{PacketFlags, PacketType};
use vmbus::ring::{initialize_control_page, RingConsumer, RingProducer, FEATURE_PENDING_SEND_SIZE};

fn ring(data: usize) -> Arc<AlignedRingBuffer> {
    let r = Arc::new(AlignedRingBuffer::for_ring(data));
    initialize_control_page(&*r, FEATURE_PENDING_SEND_SIZE).unwrap();
    r
}

fuzz_target!(|data: &[u8]| {
    let (a, b) = (ring(16 * 1024), ring(4096));
    let mut worker = StorvspWorker::new(
        RingConsumer::new(a.clone()).unwrap(),
        RingProducer::new(b.clone()).unwrap(),
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 * 4096)]).unwrap(),
        LunMap::new()
            .with_backend(0, Arc::new(RamDisk::new(64 * 1024)))
            .with_backend(1, Arc::new(RamDisk::read_only_from(vec![7; 8192]))),
        StorvspConfig {
            max_transfer_bytes: 16 * 1024,
            queue_depth: 8,
            ..StorvspConfig::default()
        },
    )
    .unwrap();
    let mut to_host = RingProducer::new(a).unwrap();
    let mut from_host = RingConsumer::new(b).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut drain = |from_host: &mut RingConsumer<Arc<AlignedRingBuffer>>| {
        let _ = from_host.drain(&mut buf, usize::MAX, |_, _| {});
    };
    // Handshake (unless the input asks to skip it, to exercise the not-ready paths).
    if data.first().is_some_and(|b| b & 1 == 0) {
        let mut v = VstorPacket::new(Operation::QUERY_PROTOCOL_VERSION, 1);
        v.set_version(ProtocolVersion::WIN10);
        for p in [
            VstorPacket::new(Operation::BEGIN_INIT, 1),
            v,
            VstorPacket::new(Operation::QUERY_PROPERTIES, 1),
            VstorPacket::new(Operation::END_INIT, 1),
        ] {
            let _ = to_host.write_inband(0, PacketFlags::COMPLETION_REQUESTED, &[p.as_wire()]);
        }
        let _ = worker.poll();
        drain(&mut from_host);
    }
    for chunk in data.get(1..).unwrap_or(&[]).split(|&b| b == 0xA5).take(64) {
        let (head, payload) = chunk.split_at(chunk.len().min(4));
        let mut h = [0u8; 4];
        h[..head.len()].copy_from_slice(head);
        let packet_type = match h[0] % 4 {
            0 => PacketType::INBAND,
            1 | 2 => PacketType::DATA_USING_GPA_DIRECT,
            _ => PacketType(u16::from(h[0])),
        };
        // Header: h[2] words taken from the front of the payload.
        let words = usize::from(h[2] % 8).min(payload.len() / 8);
        let (header, payload) = payload.split_at(words * 8);
        let _ = to_host.write_packet(
            packet_type,
            PacketFlags::from_bits_truncate(u16::from(h[1])),
            u64::from(h[3]),
            header,
            &[payload],
        );
        if h[1] & 0x80 != 0 {
            let _ = worker.poll();
            drain(&mut from_host);
        }
    }
    for _ in 0..4 {
        let _ = worker.poll();
        drain(&mut from_host);
    }
});
