//! VMBus end to end on KVM: our guest kernel connects to the host VMBus service (newest version, or
//! the fallback the host forces), lists its offers, opens the heartbeat and shutdown ICs, answers
//! 10 000 heartbeats in bursts and shuts down when the host asks — with the transitions counted. And
//! the `serve` scenario's time-sync IC (the guest's clock, started at the epoch, set to the host's
//! UTC) and KVP exchange (the guest's values enumerated, a key pushed and read back).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use host_vsp::synthetic::ic::kvp_vsp::KvpVsp;
use host_vsp::synthetic::ic::timesync::TimeSyncVsp;
use host_vsp::synthetic::ic::vsp::{IcControl, IcVsp};
use host_vsp::vmbus_service::VmbusService;
use hypervisor_lite::hv::HvPartition;
use ic_protocol::kvp::KvpPool;
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

/// The guest's reference counter for a device made before the partition: read once it exists.
fn late_reference_clock() -> (
    Arc<OnceLock<Arc<HvPartition>>>,
    host_vsp::synthetic::ic::ReferenceClock,
) {
    let hv: Arc<OnceLock<Arc<HvPartition>>> = Arc::default();
    let read = hv.clone();
    (
        hv,
        Arc::new(move || read.get().map(|hv| hv.reference_time())),
    )
}

/// The numbers after `key=` on every console line starting with `prefix`.
fn fields(console: &str, prefix: &str, key: &str) -> Vec<i64> {
    let pattern = format!("{key}=");
    console
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let at = l.find(&pattern)? + pattern.len();
            l[at..].split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// The time-sync test's bound: the guest's clock, read at reference time R, is within this of the
/// host's UTC at R (100 ns units: 10 ms).
const CLOCK_BOUND: i64 = 100_000;

#[test]
fn time_sync_moves_the_guest_clock_from_the_epoch_to_the_hosts_utc() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let (hv_slot, clock) = late_reference_clock();
    let timesync = TimeSyncVsp::new(
        Guid::new(0x5453, 1, 1, [0; 8]),
        Duration::from_millis(100),
        clock,
    );
    let time = timesync.state();
    let shutdown = IcVsp::shutdown(Guid::new(0x5344, 1, 1, [0; 8]));
    let sd = shutdown.control();
    let mut config = GuestVmConfig::new("serve");
    config
        .vmbus_device(Arc::new(timesync))
        .vmbus_device(Arc::new(shutdown));
    let mut vm = GuestVm::new(config).unwrap();
    let hv = vm.hv().clone();
    hv_slot.set(hv.clone()).ok().unwrap();
    vm.start().unwrap();
    let timeout = Duration::from_secs(60);
    let state = time
        .wait_until(timeout, |s| s.answered >= 4 || s.errors > 0)
        .expect("the guest answered a SYNC and three SAMPLEs");
    sd.wait_until(timeout, |s| s.negotiated)
        .expect("shutdown IC negotiated");
    sd.request_shutdown();
    let run = vm.wait(timeout).unwrap();
    // The host's UTC and the reference counter read together: UTC at reference R is
    // utc_now - (ref_now - R).
    let ref_now = hv.reference_time() as i64;
    let utc_now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
        / 100;
    run.expect_success().unwrap();
    assert_eq!(state.errors, 0, "{:?}", state.last_error);
    assert_eq!(state.version, Some((4, 0)));
    assert_eq!(state.syncs, 1);
    assert!(state.samples >= 3, "{state:?}");
    let utc_at = |r: i64| utc_now - (ref_now - r);

    // The clock started wrong: at the epoch plus the reference time.
    let start = fields(&run.console, "serve-clock-start", "clock");
    let start_ref = fields(&run.console, "serve-clock-start", "ref");
    assert_eq!(start, start_ref, "{}", run.console);
    // The SYNC moved it to the host's UTC.
    let sync_clock = fields(&run.console, "serve-timesync kind=sync", "clock");
    let sync_ref = fields(&run.console, "serve-timesync kind=sync", "ref");
    let sync_error = fields(&run.console, "serve-timesync kind=sync", "error");
    assert_eq!(sync_clock.len(), 1, "{}", run.console);
    let off = sync_clock[0] - utc_at(sync_ref[0]);
    assert!(
        off.abs() < CLOCK_BOUND,
        "clock off by {off} x 100 ns after the SYNC"
    );
    // Before it, the guest was some 56 years behind.
    assert!(
        -sync_error[0] > utc_now - 10_000_000 * 86_400,
        "error {}",
        sync_error[0]
    );
    // Every SAMPLE found it within the guest's 10 ms bound: none adjusted it, and each reading is
    // within the test's bound of the host's UTC.
    let samples = fields(&run.console, "serve-timesync kind=sample", "clock");
    let sample_refs = fields(&run.console, "serve-timesync kind=sample", "ref");
    assert!(samples.len() >= 3, "{}", run.console);
    assert_eq!(
        fields(&run.console, "serve-timesync kind=sample", "adjusted"),
        vec![0; samples.len()]
    );
    for (clock, r) in samples.iter().zip(&sample_refs) {
        let off = clock - utc_at(*r);
        assert!(off.abs() < CLOCK_BOUND, "sample: clock off by {off}");
    }
    let worst = sample_refs
        .iter()
        .zip(&samples)
        .map(|(r, c)| (c - utc_at(*r)).abs())
        .chain([(sync_clock[0] - utc_at(sync_ref[0])).abs()])
        .max()
        .unwrap();
    eprintln!(
        "time sync: {} messages answered, guest clock within {} ns of the host's UTC (bound {} ms)",
        state.answered,
        worst * 100,
        CLOCK_BOUND / 10_000
    );
}

