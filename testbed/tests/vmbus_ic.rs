//! VMBus end to end on KVM: our guest kernel connects to the host VMBus service (newest version, or
//! the fallback the host forces), lists its offers, opens the heartbeat and shutdown ICs, answers
//! 10 000 heartbeats in bursts and shuts down when the host asks — with the transitions counted.

use std::sync::Arc;
use std::time::Duration;

use host_vsp::synthetic::ic::vsp::{IcControl, IcVsp};
use host_vsp::vmbus_service::VmbusService;
use testbed::{GuestVm, GuestVmConfig};
use vmbus::protocol::{Guid, Version};

const HEARTBEATS: u64 = 10_000;
const BURST: u64 = 100;

struct Booted {
    vm: GuestVm,
    service: Arc<VmbusService>,
    heartbeat: Arc<IcControl>,
    shutdown: Arc<IcControl>,
}

fn boot(cmdline: &str, versions: &[Version], heartbeats: u64, burst: u64) -> Booted {
    let heartbeat = IcVsp::heartbeat(Guid::new(0x4842, 1, 1, [0; 8]), heartbeats, burst);
    let shutdown = IcVsp::shutdown(Guid::new(0x5344, 1, 1, [0; 8]));
    let (hb_control, sd_control) = (heartbeat.control(), shutdown.control());
    let mut config = GuestVmConfig::new(cmdline);
    config
        .vmbus_versions(versions)
        .vmbus_device(Arc::new(heartbeat))
        .vmbus_device(Arc::new(shutdown));
    let vm = GuestVm::new(config).unwrap();
    Booted {
        service: vm.vmbus().clone(),
        vm,
        heartbeat: hb_control,
        shutdown: sd_control,
    }
}

#[test]
fn heartbeats_then_shutdown_over_vmbus() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let mut b = boot("vmbus:ic", &[], HEARTBEATS, BURST);
    b.vm.start().unwrap();
    let timeout = Duration::from_secs(60);
    let negotiated = b
        .heartbeat
        .wait_until(timeout, |s| s.negotiated)
        .expect("heartbeat IC negotiated");
    let before = b.vm.stats();
    let done = b.heartbeat.wait_until(timeout, |s| {
        s.heartbeats_answered == HEARTBEATS || s.errors > 0
    });
    let after = b.vm.stats();
    let done = done.expect("all heartbeats answered");
    b.shutdown
        .wait_until(timeout, |s| s.negotiated)
        .expect("shutdown IC negotiated");
    b.shutdown.request_shutdown();
    let acked = b.shutdown.wait_until(timeout, |s| s.shutdown_acknowledged);
    let run = b.vm.wait(timeout).unwrap();
    run.expect_success().unwrap();
    assert!(acked.is_some(), "shutdown not acknowledged");

    let service = b.service.clone();
    assert_eq!(service.version(), Some(Version::WIN10_V5_3));
    // The guest closed the heartbeat channel: its device thread was stopped and joined.
    assert_eq!(run.console_number("ic-closed"), 1);
    assert!(!b.heartbeat.snapshot().serving);
    assert!(!service.is_serving(service.relids()[0]));
    assert_eq!(run.console_number("vmbus-version"), 5);
    assert_eq!(run.console_number("vmbus-offers"), 2);
    assert_eq!(run.console_number("ic-heartbeats"), HEARTBEATS);
    assert_eq!(done.errors, 0, "{:?}", done.last_error);
    assert_eq!(done.heartbeats_answered, HEARTBEATS);
    let bursts = HEARTBEATS / BURST;
    assert_eq!(done.bursts, bursts);

    // The heartbeat phase: every burst of BURST requests costs exactly one host→guest interrupt and
    // one guest→host signal, and no exit to user space at all (signals go through ioeventfd,
    // interrupts through the in-kernel LAPIC, the guest sleeps in an in-kernel HLT).
    let hb = done.channel;
    let at = negotiated.channel_at_negotiated;
    assert_eq!(hb.interrupts - at.interrupts, bursts, "{hb:?} vs {at:?}");
    // The host reads the guest's signals from an event fd, so one signal can fall on either side of
    // the window's edges (the device drained a batch before it read the signal announcing it); the
    // guest's own count (`ic-signals`, below) is exact.
    let seen = hb.guest_signals - at.guest_signals;
    assert!(
        (bursts - 1..=bursts + 1).contains(&seen),
        "{hb:?} vs {at:?}"
    );
    let window = after.delta(&before);
    assert_eq!(
        window.user_exits(),
        0,
        "user exits in the heartbeat phase: {:?}",
        window.vcpus[0].user_exits
    );
    // KVM's all-exits counter includes host noise: bound it. Each guest signal is at least one exit.
    assert!(
        window.kvm_exits() >= bursts,
        "{} KVM exits",
        window.kvm_exits()
    );
    // The guest made one signal per burst, plus one per negotiation and one for the shutdown answer.
    assert_eq!(run.console_number("ic-signals"), bursts + 3);
    eprintln!(
        "heartbeat phase: {HEARTBEATS} heartbeats in {bursts} bursts; user exits {}, KVM exits {}, \
         host interrupts {}, guest signals {}",
        window.user_exits(),
        window.kvm_exits(),
        hb.interrupts - at.interrupts,
        hb.guest_signals - at.guest_signals
    );
}

#[test]
fn host_accepting_only_win10_makes_the_guest_fall_back() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let b = boot("vmbus", &[Version::WIN10], 0, 1);
    let run = b.vm.run(Duration::from_secs(60)).unwrap();
    run.expect_success().unwrap();
    let service = b.service.clone();
    assert_eq!(service.version(), Some(Version::WIN10));
    assert!(run.console.contains("vmbus-version=4.0"), "{}", run.console);
    assert_eq!(run.console_number("vmbus-offers"), 2);
}

#[test]
fn hostile_guest_gets_errors_and_the_ics_keep_working() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let mut b = boot("vmbus:hostile,ic", &[], 500, 50);
    b.vm.start().unwrap();
    let timeout = Duration::from_secs(60);
    let done = b
        .heartbeat
        .wait_until(timeout, |s| s.heartbeats_answered == 500 || s.errors > 0)
        .expect("heartbeats after the hostile phase");
    b.shutdown
        .wait_until(timeout, |s| s.negotiated)
        .expect("shutdown IC negotiated");
    b.shutdown.request_shutdown();
    let run = b.vm.wait(timeout).unwrap();
    run.expect_success().unwrap();
    assert_eq!(done.errors, 0, "{:?}", done.last_error);
    assert!(run.console.contains("hostile=survived"), "{}", run.console);
    assert_ne!(run.console_number("hostile-gpadl-status"), 0);
    let service = b.service.clone();
    // Garbage, truncated, unknown-relid, bad-GPADL and 200 flooded posts were refused one by one.
    let refused = service
        .stats
        .refused
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(refused >= 204, "refused {refused}");
    assert_eq!(
        service
            .stats
            .failed_opens
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
