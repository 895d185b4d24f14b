//! The time-sync IC on the host: [`TimeSyncHost`], the protocol logic (negotiation, samples built
//! from the host's UTC and the guest's reference time, every answer of the untrusted guest checked),
//! and [`TimeSyncVsp`], the device that sends a SYNC once the versions are agreed and a SAMPLE every
//! interval after it, one at a time (the next only once the previous was answered), publishing its
//! counters in [`TimeSyncState`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ic_protocol::negotiate::{self, Negotiated};
use ic_protocol::timesync::{self, TimeSample, TIMESYNC_VERSIONS, UNIX_EPOCH_1601};
use ic_protocol::{
    flags, parse, request_header, status, IcError, IcMessageType, FRAMEWORK_VERSIONS, HEADER_SIZE,
};
use vmbus::protocol::{interface, Guid};
use vmbus::server::OfferConfig;
use zerocopy::IntoBytes;

use crate::synthetic::ic::host::IcHostError;
use crate::synthetic::ic::link::{self, Published};
use crate::vmbus_service::{HostChannel, HostChannelStats, VmbusDevice, Wake};

/// Largest message this module builds (a negotiate request).
const MAX_REQUEST: usize = 256;
/// Most samples outstanding at once (the VSP keeps one; the bound holds whatever the caller does).
pub const MAX_OUTSTANDING: usize = 16;

/// The guest's reference counter as the host reads it (100 ns units; `None` while unknown).
pub type ReferenceClock = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// The host's UTC now, 100 ns units since 1601.
pub fn utc_now_1601() -> u64 {
    let since_1970 = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    UNIX_EPOCH_1601 + u64::try_from(since_1970.as_nanos() / 100).unwrap_or(0)
}

/// What an answer meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSyncEvent {
    Negotiated(Negotiated),
    /// The guest answered the sample it was sent.
    Answered(TimeSample),
}

/// The host end of one time-sync channel.
#[derive(Debug, Default)]
pub struct TimeSyncHost {
    negotiated: Option<Negotiated>,
    negotiating: bool,
    outstanding: VecDeque<TimeSample>,
}

impl TimeSyncHost {
    /// A new endpoint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Versions agreed with the guest.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// Samples sent and not answered.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// The negotiate request, the first message on the channel.
    pub fn negotiate_request(&mut self, out: &mut [u8]) -> Result<usize, IcHostError> {
        self.negotiating = true;
        Ok(negotiate::request(
            FRAMEWORK_VERSIONS,
            TIMESYNC_VERSIONS,
            out,
        )?)
    }

    /// A sample request: the host's UTC `parent_time` taken at guest reference time `reference_time`,
    /// with `flags` ([`timesync::flags`]).
    pub fn sample_request(
        &mut self,
        sample: TimeSample,
        out: &mut [u8],
    ) -> Result<usize, IcHostError> {
        let v = self
            .negotiated
            .ok_or(IcHostError::NotReady("versions not negotiated"))?;
        if self.outstanding.len() >= MAX_OUTSTANDING {
            return Err(IcHostError::NotReady("too many samples outstanding"));
        }
        let body_len = timesync::body_len(v.message);
        let len = HEADER_SIZE + body_len;
        let out = out.get_mut(..len).ok_or(IcError::BufferTooSmall)?;
        let header = request_header(
            IcMessageType::TIMESYNC,
            v.framework,
            v.message,
            body_len as u16,
            0,
        );
        out[..HEADER_SIZE].copy_from_slice(header.as_bytes());
        timesync::write_sample(v.message, &sample, &mut out[HEADER_SIZE..])?;
        // What the guest will echo (pre-4.0 messages carry no reference time).
        let sent = timesync::read_sample(v.message, &out[HEADER_SIZE..])?;
        self.outstanding.push_back(sent);
        Ok(len)
    }

    /// Check one answer from the guest.
    pub fn handle_response(&mut self, response: &[u8]) -> Result<TimeSyncEvent, IcHostError> {
        let (header, body) = parse(response)?;
        if header.flags & flags::RESPONSE == 0 {
            return Err(IcHostError::NotAResponse(header.flags));
        }
        match IcMessageType(header.message_type.get()) {
            IcMessageType::NEGOTIATE if self.negotiating => {
                let n = negotiate::read_response(response)?;
                if !FRAMEWORK_VERSIONS.contains(&n.framework)
                    || !TIMESYNC_VERSIONS.contains(&n.message)
                {
                    return Err(IcError::NoCommonVersion.into());
                }
                self.negotiating = false;
                self.negotiated = Some(n);
                Ok(TimeSyncEvent::Negotiated(n))
            }
            IcMessageType::TIMESYNC if self.negotiated.is_some() => {
                let v = self
                    .negotiated
                    .map(|n| n.message)
                    .unwrap_or(TIMESYNC_VERSIONS[0]);
                if header.status.get() != status::OK {
                    self.outstanding.pop_front();
                    return Err(IcHostError::GuestFailed(header.status.get()));
                }
                let echoed = timesync::read_sample(v, body)?;
                let Some(expected) = self.outstanding.front().copied() else {
                    return Err(IcHostError::UnexpectedType(
                        header.message_type.get(),
                        "no outstanding sample",
                    ));
                };
                // Right or wrong, this answers the oldest sample: the next may be sent.
                self.outstanding.pop_front();
                if echoed != expected {
                    return Err(IcHostError::NotReady(
                        "the answer does not echo the outstanding sample",
                    ));
                }
                Ok(TimeSyncEvent::Answered(echoed))
            }
            other => Err(IcHostError::UnexpectedType(
                other.0,
                if self.negotiating {
                    "negotiate"
                } else {
                    "a time-sync answer"
                },
            )),
        }
    }
}

