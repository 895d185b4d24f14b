//! virtio-blk over virtio-mmio — the second baseline, done the way a modern VMM does it: the device side of
//! the split virtqueue is rust-vmm's `virtio-queue` over the guest's memory (a `GuestMemoryMmap`); a worker
//! thread sleeps on a notify eventfd (which the KVM glue makes an ioeventfd on QueueNotify, so a guest kick
//! never leaves the kernel) and raises used-buffer interrupts through an [`Interrupt`] (an irqfd bound to an
//! MSI route in the KVM glue); VIRTIO_RING_F_EVENT_IDX suppresses both directions. Only transport register
//! accesses (setup) reach the VMM as exits. Nothing here knows KVM: `host-kvm` places the MMIO window,
//! registers the ioeventfd and the interrupt route.
//!
//! - [`transport`]: the virtio-mmio v2 registers, feature negotiation, queue setup (sans-I/O), shared with
//!   virtio-net ([`crate::virtio::mmio`]);
//! - [`request`]: one request chain → disk I/O → status byte, hostile-guest safe;
//! - this module: [`VirtioBlkDevice`]: register accesses by window offset ([`VirtioBlkDevice::mmio_read`],
//!   [`VirtioBlkDevice::mmio_write`]), guest memory, interrupt and the worker thread.
//!
//! ```
//! use std::sync::Arc;
//! use host_vsp::{backend::RamDisk, virtio::blk::{VirtioBlkConfig, VirtioBlkDevice}};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//! let dev = VirtioBlkDevice::new(Arc::new(RamDisk::new(1 << 20)), VirtioBlkConfig::default())?;
//! dev.attach_memory(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)])?)?;
//! dev.connect_interrupt(Arc::new(EventFd::new(EFD_NONBLOCK)?))?; // e.g. an irqfd
//! dev.start(Some(EventFd::new(EFD_NONBLOCK)?))?; // e.g. an ioeventfd on QueueNotify
//! let mut magic = [0u8; 4];
//! dev.mmio_read(0, &mut magic);
//! assert_eq!(&magic, b"virt");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod request;
#[cfg(test)]
mod tests;
pub use super::mmio as transport;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;

use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backend::{BlockBackend, SECTOR_SIZE};
use crate::guest_memory::GuestMemoryMmap;
use crate::interrupt::Interrupt;
use request::{req_type, ID_LEN, SEG_MAX};
use transport::{features, MmioTransport, TransportEvent, DEVICE_ID_BLOCK};

/// Size of the MMIO window.
pub const VIRTIO_BLK_MMIO_SIZE: u64 = 0x1000;

/// Errors setting the device up.
#[derive(Debug, thiserror::Error)]
pub enum VirtioBlkError {
    /// A host resource (eventfd, epoll, thread) could not be created.
    #[error("cannot create {what}")]
    Os {
        /// What was being created.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Memory, interrupt or worker was given twice.
    #[error("the device already has its {what}")]
    AlreadyAttached {
        /// What was given twice.
        what: &'static str,
    },
}

/// What the device offers.
#[derive(Debug, Clone)]
pub struct VirtioBlkConfig {
    /// The id string GET_ID returns (truncated to 20 bytes).
    pub id: String,
    /// Offer VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
    /// Poll the queue with the driver's notifications suppressed while requests arrive and for
    /// [`POLL_IDLE_BUDGET`] after the last one, then re-enable them, re-check and sleep.
    pub poll_mode: bool,
}

/// How long a polling worker keeps looking at an idle queue before it sleeps.
pub const POLL_IDLE_BUDGET: std::time::Duration = std::time::Duration::from_millis(2);

impl Default for VirtioBlkConfig {
    fn default() -> Self {
        Self {
            id: "viridian-virtio-blk".into(),
            event_idx: true,
            poll_mode: false,
        }
    }
}

/// Counters of the device's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioBlkStats {
    /// Requests completed.
    pub requests: u64,
    /// IN requests completed.
    pub reads: u64,
    /// OUT requests completed.
    pub writes: u64,
    /// FLUSH requests completed.
    pub flushes: u64,
    /// Requests completed with a status other than OK.
    pub errors: u64,
    /// Times the worker woke up to look at the queue.
    pub wakeups: u64,
    /// QueueNotify writes that reached [`VirtioBlkDevice::mmio_write`] (not caught by an ioeventfd).
    pub register_notifies: u64,
    /// Interrupts injected.
    pub interrupts: u64,
    /// Poll-mode passes that found the queue empty (the price of polling).
    pub poll_spins: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    errors: AtomicU64,
    wakeups: AtomicU64,
    register_notifies: AtomicU64,
    interrupts: AtomicU64,
    poll_spins: AtomicU64,
}

