//! Unit tests of SynIC registers, message slots, queueing/EOM and event flags (no KVM).

use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::*;

const SIMP: u64 = 0x10_000;
const SIEFP: u64 = 0x11_000;
const VECTOR: u8 = 0xF3;

fn ram() -> GuestRam {
    GuestRam::new(1 << 20).unwrap()
}

/// A VP with SCONTROL, SIMP, SIEFP enabled and SINT2 unmasked on `VECTOR`.
fn enabled_vp(ram: &GuestRam) -> SynicVp {
    let mut s = SynicVp::new(0, 4);
    s.write_msr(ram, SyntheticMsr::Simp, SIMP | 1).unwrap();
    s.write_msr(ram, SyntheticMsr::Siefp, SIEFP | 1).unwrap();
    s.write_msr(ram, SyntheticMsr::Sint(2), u64::from(VECTOR))
        .unwrap();
    s.write_msr(ram, SyntheticMsr::Scontrol, SCONTROL_ENABLE)
        .unwrap();
    s
}

fn slot(ram: &GuestRam, sint: u8) -> HvMessage {
    ram.read_obj(SIMP + u64::from(sint) * SLOT_SIZE).unwrap()
}

/// What a guest does after handling a message: free the slot, then report whether EOM is due.
fn guest_free_slot(ram: &GuestRam, sint: u8) -> bool {
    let gpa = SIMP + u64::from(sint) * SLOT_SIZE;
    ram.store_u32(gpa, 0, Ordering::SeqCst).unwrap();
    ram.load_u64(gpa, Ordering::SeqCst).unwrap() & (1 << 40) != 0
}

#[test]
fn layout() {
    assert_eq!(core::mem::size_of::<HvMessageHeader>(), 16);
    assert_eq!(core::mem::size_of::<HvMessage>(), 256);
    assert_eq!(core::mem::offset_of!(HvMessageHeader, payload_size), 4);
    assert_eq!(core::mem::offset_of!(HvMessageHeader, message_flags), 5);
    assert_eq!(core::mem::offset_of!(HvMessageHeader, sender), 8);
    assert_eq!(core::mem::offset_of!(HvMessage, payload), 16);
}

#[test]
fn reset_values_and_read_only_sversion() {
    let ram = ram();
    let mut s = SynicVp::new(1, 4);
    assert_eq!(s.read_msr(SyntheticMsr::Sversion), Some(1));
    assert_eq!(s.read_msr(SyntheticMsr::Sint(15)), Some(0x10000));
    assert_eq!(s.read_msr(SyntheticMsr::Eom), Some(0));
    assert_eq!(s.read_msr(SyntheticMsr::VpIndex), None);
    assert_eq!(
        s.write_msr(&ram, SyntheticMsr::Sversion, 2),
        Err(MsrError::ReadOnly(0x4000_0081))
    );
    assert_eq!(
        s.write_msr(&ram, SyntheticMsr::GuestOsId, 2),
        Err(MsrError::Unknown(0x4000_0000))
    );
}

#[test]
fn sint_vectors_below_16_fault_unless_masked() {
    let ram = ram();
    let mut s = SynicVp::new(0, 4);
    assert_eq!(
        s.write_msr(&ram, SyntheticMsr::Sint(3), 15),
        Err(MsrError::ReservedVector {
            sint: 3,
            vector: 15
        })
    );
    assert_eq!(
        s.read_msr(SyntheticMsr::Sint(3)),
        Some(SINT_RESET),
        "state unchanged"
    );
    s.write_msr(&ram, SyntheticMsr::Sint(3), SINT_MASKED)
        .unwrap();
    s.write_msr(&ram, SyntheticMsr::Sint(3), 16 | SINT_AUTO_EOI)
        .unwrap();
    assert_eq!(s.read_msr(SyntheticMsr::Sint(3)), Some(16 | SINT_AUTO_EOI));
}

