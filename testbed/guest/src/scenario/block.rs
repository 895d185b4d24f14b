//! Block baselines: `ata-verify:<sectors>[,word|dword|string]` (emulated IDE disk, polled PIO) and
//! `virtio-verify:<sectors>[,poll]` (virtio-blk over virtio-mmio at 0xD0000000, batched, completion by
//! interrupt on vector 0x50 unless `poll`). Each writes a deterministic pattern over the first `<sectors>`
//! sectors in 4 KiB I/Os, flushes, reads it back and verifies it. The host delimits the measured phases with
//! marks: ATA 0xA1 (writes start) / 0xA2 (writes done, reads start) / 0xA3 (reads done); virtio 0xB1 / 0xB2 /
//! 0xB3. Results are printed as `key=value` lines.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use guest_drivers::ata::{AtaDisk, PioWidth, X86PortIo};
use guest_drivers::platform::Platform;
use guest_drivers::virtio_blk::{Completion, IdentityMapped, VirtioBlk};

use super::Outcome;
use crate::platform::Kernel;
use crate::{arch, println};

/// Where the host places the virtio-blk MMIO window.
pub const VIRTIO_BLK_GPA: u64 = 0xD000_0000;
/// Its size.
pub const VIRTIO_BLK_WINDOW: usize = 0x1000;
/// The vector the host delivers virtio-blk completions on.
pub const VIRTIO_BLK_VECTOR: u8 = 0x50;
/// Pattern seeds (the host test computes the same bytes).
pub const ATA_SEED: u8 = 0xA5;
/// See [`ATA_SEED`].
pub const VIRTIO_SEED: u8 = 0x5A;
const IO_BYTES: usize = 4096;
const IO_SECTORS: u64 = (IO_BYTES / 512) as u64;

// SAFETY: this kernel identity-maps the first 4 GiB (RAM, the heap and stacks in it, and the MMIO hole)
// and the RAM above them, so every virtual address the drivers use is its physical address.
unsafe impl IdentityMapped for Kernel {
    fn platform() -> Self {
        Kernel
    }
}

/// Run `name` if it is a block scenario.
pub fn run(name: &str, args: &str) -> Option<Outcome> {
    match name {
        "ata-verify" => Some(ata_verify(args)),
        "virtio-verify" => Some(virtio_verify(args)),
        _ => None,
    }
}

/// Byte `i` of sector `lba` of the test pattern.
pub fn pattern_byte(seed: u8, lba: u64, i: usize) -> u8 {
    (lba.wrapping_mul(131) ^ (lba >> 8) ^ (i as u64).wrapping_mul(7)) as u8 ^ seed
}

fn fill(seed: u8, lba: u64, buf: &mut [u8]) {
    for (s, sector) in buf.chunks_mut(512).enumerate() {
        for (i, b) in sector.iter_mut().enumerate() {
            *b = pattern_byte(seed, lba + s as u64, i);
        }
    }
}

fn verify(seed: u8, lba: u64, buf: &[u8]) -> Outcome {
    let mut want = vec![0u8; buf.len()];
    fill(seed, lba, &mut want);
    match buf.iter().zip(&want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(at) => Err(format!(
            "mismatch at sector {} byte {}: {:#x} != {:#x}",
            lba + (at / 512) as u64,
            at % 512,
            buf[at],
            want[at]
        )),
    }
}

/// `<sectors>[,option]`: the sector count (a positive multiple of 8) and an optional word.
fn parse(args: &str) -> Result<(u64, &str), String> {
    let (n, opt) = args.split_once(',').unwrap_or((args, ""));
    let sectors: u64 = n.parse().map_err(|_| format!("bad sector count `{n}`"))?;
    if sectors == 0 || !sectors.is_multiple_of(IO_SECTORS) {
        return Err(format!(
            "sector count {sectors} is not a positive multiple of {IO_SECTORS}"
        ));
    }
    Ok((sectors, opt))
}

