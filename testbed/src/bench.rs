//! Running workloads on devices and turning them into report rows.
//!
//! For each device, [`run_device`]: pre-fills the backend's touched range with generation 0
//! ([`prefill`]), boots the guest with `bench-tsc:<hz> bench:<device>:<spec> ...` and the device's host
//! side attached ([`DeviceKit::configure`]), pairs the k-th `bench` line with the counters and the
//! vCPU's and device threads' CPU time of the mark window `(2k, 2k + 1)`, checks that guest and host
//! agree on the I/O sequence (checksum), and finally checks the backend's contents against the model of
//! every write ([`DeviceKit::verify`], by default [`verify_disk`]). A device whose data is wrong, that reports I/O errors or whose guest run fails gets
//! FAILED rows, never numbers.
//!
//! On a disk whose contents are not the testbed's ([`DiskContents::Image`]: a user's image) nothing is
//! pre-filled: the guest digests what it reads and the host checks that against the image
//! ([`image`], [`DeviceKit::verify_image`]). A run cancelled from outside ([`BenchOptions::cancel`])
//! stops the guest at once and reports the workloads that finished.
//!
//! A device plugs in with a [`DeviceKit`] on the host and one match arm in the guest's `open_device`.
//!
//! With several vCPUs ([`BenchOptions::vcpus`]), a device with a queue per vCPU
//! ([`DeviceKit::channels`]: the VMBus disks, a channel each) runs every workload split over the vCPUs
//! (`workload::split`: each vCPU its own disjoint share of the range, at the spec's queue depth, all at
//! once, between the BSP's two marks); the guest's line then names each vCPU's I/Os, the host checks
//! the combined checksum of every share and replays every share's writes ([`CompletedRun::parts`]).
//! Devices with one queue run on the BSP alone (their rows say `channels` 1).

pub mod baselines;
pub mod image;
pub mod ramdisk;
pub mod vmbus;

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use host_vsp::backend::{BlockBackend, DiskError};
use hypervisor_lite::GuestRam;
use workload::pattern::{pattern, PATTERN_UNIT, UNKNOWN};
use workload::{BenchLine, BenchOutcome, DiskModel, Op, Plan, PlanError, WorkloadSpec};

pub use baselines::{IdeKit, VirtioKit};
pub use image::{verify_image, ImageSnapshot};
pub use ramdisk::RamdiskKit;
pub use vmbus::VmbusKit;

use crate::report::{Measurement, Row};
use crate::vm::{LOG_GPA, LOG_LEN};
use crate::{GuestVm, GuestVmConfig};

/// A disk backend shared between the host side of a device and the testbed.
pub type Backend = Arc<dyn BlockBackend>;

/// Guest RAM for bench runs (kits may ask for more).
pub const BENCH_RAM_BYTES: u64 = 256 << 20;

/// One device as the testbed drives it: how to attach its host side and check its data afterwards.
pub trait DeviceKit {
    /// Name in the report.
    fn name(&self) -> &str;
    /// Name of the device in the guest's bench registry (`bench:<guest_name>:<spec>`).
    fn guest_name(&self) -> &str;
    /// Whether this is the in-guest baseline rather than a device (labelled as such).
    fn baseline(&self) -> bool {
        false
    }
    /// Attach the device's host side, serving `backend`, to the guest about to boot.
    fn configure(&self, config: &mut GuestVmConfig, backend: Backend) -> Result<()>;
    /// Check the backend after the guest ran `runs` (in order); the default replays their writes into a
    /// [`DiskModel`] and compares every touched sector ([`verify_disk`]).
    fn verify(&self, backend: &dyn BlockBackend, runs: &[CompletedRun]) -> Result<()> {
        verify_disk(backend, runs).map_err(Into::into)
    }
    /// [`DeviceKit::verify`] for a disk that held an image's own contents ([`DiskContents::Image`]),
    /// hashed where the workloads may write before the run (`snapshot`); the default is
    /// [`verify_image`].
    fn verify_image(
        &self,
        backend: &dyn BlockBackend,
        runs: &[CompletedRun],
        snapshot: &ImageSnapshot,
    ) -> Result<()> {
        verify_image(backend, runs, snapshot).map_err(Into::into)
    }
    /// Refuse a disk this device cannot serve, before any guest boots (default: any disk is fine).
    fn check_disk(&self, _capacity: u64) -> Result<()> {
        Ok(())
    }
    /// Queues the device gives a guest of `vcpus` vCPUs, one per vCPU at most; a workload is split over
    /// that many vCPUs (default 1: the device has one queue, the BSP runs it alone). The guest's
    /// `open_per_cpu` must agree, which the host checks on every line.
    fn channels(&self, _vcpus: u32) -> u32 {
        1
    }
}

