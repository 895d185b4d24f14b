//! virtio-net without KVM: a test driver sets the device up through its MMIO registers, builds both
//! split virtqueues in a `GuestMemoryMmap`, and the other end of a [`MemoryNet`] plays the network.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestAddress;

use super::chain::{MIN_RX_CHAIN, NET_HDR_LEN};
use super::*;
use crate::guest_memory;
use crate::net::MemoryNet;
use crate::virtio::mmio::{self, device_status as ds, features as f, regs};

const RAM: u64 = 4 << 20;
const QSIZE: u16 = 16;
/// Rings of queue q at RINGS + q * 0x10000: descriptors, avail +0x1000, used +0x2000.
const RINGS: u64 = 0x10_0000;
const BUFS: u64 = 0x20_0000;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const ALL: u64 = f::VERSION_1 | f::RING_EVENT_IDX | f::NET_MAC | f::NET_STATUS;

fn w32(dev: &VirtioNetDevice, reg: u64, v: u32) {
    dev.mmio_write(reg, &v.to_le_bytes());
}

fn r32(dev: &VirtioNetDevice, reg: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.mmio_read(reg, &mut b);
    u32::from_le_bytes(b)
}

struct Ring {
    avail_idx: u16,
    used_seen: u16,
}

struct Driver {
    mem: GuestMemoryMmap,
    dev: VirtioNetDevice,
    peer: MemoryNet,
    rings: [Ring; 2],
}

fn desc_base(q: u16) -> u64 {
    RINGS + u64::from(q) * 0x10000
}
fn avail_base(q: u16) -> u64 {
    desc_base(q) + 0x1000
}
fn used_base(q: u16) -> u64 {
    desc_base(q) + 0x2000
}

impl Driver {
    fn new(accept: u64) -> Self {
        let (device_end, peer) = MemoryNet::pair_with_capacity(8).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let dev = VirtioNetDevice::new(Box::new(device_end), VirtioNetConfig::new(MAC)).unwrap();
        dev.attach_memory(mem.clone()).unwrap();
        assert_eq!(r32(&dev, regs::MAGIC), mmio::MAGIC);
        assert_eq!(r32(&dev, regs::DEVICE_ID), 1);
        w32(&dev, regs::STATUS, ds::ACKNOWLEDGE | ds::DRIVER);
        let mut offered = 0u64;
        for sel in 0..2 {
            w32(&dev, regs::DEVICE_FEATURES_SEL, sel);
            offered |= u64::from(r32(&dev, regs::DEVICE_FEATURES)) << (32 * sel);
        }
        assert_eq!(offered, ALL, "no offloads, no MRG_RXBUF, no control queue");
        let chosen = offered & accept;
        for sel in 0..2 {
            w32(&dev, regs::DRIVER_FEATURES_SEL, sel);
            w32(&dev, regs::DRIVER_FEATURES, (chosen >> (32 * sel)) as u32);
        }
        w32(
            &dev,
            regs::STATUS,
            ds::ACKNOWLEDGE | ds::DRIVER | ds::FEATURES_OK,
        );
        assert_ne!(r32(&dev, regs::STATUS) & ds::FEATURES_OK, 0);
        let mut d = Self {
            mem,
            dev,
            peer,
            rings: [
                Ring {
                    avail_idx: 0,
                    used_seen: 0,
                },
                Ring {
                    avail_idx: 0,
                    used_seen: 0,
                },
            ],
        };
        d.setup_queues();
        w32(
            &d.dev,
            regs::STATUS,
            ds::ACKNOWLEDGE | ds::DRIVER | ds::FEATURES_OK | ds::DRIVER_OK,
        );
        d
    }

    fn setup_queues(&mut self) {
        for q in [RX_QUEUE, TX_QUEUE] {
            w32(&self.dev, regs::QUEUE_SEL, u32::from(q));
            assert_eq!(r32(&self.dev, regs::QUEUE_NUM_MAX), 256);
            assert_eq!(r32(&self.dev, regs::QUEUE_READY), 0);
            w32(&self.dev, regs::QUEUE_NUM, u32::from(QSIZE));
            for (lo, hi, gpa) in [
                (regs::QUEUE_DESC_LOW, regs::QUEUE_DESC_HIGH, desc_base(q)),
                (
                    regs::QUEUE_DRIVER_LOW,
                    regs::QUEUE_DRIVER_HIGH,
                    avail_base(q),
                ),
                (
                    regs::QUEUE_DEVICE_LOW,
                    regs::QUEUE_DEVICE_HIGH,
                    used_base(q),
                ),
            ] {
                w32(&self.dev, lo, gpa as u32);
                w32(&self.dev, hi, (gpa >> 32) as u32);
            }
            w32(&self.dev, regs::QUEUE_READY, 1);
            assert_eq!(r32(&self.dev, regs::QUEUE_READY), 1);
            self.rings[usize::from(q)] = Ring {
                avail_idx: 0,
                used_seen: 0,
            };
        }
    }