fn ata_verify(args: &str) -> Outcome {
    let (sectors, opt) = parse(args)?;
    let width = match opt {
        "" | "string" => PioWidth::String,
        "word" => PioWidth::Word,
        "dword" => PioWidth::Dword,
        other => return Err(format!("unknown PIO width `{other}`")),
    };
    let mut disk = AtaDisk::probe(X86PortIo, width).map_err(|e| e.to_string())?;
    println!(
        "ata-model={} ata-sectors={} ata-lba48={}",
        disk.model(),
        disk.sectors(),
        disk.lba48()
    );
    if disk.sectors() < sectors {
        return Err(format!("disk has only {} sectors", disk.sectors()));
    }
    let ios = sectors / IO_SECTORS;
    let mut buf = vec![0u8; IO_BYTES];
    arch::mark(0xA1);
    for io in 0..ios {
        let lba = io * IO_SECTORS;
        fill(ATA_SEED, lba, &mut buf);
        disk.write(lba, &buf).map_err(|e| e.to_string())?;
    }
    arch::mark(0xA2);
    for io in 0..ios {
        let lba = io * IO_SECTORS;
        buf.fill(0);
        disk.read(lba, &mut buf).map_err(|e| e.to_string())?;
        verify(ATA_SEED, lba, &buf)?;
    }
    arch::mark(0xA3);
    disk.flush().map_err(|e| e.to_string())?;
    // Past the end: the device must refuse it (the driver checks first; ask the device directly too).
    if disk.read(disk.sectors(), &mut buf).is_ok() {
        return Err("read past the end succeeded".into());
    }
    println!("ata-ios={ios}");
    Ok(())
}

fn virtio_verify(args: &str) -> Outcome {
    let (sectors, opt) = parse(args)?;
    let wait = match opt {
        "" | "irq" => Completion::Interrupt,
        "poll" => Completion::Poll,
        other => return Err(format!("unknown completion mode `{other}`")),
    };
    // SAFETY: the host maps the virtio-blk window at this GPA (identity mapped, used by nothing else).
    let mut disk = unsafe { VirtioBlk::<Kernel>::probe(VIRTIO_BLK_GPA, VIRTIO_BLK_WINDOW) }
        .map_err(|e| e.to_string())?;
    let id = disk.device_id().map_err(|e| e.to_string())?;
    println!(
        "virtio-id={} virtio-sectors={} virtio-queue={} virtio-depth={} virtio-features={:#x}",
        core::str::from_utf8(&id).unwrap_or("?"),
        disk.capacity(),
        disk.queue_size(),
        disk.max_in_flight(),
        disk.features()
    );
    if disk.capacity() < sectors {
        return Err(format!("disk has only {} sectors", disk.capacity()));
    }
    let ios = (sectors / IO_SECTORS) as usize;
    let mut bufs: Vec<Vec<u8>> = (0..ios)
        .map(|io| {
            let mut b = vec![0u8; IO_BYTES];
            fill(VIRTIO_SEED, io as u64 * IO_SECTORS, &mut b);
            b
        })
        .collect();
    let irqs_before = Kernel.interrupt_count(VIRTIO_BLK_VECTOR);
    let doorbells_before = disk.doorbells();
    arch::mark(0xB1);
    let w = disk
        .write_batch(0, &mut bufs, wait)
        .map_err(|e| e.to_string())?;
    arch::mark(0xB2);
    for b in bufs.iter_mut() {
        b.fill(0);
    }
    let r = disk
        .read_batch(0, &mut bufs, wait)
        .map_err(|e| e.to_string())?;
    arch::mark(0xB3);
    let irqs = Kernel.interrupt_count(VIRTIO_BLK_VECTOR) - irqs_before;
    let doorbells = disk.doorbells() - doorbells_before;
    disk.flush().map_err(|e| e.to_string())?;
    for (io, b) in bufs.iter().enumerate() {
        verify(VIRTIO_SEED, io as u64 * IO_SECTORS, b)?;
    }
    // A blocking single request, and one past the end that the device must fail.
    let mut one = vec![0u8; 512];
    disk.read(0, &mut one).map_err(|e| e.to_string())?;
    verify(VIRTIO_SEED, 0, &one)?;
    if disk.read(disk.capacity(), &mut one).is_ok() {
        return Err("read past the end succeeded".into());
    }
    println!(
        "virtio-ios={ios} virtio-irqs={irqs} virtio-doorbells={doorbells} virtio-sleeps={} \
         virtio-inflight={}",
        w.sleeps + r.sleeps,
        w.max_in_flight.max(r.max_in_flight)
    );
    Ok(())
}
