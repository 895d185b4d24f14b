//! The host VMBus service: `vmbus`'s sans-I/O channel [`Server`] bound to hypervisor-lite's
//! enlightenments. It answers the guest's HvPostMessage posts (connection ids 1 and 4), delivers the
//! server's messages through the SynIC, and when the guest opens a channel maps the ring GPADL's pages
//! (bounds-checked against guest RAM by the server) and hands a [`HostChannel`] to the channel's
//! [`VmbusDevice`], which serves it on its own thread sleeping on the channel's event fd.
//!
//! Lock order: post handlers run on vCPU threads and take the service lock, then the enlightenments'
//! locks. Device threads never take the service lock, so they cannot deadlock against it.

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use hypervisor_lite::hv::hypercall::HvStatus;
use hypervisor_lite::hv::{HvError, HvPartition};
use hypervisor_lite::GuestRam;
use vmbus::mem::{PagedMemory, RingMemory};
use vmbus::protocol::Version;
use vmbus::ring::{RingConsumer, RingError, RingProducer};
use vmbus::server::{OfferConfig, Server, ServerAction, ServerConfig};
use vmm_sys_util::eventfd::EventFd;

/// HvPostMessage message type of VMBus channel messages.
pub const CHANNEL_MESSAGE_TYPE: u32 = 1;
/// Connection ids the guest posts INITIATE_CONTACT and later messages to.
pub const MESSAGE_CONNECTION_IDS: [u32; 2] = [1, 4];
const PAGE_SIZE: u64 = 4096;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("enlightenments: {0}")]
    Hv(#[from] HvError),
    #[error("VMBus server refused an offer: {0}")]
    Offer(#[from] vmbus::server::ServerError),
}

/// A synthetic device behind one VMBus channel.
pub trait VmbusDevice: Send + Sync {
    /// Short name for logs and thread names.
    fn name(&self) -> &str;
    /// What to offer the guest.
    fn offer(&self) -> OfferConfig;
    /// Serve an opened channel until [`HostChannel::is_stopped`]; runs on a thread of its own.
    fn serve(&self, channel: HostChannel);
}

/// Counters of the service.
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Posts handled.
    pub posts: AtomicU64,
    /// Posts the server refused (malformed, unexpected, hostile).
    pub refused: AtomicU64,
    /// Messages delivered (or queued) to the guest's SynIC.
    pub messages_sent: AtomicU64,
    /// Messages dropped because the guest's SynIC queue was full.
    pub messages_dropped: AtomicU64,
    /// Channels opened.
    pub opens: AtomicU64,
    /// Channel opens whose rings were unusable (the device was not started).
    pub failed_opens: AtomicU64,
}

struct DeviceSlot {
    device: Arc<dyn VmbusDevice>,
    event: EventFd,
    running: Option<Running>,
}

struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// The host VMBus service of one partition.
pub struct VmbusService {
    hv: Arc<HvPartition>,
    ram: GuestRam,
    inner: Mutex<Inner>,
    /// Counters.
    pub stats: ServiceStats,
}

struct Inner {
    server: Server,
    devices: BTreeMap<u32, DeviceSlot>,
}