/// What a time-sync channel has done so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TimeSyncState {
    /// The guest answered the version negotiation.
    pub negotiated: bool,
    /// The message version agreed (`major.minor`).
    pub version: Option<(u16, u16)>,
    /// SYNC messages sent.
    pub syncs: u64,
    /// SAMPLE messages sent.
    pub samples: u64,
    /// Messages the guest answered correctly.
    pub answered: u64,
    /// The offset of the last answered sample: its UTC minus the reference time it was taken at
    /// (100 ns units) — the guest's clock is its reference counter plus this.
    pub last_offset: Option<i64>,
    /// When the last answer came.
    pub last_answered: Option<Instant>,
    /// Protocol errors (each dropped; the channel goes on).
    pub errors: u64,
    pub last_error: Option<String>,
    /// The channel's counters.
    pub channel: HostChannelStats,
    /// The channel is open and being served.
    pub serving: bool,
}

/// The time-sync IC device.
pub struct TimeSyncVsp {
    instance: Guid,
    interval: Duration,
    clock: ReferenceClock,
    state: Arc<Published<TimeSyncState>>,
}

impl std::fmt::Debug for TimeSyncVsp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeSyncVsp")
            .field("instance", &self.instance)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl TimeSyncVsp {
    /// The time-sync IC: a SYNC once negotiated, then a SAMPLE every `interval`; the guest's
    /// reference time read from `clock`.
    pub fn new(instance: Guid, interval: Duration, clock: ReferenceClock) -> Self {
        Self {
            instance,
            interval,
            clock,
            state: Arc::new(Published::default()),
        }
    }

    /// Its progress.
    pub fn state(&self) -> Arc<Published<TimeSyncState>> {
        self.state.clone()
    }

    fn fail(&self, what: impl std::fmt::Display) {
        tracing::debug!(%what, "time-sync IC error");
        self.state.update(|s| {
            s.errors += 1;
            s.last_error = Some(what.to_string());
        });
    }

    /// The guest's reference time and the host's UTC, read back to back.
    fn sample(&self, flags: u8) -> Option<TimeSample> {
        let reference_time = (self.clock)()?;
        Some(TimeSample {
            parent_time: utc_now_1601(),
            reference_time: Some(reference_time),
            flags,
        })
    }

    fn idle(&self, channel: &mut HostChannel) {
        channel.signals.idle_until_stopped();
        self.state.update(|s| s.serving = false);
    }
}

impl VmbusDevice for TimeSyncVsp {
    fn name(&self) -> &str {
        "timesync"
    }

    fn offer(&self) -> OfferConfig {
        OfferConfig::new(interface::TIME_SYNC, self.instance)
    }

