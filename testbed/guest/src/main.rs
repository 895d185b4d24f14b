//! The viridian guest kernel: a freestanding x86-64 kernel whose CPL0 part is the tiny asm shim in
//! `shim.s` and whose Rust part runs entirely at CPL3 (this machine's KVM emulates CPL0 code).
//!
//! Boot: hypervisor-lite enters `_start` on every VP in long mode with RDI = VP index, RSI = VP count; the
//! host has written a [`BootInfo`] at [`BOOT_INFO_GPA`]. The shim sets up paging, descriptor tables and the
//! service gate, then `iretq`s to [`kernel_main`] at CPL3 on the BSP and to [`smp::ap_main`] on each AP.
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
mod shim;
mod smp;
mod vmbus_disk;
mod vmbus_global;

pub use guest_abi::{BootInfo, BOOT_INFO_GPA, BOOT_MAGIC, FAULT_PORT};

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
    heap::init(&info);
    smp::wait_online();
    // SAFETY: the host wrote `cmdline_len` ASCII bytes at `cmdline_gpa`, inside guest RAM.
    let cmdline = unsafe {
        core::slice::from_raw_parts(info.cmdline_gpa as *const u8, info.cmdline_len as usize)
    };
    let cmdline = core::str::from_utf8(cmdline).unwrap_or("");
    let code = scenario::run_all(cmdline);
    arch::exit(code);
}