/// Every device kit the testbed knows, in report order. A device adds one line here.
pub fn kits() -> Vec<Box<dyn DeviceKit>> {
    vec![
        Box::new(RamdiskKit),
        Box::new(IdeKit),
        Box::new(VirtioKit::default()),
        Box::new(VirtioKit::polling()),
        Box::new(VmbusKit::default()),
        Box::new(VmbusKit::polling()),
    ]
}

/// A workload the guest completed: what ran, the generation its writes stored, how many I/Os.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedRun {
    /// The spec.
    pub spec: WorkloadSpec,
    /// The generation of its writes; [`UNKNOWN`] for a workload that was interrupted (its writes may
    /// or may not have landed, its reads are not checked).
    pub generation: u8,
    /// I/Os the guest submitted (and completed).
    pub ios: u64,
    /// The guest's read digest (over an image; 0 over the pre-fill).
    pub read_digest: u64,
    /// Split over vCPUs: each one's I/Os, in VP order (empty: one vCPU ran the whole spec).
    pub vp_ios: Vec<u64>,
}

impl CompletedRun {
    /// What each vCPU ran on a disk of `capacity` sectors: the plan of its share of the spec and its
    /// I/Os (one vCPU: the spec's plan and `ios`).
    pub fn parts(&self, capacity: u64) -> Result<Vec<(Plan, u64)>, PlanError> {
        if self.vp_ios.is_empty() {
            return Ok(vec![(Plan::new(&self.spec, capacity)?, self.ios)]);
        }
        workload::vp_shares(&self.spec, self.vp_ios.len(), capacity)?
            .iter()
            .zip(&self.vp_ios)
            .map(|(share, &ios)| Ok((Plan::new(share, capacity)?, ios)))
            .collect()
    }
}

/// What a disk holds when the guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskContents {
    /// The testbed's own: every sector the workloads touch is pre-filled ([`prefill`]) and every read is
    /// checked in the guest.
    #[default]
    Pattern,
    /// An image's own contents, which only the host can read: nothing is pre-filled and reads of sectors
    /// no workload wrote are checked by the host ([`image`]).
    Image,
}

/// Why a disk's contents are not what the workloads wrote.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The backend failed.
    #[error("disk backend failed")]
    Disk(#[from] DiskError),
    /// A workload does not fit the disk.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A sector holds the wrong contents.
    #[error("sector {sector} does not hold the data of generation {expected}")]
    Mismatch {
        /// The first wrong sector.
        sector: u64,
        /// The generation it should hold.
        expected: u8,
    },
    /// A workload's reads returned data the image did not hold.
    #[error("the reads of workload {workload} returned data the image does not hold")]
    ReadDigest {
        /// The workload.
        workload: String,
    },
    /// A sector of an image changed that no workload wrote.
    #[error("sector {sector} changed although no workload wrote it")]
    Changed {
        /// The first such sector.
        sector: u64,
    },
}

/// Measure the TSC rate (the guest's TSC runs at the host's rate here).
pub use hypervisor_lite::tsc::calibrate_tsc;

