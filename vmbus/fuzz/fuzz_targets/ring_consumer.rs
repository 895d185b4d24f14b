//! Arbitrary bytes as a ring (control fields + data area) fed to a RingConsumer, which reads
//! (singly and in batches) until empty or error; every packet it returns is parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmbus::mem::{AlignedRingBuffer, RingMemory};
use vmbus::packet::Packet;
use vmbus::ring::{RingConsumer, RingProducer, CONTROL_PAGE_SIZE};

const CONTROL_BYTES: usize = 0x44;

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    // Data area of 32..=2048 bytes, a multiple of 8; small so that wrapping is common.
    let size = (usize::from(shape & 0x3f) + 4) * 8;
    let batched = shape & 0x40 != 0;
    let buf_len = if shape & 0x80 != 0 { 64 } else { size };
    let (control, contents) = rest.split_at(rest.len().min(CONTROL_BYTES));
    let mem = AlignedRingBuffer::for_ring(size);
    mem.write_bytes(0, control);
    mem.write_bytes(CONTROL_PAGE_SIZE, &contents[..contents.len().min(size)]);

    if let Ok(mut c) = RingConsumer::new(&mem) {
        let mut buf = vec![0u8; buf_len];
        let mut packets = 0usize;
        loop {
            if batched {
                let mut parsed = 0usize;
                match c.drain(&mut buf, 4, |_, bytes| {
                    parsed += usize::from(Packet::parse(bytes).is_ok());
                }) {
                    Ok(d) if d.packets > 0 => packets += d.packets,
                    _ => break,
                }
            } else {
                match c.read_packet(&mut buf) {
                    Ok(Some(r)) => {
                        let _ = Packet::parse(&buf[..r.info.len]);
                        packets += 1;
                    }
                    _ => break,
                }
            }
            // Nobody refills the ring and each packet takes at least 24 bytes.
            assert!(
                packets <= size / 24,
                "consumer returned more packets than fit"
            );
        }
    }
    if let Ok(mut p) = RingProducer::new(&mem) {
        let _ = p.write_raw(&[&contents[..contents.len().min(64)]]);
    }
});
