//! Exit accounting of HvSignalEvent on real KVM: N fast signals through the doorbell ioeventfd add no user exit
//! (and at least N KVM exits), N slow signals add exactly N user exits, and a fast signal to a connection without
//! an ioeventfd exits to user space once and gets status 0x12 back through R11.

mod hv_support;

use std::time::Instant;

use hv_support::{build, result, run_ok, CONFIG};
use hypervisor_lite::testing::kvm_or_skip;
use hypervisor_lite::StatsSnapshot;

struct Run {
    stats: StatsSnapshot,
    signals: u64,
    last_status: u64,
    seconds: f64,
}

/// Runs hv_counts in `mode` with `n` calls; event fd of connection 7 counted.
fn run(mode: u64, n: u64) -> Run {
    let (mut partition, hv) = build("hv_counts");
    let events = hv.register_event(7).unwrap();
    partition.ram().write_u64(CONFIG, mode).unwrap();
    partition.ram().write_u64(CONFIG + 8, n).unwrap();
    let before = partition.stats();
    let start = Instant::now();
    run_ok(&mut partition);
    let seconds = start.elapsed().as_secs_f64();
    let stats = partition.stats().delta(&before);
    Run {
        stats,
        signals: events.read().unwrap_or(0),
        last_status: result(partition.ram(), 0),
        seconds,
    }
}

#[test]
fn fast_signals_stay_in_the_kernel_and_slow_ones_cost_one_exit_each() {
    if !kvm_or_skip() {
        return;
    }
    const FAST: u64 = 400;
    const SLOW: u64 = 100;
    const DOORBELL: u64 = 20;
    let base = run(0, 0);
    let fast = run(1, FAST);
    let slow = run(2, SLOW);
    let unregistered = run(3, DOORBELL);

    assert_eq!(base.signals, 0);
    assert_eq!(fast.signals, FAST, "every fast signal reached the event fd");
    assert_eq!(fast.last_status, 0);
    assert_eq!(
        fast.stats.user_exits(),
        base.stats.user_exits(),
        "fast HvSignalEvent through the ioeventfd adds no user exit"
    );
    let kvm_delta = fast
        .stats
        .kvm_exits()
        .saturating_sub(base.stats.kvm_exits());
    assert!(
        kvm_delta >= FAST,
        "each fast signal is at least one VM exit ({kvm_delta} for {FAST})"
    );

    assert_eq!(slow.signals, SLOW);
    assert_eq!(slow.last_status, 0);
    assert_eq!(
        slow.stats.user_exits() - base.stats.user_exits(),
        SLOW,
        "one user exit per slow HvSignalEvent"
    );

    assert_eq!(unregistered.signals, 0);
    assert_eq!(
        unregistered.last_status, 0x12,
        "invalid connection id returned through the doorbell path"
    );
    assert_eq!(
        unregistered.stats.user_exits() - base.stats.user_exits(),
        DOORBELL
    );

    let per = |r: &Run, n: u64| (r.seconds - base.seconds) / n as f64 * 1e6;
    eprintln!(
        "HvSignalEvent from CPL3 (rough wall-clock vs. a baseline run): fast {:.1} us/call ({:.2} KVM exits/call, 0 user exits), slow {:.1} us/call \
         (1 user exit), unregistered doorbell {:.1} us/call (1 user exit)",
        per(&fast, FAST),
        kvm_delta as f64 / FAST as f64,
        per(&slow, SLOW),
        per(&unregistered, DOORBELL)
    );
}
