//! A hostile or careless guest: ring GPADLs outside RAM, bad ring splits, garbage in the ring control
//! pages, UNLOAD with everything open, posts that must be refused without touching open channels, and
//! an IC channel whose host→guest ring is broken before it opens.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use vmbus::client::ClientAction;
use vmbus::gpadl::{GpaRange, GpadlMessages};
use vmbus::mem::PAGE_SIZE;
use vmbus::protocol::{
    parse_message, ChannelMessage, ChannelOffer, CloseChannel, Guid, InitiateContact, Message,
    ModifyChannel, OfferChannel, OpenChannel, RelidReleased, RequestOffers, Version,
    CHANNEL_MESSAGE_TYPE, HV_STATUS_INVALID_CONNECTION_ID, MAX_USER_DEFINED_BYTES,
    STATUS_INVALID_PARAMETER,
};
use vmbus::protocol::{GpadlBody, GpadlTeardown};
use vmbus::ring::{initialize_control_page, FEATURE_PENDING_SEND_SIZE, READ_INDEX_OFFSET};

use super::super::{ChannelState, GpadlAccessError, GuestPages};
use super::echo_device::{EchoDevice, ECHO, OK, READ, SUBCHANNELS};
use super::guest::{eventually, Guest, MEMORY_PAGES, RING_PAGES, RING_SPLIT};
use crate::synthetic::ic::IcVsp;

fn open_message(relid: u32, gpadl: u32, target_vp: u32, split: u32) -> OpenChannel {
    OpenChannel::new(
        relid,
        relid,
        gpadl,
        target_vp,
        split,
        [0; MAX_USER_DEFINED_BYTES],
    )
}

