//! The interface every guest block device offers the engine: [`BlockQueue`].
//!
//! Protocol: the engine [`submit`](BlockQueue::submit)s requests (each with a tag it chose), rings the
//! doorbell once per batch with [`kick`](BlockQueue::kick), collects finished requests with the
//! non-blocking [`poll`](BlockQueue::poll), and calls [`wait`](BlockQueue::wait) only when requests are
//! in flight and `poll` found none. A synchronous device (PIO) may complete requests inside `submit` or
//! `kick`; it reports them from the next `poll`.

use alloc::vec::Vec;

/// Direction of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Device to memory.
    Read,
    /// Memory to device.
    Write,
}

/// An error a device reports, with a code of its own and a static reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (code {code:#x})")]
pub struct DeviceError {
    /// Device-specific status (SCSI/ATA/virtio status, ...).
    pub code: u32,
    /// What failed.
    pub reason: &'static str,
}

/// Why a request was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// No room right now; retry after completions were polled.
    #[error("queue full")]
    Busy,
    /// The device cannot do this request at all.
    #[error("device error: {0}")]
    Error(DeviceError),
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoStatus {
    /// Data transferred.
    Ok,
    /// The device reported an error.
    Error(DeviceError),
}

/// A finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The tag given to [`BlockQueue::submit`].
    pub tag: u32,
    /// Its outcome.
    pub status: IoStatus,
}

/// The memory of one request: guest-virtual address, guest-physical address and length, plus CPU access
/// to the bytes for the duration of the `submit` call (synchronous devices copy there; DMA devices hand
/// [`pa`](Self::pa) to the host). The engine owns the memory and leaves it untouched, and allocated,
/// until the request's completion has been polled.
#[derive(Debug)]
pub struct DmaBuffer<'a> {
    bytes: &'a mut [u8],
    pa: u64,
}

impl<'a> DmaBuffer<'a> {
    /// A buffer whose bytes sit at guest-physical address `pa`.
    pub fn new(bytes: &'a mut [u8], pa: u64) -> Self {
        Self { bytes, pa }
    }

    /// Guest-virtual address of the first byte.
    pub fn va(&self) -> usize {
        self.bytes.as_ptr() as usize
    }

    /// Guest-physical address of the first byte (contiguous for [`len`](Self::len) bytes).
    pub fn pa(&self) -> u64 {
        self.pa
    }

    /// Length in bytes (a multiple of the device's block size).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the buffer is empty (never, for engine requests).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The bytes, for CPU copies during `submit`.
    pub fn bytes(&mut self) -> &mut [u8] {
        self.bytes
    }
}

/// A guest block device as the engine drives it. LBAs are in units of [`block_size`](Self::block_size).
pub trait BlockQueue {
    /// Bytes per LBA (512 or 4096).
    fn block_size(&self) -> u32;
    /// Capacity in LBAs.
    fn capacity_blocks(&self) -> u64;
    /// Requests the device can hold in flight at once (the engine never exceeds it).
    fn max_outstanding(&self) -> usize;
    /// Largest transfer of one request in bytes.
    fn max_transfer_bytes(&self) -> usize {
        usize::MAX
    }
    /// Queue one request; it starts at the latest at the next [`kick`](Self::kick).
    fn submit(
        &mut self,
        tag: u32,
        op: Op,
        lba: u64,
        buffer: &mut DmaBuffer<'_>,
    ) -> Result<(), SubmitError>;
    /// Tell the device about everything submitted since the last kick (one doorbell per batch).
    fn kick(&mut self);
    /// Append finished requests to `completions` without blocking; returns how many were appended.
    fn poll(&mut self, completions: &mut Vec<Completion>) -> usize;
    /// Sleep until an interrupt may have completed something (polling devices: return at once).
    fn wait(&mut self) {}
    /// Make every completed write reach the device's backing store (called after the measured window).
    fn flush(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
    /// Guest→host notifications (doorbell writes, signal hypercalls) this device has made so far.
    fn signals(&self) -> u64 {
        0
    }
}
