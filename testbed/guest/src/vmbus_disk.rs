//! The VMBus synthetic SCSI disks as bench devices: `guest_drivers::storvsc_disk::StorvscDisk` on the
//! kernel's VMBus connection, behind the workload engine's `BlockQueue`. Controller `N` is the N-th
//! live SCSI controller offered (by relid). Its channel is opened once and kept until the host rescinds
//! the controller ([`release_rescinded`]); each [`VmbusDisk`] leases it from a [`Parking`] spot.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use guest_drivers::storvsc::{Completion as SrbCompletion, IoError};
use guest_drivers::storvsc_disk::{DiskError, StorvscDisk};
use vmbus::protocol::interface;
use workload::queue::{BlockQueue, Completion, DeviceError, DmaBuffer, IoStatus, Op, SubmitError};

use crate::parking::{Lease, Parking};
use crate::vmbus_global::{with_connection, KERNEL};

/// Ring pages per direction (control page included): room for well over 128 outstanding SRBs.
const RING_PAGES: usize = 64;
/// Requests kept in flight at most.
const MAX_OUTSTANDING: usize = 128;

/// Controllers the kernel can drive at once.
pub const MAX_CONTROLLERS: usize = 4;

static PARKED: [Parking<StorvscDisk>; MAX_CONTROLLERS] =
    [const { Parking::new() }; MAX_CONTROLLERS];

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
        let mut disk = disk;
        disk.set_polling(polling)
            .map_err(|e| format!("storvsc: {e}"))?;
        Ok(Self {
            disk,
            done: Vec::with_capacity(MAX_OUTSTANDING),
        })
    }
}

/// The host rescinded `relid`: close the controller opened on it (if any) and forget it. Returns
/// whether one was open.
pub fn release_rescinded(
    conn: &mut guest_drivers::vmbus_client::VmbusConnection<'static, crate::platform::Kernel>,
    relid: u32,
) -> Result<bool, String> {
    for spot in &PARKED {
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
