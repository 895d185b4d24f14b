//! One virtio-net descriptor chain (virtio 1.x §5.1.6), checked before any byte moves: a transmit
//! chain is device-readable only (the 12-byte `virtio_net_hdr` then the frame, split across its
//! descriptors any way the driver likes — VERSION_1 implies any layout), a receive chain
//! device-writable only and large enough for the header plus the largest frame (the spec's rule for a
//! driver that negotiated no MRG_RXBUF or GUEST_TSO/UFO). Every descriptor must be guest RAM as a
//! whole, the chain must end (no loop, no index past the table: virtio-queue stops walking such a
//! chain, which leaves its last descriptor still pointing on) and hold at most [`MAX_SEGMENTS`]
//! pieces. A chain that breaks any of these is a driver bug the device does not guess around.
//!
//! [`Chain`] then reads and writes its byte stream (header, frame) piece by piece, and hands the frame
//! part to a backend as guest-memory slices.

use virtio_queue::desc::split::Descriptor;
use vm_memory::VolatileSlice;

use crate::guest_memory::{self, GuestMemoryError, GuestMemoryMmap};
use crate::net::MAX_FRAME_LEN;

/// Bytes of `struct virtio_net_hdr` with `num_buffers`: what every VERSION_1 device and driver use,
/// with or without VIRTIO_NET_F_MRG_RXBUF.
pub const NET_HDR_LEN: usize = 12;
/// Smallest receive chain a driver without MRG_RXBUF may post: the header and a 1514-byte frame.
pub const MIN_RX_CHAIN: u64 = (NET_HDR_LEN + MAX_FRAME_LEN) as u64;
/// Most descriptors one chain may have (Linux's largest non-mergeable receive chain has 19).
pub const MAX_SEGMENTS: usize = 64;

/// Offsets in the header (§5.1.6): flags u8 @0, gso_type u8 @1, hdr_len @2, gso_size @4,
/// csum_start @6, csum_offset @8, num_buffers @10 (all little-endian u16).
pub mod hdr {
    /// `num_buffers`: buffers the received frame spans (1 without MRG_RXBUF).
    pub const NUM_BUFFERS: usize = 10;
    /// `gso_type` value of a frame that is not a GSO frame.
    pub const GSO_NONE: u8 = 0;
}

/// Which way a chain carries bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Transmit: the device reads every descriptor.
    Transmit,
    /// Receive: the device writes every descriptor.
    Receive,
}

/// Why a chain is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A device-writable descriptor in a transmit chain, or a readable one in a receive chain.
    #[error("descriptor {index} of the chain goes the wrong way")]
    WrongDirection {
        /// Position in the chain.
        index: usize,
    },
    /// The chain did not end: a loop or a next index outside the table.
    #[error("the chain does not end")]
    Unterminated,
    /// More than [`MAX_SEGMENTS`] descriptors.
    #[error("the chain has more than {MAX_SEGMENTS} descriptors")]
    TooManySegments,
    /// Too few bytes: under the header (transmit) or header plus largest frame (receive).
    #[error("a {len}-byte chain is shorter than the {need} bytes it must hold")]
    TooShort {
        /// Bytes of the chain.
        len: u64,
        /// Bytes it must have.
        need: u64,
    },
    /// A descriptor is not guest RAM.
    #[error("descriptor memory")]
    NotRam(#[from] GuestMemoryError),
}

/// A run of guest memory of one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub gpa: u64,
    /// Bytes.
    pub len: u32,
}

/// A checked chain: its segments in order and their total length.
#[derive(Debug, Default)]
pub struct Chain {
    segments: Vec<Segment>,
    len: u64,
}

