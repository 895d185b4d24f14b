//! Guest port I/O against the emulated IDE controller (`IdeController::io_read`/`io_write`, the
//! entry points the port-exit glue calls) whose primary master is a 64 KiB RAM disk. The device does
//! PIO only (no bus-master DMA), so no guest memory is involved.
//!
//! Input: a setup byte (bit 0: read-only disk, bit 1: no interrupt line), then steps `[op, port
//! selector, ...]`: a read or write of width 1, 2 or 4 or a string access (`rep insw/outsw/insd`
//! handed over as one access of up to 1 KiB) on a command-block port, the control port or any
//! port; or a whole command issued register by register (device, count, LBA, command, from the
//! ATA commands the device knows or any byte). Nothing may panic, and the status register must
//! show BSY only while the guest holds SRST (every command completes synchronously).
#![no_main]

use std::sync::Arc;

use host_vsp::backend::{BlockBackend, RamDisk};
use host_vsp::emulated::ide::channel::{cmd, control, status};
use host_vsp::emulated::ide::IdeController;
use host_vsp_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const DISK_BYTES: usize = 64 * 1024;
const COMMANDS: [u8; 11] = [
    cmd::READ_SECTORS,
    cmd::READ_SECTORS_EXT,
    cmd::WRITE_SECTORS,
    cmd::WRITE_SECTORS_EXT,
    cmd::EXECUTE_DIAGNOSTIC,
    cmd::FLUSH_CACHE,
    cmd::FLUSH_CACHE_EXT,
    cmd::IDENTIFY,
    cmd::SET_FEATURES,
    0xC4, // READ MULTIPLE (not implemented)
    0xC8, // READ DMA (not implemented)
];

fn port(input: &mut Input<'_>) -> u16 {
    match input.u8() {
        s @ 0..=7 => 0x1F0 + u16::from(s),
        8 | 9 => 0x3F6,
        s @ 10..=239 => 0x1F0 + u16::from(s % 8),
        _ => input.u16(),
    }
}

fn issue(ide: &IdeController, input: &mut Input<'_>) {
    let [device, count, lba0, lba1, lba2, command] = input.array::<6>();
    let command = COMMANDS
        .get(usize::from(command))
        .copied()
        .unwrap_or(command);
    for (port, value) in [
        (0x1F6, 0x40 | device),
        (0x1F2, count),
        (0x1F3, lba0),
        (0x1F4, lba1),
        (0x1F5, lba2),
        (0x1F7, command),
    ] {
        ide.io_write(port, &[value]);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let setup = input.u8();
    let disk: Arc<dyn BlockBackend> = if setup & 1 != 0 {
        Arc::new(RamDisk::read_only_from(vec![0x5A; DISK_BYTES]))
    } else {
        Arc::new(RamDisk::new(DISK_BYTES as u64))
    };
    let ide = IdeController::new(disk);
    if setup & 2 == 0 {
        ide.connect_interrupt(Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()))
            .unwrap();
    }
    let mut buf = [0u8; 1024];
    let mut reset_held = false;
    while !input.is_empty() {
        let op = input.u8();
        if op >= 0xF0 {
            issue(&ide, &mut input);
            continue;
        }
        let port = port(&mut input);
        let width = match (op >> 1) % 4 {
            0 => 1,
            1 => 2,
            2 => 4,
            _ => (usize::from(input.u8()) + 1) * if op & 0x10 != 0 { 4 } else { 2 },
        };
        let access = &mut buf[..width];
        if op & 1 == 0 {
            access.fill(0);
            let bytes = input.bytes(width);
            access[..bytes.len()].copy_from_slice(bytes);
            ide.io_write(port, access);
            if port == 0x3F6 {
                reset_held = access[0] & control::SRST != 0;
            }
        } else {
            ide.io_read(port, access);
            if port == 0x1F7 || port == 0x3F6 {
                let busy = access[0] & status::BSY != 0;
                assert!(!busy || reset_held, "BSY without SRST: {:#x}", access[0]);
            }
        }
    }
});
