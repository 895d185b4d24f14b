//! Block I/O benchmark scenarios, run by the `workload` crate's engine:
//! - `bench-tsc:<hz>`: the TSC rate the host measured (needed for workloads with a time budget);
//! - `bench-data:pattern|image`: what the disks held at boot: the host's pre-fill (default; every read is
//!   checked) or an image's own contents, which only the host knows (reads of sectors no workload wrote
//!   are digested for the host to check: `DiskModel::over_image`);
//! - `bench:<device>:<spec>`: run one workload (`WorkloadSpec` encoding) on the named device and print
//!   its `bench ...` result line. The k-th `bench` token of a boot measures between marks `2k` and
//!   `2k + 1`, and a workload that writes stores generation `k + 1`.
//!
//! On a guest with several CPUs, a device with a queue per CPU ([`open_per_cpu`]: the VMBus disks
//! `vmbus` and `vmbus-poll`, a channel each) runs the workload split over the CPUs
//! (`workload::split`): every CPU runs the engine on its own queue and its own share of the range, at
//! the spec's queue depth, all at once. The BSP writes mark `2k`, hands each AP its share (an IPI),
//! runs its own, waits for every AP, and writes mark `2k + 1`; the line then carries the sums, the
//! BSP's TSC span between the marks as `cycles`, the worst CPU's latency percentiles, the sum of the
//! CPUs' achieved depths, the combined checksum and each CPU's I/Os (`vp_ios`). Only the primary
//! channel is flushed, after the window (SYNCHRONIZE CACHE is for the whole LUN). Other devices
//! have one queue and run on the BSP alone, as on one CPU.
//!
//! Devices register in [`open_device`]; each one is opened per token and flushed after its window. The
//! generations every device's sectors hold ([`DiskModel`]) persist across tokens, so later reads are
//! checked against earlier writes. `ramdisk` is the in-guest baseline: a disk image the host copies into
//! guest RAM when it is opened and back when it is flushed (one port write each, outside the measured
//! window), served synchronously with no exit at all.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use workload::line::BenchOutcome;
use workload::pattern::MAX_GENERATION;
use workload::{
    BenchLine, BlockQueue, Completion, DeviceError, DiskModel, DmaBuffer, IoStatus, Op, RunEnv,
    SubmitError, WorkloadSpec,
};

use super::bench_split as split;
use super::Outcome;
use crate::{arch, println, smp};

/// TSC ticks per second, from `bench-tsc` (0 = unknown).
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
/// The disks hold an image's own contents, not the pre-fill (`bench-data:image`).
static OVER_IMAGE: AtomicBool = AtomicBool::new(false);
/// `bench` tokens run so far in this boot.
static BENCH_INDEX: AtomicU32 = AtomicU32::new(0);
/// Per device: the generation each sector holds.
static MODELS: spin::Mutex<Vec<(String, DiskModel)>> = spin::Mutex::new(Vec::new());

/// Run `name` if it is a bench scenario.
pub fn run(name: &str, args: &str) -> Option<Outcome> {
    match name {
        "bench-tsc" => Some(set_tsc(args)),
        "bench-data" => Some(set_data(args)),
        "bench" => Some(bench(args)),
        _ => None,
    }
}

/// Open a guest block device by name. A device registers with one match arm.
fn open_device(name: &str) -> Result<Box<dyn BlockQueue>, String> {
    match name {
        "ramdisk" => Ok(Box::new(RamDisk::open()?)),
        "vmbus" => Ok(Box::new(crate::vmbus_disk::VmbusDisk::open(0)?)),
        "vmbus-poll" => Ok(Box::new(crate::vmbus_disk::VmbusDisk::open_with(0, true)?)),
        _ if name.starts_with("vmbus") => {
            let index = name["vmbus".len()..]
                .parse()
                .map_err(|_| format!("unknown bench device `{name}`"))?;
            Ok(Box::new(crate::vmbus_disk::VmbusDisk::open(index)?))
        }
        "ide" => Ok(Box::new(crate::block_bench::IdeBench::open()?)),
        "virtio" => Ok(Box::new(crate::block_bench::VirtioBench::open()?)),
        "virtio-poll" => Ok(Box::new(crate::block_bench::VirtioBench::open_with(true)?)),
        _ => Err(format!("unknown bench device `{name}`")),
    }
}

