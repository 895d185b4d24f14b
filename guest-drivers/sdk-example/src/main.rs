//! The guest SDK's example guest: what a kernel of your own does to become an enlightened VMBus
//! guest with guest-drivers, in one file. It
//! 1. detects the Hyper-V enlightenments (CPUID leaves) and prints what it found;
//! 2. makes the VMBus connection — hypercall page, SynIC, version negotiation, offers;
//! 3. opens the heartbeat and shutdown integration components, and the first synthetic SCSI disk,
//!    whose first 64 KiB it reads and hashes;
//! 4. serves the ICs, sleeping until an interrupt, until the host asks it to shut down; then it
//!    powers off (exit code 0).
//!
//! The platform it provides (the `Platform` contract of `../README.md`: DMA pages with known
//! physical addresses, MSRs and CPUID through the CPL0 shim, interrupt counting, halt until an
//! interrupt) is the testbed guest kernel's, reused file by file below: the example's own code is
//! this file. Output goes to the serial port and the host's log page (`example: ...` lines).
#![no_std]
#![no_main]

extern crate alloc;

// The guest kernel's runtime: CPL0 shim entry points, console, heap, the `Platform` (the example
// uses only part of it).
#[allow(dead_code)]
#[path = "../../../testbed/guest/src/arch.rs"]
mod arch;
#[allow(dead_code)]
#[path = "../../../testbed/guest/src/console.rs"]
mod console;
#[allow(dead_code)]
#[path = "../../../testbed/guest/src/heap.rs"]
mod heap;
#[allow(dead_code)]
#[path = "../../../testbed/guest/src/platform.rs"]
mod platform;
#[path = "../../../testbed/guest/src/rt.rs"]
mod rt;
#[path = "../../../testbed/guest/src/shim.rs"]
mod shim;
#[allow(dead_code)]
#[path = "../../../testbed/guest/src/smp.rs"]
mod smp;

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use guest_abi::{BootInfo, BOOT_MAGIC};
use guest_drivers::hv::detect;
use guest_drivers::ic::{IcDriver, IcEvent, IcKind};
use guest_drivers::platform::Platform;
use guest_drivers::storvsc::Completion;
use guest_drivers::storvsc_disk::StorvscDisk;
use guest_drivers::vmbus_client::{Channel, VmbusConnection};
use vmbus::packet::PacketFlags;
use vmbus::protocol::interface;

use platform::Kernel;

/// The vector the VMBus SINT is delivered on.
const VMBUS_VECTOR: u8 = 0xF3;
/// Bytes read from the disk.
const READ_BYTES: usize = 64 << 10;

static KERNEL: Kernel = Kernel;

/// Rust entry at CPL3 (the shim `iretq`s here with the boot-info GPA).
#[no_mangle]
extern "C" fn kernel_main(boot_info: u64) -> ! {
    // SAFETY: the host wrote a `BootInfo` at this identity-mapped GPA before starting the VP; its
    // magic is checked before any other field is trusted.
    let info = unsafe { core::ptr::read_volatile(boot_info as *const BootInfo) };
    if info.magic != BOOT_MAGIC {
        arch::exit(0xbad);
    }
    console::init_log(info.log_gpa, info.log_len);
    heap::init(&info);
    // Other vCPUs (if the config gives more) wait for work that never comes.
    smp::wait_online();
    match run() {
        Ok(()) => {
            println!("example: powering off");
            arch::exit(0)
        }
        Err(e) => {
            println!("example: failed: {e}");
            arch::exit(1)
        }
    }
}

fn err(e: impl ToString) -> String {
    e.to_string()
}

