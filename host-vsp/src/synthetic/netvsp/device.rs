//! netvsp as a VMBus device: [`NetvspDevice`] offers a synthetic NIC on the VMBus service and, when
//! the guest opens the channel, runs a [`NetvspWorker`] on the channel's thread — sleeping in one
//! poll(2) on the channel's event fd, the backend's receive fd (only while frames can be taken) and
//! the host's control event, checking for stop every turn, interrupting the guest only when the
//! ring rules ask for it.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netvsp_protocol::NIC_CLASS_GUID;
use vmbus::protocol::Guid;
use vmbus::server::OfferConfig;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::buffers::GuestBuffer;
use super::worker::{NetvspStats, NetvspWorker};
use super::NetvspConfig;
use crate::net::NetBackend;
use crate::vmbus_service::{HostChannel, HostChannelStats, VmbusDevice, Wake};

/// Longest sleep between checks of the backend's link state.
const LINK_POLL: Duration = Duration::from_millis(50);

/// What a NIC's channel has done so far (updated as it runs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetvspDeviceStats {
    /// The worker's counters (frames and bytes both ways, drops by reason, protocol errors).
    pub netvsp: NetvspStats,
    /// The channel's notifications (guest signals, interrupts).
    pub channel: HostChannelStats,
    /// The channel is being served.
    pub serving: bool,
    /// Channel opens served.
    pub opens: u64,
}

/// A live view of a NIC's counters.
#[derive(Debug, Clone, Default)]
pub struct NetvspStatsHandle(Arc<Mutex<NetvspDeviceStats>>);

impl NetvspStatsHandle {
    /// The counters now.
    pub fn get(&self) -> NetvspDeviceStats {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut NetvspDeviceStats)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// A synthetic NIC on VMBus.
pub struct NetvspDevice {
    instance: Guid,
    config: NetvspConfig,
    backend: Mutex<Option<Box<dyn NetBackend>>>,
    host_link: AtomicBool,
    control: EventFd,
    stats: NetvspStatsHandle,
}

impl std::fmt::Debug for NetvspDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetvspDevice")
            .field("instance", &self.instance)
            .field("mac", &self.config.mac)
            .finish_non_exhaustive()
    }
}

impl NetvspDevice {
    /// A NIC `instance` with `config` (its MAC among it) over `backend`.
    pub fn new(
        instance: Guid,
        backend: Box<dyn NetBackend>,
        config: NetvspConfig,
    ) -> std::io::Result<Self> {
        Ok(Self {
            instance,
            config: config.normalized(),
            backend: Mutex::new(Some(backend)),
            host_link: AtomicBool::new(true),
            control: EventFd::new(EFD_NONBLOCK)?,
            stats: NetvspStatsHandle::default(),
        })
    }

    /// Live counters.
    pub fn stats(&self) -> NetvspStatsHandle {
        self.stats.clone()
    }

    /// The host's say on the link: down makes the guest see MEDIA_DISCONNECT (whatever the
    /// backend says), up again MEDIA_CONNECT if the backend's link is up.
    pub fn set_link_up(&self, up: bool) {
        self.host_link.store(up, Ordering::Release);
        let _ = self.control.write(1);
    }
}

impl VmbusDevice for NetvspDevice {
    fn name(&self) -> &str {
        "netvsp"
    }

    fn offer(&self) -> OfferConfig {
        OfferConfig::new(NIC_CLASS_GUID, self.instance)
    }

    fn serve(&self, channel: HostChannel) {
        let HostChannel {
            inbound,
            outbound,
            mut signals,
            context,
            ..
        } = channel;
        let Some(backend) = self
            .backend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            tracing::error!("netvsp: the backend is in use by another channel");
            signals.idle_until_stopped();
            return;
        };
        let memory = context.memory().clone();
        let gpadls =
            Box::new(move |handle| context.gpadl(handle).map(|g| g as Arc<dyn GuestBuffer>));
        let mut worker = NetvspWorker::new(
            inbound,
            outbound,
            memory,
            gpadls,
            backend,
            self.config.clone(),
        );
        self.stats.update(|s| {
            s.serving = true;
            s.opens += 1;
        });
        loop {
            let r = worker.poll(self.host_link.load(Ordering::Acquire));
            if r.signal_guest {
                signals.notify_guest();
            }
            let (netvsp, channel) = (worker.stats(), signals.stats);
            self.stats.update(|s| {
                s.netvsp = netvsp;
                s.channel = channel;
            });
            if r.failed {
                tracing::warn!("netvsp channel failed: the guest broke the ring protocol");
                signals.idle_until_stopped();
                break;
            }
            if signals.is_stopped() {
                break;
            }
            if r.more {
                continue;
            }
            let rx = worker.backend().rx_fd();
            let control: &dyn AsRawFd = &self.control;
            let fds: Vec<&dyn AsRawFd> = if r.rx_ready {
                vec![control, &rx]
            } else {
                vec![control]
            };
            let (wake, _) = signals.wait_with(&fds, LINK_POLL);
            let _ = self.control.read();
            if wake == Wake::Stopped {
                break;
            }
        }
        *self.backend.lock().unwrap_or_else(|e| e.into_inner()) = Some(worker.into_backend());
        self.stats.update(|s| s.serving = false);
    }
}
