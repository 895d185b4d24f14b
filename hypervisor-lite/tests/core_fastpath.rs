//! Exit-free fast paths and accounting on real KVM: ioeventfd writes cost no user exit while plain port writes
//! cost exactly one each; MSIs injected with KVM_SIGNAL_MSI and through an irqfd wake a halted guest and reach
//! its interrupt handlers; a 32 GiB partition runs with little host memory. Measured costs are printed.

mod core_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use core_support::{mapping_rss, vm_rss, Recorder};
use hypervisor_lite::testing::{guest_elf, kvm_or_skip};
use hypervisor_lite::{IoEventAddress, PartitionConfig, VcpuOutcome};

const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn ioeventfd_writes_cost_no_user_exit_and_plain_writes_one_each() {
    if !kvm_or_skip() {
        return;
    }
    const N: u64 = 500;
    let rec = Arc::new(Recorder::with_replies(&[(0x708, N)]));
    let mut cfg = PartitionConfig::new(4 << 20, 1);
    cfg.elf_file(guest_elf("ioevent"))
        .add_port_handler(0x700..0x710, rec.clone());
    let mut p = cfg.build().unwrap();
    let efd = p
        .register_ioeventfd(IoEventAddress::Port(0x700), 4, Some(0x5D))
        .unwrap();
    let before = p.stats();
    let out = p.run_timeout(TIMEOUT).unwrap();
    assert_eq!(out[0].exit_code(), Some(0), "{out:?}");
    let d = p.stats().delta(&before);

    assert_eq!(
        efd.read().unwrap(),
        N,
        "every matching write signalled the eventfd"
    );
    assert_eq!(
        rec.writes_to(0x700),
        [0x5E],
        "only the datamatch miss reached user space"
    );
    assert_eq!(rec.writes_to(0x704).len() as u64, N);
    let u = d.vcpus[0].user_exits;
    // in(N) + 3 markers + 1 miss + N plain writes + exit port.
    assert_eq!((u.io, u.total()), (N + 6, N + 6), "{u:?}");
    if !d.vcpus[0].kvm.values.is_empty() {
        let kvm_exits = d.kvm_exits();
        assert!(
            kvm_exits >= 2 * N,
            "KVM saw {kvm_exits} exits for {N} ioeventfd + {N} plain writes"
        );
        assert!(
            kvm_exits < 2 * N + 10_000,
            "KVM exits {kvm_exits} far above the guest's work"
        );
    }

    let markers: Vec<Instant> = rec
        .accesses()
        .iter()
        .filter(|a| a.write && a.addr == 0x70C)
        .map(|a| a.at)
        .collect();
    assert_eq!(markers.len(), 3);
    let per = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1e6 / N as f64;
    eprintln!(
        "ioeventfd write: {:.1} µs each; plain port write (user exit + loop): {:.1} µs each; KVM exits {}",
        per(markers[0], markers[1]),
        per(markers[1], markers[2]),
        d.kvm_exits()
    );
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < TIMEOUT, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

#[test]
fn msi_and_irqfd_interrupts_wake_the_guest_and_reach_its_handlers() {
    if !kvm_or_skip() {
        return;
    }
    const K: u32 = 3;
    let rec = Arc::new(Recorder::with_replies(&[(0x714, K.into())]));
    let mut cfg = PartitionConfig::new(4 << 20, 1);
    cfg.elf_file(guest_elf("msi"))
        .add_port_handler(0x710..0x71C, rec.clone());
    let mut p = cfg.build().unwrap();
    let irqfd = p.irqfd_msi(0, 0x41).unwrap();
    let ram = p.ram().clone();
    let before = p.stats();
    p.start().unwrap();
    wait_for("the guest's ready write", || {
        !rec.writes_to(0x710).is_empty() && rec.accesses().len() >= 2
    });
    let counters = rec.writes_to(0x710)[0];
    let count = |v: u64| ram.load_u32(counters + 4 * v, Ordering::Acquire).unwrap();

    let (mut msi_time, mut irqfd_time) = (Duration::ZERO, Duration::ZERO);
    for i in 1..=K {
        let t = Instant::now();
        assert!(
            p.signal_msi(0, 0x40).unwrap(),
            "MSI delivered to an enabled LAPIC"
        );
        wait_for("the 0x40 handler", || count(0) == i);
        msi_time += t.elapsed();
        let t = Instant::now();
        irqfd.write(1).unwrap();
        wait_for("the 0x41 handler", || count(1) == i);
        irqfd_time += t.elapsed();
    }
    let out = p.join_timeout(TIMEOUT);
    assert_eq!(out[0].exit_code(), Some(0), "{out:?}");
    assert_eq!(rec.writes_to(0x718), [u64::from(K), u64::from(K)]);
    let d = p.stats().delta(&before);
    let u = d.vcpus[0].user_exits;
    // ready + read K + two reports + exit port; interrupts and HLT wake-ups never left the kernel.
    assert_eq!((u.io, u.total() - u.interrupted), (5, 5), "{u:?}");
    if !d.vcpus[0].kvm.values.is_empty() {
        assert!(
            d.vcpus[0].irq_injections >= 2 * u64::from(K),
            "irq_injections {}",
            d.vcpus[0].irq_injections
        );
        assert!(
            d.vcpus[0].halt_exits >= 1,
            "the guest halted between interrupts"
        );
    }
    eprintln!(
        "interrupt injection to handler-visible count: signal_msi {:.0} µs, irqfd {:.0} µs (incl. HLT wake-up)",
        msi_time.as_secs_f64() * 1e6 / f64::from(K),
        irqfd_time.as_secs_f64() * 1e6 / f64::from(K)
    );
}

#[test]
fn thirty_two_gib_partition_runs_with_little_host_memory() {
    if !kvm_or_skip() {
        return;
    }
    const RAM: u64 = 32 << 30;
    let rss_before = vm_rss();
    let rec = Arc::new(Recorder::default());
    let mut cfg = PartitionConfig::new(RAM, 1);
    cfg.elf_file(guest_elf("bigmem"))
        .add_port_handler(0x720..0x721, rec.clone());
    let mut p = cfg.build().unwrap();
    let out = p.run_timeout(TIMEOUT).unwrap();
    assert!(
        matches!(out[..], [VcpuOutcome::Exited { code: 0 }]),
        "{out:?}"
    );
    let last = (4 << 30) + RAM - (3 << 30) - 8;
    let reported = rec.writes_to(0x720);
    assert_eq!(reported.len(), 2);
    assert_eq!(reported[0] | reported[1] << 32, last);
    assert_eq!(p.ram().read_u64(last).unwrap(), 0x0123_4567_89ab_cdef);
    assert_eq!(p.ram().read_u64(4 << 30).unwrap(), last);

    let starts: Vec<u64> = p.ram().regions().iter().map(|r| r.host_addr).collect();
    let ram_rss = mapping_rss(&starts);
    let rss_delta = vm_rss().saturating_sub(rss_before);
    eprintln!(
        "32 GiB partition: guest RAM resident {} KiB, process RSS delta {} KiB",
        ram_rss >> 10,
        rss_delta >> 10
    );
    assert!(ram_rss > 0, "the guest's writes are resident");
    assert!(ram_rss < 200 << 20, "guest RAM resident {ram_rss} bytes");
    assert!(
        rss_delta < 200 << 20,
        "process RSS grew by {rss_delta} bytes"
    );
}
