//! The host VMBus service of one partition: `vmbus`'s sans-I/O channel [`Server`] hosting every
//! VMBus device of the guest, with no knowledge of KVM. The partition's glue feeds it the guest's
//! channel-message posts ([`VmbusService::handle_post`]) and gives it a [`Synic`] to deliver messages,
//! set event flags and hand out the event fd of a connection id.
//!
//! - [`device`]: the device model ([`VmbusDevice`], [`ChannelContext`], [`MappedGpadl`]);
//! - [`channel`]: one open channel's rings and notifications ([`HostChannel`], [`ChannelSignals`]).
//!
//! Devices may be offered before the guest connects or at any time after
//! ([`VmbusService::add_device`], hot-add) and withdrawn ([`VmbusService::remove_device`], RESCIND;
//! the relid is reused once the guest sends RELID_RELEASED). When the guest opens a channel its ring
//! GPADL is mapped and the device's [`VmbusDevice::serve`] runs on a thread of its own, sleeping on the
//! channel's event fd; sub-channels a device offers get threads of their own. The service's threads
//! join the [`DeviceThreads`] registry current when it starts (for CPU accounting).
//!
//! Lock order: post handlers (vCPU threads) and host callers take the service lock, then the
//! [`Synic`]'s. Device threads never take the service lock — they queue [`device::DeviceRequest`]s for
//! the service's own thread — so stopping a device while holding the lock cannot deadlock; it is
//! bounded by [`STOP_TIMEOUT`] all the same.

pub mod channel;
pub mod device;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmbus::mem::PAGE_SIZE;
use vmbus::protocol::{
    Version, CHANNEL_MESSAGE_TYPE, HV_STATUS_SUCCESS, MAX_USER_DEFINED_BYTES, MESSAGE_SINT,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER,
};
use vmbus::server::{OfferConfig, Server, ServerAction, ServerConfig, ServerError};
use vmm_sys_util::eventfd::EventFd;

use crate::device_threads::{self, DeviceThreads};

pub use channel::{ChannelError, ChannelSignals, GuestPages, HostChannel, HostChannelStats, Wake};
pub use device::{
    ChannelContext, ContextError, GpadlAccessError, MappedGpadl, VmbusDevice, MAX_SUBCHANNELS,
};

use channel::Interrupt;
use device::{DeviceRequest, GpadlTable};

/// How long stopping a device waits for its thread before leaving it behind (and saying so).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a [`Synic`] failed to do.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SynicError(pub Box<dyn std::error::Error + Send + Sync>);

/// What setting a channel's event flag did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventDelivery {
    /// The flag went from 0 to 1 and the SINT's interrupt was raised.
    Set,
    /// The flag was still set: the guest has not consumed the previous signal; no new interrupt.
    AlreadySet,
    /// The guest's SynIC is not enabled: the event was dropped.
    NotEnabled,
}

/// The guest's synthetic interrupt controller as the service uses it (implemented by the KVM glue,
/// or by a test harness).
pub trait Synic: Send + Sync {
    /// Deliver (or queue) a message of `message_type` to `sint` of VP `vp`.
    fn post_message(
        &self,
        vp: u32,
        sint: u8,
        message_type: u32,
        payload: &[u8],
    ) -> Result<(), SynicError>;
    /// Set event flag `flag` of `sint` on VP `vp`, interrupting it if the flag was clear.
    fn signal_event(&self, vp: u32, sint: u8, flag: u32) -> Result<EventDelivery, SynicError>;
    /// The event fd (non-blocking) the guest's HvSignalEvent on `connection_id` signals. Asking
    /// again for the same id (a reused relid) returns the same event.
    fn event_for(&self, connection_id: u32) -> Result<EventFd, SynicError>;
}

