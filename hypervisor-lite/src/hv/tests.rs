//! Unit tests of the partition-level object with a fake platform (no KVM).

use std::sync::Mutex;

use super::hypercall::{
    PostMessageInput, FAST_SIGNAL_EVENT_CONTROL, HVCALL_POST_MESSAGE, HVCALL_SIGNAL_EVENT,
};
use super::msr::*;
use super::*;

#[derive(Default)]
struct FakePlatform {
    msis: Mutex<Vec<(u32, u8)>>,
    doorbells: Mutex<Vec<(u16, u32)>>,
}

impl HvPlatform for FakePlatform {
    fn signal_msi(&self, apic_id: u32, vector: u8) -> std::io::Result<()> {
        self.msis.lock().unwrap().push((apic_id, vector));
        Ok(())
    }
    fn register_doorbell(&self, port: u16, datamatch: u32) -> std::io::Result<EventFd> {
        self.doorbells.lock().unwrap().push((port, datamatch));
        new_event_fd()
    }
}

fn setup(vps: u32) -> (Arc<HvPartition>, Arc<FakePlatform>, GuestRam) {
    let ram = GuestRam::new(1 << 20).unwrap();
    let hv = HvPartition::new(HvConfig::new(vps));
    let platform = Arc::new(FakePlatform::default());
    hv.attach(ram.clone(), platform.clone()).unwrap();
    (hv, platform, ram)
}

fn enable_hypercalls(hv: &HvPartition) {
    hv.wrmsr(0, MSR_GUEST_OS_ID, 0x8100_0000_0000_0000).unwrap();
    hv.wrmsr(0, MSR_HYPERCALL, 0x1000 | HYPERCALL_ENABLE)
        .unwrap();
}

#[test]
fn msrs_are_partition_wide_or_per_vp_as_in_hyper_v() {
    let (hv, _, _) = setup(2);
    hv.wrmsr(1, MSR_GUEST_OS_ID, 0x1234).unwrap();
    assert_eq!(hv.rdmsr(0, MSR_GUEST_OS_ID), Ok(0x1234));
    assert_eq!(hv.rdmsr(0, MSR_VP_INDEX), Ok(0));
    assert_eq!(hv.rdmsr(1, MSR_VP_INDEX), Ok(1));
    assert_eq!(
        hv.wrmsr(1, MSR_VP_INDEX, 0),
        Err(MsrError::ReadOnly(MSR_VP_INDEX))
    );
    hv.wrmsr(1, MSR_VP_ASSIST_PAGE, 0x7001).unwrap();
    assert_eq!(hv.rdmsr(1, MSR_VP_ASSIST_PAGE), Ok(0x7001));
    assert_eq!(hv.rdmsr(0, MSR_VP_ASSIST_PAGE), Ok(0));
    hv.wrmsr(0, MSR_SIMP, 0x9001).unwrap();
    assert_eq!(hv.rdmsr(0, MSR_SIMP), Ok(0x9001));
    assert_eq!(hv.rdmsr(1, MSR_SIMP), Ok(0));
    assert_eq!(hv.rdmsr(0, MSR_SVERSION), Ok(1));
    // The reference counter is partition-wide, read-only and counts up in 100 ns units.
    let t0 = hv.rdmsr(0, MSR_TIME_REF_COUNT).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    let t1 = hv.rdmsr(1, MSR_TIME_REF_COUNT).unwrap();
    assert!(t1 >= t0 + 20_000, "{t0} -> {t1}");
    assert!(hv.reference_time() >= t1);
    assert_eq!(
        hv.wrmsr(0, MSR_TIME_REF_COUNT, 0),
        Err(MsrError::ReadOnly(MSR_TIME_REF_COUNT))
    );
    assert_eq!(
        hv.rdmsr(0, 0x4000_0021),
        Err(MsrError::Unknown(0x4000_0021))
    );
    assert_eq!(
        hv.wrmsr(0, 0x4000_00FF, 1),
        Err(MsrError::Unknown(0x4000_00FF))
    );
    assert_eq!(hv.rdmsr(2, MSR_VP_INDEX), Err(MsrError::InvalidVp(2)));
}

#[test]
fn hypercalls_need_the_page_enabled() {
    let (hv, _, _) = setup(1);
    let regs = HypercallRegs {
        control: FAST_SIGNAL_EVENT_CONTROL,
        input: 1,
        output: 0,
    };
    assert_eq!(hv.hypercall(0, regs), HvStatus::INVALID_HYPERCALL_CODE);
    enable_hypercalls(&hv);
    assert!(hv.hypercall_page_enabled());
    assert_eq!(hv.rdmsr(0, MSR_HYPERCALL), Ok(0x1001));
    assert_eq!(hv.hypercall(0, regs), HvStatus::INVALID_CONNECTION_ID);
    assert_eq!(hv.stats().hypercall_exits, 2);
}

