//! A hostile guest, property-tested: arbitrary packets (well-framed rings carrying arbitrary types,
//! headers and payloads, or arbitrary raw ring bytes) never make the worker panic, never fail a
//! well-framed ring, and never disturb a legitimate request queued behind them.

mod storvsp_common;

use std::sync::Arc;

use host_vsp::backend::{BlockBackend, RamDisk};
use host_vsp::synthetic::storvsp::StorvspConfig;
use proptest::prelude::*;
use storvsp_common::Rig;
use vmbus::packet::{PacketFlags, PacketType};

const DISK: u64 = 1 << 20;
/// Guest pages; the legitimate request's buffer is page 40.
const PAGES: usize = 64;

#[derive(Debug, Clone)]
struct Junk {
    packet_type: u16,
    flags: u16,
    trans_id: u64,
    header: Vec<u8>,
    payload: Vec<u8>,
}

fn junk() -> impl Strategy<Value = Junk> {
    (
        prop_oneof![Just(6u16), Just(9u16), Just(0xBu16), any::<u16>()],
        any::<u16>(),
        any::<u64>(),
        (0usize..6).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n * 8)),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..128),
            // Mostly-valid EXECUTE_SRB packets with random fields.
            proptest::collection::vec(any::<u8>(), 64).prop_map(|mut v| {
                v[0..4].copy_from_slice(&3u32.to_le_bytes());
                v
            }),
        ],
    )
        .prop_map(|(packet_type, flags, trans_id, header, payload)| Junk {
            packet_type,
            flags,
            trans_id,
            header,
            payload,
        })
}

fn rig() -> (Rig, Arc<RamDisk>) {
    let disk = Arc::new(RamDisk::new(DISK));
    let mut rig = Rig::new(disk.clone(), PAGES, StorvspConfig::default());
    rig.handshake();
    (rig, disk)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn junk_packets_never_fail_the_ring_or_corrupt_a_request(packets in proptest::collection::vec(junk(), 1..24)) {
        let (mut rig, disk) = rig();
        for j in &packets {
            // Headers are a multiple of 8 bytes (as the ring framing needs); their contents are random.
            let _ = rig.to_host.write_packet(
                PacketType(j.packet_type),
                PacketFlags::from_bits_truncate(j.flags),
                j.trans_id,
                &j.header,
                &[&j.payload],
            );
        }
        // A legitimate write then read, behind the junk.
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 5) as u8).collect();
        let w = rig.drv.write(0, 100, 8, &[40], 0, false).unwrap();
        let r = rig.drv.read(0, 100, 8, &[41, 42], 100).unwrap();
        let (wid, rid) = (w.trans_id, r.trans_id);
        rig.poke(40, 0, &data);
        rig.send(&w);
        rig.send(&r);
        let mut ours = Vec::new();
        for _ in 0..64 {
            let res = rig.worker.poll();
            prop_assert!(!res.failed, "a well-framed ring never fails");
            let mut buf = vec![0u8; 64 * 1024];
            let mut packets = Vec::new();
            let _ = rig.from_host.drain(&mut buf, usize::MAX, |info, b| packets.push(b[..info.len].to_vec())).unwrap();
            for p in packets {
                // Completions of junk carry junk ids the driver never issued; only ours matter.
                if let Ok(guest_drivers::storvsc::Event::Completed(c)) = rig.drv.handle_packet(&p) {
                    ours.push(c);
                }
            }
            if ours.len() == 2 {
                break;
            }
        }
        prop_assert_eq!(ours.len(), 2);
        for c in &ours {
            prop_assert!(c.trans_id == wid || c.trans_id == rid);
            prop_assert_eq!(c.result, Ok(4096));
        }
        prop_assert_eq!(rig.peek(41, 100, 4096), data.clone());
        let mut on_disk = vec![0u8; 4096];
        disk.read_at(100 * 512, &mut on_disk).unwrap();
        prop_assert_eq!(on_disk, data);
    }

    #[test]
    fn raw_ring_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 16..2048), write_index in any::<u32>()) {
        let (mut rig, _disk) = rig();
        // The guest scribbles over its ring's data area and write index.
        let mem = rig.to_host.memory().clone();
        vmbus::mem::RingMemory::write_bytes(&*mem, 4096, &bytes);
        vmbus::mem::RingMemory::store_u32(&*mem, 0, write_index % 8192, std::sync::atomic::Ordering::Release);
        for _ in 0..4 {
            let _ = rig.worker.poll();
        }
        let stats = rig.worker.stats();
        prop_assert!(stats.packets >= stats.requests);
    }
}
