//! The kernel's CPUs: the application processors the shim starts, and the work the BSP hands them.
//!
//! Every AP comes out of the shim into [`ap_main`] on its own stacks, says it is online (and wakes the
//! BSP with an IPI on [`WAKE_VECTOR`]), then sleeps in the shim's `hlt` until it is given a job. The BSP
//! ([`run_on`]) puts a job in the AP's slot and wakes it with an IPI; the AP runs it, counts it done and
//! wakes the BSP, which [`wait_idle`] sleeps for. One job at a time per AP; the BSP runs its own share
//! meanwhile. Waiting is always a sleep on the waiter's own interrupt counter, never a spin.
//!
//! What may cross CPUs: the heap (`linked_list_allocator`'s spin lock), the log (its lock), anything
//! `Send`. Driver objects that hold raw pointers into the kernel's one identity-mapped address space
//! (rings, SynIC pages, the hypercall page) are not `Send` for Rust; [`OnAnyCpu`] moves one to another
//! CPU, whose page tables map the same memory the same way.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::arch::{self, MAX_CPUS};

/// The vector of the IPIs that wake a CPU for a job or a job's end (not VMBus's 0xF3).
pub const WAKE_VECTOR: u8 = 0xF0;

type Job = Box<dyn FnOnce() + Send>;

struct Cpu {
    online: AtomicBool,
    job: spin::Mutex<Option<Job>>,
    posted: AtomicU64,
    done: AtomicU64,
}

static CPUS: [Cpu; MAX_CPUS] = [const {
    Cpu {
        online: AtomicBool::new(false),
        job: spin::Mutex::new(None),
        posted: AtomicU64::new(0),
        done: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// A value moved to another CPU although Rust does not know it may be.
///
/// Only for values that are not `Send` solely because they hold raw pointers into kernel memory —
/// identity-mapped, valid for the kernel's lifetime and mapped identically on every CPU (one set of page
/// tables) — and that are moved, not shared: one CPU uses the value at a time.
pub struct OnAnyCpu<T>(pub T);

impl<T> OnAnyCpu<T> {
    /// The value, on the CPU that now owns it.
    pub fn into_inner(self) -> T {
        self.0
    }
}

// SAFETY: see the type's contract: the pointers the value holds are valid on every CPU, and the value is
// owned by one CPU at a time (moving it transfers that ownership; nothing keeps a copy).
unsafe impl<T> Send for OnAnyCpu<T> {}

/// Rust entry of an AP (from the shim's `iretq`, on the AP's own user stack, interrupts on).
#[no_mangle]
pub extern "C" fn ap_main(vp: u64) -> ! {
    let vp = vp as usize;
    let Some(cpu) = CPUS.get(vp) else {
        arch::exit(0xbad)
    };
    cpu.online.store(true, Ordering::Release);
    arch::send_ipi(0, WAKE_VECTOR);
    loop {
        let seen = arch::interrupts_total();
        let job = cpu.job.lock().take();
        match job {
            Some(job) => {
                job();
                cpu.done.fetch_add(1, Ordering::Release);
                arch::send_ipi(0, WAKE_VECTOR);
            }
            None => {
                arch::halt(seen);
            }
        }
    }
}

/// The VP index of the calling CPU.
pub fn current() -> usize {
    arch::current_vp()
}

/// CPUs running the kernel.
pub fn count() -> usize {
    arch::cpu_count()
}

/// Sleep until `done` holds, woken by any interrupt of the calling CPU.
fn sleep_until(mut done: impl FnMut() -> bool) {
    loop {
        let seen = arch::interrupts_total();
        if done() {
            return;
        }
        arch::halt(seen);
    }
}

/// On the BSP: wait until every AP has come online.
pub fn wait_online() {
    for cpu in CPUS.iter().take(count()).skip(1) {
        sleep_until(|| cpu.online.load(Ordering::Acquire));
    }
}

/// Run `job` on CPU `vp`: now if it is the caller's, else queued for that AP, which is woken. Only the
/// BSP hands out jobs (the APs wake it when done). Fails if the AP is not online or still has a job.
pub fn run_on(vp: usize, job: impl FnOnce() + Send + 'static) -> Result<(), &'static str> {
    if vp == current() {
        job();
        return Ok(());
    }
    if current() != 0 {
        return Err("only the BSP hands out jobs");
    }
    let cpu = CPUS.get(vp).filter(|_| vp < count()).ok_or("no such CPU")?;
    if !cpu.online.load(Ordering::Acquire) {
        return Err("CPU not online");
    }
    {
        let mut slot = cpu.job.lock();
        if slot.is_some() {
            return Err("CPU busy");
        }
        *slot = Some(Box::new(job));
    }
    cpu.posted.fetch_add(1, Ordering::Release);
    arch::send_ipi(vp as u32, WAKE_VECTOR);
    Ok(())
}

/// On the BSP: sleep until CPU `vp` has finished every job given to it.
pub fn wait_idle(vp: usize) {
    let Some(cpu) = CPUS.get(vp) else { return };
    sleep_until(|| cpu.done.load(Ordering::Acquire) == cpu.posted.load(Ordering::Acquire));
}

/// Jobs CPU `vp` has finished.
pub fn jobs_done(vp: usize) -> u64 {
    CPUS.get(vp).map_or(0, |c| c.done.load(Ordering::Acquire))
}