    fn serve(&self, mut channel: HostChannel) {
        let mut host = TimeSyncHost::new();
        let mut request = [0u8; MAX_REQUEST];
        let mut packet = vec![0u8; 4096];
        let mut trans_id = 0u64;
        let mut last_sent: Option<Instant> = None;
        self.state.update(|s| s.serving = true);
        let Ok(n) = host.negotiate_request(&mut request) else {
            return self.idle(&mut channel);
        };
        trans_id += 1;
        if let Err(e) = link::send(&mut channel, trans_id, &request[..n]) {
            self.fail(format_args!("outbound ring: {e}"));
            return self.idle(&mut channel);
        }
        loop {
            let mut events = Vec::new();
            let more = match link::drain(&mut channel, &mut packet, |payload| {
                events.push(host.handle_response(payload));
            }) {
                Ok(more) => more,
                Err(e) => {
                    self.fail(format_args!("inbound ring: {e}"));
                    if e.is_fatal() {
                        return self.idle(&mut channel);
                    }
                    false
                }
            };
            let stats = channel.stats();
            let mut errors = Vec::new();
            self.state.update(|s| {
                s.channel = stats;
                for event in events {
                    match event {
                        Ok(TimeSyncEvent::Negotiated(n)) => {
                            s.negotiated = true;
                            s.version = Some((n.message.major.get(), n.message.minor.get()));
                        }
                        Ok(TimeSyncEvent::Answered(sample)) => {
                            s.answered += 1;
                            s.last_answered = Some(Instant::now());
                            s.last_offset = sample
                                .reference_time
                                .map(|r| (i128::from(sample.parent_time) - i128::from(r)) as i64);
                        }
                        Err(e) => errors.push(e),
                    }
                }
            });
            for e in errors {
                self.fail(e);
            }
            if host.negotiated().is_some() && host.outstanding() == 0 {
                let due = match last_sent {
                    None => Some(timesync::flags::SYNC),
                    Some(t) if t.elapsed() >= self.interval => Some(timesync::flags::SAMPLE),
                    Some(_) => None,
                };
                if let Some(flags) = due {
                    match self.sample(flags) {
                        None => self.fail("the guest's reference clock is not available"),
                        Some(sample) => match host.sample_request(sample, &mut request) {
                            Ok(n) => {
                                trans_id += 1;
                                match link::send(&mut channel, trans_id, &request[..n]) {
                                    Ok(()) => self.state.update(|s| {
                                        if flags == timesync::flags::SYNC {
                                            s.syncs += 1;
                                        } else {
                                            s.samples += 1;
                                        }
                                    }),
                                    Err(e) => {
                                        self.fail(format_args!("outbound ring: {e}"));
                                        if e.is_fatal() {
                                            return self.idle(&mut channel);
                                        }
                                    }
                                }
                            }
                            Err(e) => self.fail(e),
                        },
                    }
                    last_sent = Some(Instant::now());
                }
            }
            if channel.is_stopped() {
                break;
            }
            if more {
                continue;
            }
            if channel.wait(Duration::from_millis(20)) == Wake::Stopped {
                break;
            }
        }
        let stats = channel.stats();
        self.state.update(|s| {
            s.channel = stats;
            s.serving = false;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_protocol::timesync::flags as ts_flags;
    use ic_protocol::IcVersion;

    /// A correct guest: negotiates the newest version and echoes samples as responses.
    fn guest_answer(request: &[u8]) -> Vec<u8> {
        let (header, _) = parse(request).unwrap();
        if header.message_type.get() == IcMessageType::NEGOTIATE.0 {
            let mut out = vec![0u8; 256];
            let (n, _) =
                negotiate::answer(request, FRAMEWORK_VERSIONS, TIMESYNC_VERSIONS, &mut out)
                    .unwrap();
            out.truncate(n);
            return out;
        }
        let mut reply = request.to_vec();
        reply[25] = flags::TRANSACTION | flags::RESPONSE;
        reply
    }

    fn negotiated() -> TimeSyncHost {
        let mut host = TimeSyncHost::new();
        let mut buf = [0u8; 256];
        let n = host.negotiate_request(&mut buf).unwrap();
        let ev = host.handle_response(&guest_answer(&buf[..n])).unwrap();
        assert!(matches!(ev, TimeSyncEvent::Negotiated(n) if n.message == IcVersion::new(4, 0)));
        host
    }

    #[test]
    fn samples_carry_utc_and_reference_time_and_are_answered_in_order() {
        let mut host = negotiated();
        let mut buf = [0u8; 256];
        let sync = TimeSample {
            parent_time: utc_now_1601(),
            reference_time: Some(1234),
            flags: ts_flags::SYNC,
        };
        let n = host.sample_request(sync, &mut buf).unwrap();
        assert_eq!(n, HEADER_SIZE + 22);
        let (h, body) = parse(&buf[..n]).unwrap();
        assert_eq!(h.message_type.get(), IcMessageType::TIMESYNC.0);
        assert_eq!(
            timesync::read_sample(IcVersion::new(4, 0), body).unwrap(),
            sync
        );
        assert!(sync.parent_time > UNIX_EPOCH_1601 + 50 * 365 * 86_400 * 10_000_000);
        assert_eq!(
            host.handle_response(&guest_answer(&buf[..n])),
            Ok(TimeSyncEvent::Answered(sync))
        );
        assert_eq!(host.outstanding(), 0);
    }

    #[test]
    fn a_lying_guest_gets_errors_not_answers() {
        let mut host = negotiated();
        let mut buf = [0u8; 256];
        let sample = TimeSample {
            parent_time: 5,
            reference_time: Some(6),
            flags: ts_flags::SAMPLE,
        };
        let n = host.sample_request(sample, &mut buf).unwrap();
        let mut forged = guest_answer(&buf[..n]);
        forged[HEADER_SIZE] ^= 1;
        assert!(
            host.handle_response(&buf[..n]).is_err(),
            "a request is not an answer"
        );
        assert!(host.handle_response(&forged).is_err());
        assert_eq!(host.outstanding(), 0, "a wrong answer still answers");
        let n = host.sample_request(sample, &mut buf).unwrap();
        assert!(host.handle_response(&guest_answer(&buf[..n])).is_ok());
        assert!(
            host.handle_response(&guest_answer(&buf[..n])).is_err(),
            "nothing outstanding"
        );
        let truncated = &guest_answer(&buf[..n])[..HEADER_SIZE + 10];
        assert!(host.handle_response(truncated).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_answers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..120)) {
            let mut host = negotiated();
            let mut buf = [0u8; 256];
            host.sample_request(TimeSample { parent_time: 1, reference_time: Some(2), flags: 1 }, &mut buf).unwrap();
            let _ = host.handle_response(&bytes);
            let mut fresh = TimeSyncHost::new();
            fresh.negotiate_request(&mut buf).unwrap();
            let _ = fresh.handle_response(&bytes);
        }
    }
}
