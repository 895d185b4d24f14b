//! The driver's discipline without a VM: its rings live in heap pages (identity mapped: the address is
//! the "guest-physical" one), its register window is plain memory (so setup writes just land), and a
//! fake device in the test walks the rings as the spec says a device does — taking available chains,
//! writing used entries, deciding interrupts with `vring_need_event` against `used_event` and asking for
//! kicks through `avail_event`.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::virtio::split_queue::vring_need_event;

static INTERRUPTS: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy)]
struct TestPlatform;

impl Platform for TestPlatform {
    fn cpuid(&self, _: u32, _: u32) -> [u32; 4] {
        [0; 4]
    }
    fn rdmsr(&self, _: u32) -> u64 {
        0
    }
    fn wrmsr(&self, _: u32, _: u64) {}
    fn alloc_dma(&self, pages: usize) -> Option<DmaRegion> {
        let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).ok()?;
        // SAFETY: non-zero size (pages ≥ 1 in every caller).
        let va = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some(DmaRegion {
            va,
            pa: va.as_ptr() as u64,
            len: layout.size(),
        })
    }
    fn free_dma(&self, region: DmaRegion) {
        let layout = Layout::from_size_align(region.len, PAGE_SIZE).unwrap();
        // SAFETY: allocated by `alloc_dma` with this layout.
        unsafe { dealloc(region.va.as_ptr(), layout) }
    }
    fn interrupt_count(&self, _: u8) -> u64 {
        INTERRUPTS.load(Ordering::SeqCst)
    }
    fn interrupt_total(&self) -> u64 {
        INTERRUPTS.load(Ordering::SeqCst)
    }
    fn wait_for_interrupt(&self, seen: u64) -> u64 {
        // A test never blocks: it says whether an interrupt came.
        seen.max(INTERRUPTS.load(Ordering::SeqCst))
    }
}

// SAFETY: test memory is host heap whose "physical" address is its address.
unsafe impl IdentityMapped for TestPlatform {
    fn platform() -> Self {
        TestPlatform
    }
}

/// A register window of plain memory that answers the probe's checks.
fn window() -> NonNull<u8> {
    let regs: &'static mut [u32; 0x400] = Box::leak(Box::new([0u32; 0x400]));
    regs[0] = crate::virtio::mmio::MAGIC;
    regs[1] = 2;
    regs[2] = DEVICE_ID_NET;
    regs[0x34 / 4] = u32::from(MAX_QUEUE_SIZE);
    NonNull::new(regs.as_mut_ptr().cast()).unwrap()
}

/// The driver with both queues and every receive buffer posted, as `probe` leaves it, but over
/// the plain-memory window (which cannot play the register protocol of `setup_queue`).
fn nic() -> VirtioNet<TestPlatform> {
    // SAFETY: the window is leaked memory used by nothing else.
    let transport = unsafe { MmioTransport::new(window(), 0x1000) }.unwrap();
    let p = TestPlatform;
    let (rxq, rx_slots) = make_queue(&p, &transport, RX_QUEUE, true).unwrap();
    let (txq, tx_slots) = make_queue(&p, &transport, TX_QUEUE, true).unwrap();
    let mut nic = VirtioNet {
        transport,
        rx: RxPath {
            queue: rxq,
            slots: rx_slots,
            ready: VecDeque::new(),
            staging: alloc::vec![0; MAX_FRAME_LEN],
            frames: 0,
            errors: 0,
        },
        tx: TxPath {
            queue: txq,
            slots: tx_slots,
            staging: alloc::vec![0; MAX_FRAME_LEN],
            frames: 0,
            busy: 0,
        },
        mac: [2, 0, 0, 0, 0, 1],
        link_up: true,
        features: WANTED_FEATURES,
        stats: VirtioNetStats::default(),
        broken: None,
        _platform: PhantomData,
    };
    nic.rx.queue.disable_cb();
    nic.tx.queue.disable_cb();
    nic.refill();
    nic
}

/// The device side of one queue, by the rings' addresses.
struct FakeQueue {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    next_avail: u16,
    next_used: u16,
    /// Interrupts the device would have raised.
    interrupts: u64,
}

fn rd16(pa: u64) -> u16 {
    // SAFETY: `pa` is inside a live ring of the driver (identity mapped heap), 2-aligned.
    unsafe { core::ptr::read_volatile(pa as *const u16) }
}
fn wr16(pa: u64, v: u16) {
    // SAFETY: as for `rd16`.
    unsafe { core::ptr::write_volatile(pa as *mut u16, v) }
}
fn rd32(pa: u64) -> u32 {
    // SAFETY: as for `rd16`, 4-aligned.
    unsafe { core::ptr::read_volatile(pa as *const u32) }
}
fn wr32(pa: u64, v: u32) {
    // SAFETY: as for `rd32`.
    unsafe { core::ptr::write_volatile(pa as *mut u32, v) }
}
fn rd64(pa: u64) -> u64 {
    // SAFETY: as for `rd16`, 8-aligned.
    unsafe { core::ptr::read_volatile(pa as *const u64) }
}

