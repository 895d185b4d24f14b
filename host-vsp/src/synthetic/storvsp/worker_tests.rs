//! Worker tests with raw packets over in-process rings: the handshake on the wire, completions by
//! transaction id, a full completion ring (pending_send_sz, retry, nothing dropped), back-pressure at
//! the queue depth, and hostile packets (SRB before END_INIT, short packets, unknown operations,
//! foreign packet types, a corrupted ring).

use std::sync::Arc;

use storvsp_protocol::scsi::opcode;
use storvsp_protocol::{
    NtStatus, Operation, ProtocolVersion, SrbStatus, VstorPacket, REQUEST_COMPLETION_FLAG,
};
use vmbus::mem::{AlignedRingBuffer, RingMemory};
use vmbus::packet::{GpaRangeSpec, Packet, PacketFlags, PacketType};
use vmbus::ring::{initialize_control_page, RingConsumer, RingProducer, FEATURE_PENDING_SEND_SIZE};

use super::{LunMap, StorvspConfig, StorvspWorker};
use crate::backend::{BlockBackend, RamDisk};
use crate::guest_memory::{self, GuestMemoryMmap};
use vm_memory::GuestAddress;

type Ring = Arc<AlignedRingBuffer>;

struct Pair {
    to_host: RingProducer<Ring>,
    from_host: RingConsumer<Ring>,
    worker: StorvspWorker<Ring>,
    mem: GuestMemoryMmap,
    disk: Arc<RamDisk>,
}

fn ring(data: usize) -> Ring {
    let r = Arc::new(AlignedRingBuffer::for_ring(data));
    initialize_control_page(&*r, FEATURE_PENDING_SEND_SIZE).unwrap();
    r
}

fn pair(out_ring: usize, config: StorvspConfig) -> Pair {
    let (a, b) = (ring(64 * 1024), ring(out_ring));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 * 4096)]).unwrap();
    let disk = Arc::new(RamDisk::new(1 << 20));
    let worker = StorvspWorker::new(
        RingConsumer::new(a.clone()).unwrap(),
        RingProducer::new(b.clone()).unwrap(),
        mem.clone(),
        LunMap::new().with_backend(0, disk.clone()),
        config,
    )
    .unwrap();
    Pair {
        to_host: RingProducer::new(a).unwrap(),
        from_host: RingConsumer::new(b).unwrap(),
        worker,
        mem,
        disk,
    }
}

impl Pair {
    fn send(&mut self, trans_id: u64, p: &VstorPacket) {
        let _ = self
            .to_host
            .write_inband(trans_id, PacketFlags::COMPLETION_REQUESTED, &[p.as_wire()])
            .unwrap();
    }

    fn send_read(&mut self, trans_id: u64, lba: u64, pfn: u64) {
        let mut p = VstorPacket::new(Operation::EXECUTE_SRB, REQUEST_COMPLETION_FLAG);
        let mut srb = p.srb();
        srb.cdb_length = 10;
        srb.cdb_or_sense[0] = opcode::READ_10;
        srb.cdb_or_sense[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
        srb.cdb_or_sense[7..9].copy_from_slice(&8u16.to_be_bytes());
        srb.sense_info_length = 20;
        srb.data_transfer_length.set(4096);
        p.set_srb(&srb);
        let range = GpaRangeSpec {
            byte_count: 4096,
            byte_offset: 0,
            pfns: &[pfn],
        };
        let _ = self
            .to_host
            .write_gpa_direct(
                trans_id,
                PacketFlags::COMPLETION_REQUESTED,
                &[range],
                &[p.as_wire()],
            )
            .unwrap();
    }

    /// Every completion now in the host→guest ring: (trans_id, vstor packet).
    fn completions(&mut self) -> Vec<(u64, VstorPacket)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4096];
        while let Some(read) = self.from_host.read_packet(&mut buf).unwrap() {
            let p = Packet::parse(&buf[..read.info.len]).unwrap();
            assert_eq!(p.desc.packet_type, PacketType::COMPLETION);
            assert_eq!(p.payload.len(), 64);
            out.push((p.desc.trans_id, VstorPacket::parse(p.payload).unwrap()));
        }
        out
    }

    fn init(&mut self) {
        self.send(1, &VstorPacket::new(Operation::BEGIN_INIT, 1));
        let mut v = VstorPacket::new(Operation::QUERY_PROTOCOL_VERSION, 1);
        v.set_version(ProtocolVersion::WIN10);
        self.send(2, &v);
        self.send(3, &VstorPacket::new(Operation::QUERY_PROPERTIES, 1));
        self.send(4, &VstorPacket::new(Operation::END_INIT, 1));
        let r = self.worker.poll();
        assert_eq!((r.received, r.completed), (4, 4));
        let c = self.completions();
        assert_eq!(c.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(c.iter().all(
            |(_, p)| p.operation() == Operation::COMPLETE_IO && p.status() == NtStatus::SUCCESS
        ));
        let max = c[2].1.properties().max_transfer_bytes.get();
        assert!(
            max > 0 && max.is_multiple_of(4096),
            "max_transfer_bytes {max}"
        );
        assert_eq!(
            self.worker.handshake().ready_version(),
            Some(ProtocolVersion::WIN10)
        );
    }
}

