//! virtio-blk over virtio-mmio — the second baseline, done the way a modern VMM does it: the device side of
//! the split virtqueue is rust-vmm's `virtio-queue` over the partition's guest memory (a `GuestMemoryMmap`); QueueNotify is a
//! KVM ioeventfd (datamatch = queue 0) that wakes a host worker thread without a user exit; used-buffer
//! interrupts go through an irqfd bound to an MSI route (vector [`VIRTIO_BLK_VECTOR`] on APIC 0 by default);
//! VIRTIO_RING_F_EVENT_IDX suppresses both directions. Only transport register accesses (setup) exit to
//! this process.
//!
//! - [`transport`]: the virtio-mmio v2 registers, feature negotiation, queue setup (sans-I/O);
//! - [`request`]: one request chain → disk I/O → status byte, hostile-guest safe;
//! - this module: [`VirtioBlkDevice`] (the [`MmioHandler`], its worker thread, wiring to a partition).
//!
//! ```no_run
//! use std::sync::Arc;
//! use host_vsp::{backend::RamDisk, virtio::blk::{VirtioBlkConfig, VirtioBlkDevice}};
//! let dev = Arc::new(VirtioBlkDevice::new(Arc::new(RamDisk::new(1 << 20)), VirtioBlkConfig::default())?);
//! let mut pc = hypervisor_lite::PartitionConfig::new(64 << 20, 1);
//! dev.register(&mut pc);
//! let partition = pc.build()?;
//! dev.attach(&partition)?; // guest memory view, ioeventfd, irqfd, worker thread
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod request;
#[cfg(test)]
mod tests;
pub mod transport;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;

use hypervisor_lite::{
    InterruptController, IoEventAddress, MmioHandler, Partition, PartitionConfig, VcpuCtx,
};
use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backend::{BlockBackend, SECTOR_SIZE};
use crate::guest_memory::GuestMemoryMmap;
use request::{req_type, ID_LEN, SEG_MAX};
use transport::{features, regs, MmioTransport, TransportEvent};

/// Default guest-physical base of the MMIO window (in the MMIO hole).
pub const VIRTIO_BLK_MMIO_BASE: u64 = 0xD000_0000;
/// Size of the MMIO window.
pub const VIRTIO_BLK_MMIO_SIZE: u64 = 0x1000;
/// Default interrupt vector of used-buffer notifications.
pub const VIRTIO_BLK_VECTOR: u8 = 0x50;

