//! Hypercalls: status codes, the control word, the hypercall page code and the dispatch of HvPostMessage and
//! HvSignalEvent, validated the way Hyper-V validates guest input.
//!
//! # Hypercall page ABI
//! The guest calls offset 0 of its hypercall page. The page serves both x86 calling conventions; which one a call
//! uses follows the caller's mode (EFER.LMA and CS.L, see [`super::abi`]), never a configuration:
//! - **64-bit**: RCX = control (bits 0–15 call code, bit 16 fast), RDX = input GPA (or first fast argument),
//!   R8 = output GPA; the result comes back in RAX. Clobbers RCX, RDX, R8–R11 and flags, like Hyper-V's.
//! - **32-bit** (protected or compatibility mode): EDX:EAX = control, EBX:ECX = input GPA (or the 8-byte fast
//!   argument), EDI:ESI = output GPA; the result comes back in EDX:EAX. Clobbers ECX and flags; EBX, ESI, EDI and
//!   EBP are preserved.
//!
//! The page starts with a mode test valid in both modes (`push rax; xor eax, eax; 48 85 c0; pop rax; jnz`: the
//! `48` byte is a REX.W prefix of `test rax, rax` in 64-bit mode and `dec eax` before `test eax, eax` in 32-bit
//! mode) and branches to one body per mode. VMCALL cannot be used on this KVM (it answers unknown hypercalls
//! itself), so both bodies trap with port I/O:
//! - **fast HvSignalEvent** (control == 0x1005D and argument bits 32–63 zero): `out dx, eax` of the connection
//!   id to the *doorbell port*, after clearing the status register (R11, or ECX); then the status register is
//!   moved into the result. A connection id the host registered with KVM_IOEVENTFD + datamatch completes inside
//!   KVM (no user exit, status 0). Any other value exits to user space; the host writes the status into the
//!   status register.
//! - **everything else**: the page moves RDX into R9 (64-bit) or pushes EBP and moves EDX into it (32-bit), then
//!   `out dx, al` to the *hypercall port* (a user exit). The host decodes the registers by the caller's mode and
//!   writes the result value (status bits 0–15, reps completed bits 32–43) into RAX or EDX:EAX.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::memory::GuestRam;

/// Guest page size of the hypercall ABI.
pub const HV_PAGE_SIZE: u64 = 4096;

/// A Hyper-V hypercall status (`HV_STATUS`), an open set: unknown values are representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HvStatus(pub u16);

impl HvStatus {
    /// The operation succeeded.
    pub const SUCCESS: Self = Self(0x0000);
    /// The hypercall code is not recognised.
    pub const INVALID_HYPERCALL_CODE: Self = Self(0x0002);
    /// The control word has an invalid encoding (reserved bits, rep count on a simple call, unsupported fast).
    pub const INVALID_HYPERCALL_INPUT: Self = Self(0x0003);
    /// An input or output parameter is misaligned or crosses a page boundary.
    pub const INVALID_ALIGNMENT: Self = Self(0x0004);
    /// A parameter is invalid.
    pub const INVALID_PARAMETER: Self = Self(0x0005);
    /// The port identifier is invalid (HvSignalEvent with a non-zero flag number).
    pub const INVALID_PORT_ID: Self = Self(0x0011);
    /// The connection identifier is invalid.
    pub const INVALID_CONNECTION_ID: Self = Self(0x0012);
    /// There are insufficient buffers (the receiver's queue is full).
    pub const INSUFFICIENT_BUFFERS: Self = Self(0x0013);

    /// Whether this is [`HvStatus::SUCCESS`].
    pub fn is_success(self) -> bool {
        self == Self::SUCCESS
    }

    /// The value returned to the guest in RAX (status in bits 0–15, reps completed 0 for simple calls).
    pub fn to_rax(self) -> u64 {
        u64::from(self.0)
    }
}

/// HvPostMessage call code.
pub const HVCALL_POST_MESSAGE: u16 = 0x005C;
/// HvSignalEvent call code.
pub const HVCALL_SIGNAL_EVENT: u16 = 0x005D;
/// Control word bit 16: arguments in registers.
pub const CONTROL_FAST: u64 = 1 << 16;
/// The control word of a fast HvSignalEvent, the one the hypercall page sends to the doorbell.
pub const FAST_SIGNAL_EVENT_CONTROL: u64 = HVCALL_SIGNAL_EVENT as u64 | CONTROL_FAST;
/// Payload bytes of a SynIC message / HvPostMessage.
pub const HV_MESSAGE_PAYLOAD_SIZE: usize = 240;
/// Valid bits of a connection id (the rest are reserved-zero).
pub const CONNECTION_ID_MASK: u32 = 0x00FF_FFFF;

