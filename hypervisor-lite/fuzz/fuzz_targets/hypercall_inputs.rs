//! Guest hypercalls against `HvPartition::hypercall` and `HvPartition::doorbell`, the production
//! entry points the hypercall-port and doorbell exits call, on a partition with 16 pages of RAM,
//! post-message handlers on connections 1 and 4 and events on 0x2A and 5.
//!
//! Input: one setup byte (bit 0 set: leave the hypercall page disabled), then steps `[op, ...]`:
//! a hypercall (control word from a code selector plus fast/rep/variable-header/reserved bits,
//! input and output GPAs in and out of RAM, unaligned, straddling its end), a well-formed or
//! garbage HvPostMessage input block written into RAM, raw bytes into RAM, a doorbell, a guest-id or
//! hypercall-MSR rewrite, or a handler (un)registration. Checked: the status codes the TLFS fixes
//! for unknown codes and a disabled page, handlers only see payloads of at most 240 bytes, and the
//! exit counters add up.
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hypervisor_lite::hv::hypercall::{
    HvStatus, HypercallRegs, PostMessageInput, CONTROL_FAST, HVCALL_POST_MESSAGE,
    HVCALL_SIGNAL_EVENT,
};
use hypervisor_lite::hv::msr::{HYPERCALL_ENABLE, MSR_GUEST_OS_ID, MSR_HYPERCALL};
use hypervisor_lite::hv::{HvPartition, PostMessageHandler};
use hypervisor_lite_fuzz::{check_interrupts, gpa, partition, Input, RAM_BYTES};
use libfuzzer_sys::fuzz_target;
use zerocopy::IntoBytes;

fn handler(calls: &Arc<AtomicU64>, status: HvStatus) -> PostMessageHandler {
    let calls = calls.clone();
    Arc::new(move |vp, message_type, payload: &[u8]| {
        assert!(payload.len() <= 240 && message_type != 0 && message_type < 0x8000_0000);
        assert!(vp < 3);
        calls.fetch_add(1, Ordering::Relaxed);
        status
    })
}

fn control(input: &mut Input<'_>) -> u64 {
    let code = match input.u8() % 5 {
        0 | 1 => u64::from(HVCALL_POST_MESSAGE),
        2 | 3 => u64::from(HVCALL_SIGNAL_EVENT),
        _ => return input.u64(),
    };
    let bits = input.u8();
    let mut control = code;
    if bits & 1 != 0 {
        control |= CONTROL_FAST;
    }
    if bits & 2 != 0 {
        control |= u64::from(input.u16() & 0xFFF) << 32; // rep count
    }
    if bits & 4 != 0 {
        control |= u64::from(input.u8()) << 17; // variable header size
    }
    if bits & 8 != 0 {
        control |= 1 << (27 + u64::from(input.u8() % 5)); // a reserved bit
    }
    if bits & 16 != 0 {
        control |= u64::from(input.u16() & 0xFFF) << 48; // rep start
    }
    control
}

fn post_input(input: &mut Input<'_>) -> PostMessageInput {
    let mut block = PostMessageInput {
        connection_id: match input.u8() % 4 {
            0 => 1,
            1 => 4,
            2 => 7,
            _ => input.u32(),
        },
        reserved: 0,
        message_type: match input.u8() % 3 {
            0 => 1,
            1 => 0,
            _ => input.u32(),
        },
        payload_size: match input.u8() {
            s @ 0..=240 => u32::from(s),
            _ => input.u32(),
        },
        payload: [0; 240],
    };
    let n = input.u8().min(240);
    let payload = input.bytes(usize::from(n));
    block.payload[..payload.len()].copy_from_slice(payload);
    block
}

fn enable(hv: &HvPartition, page: u64) {
    let _ = hv.wrmsr(0, MSR_GUEST_OS_ID, 0x8100_0000_0000_0000);
    let _ = hv.wrmsr(0, MSR_HYPERCALL, (page << 12) | HYPERCALL_ENABLE);
}

fuzz_target!(|data: &[u8]| {
    let (hv, platform, ram) = partition();
    let mut input = Input::new(data);
    let calls = Arc::new(AtomicU64::new(0));
    if input.u8() & 1 == 0 {
        enable(&hv, 15);
    }
    hv.register_post_message(1, handler(&calls, HvStatus::SUCCESS))
        .unwrap();
    hv.register_post_message(4, handler(&calls, HvStatus::INSUFFICIENT_BUFFERS))
        .unwrap();
    let events = [
        hv.register_event(0x2A).unwrap(),
        hv.register_event(5).unwrap(),
    ];
    let (mut hypercalls, mut doorbells) = (0, 0);
    while !input.is_empty() {
        let vp = u32::from(input.u8() % 3);
        match input.u8() % 8 {
            0..=2 => {
                let regs = HypercallRegs {
                    control: control(&mut input),
                    input: match input.u8() % 3 {
                        0 => u64::from(input.u32()), // a fast argument: connection id | flag << 32
                        _ => gpa(&mut input),
                    },
                    output: gpa(&mut input),
                };
                let enabled = hv.hypercall_page_enabled();
                let status = hv.hypercall(vp, regs);
                hypercalls += 1;
                let code = regs.control as u16;
                if !enabled || (code != HVCALL_POST_MESSAGE && code != HVCALL_SIGNAL_EVENT) {
                    assert_eq!(status, HvStatus::INVALID_HYPERCALL_CODE, "{regs:x?}");
                }
            }
            3 => {
                let at = gpa(&mut input);
                let block = post_input(&mut input);
                let _ = ram.write(at, block.as_bytes());
            }
            4 => {
                let at = u64::from(input.u16()) % RAM_BYTES;
                let n = usize::from(input.u8());
                let _ = ram.write(at, input.bytes(n));
            }
            5 => {
                let connection = match input.u8() % 3 {
                    0 => 0x2A,
                    1 => 5,
                    _ => input.u32(),
                };
                let _ = hv.doorbell(vp, connection);
                doorbells += 1;
            }
            6 => match input.u8() % 3 {
                0 => drop(hv.wrmsr(vp, MSR_GUEST_OS_ID, 0)),
                1 => enable(&hv, u64::from(input.u8())),
                _ => drop(hv.wrmsr(vp, MSR_HYPERCALL, input.u64())),
            },
            _ => {
                if !hv.unregister_post_message(1) {
                    hv.register_post_message(1, handler(&calls, HvStatus::SUCCESS))
                        .unwrap();
                }
            }
        }
    }
    let stats = hv.stats();
    assert_eq!(
        (stats.hypercall_exits, stats.doorbell_exits),
        (hypercalls, doorbells)
    );
    assert_eq!(stats.guest_messages, calls.load(Ordering::Relaxed));
    let signalled: u64 = events.iter().map(|e| e.read().unwrap_or(0)).sum();
    assert_eq!(stats.guest_signals, signalled);
    check_interrupts(&hv, &platform);
});
