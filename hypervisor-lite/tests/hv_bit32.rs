//! The enlightenments from a 32-bit protected-mode guest on real KVM: CPUID detection, the hypercall page called
//! with the 32-bit convention (EDX:EAX control, EBX:ECX input GPA or fast argument, EDI:ESI output GPA, result in
//! EDX:EAX), HvPostMessage by GPA to a host handler, fast HvSignalEvent through the doorbell ioeventfd and through a
//! doorbell exit, slow HvSignalEvent, SynIC message and event interrupts taken by the guest's IDT, hostile inputs
//! answered with the TLFS status codes, and the exact user exits all of that costs. A second guest calls the same
//! page from 64-bit and from compatibility-mode code of one long-mode guest: the convention follows CS.L per call.

mod hv_support;

use std::sync::{Arc, Mutex, Weak};

use hv_support::{build_in, result, run_ok};
use hypervisor_lite::hv::abi::HypercallResult;
use hypervisor_lite::hv::cpuid::{
    FEATURE_EAX_HYPERCALL_MSRS, FEATURE_EAX_SYNIC, FEATURE_EAX_VP_INDEX, FEATURE_EBX_POST_MESSAGES,
    FEATURE_EBX_SIGNAL_EVENTS, INTERFACE_SIGNATURE, LEAF_LIMITS, VENDOR_SIGNATURE,
};
use hypervisor_lite::hv::hypercall::HvStatus;
use hypervisor_lite::hv::synic::Delivery;
use hypervisor_lite::hv::HvPartition;
use hypervisor_lite::testing::kvm_or_skip;
use hypervisor_lite::{BootMode, UserExits};

/// Guest layout (tests/guests/hv_bit32.S).
const HCPAGE: u64 = 0x31_0000;
const SIMP: u64 = 0x31_1000;
/// The sentinels the guest loads into EBP, EDI, ESI before the calls that do not take them as inputs.
const KEEP_EBP: u64 = 0xB0B0_B0B0;
const KEEP_EDI: u64 = 0x5EED_0001;
const KEEP_ESI: u64 = 0x5EED_0002;

/// What the connection-1 handler saw: (vp, message type, payload, where its reply went).
type PostLog = Arc<Mutex<Vec<(u32, u32, Vec<u8>, Delivery)>>>;

fn status(word: u64) -> HypercallResult {
    HypercallResult::from_u64(word)
}

