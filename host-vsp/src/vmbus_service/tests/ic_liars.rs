//! A guest that lies on its time-sync and KVP channels — answers naming a key longer than its
//! field, another pool than asked, a sample the host never sent — gets each answer refused and
//! counted; the lying channel goes on (an honest answer afterwards is taken) and the guest's other
//! IC (heartbeat) is not disturbed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use guest_drivers::ic::kvp::{KvpDriver, KvpStore};
use guest_drivers::ic::timesync::TimeSyncDriver;
use guest_drivers::ic::{IcDriver, IcKind};
use ic_protocol::kvp::KvpPool;
use ic_protocol::HEADER_SIZE;
use vmbus::packet::{Packet, PacketFlags};
use vmbus::protocol::Guid;

use super::guest::{Guest, GuestRing};
use crate::synthetic::ic::{IcVsp, KvpCallError, KvpVsp, TimeSyncVsp};

/// Answer the next host request on `ring` with `answer` (`None`: no reply), waiting up to 10 s for
/// it. Returns whether a request came.
fn answer_one(
    g: &Guest,
    ring: &mut GuestRing,
    mut answer: impl FnMut(&[u8]) -> Option<Vec<u8>>,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(read) = ring.from_host.read_packet(&mut buf).unwrap() {
            let packet = Packet::parse(&buf[..read.info.len]).unwrap();
            if let Some(reply) = answer(packet.payload) {
                let _ = ring
                    .to_host
                    .write_inband(read.info.desc.trans_id, PacketFlags::empty(), &[&reply])
                    .unwrap();
                g.synic.signal_host(ring.connection_id);
            }
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// An honest KVP answer.
fn kvp_reply(kvp: &mut KvpDriver, request: &[u8]) -> Vec<u8> {
    let mut reply = vec![0u8; request.len().max(64)];
    let (len, _) = kvp.handle(request, &mut reply).unwrap();
    reply.truncate(len);
    reply
}

#[test]
fn lies_on_the_kvp_and_time_sync_channels_are_refused_and_stop_nothing_else() {
    let kvp_vsp = KvpVsp::new(Guid::new(0x4b, 1, 1, [0; 8])).unwrap();
    let kvp_handle = kvp_vsp.handle();
    let timesync = TimeSyncVsp::new(
        Guid::new(0x54, 1, 1, [0; 8]),
        Duration::from_millis(10),
        Arc::new(|| Some(1_000)),
    );
    let time = timesync.state();
    let heartbeat = IcVsp::heartbeat(Guid::new(0x48, 1, 1, [0; 8]), 4, 1);
    let hb = heartbeat.control();
    let mut g = Guest::start(vec![
        Arc::new(kvp_vsp),
        Arc::new(timesync),
        Arc::new(heartbeat),
    ]);
    let offers = g.connect();
    let mut kvp_ring = g.open(offers[0].child_relid, 0, &[]);
    let mut time_ring = g.open(offers[1].child_relid, 0, &[]);
    let mut hb_ring = g.open(offers[2].child_relid, 0, &[]);
    let mut kvp = KvpDriver::new(KvpStore::with_auto(&[("HostName", "liar")]));

    // KVP: negotiate honestly, then answer the host's enumeration with a key size far beyond the
    // key field.
    assert!(answer_one(&g, &mut kvp_ring, |r| Some(kvp_reply(
        &mut kvp, r
    ))));
    assert!(answer_one(&g, &mut kvp_ring, |r| {
        let mut reply = kvp_reply(&mut kvp, r);
        let key_size = HEADER_SIZE + 4 + 4 + 4;
        reply[key_size..key_size + 4].copy_from_slice(&60_000u32.to_le_bytes());
        Some(reply)
    }));
    let state = kvp_handle
        .wait_until(Duration::from_secs(10), |s| s.errors > 0)
        .unwrap();
    assert!(state.guest_values.is_empty(), "{state:?}");
    assert_eq!(state.enumerations, 0);
    // A call answered from another pool than asked fails; the next, answered honestly, works.
    let caller = {
        let handle = kvp_handle.clone();
        std::thread::spawn(move || {
            let wrong = handle.get(KvpPool::EXTERNAL, "k", Duration::from_secs(10));
            let right = handle.enumerate(KvpPool::AUTO, Duration::from_secs(10));
            (wrong, right)
        })
    };
    assert!(answer_one(&g, &mut kvp_ring, |r| {
        let mut reply = kvp_reply(&mut kvp, r);
        reply[HEADER_SIZE + 1] = KvpPool::GUEST.0;
        Some(reply)
    }));
    for _ in 0..2 {
        assert!(answer_one(&g, &mut kvp_ring, |r| Some(kvp_reply(
            &mut kvp, r
        ))));
    }
    let (wrong, right) = caller.join().unwrap();
    assert!(matches!(wrong, Err(KvpCallError::Guest(_))), "{wrong:?}");
    assert_eq!(right, Ok(vec![("HostName".into(), "liar".into())]));
    assert_eq!(kvp_handle.guest_values().len(), 1);
    assert_eq!(kvp_handle.state().errors, 2);

    // Time sync: negotiate, answer the SYNC with a forged time, then the next SAMPLE honestly.
    let mut clock = TimeSyncDriver::at_epoch();
    let mut honest = |r: &[u8]| {
        let mut reply = vec![0u8; r.len().max(64)];
        let (len, _) = clock.handle(r, &mut reply, 2_000).unwrap();
        reply.truncate(len);
        reply
    };
    assert!(answer_one(&g, &mut time_ring, |r| Some(honest(r))));
    assert!(answer_one(&g, &mut time_ring, |r| {
        let mut reply = honest(r);
        reply[HEADER_SIZE] ^= 0x55;
        Some(reply)
    }));
    assert!(answer_one(&g, &mut time_ring, |r| Some(honest(r))));
    let t = time
        .wait_until(Duration::from_secs(10), |s| s.answered >= 1)
        .unwrap();
    assert_eq!((t.syncs, t.errors, t.answered), (1, 1, 1), "{t:?}");
    assert!(t.samples >= 1);

    // The heartbeat IC on the same guest: negotiated and all four heartbeats answered.
    let mut driver = IcDriver::new(IcKind::Heartbeat);
    let mut heartbeat_reply = |r: &[u8]| {
        let mut reply = vec![0u8; r.len().max(64)];
        let (len, _) = driver.handle(r, &mut reply).unwrap();
        reply.truncate(len);
        Some(reply)
    };
    for _ in 0..5 {
        assert!(answer_one(&g, &mut hb_ring, &mut heartbeat_reply));
    }
    let h = hb
        .wait_until(Duration::from_secs(10), |s| s.heartbeats_answered == 4)
        .unwrap();
    assert_eq!(h.errors, 0);
}
