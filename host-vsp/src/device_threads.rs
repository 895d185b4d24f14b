//! Which host threads serve a partition's devices, and how much CPU they used: a [`DeviceThreads`]
//! registry that device threads join for their whole life, so whoever hosts the partition can charge
//! host CPU time to its devices rather than to its vCPUs.
//!
//! Membership is explicit. A thread joins a registry only when it is spawned through [`spawn`] or
//! [`spawn_in`], which every thread host-vsp starts is:
//! - `vmbus-service` and the `vsp-<device>-<relid>` device threads join the registry that was current
//!   when the [`VmbusService`](crate::vmbus_service::VmbusService) started (device threads are spawned
//!   from the guest's posts, on vCPU threads that belong to no registry);
//! - storvsp's `storvsp-io-<n>` pool threads join their device thread's registry;
//! - the `virtio-blk` worker joins the registry current where
//!   [`VirtioBlkDevice::start`](crate::virtio::blk::VirtioBlkDevice::start) is called.
//!
//! [`DeviceThreads::enter`] makes a registry current on the calling thread; a thread spawned into a
//! registry has it current as well, so what it spawns joins too. Device models that run on the vCPU
//! thread itself (the emulated IDE disk) have no thread to join: their cost is the vCPU's.
//!
//! CPU accounting ([`DeviceThreads::cpu`]): live members are read through their POSIX per-thread CPU
//! clocks (`pthread_getcpuclockid`), under the registry lock; a member that exits takes the same lock,
//! reads its own clock a last time and adds it to the registry's exited total. The total is therefore
//! monotonic, and the difference of two reads covers threads that started or ended in between. Limits:
//! CPU a thread spends after leaving (its teardown, a few µs at most) is lost; a thread spawned just
//! before the first read but joining just after it has its few µs of start-up counted in the window.
//! Threads started by other means (third-party crates) are not members.
//!
//! ```
//! use host_vsp::device_threads::{self, DeviceThreads};
//! let threads = DeviceThreads::new();
//! let _current = threads.enter();
//! let worker = device_threads::spawn("worker", || (0..1_000_000u64).sum::<u64>())?;
//! worker.join().unwrap();
//! assert_eq!(threads.cpu().exited, 1);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// CPU time the calling thread has used so far (`CLOCK_THREAD_CPUTIME_ID`; zero if the clock cannot
/// be read, which Linux never does).
pub fn thread_cpu_time() -> Duration {
    read_clock(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or_default()
}

fn read_clock(clock: libc::clockid_t) -> io::Result<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and clock_gettime writes nothing else.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    ))
}

/// The CPU clock of the calling thread, readable from other threads while it lives.
fn own_clock() -> io::Result<libc::clockid_t> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self() is always a valid handle of the calling thread, and `clock` is a valid
    // out-pointer the call writes only on success.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(clock)
}

thread_local! {
    static CURRENT: RefCell<Option<DeviceThreads>> = const { RefCell::new(None) };
}

/// A member thread: its name and CPU clock (valid while it is in the registry's `live` map).
#[derive(Debug)]
struct Member {
    name: String,
    clock: libc::clockid_t,
}

/// What every member thread runs first (e.g. installing its seccomp filter); an error stops the
/// thread before it runs any device code.
pub type ThreadStartHook = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

#[derive(Default)]
struct Registry {
    next_id: u64,
    live: BTreeMap<u64, Member>,
    exited_cpu: Duration,
    exited: u64,
    on_start: Option<ThreadStartHook>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("live", &self.live)
            .field("exited", &self.exited)
            .field("on_start", &self.on_start.is_some())
            .finish_non_exhaustive()
    }
}

/// The threads serving one partition's devices (see the module docs). Clones share the registry.
#[derive(Debug, Clone, Default)]
pub struct DeviceThreads {
    registry: Arc<Mutex<Registry>>,
}

/// CPU time used by a registry's threads, live and exited, from their start to the read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCpu {
    /// CPU time of every member, live or exited.
    pub total: Duration,
    /// Members running at the read.
    pub live: usize,
    /// Members that have exited.
    pub exited: u64,
}