#[test]
fn message_is_written_into_a_free_slot_and_raises_the_vector() {
    let ram = ram();
    let mut s = enabled_vp(&ram);
    let (d, irq) = s.post_message(&ram, 2, 0x42, 0x99, b"hello").unwrap();
    assert_eq!((d, irq), (Delivery::Delivered, Some(VECTOR)));
    let m = slot(&ram, 2);
    assert_eq!(
        m.header,
        HvMessageHeader {
            message_type: 0x42,
            payload_size: 5,
            message_flags: 0,
            reserved: 0,
            sender: 0x99
        }
    );
    assert_eq!(&m.payload[..5], b"hello");
    assert_eq!(
        slot(&ram, 1).header.message_type,
        0,
        "other slots untouched"
    );
}

#[test]
fn second_message_waits_for_eom() {
    let ram = ram();
    let mut s = enabled_vp(&ram);
    s.post_message(&ram, 2, 1, 0, &[1]).unwrap();
    let (d, irq) = s.post_message(&ram, 2, 1, 0, &[2]).unwrap();
    assert_eq!((d, irq), (Delivery::Queued, None));
    assert_eq!(
        slot(&ram, 2).header.message_flags,
        MESSAGE_FLAG_PENDING,
        "pending set in the occupied slot"
    );
    assert_eq!(slot(&ram, 2).payload[0], 1);
    // EOM while the slot is still occupied delivers nothing.
    assert_eq!(s.write_msr(&ram, SyntheticMsr::Eom, 0).unwrap(), vec![]);
    assert_eq!(s.queued(2), 1);
    assert!(guest_free_slot(&ram, 2), "the guest sees the pending flag");
    assert_eq!(
        s.write_msr(&ram, SyntheticMsr::Eom, 0).unwrap(),
        vec![VECTOR]
    );
    let m = slot(&ram, 2);
    assert_eq!(
        (m.header.message_type, m.payload[0], m.header.message_flags),
        (1, 2, 0)
    );
    assert_eq!(s.queued(2), 0);
}

#[test]
fn redelivered_message_carries_pending_when_more_are_queued() {
    let ram = ram();
    let mut s = enabled_vp(&ram);
    for i in 0..3u8 {
        s.post_message(&ram, 2, 1, 0, &[i]).unwrap();
    }
    assert!(guest_free_slot(&ram, 2));
    s.write_msr(&ram, SyntheticMsr::Eom, 0).unwrap();
    assert_eq!(
        (slot(&ram, 2).payload[0], slot(&ram, 2).header.message_flags),
        (1, MESSAGE_FLAG_PENDING)
    );
    assert!(guest_free_slot(&ram, 2));
    s.write_msr(&ram, SyntheticMsr::Eom, 0).unwrap();
    assert_eq!(
        (slot(&ram, 2).payload[0], slot(&ram, 2).header.message_flags),
        (2, 0)
    );
    assert!(!guest_free_slot(&ram, 2));
}

#[test]
fn queue_is_bounded_and_arguments_checked() {
    let ram = ram();
    let mut s = enabled_vp(&ram);
    s.post_message(&ram, 2, 1, 0, &[]).unwrap(); // occupies the slot
    for _ in 0..4 {
        assert_eq!(
            s.post_message(&ram, 2, 1, 0, &[]).unwrap().0,
            Delivery::Queued
        );
    }
    assert_eq!(
        s.post_message(&ram, 2, 1, 0, &[]),
        Err(SynicError::QueueFull {
            vp: 0,
            sint: 2,
            depth: 4
        })
    );
    assert_eq!(
        s.post_message(&ram, 16, 1, 0, &[]),
        Err(SynicError::InvalidSint(16))
    );
    assert_eq!(
        s.post_message(&ram, 3, 0, 0, &[]),
        Err(SynicError::InvalidMessageType)
    );
    assert_eq!(
        s.post_message(&ram, 3, 1, 0, &[0; 241]),
        Err(SynicError::PayloadTooLarge(241))
    );
    assert_eq!(
        s.post_message(&ram, 3, 1, 0, &[7; 240]).unwrap().0,
        Delivery::Delivered
    );
    assert_eq!(slot(&ram, 3).payload, [7; 240]);
}

