//! The VMBus device model on KVM: one service hosting every device of a guest (two SCSI controllers
//! on their own images plus the heartbeat and shutdown ICs), a controller hot-added after boot, used,
//! rescinded and its relid reused, a device reading and writing a GPADL besides its rings while a
//! hostile guest tears it down, and a device with three sub-channels.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use host_vsp::backend::{BlockBackend, FileDisk};
use host_vsp::synthetic::ic::vsp::IcVsp;
use host_vsp::synthetic::storvsp::{LunMap, StorvspConfig, StorvspDevice};
use host_vsp::vmbus_service::{ChannelState, VmbusService};
use probe_protocol::status;
use testbed::bench::{calibrate_tsc, prefill, verify_disk, CompletedRun};
use testbed::probe::ProbeDevice;
use testbed::{GuestRun, GuestVm, GuestVmConfig};
use vmbus::protocol::Guid;
use workload::{BenchLine, BenchOutcome, WorkloadSpec};

const IMAGE_BYTES: u64 = 16 << 20;
const TIMEOUT: Duration = Duration::from_secs(120);

fn controller(n: u16) -> Guid {
    Guid::new(0x7669_7269, 0x5343, n, [0, 0, 0, 0, 0, 0, 0, 2])
}

struct Image {
    path: PathBuf,
    disk: Arc<FileDisk>,
}

impl Image {
    fn new(tag: &str, specs: &[WorkloadSpec]) -> Self {
        let path =
            std::env::temp_dir().join(format!("viridian-model-{tag}-{}.img", std::process::id()));
        let disk = Arc::new(FileDisk::create(&path, IMAGE_BYTES).unwrap());
        prefill(&*disk, specs).unwrap();
        Self { path, disk }
    }

    fn backend(&self) -> Arc<dyn BlockBackend> {
        self.disk.clone()
    }

