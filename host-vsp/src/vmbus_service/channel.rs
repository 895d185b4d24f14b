//! The host end of one open channel: its two rings over guest pages ([`GuestPages`]), the
//! notifications in both directions ([`ChannelSignals`]) and what the device model tells the device
//! about it ([`ChannelContext`]).

use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmbus::mem::{PagedMemory, RingMemory, PAGE_SIZE};
use vmbus::ring::{RingConsumer, RingError, RingProducer};
use vmm_sys_util::eventfd::EventFd;

use super::device::ChannelContext;
use super::{EventDelivery, Synic};

/// Why a channel's rings could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("ring page {pfn:#x} is not guest RAM")]
    NotRam { pfn: u64 },
    #[error("ring split at page {split} of {pages} leaves a ring without data pages")]
    BadSplit { split: usize, pages: usize },
    #[error("ring")]
    Ring(#[from] RingError),
    #[error("event fd")]
    Event(#[from] std::io::Error),
}

/// Counters of one host channel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostChannelStats {
    /// Guest→host signals received (HvSignalEvent calls on this channel's connection id).
    pub guest_signals: u64,
    /// Interrupts injected into the guest for this channel (event flag newly set).
    pub interrupts: u64,
    /// Notifications that found the guest's flag still set (coalesced, no interrupt).
    pub coalesced: u64,
    /// Wake-ups of the device thread.
    pub wakeups: u64,
}

/// Ring memory in guest pages: the host mapping of a ring's pages plus a handle on guest memory that
/// keeps the mapping alive for as long as the ring exists, so rings may move to any thread or struct.
///
/// This is the safe way to put a [`RingMemory`] over memory another party (the guest) also maps:
/// [`GuestPages::new`] checks every page against the guest memory it is given.
#[derive(Debug)]
pub struct GuestPages {
    pages: PagedMemory<'static>,
    _memory: GuestMemoryMmap,
}

impl GuestPages {
    /// The pages `pfns` of `memory`, in ring order. Fails if any page is not wholly guest RAM.
    pub fn new(memory: &GuestMemoryMmap, pfns: &[u64]) -> Result<Self, ChannelError> {
        let mut pages = Vec::with_capacity(pfns.len());
        for &pfn in pfns {
            let not_ram = ChannelError::NotRam { pfn };
            let gpa = pfn.checked_mul(PAGE_SIZE as u64).ok_or(not_ram)?;
            // One region must hold the whole page: `get_slice` refuses anything else.
            let slice = memory
                .get_slice(GuestAddress(gpa), PAGE_SIZE)
                .map_err(|_| ChannelError::NotRam { pfn })?;
            let ptr = slice.ptr_guard_mut().as_ptr();
            pages.push(NonNull::new(ptr).ok_or(ChannelError::NotRam { pfn })?);
        }
        // SAFETY: every pointer addresses a whole 4 KiB page inside one mapped guest memory region
        // (checked by `get_slice` above). The regions are reference-counted by `GuestMemoryMmap` and
        // we keep a clone in `_memory`, so the mapping outlives `pages`. The guest may write the
        // pages concurrently; `PagedMemory` accesses them only atomically and forms no references.
        let pages = unsafe { PagedMemory::new(pages) };
        Ok(Self {
            pages,
            _memory: memory.clone(),
        })
    }
}

impl RingMemory for GuestPages {
    fn len(&self) -> usize {
        self.pages.len()
    }

    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        self.pages.load_u32(off, order)
    }

    fn store_u32(&self, off: usize, value: u32, order: Ordering) {
        self.pages.store_u32(off, value, order)
    }

    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        self.pages.read_bytes(off, dst)
    }

    fn write_bytes(&self, off: usize, src: &[u8]) {
        self.pages.write_bytes(off, src)
    }
}

/// The host end of one open channel: the guest→host ring (read), the host→guest ring (written),
/// [`ChannelSignals`] (the event fd the guest signals, and the way to interrupt the guest) and the
/// [`ChannelContext`] (GPADLs, target VP, sub-channel offers).
pub struct HostChannel {
    /// The channel's relid (the guest's event flag number).
    pub relid: u32,
    /// Guest→host ring.
    pub inbound: RingConsumer<GuestPages>,
    /// Host→guest ring.
    pub outbound: RingProducer<GuestPages>,
    /// Notifications in both directions, and their counters.
    pub signals: ChannelSignals,
    /// What the device model knows about the channel and offers the device.
    pub context: ChannelContext,
}

