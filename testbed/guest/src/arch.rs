//! CPL3 side of the hardware boundary: port I/O (allowed by the TSS I/O bitmap), the SYSCALL gates into
//! the CPL0 shim (rdmsr, wrmsr, cpuid, halt) and the interrupt counters the shim's stubs maintain.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// Writing a u32 here ends the guest with that exit code.
pub const EXIT_PORT: u16 = 0x501;

const SYS_RDMSR: u64 = 1;
const SYS_WRMSR: u64 = 2;
const SYS_CPUID: u64 = 3;
const SYS_HALT: u64 = 4;

extern "C" {
    static irq_counts: [AtomicU64; 256];
    static irq_total: AtomicU64;
}

/// Write one byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects on this process; the TSS I/O bitmap permits it at CPL3.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) };
}

/// Write a u32 to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) };
}

fn syscall(nr: u64, a0: u64, a1: u64) -> u64 {
    let ret: u64;
    // SAFETY: the shim's SYSCALL gate preserves every register except rax (result), rcx and r11 (used by
    // SYSCALL/SYSRET) and, for cpuid, rdi/rsi/rdx which we declare clobbered here too.
    unsafe {
        asm!("syscall", inlateout("rax") nr => ret, inlateout("rdi") a0 => _, inlateout("rsi") a1 => _,
             lateout("rdx") _, lateout("rcx") _, lateout("r11") _, options(nostack))
    };
    ret
}

/// Read a model-specific register (through CPL0).
pub fn rdmsr(msr: u32) -> u64 {
    syscall(SYS_RDMSR, msr.into(), 0)
}

/// Write a model-specific register (through CPL0).
pub fn wrmsr(msr: u32, value: u64) {
    syscall(SYS_WRMSR, msr.into(), value);
}

/// CPUID as the hypervisor defines it: it must run at CPL0 (at CPL3 this KVM returns the host's values).
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let (a, b, c, d): (u64, u64, u64, u64);
    // SAFETY: see `syscall`; the gate returns eax, ebx, ecx, edx in rax, rdi, rsi, rdx.
    unsafe {
        asm!("syscall", inlateout("rax") SYS_CPUID => a, inlateout("rdi") u64::from(leaf) => b,
             inlateout("rsi") u64::from(subleaf) => c, lateout("rdx") d, lateout("rcx") _, lateout("r11") _,
             options(nostack))
    };
    [a as u32, b as u32, c as u32, d as u32]
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
    syscall(SYS_HALT, seen_total, 0)
}

/// End the guest with an exit code.
pub fn exit(code: u32) -> ! {
    loop {
        outl(EXIT_PORT, code);
    }
}