#[test]
fn masked_sint_gets_the_message_but_no_interrupt() {
    let ram = ram();
    let mut s = enabled_vp(&ram);
    assert_eq!(
        s.post_message(&ram, 5, 1, 0, &[9]).unwrap(),
        (Delivery::Delivered, None)
    );
    assert_eq!(slot(&ram, 5).payload[0], 9);
}

#[test]
fn disabled_synic_queues_until_enabled() {
    let ram = ram();
    let mut s = SynicVp::new(0, 4);
    s.write_msr(&ram, SyntheticMsr::Sint(2), u64::from(VECTOR))
        .unwrap();
    assert_eq!(
        s.post_message(&ram, 2, 1, 0, &[1]).unwrap(),
        (Delivery::Queued, None)
    );
    assert_eq!(
        s.write_msr(&ram, SyntheticMsr::Simp, SIMP | 1).unwrap(),
        vec![],
        "SCONTROL still off"
    );
    assert_eq!(
        s.write_msr(&ram, SyntheticMsr::Scontrol, 1).unwrap(),
        vec![VECTOR]
    );
    assert_eq!(slot(&ram, 2).payload[0], 1);
}

#[test]
fn enabling_a_page_zeroes_it_once() {
    let ram = ram();
    ram.write_u64(SIMP + 512, u64::MAX).unwrap();
    let mut s = SynicVp::new(0, 4);
    s.write_msr(&ram, SyntheticMsr::Simp, SIMP | 1).unwrap();
    assert_eq!(ram.read_u64(SIMP + 512).unwrap(), 0);
    ram.write_u64(SIMP + 512, 5).unwrap();
    s.write_msr(&ram, SyntheticMsr::Simp, SIMP | 1).unwrap();
    assert_eq!(
        ram.read_u64(SIMP + 512).unwrap(),
        5,
        "rewriting the same value keeps the contents"
    );
}

#[test]
fn pages_outside_ram_fail_delivery_cleanly() {
    let ram = ram();
    let mut s = enabled_vp(&ram);
    s.write_msr(&ram, SyntheticMsr::Simp, 0xFEE0_0000 | 1)
        .unwrap();
    s.write_msr(&ram, SyntheticMsr::Siefp, (1 << 20) | 1)
        .unwrap();
    assert_eq!(
        s.post_message(&ram, 2, 1, 0, &[1]).unwrap(),
        (Delivery::Queued, None)
    );
    assert_eq!(s.write_msr(&ram, SyntheticMsr::Eom, 0).unwrap(), vec![]);
    assert_eq!(
        s.signal_event(&ram, 2, 0).unwrap(),
        (EventDelivery::NotEnabled, None)
    );
    // Moving the SIMP back into RAM delivers the queued message.
    assert_eq!(
        s.write_msr(&ram, SyntheticMsr::Simp, SIMP | 1).unwrap(),
        vec![VECTOR]
    );
    assert_eq!(slot(&ram, 2).payload[0], 1);
}

#[test]
fn event_flags_set_once_and_interrupt_on_the_edge() {
    let ram = ram();
    let s = enabled_vp(&ram);
    assert_eq!(
        s.signal_event(&ram, 2, 67).unwrap(),
        (EventDelivery::Set, Some(VECTOR))
    );
    assert_eq!(ram.read_u64(SIEFP + 2 * 256 + 8).unwrap(), 1 << 3);
    assert_eq!(
        s.signal_event(&ram, 2, 67).unwrap(),
        (EventDelivery::AlreadySet, None)
    );
    assert_eq!(s.signal_event(&ram, 2, 2047).unwrap().0, EventDelivery::Set);
    assert_eq!(ram.read_u64(SIEFP + 2 * 256 + 248).unwrap(), 1 << 63);
    assert_eq!(
        s.signal_event(&ram, 4, 0).unwrap(),
        (EventDelivery::Set, None),
        "masked SINT4"
    );
    assert_eq!(
        s.signal_event(&ram, 2, 2048),
        Err(SynicError::InvalidFlag(2048))
    );
    assert_eq!(
        s.signal_event(&ram, 16, 0),
        Err(SynicError::InvalidSint(16))
    );
    let off = SynicVp::new(0, 4);
    assert_eq!(
        off.signal_event(&ram, 2, 0).unwrap(),
        (EventDelivery::NotEnabled, None)
    );
}

