//! The network rows' in-guest floor on real KVM: `net:dev=loopback` runs every network step
//! against servers played inside the guest over a loopback NIC — UDP round trips and flood, TCP
//! streams both ways with every byte checked — with no user exit and no interrupt in any step.

use testbed::{GuestVm, GuestVmConfig};

#[test]
fn loopback_floor_runs_every_net_step_without_an_exit_or_interrupt() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let tsc = testbed::bench::calibrate_tsc();
    let steps = "udp=500,udp-flood=2000,tcp-send=8,tcp-recv=8";
    let config = GuestVmConfig::new(format!("bench-tsc:{tsc} net:dev=loopback,{steps}"));
    let run = GuestVm::new(config)
        .expect("boot the guest")
        .run(std::time::Duration::from_secs(120))
        .expect("the guest run");
    run.expect_success().unwrap();
    assert_eq!(run.console_value("net-udp-roundtrips"), Some("500"));
    assert_eq!(run.console_value("net-udp-flood-sent"), Some("2000"));
    assert_eq!(run.console_value("net-peer-udp-sink"), Some("2000"));
    let bytes = (8u64 << 20).to_string();
    assert_eq!(run.console_value("net-tcp-sent"), Some(bytes.as_str()));
    assert_eq!(run.console_value("net-peer-tcp-sink"), Some(bytes.as_str()));
    assert_eq!(run.console_value("net-tcp-received"), Some(bytes.as_str()));
    // Both directions carry the same pattern stream, so the two ends' hashes agree.
    assert_eq!(
        run.console_value("net-tcp-sent-hash"),
        run.console_value("net-peer-tcp-sink-hash")
    );
    assert_eq!(
        run.console_value("net-tcp-sent-hash"),
        run.console_value("net-tcp-received-hash")
    );
    for k in 0..4u32 {
        let window = run.window(1000 + 2 * k, 1001 + 2 * k).expect("marks");
        assert_eq!(window.user_exits(), 0, "step {k}: {window:?}");
        assert_eq!(window.vcpu_sum("irq_injections"), 0, "step {k}");
    }
    let steps: Vec<&str> = run
        .console
        .lines()
        .filter(|l| l.starts_with("net-step="))
        .collect();
    println!("{}", steps.join("\n"));
    assert_eq!(steps.len(), 4, "{}", run.console);
    assert!(steps[1].contains("name=udp-flood"), "{steps:?}");
    // 2000 datagrams and an `end` or two, and the `done`s: each looped frame counted once.
    assert!(steps[1].contains(" rx=0 "), "{steps:?}");
}
