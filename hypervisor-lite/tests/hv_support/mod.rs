//! Shared helpers of the `hv_*` KVM tests: boot a test guest with the enlightenments installed, read the
//! guests' result words.

// Each `tests/hv_*.rs` crate compiles this module and uses only part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use hypervisor_lite::hv::{HvConfig, HvPartition};
use hypervisor_lite::testing::guest_elf;
use hypervisor_lite::{BootMode, GuestRam, Partition, PartitionConfig, VcpuOutcome};

/// Where the test guests store their results (u64 words).
pub const RESULTS: u64 = 0x30_0000;
/// Where hv_counts reads its mode and count.
pub const CONFIG: u64 = 0x2F_F000;
/// Guest RAM of the test partitions (the guests use 0x80000000 as "outside RAM").
pub const RAM_BYTES: u64 = 8 << 20;

/// A built (not yet started) one-VP partition running `guest`, with the enlightenments installed and attached.
pub fn build(guest: &str) -> (Partition, Arc<HvPartition>) {
    build_in(guest, BootMode::LongMode64)
}

/// [`build`] with the vCPU starting in `mode`.
pub fn build_in(guest: &str, mode: BootMode) -> (Partition, Arc<HvPartition>) {
    let hv = HvPartition::new(HvConfig::new(1));
    let mut cfg = PartitionConfig::new(RAM_BYTES, 1);
    cfg.mode(mode).elf_file(guest_elf(guest)).without_serial();
    hv.install(&mut cfg);
    let partition = cfg.build().expect("build partition");
    hv.attach_to(&partition).expect("attach enlightenments");
    (partition, hv)
}

/// Runs the partition to completion (bounded) and asserts the guest exited with 0.
pub fn run_ok(partition: &mut Partition) {
    let outcomes = partition.run_timeout(Duration::from_secs(60)).expect("run");
    match &outcomes[0] {
        VcpuOutcome::Exited { code: 0 } => {}
        other => panic!("guest did not exit cleanly: {other:?}"),
    }
}

/// Result word `i`.
pub fn result(ram: &GuestRam, i: u64) -> u64 {
    ram.read_u64(RESULTS + 8 * i).expect("result word")
}
