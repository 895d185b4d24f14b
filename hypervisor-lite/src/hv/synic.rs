//! The synthetic interrupt controller (SynIC) of one virtual processor: its registers (SCONTROL, SVERSION,
//! SIEFP, SIMP, EOM, SINT0–15), message delivery into the SIMP page with a bounded per-SINT queue and EOM
//! redelivery, and event flags in the SIEFP page.
//!
//! Sans-I/O towards interrupts: operations return the vector to inject (if any) and the caller sends the MSI.
//! Guest memory is touched only through [`GuestRam`]'s bounds-checked copies and atomics, so a page outside RAM
//! makes delivery fail cleanly.
//!
//! Slot protocol with the guest (single host producer per VP, serialised by the caller's lock): the host writes a
//! message only into a slot whose `message_type` is 0, payload and header first, `message_type` last with release
//! ordering. If the slot is busy, the host atomically ORs the pending flag into the slot's first quadword; if that
//! quadword shows the guest freed the slot in the meantime, the host writes the message after all, so a guest that
//! cleared the slot and then read the flags cannot miss a message. The guest clears `message_type` and, if the
//! pending flag was set, writes EOM, which redelivers the queue head.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::memory::GuestRam;

use super::hypercall::{HV_MESSAGE_PAYLOAD_SIZE, HV_PAGE_SIZE};
use super::msr::{MsrError, SyntheticMsr, PAGE_GPA_MASK};

/// SINTs per VP.
pub const SINT_COUNT: usize = 16;
/// Bytes per SIMP message slot and per SIEFP event-flag bitmap.
pub const SLOT_SIZE: u64 = 256;
/// Event flags per SINT (256 bytes × 8).
pub const EVENT_FLAGS_PER_SINT: u32 = (SLOT_SIZE * 8) as u32;
/// Message flags bit 0: more messages are pending; write EOM after freeing the slot.
pub const MESSAGE_FLAG_PENDING: u8 = 1 << 0;
/// SCONTROL bit 0.
pub const SCONTROL_ENABLE: u64 = 1 << 0;
/// SIMP/SIEFP bit 0.
pub const PAGE_ENABLE: u64 = 1 << 0;
/// SINT bit 16: masked.
pub const SINT_MASKED: u64 = 1 << 16;
/// SINT bit 17: auto-EOI (stored and read back; not honoured: we advertise "deprecate auto-EOI").
pub const SINT_AUTO_EOI: u64 = 1 << 17;
/// Value of SINTx at reset.
pub const SINT_RESET: u64 = SINT_MASKED;
/// Lowest vector a SINT may use.
pub const SINT_VECTOR_MIN: u8 = 16;
/// SVERSION value.
pub const SYNIC_VERSION: u64 = 1;
/// Default bound of each VP×SINT message queue.
pub const DEFAULT_QUEUE_DEPTH: usize = 16;

/// SynIC message header (16 bytes) at the start of each SIMP slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct HvMessageHeader {
    /// Message type; 0 means the slot is free.
    pub message_type: u32,
    /// Payload bytes used.
    pub payload_size: u8,
    /// Bit 0: [`MESSAGE_FLAG_PENDING`].
    pub message_flags: u8,
    /// Reserved.
    pub reserved: u16,
    /// Sender (port id or partition id).
    pub sender: u64,
}

/// A SynIC message: one 256-byte SIMP slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct HvMessage {
    /// Header.
    pub header: HvMessageHeader,
    /// Payload (the first `payload_size` bytes are meaningful).
    pub payload: [u8; HV_MESSAGE_PAYLOAD_SIZE],
}

/// A SINTx register value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SintReg(pub u64);

impl SintReg {
    /// Vector (bits 0–7).
    pub fn vector(self) -> u8 {
        self.0 as u8
    }
    /// Masked (bit 16).
    pub fn masked(self) -> bool {
        self.0 & SINT_MASKED != 0
    }
    /// Auto-EOI requested (bit 17).
    pub fn auto_eoi(self) -> bool {
        self.0 & SINT_AUTO_EOI != 0
    }
}

