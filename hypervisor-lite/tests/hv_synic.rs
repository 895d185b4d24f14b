//! The enlightenments end to end on real KVM: hypercall page, HvPostMessage to a registered handler, SynIC
//! message and event delivery on the programmed vectors, EOM redelivery of a queued message, and HvSignalEvent
//! (fast through the doorbell ioeventfd, slow through the hypercall port) on the same event fd.

mod hv_support;

use std::sync::{Arc, Mutex, Weak};

use hv_support::{build, result, run_ok};
use hypervisor_lite::hv::hypercall::HvStatus;
use hypervisor_lite::hv::synic::Delivery;
use hypervisor_lite::hv::HvPartition;
use hypervisor_lite::testing::kvm_or_skip;

const SIMP: u64 = 0x31_1000;

/// What the connection-1 handler saw (vp, message type, payload) and where its two posts went.
type PostLog = Arc<Mutex<Vec<(u32, u32, Vec<u8>, Vec<Delivery>)>>>;
const MSG_COUNT: u64 = 0x30_0800;
const EVT_COUNT: u64 = 0x30_0808;

#[test]
fn post_message_synic_delivery_eom_and_signals() {
    if !kvm_or_skip() {
        return;
    }
    let (mut partition, hv) = build("hv_synic");
    let posted: PostLog = Arc::default();
    let weak: Weak<HvPartition> = Arc::downgrade(&hv);
    let log = posted.clone();
    hv.register_post_message(
        1,
        Arc::new(move |vp, ty, payload: &[u8]| {
            let hv = weak.upgrade().expect("enlightenments alive");
            let first = hv.post_message(0, 2, 0x11, b"first").expect("post first");
            let second = hv.post_message(0, 2, 0x12, b"second").expect("post second");
            hv.signal_event(0, 3, 5).expect("signal");
            log.lock()
                .unwrap()
                .push((vp, ty, payload.to_vec(), vec![first, second]));
            HvStatus::SUCCESS
        }),
    )
    .unwrap();
    let events = hv.register_event(7).unwrap();
    run_ok(&mut partition);
    let ram = partition.ram();

    assert_eq!(result(ram, 0), 0x31_0001, "HYPERCALL reads back enabled");
    assert_eq!(result(ram, 13), 0, "VP_INDEX");
    assert_eq!(result(ram, 14), 1, "SVERSION");
    assert_eq!(result(ram, 1), 0, "HvPostMessage status");
    assert_eq!(
        *posted.lock().unwrap(),
        vec![(
            0,
            1,
            b"ping".to_vec(),
            vec![Delivery::Delivered, Delivery::Queued]
        )]
    );
    // First message: in slot 2, pending flag set because the second is queued behind it.
    assert_eq!(result(ram, 2), 1, "one message interrupt");
    assert_eq!(
        result(ram, 3),
        0x11 | (5 << 32) | (1 << 40),
        "type 0x11, size 5, pending"
    );
    assert_eq!(result(ram, 4).to_le_bytes()[..5], *b"first");
    assert_eq!(result(ram, 5), 1, "one event interrupt on SINT3's vector");
    assert_eq!(result(ram, 6), 1 << 5, "event flag 5 in SINT3's bitmap");
    assert_eq!(result(ram, 7), 1, "second message not delivered before EOM");
    // After the guest freed the slot and wrote EOM.
    assert_eq!(
        result(ram, 8),
        2,
        "EOM delivered the second message with an interrupt"
    );
    assert_eq!(
        result(ram, 9),
        0x12 | (6 << 32),
        "type 0x12, size 6, nothing pending"
    );
    assert_eq!(result(ram, 10).to_le_bytes()[..6], *b"second");
    assert_eq!(hv.queued_messages(0, 2), 0);
    // HvSignalEvent fast and slow both reached the event fd; only the slow one exited to user space.
    assert_eq!(
        (result(ram, 11), result(ram, 12)),
        (0, 0),
        "signal statuses"
    );
    assert_eq!(events.read().unwrap(), 2);
    let stats = hv.stats();
    assert_eq!(
        stats.doorbell_exits, 0,
        "fast signal completed in the kernel"
    );
    assert_eq!(
        stats.guest_signals, 1,
        "only the slow signal was handled in user space"
    );
    assert_eq!(
        stats.hypercall_exits, 2,
        "HvPostMessage + slow HvSignalEvent"
    );
    assert_eq!(stats.interrupts, 3);
    assert_eq!(ram.read_u64(MSG_COUNT).unwrap(), 2);
    assert_eq!(ram.read_u64(EVT_COUNT).unwrap(), 1);
    assert_eq!(ram.read_u32(SIMP + 2 * 256).unwrap(), 0x12);
}
