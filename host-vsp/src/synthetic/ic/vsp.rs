//! The heartbeat and shutdown VSPs: [`IcVsp`] serves one integration-component channel with
//! [`crate::synthetic::ic::host::IcHost`]'s protocol logic. After version negotiation the heartbeat VSP runs the
//! heartbeat plan it is given (bursts of K requests, each burst written as one batch with at most one
//! interrupt, the next burst only once every answer is in); the shutdown VSP sends a shutdown request
//! when [`IcControl::request_shutdown`] is called. Progress and counters are published through
//! [`IcControl`] for the host (and tests) to wait on.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmbus::packet::PacketFlags;
use vmbus::protocol::{interface, Guid};
use vmbus::server::OfferConfig;

use crate::synthetic::ic::host::{IcHost, IcHostEvent, IcService, MAX_REQUEST};
use crate::vmbus_service::{HostChannel, HostChannelStats, VmbusDevice, Wake};

/// Batches of at most 256 answers one turn of the serve loop drains before it looks at stop again.
const DRAINS_PER_TURN: usize = 4;

/// What an IC channel has done so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IcState {
    /// The guest answered the version negotiation.
    pub negotiated: bool,
    /// Heartbeats to send in total and per burst (heartbeat VSP).
    pub plan: Option<(u64, u64)>,
    /// Send one heartbeat per interval for as long as the channel is open (heartbeat VSP of a
    /// long-running guest), each once the previous one was answered.
    pub heartbeat_every: Option<Duration>,
    /// When the guest last answered a heartbeat correctly.
    pub last_answered: Option<Instant>,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Heartbeats the guest answered correctly.
    pub heartbeats_answered: u64,
    /// Bursts sent.
    pub bursts: u64,
    /// Whether a shutdown was requested (shutdown VSP) and whether the guest acknowledged it.
    pub shutdown_requested: bool,
    pub shutdown_acknowledged: bool,
    /// Protocol errors from the guest (each dropped; the channel keeps going).
    pub errors: u64,
    /// Last error text.
    pub last_error: Option<String>,
    /// The channel's counters, updated as the VSP runs.
    pub channel: HostChannelStats,
    /// The channel counters when negotiation finished (start of the measured heartbeat phase).
    pub channel_at_negotiated: HostChannelStats,
    /// The channel is open and being served.
    pub serving: bool,
}

/// Shared view of an IC VSP's progress, and its commands.
#[derive(Debug, Default)]
pub struct IcControl {
    state: Mutex<IcState>,
    changed: Condvar,
}