/// Host-side SynIC errors (bad arguments from host code, or a full queue).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SynicError {
    /// No such VP.
    #[error("VP {0} does not exist")]
    InvalidVp(u32),
    /// SINT number ≥ 16.
    #[error("SINT {0} does not exist (0-15)")]
    InvalidSint(u8),
    /// Event flag ≥ 2048.
    #[error("event flag {0} out of range (0-2047)")]
    InvalidFlag(u32),
    /// Payload longer than 240 bytes.
    #[error("message payload of {0} bytes exceeds 240")]
    PayloadTooLarge(usize),
    /// Message type 0 marks a free slot and cannot be sent.
    #[error("message type 0 is reserved for free slots")]
    InvalidMessageType,
    /// The VP×SINT queue is at its bound: the guest is not consuming messages (or its SIMP is unusable).
    #[error("message queue of VP {vp} SINT {sint} is full ({depth} messages)")]
    QueueFull {
        /// Target VP.
        vp: u32,
        /// Target SINT.
        sint: u8,
        /// Queue bound.
        depth: usize,
    },
}

/// Where a posted message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written into the SINT's SIMP slot.
    Delivered,
    /// Queued behind a busy slot (pending flag set) or because the SIMP is not usable yet.
    Queued,
}

/// What signalling an event flag did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventDelivery {
    /// The flag went from 0 to 1 (and the SINT's vector was injected unless masked).
    Set,
    /// The flag was already set; the guest has not consumed the previous signal, no new interrupt.
    AlreadySet,
    /// SCONTROL or SIEFP is not enabled, or the SIEFP page is not RAM: the event is dropped.
    NotEnabled,
}

/// Result of one attempt to place a message into its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotAttempt {
    Written,
    Busy,
    Unavailable,
}

/// SynIC state of one VP.
#[derive(Debug, Clone)]
pub struct SynicVp {
    vp: u32,
    scontrol: u64,
    simp: u64,
    siefp: u64,
    sint: [u64; SINT_COUNT],
    queues: [VecDeque<HvMessage>; SINT_COUNT],
    queue_depth: usize,
}

impl SynicVp {
    /// Reset state for VP `vp` with message queues bounded at `queue_depth` (≥ 1).
    pub fn new(vp: u32, queue_depth: usize) -> Self {
        Self {
            vp,
            scontrol: 0,
            simp: 0,
            siefp: 0,
            sint: [SINT_RESET; SINT_COUNT],
            queues: Default::default(),
            queue_depth: queue_depth.max(1),
        }
    }

    /// Messages waiting in the queue of `sint` (not counting the one in the slot).
    pub fn queued(&self, sint: u8) -> usize {
        self.queues.get(usize::from(sint)).map_or(0, VecDeque::len)
    }

    /// The SINT register `sint`.
    pub fn sint(&self, sint: u8) -> Option<SintReg> {
        self.sint.get(usize::from(sint)).copied().map(SintReg)
    }

    fn enabled(&self) -> bool {
        self.scontrol & SCONTROL_ENABLE != 0
    }

    /// The vector to inject for `sint`, if the SynIC is enabled and the SINT unmasked.
    pub fn sint_vector(&self, sint: u8) -> Option<u8> {
        let reg = self.sint(sint)?;
        (self.enabled() && !reg.masked() && reg.vector() >= SINT_VECTOR_MIN).then_some(reg.vector())
    }

    /// Reads a SynIC MSR; `None` for MSRs that are not SynIC registers.
    pub fn read_msr(&self, msr: SyntheticMsr) -> Option<u64> {
        Some(match msr {
            SyntheticMsr::Scontrol => self.scontrol,
            SyntheticMsr::Sversion => SYNIC_VERSION,
            SyntheticMsr::Siefp => self.siefp,
            SyntheticMsr::Simp => self.simp,
            SyntheticMsr::Eom => 0,
            SyntheticMsr::Sint(n) => *self.sint.get(usize::from(n))?,
            _ => return None,
        })
    }

