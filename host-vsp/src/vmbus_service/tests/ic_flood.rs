//! An integration-component channel whose guest never lets the ring drain — it refills the ring
//! whenever the host's reading frees the space it asked for (pending_send_sz), on the host's own
//! signal — cannot keep the IC VSP's thread from stopping: closing the channel stops it within the
//! stop bound, rather than leaving it behind still draining.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmbus::packet::PacketFlags;
use vmbus::protocol::Guid;
use vmbus::ring::RingProducer;

use super::super::GuestPages;
use super::guest::{eventually, Setup};
use crate::synthetic::ic::IcVsp;

/// Junk answers until the ring is full (the producer then sets pending_send_sz); returns how many.
fn fill(ring: &Mutex<RingProducer<GuestPages>>, next: &AtomicU64) -> u64 {
    let mut ring = ring.lock().unwrap();
    let mut n = 0;
    // Each is an IC protocol error the VSP counts and drops.
    while ring
        .write_inband(
            next.fetch_add(1, Ordering::Relaxed),
            PacketFlags::empty(),
            &[&[0xEE; 8]],
        )
        .is_ok()
    {
        n += 1;
    }
    n
}

#[test]
fn a_guest_that_keeps_an_ic_ring_full_cannot_keep_its_thread_from_stopping() {
    let ic = IcVsp::heartbeat(Guid::new(0x1c, 1, 2, [4; 8]), 0, 1);
    let control = ic.control();
    let mut setup = Setup::new(vec![Arc::new(ic)]);
    // Far more than the thread needs to notice a stop between bounded drains.
    setup.stop_timeout = Duration::from_millis(500);
    let mut g = setup.start();
    let relid = g.connect()[0].child_relid;
    let ring = g.open(relid, 0, &[]);
    let connection_id = ring.connection_id;
    let to_host = Arc::new(Mutex::new(ring.to_host));
    let next = Arc::new(AtomicU64::new(1));
    let refills = Arc::new(AtomicU64::new(0));
    {
        let (to_host, next, refills) = (to_host.clone(), next.clone(), refills.clone());
        g.synic.on_signal(Some(Arc::new(move |_| {
            if fill(&to_host, &next) > 0 {
                refills.fetch_add(1, Ordering::Relaxed);
            }
        })));
    }
    let first = fill(&to_host, &next);
    assert!(
        first > 256,
        "the ring holds more than one drain batch ({first})"
    );
    g.synic.signal_host(connection_id);
    eventually("the guest refilling the ring", || {
        refills.load(Ordering::Relaxed) > 20
    });
    g.close(relid);
    let stuck = g.service.stats.stuck_devices.load(Ordering::Relaxed);
    g.synic.on_signal(None);
    let (errors, serving) = {
        let s = control.snapshot();
        (s.errors, s.serving)
    };
    eprintln!(
        "{} junk packets, {} refills, {errors} errors counted; stuck devices {stuck}",
        next.load(Ordering::Relaxed) - 1,
        refills.load(Ordering::Relaxed)
    );
    assert_eq!(stuck, 0, "the IC thread was left behind, still draining");
    assert!(!serving);
}
