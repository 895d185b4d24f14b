//! The guest's synthetic interrupt controller: SIMP (message page, one 256-byte slot per SINT), SIEFP
//! (event-flag page, one 256-byte bitmap per SINT), one SINT routed to a vector, SCONTROL enable;
//! receiving a message (copy out, free the slot, EOM only when the hypervisor flagged more pending) and
//! consuming event flags.

use core::sync::atomic::{fence, Ordering};

use super::msr;
use crate::platform::{DmaRegion, Platform};

/// Bytes per SIMP slot / SIEFP bitmap.
pub const SLOT_SIZE: usize = 256;
/// Largest message payload.
pub const MAX_PAYLOAD: usize = 240;
const FLAG_PENDING: u8 = 1;

/// A message taken from a SIMP slot.
#[derive(Debug, Clone)]
pub struct SynicMessage {
    pub message_type: u32,
    pub sender: u64,
    len: usize,
    payload: [u8; MAX_PAYLOAD],
}

impl SynicMessage {
    /// The message payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload[..self.len]
    }
}

/// SynIC setup failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SynicError {
    #[error("out of memory for the SynIC pages")]
    NoMemory,
    #[error("vector {0} cannot carry a SINT (must be 16..=255)")]
    BadVector(u8),
    #[error("SINT {0} does not exist (0..=15)")]
    BadSint(u8),
}

/// This VP's enabled SynIC.
#[derive(Debug)]
pub struct Synic {
    simp: DmaRegion,
    siefp: DmaRegion,
    /// Count of EOM writes (each is an exit to the hypervisor).
    pub eoms: u64,
}

impl Synic {
    /// Enable the SynIC with `sint` delivered on `vector`.
    pub fn enable(platform: &impl Platform, sint: u8, vector: u8) -> Result<Self, SynicError> {
        if vector < 16 {
            return Err(SynicError::BadVector(vector));
        }
        if sint > 15 {
            return Err(SynicError::BadSint(sint));
        }
        let simp = platform.alloc_dma(1).ok_or(SynicError::NoMemory)?;
        let Some(siefp) = platform.alloc_dma(1) else {
            platform.free_dma(simp);
            return Err(SynicError::NoMemory);
        };
        platform.wrmsr(msr::SIMP, simp.pa | 1);
        platform.wrmsr(msr::SIEFP, siefp.pa | 1);
        platform.wrmsr(msr::SINT0 + u32::from(sint), u64::from(vector));
        platform.wrmsr(msr::SCONTROL, 1);
        Ok(Self {
            simp,
            siefp,
            eoms: 0,
        })
    }

    /// Take the message waiting in `sint`'s slot, if any, and free the slot. When the hypervisor marked
    /// more messages pending, tell it (EOM) so it redelivers.
    pub fn take_message(&mut self, platform: &impl Platform, sint: u8) -> Option<SynicMessage> {
        let base = usize::from(sint & 15) * SLOT_SIZE;
        let message_type = self.simp.atomic_u32(base).load(Ordering::Acquire);
        if message_type == 0 {
            return None;
        }
        let mut header = [0u8; 16];
        self.simp.read(base, &mut header);
        let len = usize::from(header[4]).min(MAX_PAYLOAD);
        let sender = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        let mut payload = [0u8; MAX_PAYLOAD];
        self.simp.read(base + 16, &mut payload[..len]);
        self.simp.atomic_u32(base).store(0, Ordering::Release);
        // The slot must read as free before we look at the pending flag (TLFS: a full barrier).
        fence(Ordering::SeqCst);
        let mut flags = [0u8; 1];
        self.simp.read(base + 5, &mut flags);
        if flags[0] & FLAG_PENDING != 0 {
            self.eoms += 1;
            platform.wrmsr(msr::EOM, 0);
        }
        Some(SynicMessage {
            message_type,
            sender,
            len,
            payload,
        })
    }

    /// Atomically test and clear event flag `flag` of `sint`.
    pub fn take_event(&self, sint: u8, flag: u32) -> bool {
        self.event_flags().take(sint, flag)
    }

    /// A copyable handle on the event-flag page (valid while the SynIC stays enabled, which for this
    /// kernel is forever once enabled), for drivers that keep a channel apart from the connection.
    pub fn event_flags(&self) -> EventFlags {
        EventFlags {
            page: self.siefp.va,
        }
    }
}

/// The SIEFP page: one 256-byte event-flag bitmap per SINT.
#[derive(Debug, Clone, Copy)]
pub struct EventFlags {
    page: core::ptr::NonNull<u8>,
}

impl EventFlags {
    /// Atomically test and clear event flag `flag` of `sint`.
    pub fn take(&self, sint: u8, flag: u32) -> bool {
        let flag = flag % (SLOT_SIZE as u32 * 8);
        let offset = usize::from(sint & 15) * SLOT_SIZE + (flag as usize / 64) * 8;
        let bit = 1u64 << (flag % 64);
        // SAFETY: offset + 8 <= 16 * 256 = one page (sint < 16, flag < 2048) and is 8-aligned; the page is
        // the SIEFP, enabled for the kernel's lifetime, and every access to it is atomic.
        let word = unsafe {
            core::sync::atomic::AtomicU64::from_ptr(self.page.as_ptr().add(offset).cast())
        };
        word.fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }
}
