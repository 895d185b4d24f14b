//! Shared harness of the storvsp ring tests: the guest's storvsc logic and a StorvspWorker joined by
//! two in-process rings, with guest memory in a `GuestMemoryMmap` at GPA 0.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use guest_drivers::storvsc::{Completion, Event, HandshakeStep, Request, Storvsc};
use host_vsp::backend::BlockBackend;
use host_vsp::guest_memory::{self, GuestMemoryMmap};
use host_vsp::synthetic::storvsp::{LunMap, StorvspConfig, StorvspWorker};
use storvsp_protocol::ProtocolVersion;
use vm_memory::GuestAddress;
use vmbus::mem::AlignedRingBuffer;
use vmbus::ring::{initialize_control_page, RingConsumer, RingProducer, FEATURE_PENDING_SEND_SIZE};

pub type Ring = Arc<AlignedRingBuffer>;

pub struct Rig {
    pub drv: Storvsc,
    pub to_host: RingProducer<Ring>,
    pub from_host: RingConsumer<Ring>,
    pub worker: StorvspWorker<Ring>,
    pub mem: GuestMemoryMmap,
    buf: Vec<u8>,
}

pub fn ring(data: usize) -> Ring {
    let r = Arc::new(AlignedRingBuffer::for_ring(data));
    initialize_control_page(&*r, FEATURE_PENDING_SEND_SIZE).unwrap();
    r
}

impl Rig {
    pub fn new(backend: Arc<dyn BlockBackend>, guest_pages: usize, config: StorvspConfig) -> Self {
        let (a, b) = (ring(256 * 1024), ring(64 * 1024));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), guest_pages * 4096)]).unwrap();
        let worker = StorvspWorker::new(
            RingConsumer::new(a.clone()).unwrap(),
            RingProducer::new(b.clone()).unwrap(),
            mem.clone(),
            LunMap::new().with_backend(0, backend),
            config,
        )
        .unwrap();
        Self {
            drv: Storvsc::new(),
            to_host: RingProducer::new(a).unwrap(),
            from_host: RingConsumer::new(b).unwrap(),
            worker,
            mem,
            buf: vec![0; 64 * 1024],
        }
    }

    /// Polls the worker (waiting briefly for pooled I/O) and feeds every packet to the driver.
    pub fn pump(&mut self) -> Vec<Event> {
        let r = self.worker.poll();
        assert!(!r.failed);
        let mut packets = Vec::new();
        let drained = self
            .from_host
            .drain(&mut self.buf, usize::MAX, |info, bytes| {
                packets.push(bytes[..info.len].to_vec());
            });
        let _ = drained.unwrap();
        if packets.is_empty() && r.in_flight > 0 {
            self.worker.wait_for_completion(Duration::from_millis(50));
        }
        packets
            .iter()
            .map(|p| self.drv.handle_packet(p).unwrap())
            .collect()
    }

    /// Feeds every completion in the host→guest ring to the driver, checking each moved `bytes`;
    /// returns how many there were.
    pub fn drain_completions(&mut self, bytes: u32) -> u64 {
        let mut packets = Vec::new();
        let drained = self.from_host.drain(&mut self.buf, usize::MAX, |info, b| {
            packets.push(b[..info.len].to_vec());
        });
        let _ = drained.unwrap();
        for p in &packets {
            match self.drv.handle_packet(p).unwrap() {
                Event::Completed(c) => assert_eq!(c.result, Ok(bytes), "{c:?}"),
                other => panic!("unexpected {other:?}"),
            }
        }
        packets.len() as u64
    }

    pub fn send(&mut self, r: &Request) {
        let _ = r.write_to(&mut self.to_host).unwrap();
    }

    pub fn handshake(&mut self) -> ProtocolVersion {
        let first = self.drv.begin_init();
        self.send(&first);
        loop {
            for e in self.pump() {
                match e {
                    Event::Handshake(HandshakeStep::Send(r)) => self.send(&r),
                    Event::Handshake(HandshakeStep::Ready(v)) => return v,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }

    /// Runs one request to completion.
    pub fn run(&mut self, r: Request) -> Completion {
        self.run_all(vec![r], 1).pop().unwrap()
    }

    /// Runs `requests` with at most `qd` outstanding; completions in arrival order.
    pub fn run_all(&mut self, requests: Vec<Request>, qd: usize) -> Vec<Completion> {
        let total = requests.len();
        let mut queue = requests.into_iter();
        let mut done = Vec::new();
        let mut outstanding = HashMap::new();
        while done.len() < total {
            while outstanding.len() < qd {
                let Some(r) = queue.next() else { break };
                self.send(&r);
                outstanding.insert(r.trans_id, ());
            }
            for e in self.pump() {
                let Event::Completed(c) = e else {
                    panic!("unexpected {e:?}")
                };
                assert!(
                    outstanding.remove(&c.trans_id).is_some(),
                    "completion matched by id"
                );
                done.push(c);
            }
        }
        done
    }

    /// Reads guest memory at `pfn`'s page + `offset`.
    pub fn peek(&self, pfn: u64, offset: u32, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        guest_memory::read(&self.mem, pfn * 4096 + u64::from(offset), &mut v).unwrap();
        v
    }

    pub fn poke(&self, pfn: u64, offset: u32, data: &[u8]) {
        guest_memory::write(&self.mem, pfn * 4096 + u64::from(offset), data).unwrap();
    }
}

/// Pages a buffer of `len` bytes at `offset` spans.
pub fn pages(len: u32, offset: u32) -> u64 {
    (u64::from(offset) + u64::from(len)).div_ceil(4096)
}
