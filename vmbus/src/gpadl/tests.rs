//! Tests for GPADL splitting and reassembly, including every hostile-input case the assembler checks.

use super::*;
use crate::protocol::{parse_message, Message, MessageType};
use alloc::vec::Vec;
use proptest::prelude::*;

const RELID: u32 = 7;
const GPADL: u32 = 0xe1e10;
const LIMIT: usize = 8190;

fn pfns(n: usize) -> Vec<u64> {
    (0..n as u64).map(|i| 0x10_0000 + i * 3).collect()
}

fn header_of(buf: &MessageBuf) -> GpadlHeaderMessage<'_> {
    match parse_message(buf.as_bytes()).unwrap() {
        Message::GpadlHeader(h) => h,
        other => panic!("not a header: {other:?}"),
    }
}

fn body_of(buf: &MessageBuf) -> GpadlBodyMessage<'_> {
    match parse_message(buf.as_bytes()).unwrap() {
        Message::GpadlBody(b) => b,
        other => panic!("not a body: {other:?}"),
    }
}

use crate::protocol::{GpadlBodyMessage, GpadlHeaderMessage};

/// Feeds split messages to an assembler and finishes it.
fn assemble(messages: &[MessageBuf]) -> Result<AssembledGpadl, GpadlError> {
    let (first, rest) = messages.split_first().expect("no messages");
    let mut asm = GpadlAssembler::new(&header_of(first), LIMIT)?;
    for body in rest {
        asm.add_body(&body_of(body))?;
    }
    asm.finish()
}

fn raw_header(buflen: u16, count: u16, units: &[u64]) -> MessageBuf {
    MessageBuf::with_pfns(&GpadlHeader::new(RELID, GPADL, buflen, count), units).unwrap()
}

fn raw_body(number: u32, gpadl: u32, units: &[u64]) -> MessageBuf {
    MessageBuf::with_pfns(&GpadlBody::new(number, gpadl), units).unwrap()
}

fn head(byte_count: u32, byte_offset: u32) -> u64 {
    u64::from(byte_count) | (u64::from(byte_offset) << 32)
}

#[test]
fn capacities_match_linux() {
    assert_eq!(HEADER_UNITS, 27);
    assert_eq!(MAX_HEADER_PFNS, 26);
    assert_eq!(MAX_BODY_PFNS, 28);
    assert_eq!(MAX_SINGLE_RANGE_PFNS, 8190);
}

#[test]
fn split_message_sizes() {
    for (n, sizes) in [
        (1usize, &[36usize][..]),
        (26, &[236]),
        (27, &[236, 24]),
        (40, &[236, 16 + 14 * 8]),
        (54, &[236, 240]),
        (55, &[236, 240, 24]),
    ] {
        let list = pfns(n);
        let range = GpaRange::whole_pages(&list).unwrap();
        let iter = GpadlMessages::new(RELID, GPADL, range).unwrap();
        assert_eq!(iter.message_count(), sizes.len(), "{n} pfns");
        let got: Vec<usize> = iter.map(|m| m.len()).collect();
        assert_eq!(got, sizes, "{n} pfns");
    }
}

#[test]
fn header_layout_is_what_linux_sends() {
    let list = pfns(40);
    let msgs: Vec<_> = GpadlMessages::new(RELID, GPADL, GpaRange::whole_pages(&list).unwrap())
        .unwrap()
        .collect();
    let h = header_of(&msgs[0]);
    assert_eq!({ h.header.header.msgtype }, MessageType::GPADL_HEADER);
    assert_eq!({ h.header.child_relid }, RELID);
    assert_eq!({ h.header.gpadl }, GPADL);
    assert_eq!({ h.header.rangecount }, 1);
    assert_eq!({ h.header.range_buflen }, 8 + 40 * 8);
    assert_eq!(h.range_data[0].get(), head(40 * 4096, 0));
    assert_eq!(h.range_data[1].get(), list[0]);
    let b = body_of(&msgs[1]);
    assert_eq!({ b.body.msgnumber }, 1);
    assert_eq!({ b.body.gpadl }, GPADL);
    assert_eq!(b.pfns[0].get(), list[26]);
}

