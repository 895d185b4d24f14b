//! Unit tests of the hypercall page and dispatch (no KVM).

use std::sync::Mutex;

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Post {
        vp: u32,
        conn: u32,
        ty: u32,
        payload: Vec<u8>,
    },
    Signal {
        vp: u32,
        conn: u32,
    },
}

/// Records calls; connection 7 exists, every other id is unknown.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
}

impl HypercallTarget for Recorder {
    fn post_message(&self, vp: u32, conn: u32, ty: u32, payload: &[u8]) -> HvStatus {
        self.calls.lock().unwrap().push(Call::Post {
            vp,
            conn,
            ty,
            payload: payload.to_vec(),
        });
        if conn == 7 {
            HvStatus::SUCCESS
        } else {
            HvStatus::INVALID_CONNECTION_ID
        }
    }
    fn signal_event(&self, vp: u32, conn: u32) -> HvStatus {
        self.calls.lock().unwrap().push(Call::Signal { vp, conn });
        if conn == 7 {
            HvStatus::SUCCESS
        } else {
            HvStatus::INVALID_CONNECTION_ID
        }
    }
}

const POST: u64 = HVCALL_POST_MESSAGE as u64;
const SIGNAL: u64 = HVCALL_SIGNAL_EVENT as u64;

fn ram() -> GuestRam {
    GuestRam::new(1 << 20).unwrap()
}

fn write_post(ram: &GuestRam, gpa: u64, conn: u32, ty: u32, size: u32, fill: u8) {
    let input = PostMessageInput {
        connection_id: conn,
        reserved: 0,
        message_type: ty,
        payload_size: size,
        payload: [fill; HV_MESSAGE_PAYLOAD_SIZE],
    };
    ram.write_obj(gpa, &input).unwrap();
}

fn regs(control: u64, input: u64) -> HypercallRegs {
    HypercallRegs {
        control,
        input,
        output: 0,
    }
}

#[test]
fn page_code_matches_the_assembled_reference() {
    // `as` of the sequence documented in `hypercall_page` (the mode test and the 64-bit body as `.code64`, the
    // 32-bit body as `.code32`), ports 0x4854 (doorbell) and 0x4850.
    let reference: [u8; 0x5D] = [
        0x50, 0x31, 0xc0, 0x48, 0x85, 0xc0, 0x58, 0x75, 0x2b, 0x48, 0x81, 0xf9, 0x5d, 0x00, 0x01,
        0x00, 0x75, 0x18, 0x49, 0x89, 0xd1, 0x49, 0xc1, 0xe9, 0x20, 0x75, 0x0f, 0x89, 0xd0, 0xba,
        0x54, 0x48, 0x00, 0x00, 0x45, 0x31, 0xdb, 0xef, 0x4c, 0x89, 0xd8, 0xc3, 0x49, 0x89, 0xd1,
        0xba, 0x50, 0x48, 0x00, 0x00, 0xee, 0xc3, 0x3d, 0x5d, 0x00, 0x01, 0x00, 0x75, 0x17, 0x85,
        0xd2, 0x75, 0x13, 0x85, 0xdb, 0x75, 0x0f, 0x89, 0xc8, 0x31, 0xc9, 0xba, 0x54, 0x48, 0x00,
        0x00, 0xef, 0x89, 0xc8, 0x31, 0xd2, 0xc3, 0x55, 0x89, 0xd5, 0xba, 0x50, 0x48, 0x00, 0x00,
        0xee, 0x5d, 0xc3,
    ];
    let page = hypercall_page(DEFAULT_PORTS);
    assert_eq!(&page[..reference.len()], &reference);
    assert!(page[reference.len()..].iter().all(|&b| b == 0xCC));
    assert_eq!(page[PAGE_SLOW_PATH_OFFSET], 0x49, "mov r9, rdx");
    assert_eq!(page[PAGE_BITS32_OFFSET], 0x3D, "cmp eax, imm32");
    assert_eq!(page[PAGE_SLOW32_PATH_OFFSET], 0x55, "push ebp");
    // The branch targets are the documented offsets (rel8 from the end of each jump).
    let target = |at: usize| at + 2 + usize::from(page[at + 1]);
    assert_eq!(target(0x07), PAGE_BITS32_OFFSET);
    assert_eq!(target(0x10), PAGE_SLOW_PATH_OFFSET);
    assert_eq!(target(0x19), PAGE_SLOW_PATH_OFFSET);
    for at in [0x39, 0x3D, 0x41] {
        assert_eq!(target(at), PAGE_SLOW32_PATH_OFFSET);
    }
    let other = hypercall_page(HypercallPorts {
        hypercall: 0x1234,
        doorbell: 0xABCD,
    });
    for at in [0x1E, 0x48] {
        assert_eq!(&other[at..at + 2], &[0xCD, 0xAB]);
    }
    for at in [0x2E, 0x56] {
        assert_eq!(&other[at..at + 2], &[0x34, 0x12]);
    }
}

