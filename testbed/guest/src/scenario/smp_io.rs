//! `smp-io:N`: storage on every CPU at once. The BSP opens the first SCSI controller (primary channel
//! on VP 0), asks the host for one sub-channel per AP (CREATE_SUB_CHANNELS) and opens sub-channel k
//! with its interrupts on VP k. Then every CPU at the same time writes N pages to a region of its own
//! and reads each back, checked, on its own channel, one I/O at a time (each completion is one
//! interrupt, on the submitting CPU). Then sub-channel 1 is moved to VP 2 (MODIFYCHANNEL) and VP 2 does
//! N verified writes and reads on it. The BSP prints each VP's VMBus interrupts over each phase.
//!
//! Layout and bytes: `guest_abi::smp_io` (the host checks the image too).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use guest_abi::smp_io::{self, IO_BYTES};
use guest_drivers::platform::Platform;
use guest_drivers::storvsc::Completion;
use guest_drivers::storvsc_disk::StorvscDisk;
use vmbus::protocol::interface;

use super::Outcome;
use crate::arch::{self, MAX_CPUS};
use crate::println;
use crate::smp::{self, OnAnyCpu};
use crate::vmbus_global::{event_flags, with_connection, KERNEL, VMBUS_VECTOR};

/// Ring pages per direction of every channel.
const RING_PAGES: usize = 16;
/// Requests in flight per channel at most (one is used at a time here).
const MAX_OUTSTANDING: usize = 8;

type Finished = OnAnyCpu<(StorvscDisk, Result<(), String>)>;

/// What each CPU's job left behind: its disk and how its I/O went.
static FINISHED: [spin::Mutex<Option<Finished>>; MAX_CPUS] =
    [const { spin::Mutex::new(None) }; MAX_CPUS];

/// Run `smp-io:N`.
pub fn run(args: &str) -> Outcome {
    let ios: u64 = args
        .parse()
        .map_err(|_| format!("smp-io: `{args}` is not a count"))?;
    if ios == 0 || ios > smp_io::MAX_IOS {
        return Err(format!("smp-io: 1..={} I/Os per CPU", smp_io::MAX_IOS));
    }
    let cpus = smp::count();
    let mut disks = with_connection(open_all)??;
    if disks.len() != cpus {
        return Err(format!("{} channels for {cpus} CPUs", disks.len()));
    }

    // Phase 1: every CPU on its own channel, at the same time.
    let before = vmbus_interrupts();
    let own = disks.remove(0);
    for (i, disk) in disks.into_iter().enumerate() {
        let vp = i + 1;
        let disk = OnAnyCpu(disk);
        smp::run_on(vp, move || {
            let mut disk = disk.into_inner();
            let result = verified_io(&mut disk, smp::current() as u64, ios);
            *FINISHED[smp::current()].lock() = Some(OnAnyCpu((disk, result)));
        })
        .map_err(|e| format!("vp{vp}: {e}"))?;
    }
    let mut own = own;
    let result = verified_io(&mut own, 0, ios);
    *FINISHED[0].lock() = Some(OnAnyCpu((own, result)));
    for vp in 1..cpus {
        smp::wait_idle(vp);
    }
    let after = vmbus_interrupts();
    let mut disks = Vec::new();
    for (vp, slot) in FINISHED.iter().enumerate().take(cpus) {
        let (disk, result) = slot
            .lock()
            .take()
            .ok_or_else(|| format!("vp{vp} left no result"))?
            .into_inner();
        result.map_err(|e| format!("vp{vp}: {e}"))?;
        println!(
            "smp-io-vp{vp}-relid={} smp-io-vp{vp}-ios={} smp-io-vp{vp}-interrupts={}",
            disk.relid(),
            2 * ios,
            after[vp] - before[vp]
        );
        disks.push(disk);
    }
    if cpus < 3 {
        return Ok(());
    }

    // Phase 2: sub-channel 1 moves to VP 2, which then does its I/O.
    let mut moved = disks.swap_remove(1);
    let relid = moved.relid();
    with_connection(|conn| conn.modify_channel(relid, 2))?.map_err(|e| e.to_string())?;
    moved.set_event_flags(event_flags(2).ok_or("VP 2 has no SynIC")?);
    let before = vmbus_interrupts();
    let moved = OnAnyCpu(moved);
    smp::run_on(2, move || {
        let mut disk = moved.into_inner();
        let result = verified_io(&mut disk, smp_io::MOVED_REGION, ios);
        *FINISHED[2].lock() = Some(OnAnyCpu((disk, result)));
    })?;
    smp::wait_idle(2);
    let after = vmbus_interrupts();
    let (_, result) = FINISHED[2]
        .lock()
        .take()
        .ok_or("vp2 left no result")?
        .into_inner();
    result.map_err(|e| format!("moved channel on vp2: {e}"))?;
    println!("smp-moved-relid={relid} smp-moved-ios={}", 2 * ios);
    for vp in 0..cpus {
        println!("smp-moved-vp{vp}-interrupts={}", after[vp] - before[vp]);
    }
    Ok(())
}

