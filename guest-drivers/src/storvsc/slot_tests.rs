//! The request slot table: unknown, stale, reused and forged transaction ids are refused without
//! touching other requests; a full table answers Busy and recovers; submit/complete cycles allocate
//! nothing (counted by a test allocator, per thread so parallel tests do not interfere).
use super::tests::{completion, ready, ready_with};
use super::*;
use core::cell::Cell;
use std::alloc::{GlobalAlloc, Layout, System};
use storvsp_protocol::SrbStatus;
use vmbus::packet::{build_packet, PacketFlags};

std::thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting allocations made by the current thread.
struct Counting;

// SAFETY: every call is forwarded unchanged to `System`, which upholds the `GlobalAlloc` contract;
// the counter is a const-initialised thread-local `Cell` that never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's `layout` contract is passed through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with `layout` (above).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// A good completion of `r` moving `bytes`.
fn good(r: &Request, bytes: u32) -> Vec<u8> {
    let mut p = r.packet;
    p.operation.set(Operation::COMPLETE_IO.0);
    let mut srb = p.srb();
    srb.srb_status = SrbStatus::SUCCESS.0;
    srb.data_transfer_length.set(bytes);
    p.set_srb(&srb);
    completion(r.trans_id, &p)
}

/// `bytes` re-addressed to `trans_id`.
fn with_id(bytes: &[u8], trans_id: u64) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[8..16].copy_from_slice(&trans_id.to_le_bytes());
    b
}

#[test]
fn unknown_stale_reused_and_forged_ids_are_refused() {
    let mut s = ready();
    let a = s.read_tagged(1, 0, 0, 8, &[1], 0).unwrap();
    let answer_a = good(&a, 4096);
    assert_eq!(s.complete(&answer_a).unwrap().tag, 1);
    // B reuses A's slot (freed last, taken first) under a new generation.
    let b = s.read_tagged(2, 0, 8, 8, &[2], 0).unwrap();
    assert_ne!(b.trans_id, a.trans_id);
    assert_eq!(b.trans_id & 0xFFFF_FFFF, a.trans_id & 0xFFFF_FFFF);
    // A's completion replayed: refused, B untouched.
    assert_eq!(
        s.complete(&answer_a).unwrap_err(),
        StorvscError::UnknownTransaction(a.trans_id)
    );
    assert_eq!(s.outstanding(), 1);
    // Forged: B's slot with other generations, slots out of range, slot "0", the reserved-looking
    // ids — all refused, B still outstanding.
    let answer_b = good(&b, 4096);
    let forged = [
        b.trans_id ^ (1 << 40),
        b.trans_id.wrapping_add(1 << 32),
        b.trans_id & 0xFFFF_FFFF_0000_0000,
        (b.trans_id & 0xFFFF_FFFF_0000_0000) | (DEFAULT_MAX_OUTSTANDING as u64 + 1),
        0x1_0000_0000,
        0xDEAD_BEEF_0000_0002,
    ];
    for id in forged {
        assert_eq!(
            s.complete(&with_id(&answer_b, id)).unwrap_err(),
            StorvscError::UnknownTransaction(id),
            "{id:#x}"
        );
        assert_eq!(s.outstanding(), 1);
    }
    // B's real completion still lands, once.
    let c = s.complete(&answer_b).unwrap();
    assert_eq!((c.trans_id, c.tag, c.result), (b.trans_id, 2, Ok(4096)));
    assert!(s.complete(&answer_b).is_err());
    assert_eq!(s.outstanding(), 0);
}

#[test]
fn a_stale_id_does_not_complete_the_request_now_in_its_slot() {
    let mut s = ready_with(Storvsc::with_capacity(1));
    let mut old: Vec<Vec<u8>> = Vec::new();
    for i in 0..5u32 {
        let r = s.read_tagged(i, 0, 0, 8, &[1], 0).unwrap();
        // Every earlier id names this same (only) slot; none completes `r`.
        for stale in &old {
            assert!(s.complete(stale).is_err());
        }
        assert_eq!(s.outstanding(), 1);
        let answer = good(&r, 4096);
        assert_eq!(s.complete(&answer).unwrap().tag, i);
        old.push(answer);
    }
}

#[test]
fn full_table_is_busy_and_recovers() {
    let mut s = ready_with(Storvsc::with_capacity(4));
    assert_eq!(s.capacity(), 4);
    let reqs: Vec<Request> = (0..4)
        .map(|i| s.read_tagged(i, 0, u64::from(i), 1, &[1], 0).unwrap())
        .collect();
    assert_eq!(s.read(0, 9, 1, &[1], 0).unwrap_err(), StorvscError::Busy(4));
    assert_eq!(s.synchronize_cache(0).unwrap_err(), StorvscError::Busy(4));
    assert_eq!(s.outstanding(), 4);
    // One completes: one more fits, then Busy again.
    assert_eq!(s.complete(&good(&reqs[2], 512)).unwrap().tag, 2);
    let r = s.read_tagged(9, 0, 9, 1, &[1], 0).unwrap();
    assert!(matches!(s.test_unit_ready(0), Err(StorvscError::Busy(4))));
    // A request the ring refused is cancelled and frees its slot too.
    assert_eq!(s.cancel(r.trans_id), Some(9));
    assert_eq!(s.cancel(r.trans_id), None);
    let r = s.test_unit_ready(0).unwrap();
    for req in [&reqs[0], &reqs[1], &reqs[3], &r] {
        assert!(s.complete(&good(req, 0)).is_ok());
    }
    assert_eq!((s.outstanding(), s.capacity()), (0, 4));
}

#[test]
fn ten_thousand_cycles_allocate_nothing() {
    let mut s = ready_with(Storvsc::with_capacity(32));
    let pfns = [7u64, 8];
    let mut buf = [0u8; 256];
    let mut in_flight = [0u64; 4];
    let before = allocations();
    for i in 0..10_000u32 {
        // Keep four outstanding and complete them out of order.
        let slot = (i % 4) as usize;
        if i >= 4 {
            let trans_id = in_flight[slot];
            let mut p = VstorPacket::new(Operation::COMPLETE_IO, 0);
            let mut srb = VmscsiRequest::new_zeroed();
            srb.srb_status = SrbStatus::SUCCESS.0;
            srb.data_transfer_length.set(4096);
            p.set_srb(&srb);
            let n = build_packet(
                &mut buf,
                PacketType::COMPLETION,
                PacketFlags::empty(),
                trans_id,
                &[],
                p.as_wire(),
            )
            .unwrap();
            let c = s.complete(&buf[..n]).unwrap();
            assert_eq!((c.trans_id, c.tag, c.result), (trans_id, i - 4, Ok(4096)));
        }
        let r = if i % 2 == 0 {
            s.read_tagged(i, 0, u64::from(i), 8, &pfns, 2048)
        } else {
            s.write_tagged(i, 0, u64::from(i), 8, &pfns, 2048, false)
        }
        .unwrap();
        assert_eq!(r.range().unwrap().pfns, &pfns);
        in_flight[slot] = r.trans_id;
    }
    let during = allocations() - before;
    assert_eq!(during, 0, "allocations on the submit/complete path");
    assert_eq!((s.outstanding(), s.capacity()), (4, 32));
}

/// The counter works: the test above could fail.
#[test]
fn the_counting_allocator_counts() {
    let before = allocations();
    let v: Vec<u8> = Vec::with_capacity(10);
    drop(v);
    assert_eq!(allocations() - before, 1);
}