#[test]
fn round_trips_single_range() {
    for n in [1, 2, 25, 26, 27, 40, 54, 55, 56, 83, 100, 1000, 8190] {
        let list = pfns(n);
        let range = GpaRange::whole_pages(&list).unwrap();
        let msgs: Vec<_> = GpadlMessages::new(RELID, GPADL, range).unwrap().collect();
        let gpadl = assemble(&msgs).unwrap();
        assert_eq!(gpadl.relid, RELID);
        assert_eq!(gpadl.gpadl, GPADL);
        let single = gpadl.single_range().unwrap();
        assert_eq!(single.pfns, list);
        assert!(single.is_whole_pages());
        assert_eq!(gpadl.total_pfns(), n);
    }
}

#[test]
fn round_trips_partial_pages_and_multiple_ranges() {
    let a = pfns(3);
    let b = pfns(40);
    let c = pfns(1);
    let ranges = [
        GpaRange {
            byte_count: 2 * 4096 + 1,
            byte_offset: 100,
            pfns: &a,
        },
        GpaRange::whole_pages(&b).unwrap(),
        GpaRange {
            byte_count: 10,
            byte_offset: 4000,
            pfns: &c,
        },
    ];
    let msgs: Vec<_> = GpadlMessages::multi(RELID, GPADL, &ranges)
        .unwrap()
        .collect();
    assert_eq!(msgs.len(), 2);
    let gpadl = assemble(&msgs).unwrap();
    assert!(gpadl.single_range().is_none());
    let back: Vec<_> = gpadl.ranges.iter().map(|r| r.as_range()).collect();
    assert_eq!(back, ranges);
    assert!(!gpadl.ranges[0].is_whole_pages());
}

#[test]
fn linux_unnumbered_and_zero_based_bodies_accepted() {
    let list = pfns(100);
    let msgs: Vec<_> = GpadlMessages::new(RELID, GPADL, GpaRange::whole_pages(&list).unwrap())
        .unwrap()
        .collect();
    for renumber in [|_k: u32| 0, |k: u32| k] {
        let mut asm = GpadlAssembler::new(&header_of(&msgs[0]), LIMIT).unwrap();
        for (k, body) in msgs[1..].iter().enumerate() {
            let b = body_of(body);
            let units: Vec<u64> = b.pfns.iter().map(|u| u.get()).collect();
            let re = raw_body(renumber(k as u32), GPADL, &units);
            asm.add_body(&body_of(&re)).unwrap();
        }
        assert_eq!(asm.finish().unwrap().single_range().unwrap().pfns, list);
    }
}

#[test]
fn splitter_rejects_inconsistent_ranges() {
    let list = pfns(3);
    let bad = |byte_count, byte_offset| GpaRange {
        byte_count,
        byte_offset,
        pfns: &list,
    };
    let err = |r| GpadlMessages::new(RELID, GPADL, r).unwrap_err();
    assert_eq!(err(bad(0, 0)), GpadlError::ZeroByteCount);
    assert_eq!(
        err(bad(4096, 4096)),
        GpadlError::ByteOffsetOutOfPage { byte_offset: 4096 }
    );
    assert_eq!(
        err(bad(4096, 0)),
        GpadlError::PfnCountMismatch {
            expected: 1,
            actual: 3
        }
    );
    assert_eq!(
        err(bad(u32::MAX, 4095)),
        GpadlError::PfnCountMismatch {
            expected: 1_048_577,
            actual: 3
        }
    );
    let huge = pfns(8191);
    assert!(matches!(
        err(GpaRange::whole_pages(&huge).unwrap()),
        GpadlError::TooManyPfns { .. }
    ));
    assert_eq!(
        GpadlMessages::multi(RELID, GPADL, &[]).unwrap_err(),
        GpadlError::NoRanges
    );
    let wild = [1, MAX_PFN + 1];
    assert_eq!(
        err(GpaRange::whole_pages(&wild).unwrap()),
        GpadlError::InvalidPfn { pfn: MAX_PFN + 1 }
    );
}