    fn write(&self, gpa: u64, data: &[u8]) {
        guest_memory::write(&self.mem, gpa, data).unwrap();
    }

    fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        guest_memory::read(&self.mem, gpa, &mut b).unwrap();
        b
    }

    fn u16_at(&self, gpa: u64) -> u16 {
        u16::from_le_bytes(self.read(gpa, 2).try_into().unwrap())
    }

    fn desc(&self, q: u16, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = desc_base(q) + 16 * u64::from(i);
        self.write(at, &addr.to_le_bytes());
        self.write(at + 8, &len.to_le_bytes());
        self.write(at + 12, &flags.to_le_bytes());
        self.write(at + 14, &next.to_le_bytes());
    }

    fn publish(&mut self, q: u16, head: u16) {
        let r = &mut self.rings[usize::from(q)];
        let slot = avail_base(q) + 4 + 2 * u64::from(r.avail_idx % QSIZE);
        r.avail_idx = r.avail_idx.wrapping_add(1);
        let idx = r.avail_idx;
        self.write(slot, &head.to_le_bytes());
        self.write(avail_base(q) + 2, &idx.to_le_bytes());
    }

    fn set_used_event(&self, q: u16, v: u16) {
        self.write(avail_base(q) + 4 + 2 * u64::from(QSIZE), &v.to_le_bytes());
    }

    fn avail_event(&self, q: u16) -> u16 {
        self.u16_at(used_base(q) + 4 + 8 * u64::from(QSIZE))
    }

    /// Used entries (id, len) of queue `q` not seen yet.
    fn used(&mut self, q: u16) -> Vec<(u32, u32)> {
        let idx = self.u16_at(used_base(q) + 2);
        let mut out = Vec::new();
        while self.rings[usize::from(q)].used_seen != idx {
            let seen = self.rings[usize::from(q)].used_seen;
            let at = used_base(q) + 4 + 8 * u64::from(seen % QSIZE);
            let e = self.read(at, 8);
            out.push((
                u32::from_le_bytes(e[..4].try_into().unwrap()),
                u32::from_le_bytes(e[4..].try_into().unwrap()),
            ));
            self.rings[usize::from(q)].used_seen = seen.wrapping_add(1);
        }
        out
    }

    /// Posts receive buffer `i` (descriptor i, 2 KiB at BUFS + i * 0x800).
    fn post_rx(&mut self, i: u16) {
        self.desc(RX_QUEUE, i, rx_buf(i), 2048, WRITE, 0);
        self.publish(RX_QUEUE, i);
    }

    /// Queues `frame` for transmit as one descriptor (header and frame) at descriptor `i`.
    fn send(&mut self, i: u16, frame: &[u8]) {
        let at = tx_buf(i);
        self.write(at, &[0; NET_HDR_LEN]);
        self.write(at + NET_HDR_LEN as u64, frame);
        self.desc(TX_QUEUE, i, at, (NET_HDR_LEN + frame.len()) as u32, 0, 0);
        self.publish(TX_QUEUE, i);
    }

    fn stats(&self) -> VirtioNetStats {
        self.dev.stats().get()
    }
}

fn rx_buf(i: u16) -> u64 {
    BUFS + u64::from(i) * 0x800
}

fn tx_buf(i: u16) -> u64 {
    BUFS + 0x10_0000 + u64::from(i) * 0x800
}

