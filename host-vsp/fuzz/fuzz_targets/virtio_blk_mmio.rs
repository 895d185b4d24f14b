//! A hostile virtio driver against host-vsp's virtio-blk device: MMIO register reads and writes
//! (`VirtioBlkDevice::mmio_read`/`mmio_write`, the entry points the MMIO-exit glue calls) and
//! guest memory holding whatever the input puts there — descriptor tables with loops, indirect
//! descriptors, huge lengths and addresses outside RAM, avail rings with any index, request
//! headers of any type and sector. QueueNotify writes process the queue inline (no worker thread),
//! as do explicit `process_queue` calls. RAM is 64 KiB at 0 over a 64 KiB RAM disk.
//!
//! Input: a setup byte (bit 0: skip the standard driver setup of queue 0 with descriptors at 0x1000,
//! avail at 0x2000, used at 0x3000; bits 1–3: its queue size as a power of two; bit 4: no
//! EVENT_IDX offered), then steps `[op, ...]`: a register write or read (any offset in the window,
//! width 1/2/4/8), a descriptor, an avail-ring push, a request header, raw bytes, a notify or a
//! queue pass. Nothing may panic or loop forever.
#![no_main]

use std::sync::Arc;

use host_vsp::backend::RamDisk;
use host_vsp::guest_memory::{self, GuestMemoryMmap};
use host_vsp::virtio::blk::request::req_type;
use host_vsp::virtio::blk::transport::{device_status as ds, regs};
use host_vsp::virtio::blk::{VirtioBlkConfig, VirtioBlkDevice};
use host_vsp_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const RAM: u64 = 64 * 1024;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const REGS: [u64; 24] = [
    regs::MAGIC,
    regs::DEVICE_FEATURES,
    regs::DEVICE_FEATURES_SEL,
    regs::DRIVER_FEATURES,
    regs::DRIVER_FEATURES_SEL,
    regs::QUEUE_SEL,
    regs::QUEUE_NUM_MAX,
    regs::QUEUE_NUM,
    regs::QUEUE_READY,
    regs::QUEUE_NOTIFY,
    regs::INTERRUPT_STATUS,
    regs::INTERRUPT_ACK,
    regs::STATUS,
    regs::STATUS,
    regs::QUEUE_DESC_LOW,
    regs::QUEUE_DESC_HIGH,
    regs::QUEUE_DRIVER_LOW,
    regs::QUEUE_DRIVER_HIGH,
    regs::QUEUE_DEVICE_LOW,
    regs::QUEUE_DEVICE_HIGH,
    regs::CONFIG_GENERATION,
    regs::CONFIG,
    regs::CONFIG + 0x14,
    regs::CONFIG + 0x20,
];

fn w32(dev: &VirtioBlkDevice, reg: u64, v: u32) {
    dev.mmio_write(reg, &v.to_le_bytes());
}

/// The driver initialisation of virtio 1.x §3.1.1 for queue 0, accepting every offered feature.
fn standard_setup(dev: &VirtioBlkDevice, queue_size: u32) {
    w32(dev, regs::STATUS, 0);
    w32(dev, regs::STATUS, ds::ACKNOWLEDGE | ds::DRIVER);
    for sel in 0..2 {
        let mut f = [0u8; 4];
        w32(dev, regs::DEVICE_FEATURES_SEL, sel);
        dev.mmio_read(regs::DEVICE_FEATURES, &mut f);
        w32(dev, regs::DRIVER_FEATURES_SEL, sel);
        dev.mmio_write(regs::DRIVER_FEATURES, &f);
    }
    w32(
        dev,
        regs::STATUS,
        ds::ACKNOWLEDGE | ds::DRIVER | ds::FEATURES_OK,
    );
    w32(dev, regs::QUEUE_SEL, 0);
    w32(dev, regs::QUEUE_NUM, queue_size);
    for (lo, hi, gpa) in [
        (regs::QUEUE_DESC_LOW, regs::QUEUE_DESC_HIGH, DESC),
        (regs::QUEUE_DRIVER_LOW, regs::QUEUE_DRIVER_HIGH, AVAIL),
        (regs::QUEUE_DEVICE_LOW, regs::QUEUE_DEVICE_HIGH, USED),
    ] {
        w32(dev, lo, gpa as u32);
        w32(dev, hi, (gpa >> 32) as u32);
    }
    w32(dev, regs::QUEUE_READY, 1);
    let ok = ds::ACKNOWLEDGE | ds::DRIVER | ds::FEATURES_OK | ds::DRIVER_OK;
    w32(dev, regs::STATUS, ok);
}

