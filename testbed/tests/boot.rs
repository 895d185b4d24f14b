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