/// One queue per CPU for a device that has them (the VMBus disks: primary channel and one
/// sub-channel per AP); `None` for a device with one queue or on a guest with one CPU.
fn open_per_cpu(name: &str) -> Result<Option<Vec<Box<dyn BlockQueue>>>, String> {
    let polling = match name {
        _ if smp::count() < 2 => return Ok(None),
        "vmbus" => false,
        "vmbus-poll" => true,
        _ => return Ok(None),
    };
    let queues = crate::vmbus_disk::VmbusDisk::open_per_cpu(0, polling)?;
    Ok(Some(
        queues
            .into_iter()
            .map(|q| Box::new(q) as Box<dyn BlockQueue>)
            .collect(),
    ))
}

/// Forget what device `name` holds (it was removed; a device of that name later is a new disk).
pub fn forget_device(name: &str) {
    MODELS.lock().retain(|(n, _)| n != name);
}

fn set_tsc(args: &str) -> Outcome {
    let hz: u64 = args
        .parse()
        .map_err(|_| format!("bench-tsc: `{args}` is not a rate in Hz"))?;
    TSC_HZ.store(hz, Ordering::Relaxed);
    Ok(())
}

fn set_data(args: &str) -> Outcome {
    let image = match args {
        "pattern" => false,
        "image" => true,
        _ => {
            return Err(format!(
                "bench-data: `{args}` is neither `pattern` nor `image`"
            ))
        }
    };
    OVER_IMAGE.store(image, Ordering::Relaxed);
    Ok(())
}

/// TSC ticks per second from `bench-tsc` (0 = not given).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// The time-stamp counter.
pub fn tsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter; it is allowed at CPL3 (CR4.TSD is clear) and has
    // no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn bench(args: &str) -> Outcome {
    let k = BENCH_INDEX.fetch_add(1, Ordering::Relaxed);
    let (device, token) = args.split_once(':').unwrap_or((args, ""));
    let spec = WorkloadSpec::parse(token);
    let generation = match &spec {
        Ok(s) if s.kind.writes() => u8::try_from(k + 1).unwrap_or(u8::MAX),
        _ => 0,
    };
    let result = spec
        .as_ref()
        .map_err(ToString::to_string)
        .and_then(|spec| measure(device, spec, k, generation));
    let line = BenchLine {
        mark: 2 * k,
        device: device.to_string(),
        workload: spec.as_ref().map_or("?".to_string(), |s| s.name.clone()),
        generation,
        spec: spec.as_ref().map_or(token.to_string(), ToString::to_string),
        vp_ios: result.as_ref().map_or(Vec::new(), |(_, v)| v.clone()),
        outcome: match &result {
            Ok((r, _)) => BenchOutcome::Done(r.clone()),
            Err(e) => BenchOutcome::Failed(e.clone()),
        },
    };
    println!("{line}");
    result.map(|_| ())
}

/// Open the device, run the engine between marks `2k` and `2k + 1` (split over the CPUs where the
/// device has a queue per CPU: then also each CPU's I/Os), flush.
fn measure(
    device: &str,
    spec: &WorkloadSpec,
    k: u32,
    generation: u8,
) -> Result<(workload::WorkloadResult, Vec<u64>), String> {
    if generation > MAX_GENERATION {
        return Err(format!("too many bench tokens for write generations ({k})"));
    }
    let per_cpu = open_per_cpu(device)?;
    let mut models = MODELS.lock();
    let at = match models.iter().position(|(name, _)| name == device) {
        Some(at) => at,
        None => {
            let model = if OVER_IMAGE.load(Ordering::Relaxed) {
                DiskModel::over_image()
            } else {
                DiskModel::new()
            };
            models.push((device.to_string(), model));
            models.len() - 1
        }
    };
    let model = &mut models[at].1;
    if let Some(queues) = per_cpu {
        return split::measure(queues, spec, model, k, generation);
    }
    let mut queue = open_device(device)?;
    let mark = |id| arch::mark(id);
    let env = RunEnv {
        clock: &tsc,
        tsc_hz: TSC_HZ.load(Ordering::Relaxed),
        mark: &mark,
        start_mark: 2 * k,
        end_mark: 2 * k + 1,
        // The kernel maps all RAM one to one.
        phys: &|va| va as u64,
        interrupts: &arch::interrupts_total,
        generation,
    };
    let result = workload::run(&mut *queue, spec, model, &env).map_err(|e| e.to_string());
    let flushed = queue.flush().map_err(|e| format!("flush: {e}"));
    let result = result?;
    flushed?;
    Ok((result, Vec::new()))
}

