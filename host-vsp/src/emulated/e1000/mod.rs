//! The emulated Intel 82540EM ("e1000") NIC — the network baseline a guest without enlightenments
//! drives register by register, each access an exit to the VMM. It serves the same
//! [`NetBackend`]s as netvsp (a TAP interface, or [`MemoryNet`](crate::net::MemoryNet) in tests).
//!
//! - [`nic`]: the sans-I/O register file and DMA engines ([`E1000Nic`]), testable without KVM;
//! - this module: [`E1000Device`], the window-level face of a NIC: register accesses by window
//!   offset ([`E1000Device::mmio_read`], [`E1000Device::mmio_write`]; a TDT write transmits on
//!   the calling vCPU thread, as the access that makes descriptors available), guest memory, the
//!   interrupt (raised through any [`Interrupt`]; `host-kvm` binds an MSI route), and the receive
//!   thread: it sleeps in one epoll on the backend's receive fd (only while the ring has room), a
//!   kick eventfd (RDT writes after the ring ran dry, RCTL.EN, reset, stop) and a timer for ITR
//!   and the link check, and stores frames into the guest's buffers.
//!
//! Counters are live through [`E1000StatsHandle`].
//!
//! ```
//! use host_vsp::emulated::e1000::E1000Device;
//! use host_vsp::net::MemoryNet;
//! let (nic_end, _host_end) = MemoryNet::pair()?;
//! let nic = E1000Device::new([0x52, 0x54, 0, 0, 0, 1], Box::new(nic_end))?;
//! let mut eerd = [0u8; 4];
//! nic.mmio_write(0x14, &(1u32 | 0 << 8).to_le_bytes()); // EERD: read EEPROM word 0
//! nic.mmio_read(0x14, &mut eerd);
//! assert_eq!(u32::from_le_bytes(eerd) >> 16, 0x5452, "the MAC's first two bytes");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod nic;
#[cfg(test)]
mod tests;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

pub use e1000_protocol::MMIO_SIZE as E1000_MMIO_SIZE;
pub use nic::{E1000Nic, E1000Stats, Failure, RegisterAccesses, Ring, RxPass};

use crate::guest_memory::GuestMemoryMmap;
use crate::interrupt::Interrupt;
use crate::net::NetBackend;

/// Longest sleep of the receive thread between checks of the backend's link state.
pub const LINK_POLL: Duration = Duration::from_millis(50);

/// Errors setting a NIC up.
#[derive(Debug, thiserror::Error)]
pub enum E1000Error {
    /// A host resource (eventfd, epoll, timer, thread) could not be created.
    #[error("cannot create {what}")]
    Os {
        /// What was being created.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Memory, interrupt or receive thread was given twice.
    #[error("the e1000 already has its {what}")]
    AlreadyAttached {
        /// What was given twice.
        what: &'static str,
    },
}

struct Inner {
    nic: E1000Nic,
    backend: Box<dyn NetBackend>,
}

struct Shared {
    inner: Mutex<Inner>,
    mem: OnceLock<GuestMemoryMmap>,
    irq: OnceLock<Arc<dyn Interrupt>>,
    kick: EventFd,
    stop: AtomicBool,
    epoch: Instant,
    /// The backend's receive fd (the backend lives in `inner` as long as `Shared`).
    rx_fd: RawFd,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn deliver(&self, interrupts: u32) {
        let Some(irq) = self.irq.get() else { return };
        for _ in 0..interrupts {
            if let Err(error) = irq.trigger() {
                crate::guest_warn!(%error, "e1000 interrupt");
            }
        }
    }
}

/// A live view of a NIC's counters.
#[derive(Clone)]
pub struct E1000StatsHandle(Arc<Shared>);

impl std::fmt::Debug for E1000StatsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("E1000StatsHandle")
            .field(&self.get())
            .finish()
    }
}

impl E1000StatsHandle {
    /// The counters now.
    pub fn get(&self) -> E1000Stats {
        self.0.lock().nic.stats()
    }

    /// Why the guest's setup stopped the NIC, if it did.
    pub fn failure(&self) -> Option<Failure> {
        self.0.lock().nic.failure()
    }
}