struct Shared {
    disk: Arc<dyn BlockBackend>,
    config: VirtioBlkConfig,
    id: [u8; ID_LEN],
    transport: Mutex<MmioTransport>,
    mem: OnceLock<GuestMemoryMmap>,
    /// Reused by every chain processed; its lock serializes queue passes (taken before the
    /// transport lock, which a pass holds only between disk I/Os).
    requests: Mutex<request::RequestStorage>,
    irq: OnceLock<Arc<dyn Interrupt>>,
    kick: EventFd,
    stop: AtomicBool,
    counters: Counters,
}

/// A virtio-blk device on virtio-mmio. See the module documentation.
pub struct VirtioBlkDevice {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for VirtioBlkDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioBlkDevice")
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The block configuration space: capacity, size_max, seg_max, geometry, blk_size, topology, writeback.
fn config_space(capacity_sectors: u64) -> Vec<u8> {
    let mut c = vec![0u8; 0x24];
    c[0..8].copy_from_slice(&capacity_sectors.to_le_bytes());
    c[8..12].copy_from_slice(&(request::MAX_DATA_BYTES as u32).to_le_bytes());
    c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
    c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
    c
}

impl VirtioBlkDevice {
    /// A device serving `disk`.
    pub fn new(
        disk: Arc<dyn BlockBackend>,
        config: VirtioBlkConfig,
    ) -> Result<Self, VirtioBlkError> {
        let kick = EventFd::new(EFD_NONBLOCK).map_err(|source| VirtioBlkError::Os {
            what: "eventfd for the virtio-blk worker",
            source,
        })?;
        let mut offered = features::VERSION_1
            | features::RING_INDIRECT_DESC
            | features::BLK_SEG_MAX
            | features::BLK_BLK_SIZE
            | features::BLK_FLUSH;
        if config.event_idx {
            offered |= features::RING_EVENT_IDX;
        }
        if disk.read_only() {
            offered |= features::BLK_RO;
        }
        let mut id = [0u8; ID_LEN];
        let n = config.id.len().min(ID_LEN);
        id[..n].copy_from_slice(&config.id.as_bytes()[..n]);
        let transport =
            MmioTransport::new(DEVICE_ID_BLOCK, 1, offered, config_space(disk.sectors()));
        Ok(Self {
            shared: Arc::new(Shared {
                disk,
                config,
                id,
                transport: Mutex::new(transport),
                mem: OnceLock::new(),
                requests: Mutex::default(),
                irq: OnceLock::new(),
                kick,
                stop: AtomicBool::new(false),
                counters: Counters::default(),
            }),
            worker: Mutex::new(None),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VirtioBlkConfig {
        &self.shared.config
    }

    /// Gives the device the guest memory its queue and buffers live in.
    pub fn attach_memory(&self, mem: GuestMemoryMmap) -> Result<(), VirtioBlkError> {
        self.shared
            .mem
            .set(mem)
            .map_err(|_| VirtioBlkError::AlreadyAttached { what: "memory" })
    }

    /// Delivers used-buffer (and configuration/reset) interrupts through `irq`; without one they are
    /// only counted.
    pub fn connect_interrupt(&self, irq: Arc<dyn Interrupt>) -> Result<(), VirtioBlkError> {
        self.shared
            .irq
            .set(irq)
            .map_err(|_| VirtioBlkError::AlreadyAttached { what: "interrupt" })
    }

    /// Starts the worker thread: it processes the queue whenever `notify` (the guest's QueueNotify
    /// caught in the kernel, if the glue has such an eventfd) is signalled, and on QueueNotify writes
    /// that reach [`mmio_write`](Self::mmio_write). Without a worker, those writes process the queue
    /// inline.
    pub fn start(&self, notify: Option<EventFd>) -> Result<(), VirtioBlkError> {
        let mut worker = self.worker.lock().unwrap_or_else(PoisonError::into_inner);
        if worker.is_some() {
            return Err(VirtioBlkError::AlreadyAttached { what: "worker" });
        }
        let os = |what| move |source| VirtioBlkError::Os { what, source };
        let epoll = Epoll::new().map_err(os("the virtio-blk worker's epoll"))?;
        let watch = |fd: i32| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            )
        };
        watch(self.shared.kick.as_raw_fd()).map_err(os("the virtio-blk worker's epoll"))?;
        if let Some(efd) = &notify {
            watch(efd.as_raw_fd()).map_err(os("the virtio-blk worker's epoll"))?;
        }
        let shared = self.shared.clone();
        // In the registry of device threads current here, if any.
        let handle =
            crate::device_threads::spawn("virtio-blk", move || run_worker(&shared, &epoll, notify))
                .map_err(os("the virtio-blk worker thread"))?;
        *worker = Some(handle);
        Ok(())
    }

    /// Counters so far.
    pub fn stats(&self) -> VirtioBlkStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        VirtioBlkStats {
            requests: get(&c.requests),
            reads: get(&c.reads),
            writes: get(&c.writes),
            flushes: get(&c.flushes),
            errors: get(&c.errors),
            wakeups: get(&c.wakeups),
            register_notifies: get(&c.register_notifies),
            interrupts: get(&c.interrupts),
            poll_spins: get(&c.poll_spins),
        }
    }

