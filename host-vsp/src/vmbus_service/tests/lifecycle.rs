//! Connect, offers, open/close/reopen, hot-add and removal, MODIFYCHANNEL.

use std::sync::atomic::Ordering;

use vmbus::client::{ClientAction, ClientConfig};
use vmbus::protocol::{MESSAGE_SINT, STATUS_INVALID_PARAMETER};

use super::super::{ChannelState, ServiceError};
use super::echo_device::{EchoDevice, CONTEXT, ECHO, OK};
use super::guest::{eventually, Guest, Setup};

#[test]
fn serve_runs_on_a_thread_of_its_own_with_the_channel_context_and_close_stops_it() {
    let dev = EchoDevice::new("echo", 1);
    let mut g = Guest::start(vec![dev.dyn_clone()]);
    let offers = g.connect();
    assert_eq!(offers.len(), 1);
    let relid = offers[0].child_relid;
    assert_eq!({ offers[0].offer }, dev.dyn_clone().offer().offer);
    assert_eq!(g.service.relids(), [relid]);
    assert_eq!(g.service.channel_state(relid), Some(ChannelState::Offered));
    assert!(!g.service.is_serving(relid));
    assert!(dev.seen().is_empty());

    let mut ring = g.open(relid, 1, b"first open");
    assert!(g.service.is_serving(relid));
    assert_eq!(g.service.channel_state(relid), Some(ChannelState::Open));
    eventually("serve to start", || dev.seen().len() == 1);
    let seen = &dev.seen()[0];
    assert_eq!(
        (
            seen.relid,
            seen.primary,
            seen.subchannel_index,
            seen.opens,
            seen.target_vp
        ),
        (relid, relid, 0, 1, 1)
    );
    assert_eq!(&seen.user_data[..11], b"first open\0");
    assert!(seen.user_data[11..].iter().all(|&b| b == 0));
    assert_eq!(seen.user_data.len(), 120);
    assert_eq!(
        seen.thread_name.as_deref(),
        Some(&*format!("vsp-echo-{relid}"))
    );
    assert_ne!(seen.thread, std::thread::current().id());

    let reply = g.request(&mut ring, ECHO, &[b"ping through the rings"]);
    assert_eq!(
        (reply.status, &reply.data[..]),
        (OK, &b"ping through the rings"[..])
    );
    // The guest's signal woke the device; the device interrupted VP 1 on the message SINT, flag relid.
    assert!(dev.guest_signals(relid) >= 1);
    assert!(g.synic.signals().contains(&(1, MESSAGE_SINT, relid)));
    assert_eq!(g.service.stats.opens.load(Ordering::Relaxed), 1);

    g.close(relid);
    assert!(!g.service.is_serving(relid));
    assert_eq!(g.service.channel_state(relid), Some(ChannelState::Offered));
    // Close waited for the thread: it has returned by now.
    assert_eq!(dev.exits(), [relid]);

    let mut ring = g.open(relid, 0, b"again");
    eventually("second serve", || dev.seen().len() == 2);
    let seen = dev.seen();
    assert_eq!((seen[1].opens, seen[1].target_vp), (2, 0));
    assert_ne!(seen[1].thread, seen[0].thread);
    let reply = g.request(&mut ring, ECHO, &[b"pong"]);
    assert_eq!(reply.data, b"pong");
    assert_eq!(g.service.stats.opens.load(Ordering::Relaxed), 2);
}