impl FakeQueue {
    fn of(q: &SplitQueue) -> Self {
        Self {
            desc: q.desc_pa(),
            avail: q.avail_pa(),
            used: q.used_pa(),
            size: q.size(),
            next_avail: 0,
            next_used: 0,
            interrupts: 0,
        }
    }

    fn avail_idx(&self) -> u16 {
        rd16(self.avail + 2)
    }

    /// Takes the next available chain: (head, address, length) of its one descriptor.
    fn take(&mut self) -> Option<(u16, u64, u32)> {
        if self.avail_idx() == self.next_avail {
            return None;
        }
        let head = rd16(self.avail + 4 + 2 * u64::from(self.next_avail % self.size));
        self.next_avail = self.next_avail.wrapping_add(1);
        let d = self.desc + 16 * u64::from(head);
        Some((head, rd64(d), rd32(d + 8)))
    }

    fn put_used(&mut self, head: u16, len: u32) {
        let at = self.used + 4 + 8 * u64::from(self.next_used % self.size);
        wr32(at, u32::from(head));
        wr32(at + 4, len);
        self.next_used = self.next_used.wrapping_add(1);
        wr16(self.used + 2, self.next_used);
    }

    /// One interrupt decision over entries `[old, next_used)`.
    fn decide(&mut self, old: u16) -> bool {
        let used_event = rd16(self.avail + 4 + 2 * u64::from(self.size));
        let fire = vring_need_event(used_event, self.next_used, old);
        if fire {
            self.interrupts += 1;
            INTERRUPTS.fetch_add(1, Ordering::SeqCst);
        }
        fire
    }

    /// Asks for a kick at the next chain (`avail_event` = next_avail).
    fn want_kick(&self) {
        wr16(self.used + 4 + 8 * u64::from(self.size), self.next_avail);
    }
}

fn frame(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

fn send_via_token(nic: &mut VirtioNet<TestPlatform>, f: &[u8]) {
    let token = Device::transmit(nic, Instant::ZERO).expect("a free slot");
    token.consume(f.len(), |buf| buf.copy_from_slice(f));
}

#[test]
fn transmit_rings_one_doorbell_per_batch_as_avail_event_asks() {
    let mut nic = nic();
    let mut dev = FakeQueue::of(&nic.tx.queue);
    let frames: Vec<Vec<u8>> = (0..12)
        .map(|i| frame(i, 60 + 100 * usize::from(i)))
        .collect();
    for f in &frames[..5] {
        send_via_token(&mut nic, f);
    }
    // avail_event is 0 (zeroed ring): the batch [0, 5) covers it.
    assert!(nic.flush().unwrap());
    assert!(!nic.flush().unwrap(), "nothing new");
    let mut seen = Vec::new();
    while let Some((head, pa, len)) = dev.take() {
        let mut b = vec![0u8; len as usize];
        // SAFETY: the device reads the driver's slot, identity mapped heap of `len` bytes.
        unsafe { core::ptr::copy_nonoverlapping(pa as *const u8, b.as_mut_ptr(), b.len()) };
        assert_eq!(&b[..NET_HDR_LEN], &[0; NET_HDR_LEN], "a zero header");
        seen.push(b[NET_HDR_LEN..].to_vec());
        dev.put_used(head, 0);
    }
    assert_eq!(seen, frames[..5]);
    // The device re-enables notifications at the end of its pass.
    dev.want_kick();
    assert!(!dev.decide(0), "transmit interrupts stay off");
    for f in &frames[5..8] {
        send_via_token(&mut nic, f);
    }
    assert!(nic.flush().unwrap(), "5 is in [5, 8)");
    // The device is still busy (has not re-armed): more frames need no doorbell.
    for f in &frames[8..10] {
        send_via_token(&mut nic, f);
    }
    assert!(!nic.flush().unwrap());
    assert_eq!(nic.stats().tx_kicks, 2);
    assert_eq!(nic.stats().nic.tx_frames, 10);
    assert_eq!(
        GuestNic::counters(&nic).signals,
        3,
        "two tx kicks and the refill's rx kick"
    );
    // Completed slots come back by polling, without an interrupt.
    while let Some((head, _, _)) = dev.take() {
        dev.put_used(head, 0);
    }
    nic.poll().unwrap();
    assert_eq!(nic.tx.slots.free.len(), usize::from(nic.tx.queue.size()));
    assert_eq!(dev.interrupts, 0);
}

/// Delivers `f` into the next posted receive buffer.
fn deliver(dev: &mut FakeQueue, f: &[u8]) -> u16 {
    let (head, pa, len) = dev.take().expect("a posted buffer");
    assert!(len as usize >= NET_HDR_LEN + MAX_FRAME_LEN);
    let mut hdr = [0u8; NET_HDR_LEN];
    hdr[10] = 1;
    // SAFETY: the device writes the driver's posted buffer of `len` bytes (identity mapped heap).
    unsafe {
        core::ptr::copy_nonoverlapping(hdr.as_ptr(), pa as *mut u8, NET_HDR_LEN);
        core::ptr::copy_nonoverlapping(f.as_ptr(), (pa as *mut u8).add(NET_HDR_LEN), f.len());
    }
    dev.put_used(head, (NET_HDR_LEN + f.len()) as u32);
    head
}

fn receive_all(nic: &mut VirtioNet<TestPlatform>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some((rx, _tx)) = Device::receive(nic, Instant::ZERO) {
        out.push(rx.consume(|b| b.to_vec()));
    }
    out
}

#[test]
fn receive_interrupts_only_when_the_driver_sleeps_and_rechecks_before_it_does() {
    let mut nic = nic();
    let size = nic.rx.queue.size();
    assert_eq!(nic.rx_posted(), usize::from(size), "every slot posted");
    assert_eq!(nic.stats().rx_kicks, 1, "one doorbell for the whole refill");
    let mut dev = FakeQueue::of(&nic.rx.queue);
    // Busy guest: notifications suppressed, three frames, no interrupt.
    let old = dev.next_used;
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(i, 100 + usize::from(i))).collect();
    for f in &frames {
        deliver(&mut dev, f);
    }
    assert!(!dev.decide(old));
    assert_eq!(nic.poll().unwrap(), 3);
    assert_eq!(receive_all(&mut nic), frames);
    // About to sleep with nothing pending: notifications on at the next entry.
    let before = nic.stats().sleeps;
    assert!(nic.wait());
    assert_eq!(nic.stats().sleeps, before + 1);
    let old = dev.next_used;
    deliver(&mut dev, &frame(9, 60));
    deliver(&mut dev, &frame(10, 60));
    assert!(dev.decide(old), "the sleeping driver is interrupted once");
    assert_eq!(dev.interrupts, 1);
    // It wakes, polls (suppressing again): further frames interrupt no more.
    assert_eq!(nic.poll().unwrap(), 2);
    let old = dev.next_used;
    deliver(&mut dev, &frame(11, 60));
    assert!(!dev.decide(old));
    // A frame that lands before the re-enable is seen by the re-check: no sleep.
    let sleeps = nic.stats().sleeps;
    receive_all(&mut nic);
    assert!(!nic.wait(), "the re-check found the frame");
    assert_eq!(nic.stats().sleeps, sleeps);
    assert_eq!(nic.poll().unwrap(), 1);
    assert_eq!(receive_all(&mut nic), vec![frame(11, 60)]);
}

