//! A hostile guest against the enlightenments on real KVM: reserved SINT vectors, unknown and read-only MSRs, a
//! hypercall page outside RAM, hypercall inputs outside RAM / misaligned / crossing a page / oversized, unknown
//! connection ids and call codes, and a SIMP outside RAM. Every case gets Hyper-V's answer (#GP or a status) and
//! the host keeps running: the guest reaches its clean exit and a queued message survives the bad SIMP.

mod hv_support;

use std::sync::{Arc, Mutex, Weak};

use hv_support::{build, result, run_ok};
use hypervisor_lite::hv::hypercall::HvStatus;
use hypervisor_lite::hv::synic::Delivery;
use hypervisor_lite::hv::HvPartition;
use hypervisor_lite::testing::kvm_or_skip;

const GP_COUNT: u64 = 0x30_0810;

#[test]
fn bad_guest_input_gets_hyper_v_answers_and_the_host_survives() {
    if !kvm_or_skip() {
        return;
    }
    let (mut partition, hv) = build("hv_hostile");
    let deliveries: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let (weak, log): (Weak<HvPartition>, _) = (Arc::downgrade(&hv), deliveries.clone());
    hv.register_post_message(
        1,
        Arc::new(move |_, _, _: &[u8]| {
            let hv = weak.upgrade().expect("enlightenments alive");
            log.lock()
                .unwrap()
                .push(hv.post_message(0, 2, 0x21, b"late").expect("post"));
            HvStatus::SUCCESS
        }),
    )
    .unwrap();
    let _events = hv.register_event(7).unwrap();
    run_ok(&mut partition);
    let ram = partition.ram();

    assert_eq!(result(ram, 0), 1, "unmasked SINT with vector 5: #GP");
    assert_eq!(
        result(ram, 1),
        0x1_0000,
        "SINT2 unchanged by the faulting write"
    );
    assert_eq!(result(ram, 2), 2, "RDMSR of an unknown synthetic MSR: #GP");
    assert_eq!(result(ram, 3), 3, "WRMSR of VP_INDEX: #GP");
    assert_eq!(result(ram, 4), 4, "hypercall page outside RAM: #GP");
    assert_eq!(result(ram, 5), 0, "HYPERCALL stayed disabled");
    assert_eq!(
        result(ram, 6),
        5,
        "HvPostMessage input outside RAM: invalid parameter"
    );
    assert_eq!(result(ram, 7), 4, "misaligned input: invalid alignment");
    assert_eq!(
        result(ram, 8),
        4,
        "input crossing a page: invalid alignment"
    );
    assert_eq!(result(ram, 9), 5, "payload of 241 bytes: invalid parameter");
    assert_eq!(result(ram, 10), 0x12, "unknown connection id");
    assert_eq!(result(ram, 11), 2, "unknown hypercall code");
    assert_eq!(
        result(ram, 12),
        0x12,
        "fast signal to a connection without ioeventfd: doorbell exit, 0x12"
    );
    assert_eq!(
        result(ram, 13),
        0x11,
        "fast signal with a flag number: invalid port id"
    );
    assert_eq!(
        result(ram, 14),
        5,
        "slow signal input outside RAM: invalid parameter"
    );
    assert_eq!(result(ram, 15), 4, "SIMP outside RAM is accepted (no #GP)");
    assert_eq!(result(ram, 16), 0, "HvPostMessage accepted");
    assert_eq!(
        *deliveries.lock().unwrap(),
        vec![Delivery::Queued],
        "SIMP outside RAM: the message waits"
    );
    assert_eq!(
        result(ram, 17),
        1,
        "moving the SIMP into RAM delivered the queued message with its interrupt"
    );
    assert_eq!(
        result(ram, 18),
        0x21 | (4 << 32),
        "the queued message, intact"
    );
    assert_eq!(ram.read_u64(GP_COUNT).unwrap(), 4);
    assert_eq!(hv.queued_messages(0, 2), 0);
}