#[test]
fn hostile_headers_rejected() {
    let new = |buf: MessageBuf| GpadlAssembler::new(&header_of(&buf), LIMIT).map(|_| ());
    let one = head(4096, 0);
    assert_eq!(new(raw_header(16, 0, &[one, 1])), Err(GpadlError::NoRanges));
    assert!(matches!(
        new(raw_header(17, 1, &[one, 1])),
        Err(GpadlError::BadRangeBufLen { .. })
    ));
    // Two ranges cannot fit in 3 units.
    assert!(matches!(
        new(raw_header(24, 2, &[one, 1, one])),
        Err(GpadlError::BadRangeBufLen { .. })
    ));
    // More PFNs than the limit.
    assert_eq!(
        GpadlAssembler::new(&header_of(&raw_header(8 + 8 * 11, 1, &[one])), 10).map(|_| ()),
        Err(GpadlError::TooManyPfns {
            count: 11,
            limit: 10
        })
    );
    // Header carries more units than range_buflen says, or none.
    assert_eq!(
        new(raw_header(16, 1, &[one, 1, 2])),
        Err(GpadlError::BadHeaderData {
            carried: 3,
            total: 2
        })
    );
    assert_eq!(
        new(raw_header(16, 1, &[])),
        Err(GpadlError::BadHeaderData {
            carried: 0,
            total: 2
        })
    );
    // Range head inconsistent with the PFN count claimed by range_buflen.
    assert_eq!(
        new(raw_header(
            8 + 8 * 5,
            1,
            &[head(3 * 4096, 0), 1, 2, 3, 4, 5]
        )),
        Err(GpadlError::PfnCountMismatch {
            expected: 3,
            actual: 5
        })
    );
    assert_eq!(
        new(raw_header(16, 1, &[head(0, 0), 1])),
        Err(GpadlError::ZeroByteCount)
    );
    assert_eq!(
        new(raw_header(16, 1, &[head(10, 5000), 1])),
        Err(GpadlError::ByteOffsetOutOfPage { byte_offset: 5000 })
    );
    // First of two ranges claims all the room.
    assert!(matches!(
        new(raw_header(8 * 6, 2, &[head(5 * 4096, 0)])),
        Err(GpadlError::PfnCountMismatch { .. })
    ));
    // Maximum range_buflen with a header that overflows nothing.
    assert!(matches!(
        new(raw_header(0xfff8, 1, &[head(u32::MAX, 4095)])),
        Err(GpadlError::PfnCountMismatch { .. })
    ));
}

#[test]
fn hostile_bodies_rejected() {
    let list = pfns(60);
    let msgs: Vec<_> = GpadlMessages::new(RELID, GPADL, GpaRange::whole_pages(&list).unwrap())
        .unwrap()
        .collect();
    assert_eq!(msgs.len(), 3);
    let fresh = || GpadlAssembler::new(&header_of(&msgs[0]), LIMIT).unwrap();

    let mut asm = fresh();
    assert_eq!(
        asm.add_body(&body_of(&raw_body(1, GPADL + 1, &[1]))),
        Err(GpadlError::WrongGpadl {
            expected: GPADL,
            got: GPADL + 1
        })
    );
    assert_eq!(
        asm.add_body(&body_of(&raw_body(1, GPADL, &[]))),
        Err(GpadlError::EmptyBody)
    );
    // 34 outstanding: a body of 28 then one of 7 overflows.
    asm.add_body(&body_of(&msgs[1])).unwrap();
    assert_eq!(
        asm.add_body(&body_of(&raw_body(2, GPADL, &[9; 7]))),
        Err(GpadlError::BodyOverflow {
            carried: 7,
            remaining: 6
        })
    );
    // Duplicate body number.
    assert_eq!(
        asm.add_body(&body_of(&raw_body(1, GPADL, &[9; 6]))),
        Err(GpadlError::BadMsgNumber {
            expected: 2,
            got: 1
        })
    );
    assert_eq!(
        asm.clone().finish(),
        Err(GpadlError::Incomplete { missing: 6 })
    );
    asm.add_body(&body_of(&msgs[2])).unwrap();
    assert!(asm.is_complete());
    // Too many bodies.
    assert_eq!(
        asm.add_body(&body_of(&raw_body(3, GPADL, &[9]))),
        Err(GpadlError::BodyOverflow {
            carried: 1,
            remaining: 0
        })
    );
    assert_eq!(asm.finish().unwrap().total_pfns(), 60);

    // Numbering that starts anywhere but 0 or 1, or mixes schemes.
    let mut asm = fresh();
    assert_eq!(
        asm.add_body(&body_of(&raw_body(5, GPADL, &[9]))),
        Err(GpadlError::BadMsgNumber {
            expected: 1,
            got: 5
        })
    );
    let mut asm = fresh();
    asm.add_body(&body_of(&raw_body(0, GPADL, &[9]))).unwrap();
    assert!(asm
        .add_body(&body_of(&raw_body(2, GPADL, &[9]))) // neither 0 nor 1
        .is_err());
    asm.add_body(&body_of(&raw_body(0, GPADL, &[9]))).unwrap();
    assert!(asm
        .add_body(&body_of(&raw_body(2, GPADL, &[9]))) // all-zero mode now
        .is_err());
}

