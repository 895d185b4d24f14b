//! storvsp as a VMBus device: [`StorvspDevice`] offers a synthetic SCSI controller on the VMBus
//! service and, when the guest opens the channel, runs a [`StorvspWorker`] on the channel's rings on the
//! channel's own thread — sleeping on the channel's event fd, interrupting the guest (on the channel's
//! target VP) only when the ring rules ask for it. A multi-channel controller
//! ([`StorvspConfig::max_sub_channels`]) offers the sub-channels the guest asks for with
//! CREATE_SUB_CHANNELS; each is served by a worker of its own, on its own thread, ready with the protocol
//! version the primary channel agreed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use storvsp_protocol::ProtocolVersion;

use vmbus::protocol::{interface, Guid};
use vmbus::server::OfferConfig;

use crate::synthetic::storvsp::worker::{StorvspStats, StorvspWorker, POLL_MODE_IDLE_BUDGET};
use crate::synthetic::storvsp::{LunMap, StorvspConfig};
use crate::vmbus_service::{ChannelSignals, HostChannel, HostChannelStats, VmbusDevice, Wake};

/// Live counters of every channel of a controller, by sub-channel index (0 = the primary).
pub type ChannelStatsMap = Arc<Mutex<BTreeMap<u16, StorvspDeviceStats>>>;

/// What a storvsp channel has done so far (updated as it runs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StorvspDeviceStats {
    /// The worker's counters.
    pub worker: StorvspStats,
    /// The channel's notifications.
    pub channel: HostChannelStats,
    /// The channel is being served.
    pub serving: bool,
    /// Poll-mode passes that found nothing to do (the price of polling).
    pub poll_spins: u64,
    /// Turns of the device thread's serve loop (each polls the worker once): how often it woke.
    pub turns: u64,
}

/// A synthetic SCSI controller on VMBus.
pub struct StorvspDevice {
    instance: Guid,
    luns: LunMap,
    config: StorvspConfig,
    stats: Arc<Mutex<StorvspDeviceStats>>,
    channels: ChannelStatsMap,
    /// The version the primary channel's handshake agreed (sub-channels start with it).
    negotiated: Mutex<Option<ProtocolVersion>>,
}

impl std::fmt::Debug for StorvspDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorvspDevice")
            .field("instance", &self.instance)
            .field("luns", &self.luns.len())
            .finish_non_exhaustive()
    }
}

impl StorvspDevice {
    /// A controller `instance` serving `luns`.
    pub fn new(instance: Guid, luns: LunMap, config: StorvspConfig) -> Self {
        Self {
            instance,
            luns,
            config,
            stats: Arc::default(),
            channels: Arc::default(),
            negotiated: Mutex::new(None),
        }
    }

    /// Live counters of the controller's primary channel.
    pub fn stats(&self) -> Arc<Mutex<StorvspDeviceStats>> {
        self.stats.clone()
    }

    /// Live counters of each channel the guest opened, by sub-channel index (0 = the primary).
    pub fn channel_stats(&self) -> ChannelStatsMap {
        self.channels.clone()
    }

    fn publish(&self, index: u16, f: impl Fn(&mut StorvspDeviceStats)) {
        if index == 0 {
            f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
        }
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        f(channels.entry(index).or_default());
    }
}

impl VmbusDevice for StorvspDevice {
    fn name(&self) -> &str {
        "storvsp"
    }

    fn offer(&self) -> OfferConfig {
        OfferConfig::new(interface::SCSI, self.instance)
    }

    fn serve(&self, channel: HostChannel) {
        let HostChannel {
            inbound,
            outbound,
            mut signals,
            context,
            ..
        } = channel;
        let memory = context.memory().clone();
        let index = context.subchannel_index();
        let started = if index == 0 {
            StorvspWorker::new(
                inbound,
                outbound,
                memory,
                self.luns.clone(),
                self.config.clone(),
            )
        } else {
            let version = *self.negotiated.lock().unwrap_or_else(|e| e.into_inner());
            StorvspWorker::for_sub_channel(
                inbound,
                outbound,
                memory,
                self.luns.clone(),
                self.config.clone(),
                version,
            )
        };
        let mut worker = match started {
            Ok(worker) => worker,
            Err(error) => {
                tracing::error!(%error, "storvsp worker could not start");
                signals.idle_until_stopped();
                return;
            }
        };
        self.publish(index, |s| s.serving = true);
        let mut idle_since = Instant::now();
        let mut spins = 0u64;
        let mut turns = 0u64;
        loop {
            turns += 1;
            let result = worker.poll();
            if result.signal_guest {
                signals.notify_guest();
            }
            if index == 0 {
                *self.negotiated.lock().unwrap_or_else(|e| e.into_inner()) =
                    worker.handshake().ready_version();
                if let Some(count) = worker.take_sub_channel_request() {
                    // The guest already has its answer in the ring; the offers follow on VMBus.
                    if let Err(error) = context.offer_subchannels(count) {
                        tracing::warn!(%error, count, "storvsp: sub-channels not offered");
                    }
                }
            }
            let progressed = result.received > 0 || result.completed > 0;
            let polling = worker.poll_mode();
            let publish = |worker: &StorvspWorker<_>, signals: &ChannelSignals, spins| {
                let (worker_stats, channel_stats) = (worker.stats(), signals.stats);
                self.publish(index, |s| {
                    s.worker = worker_stats;
                    s.channel = channel_stats;
                    s.poll_spins = spins;
                    s.turns = turns;
                });
            };
            if progressed || !polling {
                publish(&worker, &signals, spins);
            }
            if result.failed {
                crate::guest_warn!("storvsp channel failed: the guest broke the ring protocol");
                signals.idle_until_stopped();
                break;
            }
            if signals.is_stopped() {
                break;
            }
            if progressed {
                idle_since = Instant::now();
                continue;
            }
            if result.more {
                // Packets wait but nothing moved: the guest's completion ring is full (or the queue
                // depth is used up by completions it has not read). The guest signals once it makes
                // room (pending_send_sz); until then sleep — a guest that never reads its completions
                // stops only its own I/O and costs the host no CPU.
                if signals.wait(Duration::from_millis(100)) == Wake::Stopped {
                    break;
                }
                continue;
            }
            if polling {
                // Poll mode: keep looking at the ring, the guest's signals suppressed, while I/O is
                // outstanding and for a bounded idle spin; then re-arm, re-check and sleep.
                if worker.in_flight() > 0 || idle_since.elapsed() < POLL_MODE_IDLE_BUDGET {
                    spins += 1;
                    std::hint::spin_loop();
                    continue;
                }
                if worker.rearm() {
                    continue;
                }
                publish(&worker, &signals, spins);
            } else if worker.in_flight() > 0 {
                // Pooled requests still running: collect them as they finish (the guest may also
                // signal meanwhile; the next poll reads its ring regardless).
                worker.wait_for_completion(Duration::from_millis(1));
                continue;
            }
            if signals.wait(Duration::from_millis(100)) == Wake::Stopped {
                break;
            }
            idle_since = Instant::now();
        }
        self.publish(index, |s| s.serving = false);
    }
}
