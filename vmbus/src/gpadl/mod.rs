//! GPADLs (guest physical address descriptor lists) on the wire: splitting a PFN list into a
//! GPADL_HEADER and GPADL_BODY messages on the guest, and reassembling and validating them on the host.
//!
//! After GPADL_HEADER's fixed 20 bytes comes `range_buflen` bytes of ranges, each an 8-byte head
//! `{u32 byte_count, u32 byte_offset}` followed by its PFNs. That range data is a stream of 8-byte
//! units: the header message carries the first up to [`HEADER_UNITS`] (so one range with up to
//! [`MAX_HEADER_PFNS`] PFNs), each GPADL_BODY the next up to [`MAX_BODY_PFNS`]. Linux always sends one
//! range; several ranges are supported in both directions.
//!
//! Body numbering: Linux leaves `msgnumber` zero; the splitter here numbers bodies 1, 2, 3...; the
//! assembler accepts all-zero numbering or consecutive numbers starting at 0 or 1, and nothing else.

#[cfg(feature = "alloc")]
mod assemble;

#[cfg(feature = "alloc")]
pub use assemble::{AssembledGpadl, GpadlAssembler, OwnedGpaRange};

use crate::protocol::{GpadlBody, GpadlHeader, MessageBuf, MAX_MESSAGE_SIZE};

/// Page size GPADL PFNs refer to (Hyper-V's page size), as the u64 GPADL arithmetic uses it.
pub const PAGE_SIZE: u64 = crate::mem::PAGE_SIZE as u64;
/// Range data units (range heads + PFNs) that fit in a GPADL_HEADER message.
pub const HEADER_UNITS: usize = (MAX_MESSAGE_SIZE - size_of::<GpadlHeader>()) / 8;
/// PFNs of a single-range GPADL that fit in the GPADL_HEADER message.
pub const MAX_HEADER_PFNS: usize = HEADER_UNITS - 1;
/// PFNs that fit in one GPADL_BODY message.
pub const MAX_BODY_PFNS: usize = (MAX_MESSAGE_SIZE - size_of::<GpadlBody>()) / 8;
/// Range data units a GPADL can have at all: `range_buflen` is a u16 byte count.
pub const MAX_RANGE_UNITS: usize = u16::MAX as usize / 8;
/// PFNs a single-range GPADL can have at all.
pub const MAX_SINGLE_RANGE_PFNS: usize = MAX_RANGE_UNITS - 1;
/// PFNs above this cannot be guest physical pages (52-bit physical addresses).
pub const MAX_PFN: u64 = (1 << 40) - 1;

/// Why a GPADL could not be split or assembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpadlError {
    #[error("a GPADL needs at least one range")]
    NoRanges,
    #[error("{count} ranges are more than a GPADL can carry")]
    TooManyRanges { count: usize },
    #[error("range byte_count is zero")]
    ZeroByteCount,
    #[error("range byte_offset {byte_offset} is not within the first page")]
    ByteOffsetOutOfPage { byte_offset: u32 },
    #[error("range covers {expected} pages but carries {actual} PFNs")]
    PfnCountMismatch { expected: u64, actual: u64 },
    #[error("PFN {pfn:#x} is outside guest physical address space")]
    InvalidPfn { pfn: u64 },
    #[error("GPADL of {count} PFNs exceeds the limit of {limit}")]
    TooManyPfns { count: usize, limit: usize },
    #[error(
        "range_buflen {range_buflen} is not a whole number of ranges for {rangecount} range(s)"
    )]
    BadRangeBufLen { range_buflen: u16, rangecount: u16 },
    #[error("header carries {carried} range units but the GPADL has {total}")]
    BadHeaderData { carried: usize, total: usize },
    #[error("body for GPADL {got:#x} fed to assembler of GPADL {expected:#x}")]
    WrongGpadl { expected: u32, got: u32 },
    #[error("body carries no PFNs")]
    EmptyBody,
    #[error("body carries {carried} PFNs but only {remaining} are outstanding")]
    BodyOverflow { carried: usize, remaining: usize },
    #[error("body msgnumber {got} where {expected} was expected")]
    BadMsgNumber { expected: u32, got: u32 },
    #[error("GPADL incomplete: {missing} units outstanding")]
    Incomplete { missing: usize },
    #[error("range data does not describe exactly {rangecount} range(s)")]
    RangeDataMismatch { rangecount: u16 },
}

/// One range of a GPADL to send: `byte_count` bytes starting `byte_offset` into the first of `pfns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaRange<'a> {
    pub byte_count: u32,
    pub byte_offset: u32,
    pub pfns: &'a [u64],
}

/// Whether a ring-buffer GPADL of `total_pages` pages can be split at `downstream_offset`: each of
/// the two rings needs its control page and at least one data page.
pub fn valid_ring_split(total_pages: u64, downstream_offset: u32) -> bool {
    let offset = u64::from(downstream_offset);
    offset >= 2
        && total_pages
            .checked_sub(offset)
            .is_some_and(|rest| rest >= 2)
}

/// Pages a range of `byte_count` bytes at `byte_offset` within its first page spans.
pub fn pages_spanned(byte_offset: u32, byte_count: u32) -> Result<u64, GpadlError> {
    if byte_count == 0 {
        return Err(GpadlError::ZeroByteCount);
    }
    if u64::from(byte_offset) >= PAGE_SIZE {
        return Err(GpadlError::ByteOffsetOutOfPage { byte_offset });
    }
    // Both operands are < 2^32, so neither the sum nor the rounding can overflow a u64.
    Ok((u64::from(byte_offset) + u64::from(byte_count)).div_ceil(PAGE_SIZE))
}

