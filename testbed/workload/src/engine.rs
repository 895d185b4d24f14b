//! The measuring engine: [`run`] drives one [`WorkloadSpec`] through a [`BlockQueue`], keeping
//! `queue_depth` requests in flight (and recording the most it achieved, `achieved_qd`), timing each from
//! submit to observed completion (TSC cycles), checking
//! every read against the [`DiskModel`], and delimiting the measured window with two marks (the first right
//! before the first submit, the second right after the last completion).
//!
//! Over an image ([`DiskModel::over_image`]) reads of sectors no workload wrote cannot be checked here;
//! they are summed into `read_digest`, which the host checks against the image file.
//!
//! A read whose data is wrong fails the run ([`RunError::Mismatch`]): wrong data is an error, never a
//! number. Device-reported I/O errors are counted (`errors`) and leave the written sectors
//! [`UNKNOWN`](crate::pattern::UNKNOWN). Before returning an error the engine drains every request still in
//! flight; if it cannot (the device broke its protocol) it leaks the buffers rather than free memory a
//! device may still write.

use alloc::vec;
use alloc::vec::Vec;

use crate::pattern::{pattern, DiskModel, Mismatch, MAX_GENERATION, UNKNOWN};
use crate::queue::{BlockQueue, Completion, DeviceError, DmaBuffer, IoStatus, Op, SubmitError};
use crate::sequence::{Checksum, Plan, PlanError};
use crate::spec::WorkloadSpec;

/// What read buffers are filled with before submission (so a device that transfers nothing is caught).
pub const POISON: u8 = 0xA5;

/// Alignment of request buffers.
const BUFFER_ALIGN: usize = 4096;

/// What the engine needs from its surroundings.
pub struct RunEnv<'a> {
    /// The time-stamp counter.
    pub clock: &'a dyn Fn() -> u64,
    /// TSC ticks per second (needed when the spec has a time budget).
    pub tsc_hz: u64,
    /// Delimits the measured window for the host (one exit each).
    pub mark: &'a dyn Fn(u32),
    /// Mark written right before the first submit.
    pub start_mark: u32,
    /// Mark written right after the last completion.
    pub end_mark: u32,
    /// Guest-physical address of a guest-virtual one; buffers must be physically contiguous through it.
    pub phys: &'a dyn Fn(usize) -> u64,
    /// Interrupts the guest has taken so far.
    pub interrupts: &'a dyn Fn() -> u64,
    /// Generation that writes of this run store (1..=254; see [`crate::pattern`]).
    pub generation: u8,
}

impl core::fmt::Debug for RunEnv<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RunEnv")
            .field("tsc_hz", &self.tsc_hz)
            .field("marks", &(self.start_mark, self.end_mark))
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkloadResult {
    /// Requests completed (including failed ones).
    pub ios: u64,
    /// Completed reads.
    pub reads: u64,
    /// Completed writes.
    pub writes: u64,
    /// Bytes transferred by successful requests.
    pub bytes: u64,
    /// TSC cycles from the first submit to the last completion.
    pub cycles: u64,
    /// Median latency in cycles.
    pub p50: u64,
    /// 99th-percentile latency in cycles.
    pub p99: u64,
    /// Largest latency in cycles.
    pub max: u64,
    /// Requests the device failed.
    pub errors: u64,
    /// Guest→host notifications the device made during the run.
    pub signals: u64,
    /// Interrupts the guest took during the run.
    pub interrupts: u64,
    /// Most requests in flight at once during the measured window (the queue depth the device
    /// actually sustained; at most the spec's `queue_depth`).
    pub achieved_qd: u64,
    /// [`Plan::checksum`] of the submitted sequence.
    pub checksum: u64,
    /// Over an image ([`DiskModel::over_image`]): the digest of what the reads returned from sectors no
    /// workload wrote, for the host to check against the image file (0 otherwise).
    pub read_digest: u64,
}

