//! CPL3 side of the hardware boundary: port I/O (allowed by the TSS I/O bitmap), the `int3` service gate
//! into the CPL0 shim (rdmsr, wrmsr, halt, IPIs), CPUID from the shim's boot snapshot, the per-CPU blocks
//! (the interrupt counters the shim's stubs maintain on each CPU) and which CPU the caller runs on.

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
const SYS_IPI: u64 = 5;

/// CPUs the kernel runs on at most (VPs beyond park in the shim).
pub const MAX_CPUS: usize = 4;
/// log2 of a per-CPU block's size (and alignment).
pub const PERCPU_SHIFT: u32 = 15;
/// Bytes of one per-CPU block: data page, IST1 stack, kernel stack (see shim.s).
pub const PERCPU_SIZE: usize = 1 << PERCPU_SHIFT;
/// Offset in a per-CPU block of the CPU's interrupt total (u64).
pub const PERCPU_IRQ_TOTAL: usize = 0;
/// Offset of the CPU's VP index (u64, written by the shim).
pub const PERCPU_VP: usize = 8;
/// Offset of the CPU's per-vector interrupt counts (256 × u64).
pub const PERCPU_IRQ_COUNTS: usize = 16;
/// log2 of one CPU's user stack size (and alignment).
pub const USTACK_SHIFT: u32 = 18;

extern "C" {
    static percpu: [AtomicU64; PERCPU_SIZE * MAX_CPUS / 8];
    /// Only its address is used (each CPU's stack pointer lies in it).
    static user_stacks: u8;
    static smp_cpu_count: u32;
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

/// CPUs running the kernel (the BSP and the APs the shim started): 1..=[`MAX_CPUS`].
pub fn cpu_count() -> usize {
    // SAFETY: written once by the BSP's shim before any CPU enters Rust, never again.
    let n = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(smp_cpu_count)) };
    (n as usize).clamp(1, MAX_CPUS)
}

/// The VP index of the CPU the caller runs on. Each CPU runs Rust on its own user stack, one of
/// [`MAX_CPUS`] adjacent stacks of `1 << USTACK_SHIFT` bytes set up by the shim: the stack pointer says
/// which (no exit, no gate).
pub fn current_vp() -> usize {
    let rsp: usize;
    // SAFETY: reads the stack pointer only.
    unsafe { asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags)) };
    let base = core::ptr::addr_of!(user_stacks) as usize;
    (rsp.wrapping_sub(base) >> USTACK_SHIFT).min(MAX_CPUS - 1)
}

/// Word `offset` of CPU `vp`'s per-CPU block.
fn percpu_word(vp: usize, offset: usize) -> &'static AtomicU64 {
    assert!(
        vp < MAX_CPUS && offset.is_multiple_of(8) && offset + 8 <= PERCPU_IRQ_COUNTS + 256 * 8,
        "per-CPU word {offset:#x} of VP {vp}"
    );
    // SAFETY: the shim's per-CPU blocks, u64 words it updates only with `lock inc` (or writes once before
    // the CPU enters Rust); the index is in bounds (checked above; indexing checks again).
    let words = unsafe { &*core::ptr::addr_of!(percpu) };
    &words[(vp * PERCPU_SIZE + offset) / 8]
}

/// Interrupts the calling CPU took since boot.
pub fn interrupts_total() -> u64 {
    interrupts_total_of(current_vp())
}

/// Interrupts CPU `vp` took since boot.
pub fn interrupts_total_of(vp: usize) -> u64 {
    percpu_word(vp, PERCPU_IRQ_TOTAL).load(Ordering::Acquire)
}

/// Interrupts the calling CPU took on one vector since boot.
pub fn interrupts_on(vector: u8) -> u64 {
    interrupts_on_vp(current_vp(), vector)
}

/// Interrupts CPU `vp` took on one vector since boot.
pub fn interrupts_on_vp(vp: usize, vector: u8) -> u64 {
    percpu_word(vp, PERCPU_IRQ_COUNTS + 8 * usize::from(vector)).load(Ordering::Acquire)
}

/// The VP index the shim recorded for CPU `vp` (equal to `vp` once that CPU is up, 0 before).
pub fn recorded_vp(vp: usize) -> u64 {
    percpu_word(vp, PERCPU_VP).load(Ordering::Acquire)
}

/// Sleep until an interrupt arrives on the calling CPU, unless one arrived after the caller read
/// `seen_total` (its [`interrupts_total`]). Returns the new interrupt total.
pub fn halt(seen_total: u64) -> u64 {
    gate(SYS_HALT, seen_total, 0)
}

/// Send interrupt `vector` to the CPU whose APIC id is `apic_id` (= its VP index here).
pub fn send_ipi(apic_id: u32, vector: u8) {
    gate(SYS_IPI, apic_id.into(), vector.into());
}

/// End the guest with an exit code.
pub fn exit(code: u32) -> ! {
    loop {
        outl(EXIT_PORT, code);
    }
}