#[test]
fn kvp_returns_the_guests_values_and_a_pushed_key_reaches_the_guest() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let kvp = KvpVsp::new(Guid::new(0x4b56, 1, 1, [0; 8])).unwrap();
    let handle = kvp.handle();
    let shutdown = IcVsp::shutdown(Guid::new(0x5344, 1, 1, [0; 8]));
    let sd = shutdown.control();
    let mut config = GuestVmConfig::new("serve");
    config
        .vmbus_device(Arc::new(kvp))
        .vmbus_device(Arc::new(shutdown));
    let mut vm = GuestVm::new(config).unwrap();
    vm.start().unwrap();
    let timeout = Duration::from_secs(60);
    let state = handle
        .wait_until(timeout, |s| s.enumerations >= 1 || s.errors > 0)
        .expect("the host enumerated the guest's values");
    assert_eq!(state.errors, 0, "{:?}", state.last_error);
    assert_eq!(state.version, Some((4, 0)));
    let values = handle.guest_values();
    let value = |key: &str| {
        values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(value("HostName"), Some("viridian-guest"), "{values:?}");
    assert_eq!(value("OSName"), Some("viridian guest kernel"));
    assert_eq!(value("ProcessorArchitecture"), Some("x86_64"));
    assert!(value("OSMajorVersion").is_some());
    assert_eq!(values.len(), 9, "{values:?}");
    // One transaction per value plus the one that said "no more".
    assert_eq!(state.transactions, 10);

    let step = Duration::from_secs(10);
    handle
        .push(
            KvpPool::EXTERNAL,
            "viridian.test",
            "pushed from the host",
            step,
        )
        .unwrap();
    assert_eq!(
        handle.get(KvpPool::EXTERNAL, "viridian.test", step),
        Ok(Some("pushed from the host".into()))
    );
    assert_eq!(handle.get(KvpPool::EXTERNAL, "absent", step), Ok(None));
    assert_eq!(
        handle.enumerate(KvpPool::EXTERNAL, step),
        Ok(vec![(
            "viridian.test".into(),
            "pushed from the host".into()
        )])
    );
    assert_eq!(
        handle.delete(KvpPool::EXTERNAL, "viridian.test", step),
        Ok(true)
    );
    assert_eq!(
        handle.get(KvpPool::EXTERNAL, "viridian.test", step),
        Ok(None)
    );
    // A key too long for the wire fails only its own call.
    assert!(handle
        .push(KvpPool::EXTERNAL, &"k".repeat(300), "v", step)
        .is_err());
    assert_eq!(
        handle.get(KvpPool::AUTO, "HostName", step),
        Ok(Some("viridian-guest".into()))
    );

    sd.wait_until(timeout, |s| s.negotiated)
        .expect("shutdown IC negotiated");
    sd.request_shutdown();
    let run = vm.wait(timeout).unwrap();
    run.expect_success().unwrap();
    assert!(
        run.console
            .contains("serve-kvp-set pool=0 key=viridian.test value=pushed from the host stored=1"),
        "{}",
        run.console
    );
    assert!(run.console.contains("serve-kvp-enumerated pool=2 count=9"));
    assert!(run.console.contains("serve-kvp-enumerated pool=0 count=1"));
    let state = handle.state();
    assert_eq!(state.errors, 0, "{:?}", state.last_error);
    assert_eq!(state.timeouts, 0);
}