/// An emulated 82540EM. See the module documentation.
pub struct E1000Device {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for E1000Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E1000Device")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl E1000Device {
    /// A NIC with MAC `mac` (in its EEPROM) over `backend`.
    pub fn new(mac: [u8; 6], backend: Box<dyn NetBackend>) -> Result<Self, E1000Error> {
        let kick = EventFd::new(EFD_NONBLOCK).map_err(|source| E1000Error::Os {
            what: "the e1000's kick eventfd",
            source,
        })?;
        let rx_fd = backend.rx_fd().as_raw_fd();
        Ok(Self {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    nic: E1000Nic::new(mac),
                    backend,
                }),
                mem: OnceLock::new(),
                irq: OnceLock::new(),
                kick,
                stop: AtomicBool::new(false),
                epoch: Instant::now(),
                rx_fd,
            }),
            worker: Mutex::new(None),
        })
    }

    /// Gives the NIC the guest memory its rings and buffers live in.
    pub fn attach_memory(&self, mem: GuestMemoryMmap) -> Result<(), E1000Error> {
        self.shared
            .mem
            .set(mem)
            .map_err(|_| E1000Error::AlreadyAttached { what: "memory" })
    }

    /// Delivers the NIC's interrupt messages through `irq`; without one they are only counted.
    pub fn connect_interrupt(&self, irq: Arc<dyn Interrupt>) -> Result<(), E1000Error> {
        self.shared
            .irq
            .set(irq)
            .map_err(|_| E1000Error::AlreadyAttached { what: "interrupt" })
    }

    /// Starts the receive thread (in the registry of device threads current here, if any).
    pub fn start(&self) -> Result<(), E1000Error> {
        let mut worker = self.worker.lock().unwrap_or_else(PoisonError::into_inner);
        if worker.is_some() {
            return Err(E1000Error::AlreadyAttached {
                what: "receive thread",
            });
        }
        let os = |what| move |source| E1000Error::Os { what, source };
        let epoll = Epoll::new().map_err(os("the e1000's epoll"))?;
        let timer = TimerFd::new()
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
            .map_err(os("the e1000's timer"))?;
        for fd in [self.shared.kick.as_raw_fd(), timer.as_raw_fd()] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, fd as u64),
                )
                .map_err(os("the e1000's epoll"))?;
        }
        let shared = self.shared.clone();
        let handle =
            crate::device_threads::spawn("e1000-rx", move || run_receive(&shared, &epoll, timer))
                .map_err(os("the e1000's receive thread"))?;
        *worker = Some(handle);
        Ok(())
    }

    /// Counters so far.
    pub fn stats(&self) -> E1000Stats {
        self.shared.lock().nic.stats()
    }

    /// A live view of the counters.
    pub fn stats_handle(&self) -> E1000StatsHandle {
        E1000StatsHandle(self.shared.clone())
    }

    /// A guest read of the window at `offset`: fills `data` (its length is the access size).
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        let now = self.shared.now_ns();
        let interrupts = {
            let mut inner = self.shared.lock();
            inner.nic.read(offset, data, now);
            inner.nic.take_interrupts()
        };
        self.shared.deliver(interrupts);
    }

    /// A guest write of `data` to the window at `offset` (a TDT write transmits here).
    pub fn mmio_write(&self, offset: u64, data: &[u8]) {
        let now = self.shared.now_ns();
        let (interrupts, wake) = {
            let mut guard = self.shared.lock();
            let Inner { nic, backend } = &mut *guard;
            let deadline = nic.deadline();
            nic.write(offset, data, self.shared.mem.get(), backend.as_mut(), now);
            // The receive thread looks at the ring again, or times a newly throttled interrupt
            // (a deadline it already has, it is already timing).
            let wake = nic.take_rx_kick() || nic.deadline().is_some_and(|d| Some(d) != deadline);
            (nic.take_interrupts(), wake)
        };
        self.shared.deliver(interrupts);
        if wake {
            let _ = self.shared.kick.write(1);
        }
    }

    /// Stops and joins the receive thread (also done on drop).
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

impl Drop for E1000Device {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The receive thread: a receive pass whenever it wakes, then sleep on what can make progress.
fn run_receive(shared: &Shared, epoll: &Epoll, mut timer: TimerFd) {
    let mut events = [EpollEvent::default(); 3];
    let mut watching_rx = false;
    let mut last_link_check: Option<Instant> = None;
    while !shared.stop.load(Ordering::Acquire) {
        let now = shared.now_ns();
        let check_link = last_link_check.is_none_or(|t| t.elapsed() >= LINK_POLL);
        let (pass, deadline, interrupts) = {
            let mut guard = shared.lock();
            let Inner { nic, backend } = &mut *guard;
            nic.take_rx_kick();
            nic.tick(now);
            if check_link {
                nic.set_link(backend.link_up(), now);
            }
            let pass = nic.receive(shared.mem.get(), backend.as_mut(), now);
            (pass, nic.deadline(), nic.take_interrupts())
        };
        if check_link {
            last_link_check = Some(Instant::now());
        }
        shared.deliver(interrupts);
        if pass.more {
            continue;
        }
        if pass.want_rx != watching_rx {
            let (op, set) = if pass.want_rx {
                (ControlOperation::Add, EventSet::IN)
            } else {
                (ControlOperation::Delete, EventSet::empty())
            };
            let fd = shared.rx_fd;
            if let Err(error) = epoll.ctl(op, fd, EpollEvent::new(set, fd as u64)) {
                tracing::error!(%error, "e1000 receive thread: epoll_ctl failed");
                return;
            }
            watching_rx = pass.want_rx;
        }
        let sleep = deadline
            .map(|d| Duration::from_nanos(d.saturating_sub(shared.now_ns()).max(1)))
            .unwrap_or(LINK_POLL)
            .min(LINK_POLL);
        if let Err(error) = timer.reset(sleep, None) {
            tracing::error!(%error, "e1000 receive thread: timerfd failed");
            return;
        }
        let ready = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                tracing::error!(%error, "e1000 receive thread: epoll_wait failed");
                return;
            }
        };
        for ev in &events[..ready] {
            if ev.fd() == shared.kick.as_raw_fd() {
                let _ = shared.kick.read();
            } else if ev.fd() == timer.as_raw_fd() {
                let _ = timer.wait();
            }
        }
    }
}
