//! Sub-channels: offered by the primary's device thread, one thread, relid, event and target VP each,
//! ended with the primary.

use std::collections::BTreeSet;

use vmbus::client::ClientAction;
use vmbus::protocol::{OfferChannel, MESSAGE_SINT};

use super::super::{ChannelState, ContextError};
use super::echo_device::{EchoDevice, CONTEXT_FAILED, ECHO, LOOKUP, OK, SUBCHANNELS};
use super::guest::{eventually, Guest, GuestRing};

/// Ask the primary's device for `count` sub-channels; returns the offers that reach the guest (at
/// least `expect` of them).
fn offer_subchannels(
    g: &mut Guest,
    primary: &mut GuestRing,
    count: u16,
    expect: usize,
) -> Vec<OfferChannel> {
    let reply = g.request(primary, SUBCHANNELS, &[&count.to_le_bytes()]);
    assert_eq!(reply.status, OK);
    g.pump_until("sub-channel offers", |g| {
        g.events
            .iter()
            .filter(|e| matches!(e, ClientAction::Offer(_)))
            .count()
            >= expect
    });
    g.take_offers()
}

fn rescinded(events: &[ClientAction]) -> BTreeSet<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientAction::OfferRescinded { relid } => Some(*relid),
            _ => None,
        })
        .collect()
}

#[test]
fn subchannels_are_offered_and_served_on_threads_of_their_own_until_the_primary_closes() {
    let dev = EchoDevice::new("echo", 1);
    let mut g = Guest::start(vec![dev.dyn_clone()]);
    let primary_offer = g.connect()[0];
    let primary = primary_offer.child_relid;
    let mut primary_ring = g.open(primary, 0, &[]);

    let offers = offer_subchannels(&mut g, &mut primary_ring, 3, 3);
    assert_eq!(offers.len(), 3);
    let indexes: Vec<u16> = offers.iter().map(|o| o.offer.sub_channel_index).collect();
    assert_eq!(indexes, [1, 2, 3]);
    for offer in &offers {
        assert_eq!({ offer.offer.if_type }, { primary_offer.offer.if_type });
        assert_eq!({ offer.offer.if_instance }, {
            primary_offer.offer.if_instance
        });
    }
    let subs: Vec<u32> = offers.iter().map(|o| o.child_relid).collect();
    let connections: BTreeSet<u32> = offers.iter().map(|o| o.connection_id).collect();
    assert_eq!(connections.len(), 3);
    assert!(!connections.contains(&{ primary_offer.connection_id }));
    assert!(!subs.contains(&primary));
    assert_eq!(g.service.subchannels(primary), subs);
    assert_eq!(g.service.relids(), [primary]);
    let requested = g.synic.event_requests();
    assert!(connections.iter().all(|c| requested.contains(c)));

    // A GPADL of the primary is the whole device's.
    let pfns = g.alloc_pages(2);
    let range = vmbus::gpadl::GpaRange::whole_pages(&pfns).unwrap();
    let (shared, status) = g.create_gpadl(primary, range);
    assert_eq!(status, 0);

    let mut rings: Vec<GuestRing> = subs
        .iter()
        .zip(1u32..)
        .map(|(&sub, vp)| g.open(sub, vp, &[vp as u8]))
        .collect();
    eventually("every sub-channel to be served", || dev.seen().len() == 4);
    let seen = dev.seen();
    let threads: std::collections::HashSet<_> = seen.iter().map(|s| s.thread).collect();
    assert_eq!(threads.len(), 4);
    for (i, &sub) in subs.iter().enumerate() {
        let s = seen.iter().find(|s| s.relid == sub).unwrap();
        let index = i as u16 + 1;
        assert_eq!(
            (s.primary, s.subchannel_index, s.opens, s.target_vp),
            (primary, index, 1, u32::from(index))
        );
        assert_eq!(s.user_data[0], index as u8);
        assert_eq!(s.thread_name.as_deref(), Some(&*format!("vsp-echo-{sub}")));
        assert!(g.service.is_serving(sub));
        assert_eq!(g.service.channel_state(sub), Some(ChannelState::Open));
    }

    // Each answers through its own rings, woken by its own event, interrupting its own VP.
    for (ring, vp) in rings.iter_mut().zip(1u32..) {
        let relid = ring.relid;
        assert_eq!(
            g.request(ring, ECHO, &[&relid.to_le_bytes()]).data,
            relid.to_le_bytes()
        );
        assert!(dev.guest_signals(relid) >= 1);
        assert!(g.synic.signals().contains(&(vp, MESSAGE_SINT, relid)));
        let shared = shared.to_le_bytes();
        assert_eq!(g.request(ring, LOOKUP, &[&shared]).status, OK);
    }

    // Only the primary offers sub-channels, and no more than the model allows.
    let reply = g.request(&mut rings[0], SUBCHANNELS, &[&1u16.to_le_bytes()]);
    assert_eq!(reply.status, CONTEXT_FAILED);
    let reply = g.request(&mut primary_ring, SUBCHANNELS, &[&65u16.to_le_bytes()]);
    assert_eq!(reply.status, CONTEXT_FAILED);
    assert_eq!(
        dev.context_errors(),
        [ContextError::NotPrimary, ContextError::TooMany(65)]
    );
    // Asking again offers only the indexes not offered yet (requests are served in order).
    let reply = g.request(&mut primary_ring, SUBCHANNELS, &[&3u16.to_le_bytes()]);
    assert_eq!(reply.status, OK);
    let more = offer_subchannels(&mut g, &mut primary_ring, 4, 1);
    assert_eq!(more.len(), 1);
    assert_eq!({ more[0].offer.sub_channel_index }, 4);
    let fourth = more[0].child_relid;

    // Closing one sub-channel leaves the others alone; it may be reopened.
    g.close(subs[0]);
    assert!(!g.service.is_serving(subs[0]));
    assert!(g.service.is_serving(subs[1]) && g.service.is_serving(primary));
    assert_eq!(
        g.service.channel_state(subs[0]),
        Some(ChannelState::Offered)
    );
    rings[0] = g.open(subs[0], 1, &[]);
    eventually("the reopened sub-channel", || dev.seen().len() == 5);
    assert_eq!(dev.seen()[4].opens, 2);

    // Closing the primary rescinds every sub-channel and stops their threads.
    g.close(primary);
    let all: BTreeSet<u32> = subs.iter().copied().chain([fourth]).collect();
    assert_eq!(rescinded(&g.take_events()), all);
    for &sub in &all {
        assert!(!g.service.is_serving(sub));
        assert_eq!(g.service.channel_state(sub), Some(ChannelState::Rescinded));
    }
    let exits: BTreeSet<u32> = dev.exits().into_iter().collect();
    assert_eq!(exits, subs.iter().copied().chain([primary]).collect());
    assert_eq!(
        g.service.channel_state(primary),
        Some(ChannelState::Offered)
    );

    for &sub in &subs {
        g.client.close_channel(sub).unwrap();
    }
    for &sub in &all {
        g.client.release_channel(sub).unwrap();
    }
    g.pump();
    for &sub in &all {
        assert_eq!(g.service.channel_state(sub), None);
    }
    assert!(g.service.subchannels(primary).is_empty());

    // A new open of the primary may offer them again.
    let mut primary_ring = g.open(primary, 0, &[]);
    let offers = offer_subchannels(&mut g, &mut primary_ring, 2, 2);
    let indexes: Vec<u16> = offers.iter().map(|o| o.offer.sub_channel_index).collect();
    assert_eq!(indexes, [1, 2]);
    assert_eq!(g.service.subchannels(primary).len(), 2);
}