fn frame(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn configuration_space_holds_mac_and_link_status() {
    let drv = Driver::new(ALL);
    let mut mac = [0u8; 6];
    drv.dev.mmio_read(regs::CONFIG, &mut mac);
    assert_eq!(mac, MAC);
    let mut status = [0u8; 2];
    drv.dev
        .mmio_read(regs::CONFIG + CONFIG_STATUS as u64, &mut status);
    assert_eq!(u16::from_le_bytes(status), STATUS_LINK_UP);
    assert_eq!(r32(&drv.dev, regs::CONFIG_GENERATION), 0);
    // A third queue does not exist.
    w32(&drv.dev, regs::QUEUE_SEL, 2);
    assert_eq!(r32(&drv.dev, regs::QUEUE_NUM_MAX), 0);
    w32(&drv.dev, regs::QUEUE_NOTIFY, 2);
    assert_eq!(drv.stats().register_notifies, 0);
}

#[test]
fn transmitted_frames_reach_the_backend_in_order_with_one_interrupt_decision_per_pass() {
    let mut drv = Driver::new(ALL);
    // The driver wants no transmit interrupt (used_event far away, as Linux keeps it).
    drv.set_used_event(TX_QUEUE, 0x8000);
    let frames: Vec<Vec<u8>> = (0..3)
        .map(|i| frame(i, 60 + 500 * usize::from(i)))
        .collect();
    for (i, f) in frames.iter().enumerate() {
        drv.send(i as u16, f);
    }
    // Header in its own descriptor, the frame split over two more.
    let split = frame(9, 1514);
    drv.write(tx_buf(8), &[0; NET_HDR_LEN]);
    drv.write(tx_buf(9), &split[..700]);
    drv.write(tx_buf(10), &split[700..]);
    drv.desc(TX_QUEUE, 8, tx_buf(8), NET_HDR_LEN as u32, NEXT, 9);
    drv.desc(TX_QUEUE, 9, tx_buf(9), 700, NEXT, 10);
    drv.desc(TX_QUEUE, 10, tx_buf(10), 814, 0, 0);
    drv.publish(TX_QUEUE, 8);
    w32(&drv.dev, regs::QUEUE_NOTIFY, u32::from(TX_QUEUE));
    for f in frames.iter().chain([&split]) {
        assert_eq!(drv.peer.recv_bytes().as_ref(), Some(f));
    }
    assert_eq!(drv.used(TX_QUEUE), vec![(0, 0), (1, 0), (2, 0), (8, 0)]);
    let s = drv.stats();
    assert_eq!((s.tx_frames, s.tx_kicks, s.register_notifies), (4, 1, 1));
    assert_eq!(s.interrupts, 0, "used_event was not crossed");
    assert_eq!(drv.avail_event(TX_QUEUE), 4, "kick me at the next frame");
    // Now the driver asks for an interrupt at the next used entry: one for the batch of two.
    drv.set_used_event(TX_QUEUE, 4);
    drv.send(0, &frame(1, 100));
    drv.send(1, &frame(2, 100));
    drv.dev.process_queues();
    assert_eq!(drv.stats().interrupts, 1);
    assert_ne!(r32(&drv.dev, regs::INTERRUPT_STATUS) & 1, 0);
}

#[test]
fn bad_transmit_lengths_are_dropped_and_counted_without_stopping() {
    let mut drv = Driver::new(ALL);
    // Header only (no frame), and a frame longer than 1514.
    drv.write(tx_buf(0), &[0; NET_HDR_LEN]);
    drv.desc(TX_QUEUE, 0, tx_buf(0), NET_HDR_LEN as u32, 0, 0);
    drv.publish(TX_QUEUE, 0);
    drv.desc(TX_QUEUE, 1, tx_buf(1), (NET_HDR_LEN + 1515) as u32, 0, 0);
    drv.publish(TX_QUEUE, 1);
    drv.send(2, &frame(3, 64));
    drv.dev.process_queues();
    assert_eq!(drv.used(TX_QUEUE).len(), 3);
    let s = drv.stats();
    assert_eq!((s.tx_dropped_bad_length, s.tx_frames, s.failed), (2, 1, 0));
    assert_eq!(drv.peer.pending(), 1);
}

#[test]
fn received_frames_land_behind_the_header_and_wait_while_no_buffer_is_posted() {
    let mut drv = Driver::new(ALL);
    let frames: Vec<Vec<u8>> = (0..5)
        .map(|i| frame(i, 42 + 300 * usize::from(i)))
        .collect();
    for f in &frames {
        assert!(drv.peer.send_bytes(f).unwrap());
    }
    // No buffer yet: nothing is taken from the backend; the device asks for a kick.
    drv.dev.process_queues();
    assert_eq!(drv.stats().rx_no_buffer, 1);
    assert_eq!(drv.avail_event(RX_QUEUE), 0);
    for i in 0..3 {
        drv.post_rx(i);
    }
    drv.dev.process_queues();
    let used = drv.used(RX_QUEUE);
    assert_eq!(
        used,
        (0..3)
            .map(|i| (i as u32, (NET_HDR_LEN + frames[i].len()) as u32))
            .collect::<Vec<_>>()
    );
    for i in 0..3u16 {
        let hdr = drv.read(rx_buf(i), NET_HDR_LEN);
        assert_eq!(hdr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "num_buffers = 1");
        let body = drv.read(rx_buf(i) + NET_HDR_LEN as u64, frames[usize::from(i)].len());
        assert_eq!(body, frames[usize::from(i)]);
    }
    assert_eq!(
        drv.avail_event(RX_QUEUE),
        3,
        "kick me when you post the next"
    );
    let s = drv.stats();
    assert_eq!((s.rx_frames, s.rx_no_buffer, s.interrupts), (3, 2, 1));
    // A buffer split into header and frame parts (Linux's "big packets" layout) works too.
    drv.desc(RX_QUEUE, 5, rx_buf(5), NET_HDR_LEN as u32, WRITE | NEXT, 6);
    drv.desc(RX_QUEUE, 6, rx_buf(6), 1514, WRITE, 0);
    drv.publish(RX_QUEUE, 5);
    drv.post_rx(7);
    drv.dev.process_queues();
    assert_eq!(
        drv.used(RX_QUEUE),
        vec![
            (5, (NET_HDR_LEN + frames[3].len()) as u32),
            (7, (NET_HDR_LEN + frames[4].len()) as u32)
        ]
    );
    assert_eq!(drv.read(rx_buf(6), frames[3].len()), frames[3]);
    assert_eq!(
        drv.stats().rx_frames,
        5,
        "the frames waited for buffers, none was lost"
    );
}

#[test]
fn a_frame_too_large_for_any_buffer_is_dropped_by_the_backend_and_counted() {
    let mut drv = Driver::new(ALL);
    drv.post_rx(0);
    let mut big = frame(1, 1514);
    big.push(0);
    // MemoryNet refuses to carry more than a frame, so give the device's end a too-large frame by
    // a shorter buffer: a receive chain of exactly MIN_RX_CHAIN takes every legal frame.
    assert!(drv.peer.send_bytes(&big).is_err());
    assert_eq!(MIN_RX_CHAIN, 1526);
    assert!(drv.peer.send_bytes(&big[..1514]).unwrap());
    drv.dev.process_queues();
    assert_eq!(drv.used(RX_QUEUE), vec![(0, 1526)]);
}

#[test]
fn a_short_or_readable_receive_chain_stops_the_device_until_reset() {
    let mut drv = Driver::new(ALL);
    assert!(drv.peer.send_bytes(&frame(0, 60)).unwrap());
    drv.desc(RX_QUEUE, 0, rx_buf(0), 1000, WRITE, 0);
    drv.publish(RX_QUEUE, 0);
    drv.dev.process_queues();
    assert_ne!(drv.dev.device_status() & ds::NEEDS_RESET, 0);
    assert_ne!(r32(&drv.dev, regs::INTERRUPT_STATUS) & 2, 0);
    let s = drv.stats();
    assert_eq!((s.failed, s.interrupts, s.rx_frames), (1, 1, 0));
    assert!(drv.used(RX_QUEUE).is_empty());
    // Nothing runs while NEEDS_RESET.
    drv.post_rx(1);
    drv.send(0, &frame(1, 60));
    drv.dev.process_queues();
    assert_eq!(drv.stats().tx_frames, 0);
    // Reset and set up again: the device works.
    w32(&drv.dev, regs::STATUS, 0);
    assert_eq!(drv.dev.device_status(), 0);
    w32(&drv.dev, regs::STATUS, ds::ACKNOWLEDGE | ds::DRIVER);
    w32(&drv.dev, regs::DRIVER_FEATURES_SEL, 1);
    w32(&drv.dev, regs::DRIVER_FEATURES, 1);
    w32(
        &drv.dev,
        regs::STATUS,
        ds::ACKNOWLEDGE | ds::DRIVER | ds::FEATURES_OK,
    );
    drv.setup_queues();
    w32(
        &drv.dev,
        regs::STATUS,
        ds::ACKNOWLEDGE | ds::DRIVER | ds::FEATURES_OK | ds::DRIVER_OK,
    );
    drv.post_rx(0);
    drv.dev.process_queues();
    assert_eq!(drv.used(RX_QUEUE), vec![(0, (NET_HDR_LEN + 60) as u32)]);
}

#[test]
fn hostile_transmit_chains_stop_only_this_device() {
    for case in 0..4 {
        let mut drv = Driver::new(ALL);
        match case {
            // A device-writable descriptor in a transmit chain.
            0 => {
                drv.desc(TX_QUEUE, 0, tx_buf(0), 100, WRITE, 0);
                drv.publish(TX_QUEUE, 0);
            }
            // A loop.
            1 => {
                drv.desc(TX_QUEUE, 0, tx_buf(0), 100, NEXT, 1);
                drv.desc(TX_QUEUE, 1, tx_buf(1), 100, NEXT, 0);
                drv.publish(TX_QUEUE, 0);
            }
            // Outside guest RAM.
            2 => {
                drv.desc(TX_QUEUE, 0, RAM - 10, 100, 0, 0);
                drv.publish(TX_QUEUE, 0);
            }
            // The available index runs ahead of the queue size.
            _ => {
                drv.write(avail_base(TX_QUEUE) + 2, &(QSIZE + 1).to_le_bytes());
            }
        }
        drv.dev.process_queues();
        assert_ne!(drv.dev.device_status() & ds::NEEDS_RESET, 0, "case {case}");
        assert_eq!(drv.stats().failed, 1, "case {case}");
        assert_eq!(drv.peer.pending(), 0, "case {case}: nothing sent");
    }
}

#[test]
fn without_event_idx_the_flags_suppress_and_every_batch_interrupts() {
    let mut drv = Driver::new(ALL & !f::RING_EVENT_IDX);
    drv.send(0, &frame(0, 60));
    drv.send(1, &frame(1, 60));
    w32(&drv.dev, regs::QUEUE_NOTIFY, u32::from(TX_QUEUE));
    assert_eq!(drv.used(TX_QUEUE).len(), 2);
    assert_eq!(drv.stats().interrupts, 1);
    // No buffer and a frame waiting: the device wants the receive kick (used flags 0).
    assert!(drv.peer.send_bytes(&frame(2, 60)).unwrap());
    drv.dev.process_queues();
    assert_eq!(drv.u16_at(used_base(RX_QUEUE)), 0);
    drv.post_rx(0);
    drv.dev.process_queues();
    assert_eq!(drv.used(RX_QUEUE).len(), 1);
    assert_eq!(drv.stats().interrupts, 2);
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The worker sleeps on the notify eventfds (ioeventfds under KVM) and the backend, and interrupts
/// through the connected [`Interrupt`] (an irqfd under KVM): no register access on the data path.
#[test]
fn the_worker_serves_kicks_and_backend_frames_and_triggers_the_interrupt() {
    let mut drv = Driver::new(ALL);
    let rx_notify = EventFd::new(EFD_NONBLOCK).unwrap();
    let tx_notify = EventFd::new(EFD_NONBLOCK).unwrap();
    let (rx_kick, tx_kick) = (
        rx_notify.try_clone().unwrap(),
        tx_notify.try_clone().unwrap(),
    );
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    drv.dev.connect_interrupt(irq.clone()).unwrap();
    drv.dev.start([Some(rx_notify), Some(tx_notify)]).unwrap();
    assert!(drv.dev.start([None, None]).is_err(), "one worker");
    for i in 0..4 {
        drv.post_rx(i);
    }
    rx_kick.write(1).unwrap();
    wait_for("the rx kick was seen", || drv.stats().rx_kicks == 1);
    // Frames from the network wake the worker through the backend's fd.
    for i in 0..3 {
        assert!(drv.peer.send_bytes(&frame(i, 100)).unwrap());
    }
    wait_for("frames delivered", || drv.stats().rx_frames == 3);
    assert_eq!(drv.used(RX_QUEUE).len(), 3);
    assert!(irq.read().unwrap() >= 1);
    drv.send(0, &frame(7, 200));
    tx_kick.write(1).unwrap();
    wait_for("frame sent", || drv.stats().tx_frames == 1);
    wait_for("the peer has it", || drv.peer.pending() == 1);
    assert_eq!(drv.peer.recv_bytes().unwrap(), frame(7, 200));
    let s = drv.stats();
    assert_eq!((s.register_notifies, s.tx_kicks), (0, 1), "{s:?}");
    drv.dev.stop();
}
