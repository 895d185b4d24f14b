//! How the ring halves use their memory: copies and index accesses per packet, one commit per
//! drained batch, identical bytes from the gather and the staged write paths, a cached
//! write index that is revalidated. (Rings over scattered pages: `tests/ring_paged.rs`.)

use core::cell::Cell;

use super::*;
use crate::mem::AlignedRingBuffer;
use crate::packet::{GpaRangeSpec, PacketFlags, PacketType};
use alloc::vec;
use alloc::vec::Vec;

/// Counts every call a ring half makes into its memory.
#[derive(Debug, Default)]
struct Counts {
    loads: Cell<usize>,
    write_index_loads: Cell<usize>,
    read_index_stores: Cell<usize>,
    stores: Cell<usize>,
    byte_calls: Cell<usize>,
    wrapped_reads: Cell<usize>,
    wrapped_writes: Cell<usize>,
}

struct Counting<'a> {
    mem: &'a AlignedRingBuffer,
    counts: &'a Counts,
}

fn bump(c: &Cell<usize>) {
    c.set(c.get() + 1);
}

impl RingMemory for Counting<'_> {
    fn len(&self) -> usize {
        self.mem.len()
    }
    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        bump(&self.counts.loads);
        if off == WRITE_INDEX_OFFSET {
            bump(&self.counts.write_index_loads);
        }
        self.mem.load_u32(off, order)
    }
    fn store_u32(&self, off: usize, value: u32, order: Ordering) {
        bump(&self.counts.stores);
        if off == READ_INDEX_OFFSET {
            bump(&self.counts.read_index_stores);
        }
        self.mem.store_u32(off, value, order)
    }
    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        bump(&self.counts.byte_calls);
        self.mem.read_bytes(off, dst)
    }
    fn write_bytes(&self, off: usize, src: &[u8]) {
        bump(&self.counts.byte_calls);
        self.mem.write_bytes(off, src)
    }
    fn read_wrapped(&self, region: CircularRegion, pos: usize, dst: &mut [u8]) {
        bump(&self.counts.wrapped_reads);
        self.mem.read_wrapped(region, pos, dst)
    }
    fn write_wrapped(&self, region: CircularRegion, pos: usize, parts: &[&[u8]]) {
        bump(&self.counts.wrapped_writes);
        self.mem.write_wrapped(region, pos, parts)
    }
}

fn ring(data: usize) -> AlignedRingBuffer {
    let m = AlignedRingBuffer::for_ring(data);
    initialize_control_page(&m, FEATURE_PENDING_SEND_SIZE).unwrap();
    m
}

#[test]
fn one_ring_copy_per_written_packet() {
    let m = ring(8192);
    let counts = Counts::default();
    let mut p = RingProducer::new(Counting {
        mem: &m,
        counts: &counts,
    })
    .unwrap();
    for (i, len) in [0usize, 5, 64, 100, 4096].into_iter().enumerate() {
        let before = counts.wrapped_writes.get();
        let body = vec![i as u8; len];
        let (a, b) = body.split_at(len / 2);
        let _ = p
            .write_inband(i as u64, PacketFlags::empty(), &[a, b])
            .unwrap();
        assert_eq!(counts.wrapped_writes.get() - before, 1, "payload {len}");
    }
    // Attaching loads write_index; per packet: read_index (room check), then the publish:
    // write_index store, interrupt_mask and read_index loads.
    assert_eq!(counts.loads.get(), 1 + 5 * 3);
    assert_eq!(counts.stores.get(), 5);
    assert_eq!(counts.byte_calls.get(), 0);
}

#[test]
fn staged_writer_copies_small_packets_once() {
    let m = ring(8192);
    let counts = Counts::default();
    let mut p = RingProducer::new(Counting {
        mem: &m,
        counts: &counts,
    })
    .unwrap();
    // A GPA-direct packet (descriptor, range header, PFNs, payload): all staged, one copy.
    let pfns = [1u64, 2, 3];
    let range = GpaRangeSpec {
        byte_count: 3 * 4096,
        byte_offset: 0,
        pfns: &pfns,
    };
    let _ = p
        .write_gpa_direct(7, PacketFlags::empty(), &[range], &[&[9u8; 64]])
        .unwrap();
    assert_eq!(counts.wrapped_writes.get(), 1);
    // A large put goes out with what was staged before it, then the trailer: two copies.
    let mut w = p.reserve(16 + 1000).unwrap();
    w.put(&[1u8; 16]);
    w.put(&[2u8; 1000]);
    let _ = w.commit().unwrap();
    assert_eq!(counts.wrapped_writes.get(), 3);
    assert_eq!(counts.byte_calls.get(), 0);
}