/// Errors wiring the device to a partition.
#[derive(Debug, thiserror::Error)]
pub enum VirtioBlkError {
    /// Registering the ioeventfd or irqfd failed.
    #[error("{what}: {source}")]
    FastPath {
        /// Which fast path.
        what: &'static str,
        /// What failed.
        source: hypervisor_lite::Error,
    },
    /// A host resource (eventfd, thread) could not be created.
    #[error("{what}: {source}")]
    Os {
        /// What was being created.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// `attach` was called twice.
    #[error("the device is already attached")]
    AlreadyAttached,
}

/// How the device is placed and signals.
#[derive(Debug, Clone)]
pub struct VirtioBlkConfig {
    /// Guest-physical base of the 4 KiB MMIO window.
    pub base: u64,
    /// Vector of used-buffer interrupts.
    pub vector: u8,
    /// APIC id the interrupts go to.
    pub apic_id: u32,
    /// The id string GET_ID returns (truncated to 20 bytes).
    pub id: String,
    /// Catch QueueNotify with a KVM ioeventfd (no user exit); otherwise every notify exits.
    pub ioeventfd: bool,
    /// Inject interrupts through an irqfd; otherwise with KVM_SIGNAL_MSI from the worker.
    pub irqfd: bool,
    /// Offer VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
}

impl Default for VirtioBlkConfig {
    fn default() -> Self {
        Self {
            base: VIRTIO_BLK_MMIO_BASE,
            vector: VIRTIO_BLK_VECTOR,
            apic_id: 0,
            id: "viridian-virtio-blk".into(),
            ioeventfd: true,
            irqfd: true,
            event_idx: true,
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
    /// QueueNotify writes that reached user space (not caught by the ioeventfd).
    pub register_notifies: u64,
    /// Interrupts injected.
    pub interrupts: u64,
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
}

enum Irq {
    Irqfd(EventFd),
    Msi(InterruptController),
}

struct Shared {
    disk: Arc<dyn BlockBackend>,
    config: VirtioBlkConfig,
    id: [u8; ID_LEN],
    transport: Mutex<MmioTransport>,
    mem: OnceLock<GuestMemoryMmap>,
    /// Reused by every chain processed (locked with the transport).
    requests: Mutex<request::RequestStorage>,
    irq: OnceLock<Irq>,
    kick: EventFd,
    stop: AtomicBool,
    counters: Counters,
}

/// A virtio-blk device on virtio-mmio. See the module documentation.
pub struct VirtioBlkDevice {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
    notify: OnceLock<EventFd>,
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
        let transport = MmioTransport::new(offered, config_space(disk.sectors()));
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
            notify: OnceLock::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VirtioBlkConfig {
        &self.shared.config
    }

    /// Claims the MMIO window in `pc`.
    pub fn register(self: &Arc<Self>, pc: &mut PartitionConfig) {
        let base = self.shared.config.base;
        pc.add_mmio_handler(base..base + VIRTIO_BLK_MMIO_SIZE, self.clone());
    }

    /// Wires the device to a built partition: guest memory view, the notify ioeventfd, the interrupt
    /// route, and the worker thread.
    pub fn attach(&self, partition: &Partition) -> Result<(), VirtioBlkError> {
        let cfg = &self.shared.config;
        let irq = partition.interrupts();
        let delivery = if cfg.irqfd {
            let efd = irq.irqfd_msi(cfg.apic_id, cfg.vector).map_err(|source| {
                VirtioBlkError::FastPath {
                    what: "irqfd MSI route",
                    source,
                }
            })?;
            Irq::Irqfd(efd)
        } else {
            Irq::Msi(irq)
        };
        let notify = if cfg.ioeventfd {
            let efd = partition
                .register_ioeventfd(
                    IoEventAddress::Mmio(cfg.base + regs::QUEUE_NOTIFY),
                    4,
                    Some(0),
                )
                .map_err(|source| VirtioBlkError::FastPath {
                    what: "QueueNotify ioeventfd",
                    source,
                })?;
            Some(efd)
        } else {
            None
        };
        self.attach_memory(partition.ram().memory().clone())?;
        if self.shared.irq.set(delivery).is_err() {
            return Err(VirtioBlkError::AlreadyAttached);
        }
        let notify_fd = match notify {
            Some(efd) => {
                let fd = efd.as_raw_fd();
                let _ = self.notify.set(efd);
                Some(fd)
            }
            None => None,
        };
        self.spawn_worker(notify_fd)
    }

    /// Gives the device the guest memory its queue and buffers live in (done by
    /// [`VirtioBlkDevice::attach`]; tests call it directly and drive [`VirtioBlkDevice::process_queue`]
    /// themselves).
    pub fn attach_memory(&self, mem: GuestMemoryMmap) -> Result<(), VirtioBlkError> {
        self.shared
            .mem
            .set(mem)
            .map_err(|_| VirtioBlkError::AlreadyAttached)
    }

    fn spawn_worker(&self, notify_fd: Option<i32>) -> Result<(), VirtioBlkError> {
        let shared = self.shared.clone();
        let handle = std::thread::Builder::new()
            .name("virtio-blk".into())
            .spawn(move || worker(&shared, notify_fd))
            .map_err(|source| VirtioBlkError::Os {
                what: "spawning the virtio-blk worker",
                source,
            })?;
        *self.worker.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
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

    /// A guest read of the window at `offset` (what the [`MmioHandler`] does, without a vCPU).
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        self.shared.transport().read(offset, data);
    }

    /// A guest write to the window at `offset` (what the [`MmioHandler`] does, without a vCPU).
    pub fn mmio_write(&self, offset: u64, data: &[u8]) {
        let event = {
            let mem = self.shared.mem.get();
            self.shared.transport().write(mem, offset, data)
        };
        if event == Some(TransportEvent::Notify) {
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

impl MmioHandler for VirtioBlkDevice {
    fn read(&self, _vcpu: &mut VcpuCtx, gpa: u64, data: &mut [u8]) {
        self.mmio_read(gpa - self.shared.config.base, data);
    }

    fn write(&self, _vcpu: &mut VcpuCtx, gpa: u64, data: &[u8]) {
        self.mmio_write(gpa - self.shared.config.base, data);
    }
}

/// Sleeps on the notify ioeventfd and the kick eventfd; processes the queue on every wakeup.
fn worker(shared: &Shared, notify_fd: Option<i32>) {
    let mut fds = vec![libc::pollfd {
        fd: shared.kick.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    if let Some(fd) = notify_fd {
        fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }
    let mut drain = [0u8; 8];
    while !shared.stop.load(Ordering::Acquire) {
        // SAFETY: `fds` is a live, correctly sized array of pollfd; the fds stay open for the thread's life
        // (the kick eventfd lives in `shared`, the notify eventfd in the device, which joins us before drop).
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(
                "virtio-blk worker poll: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        for p in &fds {
            if p.revents & libc::POLLIN != 0 {
                // SAFETY: reading 8 bytes from an eventfd into an 8-byte buffer (non-blocking: at worst EAGAIN).
                unsafe { libc::read(p.fd, drain.as_mut_ptr().cast(), drain.len()) };
            }
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        shared.counters.wakeups.fetch_add(1, Ordering::Relaxed);
        shared.process_queue();
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
        let Some(mem) = self.mem.get() else { return 0 };
        let mut t = self.transport();
        if !t.running() {
            return 0;
        }
        let mut storage = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        let mut done = 0;
        let mut broken = false;
        'outer: loop {
            if t.queue.disable_notification(mem).is_err() {
                broken = true;
                break;
            }
            loop {
                let next = match t.queue.iter(mem) {
                    Ok(mut it) => it.next(),
                    Err(_) => {
                        broken = true;
                        break 'outer;
                    }
                };
                let Some(chain) = next else { break };
                let head = chain.head_index();
                let c = request::process(mem, chain, &*self.disk, &self.id, &mut storage);
                self.count(&c);
                if t.queue.add_used(mem, head, c.used_len).is_err() {
                    broken = true;
                    break 'outer;
                }
                done += 1;
            }
            match t.queue.enable_notification(mem) {
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
        } else if done > 0 && t.queue.needs_notification(mem).unwrap_or(true) {
            t.raise_used_buffer();
            true
        } else {
            false
        };
        drop(storage);
        drop(t);
        if interrupt {
            self.interrupt();
        }
        done
    }

    fn interrupt(&self) {
        self.counters.interrupts.fetch_add(1, Ordering::Relaxed);
        match self.irq.get() {
            Some(Irq::Irqfd(efd)) => {
                if let Err(e) = efd.write(1) {
                    tracing::warn!("virtio-blk irqfd: {e}");
                }
            }
            Some(Irq::Msi(ic)) => {
                if let Err(e) = ic.signal_msi(self.config.apic_id, self.config.vector) {
                    tracing::warn!("virtio-blk MSI: {e}");
                }
            }
            None => {}
        }
    }
}