#[test]
fn post_message_handler_is_called_per_connection() {
    let (hv, _, ram) = setup(2);
    enable_hypercalls(&hv);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    hv.register_post_message(
        4,
        Arc::new(move |vp, ty, payload: &[u8]| {
            s.lock().unwrap().push((vp, ty, payload.to_vec()));
            HvStatus::INSUFFICIENT_BUFFERS
        }),
    )
    .unwrap();
    assert!(matches!(
        hv.register_post_message(4, Arc::new(|_, _, _| HvStatus::SUCCESS)),
        Err(HvError::ConnectionInUse(4))
    ));
    assert!(matches!(
        hv.register_post_message(0x0100_0000, Arc::new(|_, _, _| HvStatus::SUCCESS)),
        Err(HvError::InvalidConnectionId(_))
    ));
    let mut input = PostMessageInput {
        connection_id: 4,
        reserved: 0,
        message_type: 1,
        payload_size: 3,
        payload: [0; 240],
    };
    input.payload[..3].copy_from_slice(b"abc");
    ram.write_obj(0x2000, &input).unwrap();
    let regs = HypercallRegs {
        control: u64::from(HVCALL_POST_MESSAGE),
        input: 0x2000,
        output: 0,
    };
    assert_eq!(hv.hypercall(1, regs), HvStatus::INSUFFICIENT_BUFFERS);
    assert_eq!(*seen.lock().unwrap(), vec![(1, 1, b"abc".to_vec())]);
    input.connection_id = 1;
    ram.write_obj(0x2000, &input).unwrap();
    assert_eq!(hv.hypercall(1, regs), HvStatus::INVALID_CONNECTION_ID);
    assert!(hv.unregister_post_message(4));
    input.connection_id = 4;
    ram.write_obj(0x2000, &input).unwrap();
    assert_eq!(hv.hypercall(1, regs), HvStatus::INVALID_CONNECTION_ID);
}

#[test]
fn events_register_a_doorbell_and_slow_calls_signal_the_same_fd() {
    let (hv, platform, ram) = setup(1);
    enable_hypercalls(&hv);
    let fd = hv.register_event(0x2A).unwrap();
    assert_eq!(
        *platform.doorbells.lock().unwrap(),
        vec![(hypercall::DEFAULT_PORTS.doorbell, 0x2A)]
    );
    assert!(matches!(
        hv.register_event(0x2A),
        Err(HvError::ConnectionInUse(0x2A))
    ));
    ram.write_u64(0x3000, 0x2A).unwrap();
    let slow = HypercallRegs {
        control: u64::from(HVCALL_SIGNAL_EVENT),
        input: 0x3000,
        output: 0,
    };
    assert_eq!(hv.hypercall(0, slow), HvStatus::SUCCESS);
    let fast = HypercallRegs {
        control: FAST_SIGNAL_EVENT_CONTROL,
        input: 0x2A,
        output: 0,
    };
    assert_eq!(hv.hypercall(0, fast), HvStatus::SUCCESS);
    assert_eq!(fd.read().unwrap(), 2);
    assert_eq!(hv.doorbell(0, 0x2A), HvStatus::SUCCESS);
    assert_eq!(hv.doorbell(0, 0x2B), HvStatus::INVALID_CONNECTION_ID);
    assert_eq!(
        hv.doorbell(0, 0xFF00_002A),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    assert_eq!(fd.read().unwrap(), 1);
    let st = hv.stats();
    assert_eq!((st.doorbell_exits, st.guest_signals), (3, 3));
}

#[test]
fn nothing_touches_guest_state_before_attach() {
    let hv = HvPartition::new(HvConfig::new(1));
    assert!(matches!(hv.register_event(1), Err(HvError::NotAttached)));
    assert!(matches!(
        hv.post_message(0, 2, 1, b""),
        Err(HvError::NotAttached)
    ));
    assert_eq!(hv.wrmsr(0, MSR_SCONTROL, 1), Err(MsrError::NotAttached));
    assert_eq!(hv.rdmsr(0, MSR_SVERSION), Ok(1));
    let regs = HypercallRegs {
        control: FAST_SIGNAL_EVENT_CONTROL,
        input: 1,
        output: 0,
    };
    assert_eq!(hv.hypercall(0, regs), HvStatus::INVALID_HYPERCALL_CODE);
    let ram = GuestRam::new(1 << 20).unwrap();
    hv.attach(ram.clone(), Arc::new(FakePlatform::default()))
        .unwrap();
    assert!(matches!(
        hv.attach(ram, Arc::new(FakePlatform::default())),
        Err(HvError::NotAttached)
    ));
}

#[test]
fn host_posts_and_signals_inject_to_the_target_vp() {
    let (hv, platform, _) = setup(2);
    for (msr, value) in [
        (MSR_SIMP, 0x5001),
        (MSR_SIEFP, 0x6001),
        (MSR_SINT0 + 2, 0xF3),
        (MSR_SCONTROL, 1),
    ] {
        hv.wrmsr(1, msr, value).unwrap();
    }
    assert_eq!(hv.post_message(1, 2, 1, b"x").unwrap(), Delivery::Delivered);
    assert_eq!(hv.post_message(1, 2, 1, b"y").unwrap(), Delivery::Queued);
    assert_eq!(hv.queued_messages(1, 2), 1);
    assert_eq!(hv.signal_event(1, 2, 5).unwrap(), EventDelivery::Set);
    assert_eq!(*platform.msis.lock().unwrap(), vec![(1, 0xF3), (1, 0xF3)]);
    // VP 0 never enabled its SynIC: queued, no interrupt.
    assert_eq!(hv.post_message(0, 2, 1, b"z").unwrap(), Delivery::Queued);
    assert_eq!(hv.signal_event(0, 2, 5).unwrap(), EventDelivery::NotEnabled);
    assert!(matches!(
        hv.post_message(2, 2, 1, b""),
        Err(HvError::Synic(SynicError::InvalidVp(2)))
    ));
    // EOM after the guest frees the slot redelivers and injects.
    hv.ram()
        .unwrap()
        .store_u32(0x5000 + 2 * 256, 0, Ordering::SeqCst)
        .unwrap();
    hv.wrmsr(1, MSR_EOM, 0).unwrap();
    assert_eq!(platform.msis.lock().unwrap().len(), 3);
    assert_eq!(hv.stats().interrupts, 3);
}
