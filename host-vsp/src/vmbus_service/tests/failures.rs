//! Devices that fail: a panicking thread gets its device rescinded; a thread that ignores stop is
//! left behind after the stop bound; the rest of the bus carries on either way.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmbus::client::ClientAction;
use vmbus::mem::PAGE_SIZE;

use super::super::{ChannelState, ServiceConfig, VmbusService, STOP_TIMEOUT};
use super::echo_device::{EchoDevice, ECHO, PANIC, SUBCHANNELS};
use super::guest::{eventually, Guest, Setup};
use super::synic::FakeSynic;

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
fn a_panicking_device_thread_gets_its_device_rescinded_and_others_keep_working() {
    let failing = EchoDevice::new("failing", 1);
    let healthy = EchoDevice::new("healthy", 2);
    let mut g = Guest::start(vec![failing.dyn_clone(), healthy.dyn_clone()]);
    let offers = g.connect();
    let (bad, good) = (offers[0].child_relid, offers[1].child_relid);
    let mut bad_ring = g.open(bad, 0, &[]);
    let mut good_ring = g.open(good, 0, &[]);

    g.send(&mut bad_ring, PANIC, &[]);
    g.pump_until("the rescind", |g| !g.events.is_empty());
    assert_eq!(
        g.take_events(),
        [ClientAction::OfferRescinded { relid: bad }]
    );
    assert_eq!(g.service.stats.device_panics.load(Ordering::Relaxed), 1);
    assert!(!g.service.is_serving(bad));
    assert_eq!(g.service.channel_state(bad), Some(ChannelState::Rescinded));
    // The thread unwound: `serve` never returned normally.
    assert!(failing.exits().is_empty());

    assert_eq!(g.request(&mut good_ring, ECHO, &[b"fine"]).data, b"fine");
    assert!(g.service.is_serving(good));

    g.client.close_channel(bad).unwrap();
    g.client.release_channel(bad).unwrap();
    g.pump();
    assert_eq!(g.service.channel_state(bad), None);
    assert_eq!(g.service.relids(), [good]);
    assert_eq!(g.service.stats.gpadls_revoked.load(Ordering::Relaxed), 1);
}

#[test]
fn a_panic_on_a_subchannel_rescinds_the_whole_device() {
    let failing = EchoDevice::new("failing", 1);
    let healthy = EchoDevice::new("healthy", 2);
    let mut g = Guest::start(vec![failing.dyn_clone(), healthy.dyn_clone()]);
    let offers = g.connect();
    let (primary, good) = (offers[0].child_relid, offers[1].child_relid);
    let mut primary_ring = g.open(primary, 0, &[]);
    let mut good_ring = g.open(good, 0, &[]);
    let reply = g.request(&mut primary_ring, SUBCHANNELS, &[&2u16.to_le_bytes()]);
    assert_eq!(reply.status, 0);
    g.pump_until("two sub-channel offers", |g| g.events.len() == 2);
    let subs: Vec<u32> = g.take_offers().iter().map(|o| o.child_relid).collect();
    let mut sub_rings: Vec<_> = subs.iter().map(|&s| g.open(s, 0, &[])).collect();

    g.send(&mut sub_rings[1], PANIC, &[]);
    let device: BTreeSet<u32> = subs.iter().copied().chain([primary]).collect();
    g.pump_until("the rescinds", |g| rescinded(&g.events) == device);
    assert_eq!(g.service.stats.device_panics.load(Ordering::Relaxed), 1);
    for &relid in &device {
        assert!(!g.service.is_serving(relid));
        assert_eq!(
            g.service.channel_state(relid),
            Some(ChannelState::Rescinded)
        );
    }
    // Every thread but the one that panicked returned when it was stopped.
    let exits: BTreeSet<u32> = failing.exits().into_iter().collect();
    assert_eq!(exits, [primary, subs[0]].into_iter().collect());

    assert_eq!(g.request(&mut good_ring, ECHO, &[b"fine"]).data, b"fine");
    assert_eq!(g.service.stats.device_panics.load(Ordering::Relaxed), 1);
}

#[test]
fn closing_a_device_that_ignores_stop_returns_after_the_stop_bound() {
    let stuck = EchoDevice::new("stuck", 1);
    let healthy = EchoDevice::new("healthy", 2);
    stuck.ignore_stop.store(true, Ordering::Release);
    let bound = Duration::from_millis(300);
    let mut g = Setup {
        stop_timeout: bound,
        ..Setup::new(vec![stuck.dyn_clone(), healthy.dyn_clone()])
    }
    .start();
    let offers = g.connect();
    let (bad, good) = (offers[0].child_relid, offers[1].child_relid);
    g.open(bad, 0, &[]);
    let mut good_ring = g.open(good, 0, &[]);
    eventually("the stuck device to start", || stuck.seen().len() == 1);

    let start = Instant::now();
    g.close(bad);
    let took = start.elapsed();
    assert!(took >= bound, "close returned after {took:?}");
    assert!(took < bound + Duration::from_secs(2), "close took {took:?}");
    assert_eq!(g.service.stats.stuck_devices.load(Ordering::Relaxed), 1);
    assert!(!g.service.is_serving(bad));
    assert_eq!(g.service.channel_state(bad), Some(ChannelState::Offered));
    assert!(stuck.exits().is_empty());

    assert_eq!(g.request(&mut good_ring, ECHO, &[b"fine"]).data, b"fine");
    stuck.release();
    eventually("the stuck thread to go", || stuck.exits() == [bad]);
}

#[test]
fn shutdown_stops_every_device_and_gives_up_on_stuck_ones_in_bounded_time() {
    let stuck = EchoDevice::new("stuck", 1);
    let healthy = EchoDevice::new("healthy", 2);
    stuck.ignore_stop.store(true, Ordering::Release);
    let bound = Duration::from_millis(200);
    let mut g = Setup {
        stop_timeout: bound,
        ..Setup::new(vec![stuck.dyn_clone(), healthy.dyn_clone()])
    }
    .start();
    let offers = g.connect();
    let (bad, good) = (offers[0].child_relid, offers[1].child_relid);
    g.open(bad, 0, &[]);
    g.open(good, 0, &[]);

    let start = Instant::now();
    g.service.shutdown();
    let took = start.elapsed();
    assert!(
        took >= bound && took < bound + Duration::from_secs(2),
        "{took:?}"
    );
    assert!(!g.service.is_serving(bad) && !g.service.is_serving(good));
    assert_eq!(healthy.exits(), [good]);
    assert_eq!(g.service.stats.stuck_devices.load(Ordering::Relaxed), 1);
    stuck.release();
    eventually("the stuck thread to go", || stuck.exits() == [bad]);
}

#[test]
fn the_public_constructor_bounds_stops_by_stop_timeout() {
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 * PAGE_SIZE)]).unwrap();
    let config = ServiceConfig {
        vp_count: 1,
        versions: Vec::new(),
    };
    let service =
        VmbusService::start(config, memory, Arc::new(FakeSynic::default()), Vec::new()).unwrap();
    assert_eq!(service.stop_timeout, STOP_TIMEOUT);
}
