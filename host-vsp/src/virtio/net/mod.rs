//! virtio-net over virtio-mmio — the network baseline against netvsc, done the way a modern VMM does it:
//! the device side of the receive (0) and transmit (1) split virtqueues is rust-vmm's `virtio-queue` over
//! the guest's memory; a worker thread sleeps in one epoll on the two queues' notify eventfds (which the
//! KVM glue makes ioeventfds on QueueNotify, so a guest kick never leaves the kernel), the backend's
//! receive fd (only while the guest has receive buffers posted) and a control eventfd; used-buffer
//! interrupts go through an [`Interrupt`] (an irqfd in the KVM glue). VIRTIO_RING_F_EVENT_IDX suppresses
//! both directions.
//!
//! Features: VERSION_1, MAC, STATUS, EVENT_IDX; no offloads (every frame is whole, every header zero but
//! `num_buffers` = 1), no control queue, one queue pair. Frames move straight between the guest's
//! buffers and the [`NetBackend`]:
//! - **transmit**: on a kick, the worker takes every available chain (notifications off while it does,
//!   then re-enabled with a re-check), hands each frame to the backend as guest-memory slices, and
//!   decides one interrupt for the pass with `used_event`;
//! - **receive**: while frames wait, each lands in the next available receive chain (straight from the
//!   backend into guest memory when the frame area is one piece), with the 12-byte header in front.
//!   With no chain available the worker stops reading the backend — its frames wait there, and the
//!   backend drops what it cannot hold — and asks for the driver's next kick (`avail_event`), counting
//!   the stall ([`VirtioNetStats::rx_no_buffer`]).
//!
//! The guest is hostile: every chain is checked ([`chain`]) before a byte moves. A chain that breaks the
//! rules stops this device: NEEDS_RESET, the configuration interrupt, [`VirtioNetStats::failed`] counted;
//! nothing runs until the driver resets it.
//!
//! - [`chain`]: one descriptor chain checked, its byte stream;
//! - `stats`: [`VirtioNetStats`] and the live [`VirtioNetStatsHandle`];
//! - this module: [`VirtioNetDevice`]: register accesses by window offset, memory, interrupt, worker.

#![forbid(unsafe_code)]

pub mod chain;
mod stats;
#[cfg(test)]
mod tests;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileSlice};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::mmio::{features, MmioTransport, TransportEvent, DEVICE_ID_NET};
use crate::guest_memory::GuestMemoryMmap;
use crate::interrupt::Interrupt;
use crate::net::{NetBackend, NetError, MAX_FRAME_LEN};
use chain::{hdr, Chain, ChainError, Direction, NET_HDR_LEN};
use stats::{add, Counters};
pub use stats::{VirtioNetStats, VirtioNetStatsHandle};

/// Size of the MMIO window.
pub const VIRTIO_NET_MMIO_SIZE: u64 = 0x1000;
/// The receive queue.
pub const RX_QUEUE: u16 = 0;
/// The transmit queue.
pub const TX_QUEUE: u16 = 1;
/// Configuration space: `mac` at 0, `status` (u16) at 6.
pub const CONFIG_STATUS: usize = 6;
/// `status` bit: the link is up.
pub const STATUS_LINK_UP: u16 = 1;
/// Chains one pass takes from each queue at most (then the worker looks at the other queue and at
/// stop before it goes on).
const PASS_BUDGET: usize = 256;
/// How often the worker looks at the backend's link.
const LINK_POLL: Duration = Duration::from_millis(100);

/// Errors setting the device up.
#[derive(Debug, thiserror::Error)]
pub enum VirtioNetError {
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
pub struct VirtioNetConfig {
    /// The MAC address in the configuration space.
    pub mac: [u8; 6],
    /// Offer VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
}

impl VirtioNetConfig {
    /// Defaults (EVENT_IDX offered) with `mac`.
    pub fn new(mac: [u8; 6]) -> Self {
        Self {
            mac,
            event_idx: true,
        }
    }
}

/// What the device keeps between passes (the worker's, or an inline caller's).
struct Datapath {
    backend: Box<dyn NetBackend>,
    chain: Chain,
    /// A receive target for frames whose area in the chain is not one piece of memory.
    scratch: Vec<u8>,
    /// The last receive pass found no buffer: wait for a receive kick, not for the backend.
    rx_starved: bool,
    link_up: bool,
}

struct Shared {
    config: VirtioNetConfig,
    transport: Mutex<MmioTransport>,
    datapath: Mutex<Datapath>,
    mem: OnceLock<GuestMemoryMmap>,
    irq: OnceLock<Arc<dyn Interrupt>>,
    /// Wakes the worker: stop, register notifies, status and queue changes.
    kick: EventFd,
    stop: AtomicBool,
    counters: Arc<Counters>,
}

/// A virtio-net device on virtio-mmio. See the module documentation.
pub struct VirtioNetDevice {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for VirtioNetDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioNetDevice")
            .field("config", &self.shared.config)
            .field("stats", &self.stats().get())
            .finish_non_exhaustive()
    }
}