#[test]
fn handshake_over_rings_signals_once() {
    let mut p = pair(64 * 1024, StorvspConfig::default());
    p.send(
        0xFFFF_FFFF_FFFF_FFFF,
        &VstorPacket::new(Operation::BEGIN_INIT, 1),
    );
    let r = p.worker.poll();
    assert!(
        r.signal_guest,
        "first completion into an empty ring signals"
    );
    assert_eq!(p.worker.stats().signals, 1);
    let c = p.completions();
    assert_eq!(c[0].0, 0xFFFF_FFFF_FFFF_FFFF);
    // Guest masks its interrupts (polling): no signal.
    p.from_host.mask_interrupts();
    let mut v = VstorPacket::new(Operation::QUERY_PROTOCOL_VERSION, 1);
    v.set_version(ProtocolVersion(0x0700));
    p.send(5, &v);
    let r = p.worker.poll();
    assert!(!r.signal_guest);
    assert_eq!(p.completions()[0].1.status(), NtStatus::REVISION_MISMATCH);
}

#[test]
fn srb_completions_carry_transaction_ids_and_data() {
    let mut p = pair(
        64 * 1024,
        StorvspConfig {
            io_threads: 4,
            ..StorvspConfig::default()
        },
    );
    p.init();
    let pattern: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i / 512) as u8).collect();
    p.disk.write_at(0, &pattern, false).unwrap();
    for i in 0..32u64 {
        p.send_read(1000 + i, i * 8, 10 + i);
    }
    let mut got = Vec::new();
    while got.len() < 32 {
        let r = p.worker.poll();
        assert!(!r.failed);
        got.extend(p.completions());
        if got.len() < 32 {
            p.worker
                .wait_for_completion(std::time::Duration::from_millis(100));
        }
    }
    let mut ids: Vec<u64> = got.iter().map(|c| c.0).collect();
    ids.sort();
    assert_eq!(ids, (1000..1032).collect::<Vec<_>>());
    for (id, pkt) in got {
        let srb = pkt.srb();
        assert_eq!(srb.status(), SrbStatus::SUCCESS);
        assert_eq!(srb.data_transfer_length.get(), 4096);
        let i = id - 1000;
        let mut page = vec![0u8; 4096];
        guest_memory::read(&p.mem, (10 + i) * 4096, &mut page).unwrap();
        assert_eq!(
            page,
            &pattern[(i * 4096) as usize..((i + 1) * 4096) as usize]
        );
    }
    assert_eq!(p.worker.stats().requests, 32);
    assert_eq!(p.worker.stats().bytes, 32 * 4096);
    assert!(p.worker.stats().max_in_flight >= 1);
}

#[test]
fn full_completion_ring_keeps_completions_pending() {
    // The host→guest ring holds only a few 96-byte completions.
    let mut p = pair(512, StorvspConfig::default());
    p.init();
    for i in 0..20u64 {
        p.send_read(100 + i, 0, 1);
    }
    let r = p.worker.poll();
    assert!(r.pending_completions > 0, "{r:?}");
    assert!(p.worker.stats().full_ring_stalls > 0);
    // The producer asked the guest to signal when room appears.
    assert_ne!(
        p.from_host
            .memory()
            .load_u32(0x0C, std::sync::atomic::Ordering::Acquire),
        0
    );
    let mut ids = Vec::new();
    for _ in 0..100 {
        let mut buf = vec![0u8; 4096];
        let mut guest_signals = false;
        // The guest drains and learns whether the host waits for room.
        let drained = p.from_host.drain(&mut buf, 64, |info, bytes| {
            ids.push(Packet::parse(&bytes[..info.len]).unwrap().desc.trans_id);
        });
        guest_signals |= drained.unwrap().signal;
        let r = p.worker.poll();
        if r.pending_completions == 0 && ids.len() == 20 {
            break;
        }
        assert!(guest_signals || r.completed > 0 || ids.len() == 20);
    }
    assert_eq!(
        ids,
        (100..120).collect::<Vec<_>>(),
        "nothing dropped, nothing duplicated"
    );
}

#[test]
fn queue_depth_applies_back_pressure() {
    let mut p = pair(
        512,
        StorvspConfig {
            queue_depth: 4,
            ..StorvspConfig::default()
        },
    );
    p.init();
    for i in 0..12u64 {
        p.send_read(i + 10, 0, 1);
    }
    let r = p.worker.poll();
    assert!(r.more, "packets left in the ring");
    assert!(r.received < 12);
    assert!(p.worker.pending_completions() + p.worker.in_flight() <= 4);
    assert!(p.worker.stats().backpressure > 0);
    let mut n = p.completions().len();
    for _ in 0..50 {
        let _ = p.worker.poll();
        n += p.completions().len();
    }
    assert_eq!(n, 12);
}