/// Why a run produced no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The spec does not fit the device.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The block size is not a multiple of the device's.
    #[error("{block_bytes}-byte I/Os on a device with {device_block}-byte blocks")]
    BlockSize {
        /// The workload's.
        block_bytes: u32,
        /// The device's.
        device_block: u32,
    },
    /// The device cannot transfer a whole block in one request.
    #[error("{block_bytes}-byte I/Os exceed the device's {max}-byte transfers")]
    TooLarge {
        /// The workload's.
        block_bytes: u32,
        /// The device's limit.
        max: usize,
    },
    /// A time budget without a TSC rate.
    #[error("a time budget needs the TSC rate")]
    NoTimeBase,
    /// A write workload without a valid generation.
    #[error("write generation {0} outside 1..=254")]
    Generation(u8),
    /// The device refused a request outright.
    #[error("I/O {io} refused: {error}")]
    Submit {
        /// Index in the sequence.
        io: u64,
        /// The device's reason.
        error: DeviceError,
    },
    /// The device was busy with nothing in flight (it can never make progress).
    #[error("device busy with no request in flight")]
    Stalled,
    /// The device completed a tag that was not in flight.
    #[error("device completed unknown tag {0}")]
    UnknownTag(u32),
    /// A read returned the wrong data.
    #[error("I/O {io} ({op:?} at sector {at}): data mismatch: {mismatch}")]
    Mismatch {
        /// Index in the sequence.
        io: u64,
        /// Direction (always a read).
        op: Op,
        /// First sector of the request.
        at: u64,
        /// The first wrong sector.
        mismatch: Mismatch,
    },
}

/// Request memory at a page boundary plus the spec's `buffer_offset` (over-allocated so no unsafe code
/// is needed to align it).
struct IoMemory {
    storage: Vec<u8>,
    offset: usize,
    len: usize,
}

impl IoMemory {
    fn new(len: usize, misalign: usize) -> Self {
        let storage = vec![0u8; len + misalign + BUFFER_ALIGN - 1];
        let offset = storage.as_ptr().align_offset(BUFFER_ALIGN) + misalign;
        Self {
            storage,
            offset,
            len,
        }
    }

    fn bytes(&mut self) -> &mut [u8] {
        &mut self.storage[self.offset..self.offset + self.len]
    }
}

#[derive(Clone, Copy)]
struct Pending {
    io: u64,
    op: Op,
    sector: u64,
    submitted_at: u64,
}

/// Nearest-rank percentile of sorted samples (0 when empty).
pub fn percentile(sorted: &[u64], percent: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (percent.min(100) * sorted.len() as u64)
        .div_ceil(100)
        .max(1);
    sorted[(rank - 1) as usize]
}