/// The status of the one OPENCHANNEL_RESULT for `relid` among `answers`.
fn open_result(answers: &[Vec<u8>], relid: u32) -> u32 {
    let results: Vec<u32> = answers
        .iter()
        .filter_map(|bytes| match parse_message(bytes) {
            Ok(Message::OpenChannelResult(m)) if m.child_relid == relid => Some(m.status),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 1, "{answers:?}");
    results[0]
}

#[test]
fn ring_gpadls_outside_guest_ram_fail_at_creation_and_opens_on_them_fail() {
    let dev = EchoDevice::new("echo", 1);
    let mut g = Guest::start(vec![dev.dyn_clone()]);
    let relid = g.connect()[0].child_relid;
    let outside: Vec<u64> = (MEMORY_PAGES + 3..MEMORY_PAGES + 3 + RING_PAGES as u64).collect();
    let straddling: Vec<u64> = (MEMORY_PAGES - 8..MEMORY_PAGES + 8).collect();
    for pfns in [outside, straddling] {
        let (handle, status) = g.create_gpadl(relid, GpaRange::whole_pages(&pfns).unwrap());
        assert_eq!(status, STATUS_INVALID_PARAMETER);
        // The client forgot the handle; a hostile guest opens on it anyway.
        let (hv, answers) = g.post_message(&open_message(relid, handle, 0, 8));
        assert_eq!(hv, 0);
        assert_ne!(open_result(&answers, relid), 0);
    }
    assert_eq!(g.service.stats.gpadls_mapped.load(Ordering::Relaxed), 0);
    assert_eq!(g.service.stats.opens.load(Ordering::Relaxed), 0);
    assert!(!g.service.is_serving(relid));
    assert!(dev.seen().is_empty());
    // A well-formed open still works.
    let mut ring = g.open(relid, 0, &[]);
    assert_eq!(g.request(&mut ring, ECHO, &[b"ok"]).data, b"ok");
}

#[test]
fn bad_ring_splits_and_non_ring_gpadls_fail_the_open_without_starting_the_device() {
    let dev = EchoDevice::new("echo", 1);
    let mut g = Guest::start(vec![dev.dyn_clone()]);
    let relid = g.connect()[0].child_relid;
    let (gpadl, pfns) = g.ring_gpadl(relid);
    let pages = RING_PAGES as u32;
    for split in [0, 1, pages - 1, pages, pages + 1, u32::MAX] {
        let (_, answers) = g.post_message(&open_message(relid, gpadl, 0, split));
        assert_eq!(
            open_result(&answers, relid),
            STATUS_INVALID_PARAMETER,
            "split {split}"
        );
    }
    // A VP the partition does not have.
    let (_, answers) = g.post_message(&open_message(relid, gpadl, 99, 8));
    assert_eq!(open_result(&answers, relid), STATUS_INVALID_PARAMETER);
    // A GPADL that is not whole pages cannot hold rings.
    let odd = g.alloc_pages(5);
    let range = GpaRange {
        byte_count: 4 * PAGE_SIZE as u32,
        byte_offset: 8,
        pfns: &odd,
    };
    let (odd_handle, status) = g.create_gpadl(relid, range);
    assert_eq!(status, 0);
    let (_, answers) = g.post_message(&open_message(relid, odd_handle, 0, 2));
    assert_eq!(open_result(&answers, relid), STATUS_INVALID_PARAMETER);

    assert!(!g.service.is_serving(relid));
    assert!(dev.seen().is_empty());
    assert_eq!(g.service.channel_state(relid), Some(ChannelState::Offered));
    let (status, ring) = g.open_on(relid, gpadl, pfns, 0, &[]);
    assert_eq!(status, 0);
    let mut ring = ring.unwrap();
    assert_eq!(g.request(&mut ring, ECHO, &[b"ok"]).data, b"ok");
}

#[test]
fn rings_with_garbage_control_pages_fail_the_open_and_the_guest_may_retry() {
    let dev = EchoDevice::new("echo", 1);
    let mut g = Guest::start(vec![dev.dyn_clone()]);
    let relid = g.connect()[0].child_relid;
    let (gpadl, pfns) = g.ring_gpadl(relid);
    // The host's read index of the guest→host ring, then the host's write index of the
    // host→guest ring: both are the guest's to scribble on before the open.
    let garbage = [
        (pfns[0], READ_INDEX_OFFSET, 5u32),
        (pfns[RING_SPLIT], 0, 0xFFFF_FFF8),
    ];
    for (round, (pfn, offset, value)) in garbage.into_iter().enumerate() {
        g.write_memory(pfn * PAGE_SIZE as u64 + offset as u64, &value.to_le_bytes());
        let (status, ring) = g.open_on(relid, gpadl, pfns.clone(), 0, &[]);
        assert_ne!(status, 0, "round {round}");
        assert!(ring.is_none());
        assert_eq!(
            g.service.stats.failed_opens.load(Ordering::Relaxed),
            round as u64 + 1
        );
        assert!(!g.service.is_serving(relid));
        assert_eq!(g.service.channel_state(relid), Some(ChannelState::Offered));
        assert!(dev.seen().is_empty());
        // Not open: the guest may tear the ring down, or fix it and retry.
        let half = if pfn == pfns[0] {
            &pfns[..RING_SPLIT]
        } else {
            &pfns[RING_SPLIT..]
        };
        initialize_control_page(
            &GuestPages::new(&g.memory, half).unwrap(),
            FEATURE_PENDING_SEND_SIZE,
        )
        .unwrap();
    }
    let (status, ring) = g.open_on(relid, gpadl, pfns, 0, &[]);
    assert_eq!(status, 0);
    let mut ring = ring.unwrap();
    assert_eq!(g.request(&mut ring, ECHO, &[b"fixed"]).data, b"fixed");
    // Failed opens are not opens.
    assert_eq!(dev.seen()[0].opens, 1);
    assert_eq!(g.service.stats.opens.load(Ordering::Relaxed), 1);
}

#[test]
fn unload_stops_every_device_revokes_every_gpadl_and_drops_subchannel_offers() {
    let a = EchoDevice::new("a", 1);
    let b = EchoDevice::new("b", 2);
    let mut g = Guest::start(vec![a.dyn_clone(), b.dyn_clone()]);
    let offers = g.connect();
    let (ra, rb) = (offers[0].child_relid, offers[1].child_relid);
    let mut ring_a = g.open(ra, 0, &[]);
    let reply = g.request(&mut ring_a, SUBCHANNELS, &[&2u16.to_le_bytes()]);
    assert_eq!(reply.status, OK);
    g.pump_until("sub-channel offers", |g| g.events.len() == 2);
    let subs: Vec<u32> = g.take_offers().iter().map(|o| o.child_relid).collect();
    for &sub in &subs {
        g.open(sub, 0, &[]);
    }
    let mut ring_b = g.open(rb, 0, &[]);
    let data = g.alloc_pages(1);
    let (handle, _) = g.create_gpadl(rb, GpaRange::whole_pages(&data).unwrap());
    let mut args = handle.to_le_bytes().to_vec();
    args.extend_from_slice(&[0; 12]);
    args.extend_from_slice(&8u32.to_le_bytes());
    assert_eq!(g.request(&mut ring_b, READ, &[&args]).status, OK);
    let kept = b.kept(handle).unwrap();

    g.client.unload().unwrap();
    g.pump();
    assert_eq!(g.take_events(), [ClientAction::Unloaded]);
    assert_eq!(g.service.version(), None);
    for relid in [ra, rb].into_iter().chain(subs.iter().copied()) {
        assert!(!g.service.is_serving(relid), "relid {relid}");
    }
    let mut exits = a.exits();
    exits.sort_unstable();
    let mut expected: Vec<u32> = subs.iter().copied().chain([ra]).collect();
    expected.sort_unstable();
    assert_eq!(exits, expected);
    assert_eq!(b.exits(), [rb]);
    assert!(g.service.subchannels(ra).is_empty());
    for &sub in &subs {
        assert_eq!(g.service.channel_state(sub), None);
    }
    assert_eq!(g.service.relids(), [ra, rb]);
    assert_eq!(g.service.channel_state(ra), Some(ChannelState::Offered));
    assert_eq!(
        kept.read(0, 0, &mut [0; 4]),
        Err(GpadlAccessError::Revoked(handle))
    );
    // Four rings and the data GPADL.
    assert_eq!(g.service.stats.gpadls_revoked.load(Ordering::Relaxed), 5);

    // The guest comes back: only the primaries are offered; the device may ask again.
    let offers = g.connect();
    let relids: Vec<u32> = offers.iter().map(|o| o.child_relid).collect();
    assert_eq!(relids, [ra, rb]);
    assert!(offers.iter().all(|o| { o.offer.sub_channel_index } == 0));
    let mut ring_a = g.open(ra, 0, &[]);
    eventually("the reopen", || {
        a.seen().iter().filter(|s| s.relid == ra).count() == 2
    });
    assert_eq!(a.seen().last().unwrap().opens, 2);
    let reply = g.request(&mut ring_a, SUBCHANNELS, &[&1u16.to_le_bytes()]);
    assert_eq!(reply.status, OK);
    g.pump_until("a sub-channel offer", |g| g.events.len() == 1);
    assert_eq!(g.take_offers().len(), 1);
}

#[test]
fn garbage_posts_are_refused_without_disturbing_open_channels() {
    let victim = EchoDevice::new("victim", 1);
    let other = EchoDevice::new("other", 2);
    let mut g = Guest::start(vec![victim.dyn_clone(), other.dyn_clone()]);
    let offers = g.connect();
    let (v, o) = (offers[0].child_relid, offers[1].child_relid);
    let mut ring = g.open(v, 0, &[]);
    let data = g.alloc_pages(1);
    let (data_gpadl, _) = g.create_gpadl(v, GpaRange::whole_pages(&data).unwrap());
    let ring_gpadl = ring.gpadl;
    let conn = g.client.message_connection_id().unwrap();

    let random: Vec<u8> = (0..240u32).map(|i| (i * 37 + 11) as u8).collect();
    let offer = OfferChannel::new(ChannelOffer::new(Guid::ZERO, Guid::ZERO), 9, 0x1009);
    let duplicate_header = GpadlMessages::new(v, data_gpadl, GpaRange::whole_pages(&[20]).unwrap())
        .unwrap()
        .next()
        .unwrap();
    let contact = InitiateContact::new(Version::WIN10_V5_3, 0, 2, 0, (0, 0));
    let posts: Vec<(&str, u32, u32, Vec<u8>)> = vec![
        ("empty", conn, CHANNEL_MESSAGE_TYPE, Vec::new()),
        ("short", conn, CHANNEL_MESSAGE_TYPE, vec![0xff; 3]),
        ("random", conn, CHANNEL_MESSAGE_TYPE, random),
        ("close, wrong message type", conn, 7, close(v)),
        ("host message", conn, CHANNEL_MESSAGE_TYPE, bytes(&offer)),
        (
            "reopen",
            conn,
            CHANNEL_MESSAGE_TYPE,
            bytes(&open_message(v, ring_gpadl, 0, 8)),
        ),
        (
            "ring teardown",
            conn,
            CHANNEL_MESSAGE_TYPE,
            bytes(&GpadlTeardown::new(v, ring_gpadl)),
        ),
        (
            "release of a live relid",
            conn,
            CHANNEL_MESSAGE_TYPE,
            bytes(&RelidReleased::new(v)),
        ),
        (
            "open of an unknown relid",
            conn,
            CHANNEL_MESSAGE_TYPE,
            bytes(&open_message(999, ring_gpadl, 0, 8)),
        ),
        (
            "close of a closed channel",
            conn,
            CHANNEL_MESSAGE_TYPE,
            close(o),
        ),
        (
            "open on another channel's ring",
            conn,
            CHANNEL_MESSAGE_TYPE,
            bytes(&open_message(o, ring_gpadl, 0, 8)),
        ),
        ("second contact", 4, CHANNEL_MESSAGE_TYPE, bytes(&contact)),
        (
            "body of no GPADL",
            conn,
            CHANNEL_MESSAGE_TYPE,
            vmbus::protocol::MessageBuf::from_struct(&GpadlBody::new(1, 0x5555))
                .as_bytes()
                .to_vec(),
        ),
        (
            "duplicate GPADL handle",
            conn,
            CHANNEL_MESSAGE_TYPE,
            duplicate_header.as_bytes().to_vec(),
        ),
        (
            "modify to a missing VP",
            conn,
            CHANNEL_MESSAGE_TYPE,
            bytes(&ModifyChannel::new(v, 99)),
        ),
        (
            "second REQUESTOFFERS",
            conn,
            CHANNEL_MESSAGE_TYPE,
            bytes(&RequestOffers::new()),
        ),
    ];
    for (what, connection_id, message_type, payload) in posts {
        let refused = g.service.stats.refused.load(Ordering::Relaxed);
        let (status, answers) = g.post_raw(connection_id, message_type, &payload);
        assert_eq!(status, 0, "{what}");
        assert_eq!(
            g.service.stats.refused.load(Ordering::Relaxed),
            refused + 1,
            "{what} was not refused"
        );
        for answer in &answers {
            let ok = match parse_message(answer).unwrap() {
                Message::OpenChannelResult(m) => m.child_relid != v && m.status != 0,
                Message::ModifyChannelResponse(m) => m.status != 0,
                _ => false,
            };
            assert!(ok, "{what} was answered with {:?}", parse_message(answer));
        }
        assert!(g.service.is_serving(v), "{what}");
        assert_eq!(
            g.request(&mut ring, ECHO, &[what.as_bytes()]).data,
            what.as_bytes()
        );
    }

    // A valid message on the wrong connection id is an invalid-connection-id hypercall failure.
    let (status, answers) = g.post_raw(1, CHANNEL_MESSAGE_TYPE, &close(v));
    assert_eq!(
        (status, answers.len()),
        (HV_STATUS_INVALID_CONNECTION_ID, 0)
    );
    assert!(g.service.is_serving(v));
    assert!(!g.service.is_serving(o));
    assert!(other.seen().is_empty());
    assert_eq!(victim.seen().len(), 1);

    // The client's view still matches the service's: normal traffic goes on.
    let mut args = data_gpadl.to_le_bytes().to_vec();
    args.extend_from_slice(&[0; 12]);
    args.extend_from_slice(&4u32.to_le_bytes());
    assert_eq!(g.request(&mut ring, READ, &[&args]).status, OK);
    g.client.teardown_gpadl(data_gpadl).unwrap();
    g.pump();
    assert_eq!(
        g.take_events(),
        [ClientAction::GpadlTornDown {
            relid: v,
            gpadl: data_gpadl
        }]
    );
    g.close(v);
    assert!(!g.service.is_serving(v));
}

fn bytes<T: ChannelMessage>(message: &T) -> Vec<u8> {
    message.to_message().as_bytes().to_vec()
}

fn close(relid: u32) -> Vec<u8> {
    bytes(&CloseChannel::new(relid))
}

/// The guest breaks its read index of the host→guest ring before opening an IC channel: the host's
/// end only checks the write index, so the open succeeds and the IC VSP's first request fails with a
/// fatal ring error. The VSP must report it and, once the channel is closed, no longer claim to be
/// serving it (found by the `ic_serve_loop` fuzz target).
#[test]
fn an_ic_whose_first_request_cannot_be_written_stops_serving_when_closed() {
    let ic = Arc::new(IcVsp::heartbeat(Guid::new(0x4842, 1, 1, [0; 8]), 4, 2));
    let control = ic.control();
    let mut g = Guest::start(vec![ic]);
    let relid = g.connect()[0].child_relid;
    let (gpadl, pfns) = g.ring_gpadl(relid);
    let read_index = pfns[RING_SPLIT] * PAGE_SIZE as u64 + READ_INDEX_OFFSET as u64;
    g.write_memory(read_index, &0x0706_0020u32.to_le_bytes());
    g.client
        .open_channel(relid, gpadl, RING_SPLIT as u32, 0, &[])
        .unwrap();
    g.pump_until("OPENCHANNEL_RESULT", |g| {
        g.events
            .contains(&ClientAction::ChannelOpened { relid, status: 0 })
    });
    assert!(control
        .wait_until(Duration::from_secs(10), |s| s.errors > 0)
        .is_some_and(|s| s.last_error.unwrap().contains("outbound ring")));
    g.close(relid);
    let state = control.snapshot();
    assert!(!state.serving, "{state:?}");
    assert_eq!(g.service.stats.stuck_devices.load(Ordering::Relaxed), 0);
}
