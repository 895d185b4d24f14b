//! The guest kernel boots on KVM, drops to CPL3, and reaches the enlightenments through its CPL0 gates.

use std::time::Duration;

use testbed::{GuestVm, GuestVmConfig};

#[test]
fn guest_kernel_boots_and_detects_hyperv() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let vm = GuestVm::new(GuestVmConfig::new("hello hv")).unwrap();
    let run = vm.run(Duration::from_secs(30)).unwrap();
    run.expect_success().unwrap();
    assert!(
        run.console.contains("hypervisor `Microsoft Hv`"),
        "{}",
        run.console
    );
    assert!(run.console.contains("SynIC enabled"), "{}", run.console);
}

#[test]
fn unknown_scenario_fails_with_its_index() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let run = GuestVm::new(GuestVmConfig::new("hello nonsense"))
        .unwrap()
        .run(Duration::from_secs(30))
        .unwrap();
    assert_eq!(run.exit_code, Some(2), "{}", run.console);
    assert!(run.console.contains("unknown scenario `nonsense`"));
}

#[test]
fn guest_output_goes_through_shared_memory_not_exits() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let run = GuestVm::new(GuestVmConfig::new("hello hello hello"))
        .unwrap()
        .run(Duration::from_secs(30))
        .unwrap();
    run.expect_success().unwrap();
    assert_eq!(run.console.matches("hello from CPL3").count(), 3);
    // ~300 bytes of output, yet the only exit to user space is the final write to the exit port.
    let exits = &run.stats.vcpus[0].user_exits;
    assert_eq!(run.stats.user_exits(), 1, "{exits:?}");
    assert_eq!(exits.io, 1, "{exits:?}");
}

#[test]
fn marks_delimit_windows_exactly() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let run = GuestVm::new(GuestVmConfig::new("marks"))
        .unwrap()
        .run(Duration::from_secs(30))
        .unwrap();
    run.expect_success().unwrap();
    assert_eq!(
        run.marks.iter().map(|(m, _)| *m).collect::<Vec<_>>(),
        [1, 2]
    );
    // Nothing happens between two consecutive marks: an empty window.
    let window = run.window(1, 2).unwrap();
    assert_eq!(window.user_exits(), 0, "{:?}", window.vcpus[0].user_exits);
}