    fn storvsp(&self, instance: Guid) -> StorvspDevice {
        StorvspDevice::new(
            instance,
            LunMap::new().with_backend(0, self.backend()),
            StorvspConfig::default(),
        )
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn spec(s: &str) -> WorkloadSpec {
    WorkloadSpec::parse(s).unwrap()
}

fn bench(device: &str, spec: &WorkloadSpec) -> String {
    format!("bench:{device}:{spec}")
}

/// The bench lines of `device` in the console, in order; each must have succeeded.
fn runs_of(run: &GuestRun, device: &str) -> Vec<CompletedRun> {
    run.console
        .lines()
        .filter_map(|l| BenchLine::parse(l).ok())
        .filter(|l| l.device == device)
        .map(|l| match l.outcome {
            BenchOutcome::Done(r) => {
                assert_eq!(r.errors, 0, "{device} {}: errors\n{}", l.spec, run.console);
                CompletedRun {
                    spec: WorkloadSpec::parse(&l.spec).unwrap(),
                    generation: l.generation,
                    ios: r.ios,
                    read_digest: r.read_digest,
                    vp_ios: Vec::new(),
                }
            }
            BenchOutcome::Failed(why) => panic!("{device} {}: {why}\n{}", l.spec, run.console),
        })
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn two_scsi_controllers_and_the_ics_share_one_vmbus_service() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let (heartbeats, burst) = (2_000, 100);
    let writes = [
        spec("w4k:k=sw,bs=4096,qd=8,n=400,lba=0+3200"),
        spec("w64k:k=rw,bs=64k,qd=16,n=100,seed=5,off=512,lba=4096+16384"),
    ];
    let reads = [
        spec("r4k:k=rr,bs=4096,qd=32,n=400,seed=3,off=8,lba=0+3200"),
        spec("r64k:k=sr,bs=64k,qd=4,n=100,lba=4096+16384"),
    ];
    let all: Vec<WorkloadSpec> = writes.iter().chain(&reads).cloned().collect();
    let (a, b) = (Image::new("a", &all), Image::new("b", &all));
    let heartbeat = IcVsp::heartbeat(Guid::new(0x4842, 1, 1, [0; 8]), heartbeats, burst);
    let shutdown = IcVsp::shutdown(Guid::new(0x5344, 1, 1, [0; 8]));
    let (hb, sd) = (heartbeat.control(), shutdown.control());
    let mut cmdline = format!("bench-tsc:{}", calibrate_tsc());
    // Controller 0 writes the first pair, controller 1 the second, then each reads back its own.
    for (device, (w, r)) in [
        ("vmbus0", (&writes[0], &reads[0])),
        ("vmbus1", (&writes[1], &reads[1])),
    ] {
        cmdline.push_str(&format!(" {} {}", bench(device, w), bench(device, r)));
    }
    cmdline.push_str(" vmbus:ic");
    let mut config = GuestVmConfig::new(cmdline);
    config.ram_bytes = 128 << 20;
    config
        .vmbus_device(Arc::new(a.storvsp(controller(1))))
        .vmbus_device(Arc::new(b.storvsp(controller(2))))
        .vmbus_device(Arc::new(heartbeat))
        .vmbus_device(Arc::new(shutdown));
    let mut vm = GuestVm::new(config).unwrap();
    let service = vm.vmbus().clone();
    assert_eq!(service.relids(), vec![1, 2, 3, 4]);
    vm.start().unwrap();
    let negotiated = hb
        .wait_until(TIMEOUT, |s| s.negotiated)
        .expect("heartbeat negotiated after the disks' workloads");
    let before = vm.stats();
    let done = hb
        .wait_until(TIMEOUT, |s| {
            s.heartbeats_answered == heartbeats || s.errors > 0
        })
        .expect("heartbeats answered");
    let after = vm.stats();
    sd.wait_until(TIMEOUT, |s| s.negotiated)
        .expect("shutdown IC");
    sd.request_shutdown();
    let run = vm.wait(TIMEOUT).unwrap();
    run.expect_success().unwrap();

    // Both disks: verified in the guest (reads against the model) and on the host (the images).
    assert_eq!(run.console_value("vmbus-offers").unwrap_or_default(), "4");
    for (device, image) in [("vmbus0", &a), ("vmbus1", &b)] {
        let runs = runs_of(&run, device);
        assert_eq!(runs.len(), 2, "{device}");
        assert!(runs.iter().all(|r| r.ios == r.spec.max_ios), "{runs:?}");
        verify_disk(&*image.disk, &runs).unwrap_or_else(|e| panic!("{device}: {e}"));
    }
    // The ICs exactly as when they are alone: one interrupt and one signal per burst, no user exit.
    assert_eq!(done.errors, 0, "{:?}", done.last_error);
    let bursts = heartbeats / burst;
    let (hbc, at) = (done.channel, negotiated.channel_at_negotiated);
    assert_eq!(hbc.interrupts - at.interrupts, bursts);
    // The host reads the guest's signals from an event fd, so one signal can fall on either side of
    // the window's edges (the device drained a batch before it read the signal announcing it); the
    // guest's own count below is exact.
    let seen = hbc.guest_signals - at.guest_signals;
    assert!(
        (bursts - 1..=bursts + 1).contains(&seen),
        "{seen} signals for {bursts} bursts"
    );
    assert_eq!(run.console_number("ic-signals"), bursts + 3);
    assert_eq!(after.delta(&before).user_exits(), 0);
    assert_eq!(run.console_number("ic-heartbeats"), heartbeats);
    assert_eq!(
        service
            .stats
            .device_panics
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn hot_add_a_controller_then_rescind_it_and_reuse_its_relid() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let w0 = spec("w0:k=sw,bs=4096,qd=4,n=200,lba=0+1600");
    let wc = spec("wc:k=rw,bs=4096,qd=16,n=300,seed=7,lba=0+4096");
    let rc = spec("rc:k=rr,bs=4096,qd=16,n=300,seed=7,lba=0+4096");
    let wd = spec("wd:k=sw,bs=16k,qd=8,n=200,lba=2048+3200");
    let rd = spec("rd:k=sr,bs=16k,qd=8,n=200,lba=2048+3200");
    let a = Image::new("hot-a", std::slice::from_ref(&w0));
    let c = Image::new("hot-c", &[wc.clone(), rc.clone()]);
    let d = Image::new("hot-d", &[wd.clone(), rd.clone()]);
    let cmdline = [
        format!("bench-tsc:{}", calibrate_tsc()),
        bench("vmbus0", &w0),
        "vmbus:await-scsi=2".into(),
        bench("vmbus1", &wc),
        bench("vmbus1", &rc),
        "vmbus:await-rescind".into(),
        "vmbus:await-scsi=2".into(),
        bench("vmbus1", &wd),
        bench("vmbus1", &rd),
    ]
    .join(" ");
    let mut config = GuestVmConfig::new(cmdline);
    config.ram_bytes = 128 << 20;
    config.vmbus_device(Arc::new(a.storvsp(controller(1))));
    let mut vm = GuestVm::new(config).unwrap();
    let service: Arc<VmbusService> = vm.vmbus().clone();
    vm.start().unwrap();
    // The guest has enumerated the offers and opened controller 0: anything offered now is hot-added.
    wait_until("controller 0 open", || {
        service.channel_state(1) == Some(ChannelState::Open)
    });
    let hot = service
        .add_device(Arc::new(c.storvsp(controller(3))))
        .unwrap();
    assert_eq!(hot, 2);
    // Its two workloads done (the kernel logs each scenario as it ends), the host rescinds it.
    wait_until("I/O on the hot-added controller", || {
        vm.log().matches("scenario bench: ok").count() >= 3
    });
    service.remove_device(hot).unwrap();
    wait_until("the guest releasing the relid", || {
        service.channel_state(hot).is_none()
    });
    assert!(!service.is_serving(hot));
    let reused = service
        .add_device(Arc::new(d.storvsp(controller(4))))
        .unwrap();
    assert_eq!(reused, hot, "the released relid is offered again");
    let run = vm.wait(TIMEOUT).unwrap();
    run.expect_success().unwrap();

    assert_eq!(
        run.console_value("rescinded-relid").unwrap_or_default(),
        hot.to_string()
    );
    assert_eq!(
        run.console_value("rescinded-was-open").unwrap_or_default(),
        "1"
    );
    assert_eq!(
        run.console.matches("scsi-relids=[1, 2]").count(),
        2,
        "{}",
        run.console
    );
    let runs = runs_of(&run, "vmbus1");
    assert_eq!(runs.len(), 4);
    verify_disk(&*c.disk, &runs[..2]).unwrap();
    verify_disk(&*d.disk, &runs[2..]).unwrap();
    verify_disk(&*a.disk, &runs_of(&run, "vmbus0")).unwrap();
    let released = service
        .stats
        .relids_released
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(released, 1);
}

#[test]
fn gpadl_of_a_device_is_revoked_safely_when_a_hostile_guest_tears_it_down() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let probe = ProbeDevice::new(Guid::new(0x7072, 1, 1, [0; 8]));
    let stats = probe.stats();
    let mut config = GuestVmConfig::new("vmbus:probe-gpadl");
    config.vmbus_device(Arc::new(probe));
    let vm = GuestVm::new(config).unwrap();
    let run = vm.run(TIMEOUT).unwrap();
    run.expect_success().unwrap();
    assert_eq!(
        run.console_value("probe-gpadl-check").unwrap_or_default(),
        "ok"
    );
    assert_eq!(
        run.console_number("probe-hammer-status"),
        u64::from(status::REVOKED)
    );
    let at_teardown = run.console_number("probe-counter-at-teardown");
    let primary = stats.lock().unwrap()[&0];
    let (writes, end) = primary.hammer.expect("the device hammered the GPADL");
    assert_eq!(end, status::REVOKED);
    assert!(
        writes >= at_teardown && at_teardown >= 10_000,
        "{writes} vs {at_teardown}"
    );
    // The channel kept working after the teardown; the host noticed nothing worse.
    assert_eq!(primary.echoes, 1);
    let svc = &run.vmbus.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&svc.device_panics), 0);
    assert_eq!(load(&svc.stuck_devices), 0);
    // The ring GPADL and the probe's GPADL were mapped; both are revoked by now.
    assert_eq!(load(&svc.gpadls_mapped), 2);
    assert_eq!(load(&svc.gpadls_revoked), 2);
    eprintln!("hammer: {writes} writes, {at_teardown} when the guest tore the GPADL down");
}

