//! The CPL0 shim (`shim.s`, see its header) assembled with the constants it shares with the Rust
//! side: where the boot info and its RAM layout are, how much the page tables map, the fault port
//! and the per-CPU block layout. One file, so every kernel built on this runtime (this one and the
//! guest SDK's example) assembles the same shim.

use core::arch::global_asm;

use guest_abi::{BootInfo, BOOT_INFO_GPA, FAULT_PORT};

use crate::{arch, heap};

global_asm!(
    include_str!("shim.s"),
    BOOT_INFO = const BOOT_INFO_GPA,
    BOOT_HIGH_RAM_END = const BOOT_INFO_GPA + core::mem::offset_of!(BootInfo, high_ram_end) as u64,
    PT_MAX_GIB = const heap::IDENTITY_MAP_LIMIT >> 30,
    FAULT_PORT = const FAULT_PORT,
    MAX_CPUS = const arch::MAX_CPUS,
    PERCPU_SIZE = const arch::PERCPU_SIZE,
    PERCPU_SHIFT = const arch::PERCPU_SHIFT,
    PERCPU_IRQ_TOTAL = const arch::PERCPU_IRQ_TOTAL,
    PERCPU_VP = const arch::PERCPU_VP,
    PERCPU_IRQ_COUNTS = const arch::PERCPU_IRQ_COUNTS,
    USTACK_SHIFT = const arch::USTACK_SHIFT,
);