/// The sectors `[start, end)` the specs can touch on a disk of `capacity_sectors`.
pub fn span(specs: &[WorkloadSpec], capacity_sectors: u64) -> Result<(u64, u64), PlanError> {
    let mut span: Option<(u64, u64)> = None;
    for spec in specs {
        let plan = Plan::new(spec, capacity_sectors)?;
        let (start, end) = (spec.lba_range.start, plan.end_sector());
        span = Some(span.map_or((start, end), |(s, e)| (s.min(start), e.max(end))));
    }
    Ok(span.unwrap_or((0, 0)))
}

/// Write generation 0 over every sector the specs can touch.
pub fn prefill(backend: &dyn BlockBackend, specs: &[WorkloadSpec]) -> Result<(), DataError> {
    let (start, end) = span(specs, backend.sectors())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut sector = start;
    while sector < end {
        let n = (end - sector).min((buf.len() / PATTERN_UNIT) as u64);
        let bytes = &mut buf[..n as usize * PATTERN_UNIT];
        pattern(sector, 0, bytes);
        backend.write_at(sector * PATTERN_UNIT as u64, bytes, false)?;
        sector += n;
    }
    backend.flush()?;
    Ok(())
}

/// Replay the writes of `runs` into a model and check every sector they could have touched.
pub fn verify_disk(backend: &dyn BlockBackend, runs: &[CompletedRun]) -> Result<(), DataError> {
    let capacity = backend.sectors();
    let mut model = DiskModel::new();
    for run in runs.iter().filter(|r| r.spec.kind.writes()) {
        for (plan, ios) in run.parts(capacity)? {
            for i in 0..ios {
                if let (Op::Write, sector) = plan.io(i) {
                    model.record(sector, plan.block_sectors(), run.generation);
                }
            }
        }
    }
    let specs: Vec<WorkloadSpec> = runs.iter().map(|r| r.spec.clone()).collect();
    let (start, end) = span(&specs, capacity)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut sector = start;
    while sector < end {
        let n = (end - sector).min((buf.len() / PATTERN_UNIT) as u64);
        let bytes = &mut buf[..n as usize * PATTERN_UNIT];
        backend.read_at(sector * PATTERN_UNIT as u64, bytes)?;
        model
            .check(sector, bytes)
            .map_err(|m| DataError::Mismatch {
                sector: m.sector,
                expected: m.expected,
            })?;
        sector += n;
    }
    Ok(())
}

/// How to run a device.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// TSC ticks per second ([`calibrate_tsc`]).
    pub tsc_hz: u64,
    /// Print a line per finished workload to stderr while the guest runs.
    pub progress: bool,
    /// Echo the guest's serial console.
    pub echo: bool,
    /// Stop the guest after this long (default: the specs' budgets plus a minute).
    pub timeout: Option<Duration>,
    /// What the disk holds at boot (and so how its data is checked).
    pub contents: DiskContents,
    /// Once set (e.g. on SIGINT), the guest is stopped and only the workloads that finished are
    /// reported ([`DeviceRun::interrupted`]).
    pub cancel: Option<Arc<AtomicBool>>,
    /// Called with each `bench` line as soon as the guest logs it, while the guest runs on (the
    /// guest logs a workload's line after its flush completed). The log is looked at every 2 ms.
    pub on_line: Option<LineHook>,
    /// vCPUs of the guest (1..=4); see the module docs for how a workload uses them.
    pub vcpus: u32,
}

/// A callback on the guest's `bench` lines ([`BenchOptions::on_line`]).
#[derive(Clone)]
pub struct LineHook(pub Arc<dyn Fn(&BenchLine) + Send + Sync>);

impl std::fmt::Debug for LineHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LineHook")
    }
}

impl BenchOptions {
    /// Silent options with a calibrated TSC and a hard `timeout` (what tests use).
    pub fn quiet(timeout: Duration) -> Self {
        Self {
            tsc_hz: calibrate_tsc(),
            progress: false,
            echo: false,
            timeout: Some(timeout),
            contents: DiskContents::Pattern,
            cancel: None,
            on_line: None,
            vcpus: 1,
        }
    }
}

