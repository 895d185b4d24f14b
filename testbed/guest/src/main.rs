//! The viridian guest kernel: a freestanding x86-64 kernel whose CPL0 part is the tiny asm shim in
//! `shim.s` and whose Rust part runs entirely at CPL3 (this machine's KVM emulates CPL0 code).
//!
//! Boot: hypervisor-lite enters `_start` in long mode with RDI = VP index; the host has written a
//! [`BootInfo`] at [`BOOT_INFO_GPA`]. The shim sets up paging, descriptor tables and the service gate, then `iretq`s
//! to [`kernel_main`] at CPL3.
//! The host gives the kernel a command line of scenarios in the boot info; the kernel runs them in
//! order, reports through a shared-memory log and ends with an exit code on [`arch::EXIT_PORT`].
#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod block_bench;
mod console;
mod heap;
mod parking;
mod platform;
mod rt;
mod scenario;
mod vmbus_disk;
mod vmbus_global;

use core::arch::global_asm;

global_asm!(include_str!("shim.s"));

/// What the host hands the kernel at boot (at the GPA in RSI). Little-endian, fixed layout.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// Bytes of guest RAM starting at GPA 0 that the kernel may use.
    pub ram_bytes: u64,
    /// GPA and length of the command line (ASCII scenario names separated by spaces).
    pub cmdline_gpa: u64,
    pub cmdline_len: u64,
    /// GPA and length of the shared-memory log (see `console`); length 0: log to COM1.
    pub log_gpa: u64,
    pub log_len: u64,
}

/// Where the host writes [`BootInfo`] (below the kernel image, above hypervisor-lite's boot area).
pub const BOOT_INFO_GPA: u64 = 0xe_0000;

/// "VIRIDIAN" as a little-endian u64.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"VIRIDIAN");

/// Rust entry at CPL3, called (by `iretq`) with the boot-info GPA.
#[no_mangle]
extern "C" fn kernel_main(boot_info: u64) -> ! {
    // SAFETY: the host placed a `BootInfo` at this identity-mapped GPA before starting the VP; a wrong
    // magic is rejected below before any other field is trusted.
    let info = unsafe { core::ptr::read_volatile(boot_info as *const BootInfo) };
    if info.magic != BOOT_MAGIC {
        console::write_str("viridian-guest: bad boot info magic\n");
        arch::exit(0xbad);
    }
    console::init_log(info.log_gpa, info.log_len);
    heap::init(info.ram_bytes);
    // SAFETY: the host wrote `cmdline_len` ASCII bytes at `cmdline_gpa`, inside guest RAM.
    let cmdline = unsafe {
        core::slice::from_raw_parts(info.cmdline_gpa as *const u8, info.cmdline_len as usize)
    };
    let cmdline = core::str::from_utf8(cmdline).unwrap_or("");
    let code = scenario::run_all(cmdline);
    arch::exit(code);
}
