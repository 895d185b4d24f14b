//! storvsp alone on the RAM backend: requests per second through the rings for 4 KiB reads at QD1 and
//! QD32 and 128 KiB reads at QD32. A client thread runs the guest's storvsc logic (guest-drivers) and a worker thread runs
//! StorvspWorker; they meet only in the two shared rings (no KVM, no signals: both sides poll).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use guest_drivers::storvsc::{Event, HandshakeStep, Storvsc};
use host_vsp::backend::RamDisk;
use host_vsp::guest_memory::GuestMemoryMmap;
use host_vsp::synthetic::storvsp::{LunMap, StorvspConfig, StorvspWorker};
use vm_memory::GuestAddress;
use vmbus::mem::AlignedRingBuffer;
use vmbus::ring::{initialize_control_page, RingConsumer, RingProducer, FEATURE_PENDING_SEND_SIZE};

type Ring = Arc<AlignedRingBuffer>;

/// Guest pages: 16 for nothing in particular, then one data buffer per queue slot (32 × 128 KiB).
const GUEST_PAGES: usize = 16 + 32 * 32;

struct Client {
    drv: Storvsc,
    tx: RingProducer<Ring>,
    rx: RingConsumer<Ring>,
    buf: Vec<u8>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

fn ring(data: usize) -> Ring {
    let r = Arc::new(AlignedRingBuffer::for_ring(data));
    initialize_control_page(&*r, FEATURE_PENDING_SEND_SIZE).expect("ring");
    r
}

impl Client {
    fn start(io_threads: usize) -> Self {
        let (a, b) = (ring(256 * 1024), ring(256 * 1024));
        let disk = Arc::new(RamDisk::new(64 << 20));
        let mut worker = StorvspWorker::new(
            RingConsumer::new(a.clone()).expect("ring"),
            RingProducer::new(b.clone()).expect("ring"),
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_PAGES * 4096)]).expect("memory"),
            LunMap::new().with_backend(0, disk),
            StorvspConfig {
                io_threads,
                ..StorvspConfig::default()
            },
        )
        .expect("worker");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let r = worker.poll();
                if r.received == 0 && r.completed == 0 {
                    // Two cores may be shared with other work: let the client run.
                    std::thread::yield_now();
                }
            }
        });
        let mut c = Self {
            drv: Storvsc::new(),
            tx: RingProducer::new(a).expect("ring"),
            rx: RingConsumer::new(b).expect("ring"),
            buf: vec![0; 64 * 1024],
            stop,
            worker: Some(handle),
        };
        let first = c.drv.begin_init();
        let _ = first.write_to(&mut c.tx).expect("write");
        'init: loop {
            for e in c.events() {
                match e {
                    Event::Handshake(HandshakeStep::Send(r)) => {
                        let _ = r.write_to(&mut c.tx).expect("write");
                    }
                    Event::Handshake(HandshakeStep::Ready(_)) => break 'init,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        c
    }

    fn events(&mut self) -> Vec<Event> {
        let mut packets = Vec::new();
        let _ = self
            .rx
            .drain(&mut self.buf, usize::MAX, |info, bytes| {
                packets.push(bytes[..info.len].to_vec())
            })
            .expect("drain");
        packets
            .iter()
            .map(|p| self.drv.handle_packet(p).expect("packet"))
            .collect()
    }

    /// Completes `n` reads of `pages` 4 KiB pages keeping `qd` outstanding; returns the elapsed time.
    fn reads(&mut self, n: u64, qd: usize, pages: u64) -> Duration {
        let sectors = pages * 8;
        let mut pfns = Vec::with_capacity(pages as usize);
        let start = Instant::now();
        let (mut sent, mut done) = (0u64, 0u64);
        while done < n {
            while sent < n && self.drv.outstanding() < qd {
                let slot = sent % qd as u64;
                pfns.clear();
                pfns.extend((0..pages).map(|p| 16 + slot * pages + p));
                let r = self
                    .drv
                    .read(0, (sent * sectors) % (60 << 11), sectors as u32, &pfns, 0)
                    .expect("read");
                let _ = r.write_to(&mut self.tx).expect("write");
                sent += 1;
            }
            let events = self.events();
            if events.is_empty() {
                std::thread::yield_now();
            }
            for e in events {
                if let Event::Completed(c) = e {
                    assert_eq!(c.result, Ok(pages as u32 * 4096));
                    done += 1;
                }
            }
        }
        start.elapsed()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}

fn bench(c: &mut Criterion) {
    for (group, pages, cases) in [
        (
            "storvsp_4k_read",
            1,
            &[
                ("qd1_inline", 1, 0),
                ("qd32_inline", 32, 0),
                ("qd32_pool4", 32, 4),
            ][..],
        ),
        ("storvsp_128k_read", 32, &[("qd32_inline", 32, 0)][..]),
    ] {
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Elements(1));
        for &(name, qd, threads) in cases {
            let mut client = Client::start(threads);
            g.bench_function(name, |b| {
                b.iter_custom(|iters| client.reads(iters, qd, pages))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
