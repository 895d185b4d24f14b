//! Guest WRMSR/RDMSR sequences on the synthetic MSRs (`HvPartition::wrmsr`/`rdmsr`, the production
//! MSR-exit entry points) interleaved with host `post_message`/`signal_event` and guest writes to
//! the message and event pages, on 2 VPs with 16 pages of RAM and queues of 4.
//!
//! Input: steps `[op, vp, ...]`: WRMSR of an MSR chosen from every synthetic index, an unknown one or
//! any u32, with a value shaped for it (SIMP/SIEFP pointing into RAM, at its last page, past it or
//! anywhere; SINT vectors and mask bits); RDMSR of any index; a host post (SINT 0–16, type 0 or not,
//! payload up to 250 bytes); a host event signal (flags up to 2100); the guest freeing a message slot
//! or writing raw bytes; EOM. Checked: RDMSR after a successful WRMSR returns what the TLFS says, the
//! read-only and unknown MSRs fault, a delivered message is in its SIMP slot, queues stay bounded,
//! and every injected interrupt goes to an existing VP with a legal vector.
#![no_main]

use hypervisor_lite::hv::msr::*;
use hypervisor_lite::hv::synic::{Delivery, SynicError, SINT_MASKED, SLOT_SIZE};
use hypervisor_lite::hv::{HvError, HvPartition};
use hypervisor_lite_fuzz::{
    check_interrupts, gpa, partition, Input, QUEUE_DEPTH, RAM_BYTES, VP_COUNT,
};
use libfuzzer_sys::fuzz_target;

const MSRS: [u32; 10] = [
    MSR_GUEST_OS_ID,
    MSR_HYPERCALL,
    MSR_VP_INDEX,
    MSR_VP_ASSIST_PAGE,
    MSR_SCONTROL,
    MSR_SVERSION,
    MSR_SIEFP,
    MSR_SIMP,
    MSR_EOM,
    0x4000_0020,
];

fn msr(input: &mut Input<'_>) -> u32 {
    match input.u8() {
        s @ 0..=9 => MSRS[usize::from(s)],
        s @ 10..=25 => MSR_SINT0 + u32::from(s - 10),
        s @ 26..=200 => MSRS[usize::from(s) % MSRS.len()],
        _ => input.u32(),
    }
}

fn value(input: &mut Input<'_>, msr: u32) -> u64 {
    match msr {
        MSR_SIMP | MSR_SIEFP | MSR_HYPERCALL | MSR_VP_ASSIST_PAGE => {
            let flags = u64::from(input.u8() & 3);
            match input.u8() % 4 {
                0 => (gpa(input) & !0xFFF) | flags,
                1 => (RAM_BYTES - 4096) | flags,
                2 => (u64::from(input.u8() % 16) << 12) | flags,
                _ => input.u64(),
            }
        }
        m if (MSR_SINT0..MSR_SINT0 + 16).contains(&m) => {
            u64::from(input.u8()) | (u64::from(input.u8() & 7) << 16)
        }
        MSR_SCONTROL => u64::from(input.u8() & 3),
        _ => input.u64(),
    }
}

/// What RDMSR must return right after `wrmsr(vp, msr, value)` succeeded (`old`: the value before).
fn check_readback(hv: &HvPartition, vp: u32, msr: u32, value: u64, old: u64) {
    let read = hv.rdmsr(vp, msr).expect("RDMSR of an MSR just written");
    match msr {
        MSR_EOM => assert_eq!(read, 0),
        MSR_VP_ASSIST_PAGE => assert_eq!(read, value & !0xFFE),
        // Ignored while locked or before GUEST_OS_ID.
        MSR_HYPERCALL => assert!(
            read == value || read == old,
            "{read:#x} {value:#x} {old:#x}"
        ),
        _ => assert_eq!(read, value, "MSR {msr:#x}"),
    }
}