#[test]
fn receive_buffers_are_refilled_in_batches_with_one_kick_when_the_device_asks() {
    let mut nic = nic();
    let size = usize::from(nic.rx.queue.size());
    let mut dev = FakeQueue::of(&nic.rx.queue);
    // The device has buffers: it asks for no kick (avail_event stays at 0, long passed).
    for i in 0..size / 2 - 1 {
        deliver(&mut dev, &frame(i as u8, 64));
    }
    nic.poll().unwrap();
    receive_all(&mut nic);
    nic.poll().unwrap();
    assert_eq!(
        nic.stats().refills,
        1,
        "fewer than half free: no refill yet"
    );
    deliver(&mut dev, &frame(0, 64));
    nic.poll().unwrap();
    receive_all(&mut nic);
    nic.poll().unwrap();
    assert_eq!(nic.stats().refills, 2, "half free: one batch");
    assert_eq!(nic.rx_posted(), size);
    assert_eq!(nic.stats().rx_kicks, 1, "the device did not ask");
    // The device runs dry and asks: the next refill batch kicks once.
    for i in 0..size {
        deliver(&mut dev, &frame(i as u8, 64));
    }
    dev.want_kick();
    nic.poll().unwrap();
    assert_eq!(receive_all(&mut nic).len(), size);
    nic.poll().unwrap();
    assert_eq!(nic.rx_posted(), size);
    assert_eq!(nic.stats().rx_kicks, 2);
}

#[test]
fn a_device_that_names_a_buffer_not_in_flight_is_reset_and_the_nic_fails() {
    let mut nic = nic();
    let mut dev = FakeQueue::of(&nic.rx.queue);
    // A bad length first: counted, the slot reused.
    let (head, _, _) = dev.take().unwrap();
    dev.put_used(head, 5);
    nic.poll().unwrap();
    assert_eq!(nic.stats().nic.rx_errors, 1);
    assert!(receive_all(&mut nic).is_empty());
    // The same head again: it is no longer in flight.
    dev.put_used(head, 100);
    assert!(matches!(
        nic.poll(),
        Err(VirtioNetError::Broken(QueueError::BadUsedHead(_)))
    ));
    // The plain-memory window keeps what was written last.
    assert_eq!(nic.transport.status(), 0, "the driver reset the device");
    assert!(nic.poll().is_err());
    assert!(Device::transmit(&mut nic, Instant::ZERO).is_none());
    assert!(!nic.wait());
}

#[test]
fn sizes_and_lengths() {
    assert_eq!(queue_size(0), 0);
    assert_eq!(queue_size(100), 64);
    assert_eq!(queue_size(1024), MAX_QUEUE_SIZE);
    assert!(!valid_rx_len(12));
    assert!(valid_rx_len(13));
    assert!(valid_rx_len(1526));
    assert!(!valid_rx_len(1527));
}