/// Why the service could not do what the host asked.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("SynIC")]
    Synic(#[from] SynicError),
    #[error("VMBus server refused the offer")]
    Offer(#[from] ServerError),
    #[error("no device has relid {0}")]
    NoDevice(u32),
    #[error("the service thread could not start")]
    Thread(#[source] std::io::Error),
}

/// How the service behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Number of VPs of the partition.
    pub vp_count: u32,
    /// Versions a guest may connect with; empty: every version the server knows.
    pub versions: Vec<Version>,
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
    /// GPADLs mapped for devices.
    pub gpadls_mapped: AtomicU64,
    /// GPADLs revoked (torn down by the guest or dropped with their channel).
    pub gpadls_revoked: AtomicU64,
    /// Relids released by the guest after a rescind (free for reuse).
    pub relids_released: AtomicU64,
    /// Device threads that panicked (their device was rescinded).
    pub device_panics: AtomicU64,
    /// Device threads that did not stop within [`STOP_TIMEOUT`].
    pub stuck_devices: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A device thread that failed (panicked); its device was rescinded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFailure {
    /// The channel whose thread failed.
    pub relid: u32,
    /// The device's name.
    pub device: String,
    /// The panic message.
    pub what: String,
}

/// Failures kept for reporting (the rest are only counted).
const MAX_FAILURES: usize = 64;

/// Where a channel stands, as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    /// Offered (or waiting to be offered); not open.
    Offered,
    /// Open, and its device is being served.
    Open,
    /// Rescinded; waiting for the guest's RELID_RELEASED.
    Rescinded,
}

struct Running {
    stop: Arc<AtomicBool>,
    done: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

struct Slot {
    device: Arc<dyn VmbusDevice>,
    offer: OfferConfig,
    primary: u32,
    subchannel_index: u16,
    gpadls: Arc<GpadlTable>,
    event: EventFd,
    target_vp: Arc<AtomicU32>,
    opens: u64,
    running: Option<Running>,
}

struct Inner {
    server: Server,
    slots: BTreeMap<u32, Slot>,
}

/// The host VMBus service of one partition.
pub struct VmbusService {
    synic: Arc<dyn Synic>,
    memory: GuestMemoryMmap,
    inner: Mutex<Inner>,
    requests: Mutex<Sender<DeviceRequest>>,
    failures: Mutex<Vec<DeviceFailure>>,
    /// How long stopping a device waits ([`STOP_TIMEOUT`] outside tests).
    stop_timeout: Duration,
    /// The registry every thread of the service joins (current when it started).
    threads: Option<DeviceThreads>,
    /// Counters.
    pub stats: ServiceStats,
}

impl std::fmt::Debug for VmbusService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmbusService")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl VmbusService {
    /// A service for the guest whose memory is `memory`, offering `devices` (more may be added at
    /// any time). Nothing reaches the guest until it posts INITIATE_CONTACT through
    /// [`VmbusService::handle_post`].
    pub fn start(
        config: ServiceConfig,
        memory: GuestMemoryMmap,
        synic: Arc<dyn Synic>,
        devices: Vec<Arc<dyn VmbusDevice>>,
    ) -> Result<Arc<Self>, ServiceError> {
        Self::start_with_stop_timeout(config, memory, synic, devices, STOP_TIMEOUT)
    }

    /// [`VmbusService::start`] with another bound on stopping a device (tests of stuck devices).
    fn start_with_stop_timeout(
        config: ServiceConfig,
        memory: GuestMemoryMmap,
        synic: Arc<dyn Synic>,
        devices: Vec<Arc<dyn VmbusDevice>>,
        stop_timeout: Duration,
    ) -> Result<Arc<Self>, ServiceError> {
        let mut server_config = ServerConfig {
            vp_count: config.vp_count,
            guest_pfns: memory
                .iter()
                .map(|r| {
                    let start = r.start_addr().0 / PAGE_SIZE as u64;
                    start..start + r.len() / PAGE_SIZE as u64
                })
                .collect(),
            ..ServerConfig::default()
        };
        if !config.versions.is_empty() {
            server_config.versions = config.versions;
        }
        let (tx, rx) = mpsc::channel();
        let service = Arc::new(Self {
            synic,
            memory,
            inner: Mutex::new(Inner {
                server: Server::new(server_config),
                slots: BTreeMap::new(),
            }),
            requests: Mutex::new(tx),
            failures: Mutex::new(Vec::new()),
            stop_timeout,
            threads: DeviceThreads::current(),
            stats: ServiceStats::default(),
        });
        for device in devices {
            service.add_device(device)?;
        }
        let weak = Arc::downgrade(&service);
        device_threads::spawn_in(service.threads.as_ref(), "vmbus-service", move || {
            serve_requests(weak, rx)
        })
        .map_err(ServiceError::Thread)?;
        Ok(service)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sender(&self) -> Sender<DeviceRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The negotiated version, once the guest connected.
    pub fn version(&self) -> Option<Version> {
        self.lock().server.version()
    }

    /// Relids of the devices' primary channels, in relid order.
    pub fn relids(&self) -> Vec<u32> {
        self.lock()
            .slots
            .iter()
            .filter(|(_, s)| s.subchannel_index == 0)
            .map(|(&relid, _)| relid)
            .collect()
    }

    /// Relids of the sub-channels of `primary`, by sub-channel index.
    pub fn subchannels(&self, primary: u32) -> Vec<u32> {
        let inner = self.lock();
        let mut subs: Vec<(u16, u32)> = inner
            .slots
            .iter()
            .filter(|(&relid, s)| s.primary == primary && relid != primary)
            .map(|(&relid, s)| (s.subchannel_index, relid))
            .collect();
        subs.sort_unstable();
        subs.into_iter().map(|(_, relid)| relid).collect()
    }

    /// Whether the channel `relid` is being served by its device.
    pub fn is_serving(&self, relid: u32) -> bool {
        self.lock()
            .slots
            .get(&relid)
            .is_some_and(|d| d.running.is_some())
    }

    /// Device threads that failed so far (the first [`MAX_FAILURES`] of them).
    pub fn failures(&self) -> Vec<DeviceFailure> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Where channel `relid` stands; `None` once it is gone (never offered, or released).
    pub fn channel_state(&self, relid: u32) -> Option<ChannelState> {
        let inner = self.lock();
        let info = inner.server.channel(relid)?;
        Some(if info.revoked {
            ChannelState::Rescinded
        } else if inner.slots.get(&relid).is_some_and(|s| s.running.is_some()) {
            ChannelState::Open
        } else {
            ChannelState::Offered
        })
    }

    /// Offer `device` (a new primary channel); returns its relid. Before the guest enumerated offers
    /// it is part of the initial list; after, the guest gets the offer at once (hot-add).
    pub fn add_device(&self, device: Arc<dyn VmbusDevice>) -> Result<u32, ServiceError> {
        let offer = device.offer();
        let mut inner = self.lock();
        let relid = self.add_slot(&mut inner, device, offer, None, 0);
        // On failure too: a hot-added offer the service had to withdraw must reach the guest now,
        // rescinded, so that it releases the relid.
        self.run_actions(&mut inner);
        relid
    }

    fn add_slot(
        &self,
        inner: &mut Inner,
        device: Arc<dyn VmbusDevice>,
        mut offer: OfferConfig,
        group: Option<(u32, Arc<GpadlTable>)>,
        subchannel_index: u16,
    ) -> Result<u32, ServiceError> {
        offer.offer.sub_channel_index = subchannel_index;
        // Before enumeration a failure below leaves nothing behind in the server; after it, the
        // guest gets the offer and its rescind when the caller runs the actions, and releases it.
        let relid = inner.server.add_offer(offer)?;
        let connection_id = inner
            .server
            .channel(relid)
            .map(|c| c.connection_id)
            .unwrap_or_default();
        let event = match self.synic.event_for(connection_id) {
            Ok(event) => event,
            Err(error) => {
                let _ = inner.server.rescind(relid);
                return Err(error.into());
            }
        };
        let (primary, gpadls) = group.unwrap_or_else(|| (relid, Arc::default()));
        inner.slots.insert(
            relid,
            Slot {
                device,
                offer,
                primary,
                subchannel_index,
                gpadls,
                event,
                target_vp: Arc::new(AtomicU32::new(0)),
                opens: 0,
                running: None,
            },
        );
        Ok(relid)
    }

    /// Withdraw the device whose primary channel is `relid` (RESCIND_CHANNELOFFER for it and its
    /// sub-channels): its threads are stopped, and each relid is free again once the guest releases
    /// it (at once if the guest never saw the offer).
    pub fn remove_device(&self, relid: u32) -> Result<(), ServiceError> {
        let mut inner = self.lock();
        let primary = inner
            .slots
            .get(&relid)
            .map(|s| s.primary)
            .ok_or(ServiceError::NoDevice(relid))?;
        self.rescind_group(&mut inner, primary);
        self.run_actions(&mut inner);
        Ok(())
    }

    /// Rescind `primary`'s sub-channels, then `primary` (each only if not rescinded already).
    fn rescind_group(&self, inner: &mut Inner, primary: u32) {
        let mut relids: Vec<u32> = inner
            .slots
            .iter()
            .filter(|(&r, s)| s.primary == primary && r != primary)
            .map(|(&r, _)| r)
            .collect();
        relids.push(primary);
        for relid in relids {
            if inner.server.channel(relid).is_some_and(|c| !c.revoked) {
                if let Err(error) = inner.server.rescind(relid) {
                    tracing::warn!(relid, %error, "rescind refused");
                }
            }
        }
    }

    /// Stop every device thread (the partition is going away).
    pub fn shutdown(&self) {
        let mut inner = self.lock();
        let relids: Vec<u32> = inner.slots.keys().copied().collect();
        for relid in relids {
            self.stop_device(&mut inner, relid);
        }
    }

    /// A channel message the guest posted with HvPostMessage to `connection_id` from VP `vp`.
    /// Returns the hypercall status.
    pub fn handle_post(
        &self,
        connection_id: u32,
        vp: u32,
        message_type: u32,
        payload: &[u8],
    ) -> u16 {
        bump(&self.stats.posts);
        let mut inner = self.lock();
        let status = if message_type != CHANNEL_MESSAGE_TYPE {
            tracing::debug!(vp, message_type, "post of a non-VMBus message type refused");
            bump(&self.stats.refused);
            HV_STATUS_SUCCESS
        } else {
            match inner.server.handle_post(connection_id, payload) {
                Ok(outcome) => outcome.hv_status(),
                Err(error) => {
                    tracing::debug!(vp, connection_id, %error, "VMBus message refused");
                    bump(&self.stats.refused);
                    HV_STATUS_SUCCESS
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
                    match self.synic.post_message(
                        vp,
                        sint,
                        CHANNEL_MESSAGE_TYPE,
                        message.as_bytes(),
                    ) {
                        Ok(()) => bump(&self.stats.messages_sent),
                        Err(error) => {
                            crate::guest_warn!(vp, sint, %error, "channel message to the guest dropped");
                            bump(&self.stats.messages_dropped);
                        }
                    }
                }
                ServerAction::OpenChannel {
                    relid,
                    pfns,
                    downstream_page_offset,
                    target_vp,
                    user_data,
                    ..
                } => {
                    let opened = self.open_device(
                        inner,
                        relid,
                        &pfns,
                        downstream_page_offset,
                        target_vp,
                        user_data,
                    );
                    // The guest hears OPENCHANNEL_RESULT only now: success, or why its open failed
                    // (the server then closes the channel again, so the guest may retry).
                    let status = opened.err().unwrap_or(0);
                    if let Err(error) = inner.server.complete_open(relid, status) {
                        crate::guest_warn!(relid, %error, "open not answered");
                    }
                }
                ServerAction::ChannelClosed { relid } => {
                    self.stop_device(inner, relid);
                    // Sub-channels do not outlive their primary's open.
                    if inner.slots.get(&relid).is_some_and(|s| s.primary == relid) {
                        let subs: Vec<u32> = inner
                            .slots
                            .iter()
                            .filter(|(&r, s)| s.primary == relid && r != relid)
                            .map(|(&r, _)| r)
                            .collect();
                        for sub in subs {
                            if inner.server.channel(sub).is_some_and(|c| !c.revoked) {
                                let _ = inner.server.rescind(sub);
                            }
                        }
                    }
                }
                ServerAction::GpadlReady { relid, gpadl } => self.map_gpadl(inner, relid, gpadl),
                ServerAction::GpadlTornDown { relid, gpadl } => {
                    if let Some(slot) = inner.slots.get(&relid) {
                        if slot.gpadls.revoke(gpadl) {
                            bump(&self.stats.gpadls_revoked);
                        }
                    }
                }
                ServerAction::ModifyChannel { relid, target_vp } => {
                    if let Some(slot) = inner.slots.get(&relid) {
                        slot.target_vp.store(target_vp, Ordering::Release);
                    }
                }
                ServerAction::ChannelReleased { relid } => {
                    self.stop_device(inner, relid);
                    if inner.slots.remove(&relid).is_some() {
                        bump(&self.stats.relids_released);
                    }
                }
                ServerAction::Unloaded => {
                    let relids: Vec<u32> = inner.slots.keys().copied().collect();
                    for relid in relids {
                        self.stop_device(inner, relid);
                        // Sub-channels are offered again only if the next connection asks.
                        if inner
                            .slots
                            .get(&relid)
                            .is_some_and(|s| s.subchannel_index != 0)
                        {
                            let _ = inner.server.rescind(relid);
                        }
                    }
                }
                ServerAction::Connected { version, vp, .. } => {
                    tracing::debug!(%version, vp, "guest connected to VMBus")
                }
            }
        }
    }

    fn map_gpadl(&self, inner: &mut Inner, relid: u32, handle: u32) {
        let Some(slot) = inner.slots.get(&relid) else {
            return;
        };
        let Some(assembled) = inner.server.gpadl(handle) else {
            return;
        };
        match MappedGpadl::map(&self.memory, handle, relid, assembled.ranges.clone()) {
            Ok(mapped) => {
                slot.gpadls.insert(Arc::new(mapped));
                bump(&self.stats.gpadls_mapped);
            }
            // The server checked every page against guest RAM already; log if that ever disagrees.
            Err(error) => crate::guest_warn!(relid, %error, "GPADL not mapped"),
        }
    }

    fn open_device(
        &self,
        inner: &mut Inner,
        relid: u32,
        pfns: &[u64],
        split: u32,
        target_vp: u32,
        user_data: [u8; MAX_USER_DEFINED_BYTES],
    ) -> Result<(), u32> {
        self.stop_device(inner, relid);
        let requests = self.sender();
        let Some(slot) = inner.slots.get_mut(&relid) else {
            return Err(STATUS_INVALID_PARAMETER);
        };
        slot.target_vp.store(target_vp, Ordering::Release);
        // Forget the wake-up left by stopping an earlier open (devices look at their rings first
        // anyway), so the new channel's signal count starts at what the guest really sent.
        let _ = slot.event.read();
        let stop = Arc::new(AtomicBool::new(false));
        let context = ChannelContext {
            relid,
            primary: slot.primary,
            subchannel_index: slot.subchannel_index,
            user_data,
            opens: slot.opens + 1,
            target_vp: slot.target_vp.clone(),
            gpadls: slot.gpadls.clone(),
            requests: requests.clone(),
            memory: self.memory.clone(),
        };
        let interrupt = Interrupt {
            synic: self.synic.clone(),
            sint: MESSAGE_SINT,
            target_vp: slot.target_vp.clone(),
        };
        let channel =
            ChannelSignals::new(relid, &slot.event, interrupt, stop.clone()).and_then(|signals| {
                HostChannel::map(&self.memory, pfns, split as usize, signals, context)
            });
        let channel = match channel {
            Ok(channel) => channel,
            Err(error) => {
                crate::guest_warn!(relid, %error, "channel rings unusable; device not started");
                bump(&self.stats.failed_opens);
                return Err(STATUS_INVALID_PARAMETER);
            }
        };
        let device = slot.device.clone();
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let finished = done.clone();
        let name = format!("vsp-{}-{relid}", device.name());
        let spawned = device_threads::spawn_in(self.threads.as_ref(), name, move || {
            let served = std::panic::catch_unwind(AssertUnwindSafe(|| device.serve(channel)));
            if let Err(panic) = served {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                crate::guest_error!(relid, device = device.name(), %what, "device thread panicked");
                let _ = requests.send(DeviceRequest::Failed {
                    relid,
                    device: device.name().to_string(),
                    what,
                });
            }
            let (flag, cv) = &*finished;
            *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        });
        match spawned {
            Ok(thread) => {
                bump(&self.stats.opens);
                slot.opens += 1;
                slot.running = Some(Running { stop, done, thread });
                Ok(())
            }
            Err(error) => {
                tracing::error!(relid, %error, "cannot spawn the device thread");
                bump(&self.stats.failed_opens);
                Err(STATUS_INSUFFICIENT_RESOURCES)
            }
        }
    }

    /// Stop `relid`'s device thread, waiting at most `stop_timeout` ([`STOP_TIMEOUT`]) for it.
    fn stop_device(&self, inner: &mut Inner, relid: u32) {
        let Some(slot) = inner.slots.get_mut(&relid) else {
            return;
        };
        let Some(running) = slot.running.take() else {
            return;
        };
        running.stop.store(true, Ordering::Release);
        // Wake the device thread if it sleeps on the event fd.
        let _ = slot.event.write(1);
        let (flag, cv) = &*running.done;
        let guard = flag.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cv
            .wait_timeout_while(guard, self.stop_timeout, |done| !*done)
            .unwrap_or_else(|e| e.into_inner());
        if *guard {
            drop(guard);
            let _ = running.thread.join();
        } else {
            bump(&self.stats.stuck_devices);
            tracing::error!(
                relid,
                device = slot.device.name(),
                "device thread did not stop within {:?}; left behind",
                self.stop_timeout
            );
        }
    }

    /// Offer sub-channels 1..=`count` of `primary` that are not offered yet.
    fn offer_subchannels(&self, primary: u32, count: u16) {
        let mut inner = self.lock();
        let Some(slot) = inner.slots.get(&primary) else {
            return;
        };
        if slot.running.is_none() {
            tracing::debug!(
                primary,
                "sub-channels asked for by a closed channel; ignored"
            );
            return;
        }
        let (device, offer, gpadls) = (slot.device.clone(), slot.offer, slot.gpadls.clone());
        // Rescinded sub-channels (waiting for the guest's RELID_RELEASED) do not count: their index
        // is offered again on a new relid.
        let have: Vec<u16> = inner
            .slots
            .iter()
            .filter(|(&relid, s)| {
                s.primary == primary && inner.server.channel(relid).is_some_and(|c| !c.revoked)
            })
            .map(|(_, s)| s.subchannel_index)
            .collect();
        for index in 1..=count.min(MAX_SUBCHANNELS) {
            if have.contains(&index) {
                continue;
            }
            let group = Some((primary, gpadls.clone()));
            if let Err(error) = self.add_slot(&mut inner, device.clone(), offer, group, index) {
                crate::guest_warn!(primary, index, %error, "sub-channel not offered");
                break;
            }
        }
        self.run_actions(&mut inner);
    }

    fn device_failed(&self, failure: DeviceFailure) {
        bump(&self.stats.device_panics);
        let relid = failure.relid;
        {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            if failures.len() < MAX_FAILURES {
                failures.push(failure);
            }
        }
        let mut inner = self.lock();
        if let Some(primary) = inner.slots.get(&relid).map(|s| s.primary) {
            self.rescind_group(&mut inner, primary);
            self.run_actions(&mut inner);
        }
    }
}

impl Drop for VmbusService {
    fn drop(&mut self) {
        self.shutdown();
        let _ = self.sender().send(DeviceRequest::Exit);
    }
}

/// The service's own thread: carries out what device threads asked for.
fn serve_requests(service: Weak<VmbusService>, requests: Receiver<DeviceRequest>) {
    while let Ok(request) = requests.recv() {
        let Some(service) = service.upgrade() else {
            return;
        };
        match request {
            DeviceRequest::OfferSubchannels { primary, count } => {
                service.offer_subchannels(primary, count)
            }
            DeviceRequest::Failed {
                relid,
                device,
                what,
            } => service.device_failed(DeviceFailure {
                relid,
                device,
                what,
            }),
            DeviceRequest::Exit => return,
        }
    }
}
