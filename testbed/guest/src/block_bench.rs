//! The emulated IDE disk and virtio-blk as bench devices (the workload engine's `BlockQueue`), next to
//! `vmbus_disk`. Each driver is opened once and parked between bench tokens.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use guest_drivers::ata::{AtaDisk, PioWidth, X86PortIo};
use guest_drivers::virtio_blk::{VirtioBlk, VirtioBlkError};
use workload::queue::{BlockQueue, Completion, DeviceError, DmaBuffer, IoStatus, Op, SubmitError};

use crate::parking::{Lease, Parking};
use crate::platform::Kernel;
use crate::scenario::block::{VIRTIO_BLK_GPA, VIRTIO_BLK_WINDOW};

static ATA: Parking<AtaDisk<X86PortIo>> = Parking::new();
static VIRTIO: Parking<VirtioBlk<Kernel>> = Parking::new();

/// The emulated IDE disk: polled PIO with `rep insw/outsw`, as an unenlightened OS drives its boot disk.
/// Synchronous: every request completes inside `submit`.
pub struct IdeBench {
    disk: Lease<AtaDisk<X86PortIo>>,
    done: Vec<Completion>,
}

impl IdeBench {
    /// Probe (or take back) the primary-channel master.
    pub fn open() -> Result<Self, String> {
        let disk = ATA.lease(|| {
            AtaDisk::probe(X86PortIo, PioWidth::String).map_err(|e| format!("ATA probe: {e}"))
        })?;
        Ok(Self {
            disk,
            done: Vec::new(),
        })
    }
}

impl BlockQueue for IdeBench {
    fn block_size(&self) -> u32 {
        512
    }

    fn capacity_blocks(&self) -> u64 {
        self.disk.sectors()
    }

    fn max_outstanding(&self) -> usize {
        1
    }

    fn max_transfer_bytes(&self) -> usize {
        // LBA48 PIO: up to 65536 sectors per command; keep requests modest.
        256 * 512
    }

    fn submit(
        &mut self,
        tag: u32,
        op: Op,
        lba: u64,
        buffer: &mut DmaBuffer<'_>,
    ) -> Result<(), SubmitError> {
        let result = match op {
            Op::Read => self.disk.read(lba, buffer.bytes()),
            Op::Write => self.disk.write(lba, buffer.bytes()),
        };
        let status = match result {
            Ok(()) => IoStatus::Ok,
            Err(_) => IoStatus::Error(DeviceError {
                code: 1,
                reason: "ATA command failed",
            }),
        };
        self.done.push(Completion { tag, status });
        Ok(())
    }

    fn kick(&mut self) {}

    fn poll(&mut self, completions: &mut Vec<Completion>) -> usize {
        let n = self.done.len();
        completions.append(&mut self.done);
        n
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        self.disk.flush().map_err(|_| DeviceError {
            code: 2,
            reason: "ATA flush failed",
        })
    }
}

/// virtio-blk over virtio-mmio, driven as Linux drives it: up to 256 requests in flight (indirect
/// descriptors), one doorbell per batch where `vring_need_event` asks for it (caught by the device's
/// ioeventfd), completions taken after the device's interrupt, drained with notifications suppressed
/// and re-enabled with a re-check (`virtblk_done`). Its `signals` are the doorbells the driver rang.
pub struct VirtioBench {
    blk: Lease<VirtioBlk<Kernel>>,
    done: Vec<(u32, Result<(), VirtioBlkError>)>,
}

impl VirtioBench {
    /// Probe (or take back) the virtio-blk device at its fixed MMIO window.
    pub fn open() -> Result<Self, String> {
        Self::open_with(false)
    }

    /// [`VirtioBench::open`], polling for completions when `polling`.
    pub fn open_with(polling: bool) -> Result<Self, String> {
        let blk = VIRTIO.lease(|| {
            // SAFETY: the testbed host places a virtio-mmio block device window at VIRTIO_BLK_GPA; the
            // kernel identity-maps it, and only this (parked, single) driver uses it.
            unsafe { VirtioBlk::probe(VIRTIO_BLK_GPA, VIRTIO_BLK_WINDOW) }
                .map_err(|e| format!("virtio probe: {e}"))
        })?;
        let mut blk = blk;
        blk.set_polling(polling);
        Ok(Self {
            blk,
            done: Vec::new(),
        })
    }
}

impl BlockQueue for VirtioBench {
    fn block_size(&self) -> u32 {
        512
    }

    fn capacity_blocks(&self) -> u64 {
        self.blk.capacity()
    }

    fn max_outstanding(&self) -> usize {
        self.blk.max_in_flight()
    }

    fn submit(
        &mut self,
        tag: u32,
        op: Op,
        lba: u64,
        buffer: &mut DmaBuffer<'_>,
    ) -> Result<(), SubmitError> {
        // SAFETY: the engine keeps the buffer allocated and untouched until this tag's completion has
        // been polled (the BlockQueue contract), and `pa` is its guest-physical address.
        match unsafe {
            self.blk
                .submit(tag, op == Op::Write, lba, buffer.pa(), buffer.len())
        } {
            Ok(()) => Ok(()),
            Err(e) if e.is_queue_full() => Err(SubmitError::Busy),
            Err(_) => Err(SubmitError::Error(DeviceError {
                code: 1,
                reason: "virtio submit failed",
            })),
        }
    }

    fn kick(&mut self) {
        self.blk.kick();
    }

    fn poll(&mut self, completions: &mut Vec<Completion>) -> usize {
        self.blk.poll(&mut self.done);
        let before = completions.len();
        for (tag, result) in self.done.drain(..) {
            let status = match result {
                Ok(()) => IoStatus::Ok,
                Err(VirtioBlkError::Status(s)) => IoStatus::Error(DeviceError {
                    code: u32::from(s),
                    reason: "virtio request failed",
                }),
                Err(_) => IoStatus::Error(DeviceError {
                    code: 0x100,
                    reason: "virtio device broke the queue protocol",
                }),
            };
            completions.push(Completion { tag, status });
        }
        completions.len() - before
    }

    fn wait(&mut self) {
        self.blk.wait();
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        self.blk.flush().map_err(|_| DeviceError {
            code: 3,
            reason: "virtio flush failed",
        })
    }

    fn signals(&self) -> u64 {
        self.blk.doorbells()
    }
}
