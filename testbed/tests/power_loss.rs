//! Durability on KVM that can fail: the guest writes through storvsp and virtio-blk to a disk with a
//! volatile write cache and flushes after each workload (SYNCHRONIZE CACHE, VIRTIO_BLK_T_FLUSH); after
//! a simulated power cut every write acknowledged before a completed flush must be on the disk. The
//! twin whose flushes make nothing durable must lose data — so the test can fail.

use std::sync::Arc;
use std::time::Duration;

use host_vsp::backend::VolatileCacheDisk;
use testbed::bench::{
    run_device, verify_disk, BenchOptions, CompletedRun, DeviceKit, VirtioKit, VmbusKit,
};
use workload::WorkloadSpec;

const DISK_BYTES: u64 = 16 << 20;

fn specs() -> Vec<WorkloadSpec> {
    [
        "w4k:k=rw,bs=4096,qd=32,n=1500,seed=5,lba=0+16384",
        "w64k:k=sw,bs=64k,qd=8,n=100,lba=16384+12800",
    ]
    .iter()
    .map(|s| WorkloadSpec::parse(s).unwrap())
    .collect()
}

/// Run the writes through `kit` on `disk`, cut the power, and check what survived.
fn survives(kit: &dyn DeviceKit, disk: Arc<VolatileCacheDisk>) -> Result<(), String> {
    let specs = specs();
    let run = run_device(
        kit,
        disk.clone(),
        &specs,
        &BenchOptions::quiet(Duration::from_secs(60)),
    );
    let mut completed = Vec::new();
    for (k, (row, spec)) in run.rows.iter().zip(&specs).enumerate() {
        let m = row
            .outcome
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", row.workload, run.console));
        completed.push(CompletedRun {
            spec: spec.clone(),
            generation: k as u8 + 1,
            ios: m.ios,
            read_digest: 0,
            vp_ios: Vec::new(),
        });
    }
    disk.power_cut();
    verify_disk(&*disk, &completed).map_err(|e| e.to_string())
}

#[test]
fn power_loss_keeps_every_flushed_write_through_storvsp() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    survives(
        &VmbusKit::default(),
        Arc::new(VolatileCacheDisk::new(DISK_BYTES)),
    )
    .unwrap();
}

#[test]
fn power_loss_keeps_every_flushed_write_through_virtio_blk() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    survives(
        &VirtioKit::default(),
        Arc::new(VolatileCacheDisk::new(DISK_BYTES)),
    )
    .unwrap();
}

#[test]
fn power_loss_test_fails_when_flushes_are_not_forwarded() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    for kit in [
        &VmbusKit::default() as &dyn DeviceKit,
        &VirtioKit::default(),
    ] {
        let lost = survives(
            kit,
            Arc::new(VolatileCacheDisk::dropping_flushes(DISK_BYTES)),
        );
        assert!(
            lost.is_err(),
            "{}: data survived a cut with flushes dropped",
            kit.name()
        );
    }
}