#[test]
fn control_word_fields() {
    let c = HypercallControl(0x0FFF_0FFF_07FE_005C | CONTROL_FAST);
    assert_eq!(c.code(), 0x5C);
    assert!(c.fast());
    assert_eq!(c.variable_header_size(), 0x3FF);
    assert_eq!(c.rep_count(), 0xFFF);
    assert_eq!(c.rep_start(), 0xFFF);
    assert!(!c.has_reserved_bits());
    assert!(HypercallControl(1 << 31).has_reserved_bits());
    assert!(HypercallControl(1 << 27).has_reserved_bits());
    assert!(HypercallControl(1 << 44).has_reserved_bits());
    assert!(HypercallControl(1 << 63).has_reserved_bits());
    assert_eq!(FAST_SIGNAL_EVENT_CONTROL, 0x1005D);
}

#[test]
fn post_message_reaches_the_target_with_exact_payload() {
    let ram = ram();
    let t = Recorder::default();
    write_post(&ram, 0x2000, 7, 1, 5, 0xAB);
    assert_eq!(dispatch(&ram, 3, regs(POST, 0x2000), &t), HvStatus::SUCCESS);
    write_post(&ram, 0x2F00, 9, 0x7FFF_FFFF, 240, 0x11);
    assert_eq!(
        dispatch(&ram, 0, regs(POST, 0x2F00), &t),
        HvStatus::INVALID_CONNECTION_ID
    );
    let calls = t.calls.lock().unwrap();
    assert_eq!(
        calls[0],
        Call::Post {
            vp: 3,
            conn: 7,
            ty: 1,
            payload: vec![0xAB; 5]
        }
    );
    assert_eq!(
        calls[1],
        Call::Post {
            vp: 0,
            conn: 9,
            ty: 0x7FFF_FFFF,
            payload: vec![0x11; 240]
        }
    );
}