impl std::fmt::Debug for VmbusService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmbusService")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl VmbusService {
    /// Offer `devices` to the guest of `hv` (already attached to its partition, whose RAM is `ram`) and
    /// start answering its posts. `versions` empty: every version the server knows.
    pub fn start(
        hv: Arc<HvPartition>,
        ram: GuestRam,
        versions: &[Version],
        devices: Vec<Arc<dyn VmbusDevice>>,
    ) -> Result<Arc<Self>, ServiceError> {
        let mut config = ServerConfig {
            vp_count: hv.config().vp_count,
            guest_pfns: ram
                .regions()
                .iter()
                .map(|r| r.gpa / PAGE_SIZE..(r.gpa + r.len) / PAGE_SIZE)
                .collect(),
            ..ServerConfig::default()
        };
        if !versions.is_empty() {
            config.versions = versions.to_vec();
        }
        let mut server = Server::new(config);
        let mut slots = BTreeMap::new();
        for device in devices {
            let relid = server.add_offer(device.offer())?;
            let connection_id = server
                .channel(relid)
                .map(|c| c.connection_id)
                .unwrap_or_default();
            let event = hv.register_event(connection_id)?;
            slots.insert(
                relid,
                DeviceSlot {
                    device,
                    event,
                    running: None,
                },
            );
        }
        let service = Arc::new(Self {
            hv: hv.clone(),
            ram,
            inner: Mutex::new(Inner {
                server,
                devices: slots,
            }),
            stats: ServiceStats::default(),
        });
        for connection_id in MESSAGE_CONNECTION_IDS {
            let weak: Weak<Self> = Arc::downgrade(&service);
            hv.register_post_message(
                connection_id,
                Arc::new(
                    move |vp, message_type, payload: &[u8]| match weak.upgrade() {
                        Some(service) => {
                            service.handle_post(connection_id, vp, message_type, payload)
                        }
                        None => HvStatus::INVALID_CONNECTION_ID,
                    },
                ),
            )?;
        }
        Ok(service)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The negotiated version, once the guest connected.
    pub fn version(&self) -> Option<Version> {
        self.lock().server.version()
    }

    /// Relids of the offered channels, in offer order.
    pub fn relids(&self) -> Vec<u32> {
        self.lock().devices.keys().copied().collect()
    }

    /// Whether the channel `relid` is being served by its device.
    pub fn is_serving(&self, relid: u32) -> bool {
        self.lock()
            .devices
            .get(&relid)
            .is_some_and(|d| d.running.is_some())
    }

    /// Withdraw the offer of `relid` (RESCIND_CHANNELOFFER); its device is stopped.
    pub fn rescind(&self, relid: u32) -> Result<(), vmbus::server::ServerError> {
        let mut inner = self.lock();
        inner.server.rescind(relid)?;
        self.run_actions(&mut inner);
        Ok(())
    }

    /// Stop every device thread (the partition is going away).
    pub fn shutdown(&self) {
        let mut inner = self.lock();
        let relids: Vec<u32> = inner.devices.keys().copied().collect();
        for relid in relids {
            stop_device(&mut inner, relid);
        }
    }

    fn handle_post(
        &self,
        connection_id: u32,
        vp: u32,
        message_type: u32,
        payload: &[u8],
    ) -> HvStatus {
        self.stats.posts.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        let status = if message_type != CHANNEL_MESSAGE_TYPE {
            tracing::debug!(vp, message_type, "post of a non-VMBus message type refused");
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            HvStatus::SUCCESS
        } else {
            match inner.server.handle_post(connection_id, payload) {
                Ok(outcome) => HvStatus(outcome.hv_status()),
                Err(error) => {
                    tracing::debug!(vp, connection_id, %error, "VMBus message refused");
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    HvStatus::SUCCESS
                }
            }
        };
        self.run_actions(&mut inner);
        status
    }

    fn run_actions(&self, inner: &mut Inner) {
        while let Some(action) = inner.server.poll_action() {
            match action {
                ServerAction::SendToGuest { vp, sint, message } => {
                    match self
                        .hv
                        .post_message(vp, sint, CHANNEL_MESSAGE_TYPE, message.as_bytes())
                    {
                        Ok(_) => self.stats.messages_sent.fetch_add(1, Ordering::Relaxed),
                        Err(error) => {
                            tracing::warn!(vp, sint, %error, "channel message to the guest dropped");
                            self.stats.messages_dropped.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                ServerAction::OpenChannel {
                    relid,
                    pfns,
                    downstream_page_offset,
                    target_vp,
                    ..
                } => {
                    self.open_device(inner, relid, &pfns, downstream_page_offset, target_vp);
                }
                ServerAction::ChannelClosed { relid } => stop_device(inner, relid),
                ServerAction::Unloaded => {
                    let relids: Vec<u32> = inner.devices.keys().copied().collect();
                    for relid in relids {
                        stop_device(inner, relid);
                    }
                }
                other => tracing::trace!(?other, "VMBus server action"),
            }
        }
    }

    fn open_device(&self, inner: &mut Inner, relid: u32, pfns: &[u64], split: u32, target_vp: u32) {
        stop_device(inner, relid);
        let Some(slot) = inner.devices.get_mut(&relid) else {
            return;
        };
        let channel = match HostChannel::map(
            &self.ram,
            &self.hv,
            relid,
            pfns,
            split as usize,
            target_vp,
            &slot.event,
        ) {
            Ok(channel) => channel,
            Err(error) => {
                tracing::warn!(relid, %error, "channel rings unusable; device not started");
                self.stats.failed_opens.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let stop = channel.signals.stop.clone();
        let device = slot.device.clone();
        let name = format!("vsp-{}-{relid}", device.name());
        match std::thread::Builder::new()
            .name(name)
            .spawn(move || device.serve(channel))
        {
            Ok(thread) => {
                self.stats.opens.fetch_add(1, Ordering::Relaxed);
                slot.running = Some(Running { stop, thread });
            }
            Err(error) => {
                tracing::error!(relid, %error, "cannot spawn the device thread");
                self.stats.failed_opens.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for VmbusService {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn stop_device(inner: &mut Inner, relid: u32) {
    if let Some(slot) = inner.devices.get_mut(&relid) {
        if let Some(running) = slot.running.take() {
            running.stop.store(true, Ordering::Release);
            // Wake the device thread if it sleeps on the event fd.
            let _ = slot.event.write(1);
            if running.thread.join().is_err() {
                tracing::error!(relid, "device thread panicked");
            }
        }
    }
}

/// Why a channel's rings could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("ring page {pfn:#x} is not guest RAM")]
    NotRam { pfn: u64 },
    #[error("ring split at page {split} of {pages} leaves a ring without data pages")]
    BadSplit { split: usize, pages: usize },
    #[error("ring: {0}")]
    Ring(#[from] RingError),
    #[error("event fd: {0}")]
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

/// Ring memory in guest pages: the host mapping of a ring's pages plus a handle on guest RAM that keeps
/// the mapping alive for as long as the ring exists, so rings may move to any thread or struct.
#[derive(Debug)]
pub struct GuestPages {
    pages: PagedMemory<'static>,
    _ram: GuestRam,
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

/// The host end of one open channel: the guest→host ring (read), the host→guest ring (written) and
/// [`ChannelSignals`] (the event fd the guest signals, and the way to interrupt the guest).
pub struct HostChannel {
    /// The channel's relid (the guest's event flag number).
    pub relid: u32,
    /// Guest→host ring.
    pub inbound: RingConsumer<GuestPages>,
    /// Host→guest ring.
    pub outbound: RingProducer<GuestPages>,
    /// Notifications in both directions, and their counters.
    pub signals: ChannelSignals,
}

impl std::fmt::Debug for HostChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostChannel")
            .field("relid", &self.relid)
            .field("signals", &self.signals)
            .finish_non_exhaustive()
    }
}

/// A channel's notifications: the event fd the guest signals and the way to interrupt the guest.
pub struct ChannelSignals {
    relid: u32,
    /// Counters.
    pub stats: HostChannelStats,
    event: EventFd,
    hv: Arc<HvPartition>,
    target_vp: u32,
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

impl HostChannel {
    fn map(
        ram: &GuestRam,
        hv: &Arc<HvPartition>,
        relid: u32,
        pfns: &[u64],
        split: usize,
        target_vp: u32,
        event: &EventFd,
    ) -> Result<Self, ChannelError> {
        if split < 2 || pfns.len().saturating_sub(split) < 2 {
            return Err(ChannelError::BadSplit {
                split,
                pages: pfns.len(),
            });
        }
        let mut pages = Vec::with_capacity(pfns.len());
        for &pfn in pfns {
            let gpa = pfn
                .checked_mul(PAGE_SIZE)
                .ok_or(ChannelError::NotRam { pfn })?;
            let ptr = ram
                .host_ptr_range(gpa, PAGE_SIZE)
                .map_err(|_| ChannelError::NotRam { pfn })?;
            pages.push(NonNull::new(ptr).ok_or(ChannelError::NotRam { pfn })?);
        }
        let (inbound_pages, outbound_pages) = pages.split_at(split);
        // SAFETY: every pointer addresses a whole 4 KiB page inside a guest RAM mapping (checked by
        // `host_ptr_range`), which stays mapped while any `GuestRam` clone lives; the channel keeps one
        // (in each ring's `GuestPages`). The guest may write these pages concurrently; the ring
        // code accesses them only atomically and never forms references to them.
        let (inbound_mem, outbound_mem) = unsafe {
            (
                PagedMemory::new(inbound_pages.to_vec()),
                PagedMemory::new(outbound_pages.to_vec()),
            )
        };
        let inbound = RingConsumer::new(GuestPages {
            pages: inbound_mem,
            _ram: ram.clone(),
        })?;
        let outbound = RingProducer::new(GuestPages {
            pages: outbound_mem,
            _ram: ram.clone(),
        })?;
        Ok(Self {
            relid,
            inbound,
            outbound,
            signals: ChannelSignals {
                relid,
                stats: HostChannelStats::default(),
                event: event.try_clone()?,
                hv: hv.clone(),
                target_vp,
                stop: Arc::new(AtomicBool::new(false)),
            },
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
    /// Whether the service asked this channel's device to stop.
    pub fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
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

    /// For a channel that can no longer be served (broken rings, device failure): sleep until the
    /// service closes it, without serving the guest's signals.
    pub fn idle_until_stopped(&mut self) {
        while self.wait(Duration::from_millis(50)) != Wake::Stopped {}
    }

    /// Interrupt the guest for this channel (set its event flag; inject only if newly set).
    pub fn notify_guest(&mut self) {
        match self
            .hv
            .signal_event(self.target_vp, vmbus::protocol::MESSAGE_SINT, self.relid)
        {
            Ok(hypervisor_lite::hv::synic::EventDelivery::Set) => self.stats.interrupts += 1,
            Ok(hypervisor_lite::hv::synic::EventDelivery::AlreadySet) => self.stats.coalesced += 1,
            Ok(hypervisor_lite::hv::synic::EventDelivery::NotEnabled) => {
                tracing::debug!(relid = self.relid, "guest SynIC not enabled; event dropped")
            }
            Err(error) => tracing::warn!(relid = self.relid, %error, "signalling the guest failed"),
        }
    }
}