impl Chain {
    /// Checks `descriptors` (as the queue walks them) for `direction` against `mem`, replacing what
    /// `self` held (its storage is reused).
    pub fn parse(
        &mut self,
        mem: &GuestMemoryMmap,
        descriptors: impl IntoIterator<Item = Descriptor>,
        direction: Direction,
    ) -> Result<(), ChainError> {
        self.segments.clear();
        self.len = 0;
        let mut ended = false;
        for (index, d) in descriptors.into_iter().enumerate() {
            if index >= MAX_SEGMENTS {
                return Err(ChainError::TooManySegments);
            }
            let writes = d.is_write_only();
            if writes != (direction == Direction::Receive) {
                return Err(ChainError::WrongDirection { index });
            }
            let gpa = d.addr().0;
            guest_memory::check(mem, gpa, u64::from(d.len()))?;
            if d.len() > 0 {
                self.segments.push(Segment { gpa, len: d.len() });
                self.len += u64::from(d.len());
            }
            ended = !d.has_next();
        }
        if !ended {
            return Err(ChainError::Unterminated);
        }
        let need = match direction {
            Direction::Transmit => NET_HDR_LEN as u64,
            Direction::Receive => MIN_RX_CHAIN,
        };
        if self.len < need {
            return Err(ChainError::TooShort {
                len: self.len,
                need,
            });
        }
        Ok(())
    }

    /// Total bytes of the chain.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the chain has no bytes (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Visits the pieces of `[offset, offset + len)` of the stream as (gpa, length) in order;
    /// false if the range runs past the chain.
    fn pieces(&self, offset: u64, len: u64, mut f: impl FnMut(u64, u64) -> bool) -> bool {
        let end = match offset.checked_add(len) {
            Some(end) if end <= self.len => end,
            _ => return false,
        };
        let mut at = 0u64;
        for s in &self.segments {
            let (start, stop) = (at, at + u64::from(s.len));
            at = stop;
            let from = start.max(offset);
            let to = stop.min(end);
            if from < to && !f(s.gpa + (from - start), to - from) {
                return false;
            }
            if stop >= end {
                break;
            }
        }
        true
    }

    /// Copies `buf` into the stream at `offset` (a receive chain: header, frame).
    pub fn write(&self, mem: &GuestMemoryMmap, offset: u64, buf: &[u8]) -> bool {
        let mut done = 0usize;
        self.pieces(offset, buf.len() as u64, |gpa, n| {
            let n = n as usize;
            let ok = guest_memory::write(mem, gpa, &buf[done..done + n]).is_ok();
            done += n;
            ok
        })
    }

    /// Copies the stream at `offset` into `buf` (a transmit chain's header).
    pub fn read(&self, mem: &GuestMemoryMmap, offset: u64, buf: &mut [u8]) -> bool {
        let mut done = 0usize;
        let len = buf.len() as u64;
        self.pieces(offset, len, |gpa, n| {
            let n = n as usize;
            let ok = guest_memory::read(mem, gpa, &mut buf[done..done + n]).is_ok();
            done += n;
            ok
        })
    }