#[test]
fn bad_post_message_inputs_are_rejected_without_calling_the_target() {
    let ram = ram();
    let t = Recorder::default();
    write_post(&ram, 0x2000, 7, 1, 241, 0);
    assert_eq!(
        dispatch(&ram, 0, regs(POST, 0x2000), &t),
        HvStatus::INVALID_PARAMETER,
        "size 241"
    );
    write_post(&ram, 0x2000, 7, 0, 4, 0);
    assert_eq!(
        dispatch(&ram, 0, regs(POST, 0x2000), &t),
        HvStatus::INVALID_PARAMETER,
        "type 0"
    );
    write_post(&ram, 0x2000, 7, 0x8000_0001, 4, 0);
    assert_eq!(
        dispatch(&ram, 0, regs(POST, 0x2000), &t),
        HvStatus::INVALID_PARAMETER,
        "hypervisor type"
    );
    write_post(&ram, 0x2000, 7, 1, 4, 0);
    assert_eq!(
        dispatch(&ram, 0, regs(POST, 0x2004), &t),
        HvStatus::INVALID_ALIGNMENT,
        "misaligned"
    );
    assert_eq!(
        dispatch(&ram, 0, regs(POST, 0x2F08), &t),
        HvStatus::INVALID_ALIGNMENT,
        "crosses a page"
    );
    assert_eq!(
        dispatch(&ram, 0, regs(POST, 1 << 20), &t),
        HvStatus::INVALID_PARAMETER,
        "beyond RAM"
    );
    assert_eq!(
        dispatch(&ram, 0, regs(POST, 0xFEE0_0000), &t),
        HvStatus::INVALID_PARAMETER,
        "MMIO"
    );
    assert_eq!(
        dispatch(&ram, 0, regs(POST | CONTROL_FAST, 0x2000), &t),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    assert_eq!(
        dispatch(&ram, 0, regs(POST | (1 << 32), 0x2000), &t),
        HvStatus::INVALID_HYPERCALL_INPUT,
        "rep"
    );
    assert_eq!(
        dispatch(&ram, 0, regs(POST | (1 << 17), 0x2000), &t),
        HvStatus::INVALID_HYPERCALL_INPUT,
        "varhdr"
    );
    assert_eq!(
        dispatch(&ram, 0, regs(POST | (1 << 31), 0x2000), &t),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    assert!(t.calls.lock().unwrap().is_empty());
}

#[test]
fn signal_event_fast_and_slow() {
    let ram = ram();
    let t = Recorder::default();
    assert_eq!(
        dispatch(&ram, 1, regs(SIGNAL | CONTROL_FAST, 7), &t),
        HvStatus::SUCCESS
    );
    ram.write_u64(0x3000, 7).unwrap();
    assert_eq!(
        dispatch(&ram, 2, regs(SIGNAL, 0x3000), &t),
        HvStatus::SUCCESS
    );
    ram.write_u64(0x3008, 8).unwrap();
    assert_eq!(
        dispatch(&ram, 2, regs(SIGNAL, 0x3008), &t),
        HvStatus::INVALID_CONNECTION_ID
    );
    assert_eq!(
        *t.calls.lock().unwrap(),
        vec![
            Call::Signal { vp: 1, conn: 7 },
            Call::Signal { vp: 2, conn: 7 },
            Call::Signal { vp: 2, conn: 8 }
        ]
    );
}

#[test]
fn bad_signal_event_inputs_are_rejected() {
    let ram = ram();
    let t = Recorder::default();
    let fast = SIGNAL | CONTROL_FAST;
    assert_eq!(
        dispatch(&ram, 0, regs(fast, 7 | (1 << 32)), &t),
        HvStatus::INVALID_PORT_ID,
        "flag number"
    );
    assert_eq!(
        dispatch(&ram, 0, regs(fast, 7 | (1 << 48)), &t),
        HvStatus::INVALID_HYPERCALL_INPUT,
        "reserved"
    );
    assert_eq!(
        dispatch(&ram, 0, regs(fast, 0x0100_0007), &t),
        HvStatus::INVALID_HYPERCALL_INPUT,
        "conn bits"
    );
    assert_eq!(
        dispatch(&ram, 0, regs(fast | (3 << 32), 7), &t),
        HvStatus::INVALID_HYPERCALL_INPUT,
        "rep"
    );
    assert_eq!(
        dispatch(&ram, 0, regs(SIGNAL, 0x3004), &t),
        HvStatus::INVALID_ALIGNMENT
    );
    assert_eq!(
        dispatch(&ram, 0, regs(SIGNAL, 1 << 20), &t),
        HvStatus::INVALID_PARAMETER
    );
    assert_eq!(
        dispatch(&ram, 0, regs(SIGNAL, u64::MAX - 7), &t),
        HvStatus::INVALID_PARAMETER
    );
    assert!(t.calls.lock().unwrap().is_empty());
}

#[test]
fn unknown_codes_are_invalid_hypercall_code() {
    let ram = ram();
    let t = Recorder::default();
    for code in [0u64, 1, 0x5B, 0x5E, 0x8001, 0xFFFF, 0x5C5D] {
        assert_eq!(
            dispatch(&ram, 0, regs(code, 0), &t),
            HvStatus::INVALID_HYPERCALL_CODE,
            "{code:#x}"
        );
    }
    assert_eq!(HvStatus::INVALID_HYPERCALL_CODE.to_rax(), 2);
}

proptest! {
    /// Whatever the guest puts in the registers and the input page, dispatch returns a defined status and only
    /// calls the target with validated arguments.
    #[test]
    fn dispatch_is_total_and_validates(
        control in prop_oneof![any::<u64>(), (0u64..0x60).prop_map(|c| c | 0x50), Just(POST), Just(SIGNAL | CONTROL_FAST)],
        input in prop_oneof![any::<u64>(), (0u64..0x2000).prop_map(|o| 0x4000 + o), Just(0x4000u64)],
        conn in prop_oneof![Just(7u32), any::<u32>()],
        ty in any::<u32>(),
        size in prop_oneof![0u32..=240, any::<u32>()],
    ) {
        let ram = ram();
        write_post(&ram, 0x4000, conn, ty, size, 0x5A);
        let t = Recorder::default();
        let status = dispatch(&ram, 0, regs(control, input), &t);
        let allowed = [0u16, 2, 3, 4, 5, 0x11, 0x12];
        prop_assert!(allowed.contains(&status.0), "status {status:?}");
        for call in t.calls.lock().unwrap().iter() {
            match call {
                Call::Post { payload, ty, .. } => {
                    prop_assert!(payload.len() <= 240);
                    prop_assert!(*ty != 0 && *ty < 0x8000_0000);
                    prop_assert!(payload.iter().all(|&b| b == 0x5A));
                    prop_assert_eq!(payload.len() as u32, size);
                }
                Call::Signal { conn, .. } => prop_assert_eq!(conn & !CONNECTION_ID_MASK, 0),
            }
        }
        if HypercallControl(control).code() != HVCALL_POST_MESSAGE && HypercallControl(control).code() != HVCALL_SIGNAL_EVENT {
            prop_assert_eq!(status, HvStatus::INVALID_HYPERCALL_CODE);
        }
    }
}