#[test]
fn channel_messages_go_to_the_vp_and_sint_the_guest_named() {
    let dev = EchoDevice::new("echo", 1);
    let mut g = Setup {
        client: ClientConfig {
            target_vcpu: 3,
            message_sint: 5,
            ..ClientConfig::default()
        },
        ..Setup::new(vec![dev.dyn_clone()])
    }
    .start();
    let offers = g.connect();
    let relid = offers[0].child_relid;
    g.open(relid, 2, &[]);
    assert_eq!(g.synic.queues(), [(3, 5)]);
    let sent = g.service.stats.messages_sent.load(Ordering::Relaxed);
    // VERSION_RESPONSE, OFFERCHANNEL, ALLOFFERS_DELIVERED, GPADL_CREATED, OPENCHANNEL_RESULT.
    assert_eq!(sent, 5);
    assert_eq!(g.service.stats.messages_dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn echoes_wrap_both_rings_many_times() {
    let dev = EchoDevice::new("echo", 1);
    let mut g = Guest::start(vec![dev.dyn_clone()]);
    let relid = g.connect()[0].child_relid;
    let mut ring = g.open(relid, 0, &[]);
    // 7 data pages a ring; 300 packets of ~1.5 KiB go round both rings about 16 times.
    for i in 0..300u32 {
        let body: Vec<u8> = (0..1500 + i % 17).map(|b| (b ^ i) as u8).collect();
        let reply = g.request(&mut ring, ECHO, &[&body]);
        assert_eq!(reply.data, body, "packet {i}");
    }
    assert!(ring.from_host.stats().bytes > 4 * 7 * 4096);
}

#[test]
fn modify_channel_moves_the_interrupts_and_the_context_target_vp() {
    let dev = EchoDevice::new("echo", 1);
    let mut g = Guest::start(vec![dev.dyn_clone()]);
    let relid = g.connect()[0].child_relid;
    let mut ring = g.open(relid, 0, &[]);
    let reply = g.request(&mut ring, CONTEXT, &[]);
    assert_eq!(reply.data[4..], 0u32.to_le_bytes());

    g.client.modify_channel(relid, 3).unwrap();
    g.pump();
    assert_eq!(
        g.take_events(),
        [ClientAction::ChannelModified { relid, status: 0 }]
    );
    let before = g.synic.signals().len();
    let reply = g.request(&mut ring, CONTEXT, &[]);
    assert_eq!(reply.data[..4], relid.to_le_bytes());
    assert_eq!(reply.data[4..], 3u32.to_le_bytes());
    assert_eq!(g.synic.signals()[before..], [(3, MESSAGE_SINT, relid)]);

    // A VP the partition does not have is refused and the interrupts stay where they were.
    g.client.modify_channel(relid, 4).unwrap();
    g.pump();
    assert_eq!(
        g.take_events(),
        [ClientAction::ChannelModified {
            relid,
            status: STATUS_INVALID_PARAMETER
        }]
    );
    let reply = g.request(&mut ring, CONTEXT, &[]);
    assert_eq!(reply.data[4..], 3u32.to_le_bytes());
}

#[test]
fn device_added_before_enumeration_is_in_the_initial_offers() {
    let first = EchoDevice::new("first", 1);
    let second = EchoDevice::new("second", 2);
    let mut g = Guest::start(vec![first.dyn_clone()]);
    let added = g.service.add_device(second.dyn_clone()).unwrap();
    assert!(g.synic.take_messages().is_empty());
    let offers = g.connect();
    let relids: Vec<u32> = offers.iter().map(|o| o.child_relid).collect();
    assert_eq!(relids, g.service.relids());
    assert!(relids.contains(&added));
    let instances: Vec<u8> = offers
        .iter()
        .map(|o| { o.offer.if_instance }.data4[0])
        .collect();
    assert_eq!(instances, [1, 2]);
}

#[test]
fn hot_added_device_is_offered_at_once_and_removal_rescinds_it_until_released() {
    let first = EchoDevice::new("first", 1);
    let hot = EchoDevice::new("hot", 2);
    let mut g = Guest::start(vec![first.dyn_clone()]);
    let primary = g.connect()[0].child_relid;
    let mut first_ring = g.open(primary, 0, &[]);

    // After ALLOFFERS_DELIVERED.
    let relid = g.service.add_device(hot.dyn_clone()).unwrap();
    g.pump();
    let offers = g.take_offers();
    assert_eq!(offers.len(), 1);
    assert_eq!({ offers[0].child_relid }, relid);
    assert_eq!({ offers[0].offer.if_instance }.data4[0], 2);
    let conn = offers[0].connection_id;
    assert_eq!(g.synic.event_requests().last(), Some(&conn));

    let mut ring = g.open(relid, 1, &[]);
    assert_eq!(g.request(&mut ring, ECHO, &[b"hot"]).data, b"hot");

    g.service.remove_device(relid).unwrap();
    g.pump();
    assert_eq!(g.take_events(), [ClientAction::OfferRescinded { relid }]);
    assert!(!g.service.is_serving(relid));
    assert_eq!(hot.exits(), [relid]);
    assert_eq!(
        g.service.channel_state(relid),
        Some(ChannelState::Rescinded)
    );
    assert_eq!(g.service.relids(), [primary, relid]);
    // Removing it again is harmless; the guest still holds the relid.
    g.service.remove_device(relid).unwrap();
    g.pump();
    assert!(g.take_events().is_empty());

    g.client.close_channel(relid).unwrap();
    g.client.release_channel(relid).unwrap();
    g.pump();
    assert_eq!(g.service.channel_state(relid), None);
    assert_eq!(g.service.relids(), [primary]);
    assert_eq!(g.service.stats.relids_released.load(Ordering::Relaxed), 1);
    assert_eq!(g.service.stats.gpadls_revoked.load(Ordering::Relaxed), 1);

    // The relid (and its connection id and event) is reused by the next device.
    let again = EchoDevice::new("again", 3);
    assert_eq!(g.service.add_device(again.dyn_clone()).unwrap(), relid);
    g.pump();
    let offers = g.take_offers();
    assert_eq!(offers.len(), 1);
    assert_eq!(
        ({ offers[0].child_relid }, { offers[0].connection_id }),
        (relid, conn)
    );
    assert_eq!({ offers[0].offer.if_instance }.data4[0], 3);
    let requests = g.synic.event_requests();
    assert_eq!(requests.iter().filter(|&&c| c == conn).count(), 2);
    let mut ring = g.open(relid, 0, &[]);
    assert_eq!(g.request(&mut ring, ECHO, &[b"reused"]).data, b"reused");
    assert!(hot.seen().len() == 1 && again.seen().len() == 1);

    // The other device never noticed.
    assert_eq!(g.request(&mut first_ring, ECHO, &[b"still"]).data, b"still");
}

#[test]
fn removing_a_device_the_guest_never_saw_frees_its_relid_at_once() {
    let dev = EchoDevice::new("echo", 1);
    let g = Guest::start(vec![dev.dyn_clone()]);
    let relid = g.service.relids()[0];
    g.service.remove_device(relid).unwrap();
    assert_eq!(g.service.channel_state(relid), None);
    assert!(g.service.relids().is_empty());
    assert!(g.synic.take_messages().is_empty());
    assert!(matches!(
        g.service.remove_device(relid),
        Err(ServiceError::NoDevice(r)) if r == relid
    ));
    assert_eq!(g.service.add_device(dev.dyn_clone()).unwrap(), relid);
}

#[test]
fn a_device_whose_event_fd_cannot_be_had_is_refused_and_its_relid_comes_back() {
    let first = EchoDevice::new("first", 1);
    let mut g = Guest::start(vec![first.dyn_clone()]);
    g.synic.fail_event_for(true);
    // Before the guest enumerated: nothing reaches it, nothing stays behind.
    let refused = g.service.add_device(EchoDevice::new("refused", 2));
    assert!(matches!(refused, Err(ServiceError::Synic(_))));
    g.synic.fail_event_for(false);
    let primary = g.connect()[0].child_relid;
    assert_eq!(g.service.relids(), [primary]);

    // Hot-add: the guest saw the offer, so it is rescinded at once and the relid is the guest's
    // until it releases it.
    g.synic.fail_event_for(true);
    let refused = g.service.add_device(EchoDevice::new("refused", 3));
    assert!(matches!(refused, Err(ServiceError::Synic(_))));
    g.synic.fail_event_for(false);
    g.pump();
    let events = g.take_events();
    let [ClientAction::Offer(offer), ClientAction::OfferRescinded { relid }] = &events[..] else {
        panic!("{events:?}");
    };
    assert_eq!({ offer.child_relid }, *relid);
    assert_eq!(g.service.relids(), [primary]);
    g.client.release_channel(*relid).unwrap();
    g.pump();
    assert_eq!(g.service.channel_state(*relid), None);
    assert_eq!(
        g.service.add_device(EchoDevice::new("next", 4)).unwrap(),
        *relid
    );
    g.pump();
    assert_eq!(g.take_offers().len(), 1);
}
