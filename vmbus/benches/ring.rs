//! Ring throughput between two threads (producer writes in-band packets, a polling consumer
//! copies them out), next to a plain memcpy of the same payload bytes.
//! One criterion iteration = one packet; throughput is reported in payload bytes.

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vmbus::mem::AlignedRingBuffer;
use vmbus::packet::PacketFlags;
use vmbus::ring::{
    initialize_control_page, RingConsumer, RingError, RingProducer, FEATURE_PENDING_SEND_SIZE,
};

const RING_DATA: usize = 256 * 1024;

/// Moves `count` packets of `payload` bytes through a fresh ring; returns the elapsed time.
fn ring_transfer(count: u64, payload: usize) -> Duration {
    let mem = AlignedRingBuffer::for_ring(RING_DATA);
    initialize_control_page(&mem, FEATURE_PENDING_SEND_SIZE).unwrap();
    let data = vec![0x5au8; payload];
    thread::scope(|s| {
        let consumer = s.spawn(|| {
            let mut c = RingConsumer::new(&mem).unwrap();
            c.mask_interrupts();
            let mut buf = vec![0u8; payload + 64];
            let mut got = 0;
            while got < count {
                match c.read_packet(&mut buf).unwrap() {
                    Some(r) => {
                        black_box(&buf[..r.info.len]);
                        got += 1;
                    }
                    None => std::hint::spin_loop(),
                }
            }
        });
        let start = Instant::now();
        let mut p = RingProducer::new(&mem).unwrap();
        for seq in 0..count {
            loop {
                match p.write_inband(seq, PacketFlags::empty(), &[&data]) {
                    Ok(_) => break,
                    Err(RingError::Full { .. }) => std::hint::spin_loop(),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        consumer.join().unwrap();
        start.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    for (name, payload) in [("64B", 64usize), ("4KiB", 4096)] {
        let mut g = c.benchmark_group(format!("ring_{name}"));
        g.throughput(Throughput::Bytes(payload as u64));
        g.bench_function("two_threads", |b| {
            b.iter_custom(|iters| ring_transfer(iters, payload))
        });
        let src = vec![0x5au8; payload];
        let mut dst = vec![0u8; payload];
        g.bench_function("memcpy", |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
