//! `--vcpus` through the library on KVM: the VMBus disk on 2 and 4 vCPUs gives the guest a channel
//! per vCPU (the primary and a sub-channel per AP, each interrupting its own VP), every vCPU runs each
//! workload on its own channel and share of the range at once, and the rows count them all: I/Os are
//! vCPUs × each vCPU's count, every vCPU takes its own completions' interrupts inside the window, and
//! the host verifies every vCPU's writes in the backend. A device with one queue (the ramdisk
//! baseline) runs on the BSP alone and says so (`channels` 1).

use std::sync::Arc;
use std::time::Duration;

use host_vsp::backend::{BlockBackend, RamDisk};
use testbed::bench::{
    run_device, verify_disk, BenchOptions, CompletedRun, DataError, DeviceRun, RamdiskKit, VmbusKit,
};
use workload::pattern::pattern;
use workload::{BenchLine, BenchOutcome, Op, Plan, WorkloadSpec};

/// Per vCPU: 64 random 4 KiB writes at QD1, the same range read back at QD1, a mixed QD8 run and a
/// sequential QD4 read; every share (1/N of 8192 sectors) has room for all of them.
fn specs() -> Vec<WorkloadSpec> {
    [
        "w-qd1:k=rw,bs=4096,qd=1,n=64,seed=2,lba=0+8192",
        "r-qd1:k=rr,bs=4096,qd=1,n=64,seed=7,lba=0+8192",
        "mix-qd8:k=mix50,bs=4096,qd=8,n=120,seed=5,lba=0+8192",
        "sr-qd4:k=sr,bs=64k,qd=4,n=24,lba=0+8192",
    ]
    .iter()
    .map(|s| WorkloadSpec::parse(s).unwrap())
    .collect()
}

fn options(vcpus: u32) -> BenchOptions {
    BenchOptions {
        vcpus,
        ..BenchOptions::quiet(Duration::from_secs(120))
    }
}

fn lines(run: &DeviceRun) -> Vec<BenchLine> {
    run.console
        .lines()
        .filter_map(|l| BenchLine::parse(l).ok())
        .collect()
}

fn vmbus_on(vcpus: u32) {
    let disk = Arc::new(RamDisk::new(16 << 20));
    let specs = specs();
    let run = run_device(&VmbusKit::default(), disk.clone(), &specs, &options(vcpus));
    let n = vcpus as usize;
    eprintln!("{}", testbed::report::table(&run.rows));
    let lines = lines(&run);
    assert_eq!(lines.len(), specs.len(), "{}", run.console);
    let mut completed = Vec::new();
    for (k, ((row, spec), line)) in run.rows.iter().zip(&specs).zip(&lines).enumerate() {
        let m = row
            .outcome
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}\n--- console ---\n{}", row.workload, run.console));
        assert_eq!((row.vcpus, row.channels), (vcpus, vcpus), "{}", spec.name);
        // Every vCPU ran the spec's count on its own share.
        assert_eq!(line.vp_ios, vec![spec.max_ios; n], "{}", spec.name);
        assert_eq!(m.ios, vcpus as u64 * spec.max_ios, "{}", spec.name);
        assert_eq!(m.bytes, m.ios * u64::from(spec.block_bytes));
        assert!(m.seconds > 0.0 && m.iops() > 0.0, "{}", spec.name);
        assert!(m.vcpu_cpu_us_per_io > 0.0 && m.device_cpu_us_per_io > 0.0);
        let BenchOutcome::Done(r) = &line.outcome else {
            unreachable!()
        };
        assert!(r.achieved_qd <= u64::from(spec.queue_depth) * vcpus as u64);
        // Completions interrupt the vCPU that submitted: every vCPU took interrupts in the window, and
        // at QD1 at least one per I/O of its own (plus its job's wake-up IPI and little else).
        let w = run.windows[k].as_ref().expect("a window");
        assert_eq!(w.vcpus.len(), n);
        for v in &w.vcpus {
            assert!(
                v.irq_injections > 0,
                "{} vp{}: {w:?}",
                spec.name,
                v.vp_index
            );
            if spec.queue_depth == 1 {
                assert!(
                    (spec.max_ios..=2 * spec.max_ios + 4).contains(&v.irq_injections),
                    "{} vp{}: {} interrupts for {} I/Os",
                    spec.name,
                    v.vp_index,
                    v.irq_injections,
                    spec.max_ios
                );
            }
        }
        completed.push(CompletedRun {
            spec: spec.clone(),
            generation: line.generation,
            ios: r.ios,
            read_digest: 0,
            vp_ios: line.vp_ios.clone(),
        });
    }
    // The host's replay covers every vCPU's share: the disk passes, and one wrong sector in the last
    // AP's share of the first workload's writes is caught.
    verify_disk(&*disk, &completed).unwrap();
    let last = workload::vp_share(&specs[0], n - 1, n, disk.sectors()).unwrap();
    let plan = Plan::new(&last, disk.sectors()).unwrap();
    let written = (0..plan.ios())
        .map(|i| plan.io(i))
        .find(|(op, _)| *op == Op::Write)
        .map(|(_, s)| s)
        .unwrap();
    // The pre-fill's contents there: stale whichever later workload wrote the block last.
    let mut block = vec![0u8; 4096];
    pattern(written, 0, &mut block);
    disk.write_at(written * 512, &block, false).unwrap();
    match verify_disk(&*disk, &completed) {
        Err(DataError::Mismatch { sector, .. }) => assert_eq!(sector, written),
        other => panic!("a stale block in vp{}'s share passed: {other:?}", n - 1),
    }
}

#[test]
fn vmbus_on_two_vcpus_splits_every_workload_over_two_channels() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    vmbus_on(2);
}

#[test]
fn vmbus_on_four_vcpus_splits_every_workload_over_four_channels() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    vmbus_on(4);
}

#[test]
fn a_device_with_one_queue_runs_on_the_bsp_alone() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let disk = Arc::new(RamDisk::new(16 << 20));
    let specs = specs();
    let run = run_device(&RamdiskKit, disk, &specs, &options(2));
    for (line, spec) in lines(&run).iter().zip(&specs) {
        assert!(line.vp_ios.is_empty(), "{line:?}");
        let BenchOutcome::Done(r) = &line.outcome else {
            panic!("{line:?}\n{}", run.console)
        };
        assert_eq!(r.ios, spec.max_ios);
    }
    for (row, w) in run.rows.iter().zip(&run.windows) {
        let m = row.outcome.as_ref().unwrap();
        assert_eq!((row.vcpus, row.channels), (2, 1));
        let w = w.as_ref().unwrap();
        // No device, no exit, no interrupt: the AP sleeps through the window.
        assert_eq!(w.vcpus.len(), 2);
        assert_eq!(m.user_exits, 0, "{}", row.workload);
        assert_eq!(w.vcpus[1].user_exits.total(), 0);
    }
}
