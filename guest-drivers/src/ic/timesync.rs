//! Guest side of the time-sync IC: [`TimeSyncDriver`] keeps the guest's wall clock as an offset
//! from the partition reference counter (TIME_REF_COUNT, 100 ns units). A SYNC sets the clock to
//! the host's time — the sample's UTC plus the reference time that passed since the host took it —
//! and a SAMPLE adjusts it only when the clock is off by more than the driver's bound. Every message
//! is answered (echoed as a response). Protocol logic only: the caller reads the reference counter
//! and carries the bytes.

use ic_protocol::negotiate::{self, Negotiated};
use ic_protocol::timesync::{self, flags, TIMESYNC_VERSIONS, UNIX_EPOCH_1601};
use ic_protocol::{
    parse, response_header, status, IcError, IcMessageType, FRAMEWORK_VERSIONS, HEADER_SIZE,
};
use zerocopy::IntoBytes;

/// What a handled message did to the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSyncEvent {
    /// Versions were negotiated (`None`: no common version; the host was told so).
    Negotiated(Option<Negotiated>),
    /// A SYNC set the clock; `error` is how far the clock was from the host's time before
    /// (guest minus host, 100 ns units).
    Synced { error: i64 },
    /// A SAMPLE: the clock's error, and whether it was beyond the bound and so corrected.
    Sampled { error: i64, adjusted: bool },
    /// A probe or a sample with unknown flags: answered, clock untouched.
    Ignored,
}

/// The guest's clock and its time-sync channel.
#[derive(Debug, Clone)]
pub struct TimeSyncDriver {
    negotiated: Option<Negotiated>,
    /// UTC (100 ns units since 1601) minus the reference counter.
    offset: i128,
    bound: u64,
    /// SYNCs applied.
    pub syncs: u64,
    /// SAMPLEs seen.
    pub samples: u64,
    /// SAMPLEs that corrected the clock.
    pub adjustments: u64,
    /// Messages answered.
    pub requests: u64,
}

impl TimeSyncDriver {
    /// A clock that reads `start` (UTC, 100 ns since 1601) at reference time 0 — e.g.
    /// [`UNIX_EPOCH_1601`] for a guest that boots believing it is 1970 — and lets SAMPLEs correct it
    /// once it is off by more than `bound` (100 ns units).
    pub fn new(start: u64, bound: u64) -> Self {
        Self {
            negotiated: None,
            offset: i128::from(start),
            bound,
            syncs: 0,
            samples: 0,
            adjustments: 0,
            requests: 0,
        }
    }

    /// A clock starting at the Unix epoch, corrected by SAMPLEs beyond 10 ms.
    pub fn at_epoch() -> Self {
        Self::new(UNIX_EPOCH_1601, 100_000)
    }

    /// The versions agreed with the host.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// The clock at reference time `reference`: UTC, 100 ns units since 1601 (saturating).
    pub fn now(&self, reference: u64) -> u64 {
        (self.offset + i128::from(reference)).clamp(0, i128::from(u64::MAX)) as u64
    }

    /// The clock at `reference` as 100 ns units since the Unix epoch (negative before 1970).
    pub fn unix_time(&self, reference: u64) -> i64 {
        (i128::from(self.now(reference)) - i128::from(UNIX_EPOCH_1601)) as i64
    }

