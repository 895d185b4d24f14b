//! Host-side reassembly of a GPADL from a (hostile) guest's GPADL_HEADER and GPADL_BODY messages.
//! Every count, length and number is checked before it is trusted; memory grows only with data the
//! guest actually sent and is bounded by the caller's PFN limit.

use super::{pages_spanned, GpaRange, GpadlError, HEADER_UNITS, MAX_BODY_PFNS};
use crate::protocol::{GpadlBodyMessage, GpadlHeaderMessage};
use alloc::vec::Vec;

/// One range of an assembled GPADL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedGpaRange {
    pub byte_count: u32,
    pub byte_offset: u32,
    pub pfns: Vec<u64>,
}

impl OwnedGpaRange {
    /// Borrows the range in the form the splitter takes.
    pub fn as_range(&self) -> GpaRange<'_> {
        GpaRange {
            byte_count: self.byte_count,
            byte_offset: self.byte_offset,
            pfns: &self.pfns,
        }
    }

    /// Whether the range is whole pages starting at a page boundary (as ring buffers must be).
    pub fn is_whole_pages(&self) -> bool {
        self.byte_offset == 0 && u64::from(self.byte_count) == self.pfns.len() as u64 * 4096
    }
}

/// A complete, validated GPADL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssembledGpadl {
    pub relid: u32,
    pub gpadl: u32,
    pub ranges: Vec<OwnedGpaRange>,
}

impl AssembledGpadl {
    /// The only range, if the GPADL has exactly one.
    pub fn single_range(&self) -> Option<&OwnedGpaRange> {
        match self.ranges.as_slice() {
            [range] => Some(range),
            _ => None,
        }
    }

    /// PFNs in all ranges together.
    pub fn total_pfns(&self) -> usize {
        self.ranges.iter().map(|r| r.pfns.len()).sum()
    }
}

/// How the guest numbers its GPADL_BODY messages, learned from the first one or two bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Numbering {
    /// No body seen yet.
    Unknown,
    /// First body carried 0; the second decides between all-zero and 0, 1, 2...
    FirstZero,
    /// Every body carries 0 (Linux).
    AllZero,
    /// Body k (0-based) carries `first + k`.
    Sequential { first: u32 },
}

/// Collects one GPADL's header and bodies.
#[derive(Debug, Clone)]
pub struct GpadlAssembler {
    relid: u32,
    gpadl: u32,
    rangecount: u16,
    total_units: usize,
    units: Vec<u64>,
    bodies: u32,
    numbering: Numbering,
}

impl GpadlAssembler {
    /// Starts assembling from a GPADL_HEADER, refusing GPADLs of more than `max_pfns` PFNs.
    pub fn new(header: &GpadlHeaderMessage<'_>, max_pfns: usize) -> Result<Self, GpadlError> {
        let hdr = header.header;
        let (range_buflen, rangecount) = (hdr.range_buflen, hdr.rangecount);
        let bad_buflen = GpadlError::BadRangeBufLen {
            range_buflen,
            rangecount,
        };
        if rangecount == 0 {
            return Err(GpadlError::NoRanges);
        }
        if range_buflen % 8 != 0 {
            return Err(bad_buflen);
        }
        let total_units = usize::from(range_buflen) / 8;
        let ranges = usize::from(rangecount);
        // Every range needs its head and at least one PFN.
        if ranges.saturating_mul(2) > total_units {
            return Err(bad_buflen);
        }
        let claimed_pfns = total_units - ranges;
        if claimed_pfns > max_pfns {
            return Err(GpadlError::TooManyPfns {
                count: claimed_pfns,
                limit: max_pfns,
            });
        }
        let carried = header.range_data.len();
        if carried == 0 || carried > total_units {
            return Err(GpadlError::BadHeaderData {
                carried,
                total: total_units,
            });
        }
        // The first range head is in the header: check it against the claimed size right away.
        let first = header.range_data.first().map(|u| u.get()).unwrap_or(0);
        let pages = pages_spanned((first >> 32) as u32, first as u32)?;
        let room = (total_units - 1 - 2 * (ranges - 1)) as u64;
        if (ranges == 1 && pages != room) || pages > room {
            return Err(GpadlError::PfnCountMismatch {
                expected: pages,
                actual: room,
            });
        }
        let mut units = Vec::with_capacity(total_units.min(HEADER_UNITS + MAX_BODY_PFNS));
        units.extend(header.range_data.iter().map(|u| u.get()));
        Ok(Self {
            relid: hdr.child_relid,
            gpadl: hdr.gpadl,
            rangecount,
            total_units,
            units,
            bodies: 0,
            numbering: Numbering::Unknown,
        })
    }