#[test]
fn sub_channels_each_carry_packets_with_their_own_signals() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let probe = ProbeDevice::new(Guid::new(0x7072, 2, 2, [0; 8]));
    let stats = probe.stats();
    let mut config = GuestVmConfig::new("vmbus:probe-sub");
    config.vmbus_device(Arc::new(probe));
    let vm = GuestVm::new(config).unwrap();
    let run = vm.run(TIMEOUT).unwrap();
    run.expect_success().unwrap();
    assert_eq!(run.console_value("probe-sub").unwrap_or_default(), "ok");
    let stats = stats.lock().unwrap().clone();
    assert_eq!(stats.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    let mut relids: Vec<u32> = stats.values().map(|s| s.relid).collect();
    relids.dedup();
    assert_eq!(relids.len(), 4, "{stats:?}");
    for (index, s) in &stats {
        assert_eq!(s.echoes, 8, "channel {index}: {s:?}");
        assert_eq!(
            run.console_number(&format!("probe-sub{index}-relid")),
            u64::from(s.relid)
        );
        assert_eq!(run.console_number(&format!("probe-sub{index}-signals")), 1);
        assert!(!s.serving, "channel {index} still served after close");
        if *index > 0 {
            // A sub-channel carries exactly its burst: one signal in, one interrupt out.
            assert_eq!(s.channel.guest_signals, 1, "channel {index}: {s:?}");
            assert_eq!(s.channel.interrupts, 1, "channel {index}: {s:?}");
        } else {
            // The primary also carried the sub-channel request.
            assert_eq!(s.channel.guest_signals, 2, "{s:?}");
            assert_eq!(s.requests, 9, "{s:?}");
        }
    }
}