fn run() -> Result<(), String> {
    let hv = detect::detect(&KERNEL).map_err(err)?;
    println!(
        "example: hypervisor {:?} features {:#x}/{:#x}",
        core::str::from_utf8(&hv.vendor).unwrap_or("?"),
        hv.features_eax,
        hv.features_ebx
    );
    let mut conn = VmbusConnection::new(&KERNEL, &[], VMBUS_VECTOR).map_err(err)?;
    let version = conn.connect().map_err(err)?;
    let offers = conn.request_offers().map_err(err)?.len();
    println!("example: vmbus {version:?}, {offers} offers");

    let mut ics: Vec<(Channel, IcDriver)> = Vec::new();
    for (if_type, kind) in [
        (interface::HEARTBEAT, IcKind::Heartbeat),
        (interface::SHUTDOWN, IcKind::Shutdown),
    ] {
        if let Some(offer) = conn.find_offer(if_type) {
            let channel = conn.open_channel(offer.child_relid, 4, 4).map_err(err)?;
            ics.push((channel, IcDriver::new(kind)));
        }
    }
    println!("example: {} integration components", ics.len());
    if let Some(offer) = conn.find_offer(interface::SCSI) {
        let relid = offer.child_relid;
        let hash = read_disk(&mut conn, relid)?;
        println!("example: disk relid={relid} hash={hash:016x}");
    }
    serve(&mut conn, &mut ics)
}

/// Reads the first [`READ_BYTES`] of the disk on `relid` and hashes them (FNV-1a).
fn read_disk(conn: &mut VmbusConnection<'static, Kernel>, relid: u32) -> Result<u64, String> {
    let mut disk = StorvscDisk::open(conn, &KERNEL, relid, 8, 4, 0).map_err(err)?;
    let pages = READ_BYTES / guest_drivers::platform::PAGE_SIZE;
    let region = KERNEL.alloc_dma(pages).ok_or("no memory to read into")?;
    disk.submit(1, false, 0, region.pa, region.len)
        .map_err(err)?;
    disk.kick().map_err(err)?;
    let mut done: Vec<Completion> = Vec::with_capacity(1);
    let result = loop {
        // Count before looking, so a completion that lands after the look still ends the sleep.
        let seen = KERNEL.interrupt_total();
        disk.poll(&mut done).map_err(err)?;
        if let Some(c) = done.pop() {
            break c.result.map_err(|e| alloc::format!("read failed: {e:?}"));
        }
        KERNEL.wait_for_interrupt(seen);
    };
    let mut data = vec![0u8; READ_BYTES];
    region.read(0, &mut data);
    KERNEL.free_dma(region);
    disk.close(conn).map_err(err)?;
    result?;
    Ok(data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    }))
}

/// Answers every IC request until the host asks for a shutdown.
fn serve(
    conn: &mut VmbusConnection<'static, Kernel>,
    ics: &mut [(Channel, IcDriver)],
) -> Result<(), String> {
    let mut buf = vec![0u8; 4096];
    let mut heartbeats = 0u64;
    loop {
        let seen = KERNEL.interrupt_total();
        let mut shutdown = false;
        for (channel, driver) in ics.iter_mut() {
            if !channel.take_event(conn.synic()) {
                continue;
            }
            let mut replies: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut more = true;
            while more {
                more = channel
                    .drain(&mut buf, 64, |info, bytes| {
                        let request = &bytes[info.data_offset().min(bytes.len())..];
                        let mut reply = vec![0u8; request.len().max(64)];
                        // A malformed request gets no answer (the host times it out).
                        if let Ok((len, event)) = driver.handle(request, &mut reply) {
                            reply.truncate(len);
                            replies.push((info.desc.trans_id, reply));
                            match event {
                                IcEvent::Heartbeat(_) => heartbeats += 1,
                                IcEvent::Shutdown { .. } => shutdown = true,
                                _ => {}
                            }
                        }
                    })
                    .map_err(err)?
                    .more;
            }
            for (trans_id, reply) in &replies {
                channel
                    .write_inband(*trans_id, PacketFlags::empty(), &[reply])
                    .map_err(err)?;
            }
            channel.flush(conn.hypercalls()).map_err(err)?;
        }
        if shutdown {
            println!("example: shutdown requested after {heartbeats} heartbeats");
            return Ok(());
        }
        conn.poll_messages().map_err(err)?;
        KERNEL.wait_for_interrupt(seen);
    }
}