/// The configuration space: mac, status, max_virtqueue_pairs (1).
fn config_space(mac: [u8; 6], link_up: bool) -> Vec<u8> {
    let mut c = vec![0u8; 12];
    c[..6].copy_from_slice(&mac);
    c[6..8].copy_from_slice(&status_word(link_up));
    c[8..10].copy_from_slice(&1u16.to_le_bytes());
    c
}

fn status_word(link_up: bool) -> [u8; 2] {
    (if link_up { STATUS_LINK_UP } else { 0 }).to_le_bytes()
}

/// What one pass over both queues did.
#[derive(Debug, Default, Clone, Copy)]
struct Pass {
    /// The device can run (DRIVER_OK, queues ready, not failed).
    running: bool,
    /// A queue still had work when its budget ran out.
    more: bool,
    /// Frames wait for the guest's buffers: do not watch the backend.
    rx_starved: bool,
}

impl VirtioNetDevice {
    /// A device moving frames to and from `backend`.
    pub fn new(
        backend: Box<dyn NetBackend>,
        config: VirtioNetConfig,
    ) -> Result<Self, VirtioNetError> {
        let kick = EventFd::new(EFD_NONBLOCK).map_err(|source| VirtioNetError::Os {
            what: "eventfd for the virtio-net worker",
            source,
        })?;
        let mut offered = features::VERSION_1 | features::NET_MAC | features::NET_STATUS;
        if config.event_idx {
            offered |= features::RING_EVENT_IDX;
        }
        let link_up = backend.link_up();
        let transport =
            MmioTransport::new(DEVICE_ID_NET, 2, offered, config_space(config.mac, link_up));
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                transport: Mutex::new(transport),
                datapath: Mutex::new(Datapath {
                    backend,
                    chain: Chain::default(),
                    scratch: vec![0; MAX_FRAME_LEN],
                    rx_starved: false,
                    link_up,
                }),
                mem: OnceLock::new(),
                irq: OnceLock::new(),
                kick,
                stop: AtomicBool::new(false),
                counters: Arc::default(),
            }),
            worker: Mutex::new(None),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VirtioNetConfig {
        &self.shared.config
    }

    /// Live counters.
    pub fn stats(&self) -> VirtioNetStatsHandle {
        VirtioNetStatsHandle(self.shared.counters.clone())
    }

    /// Gives the device the guest memory its queues and buffers live in.
    pub fn attach_memory(&self, mem: GuestMemoryMmap) -> Result<(), VirtioNetError> {
        self.shared
            .mem
            .set(mem)
            .map_err(|_| VirtioNetError::AlreadyAttached { what: "memory" })
    }

    /// Delivers interrupts through `irq`; without one they are only counted.
    pub fn connect_interrupt(&self, irq: Arc<dyn Interrupt>) -> Result<(), VirtioNetError> {
        self.shared
            .irq
            .set(irq)
            .map_err(|_| VirtioNetError::AlreadyAttached { what: "interrupt" })
    }

    /// Starts the worker thread. `notify` are the eventfds the glue signals on QueueNotify of the
    /// receive and transmit queue (ioeventfds), if it has them; QueueNotify writes that reach
    /// [`mmio_write`](Self::mmio_write) wake the worker too. Without a worker those writes (and
    /// [`process_queues`](Self::process_queues)) run the queues inline.
    pub fn start(&self, notify: [Option<EventFd>; 2]) -> Result<(), VirtioNetError> {
        let mut worker = self.worker.lock().unwrap_or_else(PoisonError::into_inner);
        if worker.is_some() {
            return Err(VirtioNetError::AlreadyAttached { what: "worker" });
        }
        let os = |what| move |source| VirtioNetError::Os { what, source };
        let epoll = Epoll::new().map_err(os("the virtio-net worker's epoll"))?;
        let watch = |fd: RawFd| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            )
        };
        watch(self.shared.kick.as_raw_fd()).map_err(os("the virtio-net worker's epoll"))?;
        for efd in notify.iter().flatten() {
            watch(efd.as_raw_fd()).map_err(os("the virtio-net worker's epoll"))?;
        }
        let rx_fd = self.shared.datapath().backend.rx_fd().as_raw_fd();
        // Registered with no events; the worker turns them on while it can take frames.
        epoll
            .ctl(
                ControlOperation::Add,
                rx_fd,
                EpollEvent::new(EventSet::empty(), rx_fd as u64),
            )
            .map_err(os("the virtio-net worker's epoll"))?;
        let shared = self.shared.clone();
        let handle = crate::device_threads::spawn("virtio-net", move || {
            run_worker(&shared, &epoll, rx_fd, notify)
        })
        .map_err(os("the virtio-net worker thread"))?;
        *worker = Some(handle);
        Ok(())
    }

    /// Device status byte (for tests and diagnostics).
    pub fn device_status(&self) -> u32 {
        self.shared.transport().status()
    }

    /// Runs both queues once now (what the worker does on each wakeup).
    pub fn process_queues(&self) {
        self.shared.process();
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
        let c = &self.shared.counters;
        if let Some(TransportEvent::Notify(q)) = event {
            add(&c.register_notifies, 1);
            add(c.kicks(q), 1);
        }
        // Setup writes are rare (every one is an exit): let the worker look at the new state.
        if self.worker_running() {
            let _ = self.shared.kick.write(1);
        } else if matches!(event, Some(TransportEvent::Notify(_))) {
            self.shared.process();
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

impl Drop for VirtioNetDevice {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sleeps on the control eventfd, the notify eventfds and (while frames can be taken) the backend;
/// runs both queues on every wakeup.
fn run_worker(shared: &Shared, epoll: &Epoll, rx_fd: RawFd, notify: [Option<EventFd>; 2]) {
    let mut events = [EpollEvent::default(); 4];
    let mut watching_rx = false;
    let mut link_checked = Instant::now();
    while !shared.stop.load(Ordering::Acquire) {
        let pass = shared.process();
        let want_rx = pass.running && !pass.rx_starved;
        if want_rx != watching_rx {
            let set = if want_rx {
                EventSet::IN
            } else {
                EventSet::empty()
            };
            if let Err(error) = epoll.ctl(
                ControlOperation::Modify,
                rx_fd,
                EpollEvent::new(set, rx_fd as u64),
            ) {
                tracing::error!(%error, "virtio-net worker: cannot watch the backend");
                return;
            }
            watching_rx = want_rx;
        }
        if link_checked.elapsed() >= LINK_POLL {
            link_checked = Instant::now();
            shared.check_link();
        }
        if pass.more {
            continue;
        }
        let timeout = LINK_POLL.as_millis() as i32;
        let ready = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                tracing::error!(%error, "virtio-net worker: epoll_wait failed");
                return;
            }
        };
        let c = &shared.counters;
        for ev in &events[..ready] {
            let fd = ev.fd();
            if fd == shared.kick.as_raw_fd() {
                let _ = shared.kick.read();
            }
            for (q, efd) in notify.iter().enumerate() {
                if let Some(efd) = efd.as_ref().filter(|e| e.as_raw_fd() == fd) {
                    // The counter is the number of kicks since the last read.
                    let kicks = efd.read().unwrap_or(0);
                    add(c.kicks(q as u16), kicks);
                }
            }
        }
        add(&c.wakeups, 1);
    }
}

impl Shared {
    fn transport(&self) -> MutexGuard<'_, MmioTransport> {
        self.transport
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn datapath(&self) -> MutexGuard<'_, Datapath> {
        self.datapath.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn interrupt(&self) {
        add(&self.counters.interrupts, 1);
        if let Some(irq) = self.irq.get() {
            if let Err(error) = irq.trigger() {
                crate::guest_warn!(%error, "virtio-net interrupt");
            }
        }
    }

    /// Reports a link change in the configuration space (and interrupts if the driver is live).
    fn check_link(&self) {
        let mut dp = self.datapath();
        let up = dp.backend.link_up();
        if up == dp.link_up {
            return;
        }
        dp.link_up = up;
        drop(dp);
        add(&self.counters.link_changes, 1);
        let changed = self
            .transport()
            .update_config(CONFIG_STATUS, &status_word(up));
        if changed {
            self.interrupt();
        }
    }

    /// One pass over both queues (datapath lock, then the transport lock for the whole pass: every
    /// step of it is a bounded, non-blocking copy), then at most one interrupt.
    fn process(&self) -> Pass {
        let Some(mem) = self.mem.get() else {
            return Pass::default();
        };
        let mut dp = self.datapath();
        let mut t = self.transport();
        if !t.running() {
            dp.rx_starved = false;
            return Pass::default();
        }
        let mut pass = Pass {
            running: true,
            ..Pass::default()
        };
        let tx = self.transmit(mem, &mut t, &mut dp);
        let rx = self.receive(mem, &mut t, &mut dp);
        pass.more = tx.more || rx.more;
        pass.rx_starved = dp.rx_starved;
        let broken = match (tx.error, rx.error) {
            (Some(e), _) | (None, Some(e)) => Some(e),
            _ => None,
        };
        let mut notify = false;
        if let Some(error) = broken {
            crate::guest_warn!(%error, "virtio-net: bad descriptor chain; device stopped");
            add(&self.counters.failed, 1);
            t.set_needs_reset();
            pass.running = false;
            pass.more = false;
            notify = true;
        } else {
            for (q, done) in [(TX_QUEUE, tx.done), (RX_QUEUE, rx.done)] {
                // Asked of every queue that moved (it also resets that queue's count of added).
                if done > 0 && t.queue_mut(q).needs_notification(mem).unwrap_or(true) {
                    notify = true;
                }
            }
            if notify {
                t.raise_used_buffer();
            }
        }
        drop(t);
        drop(dp);
        if notify {
            self.interrupt();
        }
        pass
    }

    /// Drains the transmit queue (notifications off while it does, re-enabled with a re-check).
    fn transmit(
        &self,
        mem: &GuestMemoryMmap,
        t: &mut MmioTransport,
        dp: &mut Datapath,
    ) -> QueuePass {
        let mut r = QueuePass::default();
        let q = t.queue_mut(TX_QUEUE);
        let Datapath { backend, chain, .. } = dp;
        let c = &self.counters;
        'outer: loop {
            if q.disable_notification(mem).is_err() {
                r.error = Some(PassError::Ring);
                break;
            }
            loop {
                if r.done >= PASS_BUDGET || self.stop.load(Ordering::Acquire) {
                    r.more = true;
                    break 'outer;
                }
                let next = match q.iter(mem) {
                    Ok(mut it) => it.next(),
                    Err(_) => {
                        r.error = Some(PassError::Ring);
                        break 'outer;
                    }
                };
                let Some(descriptors) = next else { break };
                let head = descriptors.head_index();
                if let Err(e) = chain.parse(mem, descriptors, Direction::Transmit) {
                    r.error = Some(PassError::Chain(e));
                    break 'outer;
                }
                let frame_len = chain.len() - NET_HDR_LEN as u64;
                if frame_len == 0 || frame_len > MAX_FRAME_LEN as u64 {
                    add(&c.tx_dropped_bad_length, 1);
                } else {
                    let mut parts: Vec<VolatileSlice<'_>> = Vec::with_capacity(4);
                    if !chain.slices(mem, NET_HDR_LEN as u64, frame_len, &mut parts) {
                        r.error = Some(PassError::Ring);
                        break 'outer;
                    }
                    match backend.send(&parts) {
                        Ok(true) => {
                            add(&c.tx_frames, 1);
                            add(&c.tx_bytes, frame_len);
                        }
                        Ok(false) => add(&c.tx_dropped_backend_full, 1),
                        Err(error) => {
                            tracing::debug!(%error, "virtio-net: backend refused a frame");
                            add(&c.tx_errors, 1);
                        }
                    }
                }
                if q.add_used(mem, head, 0).is_err() {
                    r.error = Some(PassError::Ring);
                    break 'outer;
                }
                r.done += 1;
            }
            match q.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(_) => {
                    r.error = Some(PassError::Ring);
                    break;
                }
            }
        }
        r
    }

    /// Moves waiting frames into available receive chains until either runs out.
    fn receive(
        &self,
        mem: &GuestMemoryMmap,
        t: &mut MmioTransport,
        dp: &mut Datapath,
    ) -> QueuePass {
        let mut r = QueuePass::default();
        let q = t.queue_mut(RX_QUEUE);
        let Datapath {
            backend,
            chain,
            scratch,
            rx_starved,
            ..
        } = dp;
        let c = &self.counters;
        // The device needs no kick while it has buffers (a no-op under EVENT_IDX: avail_event
        // simply stays where it was).
        if q.disable_notification(mem).is_err() {
            r.error = Some(PassError::Ring);
            return r;
        }
        *rx_starved = false;
        loop {
            if r.done >= PASS_BUDGET || self.stop.load(Ordering::Acquire) {
                r.more = true;
                break;
            }
            let next = match q.iter(mem) {
                Ok(mut it) => it.next(),
                Err(_) => {
                    r.error = Some(PassError::Ring);
                    break;
                }
            };
            let Some(descriptors) = next else {
                // No buffer: ask for the driver's next kick, then look once more.
                match q.enable_notification(mem) {
                    Ok(true) => continue,
                    Ok(false) => {
                        *rx_starved = true;
                        add(&c.rx_no_buffer, 1);
                    }
                    Err(_) => r.error = Some(PassError::Ring),
                }
                break;
            };
            let head = descriptors.head_index();
            if let Err(e) = chain.parse(mem, descriptors, Direction::Receive) {
                r.error = Some(PassError::Chain(e));
                break;
            }
            match receive_into(mem, chain, backend.as_mut(), scratch) {
                Received::Frame(len) => {
                    if q.add_used(mem, head, (NET_HDR_LEN + len) as u32).is_err() {
                        r.error = Some(PassError::Ring);
                        break;
                    }
                    add(&c.rx_frames, 1);
                    add(&c.rx_bytes, len as u64);
                    r.done += 1;
                }
                Received::Nothing => {
                    q.go_to_previous_position();
                    break;
                }
                Received::TooLarge => {
                    add(&c.rx_dropped_too_large, 1);
                    q.go_to_previous_position();
                }
                Received::Failed => {
                    add(&c.rx_errors, 1);
                    q.go_to_previous_position();
                    break;
                }
            }
        }
        r
    }
}