/// The hypercall input value in RCX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypercallControl(pub u64);

impl HypercallControl {
    /// Bits that are reserved in every control word: 27–31 (27 is "nested", not supported), 44–47, 60–63.
    const RESERVED: u64 = (0x1F << 27) | (0xF << 44) | (0xF << 60);

    /// Call code (bits 0–15).
    pub fn code(self) -> u16 {
        self.0 as u16
    }
    /// Fast (register-based) calling convention (bit 16).
    pub fn fast(self) -> bool {
        self.0 & CONTROL_FAST != 0
    }
    /// Variable header size in 8-byte units (bits 17–26).
    pub fn variable_header_size(self) -> u16 {
        ((self.0 >> 17) & 0x3FF) as u16
    }
    /// Rep count (bits 32–43).
    pub fn rep_count(self) -> u16 {
        ((self.0 >> 32) & 0xFFF) as u16
    }
    /// Rep start index (bits 48–59).
    pub fn rep_start(self) -> u16 {
        ((self.0 >> 48) & 0xFFF) as u16
    }
    /// Whether a reserved bit is set.
    pub fn has_reserved_bits(self) -> bool {
        self.0 & Self::RESERVED != 0
    }
    /// Validation common to simple (non-rep) calls without variable headers.
    fn check_simple(self) -> Result<(), HvStatus> {
        if self.has_reserved_bits()
            || self.rep_count() != 0
            || self.rep_start() != 0
            || self.variable_header_size() != 0
        {
            return Err(HvStatus::INVALID_HYPERCALL_INPUT);
        }
        Ok(())
    }
}

/// The registers of one hypercall, as the host reads them at the trap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypercallRegs {
    /// Control word (RCX).
    pub control: u64,
    /// Input GPA or first fast argument (RDX at the call, R9 at the hypercall-port trap).
    pub input: u64,
    /// Output GPA or second fast argument (R8).
    pub output: u64,
}

/// HvPostMessage input block (256 bytes, in guest memory at the input GPA).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PostMessageInput {
    /// Connection id (bits 0–23; the rest reserved).
    pub connection_id: u32,
    /// Reserved.
    pub reserved: u32,
    /// Message type (non-zero, below 0x80000000: the upper half is the hypervisor's).
    pub message_type: u32,
    /// Payload bytes used (≤ 240).
    pub payload_size: u32,
    /// Payload.
    pub payload: [u8; HV_MESSAGE_PAYLOAD_SIZE],
}

/// HvSignalEvent input (the fast argument, or 8 bytes at the input GPA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalEventInput {
    /// Connection id (bits 0–31 of the argument; bits 24–31 reserved).
    pub connection_id: u32,
    /// Flag number (bits 32–47).
    pub flag_number: u16,
    /// Reserved (bits 48–63).
    pub reserved: u16,
}

impl SignalEventInput {
    /// Splits the 64-bit argument.
    pub fn from_u64(v: u64) -> Self {
        Self {
            connection_id: v as u32,
            flag_number: (v >> 32) as u16,
            reserved: (v >> 48) as u16,
        }
    }
}

/// What hypercalls act on: the partition's connection table. Implementations must be cheap and never block on
/// the guest (they run on the calling vCPU's thread).
pub trait HypercallTarget {
    /// A validated HvPostMessage from `vp` (payload already cut to its size).
    fn post_message(
        &self,
        vp: u32,
        connection_id: u32,
        message_type: u32,
        payload: &[u8],
    ) -> HvStatus;
    /// A validated HvSignalEvent from `vp` (flag number 0, reserved bits clear).
    fn signal_event(&self, vp: u32, connection_id: u32) -> HvStatus;
}

/// Checks that `[gpa, gpa + len)` is 8-byte aligned and inside one page (TLFS: parameter blocks are 8-byte aligned
/// and never cross a page), then that it is RAM.
fn check_input_block(ram: &GuestRam, gpa: u64, len: u64) -> Result<(), HvStatus> {
    if !gpa.is_multiple_of(8) || (gpa % HV_PAGE_SIZE) + len > HV_PAGE_SIZE {
        tracing::warn!(
            gpa,
            len,
            "hypercall input block misaligned or crossing a page"
        );
        return Err(HvStatus::INVALID_ALIGNMENT);
    }
    if !ram.contains(gpa, len) {
        tracing::warn!(gpa, len, "hypercall input block is not guest RAM");
        return Err(HvStatus::INVALID_PARAMETER);
    }
    Ok(())
}