#[test]
fn read_copies_descriptor_then_body_and_drain_commits_once() {
    let m = ring(8192);
    let mut p = RingProducer::new(&m).unwrap();
    for i in 0..10u64 {
        let _ = p
            .write_inband(i, PacketFlags::empty(), &[&[i as u8; 40]])
            .unwrap();
    }
    let counts = Counts::default();
    let mut c = RingConsumer::new(Counting {
        mem: &m,
        counts: &counts,
    })
    .unwrap();
    let mut buf = vec![0u8; 256];
    let r = c.read_packet(&mut buf).unwrap().unwrap();
    assert_eq!(r.info.desc.trans_id, 0);
    assert_eq!(counts.wrapped_reads.get(), 2, "descriptor, then the rest");
    assert_eq!(counts.read_index_stores.get(), 1);
    let loads = counts.write_index_loads.get();
    let mut seen = 0;
    let d = c
        .drain(&mut buf, usize::MAX, |info, bytes| {
            assert_eq!(info.desc.trans_id, 1 + seen);
            assert!(bytes[16..].iter().all(|&b| b == 1 + seen as u8));
            seen += 1;
        })
        .unwrap();
    assert_eq!((d.packets, d.signal, d.more), (9, false, false));
    assert_eq!(counts.wrapped_reads.get(), 2 + 9 * 2);
    assert_eq!(
        counts.read_index_stores.get(),
        2,
        "one commit for the batch"
    );
    // The batch was published before the first read: write_index is loaded when the
    // snapshot runs out (finding nothing new) and by the unmask re-check, not per packet.
    assert_eq!(counts.write_index_loads.get() - loads, 2);
    assert_eq!(counts.byte_calls.get(), 0);
}

#[test]
fn cached_write_index_is_revalidated_when_reached() {
    let m = ring(4096);
    let mut p = RingProducer::new(&m).unwrap();
    for i in 0..3u64 {
        let _ = p
            .write_inband(i, PacketFlags::empty(), &[&[0u8; 8]])
            .unwrap();
    }
    let mut c = RingConsumer::new(&m).unwrap();
    let mut buf = vec![0u8; 64];
    let _ = c.read_packet_deferred(&mut buf).unwrap().unwrap();
    // A hostile writer now publishes garbage; packets of the earlier snapshot still read.
    m.store_u32(WRITE_INDEX_OFFSET, 4, Ordering::Release);
    assert!(c.read_packet_deferred(&mut buf).unwrap().is_some());
    assert!(c.read_packet_deferred(&mut buf).unwrap().is_some());
    assert_eq!(
        c.read_packet_deferred(&mut buf),
        Err(RingError::BadWriteIndex {
            index: 4,
            size: 4096
        })
    );
    assert!(c.is_failed());
}

#[test]
fn gather_and_staged_paths_write_identical_bytes() {
    // Four payload slices take the gather path, eight the staged PacketWriter path.
    for start in [0u32, 4096 - 8, 4096 - 48, 4096 - 200] {
        let slices: Vec<Vec<u8>> = (0..8).map(|k| vec![k as u8 + 1; 11 + k * 7]).collect();
        let eight: Vec<&[u8]> = slices.iter().map(|s| &s[..]).collect();
        let flat = slices[..].concat();
        let (a, b) = flat.split_at(flat.len() / 3);
        let (b, c) = b.split_at(b.len() / 2);
        let four: [&[u8]; 4] = [a, b, c, &[]];
        let mut rings = Vec::new();
        for parts in [&four[..], &eight[..]] {
            let m = ring(4096);
            m.store_u32(WRITE_INDEX_OFFSET, start, Ordering::Relaxed);
            m.store_u32(READ_INDEX_OFFSET, start, Ordering::Relaxed);
            let mut p = RingProducer::new(&m).unwrap();
            let w = p
                .write_packet(PacketType::INBAND, PacketFlags::empty(), 9, &[], parts)
                .unwrap();
            let mut bytes = vec![0u8; m.len()];
            m.read_bytes(0, &mut bytes);
            rings.push((bytes, w, p.stats()));
        }
        assert!(rings[0] == rings[1], "start {start}");
    }
}