/// What one device's run produced.
#[derive(Debug)]
pub struct DeviceRun {
    /// One row per spec, in order.
    pub rows: Vec<Row>,
    /// The guest's console (empty if it never booted).
    pub console: String,
    /// The device threads whose CPU time the rows count (running when the guest stopped).
    pub device_threads: Vec<String>,
    /// The run was cancelled: `rows` holds only the workloads that finished.
    pub interrupted: bool,
    /// Per spec, the host's counters over its mark window (per vCPU in `vcpus`); `None` where the
    /// guest wrote no such window.
    pub windows: Vec<Option<hypervisor_lite::StatsSnapshot>>,
}

/// The guest command line for `specs` on `device`.
pub fn cmdline(device: &str, specs: &[WorkloadSpec], tsc_hz: u64) -> String {
    let mut line = format!("bench-tsc:{tsc_hz}");
    for spec in specs {
        line.push_str(&format!(" bench:{device}:{spec}"));
    }
    line
}

/// The whole command line the guest boots with: [`cmdline`], preceded over an image by
/// `bench-data:image`.
pub fn boot_cmdline(
    device: &str,
    specs: &[WorkloadSpec],
    tsc_hz: u64,
    contents: DiskContents,
) -> String {
    let line = cmdline(device, specs, tsc_hz);
    match contents {
        DiskContents::Pattern => line,
        DiskContents::Image => format!("bench-data:image {line}"),
    }
}

