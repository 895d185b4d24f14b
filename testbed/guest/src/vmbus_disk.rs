//! The VMBus synthetic SCSI disks as bench devices: `guest_drivers::storvsc_disk::StorvscDisk` on the
//! kernel's VMBus connection, behind the workload engine's `BlockQueue`. Controller `N` is the N-th
//! live SCSI controller offered (by relid). Its channel is opened once and kept until the host rescinds
//! the controller ([`release_rescinded`]); each [`VmbusDisk`] leases it from a [`Parking`] spot.
//!
//! On a guest with several CPUs, [`VmbusDisk::open_per_cpu`] gives one queue per CPU: the primary
//! channel (interrupts on VP 0) and one sub-channel per AP (CREATE_SUB_CHANNELS once per controller,
//! sub-channel k opened with its interrupts on VP k), each parked like the primary. A queue is driven
//! from its own VP: its completions interrupt that VP only.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use guest_drivers::storvsc::{Completion as SrbCompletion, IoError};
use guest_drivers::storvsc_disk::{DiskError, StorvscDisk};
use vmbus::protocol::interface;
use workload::queue::{BlockQueue, Completion, DeviceError, DmaBuffer, IoStatus, Op, SubmitError};

use crate::arch::MAX_CPUS;
use crate::parking::{Lease, Parking};
use crate::smp;
use crate::vmbus_global::{event_flags, with_connection, KERNEL};

/// Ring pages per direction (control page included): room for well over 128 outstanding SRBs.
const RING_PAGES: usize = 64;
/// Requests kept in flight at most.
const MAX_OUTSTANDING: usize = 128;

/// Controllers the kernel can drive at once.
pub const MAX_CONTROLLERS: usize = 4;

static PARKED: [Parking<StorvscDisk>; MAX_CONTROLLERS] =
    [const { Parking::new() }; MAX_CONTROLLERS];

/// Per controller, the sub-channel of VP `k` at `k - 1`.
static PARKED_SUBS: [[Parking<StorvscDisk>; MAX_CPUS - 1]; MAX_CONTROLLERS] =
    [const { [const { Parking::new() }; MAX_CPUS - 1] }; MAX_CONTROLLERS];

/// Per controller, how many sub-channels were created and opened (0: none yet).
static SUBS_OPENED: [AtomicUsize; MAX_CONTROLLERS] =
    [const { AtomicUsize::new(0) }; MAX_CONTROLLERS];

/// LUN 0 of one synthetic SCSI controller.
pub struct VmbusDisk {
    disk: Lease<StorvscDisk>,
    done: Vec<SrbCompletion>,
}

impl VmbusDisk {
    /// Open SCSI controller `index` (the index-th live controller offered, by relid) on the kernel's
    /// VMBus connection, or take back the one opened before.
    pub fn open(index: usize) -> Result<Self, String> {
        Self::open_with(index, false)
    }

    /// [`VmbusDisk::open`], polling for completions (host interrupts suppressed while requests
    /// are outstanding) when `polling`.
    pub fn open_with(index: usize, polling: bool) -> Result<Self, String> {
        let spot = PARKED
            .get(index)
            .ok_or_else(|| format!("controller {index}: at most {MAX_CONTROLLERS}"))?;
        let disk = spot.lease(|| {
            with_connection(|conn| {
                let offer = conn
                    .primary_offers(interface::SCSI)
                    .get(index)
                    .copied()
                    .ok_or_else(|| format!("no SCSI controller {index} offered"))?;
                StorvscDisk::open(
                    conn,
                    &KERNEL,
                    offer.child_relid,
                    RING_PAGES,
                    MAX_OUTSTANDING,
                    0,
                )
                .map_err(|e| format!("storvsc: {e}"))
            })?
        })?;
        Self::ready(disk, polling)
    }

    fn ready(mut disk: Lease<StorvscDisk>, polling: bool) -> Result<Self, String> {
        disk.set_polling(polling)
            .map_err(|e| format!("storvsc: {e}"))?;
        Ok(Self {
            disk,
            done: Vec::with_capacity(MAX_OUTSTANDING),
        })
    }

    /// One queue per CPU on controller `index`, in VP order (see the module docs): the primary
    /// channel first, then the sub-channel of each AP. On the BSP only.
    pub fn open_per_cpu(index: usize, polling: bool) -> Result<Vec<Self>, String> {
        let mut primary = Self::open_with(index, polling)?;
        let subs = smp::count() - 1;
        if subs == 0 {
            return Ok(alloc::vec![primary]);
        }
        let spots = &PARKED_SUBS[index];
        let mut queues = Vec::with_capacity(subs + 1);
        match SUBS_OPENED[index].load(Ordering::Acquire) {
            0 => {
                let opened =
                    with_connection(|conn| open_sub_channels(conn, &mut primary.disk, subs))??;
                SUBS_OPENED[index].store(subs, Ordering::Release);
                for (spot, disk) in spots.iter().zip(opened) {
                    let lease = spot.lease(move || Ok::<_, String>(disk))?;
                    queues.push(Self::ready(lease, polling)?);
                }
            }
            n if n == subs => {
                for (k, spot) in spots.iter().take(subs).enumerate() {
                    let lease = spot.lease(|| {
                        Err(format!(
                            "controller {index}: sub-channel of VP {} was closed",
                            k + 1
                        ))
                    })?;
                    queues.push(Self::ready(lease, polling)?);
                }
            }
            n => {
                return Err(format!(
                    "controller {index}: {n} sub-channels open for {subs} APs"
                ))
            }
        }
        queues.insert(0, primary);
        Ok(queues)
    }
}

