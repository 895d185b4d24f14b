//! Hostile guests against the VMBus host on KVM: a guest that fills its request ring and never reads
//! a completion costs the host no CPU and cannot delay close or shutdown; a device thread that panics
//! is contained (its device rescinded and reported) while the other devices go on.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use host_vsp::backend::RamDisk;
use host_vsp::synthetic::ic::vsp::IcVsp;
use host_vsp::synthetic::storvsp::{LunMap, StorvspConfig, StorvspDevice};
use testbed::bench::calibrate_tsc;
use testbed::probe::ProbeDevice;
use testbed::{GuestVm, GuestVmConfig};
use vmbus::protocol::Guid;

const TIMEOUT: Duration = Duration::from_secs(60);

/// CPU time (ns) this process's thread named `name` has used so far (`/proc` schedstat).
fn thread_cpu_ns(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let stat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
            return stat.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

#[test]
fn storvsp_guest_that_never_reads_completions_costs_no_host_cpu() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let device = StorvspDevice::new(
        Guid::new(0x6e72, 1, 1, [0; 8]),
        LunMap::new().with_backend(0, Arc::new(RamDisk::new(4 << 20))),
        StorvspConfig::default(),
    );
    let stats = device.stats();
    let mut config = GuestVmConfig::new(format!("bench-tsc:{} vmbus:never-reads", calibrate_tsc()));
    config.vmbus_device(Arc::new(device));
    let mut vm = GuestVm::new(config).unwrap();
    vm.start().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !vm.log().contains("never-reads-packets=") {
        assert!(Instant::now() < deadline, "the guest never filled its ring");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    let thread = "vsp-storvsp-1";
    let (t0, c0) = (
        Instant::now(),
        thread_cpu_ns(thread).expect("device thread"),
    );
    std::thread::sleep(Duration::from_secs(2));
    let (t1, c1) = (
        Instant::now(),
        thread_cpu_ns(thread).expect("device thread"),
    );
    let share = (c1 - c0) as f64 / (t1 - t0).as_nanos() as f64;
    let run = vm.wait(TIMEOUT).unwrap();
    run.expect_success().unwrap();
    let worker = stats.lock().unwrap().worker;
    eprintln!(
        "never reads: {} packets written, device thread CPU {:.3}% over 2 s, close {} µs, \
         shutdown {:?}, full-ring stalls {}, back-pressure {}",
        run.console_number("never-reads-packets"),
        share * 100.0,
        run.console_number("never-reads-close-us"),
        run.vmbus_shutdown,
        worker.full_ring_stalls,
        worker.backpressure,
    );
    assert!(
        worker.full_ring_stalls > 0,
        "the guest's ring never filled: {worker:?}"
    );
    assert!(
        share < 0.05,
        "device thread used {:.1}% of a core",
        share * 100.0
    );
    assert!(run.console_number("never-reads-close-us") < 1_000_000);
    assert!(run.console_number("never-reads-again") > 0);
    assert!(
        run.vmbus_shutdown < Duration::from_secs(1),
        "{:?}",
        run.vmbus_shutdown
    );
    assert_eq!(run.vmbus.stats.stuck_devices.load(Ordering::Relaxed), 0);
}

#[test]
fn device_thread_panic_is_contained_and_the_heartbeat_goes_on() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let heartbeat = IcVsp::heartbeat(Guid::new(0x4842, 1, 1, [0; 8]), 500, 50);
    let shutdown = IcVsp::shutdown(Guid::new(0x5344, 1, 1, [0; 8]));
    let (hb, sd) = (heartbeat.control(), shutdown.control());
    let mut config = GuestVmConfig::new("vmbus:probe-panic,ic");
    config
        .vmbus_device(Arc::new(ProbeDevice::new(Guid::new(0x7072, 9, 9, [0; 8]))))
        .vmbus_device(Arc::new(heartbeat))
        .vmbus_device(Arc::new(shutdown));
    let mut vm = GuestVm::new(config).unwrap();
    let service = vm.vmbus().clone();
    let probe_relid = service.relids()[0];
    vm.start().unwrap();
    let done = hb
        .wait_until(TIMEOUT, |s| s.heartbeats_answered == 500 || s.errors > 0)
        .expect("heartbeats after the probe failed");
    sd.wait_until(TIMEOUT, |s| s.negotiated)
        .expect("shutdown IC");
    sd.request_shutdown();
    let run = vm.wait(TIMEOUT).unwrap();
    run.expect_success().unwrap();
    assert_eq!(done.errors, 0, "{:?}", done.last_error);
    assert_eq!(
        run.console_number("probe-panic-rescinded"),
        u64::from(probe_relid)
    );
    assert_eq!(service.stats.device_panics.load(Ordering::Relaxed), 1);
    let failures = service.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(
        (failures[0].relid, failures[0].device.as_str()),
        (probe_relid, "probe")
    );
    // The guest released the failed channel's relid.
    assert_eq!(service.channel_state(probe_relid), None);
}