fn wrmsr(hv: &HvPartition, vp: u32, msr: u32, value: u64) {
    let old = hv.rdmsr(vp, msr);
    let result = hv.wrmsr(vp, msr, value);
    match (SyntheticMsr::from_index(msr), result.clone()) {
        _ if vp >= VP_COUNT => assert_eq!(result, Err(MsrError::InvalidVp(vp))),
        (None, r) => assert_eq!(r, Err(MsrError::Unknown(msr))),
        (Some(SyntheticMsr::VpIndex | SyntheticMsr::Sversion | SyntheticMsr::TimeRefCount), r) => {
            assert_eq!(r, Err(MsrError::ReadOnly(msr)))
        }
        (Some(_), Ok(())) => check_readback(hv, vp, msr, value, old.unwrap()),
        (Some(SyntheticMsr::Sint(_)), Err(e)) => {
            assert!(matches!(e, MsrError::ReservedVector { vector, .. } if vector < 16));
            assert_eq!(value & SINT_MASKED, 0);
            assert_eq!(hv.rdmsr(vp, msr), old, "a faulting write changed the MSR");
        }
        (Some(SyntheticMsr::Hypercall), Err(MsrError::HypercallPageNotRam(_))) => {
            assert_eq!(hv.rdmsr(vp, msr), old, "a faulting write changed the MSR");
        }
        (Some(m), Err(e)) => panic!("WRMSR {m:?} = {value:#x} faulted: {e}"),
    }
}

fn post(hv: &HvPartition, ram: &hypervisor_lite::GuestRam, vp: u32, input: &mut Input<'_>) {
    let sint = input.u8() % 17;
    let message_type = match input.u8() % 4 {
        0 => 0,
        1 => 1,
        _ => input.u32(),
    };
    let len = usize::from(input.u8() % 251);
    let payload = input.bytes(len);
    let result = hv.post_message(vp, sint, message_type, payload);
    match result {
        Ok(Delivery::Delivered) => {
            let simp = hv.rdmsr(vp, MSR_SIMP).unwrap() & !0xFFF;
            let slot = simp + u64::from(sint) * SLOT_SIZE;
            assert_eq!(
                ram.read_u32(slot).unwrap(),
                message_type,
                "delivered but not in the slot"
            );
        }
        Ok(Delivery::Queued) => assert!(hv.queued_messages(vp, sint) <= QUEUE_DEPTH),
        Err(HvError::Synic(SynicError::InvalidVp(v))) => assert!(v >= VP_COUNT),
        Err(HvError::Synic(SynicError::InvalidSint(s))) => assert!(s >= 16),
        Err(HvError::Synic(SynicError::PayloadTooLarge(n))) => assert!(n > 240),
        Err(HvError::Synic(SynicError::InvalidMessageType)) => assert_eq!(message_type, 0),
        Err(HvError::Synic(SynicError::QueueFull { depth, .. })) => {
            assert_eq!(depth, QUEUE_DEPTH);
            assert_eq!(hv.queued_messages(vp, sint), QUEUE_DEPTH);
        }
        Err(e) => panic!("post_message: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let (hv, platform, ram) = partition();
    let mut input = Input::new(data);
    while !input.is_empty() {
        let op = input.u8();
        let vp = u32::from(input.u8() % (VP_COUNT as u8 + 1));
        match op % 8 {
            0..=2 => {
                let msr = msr(&mut input);
                let value = value(&mut input, msr);
                wrmsr(&hv, vp, msr, value);
            }
            3 => {
                let msr = msr(&mut input);
                match hv.rdmsr(vp, msr) {
                    Ok(v) if msr == MSR_VP_INDEX => assert_eq!(v, u64::from(vp)),
                    Ok(v) if msr == MSR_SVERSION => assert_eq!(v, 1),
                    Ok(_) => assert!(SyntheticMsr::from_index(msr).is_some()),
                    Err(e) => assert!(
                        vp >= VP_COUNT || SyntheticMsr::from_index(msr).is_none(),
                        "{e}"
                    ),
                }
            }
            4 => post(&hv, &ram, vp, &mut input),
            5 => {
                let sint = input.u8() % 17;
                let flag = u32::from(input.u16() % 2100);
                let _ = hv.signal_event(vp, sint, flag);
            }
            6 => {
                // The guest frees a message slot (or scribbles anywhere in its RAM).
                let at = match input.u8() % 2 {
                    0 => {
                        (hv.rdmsr(vp, MSR_SIMP).unwrap_or(0) & !0xFFF)
                            + u64::from(input.u8() % 16) * SLOT_SIZE
                    }
                    _ => u64::from(input.u16()) % RAM_BYTES,
                };
                let n = usize::from(input.u8() % 32);
                let mut bytes = [0u8; 32];
                let given = input.bytes(n);
                bytes[..given.len()].copy_from_slice(given);
                let _ = ram.write(at, &bytes[..n.max(4)]);
            }
            _ => wrmsr(&hv, vp, MSR_EOM, 0),
        }
        check_interrupts(&hv, &platform);
    }
});