#[test]
fn hostile_multi_range_data_rejected() {
    // Two ranges in 5 units; the second range claims 1 page and leaves a stray unit behind.
    let units = [head(4096, 0), 11, head(4096, 0), 12, 13];
    let msg = raw_header(40, 2, &units);
    let asm = GpadlAssembler::new(&header_of(&msg), LIMIT).unwrap();
    assert_eq!(
        asm.finish().unwrap_err(),
        GpadlError::RangeDataMismatch { rangecount: 2 }
    );
    // Second range head claims 3 pages where 2 remain.
    let units = [head(4096, 0), 11, head(3 * 4096, 0), 12, 13];
    let asm = GpadlAssembler::new(&header_of(&raw_header(40, 2, &units)), LIMIT).unwrap();
    assert_eq!(
        asm.finish().unwrap_err(),
        GpadlError::RangeDataMismatch { rangecount: 2 }
    );
    // Invalid PFN inside otherwise consistent data.
    let units = [head(4096, 0), MAX_PFN + 1];
    let asm = GpadlAssembler::new(&header_of(&raw_header(16, 1, &units)), LIMIT).unwrap();
    assert_eq!(
        asm.finish().unwrap_err(),
        GpadlError::InvalidPfn { pfn: MAX_PFN + 1 }
    );
    // A second range with a zero byte count.
    let units = [head(4096, 0), 11, head(0, 0), 12];
    let asm = GpadlAssembler::new(&header_of(&raw_header(32, 2, &units)), LIMIT).unwrap();
    assert_eq!(asm.finish().unwrap_err(), GpadlError::ZeroByteCount);
}

proptest! {
    #[test]
    fn split_then_assemble_is_identity(
        list in proptest::collection::vec(0..=MAX_PFN, 1..400),
        offset in 0u32..4096,
    ) {
        let n = list.len() as u64;
        // Any byte count that still spans exactly n pages from `offset`.
        let byte_count = (n * 4096 - u64::from(offset)) as u32;
        let range = GpaRange { byte_count, byte_offset: offset, pfns: &list };
        let msgs: Vec<_> = GpadlMessages::new(RELID, GPADL, range).unwrap().collect();
        let gpadl = assemble(&msgs).unwrap();
        prop_assert_eq!(gpadl.single_range().unwrap().as_range(), range);
    }

    #[test]
    fn arbitrary_messages_never_panic(
        header in proptest::collection::vec(any::<u8>(), 20..240),
        bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 8..240), 0..6),
    ) {
        let mut header = header;
        header[..4].copy_from_slice(&8u32.to_le_bytes());
        if let Ok(Message::GpadlHeader(h)) = parse_message(&header) {
            if let Ok(mut asm) = GpadlAssembler::new(&h, LIMIT) {
                prop_assert!(asm.claimed_pfns() <= LIMIT);
                for mut body in bodies {
                    body[..4].copy_from_slice(&9u32.to_le_bytes());
                    if let Ok(Message::GpadlBody(b)) = parse_message(&body) {
                        let before = asm.remaining();
                        if asm.add_body(&b).is_err() {
                            prop_assert_eq!(asm.remaining(), before);
                        }
                    }
                }
                if let Ok(g) = asm.finish() {
                    prop_assert!(g.total_pfns() <= LIMIT);
                }
            }
        }
    }
}

#[test]
fn ring_split_rule() {
    assert!(valid_ring_split(4, 2));
    assert!(valid_ring_split(40, 20));
    assert!(!valid_ring_split(40, 1));
    assert!(!valid_ring_split(40, 0));
    assert!(!valid_ring_split(40, 39));
    assert!(!valid_ring_split(40, 40));
    assert!(!valid_ring_split(40, u32::MAX));
    assert!(!valid_ring_split(3, 2));
}
