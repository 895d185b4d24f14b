//! The guest kernel on several vCPUs (KVM): every vCPU comes up in the guest, runs work the BSP hands
//! it and takes its own interrupts — with the wake-up IPIs and each vCPU's exits counted exactly.

use std::time::Duration;

use testbed::{GuestVm, GuestVmConfig};

/// Generous: four vCPU threads time-share two cores here.
const TIMEOUT: Duration = Duration::from_secs(120);
/// The guest's wake-up IPI vector (`smp::WAKE_VECTOR` in the guest kernel).
const WAKES: &str = "wakes";

fn boot(cmdline: &str, vcpus: u32) -> GuestVmConfig {
    let mut config = GuestVmConfig::new(cmdline);
    config.vcpus = vcpus;
    config
}

#[test]
fn four_vcpus_come_up_and_each_reads_its_own_vp_index() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let run = GuestVm::new(boot("smp", 4)).unwrap().run(TIMEOUT).unwrap();
    run.expect_success().unwrap();
    assert_eq!(run.ended_by, 0, "the BSP powers off");
    assert_eq!(run.console_number("smp-cpus"), 4);
    for vp in 0..4u64 {
        assert_eq!(run.console_number(&format!("smp-vp{vp}-index")), vp);
        assert_eq!(run.console_number(&format!("smp-vp{vp}-recorded")), vp);
    }
    // Each AP was woken exactly once, for its one job. The BSP was sent one IPI per AP coming online
    // and one per job finished (6), but IPIs of one vector that reach it while the previous one is
    // still pending (its IRR bit set, e.g. while it still runs the shim with interrupts off) are one
    // interrupt: at least one, at most six.
    for vp in 1..4u64 {
        assert_eq!(run.console_number(&format!("smp-vp{vp}-{WAKES}")), 1);
        assert_eq!(run.console_number(&format!("smp-vp{vp}-jobs")), 1);
    }
    let bsp_wakes = run.console_number(&format!("smp-vp0-{WAKES}"));
    assert!((1..=6).contains(&bsp_wakes), "{bsp_wakes}");
    // Exits are accounted per vCPU: each read its VP_INDEX MSR once (one user exit) and nothing else
    // left the kernel, but for the BSP's exit-port write and the others' stop.
    assert_eq!(run.stats.vcpus.len(), 4);
    for v in &run.stats.vcpus {
        let exits = &v.user_exits;
        assert_eq!(exits.msr_read, 1, "VP {}: {exits:?}", v.vp_index);
        assert_eq!(exits.msr_write, 0, "VP {}: {exits:?}", v.vp_index);
        let io = u64::from(v.vp_index == 0);
        assert_eq!(exits.io, io, "VP {}: {exits:?}", v.vp_index);
    }
}

#[test]
fn one_vcpu_guest_is_unchanged() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let run = GuestVm::new(boot("smp", 1)).unwrap().run(TIMEOUT).unwrap();
    run.expect_success().unwrap();
    assert_eq!(run.console_number("smp-cpus"), 1);
    assert_eq!(run.console_number("smp-vp0-index"), 0);
    assert_eq!(run.console_number(&format!("smp-vp0-{WAKES}")), 0);
    assert!(!run.console.contains("smp-vp1"), "{}", run.console);
}
