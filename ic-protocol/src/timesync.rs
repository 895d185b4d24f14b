//! The time-synchronization IC (`ICMSGTYPE_TIMESYNC`): the host sends its UTC (`parenttime`, 100 ns
//! units since 1601-01-01) with a flag saying whether the guest should set its clock (SYNC, at start)
//! or only note the sample (SAMPLE, periodically). From message version 4.0 on the sample also carries
//! the guest's reference time (TIME_REF_COUNT) at which the host took it ([`TimeSyncRefData`]), so the
//! guest can add the time the message spent in flight; older versions carry [`TimeSyncData`]. The guest
//! answers every message by echoing it flagged as a response.

use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::{IcError, IcVersion};

/// Time-sync message versions (newest first), as hv_utils lists them.
pub const TIMESYNC_VERSIONS: &[IcVersion] = &[
    IcVersion::new(4, 0),
    IcVersion::new(3, 0),
    IcVersion::new(1, 0),
];

/// `parenttime` of 1970-01-01T00:00:00Z: 100 ns units between 1601 and the Unix epoch.
pub const UNIX_EPOCH_1601: u64 = 116_444_736_000_000_000;

/// Sample flags (`ictimesync_*.flags`).
pub mod flags {
    /// A probe (no time to use).
    pub const PROBE: u8 = 0;
    /// Set the clock to this time.
    pub const SYNC: u8 = 1;
    /// A periodic sample: note it, adjust only if far off.
    pub const SAMPLE: u8 = 2;
}

/// `ictimesync_data`: the body up to message version 3.0 (25 bytes, packed).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct TimeSyncData {
    pub parent_time: U64,
    pub child_time: U64,
    pub round_trip_time: U64,
    pub flags: u8,
}

/// `ictimesync_ref_data`: the body from message version 4.0 on (22 bytes, packed).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct TimeSyncRefData {
    pub parent_time: U64,
    /// The guest's reference counter when the host read `parent_time`.
    pub vm_reference_time: U64,
    pub flags: u8,
    pub leap_flags: u8,
    pub stratum: u8,
    pub reserved: [u8; 3],
}

/// Whether message version `v` uses [`TimeSyncRefData`] (versions above 3.0) rather than
/// [`TimeSyncData`].
pub fn uses_reference_time(v: IcVersion) -> bool {
    v > IcVersion::new(3, 0)
}

/// Body length of a time-sync message of version `v`.
pub fn body_len(v: IcVersion) -> usize {
    if uses_reference_time(v) {
        core::mem::size_of::<TimeSyncRefData>()
    } else {
        core::mem::size_of::<TimeSyncData>()
    }
}

/// One time sample, whatever the version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeSample {
    /// The host's UTC, 100 ns units since 1601.
    pub parent_time: u64,
    /// The guest reference time of `parent_time` (version 4.0 on).
    pub reference_time: Option<u64>,
    /// [`flags`].
    pub flags: u8,
}

/// Read the sample in a time-sync `body` of message version `v`.
pub fn read_sample(v: IcVersion, body: &[u8]) -> Result<TimeSample, IcError> {
    if uses_reference_time(v) {
        let (d, _) =
            TimeSyncRefData::read_from_prefix(body).map_err(|_| IcError::BodyTruncated {
                declared: body_len(v),
                available: body.len(),
            })?;
        Ok(TimeSample {
            parent_time: d.parent_time.get(),
            reference_time: Some(d.vm_reference_time.get()),
            flags: d.flags,
        })
    } else {
        let (d, _) = TimeSyncData::read_from_prefix(body).map_err(|_| IcError::BodyTruncated {
            declared: body_len(v),
            available: body.len(),
        })?;
        Ok(TimeSample {
            parent_time: d.parent_time.get(),
            reference_time: None,
            flags: d.flags,
        })
    }
}

/// Write `sample` as the body of message version `v` into `out`; returns the body length.
pub fn write_sample(v: IcVersion, sample: &TimeSample, out: &mut [u8]) -> Result<usize, IcError> {
    let len = body_len(v);
    let out = out.get_mut(..len).ok_or(IcError::BufferTooSmall)?;
    if uses_reference_time(v) {
        let d = TimeSyncRefData {
            parent_time: U64::new(sample.parent_time),
            vm_reference_time: U64::new(sample.reference_time.unwrap_or(0)),
            flags: sample.flags,
            leap_flags: 0,
            stratum: 0,
            reserved: [0; 3],
        };
        out.copy_from_slice(d.as_bytes());
    } else {
        let d = TimeSyncData {
            parent_time: U64::new(sample.parent_time),
            child_time: U64::new(0),
            round_trip_time: U64::new(0),
            flags: sample.flags,
        };
        out.copy_from_slice(d.as_bytes());
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_hv_utils() {
        assert_eq!(size_of::<TimeSyncData>(), 25);
        assert_eq!(offset_of!(TimeSyncData, child_time), 8);
        assert_eq!(offset_of!(TimeSyncData, round_trip_time), 16);
        assert_eq!(offset_of!(TimeSyncData, flags), 24);
        assert_eq!(size_of::<TimeSyncRefData>(), 22);
        assert_eq!(offset_of!(TimeSyncRefData, vm_reference_time), 8);
        assert_eq!(offset_of!(TimeSyncRefData, flags), 16);
        assert_eq!(offset_of!(TimeSyncRefData, leap_flags), 17);
        assert_eq!(offset_of!(TimeSyncRefData, stratum), 18);
        assert_eq!(offset_of!(TimeSyncRefData, reserved), 19);
    }

    #[test]
    fn samples_round_trip_in_both_formats() {
        let sample = TimeSample {
            parent_time: UNIX_EPOCH_1601 + 42,
            reference_time: Some(7),
            flags: flags::SYNC,
        };
        let mut buf = [0u8; 32];
        let n = write_sample(IcVersion::new(4, 0), &sample, &mut buf).unwrap();
        assert_eq!(n, 22);
        assert_eq!(read_sample(IcVersion::new(4, 0), &buf[..n]), Ok(sample));
        let n = write_sample(IcVersion::new(3, 0), &sample, &mut buf).unwrap();
        assert_eq!(n, 25);
        assert_eq!(buf[24], flags::SYNC);
        assert_eq!(
            read_sample(IcVersion::new(3, 0), &buf[..n]),
            Ok(TimeSample {
                reference_time: None,
                ..sample
            })
        );
        assert!(read_sample(IcVersion::new(4, 0), &buf[..21]).is_err());
        assert!(read_sample(IcVersion::new(1, 0), &buf[..24]).is_err());
        assert_eq!(
            write_sample(IcVersion::new(4, 0), &sample, &mut [0u8; 21]),
            Err(IcError::BufferTooSmall)
        );
    }
}