/// Run `specs` on one device (see the module docs). Never fails: failures become FAILED rows.
pub fn run_device(
    kit: &dyn DeviceKit,
    backend: Backend,
    specs: &[WorkloadSpec],
    opts: &BenchOptions,
) -> DeviceRun {
    let vcpus = opts.vcpus.max(1);
    let channels = kit.channels(vcpus).clamp(1, vcpus);
    let row = |spec: &WorkloadSpec, outcome| Row {
        kind: crate::report::Kind::Block,
        device: kit.name().to_string(),
        baseline: kit.baseline(),
        workload: spec.name.clone(),
        spec: spec.to_string(),
        vcpus,
        channels,
        outcome,
    };
    let all_failed = |why: String| DeviceRun {
        rows: specs.iter().map(|s| row(s, Err(why.clone()))).collect(),
        console: String::new(),
        device_threads: Vec::new(),
        interrupted: false,
        windows: Vec::new(),
    };
    let snapshot = match opts.contents {
        DiskContents::Pattern => prefill(&*backend, specs)
            .map(|()| None)
            .map_err(|e| format!("pre-filling the disk: {e:#}")),
        DiskContents::Image => ImageSnapshot::take(&*backend, specs)
            .map(|s| {
                tracing::info!(sectors = s.len(), "hashed what the writes may overwrite");
                Some(s)
            })
            .map_err(|e| format!("reading the image before the run: {e:#}")),
    };
    let snapshot = match snapshot {
        Ok(s) => s,
        Err(why) => return all_failed(why),
    };
    let (run, console) = match boot_and_run(kit, backend.clone(), specs, opts) {
        Ok(r) => r,
        Err(e) => return all_failed(format!("{e:#}")),
    };
    let interrupted = run.exit_code != Some(0)
        && opts
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Acquire));
    let capacity = backend.sectors();
    let lines: Vec<BenchLine> = console
        .lines()
        .filter_map(|l| BenchLine::parse(l).ok())
        .collect();
    let mut outcomes: Vec<Result<Measurement, String>> = Vec::new();
    let mut completed = Vec::new();
    for (k, spec) in specs.iter().enumerate() {
        let mark = 2 * k as u32;
        let Some(line) = lines.iter().find(|l| l.mark == mark) else {
            if interrupted {
                // The workload the guest was running when it was stopped: its writes may have landed.
                if spec.kind.writes() {
                    let shares = workload::vp_shares(spec, channels as usize, capacity);
                    if let Ok(shares) = shares {
                        let vp_ios: Vec<u64> = shares
                            .iter()
                            .filter_map(|s| Plan::new(s, capacity).ok().map(|p| p.ios()))
                            .collect();
                        completed.push(CompletedRun {
                            spec: spec.clone(),
                            generation: UNKNOWN,
                            ios: vp_ios.iter().sum(),
                            read_digest: 0,
                            vp_ios: if channels > 1 { vp_ios } else { Vec::new() },
                        });
                    }
                }
                break;
            }
            outcomes.push(Err(format!(
                "not run: the guest stopped first ({:?}, exit code {:?})",
                run.outcome, run.exit_code
            )));
            continue;
        };
        let outcome = match &line.outcome {
            BenchOutcome::Failed(why) => Err(format!("in the guest: {why}")),
            BenchOutcome::Done(r) => {
                let done = CompletedRun {
                    spec: spec.clone(),
                    generation: line.generation,
                    ios: r.ios,
                    read_digest: r.read_digest,
                    vp_ios: line.vp_ios.clone(),
                };
                let expected = done.parts(capacity).map(|parts| {
                    let sums: Vec<u64> = parts.iter().map(|(p, ios)| p.checksum(*ios)).collect();
                    workload::combine_checksums(&sums)
                });
                let split = line.vp_ios.len().max(1);
                let counted = line.vp_ios.is_empty() || line.vp_ios.iter().sum::<u64>() == r.ios;
                completed.push(done);
                if line.device != kit.guest_name() || line.spec != spec.to_string() {
                    Err(format!(
                        "the guest ran `{}` on `{}`",
                        line.spec, line.device
                    ))
                } else if split != channels as usize || !counted {
                    Err(format!(
                        "the guest split the workload over {split} queue(s) ({:?} I/Os, {} in all), \
                         the device has {channels} for {vcpus} vCPU(s)",
                        line.vp_ios, r.ios
                    ))
                } else if expected != Ok(r.checksum) {
                    Err("guest and host disagree on the I/O sequence (checksum)".to_string())
                } else if r.errors > 0 {
                    Err(format!("{} of {} I/Os failed", r.errors, r.ios))
                } else {
                    match (run.window(mark, mark + 1), run.cpu_window(mark, mark + 1)) {
                        (Some(w), Some(cpu)) => Ok(Measurement::new(r, &w, &cpu, opts.tsc_hz)),
                        _ => Err("the guest's mark window is missing".to_string()),
                    }
                }
            }
        };
        outcomes.push(outcome);
    }
    // The device's data: checked as a whole, after the run (after an interruption too, for what ran).
    let device_failure = if run.exit_code != Some(0) && !interrupted {
        outcomes
            .iter()
            .zip(specs)
            .find_map(|(o, s)| {
                o.as_ref()
                    .err()
                    .map(|e| format!("workload {} failed: {e}", s.name))
            })
            .or_else(|| Some(format!("guest run failed: {:?}", run.outcome)))
    } else {
        let checked = match &snapshot {
            None => kit.verify(&*backend, &completed),
            Some(snapshot) => kit.verify_image(&*backend, &completed, snapshot),
        };
        checked
            .err()
            .map(|e| format!("data check after the run: {e:#}"))
    };
    let rows = specs
        .iter()
        .zip(outcomes)
        .map(|(spec, outcome)| {
            let outcome = match (&device_failure, outcome) {
                (_, Err(e)) => Err(e),
                (Some(why), Ok(_)) => Err(why.clone()),
                (None, Ok(m)) => Ok(m),
            };
            row(spec, outcome)
        })
        .collect();
    let windows = (0..specs.len() as u32)
        .map(|k| run.window(2 * k, 2 * k + 1))
        .collect();
    DeviceRun {
        rows,
        console,
        device_threads: run.device_threads,
        interrupted,
        windows,
    }
}