fn post_message(
    ram: &GuestRam,
    vp: u32,
    regs: HypercallRegs,
    target: &dyn HypercallTarget,
) -> HvStatus {
    let control = HypercallControl(regs.control);
    if let Err(s) = control.check_simple() {
        return s;
    }
    if control.fast() {
        // A 256-byte input needs the XMM fast convention, which we do not advertise.
        tracing::warn!(vp, "fast HvPostMessage is not supported");
        return HvStatus::INVALID_HYPERCALL_INPUT;
    }
    let len = core::mem::size_of::<PostMessageInput>() as u64;
    if let Err(s) = check_input_block(ram, regs.input, len) {
        return s;
    }
    let input: PostMessageInput = match ram.read_obj(regs.input) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(vp, error = %e, "HvPostMessage input unreadable");
            return HvStatus::INVALID_PARAMETER;
        }
    };
    let size = input.payload_size as usize;
    if size > HV_MESSAGE_PAYLOAD_SIZE {
        tracing::warn!(vp, size, "HvPostMessage payload too large");
        return HvStatus::INVALID_PARAMETER;
    }
    if input.message_type == 0 || input.message_type & 0x8000_0000 != 0 {
        tracing::warn!(
            vp,
            message_type = input.message_type,
            "HvPostMessage with a reserved message type"
        );
        return HvStatus::INVALID_PARAMETER;
    }
    target.post_message(
        vp,
        input.connection_id,
        input.message_type,
        &input.payload[..size],
    )
}

fn signal_event(
    ram: &GuestRam,
    vp: u32,
    regs: HypercallRegs,
    target: &dyn HypercallTarget,
) -> HvStatus {
    let control = HypercallControl(regs.control);
    if let Err(s) = control.check_simple() {
        return s;
    }
    let arg = if control.fast() {
        regs.input
    } else {
        if let Err(s) = check_input_block(ram, regs.input, 8) {
            return s;
        }
        match ram.read_u64(regs.input) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(vp, error = %e, "HvSignalEvent input unreadable");
                return HvStatus::INVALID_PARAMETER;
            }
        }
    };
    signal_event_arg(vp, arg, target)
}

/// HvSignalEvent with its 64-bit argument already in hand (the doorbell path and [`dispatch`]).
pub fn signal_event_arg(vp: u32, arg: u64, target: &dyn HypercallTarget) -> HvStatus {
    let input = SignalEventInput::from_u64(arg);
    if input.flag_number != 0 {
        // Our event ports carry exactly one flag; like KVM and QEMU report the lookup failure.
        tracing::warn!(
            vp,
            flag = input.flag_number,
            "HvSignalEvent with a non-zero flag number"
        );
        return HvStatus::INVALID_PORT_ID;
    }
    if input.reserved != 0 || input.connection_id & !CONNECTION_ID_MASK != 0 {
        tracing::warn!(vp, arg, "HvSignalEvent with reserved bits set");
        return HvStatus::INVALID_HYPERCALL_INPUT;
    }
    target.signal_event(vp, input.connection_id)
}

/// Dispatches one hypercall trapped on the hypercall port. Never panics on guest input; every rejection is logged.
pub fn dispatch(
    ram: &GuestRam,
    vp: u32,
    regs: HypercallRegs,
    target: &dyn HypercallTarget,
) -> HvStatus {
    match HypercallControl(regs.control).code() {
        HVCALL_POST_MESSAGE => post_message(ram, vp, regs, target),
        HVCALL_SIGNAL_EVENT => signal_event(ram, vp, regs, target),
        code => {
            tracing::warn!(vp, code, control = regs.control, "unknown hypercall code");
            HvStatus::INVALID_HYPERCALL_CODE
        }
    }
}

/// Ports the hypercall page traps on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypercallPorts {
    /// Every hypercall except fast HvSignalEvent exits here (1 byte written).
    pub hypercall: u16,
    /// Fast HvSignalEvent writes the connection id here (4 bytes); KVM_IOEVENTFD datamatch per connection.
    pub doorbell: u16,
}

/// Default ports: outside the ranges PC platforms and our serial/debug devices use.
pub const DEFAULT_PORTS: HypercallPorts = HypercallPorts {
    hypercall: 0x4850,
    doorbell: 0x4854,
};