/// Run `spec` on `queue`; see the module docs.
pub fn run(
    queue: &mut dyn BlockQueue,
    spec: &WorkloadSpec,
    model: &mut DiskModel,
    env: &RunEnv<'_>,
) -> Result<WorkloadResult, RunError> {
    let device_block = queue.block_size();
    if device_block == 0
        || !device_block.is_multiple_of(512)
        || !spec.block_bytes.is_multiple_of(device_block)
    {
        return Err(RunError::BlockSize {
            block_bytes: spec.block_bytes,
            device_block,
        });
    }
    if spec.block_bytes as usize > queue.max_transfer_bytes() {
        return Err(RunError::TooLarge {
            block_bytes: spec.block_bytes,
            max: queue.max_transfer_bytes(),
        });
    }
    let sectors_per_lba = u64::from(device_block / 512);
    let plan = Plan::new(
        spec,
        queue.capacity_blocks().saturating_mul(sectors_per_lba),
    )?;
    if spec.kind.writes() && !(1..=MAX_GENERATION).contains(&env.generation) {
        return Err(RunError::Generation(env.generation));
    }
    let budget = match (spec.max_millis, env.tsc_hz) {
        (0, _) => None,
        (_, 0) => return Err(RunError::NoTimeBase),
        (ms, hz) => Some(hz.saturating_mul(u64::from(ms)) / 1000),
    };
    let depth = usize::from(spec.queue_depth).min(queue.max_outstanding());
    if depth == 0 {
        return Err(RunError::Stalled);
    }
    let block_sectors = plan.block_sectors();
    let mut memory: Vec<IoMemory> = (0..depth)
        .map(|_| {
            IoMemory::new(
                spec.block_bytes as usize,
                usize::from(spec.buffer_offset) % BUFFER_ALIGN,
            )
        })
        .collect();
    let mut pending: Vec<Option<Pending>> = vec![None; depth];
    let mut free: Vec<u32> = (0..depth as u32).rev().collect();
    let mut latencies: Vec<u64> = Vec::with_capacity(plan.ios() as usize);
    let mut completions: Vec<Completion> = Vec::with_capacity(depth);
    let mut checksum = Checksum::new();
    let mut result = WorkloadResult::default();
    let mut fatal: Option<RunError> = None;
    let (mut next, mut outstanding) = (0u64, 0usize);
    let signals_before = queue.signals();
    let interrupts_before = (env.interrupts)();

    (env.mark)(env.start_mark);
    let t0 = (env.clock)();
    let mut t_last = t0;
    let mut stop = false;
    loop {
        let mut submitted = 0;
        while !stop && next < plan.ios() {
            let Some(&slot) = free.last() else { break };
            if budget.is_some_and(|b| (env.clock)().wrapping_sub(t0) >= b) {
                stop = true;
                break;
            }
            let (op, sector) = plan.io(next);
            let bytes = memory[slot as usize].bytes();
            match op {
                Op::Write => pattern(sector, env.generation, bytes),
                Op::Read => bytes.fill(POISON),
            }
            let pa = (env.phys)(bytes.as_ptr() as usize);
            let mut buffer = DmaBuffer::new(bytes, pa);
            let submitted_at = (env.clock)();
            match queue.submit(slot, op, sector / sectors_per_lba, &mut buffer) {
                Ok(()) => {
                    free.pop();
                    pending[slot as usize] = Some(Pending {
                        io: next,
                        op,
                        sector,
                        submitted_at,
                    });
                    if op == Op::Write {
                        model.record(sector, block_sectors, env.generation);
                    }
                    checksum.add(op, sector);
                    next += 1;
                    outstanding += 1;
                    submitted += 1;
                    result.achieved_qd = result.achieved_qd.max(outstanding as u64);
                }
                Err(SubmitError::Busy) => break,
                Err(SubmitError::Error(error)) => {
                    fatal.get_or_insert(RunError::Submit { io: next, error });
                    stop = true;
                }
            }
        }
        if submitted > 0 {
            queue.kick();
        }
        if outstanding == 0 {
            if !stop && next < plan.ios() {
                fatal.get_or_insert(RunError::Stalled);
            }
            break;
        }
        completions.clear();
        queue.poll(&mut completions);
        if completions.is_empty() {
            queue.wait();
            continue;
        }
        let now = (env.clock)();
        for c in completions.drain(..) {
            let Some(p) = pending.get_mut(c.tag as usize).and_then(Option::take) else {
                // The device lost track of our requests: never free memory it may still write.
                core::mem::forget(memory);
                return Err(RunError::UnknownTag(c.tag));
            };
            outstanding -= 1;
            free.push(c.tag);
            latencies.push(now.wrapping_sub(p.submitted_at));
            result.ios += 1;
            match p.op {
                Op::Read => result.reads += 1,
                Op::Write => result.writes += 1,
            }
            match c.status {
                IoStatus::Ok => {
                    result.bytes += plan.block_bytes();
                    if p.op == Op::Read {
                        match model.check_read(p.sector, memory[c.tag as usize].bytes()) {
                            Ok(digest) => {
                                result.read_digest = result.read_digest.wrapping_add(digest);
                            }
                            Err(mismatch) => {
                                fatal.get_or_insert(RunError::Mismatch {
                                    io: p.io,
                                    op: p.op,
                                    at: p.sector,
                                    mismatch,
                                });
                                stop = true;
                            }
                        }
                    }
                }
                IoStatus::Error(_) => {
                    result.errors += 1;
                    if p.op == Op::Write {
                        model.record(p.sector, block_sectors, UNKNOWN);
                    }
                }
            }
        }
        t_last = now;
    }
    (env.mark)(env.end_mark);

    if let Some(e) = fatal {
        return Err(e);
    }
    latencies.sort_unstable();
    result.cycles = t_last.wrapping_sub(t0);
    result.p50 = percentile(&latencies, 50);
    result.p99 = percentile(&latencies, 99);
    result.max = latencies.last().copied().unwrap_or(0);
    result.signals = queue.signals().wrapping_sub(signals_before);
    result.interrupts = (env.interrupts)().wrapping_sub(interrupts_before);
    result.checksum = checksum.value();
    Ok(result)
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
