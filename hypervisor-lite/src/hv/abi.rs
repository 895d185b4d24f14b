//! The hypercall register ABI of both x86 calling conventions: which one a call uses (decided from the vCPU's
//! state at the trap, as Hyper-V does), where the control word, input and output GPAs are read from, and where the
//! 64-bit result value (status and reps completed) is written back.
//!
//! | convention | when | control | input GPA / fast arg | output GPA | result |
//! |---|---|---|---|---|---|
//! | 64-bit | EFER.LMA = 1 and CS.L = 1 | RCX | RDX | R8 | RAX |
//! | 32-bit | otherwise (protected mode, compatibility mode) | EDX:EAX | EBX:ECX | EDI:ESI | EDX:EAX |
//!
//! The hypercall page moves the one input register it needs for the port number before it traps: RDX into R9 in
//! 64-bit mode, EDX into EBP (saved on the stack and restored after the trap) in 32-bit mode. So at the
//! hypercall-port trap the host reads control from RCX / EBP:EAX, input from R9 / EBX:ECX, output from R8 / EDI:ESI.
//! Upper register halves are ignored in 32-bit mode (they are not architecturally visible there).
//!
//! Pure logic over KVM's register structs: no ioctls here (the device glue reads and writes the registers).

use kvm_bindings::{kvm_regs, kvm_sregs};

use super::hypercall::{HvStatus, HypercallRegs};

/// EFER bit 10: long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// The calling convention of one hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallingConvention {
    /// 64-bit mode: RCX, RDX, R8 in; RAX out.
    Bits64,
    /// 32-bit code (protected mode or compatibility mode): EDX:EAX, EBX:ECX, EDI:ESI in; EDX:EAX out.
    Bits32,
}

impl CallingConvention {
    /// The convention of a caller in the state `sregs`: 64-bit only if both EFER.LMA and CS.L are set (TLFS: the
    /// hypervisor determines the caller's mode from these two flags).
    pub fn of(sregs: &kvm_sregs) -> Self {
        if sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0 {
            Self::Bits64
        } else {
            Self::Bits32
        }
    }

    /// The hypercall's registers at the hypercall-port trap (after the page moved RDX / EDX aside).
    pub fn decode_trap(self, regs: &kvm_regs) -> HypercallRegs {
        match self {
            Self::Bits64 => HypercallRegs {
                control: regs.rcx,
                input: regs.r9,
                output: regs.r8,
            },
            Self::Bits32 => HypercallRegs {
                control: join(regs.rbp, regs.rax),
                input: join(regs.rbx, regs.rcx),
                output: join(regs.rdi, regs.rsi),
            },
        }
    }

    /// Writes the result of a call trapped on the hypercall port: RAX, or EDX:EAX. (R11 too in 64-bit mode, which
    /// the ABI clobbers anyway, so both page paths see the same registers.)
    pub fn complete_trap(self, regs: &mut kvm_regs, result: HypercallResult) {
        let value = result.to_u64();
        match self {
            Self::Bits64 => {
                regs.rax = value;
                regs.r11 = value;
            }
            Self::Bits32 => {
                regs.rax = value & 0xFFFF_FFFF;
                regs.rdx = value >> 32;
            }
        }
    }

    /// Writes the status of a fast HvSignalEvent whose doorbell write reached user space into the register the
    /// page moves into the result after the doorbell `out`: R11 (then RAX) in 64-bit mode, ECX (then EAX, with
    /// EDX cleared by the page) in 32-bit mode. RAX / EAX is set as well.
    pub fn complete_doorbell(self, regs: &mut kvm_regs, status: HvStatus) {
        let value = HypercallResult::simple(status).to_u64();
        match self {
            Self::Bits64 => {
                regs.rax = value;
                regs.r11 = value;
            }
            Self::Bits32 => {
                regs.rax = value;
                regs.rcx = value;
                regs.rdx = 0;
            }
        }
    }
}

/// `hi:lo` from the low halves of two registers.
fn join(hi: u64, lo: u64) -> u64 {
    (hi << 32) | (lo & 0xFFFF_FFFF)
}

/// The 64-bit hypercall result value: status in bits 0–15, reps completed in bits 32–43, the rest zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypercallResult {
    /// Status of the call.
    pub status: HvStatus,
    /// For rep calls, the index up to which reps are complete (counted from the start of the list, not from the
    /// rep start index); 0 for simple calls.
    pub reps_completed: u16,
}

impl HypercallResult {
    /// Largest rep count the 12-bit field holds.
    pub const MAX_REPS: u16 = 0xFFF;

    /// The result of a simple (non-rep) call.
    pub fn simple(status: HvStatus) -> Self {
        Self {
            status,
            reps_completed: 0,
        }
    }

    /// The result value as the guest receives it (RAX, or EDX:EAX). Reps beyond 12 bits are cut to the field.
    pub fn to_u64(self) -> u64 {
        u64::from(self.status.0) | (u64::from(self.reps_completed & Self::MAX_REPS) << 32)
    }

    /// Splits a result value (what a guest sees).
    pub fn from_u64(v: u64) -> Self {
        Self {
            status: HvStatus(v as u16),
            reps_completed: ((v >> 32) as u16) & Self::MAX_REPS,
        }
    }
}

impl From<HvStatus> for HypercallResult {
    fn from(status: HvStatus) -> Self {
        Self::simple(status)
    }
}

#[cfg(test)]
mod tests;
