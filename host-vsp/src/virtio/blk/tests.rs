//! virtio-blk without KVM: a test driver sets the device up through its MMIO registers and builds split
//! virtqueue rings and descriptor chains in a `GuestMemoryMmap`, then the device processes them.

use std::sync::Arc;

use vm_memory::GuestAddress;

use super::request::{req_type, status};
use super::transport::{device_status as ds, features as f, regs};
use super::*;
use crate::backend::RamDisk;
use crate::guest_memory::{self, GuestMemoryError};

/// The test driver's view of guest memory: little-endian scalars and byte copies.
#[derive(Clone)]
struct TestRam(GuestMemoryMmap);

impl TestRam {
    fn new(bytes: u64) -> Result<Self, vm_memory::mmap::FromRangesError> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes as usize)]).map(Self)
    }
    /// The same low 4 MiB as two regions touching at [`BUFS`], and 1 MiB more at 8 MiB after a hole.
    fn fragmented() -> Self {
        Self(
            GuestMemoryMmap::from_ranges(&[
                (GuestAddress(0), BUFS as usize),
                (GuestAddress(BUFS), (RAM - BUFS) as usize),
                (GuestAddress(FAR), 1 << 20),
            ])
            .unwrap(),
        )
    }
    fn memory(&self) -> GuestMemoryMmap {
        self.0.clone()
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), GuestMemoryError> {
        guest_memory::write(&self.0, gpa, data)
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        guest_memory::read(&self.0, gpa, buf)
    }
    fn write_u32(&self, gpa: u64, v: u32) -> Result<(), GuestMemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }
    fn write_u64(&self, gpa: u64, v: u64) -> Result<(), GuestMemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }
    fn read_u32(&self, gpa: u64) -> Result<u32, GuestMemoryError> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
}

const RAM: u64 = 4 << 20;
const QSIZE: u16 = 16;
const DESC: u64 = 0x10_0000;
const AVAIL: u64 = 0x10_1000;
const USED: u64 = 0x10_2000;
const BUFS: u64 = 0x20_0000;
/// A region after a hole in [`TestRam::fragmented`].
const FAR: u64 = 0x80_0000;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

struct Driver {
    ram: TestRam,
    dev: VirtioBlkDevice,
    avail_idx: u16,
    used_seen: u16,
}

fn w32(dev: &VirtioBlkDevice, reg: u64, v: u32) {
    dev.mmio_write(reg, &v.to_le_bytes());
}

fn r32(dev: &VirtioBlkDevice, reg: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.mmio_read(reg, &mut b);
    u32::from_le_bytes(b)
}

impl Driver {
    /// Negotiates `accept` (intersected with the offer) and sets up queue 0.
    fn new(disk: Arc<dyn BlockBackend>, accept: u64) -> Self {
        Self::with_ram(disk, accept, TestRam::new(RAM).unwrap())
    }