/// [`DeviceThreads::enter`]'s guard: the registry stays current on this thread until it is dropped
/// (then the previous one is again). Not `Send`: it belongs to the thread that entered.
#[derive(Debug)]
#[must_use = "the registry is current only while the guard lives"]
pub struct Entered {
    previous: Option<DeviceThreads>,
    _this_thread: PhantomData<*const ()>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// A thread's membership; leaving records its final CPU time.
struct Membership {
    threads: DeviceThreads,
    id: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut registry = self.threads.lock();
        if registry.live.remove(&self.id).is_some() {
            // Read under the lock, so no reader saw more than this.
            registry.exited_cpu += thread_cpu_time();
            registry.exited += 1;
        }
    }
}

impl DeviceThreads {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The registry current on the calling thread, if any.
    pub fn current() -> Option<Self> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// Make this registry current on the calling thread until the guard is dropped: threads spawned
    /// here through [`spawn`] join it. The calling thread itself does not.
    pub fn enter(&self) -> Entered {
        Entered {
            previous: CURRENT.with(|c| c.replace(Some(self.clone()))),
            _this_thread: PhantomData,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `hook` first in every thread that joins from now on, with the thread's name (the
    /// host service confines its device threads this way). A hook that fails makes the thread
    /// panic before it runs any device code: the VMBus service reports and contains that as it
    /// does any device failure.
    pub fn on_thread_start(&self, hook: ThreadStartHook) {
        self.lock().on_start = Some(hook);
    }

    fn start_hook(&self) -> Option<ThreadStartHook> {
        self.lock().on_start.clone()
    }

    /// Add the calling thread (until the membership is dropped, on this thread).
    fn join_current(&self, name: String) -> io::Result<Membership> {
        let clock = own_clock()?;
        let mut registry = self.lock();
        let id = registry.next_id;
        registry.next_id += 1;
        registry.live.insert(id, Member { name, clock });
        Ok(Membership {
            threads: self.clone(),
            id,
        })
    }

    /// CPU time of the members so far (see the module docs for what it covers).
    pub fn cpu(&self) -> DeviceCpu {
        let registry = self.lock();
        // A live member leaves only under this lock, so every clock read here is of a running thread.
        let live: Duration = registry
            .live
            .values()
            .filter_map(|m| read_clock(m.clock).ok())
            .sum();
        DeviceCpu {
            total: registry.exited_cpu + live,
            live: registry.live.len(),
            exited: registry.exited,
        }
    }

    /// Names of the members running now, in the order they joined.
    pub fn names(&self) -> Vec<String> {
        self.lock().live.values().map(|m| m.name.clone()).collect()
    }
}

/// Spawn a thread named `name` into the registry current on the calling thread (if any): it is a
/// member, with the registry current, until `f` returns or unwinds.
pub fn spawn<F, T>(name: impl Into<String>, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    spawn_in(DeviceThreads::current().as_ref(), name, f)
}

/// Spawn a thread named `name` into `threads` (`None`: no registry), as [`spawn`] does.
pub fn spawn_in<F, T>(
    threads: Option<&DeviceThreads>,
    name: impl Into<String>,
    f: F,
) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let name = name.into();
    let threads = threads.cloned();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let member = threads.as_ref().and_then(|t| match t.join_current(name) {
                Ok(member) => Some(member),
                Err(error) => {
                    tracing::warn!(%error, "no CPU clock: thread not accounted to its devices");
                    None
                }
            });
            let entered = threads.as_ref().map(DeviceThreads::enter);
            if let Some(hook) = threads.as_ref().and_then(DeviceThreads::start_hook) {
                let name = std::thread::current()
                    .name()
                    .unwrap_or("device")
                    .to_string();
                if let Err(e) = hook(&name) {
                    panic!("thread {name} did not start: {e}");
                }
            }
            let out = f();
            drop(entered);
            drop(member);
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Burn at least `cpu` of this thread's CPU time (a CPU-time bound, not a wall-clock one).
    fn burn(cpu: Duration) {
        let start = thread_cpu_time();
        let mut x = 0u64;
        while thread_cpu_time() - start < cpu {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
    }

    #[test]
    fn the_thread_clock_advances_with_work() {
        let before = thread_cpu_time();
        burn(Duration::from_millis(5));
        assert!(thread_cpu_time() - before >= Duration::from_millis(5));
        assert!(own_clock().is_ok());
    }

    #[test]
    fn only_threads_spawned_into_a_registry_join_it_and_their_children_inherit() {
        let threads = DeviceThreads::new();
        assert!(DeviceThreads::current().is_none());
        // Outside any registry.
        spawn("outsider", || ()).unwrap().join().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let parent = {
            let _current = threads.enter();
            assert!(DeviceThreads::current().is_some());
            spawn("parent", move || {
                let child = spawn("child", move || rx.recv()).unwrap();
                child.join().unwrap()
            })
            .unwrap()
        };
        assert!(DeviceThreads::current().is_none(), "the guard restores");
        // Both run (the child waits for us): both are members, nothing else is.
        while threads.names().len() < 2 {
            std::thread::yield_now();
        }
        assert_eq!(threads.names(), ["parent", "child"]);
        assert_eq!(threads.cpu().live, 2);
        // An explicit `None` joins nothing even where a registry is current.
        {
            let _current = threads.enter();
            spawn_in(None, "explicitly-none", || ())
                .unwrap()
                .join()
                .unwrap();
        }
        tx.send(()).unwrap();
        parent.join().unwrap().unwrap();
        let cpu = threads.cpu();
        assert_eq!((cpu.live, cpu.exited), (0, 2));
        assert!(threads.names().is_empty());
    }

    #[test]
    fn entering_nests() {
        let (a, b) = (DeviceThreads::new(), DeviceThreads::new());
        let _a = a.enter();
        {
            let _b = b.enter();
            let t = spawn("in-b", || ()).unwrap();
            t.join().unwrap();
        }
        spawn("in-a", || ()).unwrap().join().unwrap();
        assert_eq!((a.cpu().exited, b.cpu().exited), (1, 1));
    }

    #[test]
    fn a_busy_member_is_charged_to_the_registry_not_to_its_spawner_and_stays_after_exit() {
        let threads = DeviceThreads::new();
        let busy = Duration::from_millis(30);
        let spawner_before = thread_cpu_time();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let worker = spawn_in(Some(&threads), "busy", move || {
            started_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            burn(busy);
        })
        .unwrap();
        started_rx.recv().unwrap();
        let idle = threads.cpu();
        assert_eq!((idle.live, idle.exited), (1, 0));
        go_tx.send(()).unwrap();
        // Read while it works: never more than at the end.
        let during = threads.cpu();
        worker.join().unwrap();
        let after = threads.cpu();
        assert_eq!((after.live, after.exited), (0, 1));
        assert!(during.total <= after.total);
        assert!(after.total - idle.total >= busy, "{after:?} - {idle:?}");
        // The spawner only waited: its own clock moved by far less than the worker's.
        let spawner = thread_cpu_time() - spawner_before;
        assert!(spawner < after.total - idle.total, "{spawner:?}");
    }

    #[test]
    fn a_panicking_member_still_leaves_with_its_cpu() {
        let threads = DeviceThreads::new();
        let t = spawn_in(Some(&threads), "panics", || {
            burn(Duration::from_millis(2));
            panic!("device failed");
        })
        .unwrap();
        assert!(t.join().is_err());
        let cpu = threads.cpu();
        assert_eq!((cpu.live, cpu.exited), (0, 1));
        assert!(cpu.total >= Duration::from_millis(2));
    }

    #[test]
    fn the_start_hook_runs_first_in_every_member_and_a_failing_one_stops_the_thread() {
        let threads = DeviceThreads::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hook_seen = seen.clone();
        threads.on_thread_start(Arc::new(move |name: &str| {
            hook_seen.lock().unwrap().push(name.to_string());
            if name == "refused" {
                Err("no filter".to_string())
            } else {
                Ok(())
            }
        }));
        let ran = Arc::new(Mutex::new(Vec::new()));
        let (r1, r2) = (ran.clone(), ran.clone());
        let ok = spawn_in(Some(&threads), "fine", move || {
            r1.lock().unwrap().push("fine")
        })
        .unwrap();
        ok.join().unwrap();
        let refused = spawn_in(Some(&threads), "refused", move || {
            r2.lock().unwrap().push("refused")
        })
        .unwrap();
        assert!(refused.join().is_err(), "a failed hook panics the thread");
        // Outside the registry, no hook.
        spawn_in(None, "outside", || ()).unwrap().join().unwrap();
        assert_eq!(*seen.lock().unwrap(), ["fine", "refused"]);
        assert_eq!(
            *ran.lock().unwrap(),
            ["fine"],
            "device code never ran after a failed hook"
        );
    }
}