/// Boot the guest with the kit attached and run it to the end, printing progress if asked.
fn boot_and_run(
    kit: &dyn DeviceKit,
    backend: Backend,
    specs: &[WorkloadSpec],
    opts: &BenchOptions,
) -> Result<(crate::GuestRun, String)> {
    let mut config = GuestVmConfig::new(boot_cmdline(
        kit.guest_name(),
        specs,
        opts.tsc_hz,
        opts.contents,
    ));
    config.ram_bytes = BENCH_RAM_BYTES;
    config.echo = opts.echo;
    config.vcpus = opts.vcpus.max(1);
    kit.configure(&mut config, backend)
        .with_context(|| format!("attaching {}", kit.name()))?;
    let timeout = opts.timeout.unwrap_or_else(|| {
        let budgets: u64 = specs
            .iter()
            .map(|s| {
                if s.max_millis > 0 {
                    u64::from(s.max_millis)
                } else {
                    30_000
                }
            })
            .sum();
        Duration::from_millis(budgets + 60_000)
    });
    let vm = GuestVm::new(config).context("booting the guest")?;
    let done = Arc::new(AtomicBool::new(false));
    let watcher = (opts.progress || opts.on_line.is_some()).then(|| {
        let (ram, done, name) = (
            vm.partition().ram().clone(),
            done.clone(),
            kit.name().to_string(),
        );
        let total = specs.len();
        let (progress, hook) = (opts.progress, opts.on_line.clone());
        std::thread::spawn(move || {
            watch_progress(&ram, &done, &name, total, progress, hook.as_ref())
        })
    });
    let canceller = opts.cancel.clone().map(|cancel| {
        let (stop, done) = (vm.partition().stop_handle(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                if cancel.load(Ordering::Acquire) {
                    tracing::info!("cancelled: stopping the guest");
                    stop.stop();
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    });
    let run = vm.run(timeout);
    done.store(true, Ordering::Release);
    for thread in [watcher, canceller].into_iter().flatten() {
        let _ = thread.join();
    }
    let run = run?;
    let console = run.console.clone();
    Ok((run, console))
}

/// Until `done`: for each `bench` line the guest logs, print a stderr line (if `progress`) and call
/// `hook`.
fn watch_progress(
    ram: &GuestRam,
    done: &AtomicBool,
    device: &str,
    total: usize,
    progress: bool,
    hook: Option<&LineHook>,
) {
    let period = if hook.is_some() { 2 } else { 50 };
    let mut seen = 0usize;
    let mut consumed = 0u64;
    let mut pending = String::new();
    loop {
        let finished = done.load(Ordering::Acquire);
        let written = ram
            .load_u64(LOG_GPA, Ordering::Acquire)
            .unwrap_or(0)
            .min(LOG_LEN - 16);
        if written > consumed {
            let mut text = vec![0u8; (written - consumed) as usize];
            if ram.read(LOG_GPA + 16 + consumed, &mut text).is_ok() {
                pending.push_str(&String::from_utf8_lossy(&text));
                consumed = written;
            }
        }
        while let Some(at) = pending.find('\n') {
            let line: String = pending.drain(..=at).collect();
            if let Ok(l) = BenchLine::parse(&line) {
                seen += 1;
                if let Some(hook) = hook {
                    (hook.0)(&l);
                }
                if !progress {
                    continue;
                }
                let what = match &l.outcome {
                    BenchOutcome::Done(r) => format!("{} I/Os", r.ios),
                    BenchOutcome::Failed(why) => format!("FAILED: {why}"),
                };
                let _ = writeln!(
                    std::io::stderr(),
                    "  [{device}] {seen}/{total} {}: {what}",
                    l.workload
                );
            }
        }
        if finished {
            return;
        }
        std::thread::sleep(Duration::from_millis(period));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use host_vsp::backend::RamDisk;
    use workload::spec::{Kind, LbaRange};

    fn spec(name: &str, kind: Kind, bs: u32, n: u64, start: u64, count: u64) -> WorkloadSpec {
        WorkloadSpec {
            lba_range: LbaRange { start, count },
            ..WorkloadSpec::new(name, kind, bs, 4, n)
        }
    }

    /// Apply a plan's writes to a backend the way a correct device would.
    fn write_like_a_device(disk: &RamDisk, run: &CompletedRun) {
        let plan = Plan::new(&run.spec, disk.sectors()).unwrap();
        let mut buf = vec![0u8; plan.block_bytes() as usize];
        for i in 0..run.ios {
            if let (Op::Write, sector) = plan.io(i) {
                pattern(sector, run.generation, &mut buf);
                disk.write_at(sector * 512, &buf, false).unwrap();
            }
        }
    }

    #[test]
    fn prefill_then_verify_accepts_correct_writes_and_catches_wrong_ones() {
        let disk = RamDisk::new(4 << 20);
        let specs = [
            spec("r", Kind::RandRead, 4096, 100, 0, 4096),
            spec("w", Kind::RandWrite, 4096, 200, 1024, 2048),
            spec("s", Kind::SeqWrite, 65536, 40, 0, 0),
        ];
        prefill(&disk, &specs).unwrap();
        assert_eq!(span(&specs, disk.sectors()).unwrap(), (0, 8192));
        let runs = vec![
            CompletedRun {
                spec: specs[0].clone(),
                generation: 0,
                ios: 100,
                read_digest: 0,
                vp_ios: Vec::new(),
            },
            CompletedRun {
                spec: specs[1].clone(),
                generation: 2,
                ios: 150,
                read_digest: 0,
                vp_ios: Vec::new(),
            },
            CompletedRun {
                spec: specs[2].clone(),
                generation: 3,
                ios: 40,
                read_digest: 0,
                vp_ios: Vec::new(),
            },
        ];
        // Before the writes reached the disk, the check fails.
        assert!(matches!(
            verify_disk(&disk, &runs),
            Err(DataError::Mismatch {
                expected: 2 | 3,
                ..
            })
        ));
        write_like_a_device(&disk, &runs[1]);
        write_like_a_device(&disk, &runs[2]);
        verify_disk(&disk, &runs).unwrap();
        // One flipped byte anywhere in the span is caught.
        let mut b = [0u8; 1];
        disk.read_at(7000 * 512 + 3, &mut b).unwrap();
        disk.write_at(7000 * 512 + 3, &[b[0] ^ 1], false).unwrap();
        assert!(matches!(
            verify_disk(&disk, &runs),
            Err(DataError::Mismatch { sector: 7000, .. })
        ));
        // A range beyond the disk is an error, not a pass.
        let too_far = [spec("x", Kind::SeqRead, 512, 1, 1 << 30, 1)];
        assert!(matches!(prefill(&disk, &too_far), Err(DataError::Plan(_))));
    }

    #[test]
    fn cmdline_carries_the_tsc_and_every_spec() {
        let specs = workload::default_workloads();
        let line = cmdline("ramdisk", &specs, 2_400_000_000);
        let tokens: Vec<&str> = line.split(' ').collect();
        assert_eq!(tokens[0], "bench-tsc:2400000000");
        assert_eq!(tokens.len(), 1 + specs.len());
        for (t, s) in tokens[1..].iter().zip(&specs) {
            let (dev, spec) = t.strip_prefix("bench:").unwrap().split_once(':').unwrap();
            assert_eq!(dev, "ramdisk");
            assert_eq!(&WorkloadSpec::parse(spec).unwrap(), s);
        }
        assert!(line.len() <= crate::vm::MAX_CMDLINE);
    }

    #[test]
    fn tsc_calibration_is_plausible() {
        let hz = calibrate_tsc();
        assert!((100_000_000..20_000_000_000).contains(&hz), "{hz}");
    }
}