/// Ask the host for `subs` sub-channels of `primary`'s controller and open sub-channel k with its
/// interrupts on VP k + 1.
fn open_sub_channels(
    conn: &mut guest_drivers::vmbus_client::VmbusConnection<'static, crate::platform::Kernel>,
    primary: &mut StorvscDisk,
    subs: usize,
) -> Result<Vec<StorvscDisk>, String> {
    let count = u16::try_from(subs).map_err(|_| "too many sub-channels")?;
    if primary.max_sub_channels() < count {
        return Err(format!(
            "the controller offers {} sub-channels, {subs} APs need one each",
            primary.max_sub_channels()
        ));
    }
    let relid = primary.relid();
    let instance = conn
        .primary_offers(interface::SCSI)
        .iter()
        .find(|o| o.child_relid == relid)
        .map(|o| o.offer.if_instance)
        .ok_or("the controller's offer is gone")?;
    primary
        .create_sub_channels(&KERNEL, count)
        .map_err(|e| format!("CREATE_SUB_CHANNELS: {e}"))?;
    conn.wait_for_offers(|c| c.subchannel_offers(instance).len() >= subs)
        .map_err(|e| format!("sub-channel offers: {e}"))?;
    let offers = conn.subchannel_offers(instance);
    let mut opened = Vec::with_capacity(subs);
    for (i, sub) in offers.iter().take(subs).enumerate() {
        let vp = i + 1;
        let flags = event_flags(vp).ok_or_else(|| format!("VP {vp} has no SynIC"))?;
        let relid = sub.child_relid;
        let disk = primary
            .open_sub_channel(conn, relid, RING_PAGES, MAX_OUTSTANDING, vp as u32, flags)
            .map_err(|e| format!("sub-channel {relid}: {e}"))?;
        opened.push(disk);
    }
    Ok(opened)
}

/// The host rescinded `relid`: close the controller opened on it (if any) and forget it. Returns
/// whether one was open.
pub fn release_rescinded(
    conn: &mut guest_drivers::vmbus_client::VmbusConnection<'static, crate::platform::Kernel>,
    relid: u32,
) -> Result<bool, String> {
    for spot in PARKED.iter().chain(PARKED_SUBS.iter().flatten()) {
        if let Some(disk) = spot.take_if(|d| d.relid() == relid) {
            disk.close(conn)
                .map_err(|e| format!("closing relid {relid}: {e}"))?;
            return Ok(true);
        }
    }
    Ok(false)
}

fn device_error(e: &DiskError) -> DeviceError {
    let (code, reason) = match e {
        DiskError::Io(IoError::Status(s)) => (s.0, "storvsp refused the request"),
        DiskError::Io(IoError::Scsi { srb_status, .. }) => (u32::from(srb_status.0), "SCSI error"),
        DiskError::Io(IoError::DataOverrun { .. } | IoError::Short { .. }) => (3, "short transfer"),
        DiskError::LunGone(_) => (4, "LUN gone"),
        DiskError::Ring(_) => (1, "ring failure"),
        _ => (2, "storvsc failure"),
    };
    DeviceError { code, reason }
}

impl BlockQueue for VmbusDisk {
    fn block_size(&self) -> u32 {
        self.disk.block_size()
    }

    fn capacity_blocks(&self) -> u64 {
        self.disk.blocks()
    }

    fn max_outstanding(&self) -> usize {
        MAX_OUTSTANDING
    }

    fn max_transfer_bytes(&self) -> usize {
        self.disk.max_transfer_bytes() as usize
    }

    fn submit(
        &mut self,
        tag: u32,
        op: Op,
        lba: u64,
        buffer: &mut DmaBuffer<'_>,
    ) -> Result<(), SubmitError> {
        match self
            .disk
            .submit(tag, op == Op::Write, lba, buffer.pa(), buffer.len())
        {
            Ok(()) => Ok(()),
            Err(DiskError::Busy) => Err(SubmitError::Busy),
            Err(e) => Err(SubmitError::Error(device_error(&e))),
        }
    }

    fn kick(&mut self) {
        let _ = self.disk.kick();
    }

    fn poll(&mut self, completions: &mut Vec<Completion>) -> usize {
        self.done.clear();
        let _ = self.disk.poll(&mut self.done);
        let before = completions.len();
        for c in self.done.drain(..) {
            let status = match c.result {
                Ok(_) => IoStatus::Ok,
                Err(e) => IoStatus::Error(device_error(&DiskError::Io(e))),
            };
            completions.push(Completion { tag: c.tag, status });
        }
        completions.len() - before
    }

    fn wait(&mut self) {
        self.disk.wait(&KERNEL);
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        self.disk.flush(&KERNEL).map_err(|e| device_error(&e))
    }

    fn signals(&self) -> u64 {
        self.disk.signals()
    }
}