/// A host thread posting and a "guest" thread consuming concurrently: every message arrives exactly once, in
/// order, and the guest never waits for an EOM that is not due.
#[test]
fn concurrent_post_and_consume_lose_nothing() {
    const N: u32 = 3000;
    let ram = ram();
    let synic = Arc::new(Mutex::new(enabled_vp(&ram)));
    let host = {
        let (ram, synic) = (ram.clone(), synic.clone());
        std::thread::spawn(move || {
            let mut i = 0u32;
            while i < N {
                match synic
                    .lock()
                    .unwrap()
                    .post_message(&ram, 2, 1, 0, &i.to_le_bytes())
                {
                    Ok(_) => i += 1,
                    Err(SynicError::QueueFull { .. }) => std::thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            }
        })
    };
    let mut next = 0u32;
    let gpa = SIMP + 2 * SLOT_SIZE;
    let mut spins = 0u64;
    while next < N {
        if ram.load_u32(gpa, Ordering::Acquire).unwrap() == 0 {
            spins += 1;
            assert!(spins < 50_000_000, "stuck at message {next}: lost wakeup");
            std::thread::yield_now();
            continue;
        }
        assert_eq!(ram.read_u32(gpa + 16).unwrap(), next);
        next += 1;
        if guest_free_slot(&ram, 2) {
            synic
                .lock()
                .unwrap()
                .write_msr(&ram, SyntheticMsr::Eom, 0)
                .unwrap();
        }
    }
    host.join().unwrap();
    assert_eq!(synic.lock().unwrap().queued(2), 0);
}

proptest! {
    /// Arbitrary register values from the guest never make the host write outside the enabled pages, and never
    /// panic.
    #[test]
    fn guest_register_values_cannot_misdirect_writes(
        simp in any::<u64>(), siefp in any::<u64>(), sint in any::<u64>(), scontrol in any::<u64>(),
        target_sint in 0u8..16, flag in 0u32..2048, payload in proptest::collection::vec(any::<u8>(), 0..=240),
    ) {
        let ram = GuestRam::new(64 << 10).unwrap();
        let canary = [0xA5u8; 64 << 10];
        ram.write(0, &canary).unwrap();
        let mut s = SynicVp::new(0, 2);
        let _ = s.write_msr(&ram, SyntheticMsr::Simp, simp);
        let _ = s.write_msr(&ram, SyntheticMsr::Siefp, siefp);
        let _ = s.write_msr(&ram, SyntheticMsr::Sint(target_sint), sint);
        let _ = s.write_msr(&ram, SyntheticMsr::Scontrol, scontrol);
        let _ = s.post_message(&ram, target_sint, 1, 0, &payload);
        let _ = s.signal_event(&ram, target_sint, flag);
        let _ = s.write_msr(&ram, SyntheticMsr::Eom, 0);
        let mut after = vec![0u8; 64 << 10];
        ram.read(0, &mut after).unwrap();
        let pages: Vec<u64> = [simp, siefp].iter().filter(|v| *v & 1 != 0).map(|v| v & PAGE_GPA_MASK).collect();
        for (i, (a, b)) in after.iter().zip(canary.iter()).enumerate() {
            if a != b {
                let page = i as u64 & PAGE_GPA_MASK;
                prop_assert!(pages.contains(&page), "byte {i:#x} changed outside the SynIC pages");
            }
        }
    }
}