    /// The channel the GPADL is for.
    pub fn relid(&self) -> u32 {
        self.relid
    }

    /// The GPADL handle the guest chose.
    pub fn gpadl(&self) -> u32 {
        self.gpadl
    }

    /// PFNs the header claims the GPADL has (bounded by the limit given to [`Self::new`]).
    pub fn claimed_pfns(&self) -> usize {
        self.total_units - usize::from(self.rangecount)
    }

    /// Range data units still to come in bodies.
    pub fn remaining(&self) -> usize {
        self.total_units.saturating_sub(self.units.len())
    }

    /// Whether all bodies have arrived.
    pub fn is_complete(&self) -> bool {
        self.remaining() == 0
    }

    fn check_number(&mut self, got: u32) -> Result<(), GpadlError> {
        let k = self.bodies;
        let (ok, expected, next) = match self.numbering {
            Numbering::Unknown => match got {
                0 => (true, 0, Numbering::FirstZero),
                1 => (true, 1, Numbering::Sequential { first: 1 }),
                _ => (false, 1, Numbering::Unknown),
            },
            Numbering::FirstZero => match got {
                0 => (true, 0, Numbering::AllZero),
                1 => (true, 1, Numbering::Sequential { first: 0 }),
                _ => (false, 1, Numbering::FirstZero),
            },
            Numbering::AllZero => (got == 0, 0, Numbering::AllZero),
            Numbering::Sequential { first } => {
                let expected = first.saturating_add(k);
                (got == expected, expected, self.numbering)
            }
        };
        if !ok {
            return Err(GpadlError::BadMsgNumber { expected, got });
        }
        self.numbering = next;
        Ok(())
    }

    /// Adds one GPADL_BODY. On error the assembler is unchanged (the caller normally drops it).
    pub fn add_body(&mut self, body: &GpadlBodyMessage<'_>) -> Result<(), GpadlError> {
        let got = body.body.gpadl;
        if got != self.gpadl {
            return Err(GpadlError::WrongGpadl {
                expected: self.gpadl,
                got,
            });
        }
        let carried = body.pfns.len();
        if carried == 0 {
            return Err(GpadlError::EmptyBody);
        }
        let remaining = self.remaining();
        if carried > remaining {
            return Err(GpadlError::BodyOverflow { carried, remaining });
        }
        self.check_number(body.body.msgnumber)?;
        self.units.extend(body.pfns.iter().map(|u| u.get()));
        self.bodies = self.bodies.saturating_add(1);
        Ok(())
    }

    /// Validates the complete range data and returns the GPADL.
    pub fn finish(self) -> Result<AssembledGpadl, GpadlError> {
        if !self.is_complete() {
            return Err(GpadlError::Incomplete {
                missing: self.remaining(),
            });
        }
        let mismatch = GpadlError::RangeDataMismatch {
            rangecount: self.rangecount,
        };
        let mut ranges = Vec::with_capacity(usize::from(self.rangecount));
        let mut rest = self.units.as_slice();
        for _ in 0..self.rangecount {
            let (&head, tail) = rest.split_first().ok_or(mismatch.clone())?;
            let (byte_count, byte_offset) = (head as u32, (head >> 32) as u32);
            let pages = usize::try_from(pages_spanned(byte_offset, byte_count)?)
                .map_err(|_| mismatch.clone())?;
            if pages > tail.len() {
                return Err(mismatch);
            }
            let (pfns, tail) = tail.split_at(pages);
            let range = GpaRange {
                byte_count,
                byte_offset,
                pfns,
            };
            range.validate()?;
            ranges.push(OwnedGpaRange {
                byte_count,
                byte_offset,
                pfns: pfns.to_vec(),
            });
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(mismatch);
        }
        Ok(AssembledGpadl {
            relid: self.relid,
            gpadl: self.gpadl,
            ranges,
        })
    }
}