/// What one queue's part of a pass did.
#[derive(Debug, Default, Clone, Copy)]
struct QueuePass {
    done: usize,
    more: bool,
    error: Option<PassError>,
}

/// Why a pass stopped the device.
#[derive(Debug, Clone, Copy, thiserror::Error)]
enum PassError {
    /// The rings themselves: an available index running ahead, ring memory gone.
    #[error("the driver broke the virtqueue (ring indices or ring memory)")]
    Ring,
    /// A descriptor chain broke the rules.
    #[error("descriptor chain")]
    Chain(#[source] ChainError),
}

enum Received {
    Frame(usize),
    Nothing,
    TooLarge,
    Failed,
}

/// Receives the next waiting frame into `chain` (header, then frame); straight into guest memory
/// when the frame area is one slice, else through `scratch`.
fn receive_into(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    backend: &mut dyn NetBackend,
    scratch: &mut [u8],
) -> Received {
    let mut header = [0u8; NET_HDR_LEN];
    header[1] = hdr::GSO_NONE;
    header[hdr::NUM_BUFFERS..hdr::NUM_BUFFERS + 2].copy_from_slice(&1u16.to_le_bytes());
    // The frame area as one slice of guest memory, if it is one (a first descriptor holding header
    // and frame, inside one memory region).
    let first = chain.segments()[0];
    let direct = (u64::from(first.len) >= chain::MIN_RX_CHAIN)
        .then(|| {
            mem.get_slice(GuestAddress(first.gpa + NET_HDR_LEN as u64), MAX_FRAME_LEN)
                .ok()
        })
        .flatten();
    let result = match &direct {
        Some(slice) => backend.recv(slice),
        None => backend.recv(&VolatileSlice::from(&mut scratch[..])),
    };
    let len = match result {
        Ok(Some(len)) => len,
        Ok(None) => return Received::Nothing,
        Err(NetError::FrameTooLarge { .. }) => return Received::TooLarge,
        Err(error) => {
            tracing::debug!(%error, "virtio-net: backend receive failed");
            return Received::Failed;
        }
    };
    if direct.is_none() && !chain.write(mem, NET_HDR_LEN as u64, &scratch[..len]) {
        return Received::Failed;
    }
    if !chain.write(mem, 0, &header) {
        return Received::Failed;
    }
    Received::Frame(len)
}