/// Byte offset in the page of the 64-bit slow path (for tests and documentation).
pub const PAGE_SLOW_PATH_OFFSET: usize = 0x2A;
/// Byte offset in the page of the 32-bit body.
pub const PAGE_BITS32_OFFSET: usize = 0x34;
/// Byte offset in the page of the 32-bit slow path.
pub const PAGE_SLOW32_PATH_OFFSET: usize = 0x52;

/// The contents of the hypercall page for `ports`: the code at offset 0, the rest filled with `int3`.
pub fn hypercall_page(ports: HypercallPorts) -> [u8; HV_PAGE_SIZE as usize] {
    let [ctl0, ctl1, ctl2, _] = (FAST_SIGNAL_EVENT_CONTROL as u32).to_le_bytes();
    let [db0, db1] = ports.doorbell.to_le_bytes();
    let [hc0, hc1] = ports.hypercall.to_le_bytes();
    #[rustfmt::skip]
    let code: [u8; 0x5D] = [
        // Both modes: ZF = 1 in 64-bit mode, 0 in 32-bit mode; EAX / RAX restored.
        0x50,                                     // 00: push rax / push eax
        0x31, 0xC0,                               // 01: xor eax, eax
        0x48, 0x85, 0xC0,                         // 03: test rax, rax  |  dec eax; test eax, eax
        0x58,                                     // 06: pop rax / pop eax
        0x75, 0x2B,                               // 07: jnz bits32 (0x34)
        // 64-bit body.
        0x48, 0x81, 0xF9, ctl0, ctl1, ctl2, 0x00, // 09: cmp rcx, 0x1005D
        0x75, 0x18,                               // 10: jne slow64 (0x2a)
        0x49, 0x89, 0xD1,                         // 12: mov r9, rdx
        0x49, 0xC1, 0xE9, 0x20,                   // 15: shr r9, 32
        0x75, 0x0F,                               // 19: jnz slow64 (flag number or reserved bits set)
        0x89, 0xD0,                               // 1b: mov eax, edx          ; connection id
        0xBA, db0, db1, 0x00, 0x00,               // 1d: mov edx, doorbell
        0x45, 0x31, 0xDB,                         // 22: xor r11d, r11d        ; status if KVM completes it
        0xEF,                                     // 25: out dx, eax
        0x4C, 0x89, 0xD8,                         // 26: mov rax, r11
        0xC3,                                     // 29: ret
        0x49, 0x89, 0xD1,                         // 2a: slow64: mov r9, rdx   ; input GPA / fast arg
        0xBA, hc0, hc1, 0x00, 0x00,               // 2d: mov edx, hypercall port
        0xEE,                                     // 32: out dx, al           ; host sets RAX
        0xC3,                                     // 33: ret
        // 32-bit body.
        0x3D, ctl0, ctl1, ctl2, 0x00,             // 34: bits32: cmp eax, 0x1005D
        0x75, 0x17,                               // 39: jne slow32 (0x52)
        0x85, 0xD2,                               // 3b: test edx, edx         ; control high half
        0x75, 0x13,                               // 3d: jnz slow32
        0x85, 0xDB,                               // 3f: test ebx, ebx         ; flag number, reserved
        0x75, 0x0F,                               // 41: jnz slow32
        0x89, 0xC8,                               // 43: mov eax, ecx          ; connection id
        0x31, 0xC9,                               // 45: xor ecx, ecx          ; status if KVM completes it
        0xBA, db0, db1, 0x00, 0x00,               // 47: mov edx, doorbell
        0xEF,                                     // 4c: out dx, eax
        0x89, 0xC8,                               // 4d: mov eax, ecx
        0x31, 0xD2,                               // 4f: xor edx, edx
        0xC3,                                     // 51: ret
        0x55,                                     // 52: slow32: push ebp
        0x89, 0xD5,                               // 53: mov ebp, edx          ; control high half
        0xBA, hc0, hc1, 0x00, 0x00,               // 55: mov edx, hypercall port
        0xEE,                                     // 5a: out dx, al           ; host sets EDX:EAX
        0x5D,                                     // 5b: pop ebp
        0xC3,                                     // 5c: ret
    ];
    let mut page = [0xCC; HV_PAGE_SIZE as usize];
    page[..code.len()].copy_from_slice(&code);
    page
}

#[cfg(test)]
mod tests;
