//! virtio-blk held to Linux's notification discipline, on KVM: for workloads the engine submits in whole
//! batches, the doorbells the guest rings, the interrupts it takes and the interrupts the device raises
//! are exact numbers derived from the batching rule; the depth asked for is the depth achieved (up to the
//! whole 256-entry queue); nothing exits to user space.
//!
//! Where the numbers come from. The engine fills every free slot (`qd` of them: the driver holds 256),
//! then calls `kick` once, polls, and waits when the poll finds nothing. Against host-vsp's device:
//! 1. **One doorbell per batch.** The device wrote `avail_event` = its `next_avail` when it re-enabled
//!    notifications at the end of its previous pass, before interrupting; so when the guest has added the
//!    batch, `old` = `avail_event` and `new` = `old + qd`, and `vring_need_event(old, old + qd, old)` =
//!    `qd - 1 < qd`: notify. Nothing else the guest does in the window rings.
//! 2. **One interrupt per batch.** The doorbell wakes the device's worker, which takes all `qd` chains in
//!    one pass (nothing more becomes available until the guest has drained, which it does only after an
//!    interrupt), then checks `used_event` once over the pass. The guest re-armed after its last drain
//!    with nothing outstanding, so `enable_cb_delayed` put `used_event` at `last_used` — the first used
//!    index of this pass, inside `[old, new)`: one interrupt, sent after the pass.
//! 3. **Whole batches forever.** The guest drains only after an interrupt, and that interrupt follows
//!    the whole pass, so the drain sees all `qd` completions and the engine refills all `qd` slots. The
//!    timing of the host's worker against the vCPU changes none of this.
//!
//! So `n` I/Os (a multiple of `qd`) cost exactly `n / qd` doorbells and `n / qd` interrupts taken by the
//! guest and raised by the device. The flush after each window spins with notifications suppressed: a
//! doorbell outside the window and no interrupt, so the device's total over the boot is the sum over the
//! windows. (KVM's `irq_injections` also counts re-injections — an interrupt whose VM entry was cancelled
//! is injected again — so it may exceed what the guest took by a few.)

use std::sync::Arc;
use std::time::Duration;

use host_vsp::backend::RamDisk;
use testbed::bench::{run_device, BenchOptions, VirtioKit};
use workload::WorkloadSpec;

/// (spec, I/Os, depth).
const SPECS: [(&str, u64, u64); 5] = [
    (
        "rr4k-qd32:k=rr,bs=4096,qd=32,n=16000,seed=2,lba=0+131072",
        16000,
        32,
    ),
    (
        "rw4k-qd32:k=rw,bs=4096,qd=32,n=4000,seed=3,lba=0+131072",
        4000,
        32,
    ),
    (
        "rr4k-qd1:k=rr,bs=4096,qd=1,n=1000,seed=1,lba=0+131072",
        1000,
        1,
    ),
    ("sr64k-qd8:k=sr,bs=64k,qd=8,n=800,lba=0+131072", 800, 8),
    (
        "rr4k-qd256:k=rr,bs=4096,qd=256,n=5120,seed=5,lba=0+131072",
        5120,
        256,
    ),
];

#[test]
fn virtio_rings_one_doorbell_and_takes_one_interrupt_per_batch() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let specs: Vec<WorkloadSpec> = SPECS
        .iter()
        .map(|(s, _, _)| WorkloadSpec::parse(s).unwrap())
        .collect();
    let kit = VirtioKit::default();
    let run = run_device(
        &kit,
        Arc::new(RamDisk::new(64 << 20)),
        &specs,
        &BenchOptions::quiet(Duration::from_secs(120)),
    );
    let mut batches_total = 0;
    for (row, &(_, ios, depth)) in run.rows.iter().zip(&SPECS) {
        let m = row
            .outcome
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", row.workload, run.console));
        let batches = ios / depth;
        batches_total += batches;
        eprintln!(
            "{}: {} doorbells, {} interrupts taken ({} injected), {} VM exits ({:.3}/IO), QD {}",
            row.workload,
            m.guest_signals,
            m.guest_interrupts,
            m.interrupts,
            m.vm_exits,
            m.per_io(m.vm_exits),
            m.achieved_qd
        );
        assert_eq!(m.ios, ios, "{}", row.workload);
        assert_eq!(m.achieved_qd, depth, "{}: depth achieved", row.workload);
        assert_eq!(m.guest_signals, batches, "{}: doorbells", row.workload);
        assert_eq!(m.guest_interrupts, batches, "{}: interrupts", row.workload);
        assert!(
            (batches..=batches + 2 + batches / 100).contains(&m.interrupts),
            "{}: KVM injected {} interrupts for {batches} batches",
            row.workload,
            m.interrupts
        );
        assert_eq!(m.user_exits, 0, "{}: user exits", row.workload);
    }
    assert!(run.rows[0].outcome.as_ref().unwrap().achieved_qd >= 30);
    let stats = kit.device().expect("the kit attached a device").stats();
    assert_eq!(
        stats.interrupts, batches_total,
        "the device raised one interrupt per batch and none for the flushes: {stats:?}"
    );
    assert_eq!(
        stats.register_notifies, 0,
        "every doorbell hit the ioeventfd"
    );
    let ios: u64 = SPECS.iter().map(|s| s.1).sum();
    assert_eq!(
        stats.requests,
        ios + SPECS.len() as u64,
        "I/Os and one flush per workload"
    );
    assert_eq!(stats.errors, 0);
}