#[test]
fn bit32_guest_detects_enables_posts_signals_and_takes_synic_interrupts() {
    if !kvm_or_skip() {
        return;
    }
    let (mut partition, hv) = build_in("hv_bit32", BootMode::Protected32);
    let posted: PostLog = Arc::default();
    let weak: Weak<HvPartition> = Arc::downgrade(&hv);
    let log = posted.clone();
    hv.register_post_message(
        1,
        Arc::new(move |vp, ty, payload: &[u8]| {
            let hv = weak.upgrade().expect("enlightenments alive");
            let reply = hv.post_message(0, 2, 0x32, b"pong32").expect("post reply");
            hv.signal_event(0, 3, 5).expect("signal");
            log.lock().unwrap().push((vp, ty, payload.to_vec(), reply));
            HvStatus::SUCCESS
        }),
    )
    .unwrap();
    let events = hv.register_event(7).unwrap();
    let before = partition.stats();
    run_ok(&mut partition);
    let exits = partition.stats().delta(&before).vcpus[0].user_exits;
    let ram = partition.ram();
    let lo = |i: u64| result(ram, i) as u32;
    let hi = |i: u64| (result(ram, i) >> 32) as u32;

    // Detection through CPUID at CPL0 in protected mode.
    assert_eq!(lo(0), LEAF_LIMITS, "max hypervisor leaf");
    assert_eq!(
        [hi(0), lo(1), hi(1)],
        VENDOR_SIGNATURE,
        "\"Microsoft Hv\" in EBX:ECX:EDX"
    );
    assert_eq!(lo(2), INTERFACE_SIGNATURE, "\"Hv#1\"");
    assert_ne!(hi(2) & (1 << 31), 0, "leaf 1 ECX hypervisor bit");
    let needed = FEATURE_EAX_SYNIC | FEATURE_EAX_HYPERCALL_MSRS | FEATURE_EAX_VP_INDEX;
    assert_eq!(lo(3) & needed, needed, "features EAX {:#x}", lo(3));
    let needed = FEATURE_EBX_POST_MESSAGES | FEATURE_EBX_SIGNAL_EVENTS;
    assert_eq!(hi(3) & needed, needed, "features EBX {:#x}", hi(3));
    assert_eq!(result(ram, 4), HCPAGE | 1, "HYPERCALL reads back enabled");
    assert_eq!(result(ram, 5), 1, "SVERSION");
    assert!(hv.hypercall_page_enabled());

    // HvPostMessage: result 0 in EDX:EAX, payload at the handler, EBP/EDI/ESI/EBX preserved by the page.
    assert_eq!(result(ram, 6), 0, "HvPostMessage result EDX:EAX");
    assert_eq!(
        *posted.lock().unwrap(),
        vec![(0, 1, b"ping".to_vec(), Delivery::Delivered)]
    );
    assert_eq!(
        (result(ram, 7), result(ram, 8)),
        (KEEP_EBP | KEEP_EDI << 32, KEEP_ESI),
        "EBP, EDI, ESI and EBX (0) survive the call"
    );

    // The reply message in SIMP slot 2 and the event flag in SIEFP SINT3, both interrupts taken by the IDT.
    assert_eq!((lo(9), hi(9)), (1, 1), "message and event interrupts");
    assert_eq!(result(ram, 10), 0x32 | (6 << 32), "type 0x32, size 6");
    assert_eq!(result(ram, 11).to_le_bytes()[..6], *b"pong32");
    assert_eq!(result(ram, 12), 1 << 5, "event flag 5 of SINT3");
    assert_eq!(ram.read_u32(SIMP + 2 * 256).unwrap(), 0x32);

    // HvSignalEvent: fast through the ioeventfd, fast to an unregistered id through the doorbell exit (status
    // via ECX), slow by GPA. The fast and slow signals of connection 7 both reached its event fd.
    assert_eq!(result(ram, 13), 0, "fast HvSignalEvent(7)");
    assert_eq!(
        status(result(ram, 14)),
        HypercallResult::simple(HvStatus::INVALID_CONNECTION_ID),
        "fast HvSignalEvent(8), EDX = 0"
    );
    assert_eq!(result(ram, 20), 0, "slow HvSignalEvent(7)");
    assert_eq!(events.read().unwrap(), 2);

    // Hostile calls: full 64-bit results, reps completed 0.
    let hostile = [
        (
            15,
            HvStatus::INVALID_PARAMETER,
            "input GPA 4 GiB + x (EBX = 1)",
        ),
        (16, HvStatus::INVALID_PARAMETER, "input GPA above RAM"),
        (17, HvStatus::INVALID_ALIGNMENT, "misaligned input GPA"),
        (18, HvStatus::INVALID_HYPERCALL_INPUT, "rep count (EDX = 1)"),
        (
            19,
            HvStatus::INVALID_PORT_ID,
            "fast signal with flag 1 (EBX = 1)",
        ),
    ];
    for (word, want, what) in hostile {
        assert_eq!(result(ram, word), u64::from(want.0), "{what}");
    }
    assert_eq!(result(ram, 21), 1 | KEEP_EBP << 32, "EBX and EBP kept");
    assert_eq!(
        posted.lock().unwrap().len(),
        1,
        "no hostile post reached it"
    );

    // Exit accounting: 7 WRMSR, 2 RDMSR, 8 hypercall-port and doorbell exits + the exit port; the fast signal
    // to connection 7 and every LAPIC access stayed in KVM.
    let stats = hv.stats();
    assert_eq!(stats.hypercall_exits, 7, "post, 5 hostile, slow signal");
    assert_eq!(stats.doorbell_exits, 1, "only the unregistered connection");
    assert_eq!(stats.guest_messages, 1);
    assert_eq!(stats.guest_signals, 1, "the slow signal");
    assert_eq!(stats.interrupts, 2);
    assert_eq!(
        exits,
        UserExits {
            io: 9,
            msr_read: 2,
            msr_write: 7,
            ..Default::default()
        }
    );
}

#[test]
fn bit32_compatibility_mode_calls_use_the_32_bit_convention() {
    if !kvm_or_skip() {
        return;
    }
    // EFER.LMA stays 1 throughout: only CS.L tells the two conventions apart, per call.
    let (mut partition, hv) = build_in("hv_bit32_compat", BootMode::LongMode64);
    let posted: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let log = posted.clone();
    hv.register_post_message(
        1,
        Arc::new(move |_, _, payload: &[u8]| {
            log.lock().unwrap().push(payload.to_vec());
            HvStatus::SUCCESS
        }),
    )
    .unwrap();
    let before = partition.stats();
    run_ok(&mut partition);
    let exits = partition.stats().delta(&before).vcpus[0].user_exits;
    let ram = partition.ram();
    assert_eq!(result(ram, 0), 0, "64-bit HvPostMessage (RAX)");
    assert_eq!(
        result(ram, 1),
        0,
        "compatibility-mode HvPostMessage (EDX:EAX)"
    );
    assert_eq!(
        result(ram, 2),
        u64::from(HvStatus::INVALID_PARAMETER.0),
        "EBX = 1 made the input GPA 4 GiB + x"
    );
    assert_eq!(result(ram, 3), 1, "EBX preserved");
    assert_eq!(*posted.lock().unwrap(), vec![b"ping".to_vec(); 2]);
    assert_eq!(hv.stats().hypercall_exits, 3);
    assert_eq!(
        exits,
        UserExits {
            io: 4,
            msr_write: 2,
            ..Default::default()
        }
    );
}
