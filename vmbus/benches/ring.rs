//! Ring costs per packet, each next to a memcpy of the same payload bytes in the same run.
//!
//! Per payload size (64 B, 4 KiB), one criterion iteration = one packet, throughput in payload
//! bytes:
//! - `write`: single thread, `write_inband` only (the ring is drained, untimed, whenever full);
//! - `read`: single thread, `read_packet` (one read-index commit per packet) of pre-written packets;
//! - `drain`: single thread, `drain` (one commit per drained batch) of pre-written packets;
//! - `two_threads` / `two_threads_drain`: a producer thread and a polling consumer thread using
//!   `read_packet` / `drain`;
//! - `memcpy`: the payload copied between two buffers that stay in L1;
//! - `memcpy_ring_sized`: the payload copied into a buffer as large as the ring's data area at
//!   the advancing offset a ring write would use (the ring's cache footprint).

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

fn fresh_ring() -> AlignedRingBuffer {
    let mem = AlignedRingBuffer::for_ring(RING_DATA);
    initialize_control_page(&mem, FEATURE_PENDING_SEND_SIZE).unwrap();
    mem
}

/// Ring bytes of one in-band packet: descriptor, padded payload, trailer.
fn ring_bytes(payload: usize) -> usize {
    16 + payload.div_ceil(8) * 8 + 8
}

/// Packets that fit in the ring at once (it is never filled completely).
fn per_batch(payload: usize) -> u64 {
    (RING_DATA / ring_bytes(payload) - 1) as u64
}

/// Which single-threaded operation is timed.
#[derive(Clone, Copy)]
enum Timed {
    Write,
    Read,
    Drain,
}

/// Single-threaded: `iters` packets through one ring in ring-sized batches, timing only `timed`.
/// Batches start where the last one ended, so packets wrap around the ring end.
fn single_thread(iters: u64, payload: usize, timed: Timed) -> Duration {
    let mem = fresh_ring();
    let mut p = RingProducer::new(&mem).unwrap();
    let mut c = RingConsumer::new(&mem).unwrap();
    c.mask_interrupts();
    let data = vec![0x5au8; payload];
    let mut buf = vec![0u8; payload + 64];
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(per_batch(payload));
        let start = Instant::now();
        for seq in 0..n {
            let w = p.write_inband(seq, PacketFlags::empty(), &[black_box(&data)]);
            let _ = black_box(w.unwrap());
        }
        if matches!(timed, Timed::Write) {
            total += start.elapsed();
        }
        let start = Instant::now();
        match timed {
            Timed::Read | Timed::Write => {
                for _ in 0..n {
                    let r = c.read_packet(&mut buf).unwrap().unwrap();
                    black_box(&buf[..r.info.len]);
                }
            }
            Timed::Drain => {
                let d = c
                    .drain(&mut buf, usize::MAX, |_, bytes| {
                        black_box(bytes);
                    })
                    .unwrap();
                assert_eq!(d.packets as u64, n);
            }
        }
        if !matches!(timed, Timed::Write) {
            total += start.elapsed();
        }
        left -= n;
    }
    total
}

/// Moves `count` packets of `payload` bytes through a fresh ring between two threads; returns
/// the elapsed time.
fn two_threads(count: u64, payload: usize, drain: bool) -> Duration {
    let mem = fresh_ring();
    let data = vec![0x5au8; payload];
    thread::scope(|s| {
        let consumer = s.spawn(|| {
            let mut c = RingConsumer::new(&mem).unwrap();
            c.mask_interrupts();
            let mut buf = vec![0u8; payload + 64];
            let mut got = 0;
            while got < count {
                let n = if drain {
                    c.drain(&mut buf, usize::MAX, |_, bytes| {
                        black_box(bytes);
                    })
                    .unwrap()
                    .packets as u64
                } else {
                    match c.read_packet(&mut buf).unwrap() {
                        Some(r) => {
                            black_box(&buf[..r.info.len]);
                            1
                        }
                        None => 0,
                    }
                };
                if n == 0 {
                    std::hint::spin_loop();
                }
                got += n;
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
        g.bench_function("write", |b| {
            b.iter_custom(|iters| single_thread(iters, payload, Timed::Write))
        });
        g.bench_function("read", |b| {
            b.iter_custom(|iters| single_thread(iters, payload, Timed::Read))
        });
        g.bench_function("drain", |b| {
            b.iter_custom(|iters| single_thread(iters, payload, Timed::Drain))
        });
        g.bench_function("two_threads", |b| {
            b.iter_custom(|iters| two_threads(iters, payload, false))
        });
        g.bench_function("two_threads_drain", |b| {
            b.iter_custom(|iters| two_threads(iters, payload, true))
        });
        let src = vec![0x5au8; payload];
        let mut dst = vec![0u8; payload];
        g.bench_function("memcpy", |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            })
        });
        let mut big = vec![0u8; RING_DATA];
        let step = ring_bytes(payload);
        let mut at = 0;
        g.bench_function("memcpy_ring_sized", |b| {
            b.iter(|| {
                if at + payload > RING_DATA {
                    at = 0;
                }
                big[at..at + payload].copy_from_slice(black_box(&src));
                black_box(&mut big);
                at += step;
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