    /// Writes a SynIC MSR. Returns the vectors to inject (messages delivered by this write: EOM, enabling the
    /// SIMP or SynIC, unmasking a SINT). `Err` means #GP. Non-SynIC MSRs are `Err(Unknown)`.
    pub fn write_msr(
        &mut self,
        ram: &GuestRam,
        msr: SyntheticMsr,
        value: u64,
    ) -> Result<Vec<u8>, MsrError> {
        match msr {
            SyntheticMsr::Scontrol => {
                self.scontrol = value;
                Ok(self.flush_all(ram))
            }
            SyntheticMsr::Sversion => Err(MsrError::ReadOnly(msr.index())),
            SyntheticMsr::Siefp => {
                self.siefp = self.enable_overlay(ram, self.siefp, value, "SIEFP");
                Ok(Vec::new())
            }
            SyntheticMsr::Simp => {
                self.simp = self.enable_overlay(ram, self.simp, value, "SIMP");
                Ok(self.flush_all(ram))
            }
            SyntheticMsr::Eom => Ok(self.flush_all(ram)),
            SyntheticMsr::Sint(n) => {
                let reg = SintReg(value);
                if !reg.masked() && reg.vector() < SINT_VECTOR_MIN {
                    // Hyper-V faults unmasked SINTs with vectors 0–15; masked ones (e.g. the reset value
                    // 0x10000 written back) are accepted.
                    tracing::warn!(vp = self.vp, sint = n, value, "SINT with reserved vector");
                    return Err(MsrError::ReservedVector {
                        sint: n,
                        vector: reg.vector(),
                    });
                }
                let slot = self
                    .sint
                    .get_mut(usize::from(n))
                    .ok_or(MsrError::Unknown(msr.index()))?;
                *slot = value;
                if reg.auto_eoi() {
                    tracing::debug!(
                        vp = self.vp,
                        sint = n,
                        "auto-EOI requested but not honoured"
                    );
                }
                Ok(self.flush(ram, n).into_iter().collect())
            }
            other => Err(MsrError::Unknown(other.index())),
        }
    }

    /// The overlay page semantics of SIMP/SIEFP: a page that becomes enabled (or moves while enabled) starts
    /// zeroed. A page outside RAM is accepted (Hyper-V accepts any GPA) but nothing can be delivered into it.
    fn enable_overlay(&self, ram: &GuestRam, old: u64, new: u64, name: &str) -> u64 {
        let newly = new & PAGE_ENABLE != 0
            && (old & PAGE_ENABLE == 0 || old & PAGE_GPA_MASK != new & PAGE_GPA_MASK);
        if newly {
            let gpa = new & PAGE_GPA_MASK;
            if ram.zero(gpa, HV_PAGE_SIZE).is_err() {
                tracing::warn!(
                    vp = self.vp,
                    gpa,
                    page = name,
                    "SynIC page is not guest RAM: delivery will fail"
                );
            }
        }
        new
    }

    fn simp_slot(&self, sint: u8) -> Option<u64> {
        (self.enabled() && self.simp & PAGE_ENABLE != 0)
            .then(|| (self.simp & PAGE_GPA_MASK) + u64::from(sint) * SLOT_SIZE)
    }

    fn try_write_slot(
        &self,
        ram: &GuestRam,
        sint: u8,
        msg: &HvMessage,
        more_pending: bool,
    ) -> SlotAttempt {
        let Some(slot) = self.simp_slot(sint) else {
            return SlotAttempt::Unavailable;
        };
        if !ram.contains(slot, SLOT_SIZE) {
            tracing::warn!(
                vp = self.vp,
                sint,
                slot,
                "SIMP slot is not guest RAM: message stays queued"
            );
            return SlotAttempt::Unavailable;
        }
        // In RAM and 256-aligned: the atomics and copies below cannot fail; treat a failure as unavailable.
        let Ok(message_type) = ram.load_u32(slot, Ordering::Acquire) else {
            return SlotAttempt::Unavailable;
        };
        if message_type != 0 {
            let pending_bit = u64::from(MESSAGE_FLAG_PENDING) << 40;
            match ram.fetch_or_u64(slot, pending_bit) {
                Ok(old) if old as u32 != 0 => return SlotAttempt::Busy,
                Ok(_) => {} // the guest freed the slot meanwhile: deliver now
                Err(_) => return SlotAttempt::Unavailable,
            }
        }
        let size = usize::from(msg.header.payload_size).min(HV_MESSAGE_PAYLOAD_SIZE);
        let header = HvMessageHeader {
            message_flags: if more_pending {
                MESSAGE_FLAG_PENDING
            } else {
                0
            },
            reserved: 0,
            ..msg.header
        };
        let ok = ram.write(slot + 16, &msg.payload[..size]).is_ok()
            && ram.write(slot + 4, &header.as_bytes()[4..16]).is_ok()
            && ram
                .store_u32(slot, header.message_type, Ordering::Release)
                .is_ok();
        if ok {
            SlotAttempt::Written
        } else {
            SlotAttempt::Unavailable
        }
    }

