//! Split-queue tests against a fake device that works the rings the way rust-vmm's `virtio-queue` does on
//! the host (avail_event written when it re-enables notifications at the end of a pass, used_event checked
//! once per pass over everything it added), in ordinary memory: guest-physical address = address here.

use super::*;
use proptest::prelude::*;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::VecDeque;
use std::ptr::NonNull;

/// Page-aligned zeroed test memory, freed on drop; hands out aliasing `DmaRegion` views of itself.
struct TestMemory {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl TestMemory {
    fn new(bytes: usize) -> Self {
        let layout = Layout::from_size_align(bytes.next_multiple_of(PAGE_SIZE), PAGE_SIZE).unwrap();
        // SAFETY: non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).unwrap();
        Self { ptr, layout }
    }

    fn region(&self) -> DmaRegion {
        DmaRegion {
            va: self.ptr,
            pa: self.ptr.as_ptr() as u64,
            len: self.layout.size(),
        }
    }
}

impl Drop for TestMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A view of `len` bytes at guest-physical `pa` (test memory: pa is the address).
fn at(pa: u64, len: usize) -> DmaRegion {
    DmaRegion {
        va: NonNull::new(pa as *mut u8).unwrap(),
        pa,
        len,
    }
}

/// `event` lies in `[old, new)` modulo 2^16: the definition `vring_need_event` implements, phrased
/// independently.
fn in_window(event: u16, new: u16, old: u16) -> bool {
    event.wrapping_sub(old) < new.wrapping_sub(old)
}

/// The device side.
struct FakeDevice {
    ring: DmaRegion,
    layout: RingLayout,
    event_idx: bool,
    next_avail: u16,
    next_used: u16,
    added: u16,
    /// Chains taken and not yet completed: head and its buffers.
    taken: VecDeque<(u16, Vec<Buffer>)>,
}

impl FakeDevice {
    fn new(queue: &SplitQueue) -> Self {
        Self {
            ring: at(queue.desc_pa(), queue.layout.bytes),
            layout: queue.layout,
            event_idx: queue.event_idx(),
            next_avail: 0,
            next_used: 0,
            added: 0,
            taken: VecDeque::new(),
        }
    }

    fn u16_at(&self, offset: usize) -> u16 {
        self.ring.atomic_u16(offset).load(Ordering::Acquire)
    }

    fn desc(table: &DmaRegion, i: usize) -> (u64, u32, u16, u16) {
        let o = i * DESC_SIZE;
        (
            table.atomic_u64(o).load(Ordering::Relaxed),
            table.atomic_u32(o + 8).load(Ordering::Relaxed),
            table.atomic_u16(o + 12).load(Ordering::Relaxed),
            table.atomic_u16(o + 14).load(Ordering::Relaxed),
        )
    }

    /// Walks the chain at `head`, following an indirect table.
    fn chain(&self, head: u16) -> Vec<Buffer> {
        let mut out = Vec::new();
        let (mut table, mut i) = (
            at(self.ring.pa, usize::from(self.layout.size) * DESC_SIZE),
            usize::from(head),
        );
        loop {
            let (pa, len, flags, next) = Self::desc(&table, i);
            if flags & desc_flags::INDIRECT != 0 {
                assert_eq!(
                    flags,
                    desc_flags::INDIRECT,
                    "indirect descriptors stand alone"
                );
                assert!((len as usize).is_multiple_of(DESC_SIZE) && len > 0);
                table = at(pa, len as usize);
                i = 0;
                continue;
            }
            out.push(Buffer {
                pa,
                len,
                device_writes: flags & desc_flags::WRITE != 0,
            });
            if flags & desc_flags::NEXT == 0 {
                return out;
            }
            i = usize::from(next);
            assert!(out.len() <= 64, "descriptor loop");
        }
    }

    /// Takes every available chain.
    fn take_all(&mut self) -> usize {
        let avail = self.u16_at(self.layout.avail_idx());
        let mut n = 0;
        while self.next_avail != avail {
            let head = self.u16_at(self.layout.avail_ring(self.next_avail));
            let bufs = self.chain(head);
            self.taken.push_back((head, bufs));
            self.next_avail = self.next_avail.wrapping_add(1);
            n += 1;
        }
        n
    }