fn register(input: &mut Input<'_>) -> u64 {
    match input.u8() {
        s @ 0..=199 => REGS[usize::from(s) % REGS.len()],
        _ => u64::from(input.u16() % 0x1000),
    }
}

fn width(input: &mut Input<'_>) -> usize {
    [4, 4, 1, 2, 8, 4, 4, 4][usize::from(input.u8() % 8)]
}

fn length(input: &mut Input<'_>) -> u32 {
    match input.u8() % 6 {
        0 => 16,
        1 => 512,
        2 => 1,
        3 => u32::from(input.u16()),
        4 => u32::MAX - u32::from(input.u8()),
        _ => input.u32(),
    }
}

fn write(mem: &GuestMemoryMmap, gpa: u64, bytes: &[u8]) {
    let _ = guest_memory::write(mem, gpa, bytes);
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let setup = input.u8();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let config = VirtioBlkConfig {
        event_idx: setup & 0x10 == 0,
        ..VirtioBlkConfig::default()
    };
    let dev = VirtioBlkDevice::new(Arc::new(RamDisk::new(RAM)), config).unwrap();
    dev.attach_memory(mem.clone()).unwrap();
    dev.connect_interrupt(Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()))
        .unwrap();
    let queue_size = 1u16 << ((setup >> 1) & 7);
    if setup & 1 == 0 {
        standard_setup(&dev, u32::from(queue_size));
    }
    let mut avail_idx = 0u16;
    let mut buf = [0u8; 8];
    while !input.is_empty() {
        match input.u8() % 10 {
            0 => {
                let (reg, n) = (register(&mut input), width(&mut input));
                buf = input.array();
                dev.mmio_write(reg, &buf[..n]);
            }
            1 => {
                let (reg, n) = (register(&mut input), width(&mut input));
                dev.mmio_read(reg, &mut buf[..n]);
            }
            2 | 3 => {
                // Descriptor {addr, len, flags (NEXT 1, WRITE 2, INDIRECT 4), next}.
                let index = u64::from(input.u8() % 32);
                let addr = input.gpa(RAM);
                let len = length(&mut input);
                let flags = u16::from(input.u8() & 7) | (u16::from(input.u8() >= 0xF0) << 8);
                let next = u16::from(input.u8() % 34);
                let mut d = [0u8; 16];
                d[..8].copy_from_slice(&addr.to_le_bytes());
                d[8..12].copy_from_slice(&len.to_le_bytes());
                d[12..14].copy_from_slice(&flags.to_le_bytes());
                d[14..16].copy_from_slice(&next.to_le_bytes());
                write(&mem, DESC + index * 16, &d);
            }
            4 => {
                let head = match input.u8() {
                    h @ 0..=239 => u16::from(h) % queue_size.max(1),
                    _ => input.u16(),
                };
                let slot = u64::from(avail_idx % queue_size.max(1));
                write(&mem, AVAIL + 4 + slot * 2, &head.to_le_bytes());
                avail_idx = match input.u8() {
                    0..=239 => avail_idx.wrapping_add(1),
                    _ => input.u16(),
                };
                write(&mem, AVAIL + 2, &avail_idx.to_le_bytes());
            }
            5 => {
                // Request header {type, reserved, sector} somewhere (usually in the buffer area).
                let at = 0x4000 + u64::from(input.u16()) % (RAM - 0x4000);
                let kind = match input.u8() % 6 {
                    0 => req_type::IN,
                    1 => req_type::OUT,
                    2 => req_type::FLUSH,
                    3 => req_type::GET_ID,
                    _ => input.u32(),
                };
                let sector = match input.u8() % 3 {
                    0 => u64::from(input.u8()),
                    1 => 127,
                    _ => input.u64(),
                };
                let mut h = [0u8; 16];
                h[..4].copy_from_slice(&kind.to_le_bytes());
                h[8..].copy_from_slice(&sector.to_le_bytes());
                write(&mem, at, &h);
            }
            6 => {
                let at = u64::from(input.u16());
                let n = usize::from(input.u8());
                write(&mem, at, input.bytes(n));
            }
            7 | 8 => {
                let value = if input.u8() < 0xF0 { 0 } else { input.u32() };
                w32(&dev, regs::QUEUE_NOTIFY, value);
            }
            _ => {
                dev.process_queue();
            }
        }
    }
    dev.process_queue();
});