/// Every CPU's VMBus interrupts so far.
fn vmbus_interrupts() -> [u64; MAX_CPUS] {
    core::array::from_fn(|vp| {
        if vp < smp::count() {
            arch::interrupts_on_vp(vp, VMBUS_VECTOR)
        } else {
            0
        }
    })
}

/// On the BSP's connection: the primary channel (VP 0) and one sub-channel per AP (VP k).
fn open_all(
    conn: &mut guest_drivers::vmbus_client::VmbusConnection<'static, crate::platform::Kernel>,
) -> Result<Vec<StorvscDisk>, String> {
    let offer = conn
        .find_offer(interface::SCSI)
        .ok_or("no SCSI controller offered")?;
    let instance = offer.offer.if_instance;
    let primary = StorvscDisk::open(
        conn,
        &KERNEL,
        offer.child_relid,
        RING_PAGES,
        MAX_OUTSTANDING,
        0,
    )
    .map_err(|e| format!("storvsc: {e}"))?;
    let subs = (smp::count() - 1) as u16;
    println!("smp-io-max-sub-channels={}", primary.max_sub_channels());
    let mut disks = alloc::vec![];
    if subs > 0 {
        let mut primary = primary;
        primary
            .create_sub_channels(&KERNEL, subs)
            .map_err(|e| format!("CREATE_SUB_CHANNELS: {e}"))?;
        conn.wait_for_offers(|c| c.subchannel_offers(instance).len() >= usize::from(subs))
            .map_err(|e| e.to_string())?;
        let offers = conn.subchannel_offers(instance);
        let mut opened = Vec::new();
        for (i, sub) in offers.iter().take(usize::from(subs)).enumerate() {
            let vp = i + 1;
            let flags = event_flags(vp).ok_or_else(|| format!("VP {vp} has no SynIC"))?;
            let relid = sub.child_relid;
            let disk = primary
                .open_sub_channel(conn, relid, RING_PAGES, MAX_OUTSTANDING, vp as u32, flags)
                .map_err(|e| format!("sub-channel {relid}: {e}"))?;
            opened.push(disk);
        }
        disks.push(primary);
        disks.extend(opened);
    } else {
        disks.push(primary);
    }
    Ok(disks)
}

/// On the calling CPU: write `ios` pages of `region`, reading each back and checking it, one I/O at a
/// time.
fn verified_io(disk: &mut StorvscDisk, region: u64, ios: u64) -> Result<(), String> {
    let page = KERNEL.alloc_dma(1).ok_or("no memory")?;
    let mut done = Vec::with_capacity(MAX_OUTSTANDING);
    let result = (|| {
        for io in 0..ios {
            let lba = smp_io::lba(region, io);
            for w in 0..(IO_BYTES / 8) as u64 {
                page.write((w * 8) as usize, &smp_io::word(region, io, w).to_le_bytes());
            }
            one_io(disk, true, lba, page.pa, &mut done)?;
            page.write(0, &[0u8; IO_BYTES]);
            one_io(disk, false, lba, page.pa, &mut done)?;
            for w in 0..(IO_BYTES / 8) as u64 {
                let mut bytes = [0u8; 8];
                page.read((w * 8) as usize, &mut bytes);
                let got = u64::from_le_bytes(bytes);
                let want = smp_io::word(region, io, w);
                if got != want {
                    return Err(format!(
                        "region {region} I/O {io} word {w}: read {got:#x}, wrote {want:#x}"
                    ));
                }
            }
        }
        Ok(())
    })();
    KERNEL.free_dma(page);
    result
}

/// Submit one I/O and sleep until it completes.
fn one_io(
    disk: &mut StorvscDisk,
    write: bool,
    lba: u64,
    pa: u64,
    done: &mut Vec<Completion>,
) -> Result<(), String> {
    disk.submit(7, write, lba, pa, IO_BYTES)
        .map_err(|e| format!("submit: {e}"))?;
    disk.kick().map_err(|e| format!("kick: {e}"))?;
    loop {
        done.clear();
        disk.poll(done).map_err(|e| format!("poll: {e}"))?;
        if let Some(c) = done.pop() {
            return c.result.map(|_| ()).map_err(|e| format!("I/O: {e:?}"));
        }
        disk.wait(&KERNEL);
    }
}
