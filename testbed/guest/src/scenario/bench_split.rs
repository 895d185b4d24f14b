//! A `bench` workload split over every CPU, each on its own queue (see `bench`'s module docs): the
//! BSP's marks bracket the whole parallel run, each CPU runs the engine on its share of the range
//! (`workload::split`) with a copy of the disk model, and the BSP merges the results and the models.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use workload::{BlockQueue, DiskModel, RunEnv, WorkloadResult, WorkloadSpec};

use super::bench::{tsc, tsc_hz};
use crate::arch::{self, MAX_CPUS};
use crate::smp::{self, OnAnyCpu};

/// What one CPU ran and leaves for the BSP: its queue, its model and its result.
struct Share {
    queue: Box<dyn BlockQueue>,
    spec: WorkloadSpec,
    model: DiskModel,
    result: Result<WorkloadResult, String>,
}

/// Each AP's finished share.
static DONE: [spin::Mutex<Option<OnAnyCpu<Share>>>; MAX_CPUS] =
    [const { spin::Mutex::new(None) }; MAX_CPUS];

/// Run `spec` split over `queues` (one per CPU, VP order) between marks `2k` and `2k + 1`; flush the
/// first queue after the window. Returns the merged result and each CPU's I/Os.
pub fn measure(
    mut queues: Vec<Box<dyn BlockQueue>>,
    spec: &WorkloadSpec,
    model: &mut DiskModel,
    k: u32,
    generation: u8,
) -> Result<(WorkloadResult, Vec<u64>), String> {
    let cpus = queues.len();
    if cpus != smp::count() {
        return Err(format!("{cpus} queues for {} CPUs", smp::count()));
    }
    let first = &queues[0];
    let capacity = first
        .capacity_blocks()
        .saturating_mul(u64::from(first.block_size() / 512));
    let shares = workload::vp_shares(spec, cpus, capacity).map_err(|e| e.to_string())?;
    // Everything each CPU needs is made before the window.
    let mut jobs: Vec<Share> = queues
        .drain(..)
        .zip(&shares)
        .map(|(queue, share)| Share {
            queue,
            spec: share.clone(),
            model: model.clone(),
            result: Err("not run".to_string()),
        })
        .collect();
    let mut own = jobs.remove(0);

    arch::mark(2 * k);
    let t0 = tsc();
    let mut posted = Vec::new();
    let mut refused = None;
    for (i, job) in jobs.into_iter().enumerate() {
        let vp = i + 1;
        let job = OnAnyCpu(job);
        let ran = smp::run_on(vp, move || {
            let mut share = job.into_inner();
            share.result = run_share(&mut share, generation);
            *DONE[smp::current()].lock() = Some(OnAnyCpu(share));
        });
        match ran {
            Ok(()) => posted.push(vp),
            Err(e) => {
                refused.get_or_insert(format!("vp{vp}: {e}"));
            }
        }
    }
    own.result = run_share(&mut own, generation);
    for &vp in &posted {
        smp::wait_idle(vp);
    }
    let t1 = tsc();
    arch::mark(2 * k + 1);

    let mut finished = alloc::vec![own];
    for &vp in &posted {
        let share = DONE[vp]
            .lock()
            .take()
            .ok_or_else(|| format!("vp{vp} left no result"))?
            .into_inner();
        finished.push(share);
    }
    // Every CPU's writes go back into the model, whatever happened (a failed write is UNKNOWN).
    for share in &finished {
        let r = share.spec.lba_range;
        model.adopt(&share.model, r.start, r.count);
    }
    let flushed = finished[0].queue.flush().map_err(|e| format!("flush: {e}"));
    if let Some(e) = refused {
        return Err(e);
    }
    let mut results = Vec::with_capacity(cpus);
    for (vp, share) in finished.into_iter().enumerate() {
        results.push(share.result.map_err(|e| format!("vp{vp}: {e}"))?);
    }
    flushed?;
    Ok((
        merge(&results, t1.wrapping_sub(t0)),
        results.iter().map(|r| r.ios).collect(),
    ))
}

/// Run one CPU's share on the calling CPU (no marks: the BSP's bracket the whole run).
fn run_share(share: &mut Share, generation: u8) -> Result<WorkloadResult, String> {
    let no_mark = |_| {};
    let env = RunEnv {
        clock: &tsc,
        tsc_hz: tsc_hz(),
        mark: &no_mark,
        start_mark: 0,
        end_mark: 0,
        // The kernel maps all RAM one to one.
        phys: &|va| va as u64,
        interrupts: &arch::interrupts_total,
        generation,
    };
    workload::run(&mut *share.queue, &share.spec, &mut share.model, &env).map_err(|e| e.to_string())
}

/// The CPUs' results as one: counts summed, `cycles` the whole run's span, latency percentiles the
/// worst CPU's, achieved depths summed, checksums combined in VP order, read digests summed.
fn merge(results: &[WorkloadResult], cycles: u64) -> WorkloadResult {
    let sum = |f: fn(&WorkloadResult) -> u64| results.iter().map(f).sum::<u64>();
    let worst = |f: fn(&WorkloadResult) -> u64| results.iter().map(f).max().unwrap_or(0);
    let checksums: Vec<u64> = results.iter().map(|r| r.checksum).collect();
    WorkloadResult {
        ios: sum(|r| r.ios),
        reads: sum(|r| r.reads),
        writes: sum(|r| r.writes),
        bytes: sum(|r| r.bytes),
        cycles,
        p50: worst(|r| r.p50),
        p99: worst(|r| r.p99),
        max: worst(|r| r.max),
        errors: sum(|r| r.errors),
        signals: sum(|r| r.signals),
        interrupts: sum(|r| r.interrupts),
        achieved_qd: sum(|r| r.achieved_qd),
        checksum: workload::combine_checksums(&checksums),
        read_digest: results
            .iter()
            .fold(0u64, |d, r| d.wrapping_add(r.read_digest)),
    }
}
