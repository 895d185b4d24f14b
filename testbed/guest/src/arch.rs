//! CPL3 side of the hardware boundary: port I/O (allowed by the TSS I/O bitmap), the `int3` service gate
//! into the CPL0 shim (rdmsr, wrmsr, halt), CPUID from the shim's boot snapshot, and the interrupt counters the
//! shim's stubs maintain.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

pub use guest_abi::MARK_PORT;

/// Mark a point in the guest's execution for the host's measurement (one exit).
pub fn mark(id: u32) {
    outl(MARK_PORT, id);
}

/// Writing a u32 here ends the guest with that exit code.
pub const EXIT_PORT: u16 = 0xf4;

const SYS_RDMSR: u64 = 1;
const SYS_WRMSR: u64 = 2;
const SYS_HALT: u64 = 4;

extern "C" {
    static irq_counts: [AtomicU64; 256];
    static irq_total: AtomicU64;
    static cpuid_table: [[u32; 5]; 7];
}

/// Write one byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects on this process; the TSS I/O bitmap permits it at CPL3.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Write a u32 to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Enter the CPL0 service gate (`int3`, ≈ 10 µs round trip here).
fn gate(nr: u64, a0: u64, a1: u64) -> u64 {
    let ret: u64;
    // SAFETY: the shim's int3 gate preserves every register except rax (result) and rdi/rsi/rdx (arguments,
    // declared clobbered); it returns with IRETQ to the next instruction.
    unsafe {
        asm!("int3", inlateout("rax") nr => ret, inlateout("rdi") a0 => _, inlateout("rsi") a1 => _,
             lateout("rdx") _)
    };
    ret
}

/// Read a model-specific register (through CPL0).
pub fn rdmsr(msr: u32) -> u64 {
    gate(SYS_RDMSR, msr.into(), 0)
}

/// Write a model-specific register (through CPL0).
pub fn wrmsr(msr: u32, value: u64) {
    gate(SYS_WRMSR, msr.into(), value);
}

/// CPUID as the hypervisor defines it. The shim snapshots leaf 1 and the hypervisor leaves at boot, while
/// KVM still emulates its CPL0 code (only emulated CPUID sees KVM_SET_CPUID2's values; CPUID executed later —
/// natively, at either privilege level — returns the real machine's). Other leaves run CPUID directly.
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    // SAFETY: `cpuid_table` is written once by the shim before Rust starts and never again.
    let table = unsafe { &*core::ptr::addr_of!(cpuid_table) };
    if let Some(row) = table.iter().find(|row| row[0] == leaf && subleaf == 0) {
        return [row[1], row[2], row[3], row[4]];
    }
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Total interrupts taken since boot.
pub fn interrupts_total() -> u64 {
    // SAFETY: `irq_total` is a u64 in the shim's .bss, only ever updated with `lock inc`.
    unsafe { irq_total.load(Ordering::Acquire) }
}

/// Interrupts taken on one vector since boot.
pub fn interrupts_on(vector: u8) -> u64 {
    // SAFETY: as for `interrupts_total`.
    unsafe { irq_counts[usize::from(vector)].load(Ordering::Acquire) }
}

/// Sleep until an interrupt arrives, unless one arrived after the caller read `seen_total`.
/// Returns the new interrupt total.
pub fn halt(seen_total: u64) -> u64 {
    gate(SYS_HALT, seen_total, 0)
}

/// End the guest with an exit code.
pub fn exit(code: u32) -> ! {
    loop {
        outl(EXIT_PORT, code);
    }
}