    fn with_ram(disk: Arc<dyn BlockBackend>, accept: u64, ram: TestRam) -> Self {
        let dev = VirtioBlkDevice::new(disk, VirtioBlkConfig::default()).unwrap();
        dev.attach_memory(ram.memory()).unwrap();
        assert_eq!(r32(&dev, regs::MAGIC), transport::MAGIC);
        assert_eq!(r32(&dev, regs::VERSION), 2);
        assert_eq!(r32(&dev, regs::DEVICE_ID), 2);
        w32(&dev, regs::STATUS, 0);
        w32(&dev, regs::STATUS, ds::ACKNOWLEDGE | ds::DRIVER);
        let mut offered = 0u64;
        for sel in 0..2 {
            w32(&dev, regs::DEVICE_FEATURES_SEL, sel);
            offered |= u64::from(r32(&dev, regs::DEVICE_FEATURES)) << (32 * sel);
        }
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
        w32(&dev, regs::QUEUE_SEL, 0);
        assert_eq!(
            r32(&dev, regs::QUEUE_NUM_MAX),
            u32::from(transport::QUEUE_MAX)
        );
        w32(&dev, regs::QUEUE_NUM, u32::from(QSIZE));
        for (lo, hi, gpa) in [
            (regs::QUEUE_DESC_LOW, regs::QUEUE_DESC_HIGH, DESC),
            (regs::QUEUE_DRIVER_LOW, regs::QUEUE_DRIVER_HIGH, AVAIL),
            (regs::QUEUE_DEVICE_LOW, regs::QUEUE_DEVICE_HIGH, USED),
        ] {
            w32(&dev, lo, gpa as u32);
            w32(&dev, hi, (gpa >> 32) as u32);
        }
        w32(&dev, regs::QUEUE_READY, 1);
        assert_eq!(r32(&dev, regs::QUEUE_READY), 1);
        w32(
            &dev,
            regs::STATUS,
            ds::ACKNOWLEDGE | ds::DRIVER | ds::FEATURES_OK | ds::DRIVER_OK,
        );
        Self {
            ram,
            dev,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC + 16 * u64::from(i);
        self.ram.write_u64(at, addr).unwrap();
        self.ram.write_u32(at + 8, len).unwrap();
        self.ram.write(at + 12, &flags.to_le_bytes()).unwrap();
        self.ram.write(at + 14, &next.to_le_bytes()).unwrap();
    }

    fn publish(&mut self, head: u16) {
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        self.ram.write(slot, &head.to_le_bytes()).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.ram
            .write(AVAIL + 2, &self.avail_idx.to_le_bytes())
            .unwrap();
    }

    fn set_used_event(&self, v: u16) {
        self.ram
            .write(AVAIL + 4 + 2 * u64::from(QSIZE), &v.to_le_bytes())
            .unwrap();
    }

    fn avail_event(&self) -> u16 {
        let mut b = [0u8; 2];
        self.ram
            .read(USED + 4 + 8 * u64::from(QSIZE), &mut b)
            .unwrap();
        u16::from_le_bytes(b)
    }

    /// Used entries (id, len) not seen yet.
    fn used(&mut self) -> Vec<(u32, u32)> {
        let mut b = [0u8; 2];
        self.ram.read(USED + 2, &mut b).unwrap();
        let idx = u16::from_le_bytes(b);
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = USED + 4 + 8 * u64::from(self.used_seen % QSIZE);
            out.push((
                self.ram.read_u32(at).unwrap(),
                self.ram.read_u32(at + 4).unwrap(),
            ));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    fn header(&self, at: u64, kind: u32, sector: u64) {
        self.ram.write_u32(at, kind).unwrap();
        self.ram.write_u32(at + 4, 0).unwrap();
        self.ram.write_u64(at + 8, sector).unwrap();
    }

    fn status_byte(&self, at: u64) -> u8 {
        let mut b = [0u8];
        self.ram.read(at, &mut b).unwrap();
        b[0]
    }

    /// Queues a 3-descriptor request at descriptors `d..d+3`, data at `data`, status at `st`.
    fn request(&mut self, d: u16, kind: u32, sector: u64, data: u64, len: u32, st: u64) {
        let hdr = st + 0x100;
        self.header(hdr, kind, sector);
        let data_flags = if kind == req_type::OUT {
            NEXT
        } else {
            NEXT | WRITE
        };
        self.desc(d, hdr, 16, NEXT, d + 1);
        self.desc(d + 1, data, len, data_flags, d + 2);
        self.desc(d + 2, st, 1, WRITE, 0);
        self.publish(d);
    }
}

const ALL: u64 = f::VERSION_1 | f::RING_EVENT_IDX | f::BLK_FLUSH | f::BLK_SEG_MAX | f::BLK_BLK_SIZE;

#[test]
fn config_space_and_feature_offer() {
    let disk = Arc::new(RamDisk::new(1 << 20));
    let drv = Driver::new(disk, ALL);
    let mut cap = [0u8; 8];
    drv.dev.mmio_read(regs::CONFIG, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 2048);
    assert_eq!(r32(&drv.dev, regs::CONFIG + 20), 512, "blk_size");
    assert_eq!(
        r32(&drv.dev, regs::CONFIG + 12),
        request::SEG_MAX,
        "seg_max"
    );
    let mut past = [0xAAu8; 4];
    drv.dev.mmio_read(0xFFC, &mut past);
    assert_eq!(past, [0; 4]);
    w32(&drv.dev, regs::DEVICE_FEATURES_SEL, 0);
    assert_eq!(r32(&drv.dev, regs::DEVICE_FEATURES) & (f::BLK_RO as u32), 0);
    let ro = VirtioBlkDevice::new(
        Arc::new(RamDisk::read_only_from(vec![0; 4096])),
        VirtioBlkConfig::default(),
    )
    .unwrap();
    assert_ne!(r32(&ro, regs::DEVICE_FEATURES) & (f::BLK_RO as u32), 0);
}

#[test]
fn features_ok_is_refused_for_unoffered_or_legacy_drivers() {
    let dev =
        VirtioBlkDevice::new(Arc::new(RamDisk::new(4096)), VirtioBlkConfig::default()).unwrap();
    for (lo, hi) in [(1u32 << 31, 1u32), (0, 0)] {
        w32(&dev, regs::STATUS, 0);
        w32(&dev, regs::DRIVER_FEATURES_SEL, 0);
        w32(&dev, regs::DRIVER_FEATURES, lo);
        w32(&dev, regs::DRIVER_FEATURES_SEL, 1);
        w32(&dev, regs::DRIVER_FEATURES, hi);
        w32(
            &dev,
            regs::STATUS,
            ds::ACKNOWLEDGE | ds::DRIVER | ds::FEATURES_OK,
        );
        assert_eq!(
            r32(&dev, regs::STATUS) & ds::FEATURES_OK,
            0,
            "{lo:#x}/{hi:#x}"
        );
    }
}

#[test]
fn write_read_flush_and_get_id_round_trip() {
    let disk = Arc::new(RamDisk::new(1 << 20));
    let mut drv = Driver::new(disk.clone(), ALL);
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    drv.ram.write(BUFS, &pattern).unwrap();
    drv.request(0, req_type::OUT, 8, BUFS, 8192, BUFS + 0x10000);
    drv.request(3, req_type::IN, 8, BUFS + 0x4000, 8192, BUFS + 0x10010);
    drv.request(6, req_type::FLUSH, 0, BUFS + 0x9000, 0, BUFS + 0x10020);
    // GET_ID: header + 20-byte writable buffer + status.
    drv.request(9, req_type::GET_ID, 0, BUFS + 0xA000, 20, BUFS + 0x10030);
    assert_eq!(drv.dev.process_queue(), 4);
    assert_eq!(&disk.snapshot()[8 * 512..][..8192], &pattern[..]);
    let mut back = vec![0u8; 8192];
    drv.ram.read(BUFS + 0x4000, &mut back).unwrap();
    assert_eq!(back, pattern);
    for at in [0x10000, 0x10010, 0x10020, 0x10030] {
        assert_eq!(drv.status_byte(BUFS + at), status::OK, "{at:#x}");
    }
    let mut id = [0u8; 20];
    drv.ram.read(BUFS + 0xA000, &mut id).unwrap();
    assert!(id.starts_with(b"viridian-virtio-blk"));
    assert_eq!(drv.used(), vec![(0, 1), (3, 8193), (6, 1), (9, 21)]);
    let s = drv.dev.stats();
    assert_eq!(
        (s.requests, s.reads, s.writes, s.flushes, s.errors),
        (4, 1, 1, 1, 0)
    );
}

#[test]
fn bad_requests_get_ioerr_or_unsupp() {
    let disk = Arc::new(RamDisk::new(64 * 512));
    let mut drv = Driver::new(disk, ALL);
    // Past the end of the disk.
    drv.request(0, req_type::IN, 63, BUFS, 1024, BUFS + 0x1000);
    // Overflowing sector number.
    drv.request(3, req_type::OUT, u64::MAX / 256, BUFS, 512, BUFS + 0x1010);
    // Data not a multiple of 512.
    drv.request(6, req_type::IN, 0, BUFS, 100, BUFS + 0x1020);
    // Unknown type.
    drv.request(9, 77, 0, BUFS, 512, BUFS + 0x1030);
    // Data buffer outside guest RAM.
    drv.request(12, req_type::IN, 0, RAM - 256, 512, BUFS + 0x1040);
    assert_eq!(drv.dev.process_queue(), 5);
    let expect = [
        status::IOERR,
        status::IOERR,
        status::IOERR,
        status::UNSUPP,
        status::IOERR,
    ];
    for (i, want) in expect.into_iter().enumerate() {
        assert_eq!(
            drv.status_byte(BUFS + 0x1000 + 0x10 * i as u64),
            want,
            "request {i}"
        );
    }
    assert_eq!(drv.dev.stats().errors, 5);
    assert_eq!(drv.dev.device_status() & ds::NEEDS_RESET, 0);
}

#[test]
fn read_only_disk_refuses_writes() {
    let disk = Arc::new(RamDisk::read_only_from(vec![0x11; 4096]));
    let mut drv = Driver::new(disk.clone(), ALL | f::BLK_RO);
    drv.request(0, req_type::OUT, 0, BUFS, 512, BUFS + 0x1000);
    drv.request(3, req_type::IN, 0, BUFS + 0x200, 512, BUFS + 0x1010);
    drv.dev.process_queue();
    assert_eq!(drv.status_byte(BUFS + 0x1000), status::IOERR);
    assert_eq!(drv.status_byte(BUFS + 0x1010), status::OK);
    assert_eq!(disk.snapshot(), vec![0x11; 4096]);
}

#[test]
fn hostile_chains_never_escape_guest_ram() {
    let disk = Arc::new(RamDisk::new(64 * 512));
    let mut drv = Driver::new(disk.clone(), ALL);
    let st = BUFS + 0x3000;
    // 1. A descriptor loop: 0 -> 1 -> 0 ... ; the chain walk stops at the queue size.
    drv.header(BUFS, req_type::OUT, 0);
    drv.desc(0, BUFS, 16, NEXT, 1);
    drv.desc(1, BUFS + 0x100, 512, NEXT, 0);
    drv.publish(0);
    // 2. Header beyond RAM, status in RAM.
    drv.desc(2, 0xFFFF_FFFF_FFFF_FF00, 16, NEXT, 3);
    drv.desc(3, st, 1, WRITE, 0);
    drv.publish(2);
    // 3. Readable after writable.
    drv.header(BUFS + 0x200, req_type::IN, 0);
    drv.desc(4, st + 1, 1, WRITE | NEXT, 5);
    drv.desc(5, BUFS + 0x200, 16, NEXT, 6);
    drv.desc(6, st + 2, 1, WRITE, 0);
    drv.publish(4);
    // 4. No writable byte at all: completed with length 0.
    drv.desc(7, BUFS + 0x200, 16, 0, 0);
    drv.publish(7);
    // 5. Next index beyond the table.
    drv.desc(8, BUFS + 0x200, 16, NEXT, 500);
    drv.publish(8);
    // 6. Short header.
    drv.desc(9, BUFS + 0x200, 8, NEXT, 10);
    drv.desc(10, st + 3, 1, WRITE, 0);
    drv.publish(9);
    assert_eq!(drv.dev.process_queue(), 6);
    assert_eq!(drv.status_byte(st), status::IOERR);
    assert_eq!(drv.status_byte(st + 2), status::IOERR);
    assert_eq!(drv.status_byte(st + 3), status::IOERR);
    let used = drv.used();
    assert_eq!(used.len(), 6);
    assert_eq!(used[3], (7, 0));
    assert_eq!(disk.snapshot(), vec![0; 64 * 512], "nothing was written");
    // The device still works.
    drv.request(11, req_type::IN, 0, BUFS, 512, st + 4);
    assert_eq!(drv.dev.process_queue(), 1);
    assert_eq!(drv.status_byte(st + 4), status::OK);
    // A head index beyond the table cannot be completed: the device stops until reset.
    drv.publish(1000);
    assert_eq!(drv.dev.process_queue(), 0);
    assert_ne!(drv.dev.device_status() & ds::NEEDS_RESET, 0);
    drv.request(0, req_type::IN, 0, BUFS, 512, st + 5);
    assert_eq!(
        drv.dev.process_queue(),
        0,
        "no processing while NEEDS_RESET"
    );
}

#[test]
fn avail_index_running_ahead_puts_the_device_in_needs_reset() {
    let mut drv = Driver::new(Arc::new(RamDisk::new(4096)), ALL);
    drv.ram
        .write(AVAIL + 2, &(QSIZE + 1).to_le_bytes())
        .unwrap();
    drv.avail_idx = QSIZE + 1;
    assert_eq!(drv.dev.process_queue(), 0);
    assert_ne!(drv.dev.device_status() & ds::NEEDS_RESET, 0);
    assert_ne!(r32(&drv.dev, regs::INTERRUPT_STATUS) & 2, 0);
    assert_eq!(drv.dev.stats().interrupts, 1);
    // Reset brings it back.
    w32(&drv.dev, regs::STATUS, 0);
    assert_eq!(drv.dev.device_status(), 0);
    assert_eq!(r32(&drv.dev, regs::QUEUE_READY), 0);
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event_is_crossed() {
    let mut drv = Driver::new(Arc::new(RamDisk::new(1 << 20)), ALL);
    // used_event = 2: the driver wants an interrupt only once the 3rd completion is used.
    drv.set_used_event(2);
    drv.request(0, req_type::IN, 0, BUFS, 512, BUFS + 0x1000);
    drv.dev.process_queue();
    assert_eq!(drv.dev.stats().interrupts, 0);
    assert_eq!(
        drv.avail_event(),
        1,
        "the device asks to be notified for the next request"
    );
    drv.request(3, req_type::IN, 0, BUFS, 512, BUFS + 0x1000);
    drv.dev.process_queue();
    assert_eq!(drv.dev.stats().interrupts, 0);
    drv.request(6, req_type::IN, 0, BUFS, 512, BUFS + 0x1000);
    drv.request(9, req_type::IN, 0, BUFS, 512, BUFS + 0x1000);
    drv.dev.process_queue();
    assert_eq!(drv.dev.stats().interrupts, 1);
    assert_eq!(drv.avail_event(), 4);
    assert_ne!(r32(&drv.dev, regs::INTERRUPT_STATUS) & 1, 0);
    w32(&drv.dev, regs::INTERRUPT_ACK, 1);
    assert_eq!(r32(&drv.dev, regs::INTERRUPT_STATUS), 0);
}

#[test]
fn without_event_idx_every_batch_interrupts_and_notify_register_works() {
    let mut drv = Driver::new(Arc::new(RamDisk::new(1 << 20)), ALL & !f::RING_EVENT_IDX);
    drv.request(0, req_type::IN, 0, BUFS, 512, BUFS + 0x1000);
    // No worker thread: a QueueNotify that reaches the handler processes inline.
    w32(&drv.dev, regs::QUEUE_NOTIFY, 0);
    assert_eq!(drv.used().len(), 1);
    let s = drv.dev.stats();
    assert_eq!((s.register_notifies, s.interrupts), (1, 1));
    // Notifies for queues that do not exist are ignored.
    w32(&drv.dev, regs::QUEUE_NOTIFY, 3);
    assert_eq!(drv.dev.stats().register_notifies, 1);
}

#[test]
fn queue_with_rings_outside_ram_never_becomes_ready() {
    let ram = TestRam::new(RAM).unwrap();
    let dev =
        VirtioBlkDevice::new(Arc::new(RamDisk::new(4096)), VirtioBlkConfig::default()).unwrap();
    dev.attach_memory(ram.memory()).unwrap();
    w32(&dev, regs::QUEUE_NUM, 16);
    w32(&dev, regs::QUEUE_DESC_LOW, 0xF000_0000);
    w32(&dev, regs::QUEUE_DRIVER_LOW, AVAIL as u32);
    w32(&dev, regs::QUEUE_DEVICE_LOW, USED as u32);
    w32(&dev, regs::QUEUE_READY, 1);
    assert_eq!(r32(&dev, regs::QUEUE_READY), 0);
}

/// Queues header + `data` descriptors + status at descriptors `d..`, data device-writable for IN.
fn chain(drv: &mut Driver, d: u16, kind: u32, sector: u64, data: &[(u64, u32)], st: u64) {
    let hdr = st + 0x100;
    drv.header(hdr, kind, sector);
    let flags = if kind == req_type::IN {
        NEXT | WRITE
    } else {
        NEXT
    };
    drv.desc(d, hdr, 16, NEXT, d + 1);
    for (i, &(addr, len)) in data.iter().enumerate() {
        let i = i as u16;
        drv.desc(d + 1 + i, addr, len, flags, d + 2 + i);
    }
    drv.desc(d + 1 + data.len() as u16, st, 1, WRITE, 0);
    drv.publish(d);
}

/// A request whose data descriptors cover several pages, cross a region boundary and continue in a
/// region after a hole moves its bytes between the disk and guest memory in order.
#[test]
fn data_spans_descriptors_pages_and_regions() {
    let disk = Arc::new(RamDisk::new(1 << 20));
    let mut drv = Driver::with_ram(disk.clone(), ALL, TestRam::fragmented());
    let data = [(BUFS - 0x1100, 0x2000), (FAR + 0x300, 0x1000)];
    let pattern: Vec<u8> = (0..0x3000u32).map(|i| (i * 11 % 251) as u8).collect();
    drv.ram.write(data[0].0, &pattern[..0x2000]).unwrap();
    drv.ram.write(data[1].0, &pattern[0x2000..]).unwrap();
    chain(&mut drv, 0, req_type::OUT, 4, &data, FAR + 0x8000);
    assert_eq!(drv.dev.process_queue(), 1);
    assert_eq!(drv.status_byte(FAR + 0x8000), status::OK);
    assert_eq!(&disk.snapshot()[4 * 512..][..0x3000], &pattern[..]);
    let back = [
        (FAR + 0x10000, 0x1000),
        (BUFS - 0x800, 0x1000),
        (FAR + 0x20000, 0x1000),
    ];
    chain(&mut drv, 4, req_type::IN, 4, &back, FAR + 0x8010);
    assert_eq!(drv.dev.process_queue(), 1);
    assert_eq!(drv.status_byte(FAR + 0x8010), status::OK);
    let mut got = Vec::new();
    for (addr, len) in back {
        let mut b = vec![0u8; len as usize];
        drv.ram.read(addr, &mut b).unwrap();
        got.extend(b);
    }
    assert_eq!(got, pattern);
    assert_eq!(drv.used(), vec![(0, 1), (4, 0x3001)]);
}

/// An IN request whose second data descriptor runs off its region into the hole gets IOERR with no
/// guest byte written (not even into the valid first descriptor); an OUT request like it writes no
/// disk byte.
#[test]
fn data_partly_outside_ram_fails_without_partial_effect() {
    let disk = Arc::new(RamDisk::new(1 << 20));
    disk.write_at(0, &[0x77; 0x3000], false).unwrap();
    let mut drv = Driver::with_ram(disk.clone(), ALL, TestRam::fragmented());
    drv.ram.write(FAR, &[0xEE; 0x1000]).unwrap();
    let data = [(FAR, 0x1000), (RAM - 0x1000, 0x2000)];
    chain(&mut drv, 0, req_type::IN, 0, &data, FAR + 0x8000);
    chain(
        &mut drv,
        4,
        req_type::OUT,
        0,
        &[(FAR + 0x4000, 0x1000), (RAM - 0x1000, 0x2000)],
        FAR + 0x8010,
    );
    assert_eq!(drv.dev.process_queue(), 2);
    assert_eq!(drv.status_byte(FAR + 0x8000), status::IOERR);
    assert_eq!(drv.status_byte(FAR + 0x8010), status::IOERR);
    let mut first = vec![0u8; 0x1000];
    drv.ram.read(FAR, &mut first).unwrap();
    assert_eq!(first, vec![0xEE; 0x1000], "no guest byte written");
    assert_eq!(
        &disk.snapshot()[..0x3000],
        &[0x77; 0x3000][..],
        "no disk byte written"
    );
}

/// The worker sleeps on the notify eventfd (an ioeventfd under KVM) and raises its interrupt
/// through the connected [`Interrupt`] (an irqfd under KVM): no register access involved.
#[test]
fn the_worker_serves_notifies_and_triggers_the_interrupt() {
    let disk = Arc::new(RamDisk::new(1 << 20));
    let mut drv = Driver::new(disk.clone(), ALL);
    let notify = EventFd::new(EFD_NONBLOCK).unwrap();
    let kick = notify.try_clone().unwrap();
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    drv.dev.connect_interrupt(irq.clone()).unwrap();
    assert!(matches!(
        drv.dev.connect_interrupt(irq.clone()),
        Err(VirtioBlkError::AlreadyAttached { what: "interrupt" })
    ));
    drv.dev.start(Some(notify)).unwrap();
    assert!(drv.dev.start(None).is_err(), "one worker");
    drv.ram.write(BUFS, &[0x42; 4096]).unwrap();
    drv.request(0, req_type::OUT, 0, BUFS, 4096, BUFS + 0x8000);
    kick.write(1).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while drv.dev.stats().interrupts == 0 {
        assert!(std::time::Instant::now() < deadline, "worker never ran");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(drv.status_byte(BUFS + 0x8000), status::OK);
    assert_eq!(&disk.snapshot()[..4096], &[0x42; 4096][..]);
    let s = drv.dev.stats();
    assert_eq!((s.register_notifies, s.interrupts), (0, 1), "{s:?}");
    assert_eq!(irq.read().unwrap(), 1);
    drv.dev.stop();
}

/// A RAM disk whose reads block until the test releases them, saying when one has started.
struct GatedDisk {
    disk: RamDisk,
    entered: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl BlockBackend for GatedDisk {
    fn capacity(&self) -> u64 {
        self.disk.capacity()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_vectored(
        &self,
        offset: u64,
        bufs: &crate::backend::IoBuffers<'_>,
    ) -> Result<(), crate::backend::DiskError> {
        let _ = self.entered.lock().unwrap().send(());
        let _ = self
            .release
            .lock()
            .unwrap()
            .recv_timeout(std::time::Duration::from_secs(30));
        self.disk.read_vectored(offset, bufs)
    }
    fn write_vectored(
        &self,
        offset: u64,
        bufs: &crate::backend::IoBuffers<'_>,
        fua: bool,
    ) -> Result<(), crate::backend::DiskError> {
        self.disk.write_vectored(offset, bufs, fua)
    }
    fn flush(&self) -> Result<(), crate::backend::DiskError> {
        self.disk.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), crate::backend::DiskError> {
        self.disk.discard(offset, len)
    }
}

#[test]
fn registers_answer_while_a_slow_request_runs_and_a_reset_meanwhile_drops_its_completion() {
    use std::sync::mpsc;
    use std::time::Duration;
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let disk = Arc::new(GatedDisk {
        disk: RamDisk::new(1 << 20),
        entered: std::sync::Mutex::new(entered_tx),
        release: std::sync::Mutex::new(release_rx),
    });
    let mut drv = Driver::new(disk, ALL);
    let notify = EventFd::new(EFD_NONBLOCK).unwrap();
    let kick = notify.try_clone().unwrap();
    drv.dev.start(Some(notify)).unwrap();
    drv.request(0, req_type::IN, 0, BUFS, 4096, BUFS + 0x8000);
    kick.write(1).unwrap();
    entered
        .recv_timeout(Duration::from_secs(10))
        .expect("the worker started the read");
    // The read is blocked in the backend. A vCPU's register accesses must not wait for it.
    let dev = &drv.dev;
    let answered = std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        s.spawn(move || {
            let status = r32(dev, regs::STATUS);
            let isr = r32(dev, regs::INTERRUPT_STATUS);
            let _ = tx.send((status, isr));
        });
        let answered = rx.recv_timeout(Duration::from_secs(10));
        // Release the read either way, so a failing run ends instead of hanging.
        let _ = release.send(());
        answered
    });
    let (status, isr) = answered.expect("an MMIO read waited for the disk I/O");
    assert_ne!(status & ds::DRIVER_OK, 0);
    assert_eq!(isr, 0, "nothing completed yet");
    // Let it complete.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while drv.used().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the read never completed"
        );
        std::thread::sleep(Duration::from_millis(1));
    }

    // A second read, and a reset while it runs: its completion goes nowhere.
    drv.request(3, req_type::IN, 8, BUFS, 4096, BUFS + 0x8000);
    kick.write(1).unwrap();
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    w32(&drv.dev, regs::STATUS, 0);
    let _ = release.send(());
    while drv.dev.stats().requests < 2 {
        assert!(std::time::Instant::now() < deadline, "the read never ended");
        std::thread::sleep(Duration::from_millis(1));
    }
    drv.dev.stop();
    assert!(
        drv.used().is_empty(),
        "a completion landed in a reset queue"
    );
    assert_eq!(drv.dev.device_status(), 0);
}

/// A RAM disk that plays a guest keeping the queue busy: every read it serves publishes descriptor
/// chain 0 again, until its budget runs out.
struct RefillingDisk {
    disk: RamDisk,
    ram: TestRam,
    avail_idx: std::sync::atomic::AtomicU16,
    budget: std::sync::atomic::AtomicU64,
}

impl BlockBackend for RefillingDisk {
    fn capacity(&self) -> u64 {
        self.disk.capacity()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_vectored(
        &self,
        offset: u64,
        bufs: &crate::backend::IoBuffers<'_>,
    ) -> Result<(), crate::backend::DiskError> {
        use std::sync::atomic::Ordering::SeqCst;
        if self
            .budget
            .fetch_update(SeqCst, SeqCst, |b| b.checked_sub(1))
            .is_ok()
        {
            let idx = self.avail_idx.fetch_add(1, SeqCst);
            let slot = AVAIL + 4 + 2 * u64::from(idx % QSIZE);
            self.ram.write(slot, &0u16.to_le_bytes()).unwrap();
            self.ram
                .write(AVAIL + 2, &idx.wrapping_add(1).to_le_bytes())
                .unwrap();
        }
        self.disk.read_vectored(offset, bufs)
    }
    fn write_vectored(
        &self,
        offset: u64,
        bufs: &crate::backend::IoBuffers<'_>,
        fua: bool,
    ) -> Result<(), crate::backend::DiskError> {
        self.disk.write_vectored(offset, bufs, fua)
    }
    fn flush(&self) -> Result<(), crate::backend::DiskError> {
        self.disk.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), crate::backend::DiskError> {
        self.disk.discard(offset, len)
    }
}

#[test]
fn a_driver_that_never_lets_the_queue_drain_cannot_keep_the_worker_from_stopping() {
    use std::sync::atomic::Ordering::SeqCst;
    const BUDGET: u64 = 2_000_000;
    let ram = TestRam::new(RAM).unwrap();
    let disk = Arc::new(RefillingDisk {
        disk: RamDisk::new(1 << 20),
        ram: ram.clone(),
        avail_idx: std::sync::atomic::AtomicU16::new(1),
        budget: std::sync::atomic::AtomicU64::new(BUDGET),
    });
    let mut drv = Driver::with_ram(disk.clone(), ALL, ram);
    let notify = EventFd::new(EFD_NONBLOCK).unwrap();
    let kick = notify.try_clone().unwrap();
    drv.dev.start(Some(notify)).unwrap();
    drv.request(0, req_type::IN, 0, BUFS, 512, BUFS + 0x8000);
    kick.write(1).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while drv.dev.stats().requests < 1000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flood never started"
        );
        std::thread::yield_now();
    }
    // One kick, and the queue never empties: the worker is inside one pass. Stop must end it.
    drv.dev.stop();
    let left = disk.budget.load(SeqCst);
    let served = drv.dev.stats().requests;
    eprintln!("stopped after {served} requests with {left} of {BUDGET} refills left");
    assert!(
        left > 0,
        "the worker stopped only when the driver stopped refilling ({served} requests)"
    );
}