use guest_abi::RAMDISK_PORT;
const CMD_QUERY: u64 = 1;
const CMD_LOAD: u64 = 2;
const CMD_STORE: u64 = 3;
/// Status before the host has answered.
const NO_ANSWER: u64 = u64::MAX;

/// `{cmd, gpa, len, status, capacity}` shared with the host (only accessed atomically).
type RamDiskCommand = [AtomicU64; 5];

/// A disk image held in guest RAM, served synchronously: requests complete inside `submit`.
struct RamDisk {
    data: Vec<u8>,
    done: Vec<Completion>,
    command: Box<RamDiskCommand>,
}

impl RamDisk {
    fn open() -> Result<Self, String> {
        let mut disk = RamDisk {
            data: Vec::new(),
            done: Vec::new(),
            command: Box::new(core::array::from_fn(|_| AtomicU64::new(0))),
        };
        let capacity = disk.host(CMD_QUERY, 0, 0)?;
        let len = usize::try_from(capacity)
            .ok()
            .filter(|&l| l > 0 && l.is_multiple_of(512))
            .ok_or_else(|| format!("ramdisk: bad capacity {capacity}"))?;
        disk.data = vec![0u8; len];
        let gpa = disk.data.as_ptr() as u64;
        disk.host(CMD_LOAD, gpa, capacity)?;
        Ok(disk)
    }

    /// One command to the host (one exit); returns the capacity word.
    fn host(&mut self, cmd: u64, gpa: u64, len: u64) -> Result<u64, String> {
        let c = &self.command;
        c[1].store(gpa, Ordering::Relaxed);
        c[2].store(len, Ordering::Relaxed);
        c[3].store(NO_ANSWER, Ordering::Relaxed);
        c[0].store(cmd, Ordering::Release);
        let block = c.as_ptr() as u64;
        let block = u32::try_from(block).map_err(|_| "ramdisk: command block above 4 GiB")?;
        arch::outl(RAMDISK_PORT, block);
        // Acquire: the host's answer (and, for LOAD, the disk contents it wrote) happen before.
        match c[3].load(Ordering::Acquire) {
            0 => Ok(c[4].load(Ordering::Relaxed)),
            NO_ANSWER => {
                Err("ramdisk: no host backend answers (is the ramdisk kit attached?)".into())
            }
            status => Err(format!(
                "ramdisk: host refused command {cmd}: status {status}"
            )),
        }
    }
}

impl BlockQueue for RamDisk {
    fn block_size(&self) -> u32 {
        512
    }

    fn capacity_blocks(&self) -> u64 {
        self.data.len() as u64 / 512
    }

    fn max_outstanding(&self) -> usize {
        256
    }

    fn submit(
        &mut self,
        tag: u32,
        op: Op,
        lba: u64,
        buffer: &mut DmaBuffer<'_>,
    ) -> Result<(), SubmitError> {
        let range = usize::try_from(lba)
            .ok()
            .and_then(|l| l.checked_mul(512))
            .and_then(|at| Some(at..at.checked_add(buffer.len())?))
            .filter(|r| r.end <= self.data.len())
            .ok_or(SubmitError::Error(DeviceError {
                code: 1,
                reason: "request beyond the ramdisk",
            }))?;
        match op {
            Op::Read => buffer.bytes().copy_from_slice(&self.data[range]),
            Op::Write => self.data[range].copy_from_slice(buffer.bytes()),
        }
        self.done.push(Completion {
            tag,
            status: IoStatus::Ok,
        });
        Ok(())
    }

    fn kick(&mut self) {}

    fn poll(&mut self, completions: &mut Vec<Completion>) -> usize {
        let n = self.done.len();
        completions.append(&mut self.done);
        n
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        let gpa = self.data.as_ptr() as u64;
        let len = self.data.len() as u64;
        self.host(CMD_STORE, gpa, len)
            .map(|_| ())
            .map_err(|_| DeviceError {
                code: 2,
                reason: "ramdisk: the host did not store the image",
            })
    }
}