    /// Device status byte (for tests and diagnostics).
    pub fn device_status(&self) -> u32 {
        self.shared.transport().status()
    }

    /// Processes every available request now; returns how many completed.
    pub fn process_queue(&self) -> usize {
        self.shared.process_queue()
    }

    /// A guest read of the window at `offset`: fills `data` (its length is the access size).
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        self.shared.transport().read(offset, data);
    }

    /// A guest write of `data` to the window at `offset`.
    pub fn mmio_write(&self, offset: u64, data: &[u8]) {
        let event = {
            let mem = self.shared.mem.get();
            self.shared.transport().write(mem, offset, data)
        };
        if event == Some(TransportEvent::Notify(0)) {
            self.shared
                .counters
                .register_notifies
                .fetch_add(1, Ordering::Relaxed);
            if self.worker_running() {
                let _ = self.shared.kick.write(1);
            } else {
                self.shared.process_queue();
            }
        }
    }

    fn worker_running(&self) -> bool {
        self.worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Stops and joins the worker thread (also done on drop).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.shared.kick.write(1);
        let handle = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for VirtioBlkDevice {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sleeps on the kick eventfd and the notify eventfd; processes the queue on every wakeup.
fn run_worker(shared: &Shared, epoll: &Epoll, notify: Option<EventFd>) {
    let mut events = [EpollEvent::default(); 2];
    while !shared.stop.load(Ordering::Acquire) {
        let ready = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                tracing::error!(%error, "virtio-blk worker: epoll_wait failed");
                return;
            }
        };
        // Reset the counters (non-blocking: at worst EAGAIN when another wakeup consumed it).
        for ev in &events[..ready] {
            if ev.fd() == shared.kick.as_raw_fd() {
                let _ = shared.kick.read();
            } else if let Some(efd) = &notify {
                let _ = efd.read();
            }
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        shared.counters.wakeups.fetch_add(1, Ordering::Relaxed);
        if shared.config.poll_mode {
            poll_queue(shared);
        } else {
            shared.process_queue();
        }
    }
}

/// Poll mode: process the queue with notifications suppressed until it has been idle for
/// [`POLL_IDLE_BUDGET`]; then re-enable them (re-checking, so nothing that raced in is missed).
fn poll_queue(shared: &Shared) {
    let mut idle_since = std::time::Instant::now();
    while !shared.stop.load(Ordering::Acquire) {
        if shared.process(true) > 0 {
            idle_since = std::time::Instant::now();
            continue;
        }
        if idle_since.elapsed() < POLL_IDLE_BUDGET {
            shared.counters.poll_spins.fetch_add(1, Ordering::Relaxed);
            std::hint::spin_loop();
            continue;
        }
        if shared.process(false) == 0 {
            return;
        }
        idle_since = std::time::Instant::now();
    }
}

impl Shared {
    fn transport(&self) -> MutexGuard<'_, MmioTransport> {
        self.transport
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, c: &request::Completion) {
        let k = &self.counters;
        k.requests.fetch_add(1, Ordering::Relaxed);
        match c.kind {
            Some(req_type::IN) => k.reads.fetch_add(1, Ordering::Relaxed),
            Some(req_type::OUT) => k.writes.fetch_add(1, Ordering::Relaxed),
            Some(req_type::FLUSH) => k.flushes.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        if c.status != Some(request::status::OK) {
            k.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drains the available ring (re-checking after re-enabling notifications, as EVENT_IDX requires),
    /// then interrupts the driver if the used ring moved past its used_event (or notifications are on).
    fn process_queue(&self) -> usize {
        self.process(false)
    }

    /// One pass over the queue; `keep_suppressed`: leave the driver's notifications off afterwards
    /// (poll mode) instead of re-enabling them with a re-check.
    ///
    /// Passes are serialized by the request storage lock, held for the whole pass. The transport
    /// lock — which every MMIO register access takes — is held only to take the next chain and to
    /// publish its completion, never across the disk I/O in between: a guest reading a register
    /// while a slow request runs is not stalled behind it. A reset, or the queue going unready,
    /// while a request runs changes the transport's queue generation; the request's completion is
    /// then dropped (the queue it belonged to is gone) and the pass ends.
    fn process(&self, keep_suppressed: bool) -> usize {
        let Some(mem) = self.mem.get() else { return 0 };
        let mut storage = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        let mut t = self.transport();
        if !t.running() {
            return 0;
        }
        let generation = t.queue_generation();
        let mut done = 0;
        let mut broken = false;
        'outer: loop {
            if t.queue_mut(0).disable_notification(mem).is_err() {
                broken = true;
                break;
            }
            loop {
                // A driver that keeps the queue full would otherwise keep the pass going forever:
                // look at stop before every chain.
                if self.stop.load(Ordering::Acquire) {
                    break 'outer;
                }
                let next = match t.queue_mut(0).iter(mem) {
                    Ok(mut it) => it.next(),
                    Err(_) => {
                        broken = true;
                        break 'outer;
                    }
                };
                let Some(chain) = next else { break };
                let head = chain.head_index();
                drop(t);
                let c = request::process(mem, chain, &*self.disk, &self.id, &mut storage);
                self.count(&c);
                t = self.transport();
                if t.queue_generation() != generation || !t.running() {
                    // Reset (or re-set-up) while the request ran: its queue is gone.
                    return done;
                }
                if t.queue_mut(0).add_used(mem, head, c.used_len).is_err() {
                    broken = true;
                    break 'outer;
                }
                done += 1;
            }
            if keep_suppressed {
                break;
            }
            match t.queue_mut(0).enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        let interrupt = if broken {
            t.set_needs_reset();
            true
        } else if done > 0 && t.queue_mut(0).needs_notification(mem).unwrap_or(true) {
            t.raise_used_buffer();
            true
        } else {
            false
        };
        drop(t);
        drop(storage);
        if interrupt {
            self.interrupt();
        }
        done
    }

    fn interrupt(&self) {
        self.counters.interrupts.fetch_add(1, Ordering::Relaxed);
        if let Some(irq) = self.irq.get() {
            if let Err(error) = irq.trigger() {
                crate::guest_warn!(%error, "virtio-blk interrupt");
            }
        }
    }
}
