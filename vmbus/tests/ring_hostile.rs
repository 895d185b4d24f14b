//! A hostile peer: arbitrary bytes as ring control page and data area. The consumer (and a
//! producer on the same ring) must never panic; they yield valid packets, `None` or an error.

use proptest::prelude::*;
use vmbus::mem::{AlignedRingBuffer, RingMemory};
use vmbus::packet::{Packet, PacketFlags};
use vmbus::ring::{RingConsumer, RingError, RingProducer, CONTROL_PAGE_SIZE};

/// Builds a ring of `data` bytes from fuzz input: control fields first, then the data area.
fn hostile_ring(data: usize, control: &[u8], contents: &[u8]) -> AlignedRingBuffer {
    let mem = AlignedRingBuffer::for_ring(data);
    mem.write_bytes(0, &control[..control.len().min(0x44)]);
    let n = contents.len().min(data);
    mem.write_bytes(CONTROL_PAGE_SIZE, &contents[..n]);
    mem
}

/// Reads until empty or error; every packet returned must parse or fail cleanly.
fn consume_all(mem: &AlignedRingBuffer, buf_len: usize) -> Result<usize, RingError> {
    let mut c = RingConsumer::new(mem)?;
    let mut buf = vec![0u8; buf_len];
    let mut packets = 0;
    // Each packet consumes at least 24 bytes of a ring nobody refills.
    let bound = c.data_size() / 24 + 1;
    loop {
        match c.read_packet(&mut buf) {
            Ok(Some(r)) => {
                packets += 1;
                assert!(packets <= bound, "more packets than the ring can hold");
                assert!(r.info.len >= 16 && r.info.len <= buf.len());
                let _ = Packet::parse(&buf[..r.info.len]);
            }
            Ok(None) => return Ok(packets),
            Err(e @ RingError::BufferTooSmall { .. }) => {
                assert!(!c.is_failed());
                return Err(e);
            }
            Err(e) => {
                assert!(e.is_fatal(), "{e}");
                assert!(c.is_failed());
                assert_eq!(c.read_packet(&mut buf), Err(RingError::Failed));
                return Err(e);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_ring_bytes_never_panic(
        data8 in 4usize..64,
        control in proptest::collection::vec(any::<u8>(), 0x44),
        contents in proptest::collection::vec(any::<u8>(), 0..512),
        buf_len in 0usize..600,
        plausible_indices in any::<bool>(),
    ) {
        let mut control = control;
        if plausible_indices {
            // Keep the random bits but bring both indices into range, so the consumer walks
            // forged descriptors instead of rejecting the indices outright.
            for field in [0..4, 4..8] {
                let raw = u32::from_le_bytes(control[field.clone()].try_into().unwrap());
                control[field].copy_from_slice(&((raw % data8 as u32) * 8).to_le_bytes());
            }
        }
        let mem = hostile_ring(data8 * 8, &control, &contents);
        let _ = consume_all(&mem, buf_len);
        if let Ok(mut p) = RingProducer::new(&mem) {
            for i in 0..4u64 {
                let _ = p.write_inband(i, PacketFlags::COMPLETION_REQUESTED, &[&contents[..contents.len().min(40)]]);
            }
        }
    }

    /// Small, valid-looking indices make the consumer actually walk forged descriptors.
    #[test]
    fn forged_descriptors_with_plausible_indices(
        read8 in 0u32..32,
        write8 in 0u32..32,
        contents in proptest::collection::vec(any::<u8>(), 256),
    ) {
        let mut control = vec![0u8; 0x44];
        control[0..4].copy_from_slice(&(write8 * 8).to_le_bytes());
        control[4..8].copy_from_slice(&(read8 * 8).to_le_bytes());
        let mem = hostile_ring(256, &control, &contents);
        let _ = consume_all(&mem, 256);
    }

    #[test]
    fn arbitrary_packet_bytes_parse_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(p) = Packet::parse(&bytes) {
            prop_assert_eq!(16 + p.header.len() + p.payload.len(), usize::from(p.desc.len8) * 8);
            if let vmbus::packet::PacketKind::GpaDirect(r) = p.kind {
                prop_assert_eq!(r.iter().count(), r.len());
                for g in r.iter() {
                    prop_assert!(g.byte_offset < 4096 && g.byte_count > 0);
                }
            }
        }
    }
}
