//! Rings over scattered pages (a host's view of guest ring pages found by PFN): packets whose
//! bytes span page boundaries and wrap around the ring end, through `PagedMemory` directly and
//! behind an `Arc`, in one thread and between two.

use std::ptr::NonNull;
use std::sync::Arc;
use std::thread;

use vmbus::mem::{PagedMemory, RingMemory, PAGE_SIZE};
use vmbus::packet::{Packet, PacketFlags};
use vmbus::ring::{
    initialize_control_page, ControlSnapshot, RingConsumer, RingError, RingProducer,
    FEATURE_PENDING_SEND_SIZE,
};

/// Five pages of backing memory, handed out in the order 3, 0, 4, 1, 2 (control page first).
struct Backing {
    base: NonNull<u8>,
    _words: Box<[u64]>,
}

impl Backing {
    fn new() -> Self {
        let mut words = vec![0u64; 5 * PAGE_SIZE / 8].into_boxed_slice();
        let base = NonNull::new(words.as_mut_ptr().cast::<u8>()).unwrap();
        Self {
            base,
            _words: words,
        }
    }

    fn paged(&self) -> PagedMemory<'_> {
        let pages: Vec<NonNull<u8>> = [3usize, 0, 4, 1, 2]
            .iter()
            .map(|&i| NonNull::new(self.base.as_ptr().wrapping_add(i * PAGE_SIZE)).unwrap())
            .collect();
        // SAFETY: each pointer addresses a whole 4 KiB page of `_words`, 8-aligned, which lives
        // (and is not moved: it is boxed) as long as `self` is borrowed. After `new` took the
        // pointer, nothing forms references to the words: they are only accessed through ring
        // memories.
        unsafe { PagedMemory::new(pages) }
    }
}

fn body(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64 * 31 + seq) as u8).collect()
}

fn len_of(seq: u64) -> usize {
    [0usize, 8, 77, 300, 1000, 4090, 5000, 9000][seq as usize % 8] + seq as usize % 13
}

#[test]
fn packets_span_pages_and_wrap_single_threaded() {
    let backing = Backing::new();
    let mem = backing.paged();
    initialize_control_page(&mem, FEATURE_PENDING_SEND_SIZE).unwrap();
    let mut p = RingProducer::new(&mem).unwrap();
    let mut c = RingConsumer::new(&mem).unwrap();
    let mut buf = vec![0u8; 4 * PAGE_SIZE];
    for seq in 0..400u64 {
        let body = body(seq, len_of(seq));
        let (a, b) = body.split_at(body.len() / 3);
        let _ = p.write_inband(seq, PacketFlags::empty(), &[a, b]).unwrap();
        // Every other packet is read in a drain of two.
        if seq % 2 == 1 {
            let mut next = seq - 1;
            let d = c
                .drain(&mut buf, usize::MAX, |_, bytes| {
                    let pkt = Packet::parse(bytes).unwrap();
                    assert_eq!(pkt.desc.trans_id, next);
                    let want = self::body(next, len_of(next));
                    assert_eq!(&pkt.payload[..want.len()], &want[..], "packet {next}");
                    next += 1;
                })
                .unwrap();
            assert_eq!(d.packets, 2);
        }
    }
    let ctl = ControlSnapshot::read(&mem);
    assert_eq!(ctl.read_index, ctl.write_index);
}

#[test]
fn packets_span_pages_and_wrap_between_threads() {
    let backing = Backing::new();
    let mem: Arc<PagedMemory<'_>> = Arc::new(backing.paged());
    initialize_control_page(&mem, FEATURE_PENDING_SEND_SIZE).unwrap();
    let count = 20_000u64;
    thread::scope(|s| {
        let producer_mem = Arc::clone(&mem);
        s.spawn(move || {
            let mut p = RingProducer::new(producer_mem).unwrap();
            for seq in 0..count {
                let body = body(seq, len_of(seq) / 2);
                loop {
                    match p.write_inband(seq, PacketFlags::empty(), &[&body]) {
                        Ok(_) => break,
                        Err(RingError::Full { .. }) => thread::yield_now(),
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        });
        let mut c = RingConsumer::new(Arc::clone(&mem)).unwrap();
        let mut buf = vec![0u8; 4 * PAGE_SIZE];
        let mut next = 0u64;
        while next < count {
            let d = c
                .drain(&mut buf, 16, |_, bytes| {
                    let pkt = Packet::parse(bytes).unwrap();
                    assert_eq!(pkt.desc.trans_id, next);
                    let want = body(next, len_of(next) / 2);
                    assert_eq!(&pkt.payload[..want.len()], &want[..], "packet {next}");
                    next += 1;
                })
                .unwrap();
            if d.packets == 0 {
                thread::yield_now();
            }
        }
    });
    assert_eq!(mem.len(), 5 * PAGE_SIZE);
}
