//! `above4g:ios=<n>,kib=<k>`: storage I/O from guest RAM above 4 GiB. With every DMA allocation placed
//! above 4 GiB ([`DmaPlacement::Above4G`]), opens SCSI controller 0 on the kernel's VMBus connection (so its
//! ring GPADL names pages above 4 GiB), writes the pattern [`guest_abi::above_4g::pattern`] of the disk's
//! byte offsets from `n` buffers of `k` KiB (one region above 4 GiB, the requests all outstanding at once)
//! to the disk from byte 0 on, reads it back into a second such region, checks every byte and closes the
//! channel. Prints `above4g-ring-gpa=`, `above4g-write-gpa=` and `above4g-read-gpa=` (first byte of each
//! region, hex) and `above4g-verified=` (bytes checked).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use guest_abi::above_4g::pattern;
use guest_drivers::platform::{DmaRegion, Platform, PAGE_SIZE};
use guest_drivers::storvsc::Completion;
use guest_drivers::storvsc_disk::StorvscDisk;
use vmbus::protocol::interface;

use super::Outcome;
use crate::platform::{with_dma_placement, DmaPlacement, Kernel};
use crate::println;
use crate::vmbus_global::{with_connection, KERNEL};

/// Ring pages per direction (control page included).
const RING_PAGES: usize = 16;
/// At most this many requests per phase.
const MAX_IOS: usize = 64;
/// 4 GiB: every GPA this scenario hands the host must be at or above it.
const FOUR_GIB: u64 = 1 << 32;

/// Run `name` if it is this scenario.
pub fn run(name: &str, args: &str) -> Option<Outcome> {
    match name {
        "above4g" => Some(above_4g(args)),
        _ => None,
    }
}

fn parse(args: &str) -> Result<(usize, usize), String> {
    let (mut ios, mut kib) = (8, 64);
    for arg in args.split(',').filter(|a| !a.is_empty()) {
        let (key, value) = arg.split_once('=').ok_or(format!("bad argument `{arg}`"))?;
        let value: usize = value
            .parse()
            .map_err(|_| format!("bad number in `{arg}`"))?;
        match key {
            "ios" => ios = value,
            "kib" => kib = value,
            _ => return Err(format!("unknown argument `{key}`")),
        }
    }
    if ios == 0 || ios > MAX_IOS || kib == 0 || kib % 4 != 0 {
        return Err(format!(
            "need 1..={MAX_IOS} I/Os of a positive multiple of 4 KiB"
        ));
    }
    Ok((ios, kib))
}

fn above_4g(args: &str) -> Outcome {
    let (ios, kib) = parse(args)?;
    // Connect first, below 4 GiB (the SynIC and hypercall pages): only the disk's memory moves up.
    with_dma_placement(DmaPlacement::Below4G, || with_connection(|_| ()))?;
    with_dma_placement(DmaPlacement::Above4G, || {
        with_connection(|conn| {
            let relid = conn
                .primary_offers(interface::SCSI)
                .first()
                .map(|o| o.child_relid)
                .ok_or("no SCSI controller offered")?;
            let mut disk = StorvscDisk::open(conn, &KERNEL, relid, RING_PAGES, ios, 0)
                .map_err(|e| format!("storvsc: {e}"))?;
            let result = io_above_4g(&mut disk, ios, kib * 1024);
            let closed = disk.close(conn).map_err(|e| format!("closing: {e}"));
            result.and(closed)
        })?
    })
}

fn io_above_4g(disk: &mut StorvscDisk, ios: usize, len: usize) -> Outcome {
    let ring = disk.ring_gpa();
    println!("above4g-ring-gpa={ring:#x}");
    if ring < FOUR_GIB {
        return Err(format!("ring at {ring:#x}, below 4 GiB"));
    }
    if len > disk.max_transfer_bytes() as usize {
        return Err(format!(
            "{len}-byte I/Os exceed the host's {}",
            disk.max_transfer_bytes()
        ));
    }
    let total = ios * len;
    if (total / disk.block_size() as usize) as u64 > disk.blocks() {
        return Err(format!("the disk has fewer than {total} bytes"));
    }
    let pages = total.div_ceil(PAGE_SIZE);
    let write = Kernel.alloc_dma(pages).ok_or("no memory above 4 GiB")?;
    let Some(read) = Kernel.alloc_dma(pages) else {
        Kernel.free_dma(write);
        return Err("no memory above 4 GiB".to_string());
    };
    let result = transfer(disk, &write, &read, ios, len);
    Kernel.free_dma(write);
    Kernel.free_dma(read);
    result
}

fn transfer(
    disk: &mut StorvscDisk,
    write: &DmaRegion,
    read: &DmaRegion,
    ios: usize,
    len: usize,
) -> Outcome {
    println!(
        "above4g-write-gpa={:#x} above4g-read-gpa={:#x}",
        write.pa, read.pa
    );
    if write.pa < FOUR_GIB || read.pa < FOUR_GIB {
        return Err("an I/O buffer is below 4 GiB".into());
    }
    let total = ios * len;
    let mut chunk = vec![0u8; PAGE_SIZE];
    for at in (0..total).step_by(PAGE_SIZE) {
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = pattern((at + i) as u64);
        }
        write.write(at, &chunk);
    }
    phase(disk, true, write.pa, ios, len)?;
    phase(disk, false, read.pa, ios, len)?;
    for at in (0..total).step_by(PAGE_SIZE) {
        read.read(at, &mut chunk);
        if let Some(i) = (0..PAGE_SIZE).find(|&i| chunk[i] != pattern((at + i) as u64)) {
            return Err(format!(
                "read back byte {:#x}: {:#x}, wrote {:#x}",
                at + i,
                chunk[i],
                pattern((at + i) as u64)
            ));
        }
    }
    println!("above4g-verified={total}");
    Ok(())
}

/// `ios` requests of `len` bytes, request `i` from/to `base + i * len` at disk byte `i * len`, all
/// submitted before one kick, then completed.
fn phase(disk: &mut StorvscDisk, write: bool, base: u64, ios: usize, len: usize) -> Outcome {
    let block = disk.block_size() as usize;
    for i in 0..ios {
        let lba = (i * len / block) as u64;
        disk.submit(i as u32, write, lba, base + (i * len) as u64, len)
            .map_err(|e| format!("submitting request {i}: {e}"))?;
    }
    disk.kick().map_err(|e| format!("kick: {e}"))?;
    let mut done: Vec<Completion> = Vec::with_capacity(ios);
    while done.len() < ios {
        if disk.poll(&mut done).map_err(|e| format!("poll: {e}"))? == 0 {
            disk.wait(&KERNEL);
        }
    }
    match done.iter().find(|c| c.result.is_err()) {
        Some(c) => Err(format!(
            "{} {} failed: {:?}",
            if write { "write" } else { "read" },
            c.tag,
            c.result
        )),
        None => Ok(()),
    }
}