impl std::fmt::Debug for HostChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostChannel")
            .field("relid", &self.relid)
            .field("signals", &self.signals)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

/// What [`ChannelSignals::wait`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The guest signalled (this many times since the last wait).
    Signalled(u64),
    /// The timeout passed with no signal.
    Timeout,
    /// The channel is being closed: return.
    Stopped,
}

/// Where a channel interrupts the guest: the SynIC, the SINT and the VP (which MODIFYCHANNEL moves).
#[derive(Clone)]
pub(super) struct Interrupt {
    pub synic: Arc<dyn Synic>,
    pub sint: u8,
    pub target_vp: Arc<AtomicU32>,
}

/// A channel's notifications: the event fd the guest signals and the way to interrupt the guest.
pub struct ChannelSignals {
    relid: u32,
    /// Counters.
    pub stats: HostChannelStats,
    event: EventFd,
    interrupt: Interrupt,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for ChannelSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelSignals")
            .field("relid", &self.relid)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl HostChannel {
    /// Map the ring GPADL's pages (`split` of them for the guest→host ring) and bind the channel's
    /// notifications.
    pub(super) fn map(
        memory: &GuestMemoryMmap,
        pfns: &[u64],
        split: usize,
        signals: ChannelSignals,
        context: ChannelContext,
    ) -> Result<Self, ChannelError> {
        if split < 2 || pfns.len().saturating_sub(split) < 2 {
            return Err(ChannelError::BadSplit {
                split,
                pages: pfns.len(),
            });
        }
        let (inbound_pfns, outbound_pfns) = pfns.split_at(split);
        let inbound = RingConsumer::new(GuestPages::new(memory, inbound_pfns)?)?;
        let outbound = RingProducer::new(GuestPages::new(memory, outbound_pfns)?)?;
        Ok(Self {
            relid: signals.relid,
            inbound,
            outbound,
            signals,
            context,
        })
    }

    /// Split into the two rings and the signals (for devices that keep the rings in a worker).
    pub fn into_parts(
        self,
    ) -> (
        RingConsumer<GuestPages>,
        RingProducer<GuestPages>,
        ChannelSignals,
    ) {
        (self.inbound, self.outbound, self.signals)
    }

    /// See [`ChannelSignals::is_stopped`].
    pub fn is_stopped(&self) -> bool {
        self.signals.is_stopped()
    }

    /// See [`ChannelSignals::wait`].
    pub fn wait(&mut self, timeout: Duration) -> Wake {
        self.signals.wait(timeout)
    }

    /// See [`ChannelSignals::notify_guest`].
    pub fn notify_guest(&mut self) {
        self.signals.notify_guest()
    }

    /// The channel's counters.
    pub fn stats(&self) -> HostChannelStats {
        self.signals.stats
    }
}

impl ChannelSignals {
    /// The notifications of channel `relid`: signals arrive on `event`, interrupts go through
    /// `interrupt`, and `stop` turns true when the channel closes.
    pub(super) fn new(
        relid: u32,
        event: &EventFd,
        interrupt: Interrupt,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, ChannelError> {
        Ok(Self {
            relid,
            stats: HostChannelStats::default(),
            event: event.try_clone()?,
            interrupt,
            stop,
        })
    }

    /// Whether the service asked this channel's device to stop.
    pub fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// The VP this channel interrupts (OPENCHANNEL's target, moved by MODIFYCHANNEL).
    pub fn target_vp(&self) -> u32 {
        self.interrupt.target_vp.load(Ordering::Acquire)
    }

    /// The event fd the guest's signals arrive on (for devices that poll it with other fds).
    pub fn event_fd(&self) -> &EventFd {
        &self.event
    }

    /// Sleep until the guest signals, the channel is stopped, or `timeout` passes.
    pub fn wait(&mut self, timeout: Duration) -> Wake {
        if self.is_stopped() {
            return Wake::Stopped;
        }
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.event),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `pfd` is a valid pollfd for the duration of the call; nfds = 1.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if self.is_stopped() {
            return Wake::Stopped;
        }
        if ready <= 0 {
            return Wake::Timeout;
        }
        self.stats.wakeups += 1;
        match self.event.read() {
            Ok(n) => {
                self.stats.guest_signals += n;
                Wake::Signalled(n)
            }
            Err(_) => Wake::Timeout,
        }
    }