    /// Tries to move the head of `sint`'s queue into its slot; returns the vector to inject if it did.
    fn flush(&mut self, ram: &GuestRam, sint: u8) -> Option<u8> {
        let queue = self.queues.get(usize::from(sint))?;
        let head = queue.front()?;
        let more = queue.len() > 1;
        match self.try_write_slot(ram, sint, head, more) {
            SlotAttempt::Written => {
                self.queues[usize::from(sint)].pop_front();
                self.sint_vector(sint)
            }
            SlotAttempt::Busy | SlotAttempt::Unavailable => None,
        }
    }

    fn flush_all(&mut self, ram: &GuestRam) -> Vec<u8> {
        (0..SINT_COUNT as u8)
            .filter_map(|s| self.flush(ram, s))
            .collect()
    }

    /// Posts a message to `sint`: written into the slot if it is free and nothing is queued ahead of it, else
    /// queued (bounded). Returns where it went and the vector to inject, if any.
    pub fn post_message(
        &mut self,
        ram: &GuestRam,
        sint: u8,
        message_type: u32,
        sender: u64,
        payload: &[u8],
    ) -> Result<(Delivery, Option<u8>), SynicError> {
        if usize::from(sint) >= SINT_COUNT {
            return Err(SynicError::InvalidSint(sint));
        }
        if payload.len() > HV_MESSAGE_PAYLOAD_SIZE {
            return Err(SynicError::PayloadTooLarge(payload.len()));
        }
        if message_type == 0 {
            return Err(SynicError::InvalidMessageType);
        }
        let queue = &mut self.queues[usize::from(sint)];
        if queue.len() >= self.queue_depth {
            return Err(SynicError::QueueFull {
                vp: self.vp,
                sint,
                depth: self.queue_depth,
            });
        }
        let mut msg = HvMessage {
            header: HvMessageHeader {
                message_type,
                payload_size: payload.len() as u8,
                message_flags: 0,
                reserved: 0,
                sender,
            },
            payload: [0; HV_MESSAGE_PAYLOAD_SIZE],
        };
        msg.payload[..payload.len()].copy_from_slice(payload);
        queue.push_back(msg);
        let irq = self.flush(ram, sint);
        let delivery = if self.queues[usize::from(sint)].is_empty() {
            Delivery::Delivered
        } else {
            Delivery::Queued
        };
        Ok((delivery, irq))
    }

    /// Sets event flag `flag` of `sint` in the SIEFP page. Returns what happened and the vector to inject, if any.
    pub fn signal_event(
        &self,
        ram: &GuestRam,
        sint: u8,
        flag: u32,
    ) -> Result<(EventDelivery, Option<u8>), SynicError> {
        if usize::from(sint) >= SINT_COUNT {
            return Err(SynicError::InvalidSint(sint));
        }
        if flag >= EVENT_FLAGS_PER_SINT {
            return Err(SynicError::InvalidFlag(flag));
        }
        if !self.enabled() || self.siefp & PAGE_ENABLE == 0 {
            return Ok((EventDelivery::NotEnabled, None));
        }
        let word =
            (self.siefp & PAGE_GPA_MASK) + u64::from(sint) * SLOT_SIZE + u64::from(flag / 64) * 8;
        let bit = 1u64 << (flag % 64);
        match ram.fetch_or_u64(word, bit) {
            Ok(old) if old & bit != 0 => Ok((EventDelivery::AlreadySet, None)),
            Ok(_) => Ok((EventDelivery::Set, self.sint_vector(sint))),
            Err(e) => {
                tracing::warn!(vp = self.vp, sint, flag, error = %e, "SIEFP is not guest RAM: event dropped");
                Ok((EventDelivery::NotEnabled, None))
            }
        }
    }
}

#[cfg(test)]
mod tests;