impl IcControl {
    fn lock(&self) -> MutexGuard<'_, IcState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut IcState)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> IcState {
        self.lock().clone()
    }

    /// Wait until `done` holds (returns the state) or `timeout` passes (returns `None`).
    pub fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&IcState) -> bool,
    ) -> Option<IcState> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if done(&state) {
                return Some(state.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Ask the guest to shut down (shutdown VSP).
    pub fn request_shutdown(&self) {
        self.update(|s| s.shutdown_requested = true);
    }
}

/// One integration-component VSP.
#[derive(Debug)]
pub struct IcVsp {
    service: IcService,
    instance: Guid,
    control: Arc<IcControl>,
}

impl IcVsp {
    /// The heartbeat IC, sending `total` heartbeats in bursts of `burst` once negotiated.
    pub fn heartbeat(instance: Guid, total: u64, burst: u64) -> Self {
        let control = Arc::new(IcControl::default());
        control.update(|s| s.plan = Some((total, burst.max(1))));
        Self {
            service: IcService::Heartbeat,
            instance,
            control,
        }
    }

    /// The heartbeat IC of a long-running guest: one heartbeat every `interval` once negotiated
    /// (the next only once the previous was answered), for as long as the channel is open.
    pub fn heartbeat_every(instance: Guid, interval: Duration) -> Self {
        let control = Arc::new(IcControl::default());
        control.update(|s| s.heartbeat_every = Some(interval));
        Self {
            service: IcService::Heartbeat,
            instance,
            control,
        }
    }

    /// The shutdown IC.
    pub fn shutdown(instance: Guid) -> Self {
        Self {
            service: IcService::Shutdown,
            instance,
            control: Arc::new(IcControl::default()),
        }
    }

    /// Progress and commands.
    pub fn control(&self) -> Arc<IcControl> {
        self.control.clone()
    }

    fn fail(&self, what: impl std::fmt::Display) {
        tracing::debug!(service = ?self.service, %what, "IC error");
        self.control.update(|s| {
            s.errors += 1;
            s.last_error = Some(what.to_string());
        });
    }
}

/// Next transaction id for a host request.
struct TransIds(u64);

impl TransIds {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

impl VmbusDevice for IcVsp {
    fn name(&self) -> &str {
        match self.service {
            IcService::Heartbeat => "heartbeat",
            IcService::Shutdown => "shutdown",
        }
    }

    fn offer(&self) -> OfferConfig {
        let if_type = match self.service {
            IcService::Heartbeat => interface::HEARTBEAT,
            IcService::Shutdown => interface::SHUTDOWN,
        };
        OfferConfig::new(if_type, self.instance)
    }

    fn serve(&self, mut channel: HostChannel) {
        let mut host = IcHost::new(self.service);
        let mut request = vec![0u8; MAX_REQUEST];
        let mut packet = vec![0u8; MAX_REQUEST + 64];
        let mut ids = TransIds(0);
        let mut shutdown_sent = false;
        let mut last_periodic: Option<Instant> = None;
        self.control.update(|s| s.serving = true);
        // A channel that cannot even take the first request is broken like any other: idle until
        // closed, so `serving` goes false when the channel does.
        let Ok(n) = host.negotiate_request(&mut request) else {
            return self.idle(&mut channel);
        };
        if !self.send_batch(&mut channel, &mut ids, &[&request[..n]]) {
            return self.idle(&mut channel);
        }
        loop {
            // Take the answers (interrupts masked while draining; re-checked on unmask), a bounded
            // number of batches per turn: a guest that keeps the ring full must not keep the thread
            // from looking at stop.
            let mut more = false;
            for _ in 0..DRAINS_PER_TURN {
                let mut events = Vec::new();
                let drained = channel.inbound.drain(&mut packet, 256, |info, bytes| {
                    let payload = bytes.get(info.data_offset()..).unwrap_or(&[]);
                    events.push(host.handle_response(payload));
                });
                let drained = match drained {
                    Ok(d) => d,
                    Err(e) => {
                        self.fail(format_args!("inbound ring: {e}"));
                        if e.is_fatal() {
                            return self.idle(&mut channel);
                        }
                        break;
                    }
                };
                // One update per batch, with the channel counters that belong to it, so observers
                // never see answers without the signals that delivered them.
                let stats = channel.stats();
                let mut errors = Vec::new();
                self.control.update(|s| {
                    s.channel = stats;
                    for event in events {
                        match event {
                            Ok(IcHostEvent::Negotiated(_)) => {
                                s.negotiated = true;
                                s.channel_at_negotiated = stats;
                            }
                            Ok(IcHostEvent::HeartbeatAnswered(_)) => {
                                s.heartbeats_answered += 1;
                                s.last_answered = Some(Instant::now());
                            }
                            Ok(IcHostEvent::ShutdownAcknowledged) => s.shutdown_acknowledged = true,
                            Err(e) => errors.push(e),
                        }
                    }
                });
                for e in errors {
                    self.fail(e);
                }
                if drained.signal {
                    channel.notify_guest();
                }
                more = drained.more;
                if !more || channel.is_stopped() {
                    break;
                }
            }
            let state = self.control.snapshot();
            if state.negotiated && host.outstanding() == 0 {
                if let Some((total, burst)) = state.plan {
                    let count = burst.min(total.saturating_sub(state.heartbeats_sent));
                    if count > 0 {
                        let mut requests = Vec::new();
                        for _ in 0..count {
                            match host.heartbeat_request(&mut request) {
                                Ok((n, _)) => requests.push(request[..n].to_vec()),
                                Err(e) => self.fail(e),
                            }
                        }
                        let parts: Vec<&[u8]> = requests.iter().map(Vec::as_slice).collect();
                        if !self.send_batch(&mut channel, &mut ids, &parts) {
                            return self.idle(&mut channel);
                        }
                        self.control.update(|s| {
                            s.heartbeats_sent += requests.len() as u64;
                            s.bursts += 1;
                        });
                    }
                }
                if let Some(every) = state.heartbeat_every {
                    if last_periodic.is_none_or(|t| t.elapsed() >= every) {
                        match host.heartbeat_request(&mut request) {
                            Ok((n, _)) => {
                                last_periodic = Some(Instant::now());
                                if !self.send_batch(&mut channel, &mut ids, &[&request[..n]]) {
                                    return self.idle(&mut channel);
                                }
                                self.control.update(|s| {
                                    s.heartbeats_sent += 1;
                                    s.bursts += 1;
                                });
                            }
                            Err(e) => self.fail(e),
                        }
                    }
                }
                if state.shutdown_requested && !shutdown_sent && self.service == IcService::Shutdown
                {
                    match host.shutdown_request(true, false, &mut request) {
                        Ok(n) => {
                            shutdown_sent = true;
                            if !self.send_batch(&mut channel, &mut ids, &[&request[..n]]) {
                                return self.idle(&mut channel);
                            }
                        }
                        Err(e) => self.fail(e),
                    }
                }
            }
            let stats = channel.stats();
            self.control.update(|s| s.channel = stats);
            if channel.is_stopped() {
                self.control.update(|s| s.serving = false);
                return;
            }
            if more {
                // Answers still wait in the ring (the guest will not signal for them).
                continue;
            }
            if channel.wait(Duration::from_millis(20)) == Wake::Stopped {
                self.control.update(|s| s.serving = false);
                return;
            }
        }
    }
}

impl IcVsp {
    /// Write each message as one in-band request packet, then interrupt the guest at most once.
    /// Returns false if the ring is unusable.
    fn send_batch(
        &self,
        channel: &mut HostChannel,
        ids: &mut TransIds,
        messages: &[&[u8]],
    ) -> bool {
        let mut signal = false;
        for message in messages {
            match channel.outbound.write_inband(
                ids.next(),
                PacketFlags::COMPLETION_REQUESTED,
                &[message],
            ) {
                Ok(written) => signal |= written.signal,
                Err(e) => {
                    self.fail(format_args!("outbound ring: {e}"));
                    if e.is_fatal() {
                        return false;
                    }
                }
            }
        }
        if signal {
            channel.notify_guest();
        }
        true
    }

    /// A broken channel: stop serving it but wait for the service to close it.
    fn idle(&self, channel: &mut HostChannel) {
        channel.signals.idle_until_stopped();
        self.control.update(|s| s.serving = false);
    }
}