#[test]
fn subchannels_are_offered_again_on_reopen_before_the_guest_released_the_old_ones() {
    let dev = EchoDevice::new("echo", 1);
    let mut g = Guest::start(vec![dev.dyn_clone()]);
    let primary = g.connect()[0].child_relid;
    let mut ring = g.open(primary, 0, &[]);
    let old: Vec<u32> = offer_subchannels(&mut g, &mut ring, 2, 2)
        .iter()
        .map(|o| o.child_relid)
        .collect();
    g.close(primary);
    assert_eq!(rescinded(&g.take_events()), old.iter().copied().collect());

    // The guest reopens the primary before it got round to releasing the rescinded relids.
    let mut ring = g.open(primary, 0, &[]);
    let offers = offer_subchannels(&mut g, &mut ring, 2, 2);
    let indexes: Vec<u16> = offers.iter().map(|o| o.offer.sub_channel_index).collect();
    assert_eq!(indexes, [1, 2]);
    let new: Vec<u32> = offers.iter().map(|o| o.child_relid).collect();
    assert!(new.iter().all(|r| !old.contains(r)));
    for &relid in &old {
        g.client.release_channel(relid).unwrap();
    }
    g.pump();
    assert_eq!(g.service.subchannels(primary), new);
    for relid in new {
        let mut sub = g.open(relid, 0, &[]);
        assert_eq!(g.request(&mut sub, ECHO, &[b"new"]).data, b"new");
    }
}