impl<'a> GpaRange<'a> {
    /// A range covering whole pages, as Linux sends for ring buffers and receive buffers.
    pub fn whole_pages(pfns: &'a [u64]) -> Result<Self, GpadlError> {
        let byte_count = u64::try_from(pfns.len())
            .ok()
            .and_then(|n| n.checked_mul(PAGE_SIZE))
            .and_then(|b| u32::try_from(b).ok())
            .ok_or(GpadlError::TooManyPfns {
                count: pfns.len(),
                limit: MAX_SINGLE_RANGE_PFNS,
            })?;
        Ok(Self {
            byte_count,
            byte_offset: 0,
            pfns,
        })
    }

    /// Checks that byte count and offset match the number of PFNs and that the PFNs are plausible.
    pub fn validate(&self) -> Result<(), GpadlError> {
        let expected = pages_spanned(self.byte_offset, self.byte_count)?;
        let actual = self.pfns.len() as u64;
        if expected != actual {
            return Err(GpadlError::PfnCountMismatch { expected, actual });
        }
        match self.pfns.iter().find(|&&pfn| pfn > MAX_PFN) {
            Some(&pfn) => Err(GpadlError::InvalidPfn { pfn }),
            None => Ok(()),
        }
    }

    /// The 8-byte head unit as it appears in the range data stream.
    fn head_unit(&self) -> u64 {
        u64::from(self.byte_count) | (u64::from(self.byte_offset) << 32)
    }
}

/// Iterator over the GPADL_HEADER and GPADL_BODY messages describing a GPADL.
#[derive(Debug, Clone)]
pub struct GpadlMessages<'a> {
    relid: u32,
    gpadl: u32,
    ranges: Ranges<'a>,
    range_buflen: u16,
    /// Next unit to emit: (range index, 0 for the head or 1 + PFN index).
    cursor: (usize, usize),
    /// Messages emitted so far.
    emitted: u32,
}

#[derive(Debug, Clone, Copy)]
enum Ranges<'a> {
    One(GpaRange<'a>),
    Many(&'a [GpaRange<'a>]),
}

impl<'a> Ranges<'a> {
    fn get(&self, index: usize) -> Option<&GpaRange<'a>> {
        match self {
            Self::One(range) => (index == 0).then_some(range),
            Self::Many(ranges) => ranges.get(index),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Many(ranges) => ranges.len(),
        }
    }
}

impl<'a> GpadlMessages<'a> {
    /// Messages for a single-range GPADL (what Linux sends).
    pub fn new(relid: u32, gpadl: u32, range: GpaRange<'a>) -> Result<Self, GpadlError> {
        Self::build(relid, gpadl, Ranges::One(range))
    }

    /// Messages for a GPADL of several ranges.
    pub fn multi(relid: u32, gpadl: u32, ranges: &'a [GpaRange<'a>]) -> Result<Self, GpadlError> {
        Self::build(relid, gpadl, Ranges::Many(ranges))
    }

    fn build(relid: u32, gpadl: u32, ranges: Ranges<'a>) -> Result<Self, GpadlError> {
        let count = ranges.len();
        if count == 0 {
            return Err(GpadlError::NoRanges);
        }
        if count > MAX_RANGE_UNITS / 2 {
            return Err(GpadlError::TooManyRanges { count });
        }
        let mut units = 0usize;
        for index in 0..count {
            let range = ranges.get(index).ok_or(GpadlError::NoRanges)?;
            range.validate()?;
            units = units.saturating_add(1).saturating_add(range.pfns.len());
        }
        if units > MAX_RANGE_UNITS {
            return Err(GpadlError::TooManyPfns {
                count: units - count,
                limit: MAX_RANGE_UNITS - count,
            });
        }
        Ok(Self {
            relid,
            gpadl,
            ranges,
            range_buflen: (units * 8) as u16,
            cursor: (0, 0),
            emitted: 0,
        })
    }

    /// Total number of messages (header plus bodies) this GPADL takes.
    pub fn message_count(&self) -> usize {
        let units = usize::from(self.range_buflen) / 8;
        1 + units.saturating_sub(HEADER_UNITS).div_ceil(MAX_BODY_PFNS)
    }

    fn next_unit(&mut self) -> Option<u64> {
        let (index, pos) = self.cursor;
        let range = self.ranges.get(index)?;
        let unit = match pos {
            0 => range.head_unit(),
            n => *range.pfns.get(n - 1)?,
        };
        self.cursor = if pos >= range.pfns.len() {
            (index + 1, 0)
        } else {
            (index, pos + 1)
        };
        Some(unit)
    }

    fn fill(&mut self, buf: &mut [u64]) -> usize {
        let mut n = 0;
        for slot in buf.iter_mut() {
            match self.next_unit() {
                Some(unit) => {
                    *slot = unit;
                    n += 1;
                }
                None => break,
            }
        }
        n
    }
}

impl Iterator for GpadlMessages<'_> {
    type Item = MessageBuf;

    fn next(&mut self) -> Option<MessageBuf> {
        let mut units = [0u64; MAX_BODY_PFNS];
        let message = if self.emitted == 0 {
            let n = self.fill(&mut units[..HEADER_UNITS]);
            let rangecount = self.ranges.len() as u16;
            let header = GpadlHeader::new(self.relid, self.gpadl, self.range_buflen, rangecount);
            MessageBuf::with_pfns(&header, units.get(..n)?)
        } else {
            let n = self.fill(&mut units);
            if n == 0 {
                return None;
            }
            MessageBuf::with_pfns(&GpadlBody::new(self.emitted, self.gpadl), units.get(..n)?)
        };
        self.emitted += 1;
        message
    }
}

#[cfg(test)]
mod tests;
