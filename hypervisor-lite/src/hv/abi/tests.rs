//! Unit and property tests of the register ABI (no KVM).

use kvm_bindings::kvm_segment;
use proptest::prelude::*;

use super::*;
use crate::hv::hypercall::{dispatch, HypercallTarget, PostMessageInput, HVCALL_POST_MESSAGE};
use crate::memory::GuestRam;

/// Accepts everything that reaches it.
struct Accept;

impl HypercallTarget for Accept {
    fn post_message(&self, _: u32, _: u32, _: u32, payload: &[u8]) -> HvStatus {
        assert!(payload.len() <= 240);
        HvStatus::SUCCESS
    }
    fn signal_event(&self, _: u32, _: u32) -> HvStatus {
        HvStatus::SUCCESS
    }
}

fn sregs(efer: u64, cs_l: u8) -> kvm_sregs {
    kvm_sregs {
        efer,
        cs: kvm_segment {
            l: cs_l,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn mode_is_64_bit_only_with_lma_and_cs_l() {
    let lme = 1 << 8;
    assert_eq!(
        CallingConvention::of(&sregs(EFER_LMA | lme | 1, 1)),
        CallingConvention::Bits64
    );
    // Compatibility mode (a 32-bit code segment under a long-mode kernel) uses the 32-bit convention.
    assert_eq!(
        CallingConvention::of(&sregs(EFER_LMA | lme, 0)),
        CallingConvention::Bits32
    );
    assert_eq!(
        CallingConvention::of(&sregs(0, 0)),
        CallingConvention::Bits32
    );
    // LME without LMA (paging off) is not long mode; CS.L alone means nothing outside long mode.
    assert_eq!(
        CallingConvention::of(&sregs(lme, 1)),
        CallingConvention::Bits32
    );
}

#[test]
fn bits32_reads_register_pairs_at_the_trap() {
    let regs = kvm_regs {
        rax: 0xDEAD_BEEF_0001_005C, // upper halves are not visible to 32-bit code: ignored
        rbp: 0x1111_1111_0000_0003,
        rcx: 0x2222_2222_0031_3000,
        rbx: 0x0000_0000_0000_0001,
        rsi: 0x3333_3333_0000_8008,
        rdi: 0x4444_4444_0000_0002,
        rdx: 0x4850, // the port number, not part of the call
        ..Default::default()
    };
    assert_eq!(
        CallingConvention::Bits32.decode_trap(&regs),
        HypercallRegs {
            control: 0x0000_0003_0001_005C,
            input: 0x0000_0001_0031_3000,
            output: 0x0000_0002_0000_8008,
        }
    );
    let regs64 = kvm_regs {
        rcx: 0x0000_0003_0001_005C,
        r9: 0x1_0031_3000,
        r8: 0x2_0000_8008,
        rdx: 0x4850,
        ..Default::default()
    };
    assert_eq!(
        CallingConvention::Bits64.decode_trap(&regs64),
        CallingConvention::Bits32.decode_trap(&regs)
    );
}

#[test]
fn results_land_in_rax_or_edx_eax() {
    let result = HypercallResult {
        status: HvStatus::INVALID_PARAMETER,
        reps_completed: 0x123,
    };
    assert_eq!(result.to_u64(), 0x0000_0123_0000_0005);
    let mut regs = kvm_regs {
        rax: u64::MAX,
        rdx: u64::MAX,
        ..Default::default()
    };
    CallingConvention::Bits32.complete_trap(&mut regs, result);
    assert_eq!((regs.rdx, regs.rax), (0x123, 5), "EDX = reps, EAX = status");
    let mut regs = kvm_regs::default();
    CallingConvention::Bits64.complete_trap(&mut regs, result);
    assert_eq!((regs.rax, regs.rdx), (0x0000_0123_0000_0005, 0));

    let mut regs = kvm_regs {
        rdx: 0x4854,
        ..Default::default()
    };
    CallingConvention::Bits32.complete_doorbell(&mut regs, HvStatus::INVALID_CONNECTION_ID);
    assert_eq!((regs.rdx, regs.rcx, regs.rax), (0, 0x12, 0x12));
    let mut regs = kvm_regs::default();
    CallingConvention::Bits64.complete_doorbell(&mut regs, HvStatus::INVALID_CONNECTION_ID);
    assert_eq!((regs.r11, regs.rax), (0x12, 0x12));
    assert_eq!(
        HypercallResult::from(HvStatus::SUCCESS),
        HypercallResult::simple(HvStatus::SUCCESS)
    );
}

proptest! {
    /// The two conventions carry the same 64-bit values: a call encoded into 32-bit registers (with garbage in
    /// the upper halves) decodes to what the same call encoded into 64-bit registers decodes to.
    #[test]
    fn conventions_agree(control: u64, input: u64, output: u64, junk: [u32; 6]) {
        let hi = |i: usize| u64::from(junk[i]) << 32;
        let r32 = kvm_regs {
            rax: hi(0) | (control & 0xFFFF_FFFF),
            rbp: hi(1) | (control >> 32),
            rcx: hi(2) | (input & 0xFFFF_FFFF),
            rbx: hi(3) | (input >> 32),
            rsi: hi(4) | (output & 0xFFFF_FFFF),
            rdi: hi(5) | (output >> 32),
            ..Default::default()
        };
        let r64 = kvm_regs { rcx: control, r9: input, r8: output, ..Default::default() };
        let want = HypercallRegs { control, input, output };
        prop_assert_eq!(CallingConvention::Bits32.decode_trap(&r32), want);
        prop_assert_eq!(CallingConvention::Bits64.decode_trap(&r64), want);
    }

    /// The result round-trips through EDX:EAX and RAX, reps completed is cut to 12 bits, the reserved bits stay 0.
    #[test]
    fn result_encoding(status: u16, reps: u16, junk: u64) {
        let result = HypercallResult { status: HvStatus(status), reps_completed: reps };
        let v = result.to_u64();
        prop_assert_eq!(v & !0x0000_0FFF_0000_FFFF, 0);
        prop_assert_eq!(HypercallResult::from_u64(v).reps_completed, reps & 0xFFF);
        let mut r32 = kvm_regs { rax: junk, rdx: junk, ..Default::default() };
        CallingConvention::Bits32.complete_trap(&mut r32, result);
        prop_assert!(r32.rax <= 0xFFFF_FFFF && r32.rdx <= 0xFFFF_FFFF);
        prop_assert_eq!((r32.rdx << 32) | r32.rax, v);
        let mut r64 = kvm_regs::default();
        CallingConvention::Bits64.complete_trap(&mut r64, result);
        prop_assert_eq!(r64.rax, v);
    }
}

proptest! {
    /// The whole 32-bit path — decode at the trap, dispatch, write back — is total over arbitrary registers: a
    /// defined status in EAX, EDX = 0 (no rep calls yet), every other register untouched.
    #[test]
    fn bits32_path_is_total(
        eax in prop_oneof![any::<u64>(), Just(u64::from(HVCALL_POST_MESSAGE)), Just(0x1005D)],
        ebp in prop_oneof![any::<u64>(), Just(0u64)],
        ecx in prop_oneof![any::<u64>(), Just(0x4000u64), 0x3FF0u64..0x4010],
        ebx in prop_oneof![any::<u64>(), Just(0u64), Just(1u64)],
        esi: u64,
        edi: u64,
    ) {
        let ram = GuestRam::new(1 << 20).unwrap();
        let block = PostMessageInput {
            connection_id: 1,
            reserved: 0,
            message_type: 1,
            payload_size: 4,
            payload: [0x5A; 240],
        };
        ram.write_obj(0x4000, &block).unwrap();
        let before = kvm_regs { rax: eax, rbp: ebp, rcx: ecx, rbx: ebx, rsi: esi, rdi: edi, rdx: 0x4850, ..Default::default() };
        let call = CallingConvention::Bits32.decode_trap(&before);
        let status = dispatch(&ram, 0, call, &Accept);
        prop_assert!([0u16, 2, 3, 4, 5, 0x11, 0x12].contains(&status.0), "{status:?}");
        let mut after = before;
        CallingConvention::Bits32.complete_trap(&mut after, HypercallResult::simple(status));
        prop_assert_eq!((after.rdx, after.rax), (0, u64::from(status.0)));
        prop_assert_eq!(
            (after.rbx, after.rcx, after.rsi, after.rdi, after.rbp),
            (before.rbx, before.rcx, before.rsi, before.rdi, before.rbp)
        );
    }
}
