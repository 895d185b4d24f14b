//! The VMBus synthetic SCSI disk as a bench device: `guest_drivers::storvsc_disk::StorvscDisk` on the
//! kernel's VMBus connection, behind the workload engine's `BlockQueue`. The channel is opened once and
//! kept for the kernel's lifetime; each [`VmbusDisk`] borrows it and parks it again when dropped.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use guest_drivers::storvsc::IoError;
use guest_drivers::storvsc_disk::{DiskError, StorvscDisk, TaggedCompletion};
use vmbus::protocol::interface;
use workload::queue::{BlockQueue, Completion, DeviceError, DmaBuffer, IoStatus, Op, SubmitError};

use crate::parking::Parking;
use crate::vmbus_global::{with_connection, KERNEL};

/// Ring pages per direction (control page included): room for well over 128 outstanding SRBs.
const RING_PAGES: usize = 64;
/// Requests kept in flight at most.
const MAX_OUTSTANDING: usize = 128;

static PARKED: Parking<StorvscDisk> = Parking::new();

/// LUN 0 of the first synthetic SCSI controller.
pub struct VmbusDisk {
    /// `Some` from `open` until `drop` parks it.
    disk: Option<StorvscDisk>,
    done: Vec<TaggedCompletion>,
}

impl VmbusDisk {
    /// Open the first SCSI controller offered on the kernel's VMBus connection (or take back the one
    /// opened before).
    pub fn open() -> Result<Self, String> {
        let parked = PARKED.take();
        let disk = match parked {
            Some(disk) => disk,
            None => with_connection(|conn| {
                let offer = conn
                    .find_offer(interface::SCSI)
                    .ok_or_else(|| String::from("no SCSI controller offered"))?;
                StorvscDisk::open(conn, &KERNEL, offer.child_relid, RING_PAGES, 0)
                    .map_err(|e| format!("storvsc: {e}"))
            })??,
        };
        Ok(Self {
            disk: Some(disk),
            done: Vec::new(),
        })
    }
}

impl Drop for VmbusDisk {
    fn drop(&mut self) {
        if let Some(disk) = self.disk.take() {
            PARKED.park(disk);
        }
    }
}

fn device_error(e: &DiskError) -> DeviceError {
    let (code, reason) = match e {
        DiskError::Io(IoError::Status(s)) => (s.0, "storvsp refused the request"),
        DiskError::Io(IoError::Scsi { srb_status, .. }) => (u32::from(srb_status.0), "SCSI error"),
        DiskError::Ring(_) => (1, "ring failure"),
        _ => (2, "storvsc failure"),
    };
    DeviceError { code, reason }
}

const GONE: DeviceError = DeviceError {
    code: 3,
    reason: "disk already closed",
};

impl BlockQueue for VmbusDisk {
    fn block_size(&self) -> u32 {
        self.disk.as_ref().map_or(512, StorvscDisk::block_size)
    }

    fn capacity_blocks(&self) -> u64 {
        self.disk.as_ref().map_or(0, StorvscDisk::blocks)
    }

    fn max_outstanding(&self) -> usize {
        MAX_OUTSTANDING
    }

    fn max_transfer_bytes(&self) -> usize {
        self.disk
            .as_ref()
            .map_or(0, |d| d.max_transfer_bytes() as usize)
    }

    fn submit(
        &mut self,
        tag: u32,
        op: Op,
        lba: u64,
        buffer: &mut DmaBuffer<'_>,
    ) -> Result<(), SubmitError> {
        let disk = self.disk.as_mut().ok_or(SubmitError::Error(GONE))?;
        match disk.submit(tag, op == Op::Write, lba, buffer.pa(), buffer.len()) {
            Ok(()) => Ok(()),
            Err(DiskError::Busy) => Err(SubmitError::Busy),
            Err(e) => Err(SubmitError::Error(device_error(&e))),
        }
    }

    fn kick(&mut self) {
        if let Some(disk) = self.disk.as_mut() {
            let _ = disk.kick();
        }
    }

    fn poll(&mut self, completions: &mut Vec<Completion>) -> usize {
        let Some(disk) = self.disk.as_mut() else {
            return 0;
        };
        self.done.clear();
        let _ = disk.poll(&mut self.done);
        let before = completions.len();
        for (tag, result) in self.done.drain(..) {
            let status = match result {
                Ok(_) => IoStatus::Ok,
                Err(e) => IoStatus::Error(device_error(&DiskError::Io(e))),
            };
            completions.push(Completion { tag, status });
        }
        completions.len() - before
    }

    fn wait(&mut self) {
        if let Some(disk) = self.disk.as_mut() {
            disk.wait(&KERNEL);
        }
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        let disk = self.disk.as_mut().ok_or(GONE)?;
        disk.flush(&KERNEL).map_err(|e| device_error(&e))
    }

    fn signals(&self) -> u64 {
        self.disk.as_ref().map_or(0, StorvscDisk::signals)
    }
}