    /// Answer one host message into `reply`, `reference` being the reference counter read as it
    /// arrived. Returns the reply length and what happened. A malformed message gets no reply.
    pub fn handle(
        &mut self,
        request: &[u8],
        reply: &mut [u8],
        reference: u64,
    ) -> Result<(usize, TimeSyncEvent), IcError> {
        let (header, body) = parse(request)?;
        let event = match IcMessageType(header.message_type.get()) {
            IcMessageType::NEGOTIATE => {
                let (len, chosen) =
                    negotiate::answer(request, FRAMEWORK_VERSIONS, TIMESYNC_VERSIONS, reply)?;
                self.negotiated = chosen;
                self.requests += 1;
                return Ok((len, TimeSyncEvent::Negotiated(chosen)));
            }
            IcMessageType::TIMESYNC => {
                let version = self
                    .negotiated
                    .map(|n| n.message)
                    .ok_or(IcError::UnexpectedType(header.message_type.get()))?;
                let sample = timesync::read_sample(version, body)?;
                // The host's time now: its sample plus what passed since (never negative, whatever
                // the host claims).
                let host_now = i128::from(sample.parent_time)
                    + sample
                        .reference_time
                        .map_or(0, |r| i128::from(reference.saturating_sub(r)));
                let target = host_now - i128::from(reference);
                let error =
                    (self.offset - target).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
                match sample.flags {
                    flags::SYNC => {
                        self.offset = target;
                        self.syncs += 1;
                        TimeSyncEvent::Synced { error }
                    }
                    flags::SAMPLE => {
                        self.samples += 1;
                        let adjusted = error.unsigned_abs() > self.bound;
                        if adjusted {
                            self.offset = target;
                            self.adjustments += 1;
                        }
                        TimeSyncEvent::Sampled { error, adjusted }
                    }
                    _ => TimeSyncEvent::Ignored,
                }
            }
            other => return Err(IcError::UnexpectedType(other.0)),
        };
        let len = HEADER_SIZE + body.len();
        let out = reply.get_mut(..len).ok_or(IcError::BufferTooSmall)?;
        out[..HEADER_SIZE].copy_from_slice(response_header(&header, status::OK).as_bytes());
        out[HEADER_SIZE..].copy_from_slice(body);
        self.requests += 1;
        Ok((len, event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use ic_protocol::timesync::TimeSample;
    use ic_protocol::{request_header, IcVersion};

    fn message(version: IcVersion, sample: TimeSample) -> Vec<u8> {
        let len = timesync::body_len(version);
        let mut m = request_header(
            IcMessageType::TIMESYNC,
            FRAMEWORK_VERSIONS[0],
            version,
            len as u16,
            0,
        )
        .as_bytes()
        .to_vec();
        m.resize(HEADER_SIZE + len, 0);
        timesync::write_sample(version, &sample, &mut m[HEADER_SIZE..]).unwrap();
        m
    }

    fn negotiated(versions: &[IcVersion]) -> TimeSyncDriver {
        let mut drv = TimeSyncDriver::at_epoch();
        let mut req = [0u8; 128];
        let n = negotiate::request(FRAMEWORK_VERSIONS, versions, &mut req).unwrap();
        let mut reply = [0u8; 128];
        drv.handle(&req[..n], &mut reply, 0).unwrap();
        drv
    }

    const SECOND: u64 = 10_000_000;

    #[test]
    fn sync_sets_the_clock_from_the_epoch_to_the_hosts_time_plus_transit() {
        let mut drv = negotiated(TIMESYNC_VERSIONS);
        assert_eq!(
            drv.unix_time(5 * SECOND),
            5 * SECOND as i64,
            "boots at 1970"
        );
        let host_utc = UNIX_EPOCH_1601 + 1_700_000_000 * SECOND;
        // The host sampled at reference 5 s; the guest handles it at 5.25 s.
        let m = message(
            IcVersion::new(4, 0),
            TimeSample {
                parent_time: host_utc,
                reference_time: Some(5 * SECOND),
                flags: flags::SYNC,
            },
        );
        let mut reply = [0u8; 64];
        let (len, ev) = drv.handle(&m, &mut reply, 5 * SECOND + SECOND / 4).unwrap();
        assert!(matches!(ev, TimeSyncEvent::Synced { error } if error < 0));
        assert_eq!(drv.now(5 * SECOND + SECOND / 4), host_utc + SECOND / 4);
        assert_eq!(drv.now(10 * SECOND), host_utc + 5 * SECOND);
        let (h, body) = parse(&reply[..len]).unwrap();
        assert_eq!(
            h.flags,
            ic_protocol::flags::TRANSACTION | ic_protocol::flags::RESPONSE
        );
        assert_eq!(body, &m[HEADER_SIZE..], "echoed");
    }

    #[test]
    fn samples_adjust_only_beyond_the_bound() {
        let mut drv = negotiated(TIMESYNC_VERSIONS);
        let base = UNIX_EPOCH_1601 + 1_700_000_000 * SECOND;
        let mut reply = [0u8; 64];
        let at = |parent: u64, reference: u64, flags: u8| {
            message(
                IcVersion::new(4, 0),
                TimeSample {
                    parent_time: parent,
                    reference_time: Some(reference),
                    flags,
                },
            )
        };
        drv.handle(&at(base, 0, flags::SYNC), &mut reply, 0)
            .unwrap();
        // 5 ms off: within the 10 ms bound.
        let (_, ev) = drv
            .handle(
                &at(base + SECOND + 50_000, SECOND, flags::SAMPLE),
                &mut reply,
                SECOND,
            )
            .unwrap();
        assert_eq!(
            ev,
            TimeSyncEvent::Sampled {
                error: -50_000,
                adjusted: false
            }
        );
        assert_eq!(drv.now(SECOND), base + SECOND);
        // 2 s off: corrected.
        let (_, ev) = drv
            .handle(
                &at(base + 4 * SECOND, 2 * SECOND, flags::SAMPLE),
                &mut reply,
                2 * SECOND,
            )
            .unwrap();
        assert_eq!(
            ev,
            TimeSyncEvent::Sampled {
                error: -20_000_000,
                adjusted: true
            }
        );
        assert_eq!(drv.now(2 * SECOND), base + 4 * SECOND);
        assert_eq!(
            (drv.syncs, drv.samples, drv.adjustments, drv.requests),
            (1, 2, 1, 4)
        );
    }

    #[test]
    fn version_3_samples_use_the_arrival_time_and_bad_messages_get_no_answer() {
        let mut drv = negotiated(&[IcVersion::new(3, 0)]);
        let m = message(
            IcVersion::new(3, 0),
            TimeSample {
                parent_time: UNIX_EPOCH_1601 + SECOND,
                reference_time: None,
                flags: flags::SYNC,
            },
        );
        let mut reply = [0u8; 64];
        drv.handle(&m, &mut reply, 7).unwrap();
        assert_eq!(drv.now(7), UNIX_EPOCH_1601 + SECOND);
        assert!(drv.handle(&m[..HEADER_SIZE + 10], &mut reply, 7).is_err());
        assert_eq!(
            drv.handle(&m, &mut [0u8; 30], 7),
            Err(IcError::BufferTooSmall)
        );
        let mut fresh = TimeSyncDriver::at_epoch();
        assert!(
            fresh.handle(&m, &mut reply, 7).is_err(),
            "no sample before negotiation"
        );
    }
}