    /// Like [`wait`](Self::wait), but also wakes when one of `extra` is readable (a backend's
    /// receive fd, a host control event): returns what the channel saw and whether an extra fd is
    /// readable. The extra fds are only polled, never read.
    pub fn wait_with(&mut self, extra: &[&dyn AsRawFd], timeout: Duration) -> (Wake, bool) {
        if self.is_stopped() {
            return (Wake::Stopped, false);
        }
        let mut fds = Vec::with_capacity(1 + extra.len());
        fds.push(libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.event),
            events: libc::POLLIN,
            revents: 0,
        });
        fds.extend(extra.iter().map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the duration of the call; poll
        // only reads the descriptors' readiness (a closed one reports POLLNVAL, harmlessly).
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if self.is_stopped() {
            return (Wake::Stopped, false);
        }
        if ready <= 0 {
            return (Wake::Timeout, false);
        }
        self.stats.wakeups += 1;
        let extra_ready = fds[1..].iter().any(|p| p.revents != 0);
        if fds[0].revents & libc::POLLIN == 0 {
            return (Wake::Timeout, extra_ready);
        }
        match self.event.read() {
            Ok(n) => {
                self.stats.guest_signals += n;
                (Wake::Signalled(n), extra_ready)
            }
            Err(_) => (Wake::Timeout, extra_ready),
        }
    }

    /// For a channel that can no longer be served (broken rings, device failure): sleep until the
    /// service closes it, without serving the guest's signals.
    pub fn idle_until_stopped(&mut self) {
        while self.wait(Duration::from_millis(50)) != Wake::Stopped {}
    }

    /// Interrupt the guest for this channel (set its event flag; inject only if newly set).
    pub fn notify_guest(&mut self) {
        let vp = self.target_vp();
        match self
            .interrupt
            .synic
            .signal_event(vp, self.interrupt.sint, self.relid)
        {
            Ok(EventDelivery::Set) => self.stats.interrupts += 1,
            Ok(EventDelivery::AlreadySet) => self.stats.coalesced += 1,
            Ok(EventDelivery::NotEnabled) => {
                tracing::debug!(relid = self.relid, "guest SynIC not enabled; event dropped")
            }
            Err(error) => {
                crate::guest_warn!(relid = self.relid, %error, "signalling the guest failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    const GIB: u64 = 1 << 30;

    /// 64 KiB at 0, 64 KiB at 4 GiB, 8 KiB at 32 GiB: RAM on both sides of the MMIO hole.
    fn split_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1_0000),
            (GuestAddress(4 * GIB), 0x1_0000),
            (GuestAddress(32 * GIB), 0x2000),
        ])
        .unwrap()
    }

    #[test]
    fn ring_pages_above_4_gib_map_at_their_full_address() {
        let mem = split_memory();
        // PFNs ≥ 2^20 (GPAs ≥ 4 GiB), one ≥ 2^23 (GPA ≥ 32 GiB), out of order.
        let pfns = [0x10_0000, 0x80_0001, 0x10_0003];
        let pages = GuestPages::new(&mem, &pfns).unwrap();
        assert_eq!(pages.len(), 3 * PAGE_SIZE);
        pages.write_bytes(PAGE_SIZE + 10, &[1, 2, 3]);
        pages.store_u32(2 * PAGE_SIZE + 8, 0xdead_beef, Ordering::SeqCst);
        let mut got = [0u8; 3];
        mem.read_slice(&mut got, GuestAddress(32 * GIB + 0x1000 + 10))
            .unwrap();
        assert_eq!(got, [1, 2, 3]);
        let word: u32 = mem.read_obj(GuestAddress(4 * GIB + 0x3008)).unwrap();
        assert_eq!(word, 0xdead_beef);
        // Nothing landed at the 32-bit truncations of those addresses.
        let mut low = vec![0u8; 0x1_0000];
        mem.read_slice(&mut low, GuestAddress(0)).unwrap();
        assert!(low.iter().all(|&b| b == 0));
    }

    #[test]
    fn ring_pages_that_would_alias_low_ram_if_truncated_are_refused() {
        let mem = split_memory();
        // 2^32 + 2 as a u32 is page 2, which is RAM; as a u64 it is far beyond RAM.
        for pfn in [(1u64 << 32) + 2, (1 << 52) + 2, 0x10_0010, u64::MAX] {
            assert!(
                matches!(GuestPages::new(&mem, &[0x10_0000, pfn]), Err(ChannelError::NotRam { pfn: p }) if p == pfn),
                "{pfn:#x}"
            );
        }
    }
}