    /// The guest memory of `[offset, offset + len)` of the stream as slices, appended to `out`;
    /// false if any piece is not RAM (checked at parse time, so only if memory changed) or the
    /// range runs past the chain.
    pub fn slices<'m>(
        &self,
        mem: &'m GuestMemoryMmap,
        offset: u64,
        len: u64,
        out: &mut Vec<VolatileSlice<'m>>,
    ) -> bool {
        self.pieces(offset, len, |gpa, n| {
            guest_memory::for_each_slice(mem, gpa, n, |s| {
                out.push(s);
                Ok::<(), GuestMemoryError>(())
            })
            .is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vm_memory::GuestAddress;

    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const RAM: u64 = 1 << 20;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
    }

    fn d(addr: u64, len: u32, flags: u16) -> Descriptor {
        Descriptor::new(addr, len, flags, 0)
    }

    #[test]
    fn a_receive_chain_must_be_writable_and_hold_header_and_frame() {
        let m = mem();
        let mut c = Chain::default();
        c.parse(&m, [d(0x1000, 2048, WRITE)], Direction::Receive)
            .unwrap();
        assert_eq!(c.len(), 2048);
        c.parse(
            &m,
            [d(0x1000, 12, WRITE | NEXT), d(0x3000, 1514, WRITE)],
            Direction::Receive,
        )
        .unwrap();
        assert_eq!(
            c.parse(&m, [d(0x1000, 1525, WRITE)], Direction::Receive),
            Err(ChainError::TooShort {
                len: 1525,
                need: 1526
            })
        );
        assert_eq!(
            c.parse(&m, [d(0x1000, 2048, 0)], Direction::Receive),
            Err(ChainError::WrongDirection { index: 0 })
        );
        assert_eq!(
            c.parse(&m, [d(0x1000, 2048, WRITE | NEXT)], Direction::Receive),
            Err(ChainError::Unterminated)
        );
        assert!(matches!(
            c.parse(&m, [d(RAM - 100, 2048, WRITE)], Direction::Receive),
            Err(ChainError::NotRam(_))
        ));
    }

    #[test]
    fn a_transmit_chain_is_readable_and_at_least_a_header() {
        let m = mem();
        let mut c = Chain::default();
        c.parse(
            &m,
            [d(0x1000, 12, NEXT), d(0x2000, 60, 0)],
            Direction::Transmit,
        )
        .unwrap();
        assert_eq!(c.segments().len(), 2);
        assert_eq!(
            c.parse(&m, [d(0x1000, 11, 0)], Direction::Transmit),
            Err(ChainError::TooShort { len: 11, need: 12 })
        );
        assert_eq!(
            c.parse(
                &m,
                [d(0x1000, 12, NEXT), d(0x2000, 60, WRITE)],
                Direction::Transmit
            ),
            Err(ChainError::WrongDirection { index: 1 })
        );
        let many = (0..=MAX_SEGMENTS).map(|i| d(0x1000 + i as u64, 1, NEXT));
        assert_eq!(
            c.parse(&m, many, Direction::Transmit),
            Err(ChainError::TooManySegments)
        );
    }

    #[test]
    fn the_stream_spans_segments_in_order() {
        let m = mem();
        let mut c = Chain::default();
        c.parse(
            &m,
            [d(0x1000, 5, NEXT), d(0x5000, 10, NEXT), d(0x9000, 3000, 0)],
            Direction::Transmit,
        )
        .unwrap();
        let data: Vec<u8> = (0..20u8).collect();
        assert!(c.write(&m, 2, &data));
        let mut back = [0u8; 20];
        assert!(c.read(&m, 2, &mut back));
        assert_eq!(&back[..], &data[..]);
        let mut b = [0u8; 3];
        guest_memory::read(&m, 0x1002, &mut b).unwrap();
        assert_eq!(b, [0, 1, 2]);
        let mut slices = Vec::new();
        assert!(c.slices(&m, 3, 20, &mut slices));
        assert_eq!(
            slices.iter().map(|s| s.len()).collect::<Vec<_>>(),
            [2, 10, 8]
        );
        assert!(!c.read(&m, 3000, &mut back), "past the end");
        assert!(!c.slices(&m, u64::MAX, 2, &mut slices), "overflow");
    }

    fn arb_desc() -> impl Strategy<Value = (u64, u32, u16)> {
        (
            prop_oneof![0..RAM, RAM - 4096..RAM + 4096, Just(u64::MAX - 10)],
            prop_oneof![0u32..4096, Just(u32::MAX)],
            0u16..8,
        )
    }

    proptest! {
        /// Whatever the descriptors, a chain that parses is in RAM, goes one way, ends, is long
        /// enough, and its stream covers exactly its segments.
        #[test]
        fn parsed_chains_keep_every_rule(
            descs in proptest::collection::vec(arb_desc(), 0..70),
            receive in any::<bool>(),
        ) {
            let m = mem();
            let mut c = Chain::default();
            let direction = if receive { Direction::Receive } else { Direction::Transmit };
            let list: Vec<Descriptor> =
                descs.iter().map(|&(a, l, f)| Descriptor::new(a, l, f, 0)).collect();
            if c.parse(&m, list.iter().copied(), direction).is_ok() {
                prop_assert!(list.len() <= MAX_SEGMENTS);
                prop_assert!(!list.last().unwrap().has_next());
                for x in &list {
                    prop_assert_eq!(x.is_write_only(), receive);
                    prop_assert!(guest_memory::contains(&m, x.addr().0, u64::from(x.len())));
                }
                let total: u64 = list.iter().map(|x| u64::from(x.len())).sum();
                prop_assert_eq!(c.len(), total);
                let need = if receive { MIN_RX_CHAIN } else { NET_HDR_LEN as u64 };
                prop_assert!(total >= need);
                let mut slices = Vec::new();
                prop_assert!(c.slices(&m, 0, total, &mut slices));
                prop_assert_eq!(slices.iter().map(|s| s.len() as u64).sum::<u64>(), total);
                prop_assert!(!c.slices(&m, 0, total + 1, &mut slices));
            }
        }
    }
}
