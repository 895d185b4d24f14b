//! The hypercall page: enabling it (GUEST_OS_ID, then the HYPERCALL MSR, after which the hypervisor fills
//! the page with code) and calling through it — HvPostMessage (slow, input in a page) and HvSignalEvent
//! (fast, arguments in registers; on viridian's hypervisor it never leaves the host kernel).
//!
//! Calling convention (TLFS, x64): RCX = control (bits 0..15 code, bit 16 fast), RDX = input GPA or first
//! fast argument, R8 = output GPA; RAX = result (bits 0..15 status). The page may clobber RCX, RDX, R8–R11.

use core::arch::asm;

use super::{msr, status};
use crate::platform::{DmaRegion, Platform};

/// GUEST_OS_ID we report: an open-source OS (bit 63), vendor 0x7F ("other"), viridian version 1.
pub const GUEST_OS_ID: u64 = (1 << 63) | (0x7F << 56) | 1;

const HVCALL_POST_MESSAGE: u64 = 0x5C;
const HVCALL_SIGNAL_EVENT: u64 = 0x5D;
const FAST: u64 = 1 << 16;
/// Largest HvPostMessage payload.
pub const MAX_MESSAGE_PAYLOAD: usize = 240;

/// A hypercall that did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HypercallError {
    #[error("out of memory for the hypercall pages")]
    NoMemory,
    #[error("the hypervisor did not enable the hypercall page")]
    NotEnabled,
    #[error("message payload of {0} bytes exceeds 240")]
    MessageTooLarge(usize),
    #[error("hypercall failed with status {0:#x}")]
    Status(u16),
}

fn check(result: u64) -> Result<(), HypercallError> {
    match result as u16 {
        status::SUCCESS => Ok(()),
        s => Err(HypercallError::Status(s)),
    }
}

/// Whatever can issue a fast HvSignalEvent.
pub trait EventSignal {
    /// HvSignalEvent (fast): set event flag `flag` of connection `connection_id`.
    fn signal_event(&self, connection_id: u32, flag: u16) -> Result<(), HypercallError>;
}

impl EventSignal for Hypercalls {
    fn signal_event(&self, connection_id: u32, flag: u16) -> Result<(), HypercallError> {
        Hypercalls::signal_event(self, connection_id, flag)
    }
}

/// The hypercall page, usable for fast HvSignalEvent only (copyable; valid while the page stays enabled,
/// which for this kernel is forever once enabled).
#[derive(Debug, Clone, Copy)]
pub struct EventSignaller {
    page: core::ptr::NonNull<u8>,
}

impl EventSignal for EventSignaller {
    fn signal_event(&self, connection_id: u32, flag: u16) -> Result<(), HypercallError> {
        let arg = u64::from(connection_id) | (u64::from(flag) << 32);
        let result: u64;
        // SAFETY: as in `Hypercalls::call`: the hypervisor's code at `page` follows the TLFS calling
        // convention; the fast call touches no memory.
        unsafe {
            asm!("call {page}", page = in(reg) self.page.as_ptr(),
                 inlateout("rcx") HVCALL_SIGNAL_EVENT | FAST => _, inlateout("rdx") arg => _, inlateout("r8") 0u64 => _,
                 lateout("rax") result, lateout("r9") _, lateout("r10") _, lateout("r11") _)
        };
        check(result)
    }
}

/// An enabled hypercall page plus the page used for slow-call input.
#[derive(Debug)]
pub struct Hypercalls {
    page: DmaRegion,
    input: DmaRegion,
}

impl Hypercalls {
    /// Identify the guest OS and enable the hypercall page.
    pub fn enable(platform: &impl Platform) -> Result<Self, HypercallError> {
        platform.wrmsr(msr::GUEST_OS_ID, GUEST_OS_ID);
        let page = platform.alloc_dma(1).ok_or(HypercallError::NoMemory)?;
        let Some(input) = platform.alloc_dma(1) else {
            platform.free_dma(page);
            return Err(HypercallError::NoMemory);
        };
        platform.wrmsr(msr::HYPERCALL, page.pa | 1);
        if platform.rdmsr(msr::HYPERCALL) & 1 == 0 {
            platform.free_dma(page);
            platform.free_dma(input);
            return Err(HypercallError::NotEnabled);
        }
        Ok(Self { page, input })
    }

    /// Guest physical address of the hypercall page.
    pub fn page_gpa(&self) -> u64 {
        self.page.pa
    }

    fn call(&self, control: u64, input: u64, output: u64) -> u64 {
        let result: u64;
        // SAFETY: the hypervisor filled `page` with code following the TLFS calling convention, which
        // clobbers at most RCX, RDX, R8-R11 and flags (declared), uses the stack only for `call`'s return
        // address (no `nostack`), and reads/writes memory only at the GPAs we pass (default memory clobber).
        unsafe {
            asm!("call {page}", page = in(reg) self.page.va.as_ptr(),
                 inlateout("rcx") control => _, inlateout("rdx") input => _, inlateout("r8") output => _,
                 lateout("rax") result, lateout("r9") _, lateout("r10") _, lateout("r11") _)
        };
        result
    }

    /// HvPostMessage: send a message of `message_type` to connection `connection_id`.
    pub fn post_message(
        &self,
        connection_id: u32,
        message_type: u32,
        payload: &[u8],
    ) -> Result<(), HypercallError> {
        if payload.len() > MAX_MESSAGE_PAYLOAD {
            return Err(HypercallError::MessageTooLarge(payload.len()));
        }
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&connection_id.to_le_bytes());
        header[8..12].copy_from_slice(&message_type.to_le_bytes());
        header[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        self.input.write(0, &header);
        self.input.write(16, payload);
        check(self.call(HVCALL_POST_MESSAGE, self.input.pa, 0))
    }

    /// HvSignalEvent (fast): set event flag `flag` of connection `connection_id`.
    pub fn signal_event(&self, connection_id: u32, flag: u16) -> Result<(), HypercallError> {
        self.signaller().signal_event(connection_id, flag)
    }

    /// A copyable handle that can only signal events (fast HvSignalEvent needs no input page), for
    /// drivers that keep a channel apart from the connection.
    pub fn signaller(&self) -> EventSignaller {
        EventSignaller { page: self.page.va }
    }

    /// Issue an arbitrary hypercall (for probing the hypervisor's handling of bad requests).
    pub fn raw(&self, control: u64, input_gpa: u64, output_gpa: u64) -> u16 {
        self.call(control, input_gpa, output_gpa) as u16
    }

    /// Write raw bytes into the input page and return its GPA (with [`Hypercalls::raw`]).
    pub fn stage_input(&self, bytes: &[u8]) -> u64 {
        self.input
            .write(0, &bytes[..bytes.len().min(crate::platform::PAGE_SIZE)]);
        self.input.pa
    }
}