#[test]
fn hostile_control_packets() {
    let mut p = pair(64 * 1024, StorvspConfig::default());
    // An SRB before the handshake.
    p.send_read(7, 0, 1);
    let _ = p.worker.poll();
    let c = p.completions();
    assert_eq!(c[0].0, 7);
    assert_eq!(c[0].1.status(), NtStatus::INVALID_DEVICE_STATE);
    assert_eq!(c[0].1.srb().status(), SrbStatus::INVALID_REQUEST);
    p.init();
    // Unknown operation.
    p.send(8, &VstorPacket::new(Operation(0x77), 1));
    // A short SRB (pre-Windows 8 size after agreeing on 0x0602).
    let srb = VstorPacket::new(Operation::EXECUTE_SRB, 1);
    let _ = p
        .to_host
        .write_inband(
            9,
            PacketFlags::COMPLETION_REQUESTED,
            &[&srb.as_wire()[..48]],
        )
        .unwrap();
    // Too short to be a vstor packet at all.
    let _ = p
        .to_host
        .write_inband(10, PacketFlags::COMPLETION_REQUESTED, &[&[3u8; 20]])
        .unwrap();
    // A completion and a transfer-page packet from the guest are dropped.
    let _ = p.to_host.write_completion(11, &[srb.as_wire()]).unwrap();
    let _ = p
        .to_host
        .write_transfer_pages(12, PacketFlags::empty(), 0, false, &[], &[srb.as_wire()])
        .unwrap();
    let r = p.worker.poll();
    assert!(!r.failed);
    let c = p.completions();
    let status: Vec<(u64, NtStatus)> = c.iter().map(|(id, p)| (*id, p.status())).collect();
    assert_eq!(
        status,
        [
            (8, NtStatus::INVALID_DEVICE_REQUEST),
            (9, NtStatus::INVALID_PARAMETER),
            (10, NtStatus::INVALID_PARAMETER)
        ]
    );
    assert_eq!(p.worker.stats().dropped, 2);
    assert_eq!(p.worker.stats().malformed, 3);
}

#[test]
fn corrupted_ring_fails_the_channel_without_panicking() {
    let mut p = pair(64 * 1024, StorvspConfig::default());
    p.init();
    // The guest scribbles an invalid write index.
    p.to_host
        .memory()
        .store_u32(0, 13, std::sync::atomic::Ordering::Release);
    let r = p.worker.poll();
    assert!(r.failed);
    assert!(p.worker.is_failed());
    assert!(p.worker.poll().failed);
}

/// Sends a read; returns whether the guest's write asked for a signal.
fn read_signals(p: &mut Pair, trans_id: u64) -> bool {
    let mut vstor = VstorPacket::new(Operation::EXECUTE_SRB, REQUEST_COMPLETION_FLAG);
    let mut srb = vstor.srb();
    srb.cdb_length = 10;
    srb.cdb_or_sense[0] = opcode::READ_10;
    srb.cdb_or_sense[7..9].copy_from_slice(&8u16.to_be_bytes());
    srb.data_transfer_length.set(4096);
    vstor.set_srb(&srb);
    let range = GpaRangeSpec {
        byte_count: 4096,
        byte_offset: 0,
        pfns: &[1],
    };
    p.to_host
        .write_gpa_direct(
            trans_id,
            PacketFlags::COMPLETION_REQUESTED,
            &[range],
            &[vstor.as_wire()],
        )
        .unwrap()
        .signal
}

#[test]
fn poll_mode_suppresses_guest_signals_until_rearmed() {
    let (a, b) = (ring(64 * 1024), ring(64 * 1024));
    let worker = StorvspWorker::new(
        RingConsumer::new(a.clone()).unwrap(),
        RingProducer::new(b.clone()).unwrap(),
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 * 4096)]).unwrap(),
        LunMap::new().with_backend(0, Arc::new(RamDisk::new(1 << 20))),
        StorvspConfig {
            poll_mode: true,
            ..StorvspConfig::default()
        },
    )
    .unwrap();
    let mut p = Pair {
        to_host: RingProducer::new(a).unwrap(),
        from_host: RingConsumer::new(b).unwrap(),
        worker,
        mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4096)]).unwrap(),
        disk: Arc::new(RamDisk::new(512)),
    };
    p.init();
    // A pass in poll mode leaves the guest's signals suppressed: its next request needs none.
    let _ = p.worker.poll();
    assert!(
        !read_signals(&mut p, 100),
        "signal asked for while the host polls"
    );
    let r = p.worker.poll();
    assert_eq!((r.received, r.completed), (1, 1));
    assert_eq!(p.completions().len(), 1);
    // Re-armed with nothing waiting: the guest signals again.
    assert!(!p.worker.rearm());
    assert!(read_signals(&mut p, 101), "no signal after re-arming");
    // A request that races in while the host still polls is reported by the re-arm.
    let _ = p.worker.poll();
    let _ = p.completions();
    assert!(!read_signals(&mut p, 102));
    assert!(p.worker.rearm(), "the raced-in request was not reported");
    // Off: every pass re-arms, like the interrupt-driven mode.
    p.worker.set_poll_mode(false);
    let _ = p.worker.poll();
    let _ = p.completions();
    assert!(read_signals(&mut p, 103));
}