    /// Completes the `i`-th taken chain.
    fn complete(&mut self, i: usize) -> u16 {
        let (head, bufs) = self.taken.remove(i).unwrap();
        let written: u32 = bufs.iter().filter(|b| b.device_writes).map(|b| b.len).sum();
        let o = self.layout.used_elem(self.next_used);
        self.ring
            .atomic_u32(o)
            .store(u32::from(head), Ordering::Relaxed);
        self.ring
            .atomic_u32(o + 4)
            .store(written, Ordering::Relaxed);
        self.next_used = self.next_used.wrapping_add(1);
        self.added = self.added.wrapping_add(1);
        self.ring
            .atomic_u16(self.layout.used_idx())
            .store(self.next_used, Ordering::Release);
        head
    }

    /// virtio-queue's `enable_notification`: avail_event = where we stopped, then re-check.
    fn enable_notification(&mut self) -> bool {
        if self.event_idx {
            self.ring
                .atomic_u16(self.layout.avail_event())
                .store(self.next_avail, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        self.u16_at(self.layout.avail_idx()) != self.next_avail
    }

    /// virtio-queue's `needs_notification`, over everything added since the last call.
    fn needs_notification(&mut self) -> bool {
        fence(Ordering::SeqCst);
        let old = self
            .next_used
            .wrapping_sub(core::mem::take(&mut self.added));
        if self.event_idx {
            in_window(self.u16_at(self.layout.used_event()), self.next_used, old)
        } else {
            self.u16_at(self.layout.avail_flags()) & AVAIL_F_NO_INTERRUPT == 0
        }
    }

    /// One pass of host-vsp's worker: drain and complete in order until the re-check finds nothing,
    /// then decide the interrupt. Returns (completed, interrupt).
    fn pass(&mut self) -> (usize, bool) {
        let mut done = 0;
        loop {
            self.take_all();
            while !self.taken.is_empty() {
                self.complete(0);
                done += 1;
            }
            if !self.enable_notification() {
                break;
            }
        }
        (done, done > 0 && self.needs_notification())
    }
}

fn queue(mem: &TestMemory, size: u16, event_idx: bool) -> SplitQueue {
    SplitQueue::new(mem.region(), size, event_idx).unwrap()
}

fn data(pa: u64, len: u32, device_writes: bool) -> Buffer {
    Buffer {
        pa,
        len,
        device_writes,
    }
}

/// A virtio-blk-shaped request: header, data, status.
fn request(base: u64) -> [Buffer; 3] {
    [
        data(base, 16, false),
        data(base + 0x1000, 4096, true),
        data(base + 16, 1, true),
    ]
}

#[test]
fn need_event_is_linux_vring_need_event() {
    // (event, new, old) -> notify?
    let cases = [
        (0, 1, 0, true),
        (0, 0, 0, false),
        (5, 10, 5, true),
        (9, 10, 5, true),
        (10, 10, 5, false),
        (4, 10, 5, false),
        (7, 7, 7, false),
        // Wraparound: the window [0xfffe, 2) holds 0xfffe, 0xffff, 0, 1.
        (0xfffe, 2, 0xfffe, true),
        (0xffff, 2, 0xfffe, true),
        (0, 2, 0xfffe, true),
        (1, 2, 0xfffe, true),
        (2, 2, 0xfffe, false),
        (0xfffd, 2, 0xfffe, false),
        // A full-batch window right after the device caught up (the kick of every QD32 batch).
        (32, 64, 32, true),
        (0xffe0, 0, 0xffe0, true),
    ];
    for (event, new, old, want) in cases {
        assert_eq!(
            vring_need_event(event, new, old),
            want,
            "event {event:#x} new {new:#x} old {old:#x}"
        );
    }
}

proptest! {
    #[test]
    fn need_event_is_membership_of_the_window(event: u16, old: u16, len in 0u16..=0x8000) {
        let new = old.wrapping_add(len);
        prop_assert_eq!(vring_need_event(event, new, old), in_window(event, new, old));
    }
}

#[test]
fn layout_follows_the_spec() {
    let l = RingLayout::new(256).unwrap();
    assert_eq!((l.avail, l.used), (4096, 8192));
    assert_eq!(l.used_event(), 4096 + 4 + 512);
    assert_eq!(l.avail_event(), 8192 + 4 + 8 * 256);
    assert_eq!((l.bytes, l.pages()), (8192 + 4 + 2048 + 2, 3));
    assert_eq!(l.avail_ring(257), l.avail_ring(1));
    for bad in [0, 3, 100, 65535] {
        assert_eq!(RingLayout::new(bad), Err(QueueError::Size(bad)));
    }
    assert!(RingLayout::new(MAX_SIZE).is_ok());
    let small = TestMemory::new(4096);
    assert!(matches!(
        SplitQueue::new(small.region(), 256, true),
        Err(QueueError::Memory { need: 10246, .. })
    ));
}

#[test]
fn chains_use_free_descriptors_and_give_them_back() {
    let mem = TestMemory::new(3 * PAGE_SIZE);
    let mut q = queue(&mem, 8, false);
    let mut dev = FakeDevice::new(&q);
    let a = q.add(&request(0x10_0000)).unwrap();
    let b = q.add(&request(0x20_0000)).unwrap();
    assert_eq!((a, b, q.num_free(), q.in_flight()), (0, 3, 2, 2));
    assert_eq!(
        q.add(&request(0x30_0000)),
        Err(QueueError::Full { needed: 3, free: 2 })
    );
    assert_eq!(q.add(&[]), Err(QueueError::ChainLength(0)));
    assert!(q.kick_prepare(), "device flags allow notifications");
    assert_eq!(dev.take_all(), 2);
    assert_eq!(dev.taken[0].1, request(0x10_0000));
    assert_eq!(dev.taken[1].1, request(0x20_0000));
    // Out of order: b first.
    dev.complete(1);
    let u = q.pop_used().unwrap().unwrap();
    assert_eq!((u.head, u.len), (b, 4097));
    assert_eq!(q.pop_used(), Ok(None));
    assert_eq!((q.num_free(), q.in_flight()), (5, 1));
    // The freed descriptors are reused first, and the chain links them.
    let c = q.add(&request(0x40_0000)).unwrap();
    assert_eq!(c, b);
    dev.take_all();
    assert_eq!(dev.taken[1].1, request(0x40_0000));
    dev.complete(0);
    dev.complete(0);
    assert_eq!(q.pop_used().unwrap().unwrap().head, a);
    assert_eq!(q.pop_used().unwrap().unwrap().head, c);
    assert_eq!((q.num_free(), q.in_flight()), (8, 0));
}

#[test]
fn indirect_requests_take_one_ring_descriptor_each() {
    let mem = TestMemory::new(3 * PAGE_SIZE);
    let tables = TestMemory::new(16 * 64);
    let mut q = queue(&mem, 16, true);
    let mut dev = FakeDevice::new(&q);
    let t = tables.region();
    for i in 0..16 {
        write_indirect_table(&t, i * 64, &request(0x100_0000 * (i as u64 + 1)));
        q.add_indirect(t.pa + (i * 64) as u64, 3).unwrap();
    }
    assert_eq!(q.num_free(), 0);
    assert_eq!(
        q.add_indirect(t.pa, 3),
        Err(QueueError::Full { needed: 1, free: 0 })
    );
    assert_eq!(q.add_indirect(t.pa, 0), Err(QueueError::ChainLength(0)));
    assert_eq!(dev.take_all(), 16);
    for (i, (_, bufs)) in dev.taken.iter().enumerate() {
        assert_eq!(bufs[..], request(0x100_0000 * (i as u64 + 1)));
    }
}

/// The engine's pattern at QD32 on a 256-entry queue, through more than 2^16 chains so every index wraps:
/// one doorbell and one interrupt per batch, nothing lost, everything returned.
#[test]
fn one_kick_and_one_interrupt_per_batch_across_index_wraparound() {
    let mem = TestMemory::new(3 * PAGE_SIZE);
    let tables = TestMemory::new(256 * 64);
    let t = tables.region();
    let mut q = queue(&mem, 256, true);
    let mut dev = FakeDevice::new(&q);
    let (batches, depth) = (2100u64, 32usize);
    let (mut kicks, mut interrupts, mut popped) = (0u64, 0u64, 0u64);
    let mut slots: Vec<usize> = (0..256).collect();
    let mut slot_of = [0usize; 256];
    for _ in 0..batches {
        for _ in 0..depth {
            let slot = slots.pop().unwrap();
            write_indirect_table(&t, slot * 64, &request(0x1000 * slot as u64));
            let head = q.add_indirect(t.pa + (slot * 64) as u64, 3).unwrap();
            slot_of[usize::from(head)] = slot;
        }
        if q.kick_prepare() {
            kicks += 1;
            // About to sleep: interrupts back on, nothing done yet.
            assert!(q.enable_cb_delayed());
            let (done, irq) = dev.pass();
            assert_eq!(done, depth);
            interrupts += u64::from(irq);
        }
        q.disable_cb();
        while let Some(u) = q.pop_used().unwrap() {
            assert_eq!(u.len, 4097);
            slots.push(slot_of[usize::from(u.head)]);
            popped += 1;
        }
    }
    assert_eq!(popped, batches * depth as u64);
    assert!(popped > 65536, "indices wrapped");
    assert_eq!((kicks, interrupts), (batches, batches));
    assert_eq!((q.num_free(), q.in_flight()), (256, 0));
}

#[test]
fn no_doorbell_while_the_device_is_still_in_its_pass() {
    let mem = TestMemory::new(3 * PAGE_SIZE);
    let mut q = queue(&mem, 64, true);
    let mut dev = FakeDevice::new(&q);
    q.add(&[data(0x1000, 512, true)]).unwrap();
    assert!(q.kick_prepare(), "first chain: avail_event 0 is in [0, 1)");
    // The device is mid-pass (it has not re-enabled notifications): more chains need no doorbell...
    dev.take_all();
    for i in 0..5 {
        q.add(&[data(0x2000 + i * 0x1000, 512, true)]).unwrap();
    }
    assert!(!q.kick_prepare());
    // ...because its re-check after re-enabling finds them.
    let (done, _) = dev.pass();
    assert_eq!(done, 6);
    // Once it caught up, the next chain kicks again; nothing added, no kick.
    q.add(&[data(0x9000, 512, true)]).unwrap();
    assert!(q.kick_prepare());
    assert!(!q.kick_prepare());
}

#[test]
fn suppressed_completions_do_not_interrupt_and_reenabling_rechecks() {
    let mem = TestMemory::new(3 * PAGE_SIZE);
    let mut q = queue(&mem, 64, true);
    let mut dev = FakeDevice::new(&q);
    for i in 0..6 {
        q.add(&[data(0x1000 * (i + 1), 512, true)]).unwrap();
    }
    q.kick_prepare();
    assert!(q.callbacks_enabled(), "starts enabled");
    q.disable_cb();
    assert!(!q.callbacks_enabled());
    dev.take_all();
    for _ in 0..5 {
        dev.complete(0);
    }
    assert!(!dev.needs_notification());
    // Re-enabling sees what completed meanwhile: do not sleep.
    assert!(!q.enable_cb());
    q.disable_cb();
    for _ in 0..5 {
        q.pop_used().unwrap().unwrap();
    }
    assert!(q.enable_cb(), "nothing pending: may sleep");
    dev.complete(0);
    assert!(dev.needs_notification(), "the sleeper is woken");
    // Enabled while popping: used_event follows last_used (Linux's get_buf).
    q.pop_used().unwrap().unwrap();
    assert_eq!(dev.u16_at(q.layout.used_event()), 6);
}

#[test]
fn delayed_reenable_interrupts_after_three_quarters() {
    let mem = TestMemory::new(3 * PAGE_SIZE);
    let mut q = queue(&mem, 64, true);
    let mut dev = FakeDevice::new(&q);
    for i in 0..32 {
        q.add(&[data(0x1000 * (i + 1), 512, true)]).unwrap();
    }
    q.kick_prepare();
    q.disable_cb();
    dev.take_all();
    // 20 done before the driver re-enables: still below the threshold of 24, so it may sleep.
    for _ in 0..20 {
        dev.complete(0);
    }
    assert!(!dev.needs_notification());
    assert!(q.enable_cb_delayed());
    for _ in 0..4 {
        dev.complete(0);
    }
    assert!(
        !dev.needs_notification(),
        "24 used: used_event 24 not passed"
    );
    dev.complete(0);
    assert!(dev.needs_notification(), "the 25th passes used_event 24");
    // Past the threshold before re-enabling: do not sleep.
    q.disable_cb();
    for _ in 0..25 {
        q.pop_used().unwrap().unwrap();
    }
    for _ in 0..7 {
        dev.complete(0);
    }
    // 7 outstanding: threshold 5, already 7 used.
    assert!(!q.enable_cb_delayed());
}

#[test]
fn without_event_idx_the_flags_suppress() {
    let mem = TestMemory::new(3 * PAGE_SIZE);
    let mut q = queue(&mem, 16, false);
    let mut dev = FakeDevice::new(&q);
    let flags = |dev: &FakeDevice| dev.u16_at(dev.layout.avail_flags());
    assert_eq!(flags(&dev), 0, "starts enabled");
    q.disable_cb();
    assert_eq!(flags(&dev), AVAIL_F_NO_INTERRUPT);
    dev.ring
        .atomic_u16(dev.layout.used_flags())
        .store(USED_F_NO_NOTIFY, Ordering::Relaxed);
    q.add(&[data(0x1000, 512, true)]).unwrap();
    assert!(!q.kick_prepare(), "the device asked for no doorbells");
    dev.ring
        .atomic_u16(dev.layout.used_flags())
        .store(0, Ordering::Relaxed);
    q.add(&[data(0x2000, 512, true)]).unwrap();
    assert!(q.kick_prepare());
    assert!(q.enable_cb_delayed(), "falls back to enable_cb");
    assert_eq!(flags(&dev), 0);
    dev.take_all();
    dev.complete(0);
    assert!(dev.needs_notification());
    q.disable_cb();
    assert_eq!(flags(&dev), AVAIL_F_NO_INTERRUPT);
}

#[test]
fn a_broken_device_is_caught() {
    let mem = TestMemory::new(3 * PAGE_SIZE);
    let mut q = queue(&mem, 16, true);
    let dev = FakeDevice::new(&q);
    let head = q.add(&[data(0x1000, 512, true)]).unwrap();
    let used = |id: u32, idx: u16| {
        dev.ring
            .atomic_u32(dev.layout.used_elem(0))
            .store(id, Ordering::Relaxed);
        dev.ring
            .atomic_u16(dev.layout.used_idx())
            .store(idx, Ordering::Release);
    };
    used(99, 1);
    assert_eq!(q.pop_used(), Err(QueueError::BadUsedHead(99)));
    used(u32::from(head) + 1, 1);
    assert_eq!(
        q.pop_used(),
        Err(QueueError::BadUsedHead(u32::from(head) + 1))
    );
    used(u32::from(head), 2);
    assert_eq!(
        q.pop_used(),
        Err(QueueError::UsedOverrun {
            used: 2,
            in_flight: 1
        })
    );
    used(u32::from(head), 1);
    assert_eq!(q.pop_used().unwrap().unwrap().head, head);
}

#[derive(Debug, Clone)]
enum Step {
    Add(usize),
    Complete(usize),
    Pop,
    Kick,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1usize..=3).prop_map(Step::Add),
        any::<usize>().prop_map(Step::Complete),
        Just(Step::Pop),
        Just(Step::Kick),
    ]
}

proptest! {
    /// Any interleaving of adds, out-of-order completions, pops and kicks keeps the bookkeeping exact:
    /// free + held descriptors = size, chains come back in the device's order, nothing is lost.
    #[test]
    fn bookkeeping_survives_any_interleaving(steps in proptest::collection::vec(step(), 1..400)) {
        let mem = TestMemory::new(3 * PAGE_SIZE);
        let mut q = queue(&mem, 16, true);
        let mut dev = FakeDevice::new(&q);
        let mut held: std::collections::HashMap<u16, usize> = Default::default();
        let mut completed: VecDeque<u16> = VecDeque::new();
        let mut pa = 0x1000u64;
        for s in steps {
            match s {
                Step::Add(n) => {
                    let bufs: Vec<Buffer> = (0..n).map(|i| data(pa + i as u64, 8, i > 0)).collect();
                    pa += 0x1000;
                    match q.add(&bufs) {
                        Ok(head) => {
                            prop_assert!(held.insert(head, n).is_none(), "head {} twice", head);
                        }
                        Err(QueueError::Full { needed, free }) => {
                            prop_assert!(needed > usize::from(free));
                        }
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Step::Complete(pick) => {
                    dev.take_all();
                    if !dev.taken.is_empty() {
                        let i = pick % dev.taken.len();
                        completed.push_back(dev.complete(i));
                    }
                }
                Step::Pop => {
                    let got = q.pop_used().unwrap();
                    prop_assert_eq!(got.map(|u| u.head), completed.pop_front());
                    if let Some(u) = got {
                        held.remove(&u.head);
                    }
                }
                Step::Kick => {
                    q.kick_prepare();
                }
            }
            let in_use: usize = held.values().sum();
            prop_assert_eq!(usize::from(q.num_free()) + in_use, 16);
            prop_assert_eq!(usize::from(q.in_flight()), held.len());
        }
    }
}
