//! A guest that stops reading its host→guest ring: the worker keeps the completions pending, arms
//! pending_send_sz, stops taking the guest's packets and reports nothing to spin on; once the guest
//! reads, everything is delivered in order.

use std::sync::atomic::Ordering;
use vmbus::mem::RingMemory;
use vmbus::packet::{Packet, PacketKind};
use vmbus::ring::PENDING_SEND_SIZE_OFFSET;

use super::random::Rig;

#[test]
fn a_full_guest_ring_makes_the_worker_wait_not_spin() {
    // 4 KiB for host→guest: about 64 completions fit.
    let mut rig = Rig::with_rings(128 * 1024, 4096);
    let requests = 400;
    for _ in 0..requests {
        // A section index past the buffer: each is completed with FAIL.
        rig.section(1000, &[], 10);
    }
    let mut polls = 0;
    loop {
        let r = rig.worker.poll(true);
        assert!(!r.failed);
        polls += 1;
        if !r.progressed {
            assert!(!r.more, "nothing to spin on while the guest's ring is full");
            break;
        }
        assert!(
            polls < 100,
            "the worker kept making progress into a full ring"
        );
    }
    let pending = rig
        .from_host
        .memory()
        .load_u32(PENDING_SEND_SIZE_OFFSET, Ordering::Acquire);
    assert_ne!(pending, 0, "pending_send_sz asks the guest to signal");
    assert!(rig.worker.stats().ring_full > 0);
    // The guest reads; every request ends up completed, in order.
    let mut buf = vec![0u8; 4096];
    let mut completions = 0;
    for _ in 0..10_000 {
        while let Some(read) = rig.from_host.read_packet(&mut buf).unwrap() {
            let p = Packet::parse(&buf[..read.info.len]).unwrap();
            assert!(matches!(p.kind, PacketKind::Completion));
            assert_eq!(&p.payload[4..8], &2u32.to_le_bytes());
            completions += 1;
        }
        if completions == requests {
            break;
        }
        assert!(!rig.worker.poll(true).failed);
    }
    assert_eq!(completions, requests);
    assert_eq!(rig.worker.stats().bad_sections, requests as u64);
}
