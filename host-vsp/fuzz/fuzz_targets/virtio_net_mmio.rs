//! A hostile virtio-net driver against host-vsp's virtio-net device on the shared virtio-mmio
//! transport: MMIO register reads and writes (`VirtioNetDevice::mmio_read`/`mmio_write`, the
//! entry points the MMIO-exit glue calls) and guest memory holding whatever the input puts there —
//! descriptor chains on the receive (0) and transmit (1) queues with loops, indirect tables, huge
//! lengths, the wrong direction and addresses outside RAM, avail rings with any head and index,
//! `used_event` anywhere — while frames arrive from the other end of a `MemoryNet`. No worker
//! thread is started, so QueueNotify writes process both queues inline, as do explicit
//! `process_queues` calls (what the worker runs on each wakeup). RAM is 64 KiB at 0 in two regions
//! that touch at 32 KiB.
//!
//! Input: a setup byte (bit 0: skip the standard driver setup of both queues — receive rings at
//! 0x1000/0x2000/0x3000, transmit rings at 0x4000/0x5000/0x6000; bits 1–3: their size as a power
//! of two; bit 4: no EVENT_IDX offered; bit 5: a backend holding 4 frames each way; bit 6: no guest
//! memory), then steps `[op, ...]`: a register write or read, a descriptor (in a queue's table or
//! the indirect table at 0x7000), an avail-ring push, a frame from the wire, raw bytes, a notify,
//! a queue pass, a `used_event` write, a driver reset and setup.
//!
//! Checks, besides no panic, no hang and no access outside RAM: NEEDS_RESET stays until the driver
//! resets the device, and no frame moves meanwhile; while the queues are where the standard setup
//! put them (no register write or ring scribble since), every transmit chain the device returned
//! sent the bytes of its chain past the 12-byte header (or was counted as a bad length), and every
//! receive chain it returned holds the next frame from the wire behind a header with
//! `num_buffers` = 1, with the right used length — unless the device's own writes in the same
//! step overlap what would be compared.
#![no_main]

use std::collections::VecDeque;
use std::sync::Arc;

use host_vsp::guest_memory::{self, GuestMemoryMmap};
use host_vsp::net::{MemoryNet, MAX_FRAME_LEN};
use host_vsp::virtio::mmio::{device_status as ds, regs};
use host_vsp::virtio::net::chain::NET_HDR_LEN;
use host_vsp::virtio::net::{VirtioNetConfig, VirtioNetDevice, RX_QUEUE, TX_QUEUE};
use host_vsp_fuzz::{snapshot, span, Input};
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const RAM: u64 = 64 * 1024;
const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
/// Descriptor table, avail ring and used ring of queue q at RINGS[q].
const RINGS: [[u64; 3]; 2] = [[0x1000, 0x2000, 0x3000], [0x4000, 0x5000, 0x6000]];
const INDIRECT: u64 = 0x7000;
const RX_BUFS: u64 = 0x8000;
const TX_BUFS: u64 = 0xC000;
const NEXT: u16 = 1;
const INDIRECT_FLAG: u16 = 4;
const REGS: [u64; 26] = [
    regs::MAGIC,
    regs::VERSION,
    regs::DEVICE_ID,
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
    regs::CONFIG + 6,
    regs::CONFIG + 10,
];

fn w32(dev: &VirtioNetDevice, reg: u64, v: u32) {
    dev.mmio_write(reg, &v.to_le_bytes());
}

/// The driver initialisation of virtio 1.x §3.1.1 for both queues, accepting every offered feature.
fn standard_setup(dev: &VirtioNetDevice, queue_size: u16) {
    w32(dev, regs::STATUS, 0);
    w32(dev, regs::STATUS, ds::ACKNOWLEDGE | ds::DRIVER);
    for sel in 0..2 {
        let mut f = [0u8; 4];
        w32(dev, regs::DEVICE_FEATURES_SEL, sel);
        dev.mmio_read(regs::DEVICE_FEATURES, &mut f);
        w32(dev, regs::DRIVER_FEATURES_SEL, sel);
        dev.mmio_write(regs::DRIVER_FEATURES, &f);
    }
    let features_ok = ds::ACKNOWLEDGE | ds::DRIVER | ds::FEATURES_OK;
    w32(dev, regs::STATUS, features_ok);
    for (q, rings) in RINGS.iter().enumerate() {
        w32(dev, regs::QUEUE_SEL, q as u32);
        w32(dev, regs::QUEUE_NUM, u32::from(queue_size));
        let pairs = [
            (regs::QUEUE_DESC_LOW, regs::QUEUE_DESC_HIGH),
            (regs::QUEUE_DRIVER_LOW, regs::QUEUE_DRIVER_HIGH),
            (regs::QUEUE_DEVICE_LOW, regs::QUEUE_DEVICE_HIGH),
        ];
        for ((lo, hi), gpa) in pairs.into_iter().zip(rings) {
            w32(dev, lo, *gpa as u32);
            w32(dev, hi, (*gpa >> 32) as u32);
        }
        w32(dev, regs::QUEUE_READY, 1);
    }
    w32(dev, regs::STATUS, features_ok | ds::DRIVER_OK);
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
    match input.u8() % 8 {
        0 => 12,
        1 => 1526,
        2 => 2048,
        3 => 72,
        4 => u32::from(input.u16()),
        5 => u32::MAX - u32::from(input.u8()),
        6 => 16 * u32::from(input.u8() % 8),
        _ => input.u32(),
    }
}

/// A frame from the wire of any length it carries.
fn wire_frame(input: &mut Input<'_>) -> Vec<u8> {
    let len = match input.u8() % 5 {
        0 => 60,
        1 => MAX_FRAME_LEN,
        2 => 14,
        3 => 1 + usize::from(input.u8()),
        _ => usize::from(input.u16()) % (MAX_FRAME_LEN + 1),
    };
    let fill = input.u8();
    (0..len).map(|i| fill.wrapping_add(i as u8)).collect()
}

/// A chain as virtio-queue walks it (indirect tables included): its segments (address, length,
/// flags) and the descriptor memory read on the way.
#[derive(Default)]
struct Walk {
    segments: Vec<(u64, u32, u16)>,
    reads: Vec<(u64, u64)>,
}

fn walk(ram: &[u8], table: u64, size: u16, head: u16) -> Option<Walk> {
    let (mut base, mut qsize, mut next, mut ttl, mut indirect) = (table, size, head, size, false);
    let mut w = Walk::default();
    while ttl > 0 && next < qsize {
        let at = base.checked_add(u64::from(next) * 16)?;
        let d = span(ram, at, 16)?;
        w.reads.push((at, 16));
        let addr = u64::from_le_bytes(d[..8].try_into().unwrap());
        let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
        let flags = u16::from_le_bytes(d[12..14].try_into().unwrap());
        let nxt = u16::from_le_bytes(d[14..16].try_into().unwrap());
        if flags & INDIRECT_FLAG != 0 {
            if indirect || len % 16 != 0 || len / 16 > u32::from(u16::MAX) {
                break;
            }
            (base, qsize, next, indirect) = (addr, (len / 16) as u16, 0, true);
            ttl = qsize;
            continue;
        }
        w.segments.push((addr, len, flags));
        if flags & NEXT != 0 {
            next = nxt;
            ttl -= 1;
        } else {
            ttl = 0;
        }
    }
    Some(w)
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// Whether any byte of `[gpa, gpa + len)` differs between two copies of RAM.
fn changed(pre: &[u8], post: &[u8], (gpa, len): (u64, u64)) -> bool {
    let start = gpa.min(RAM) as usize;
    let end = gpa.saturating_add(len).min(RAM) as usize;
    pre[start..end] != post[start..end]
}

/// The pieces of `[offset, offset + len)` of a chain's byte stream, as guest ranges.
fn stream_ranges(segments: &[(u64, u32, u16)], offset: u64, len: u64) -> Vec<(u64, u64)> {
    let (mut at, end, mut out) = (0u64, offset + len, Vec::new());
    for &(gpa, n, _) in segments {
        let (start, stop) = (at, at + u64::from(n));
        at = stop;
        let (from, to) = (start.max(offset), stop.min(end));
        if from < to {
            out.push((gpa + (from - start), to - from));
        }
    }
    out
}

fn gather(ram: &[u8], ranges: &[(u64, u64)]) -> Option<Vec<u8>> {
    let mut v = Vec::new();
    for &(gpa, len) in ranges {
        v.extend_from_slice(span(ram, gpa, len)?);
    }
    Some(v)
}

/// The device, its memory, both ends of the network and what the harness has seen.
struct Rig {
    dev: VirtioNetDevice,
    mem: Option<GuestMemoryMmap>,
    peer: MemoryNet,
    queue_size: u16,
    avail_idx: [u16; 2],
    /// The queues are where the standard setup put them and their used rings are the device's.
    trusted: bool,
    /// Frames from the wire the device has not stored yet, in order (while `rx_in_step`).
    wire: VecDeque<Vec<u8>>,
    /// `wire` is still in step with what the device takes from the backend.
    rx_in_step: bool,
}

impl Rig {
    fn used_idx(&self, ram: &[u8], q: usize) -> u16 {
        u16::from_le_bytes(span(ram, RINGS[q][2] + 2, 2).unwrap().try_into().unwrap())
    }

    /// Used entries `[from, to)` of queue `q` as (id, len), if the ring holds them all.
    fn used(&self, ram: &[u8], q: usize, from: u16, to: u16) -> Option<Vec<(u32, u32)>> {
        let n = to.wrapping_sub(from);
        if n > self.queue_size {
            return None;
        }
        let entries = (0..n).map(|k| {
            let slot = u64::from(from.wrapping_add(k) % self.queue_size);
            let e = span(ram, RINGS[q][2] + 4 + 8 * slot, 8).unwrap();
            let id = u32::from_le_bytes(e[..4].try_into().unwrap());
            (id, u32::from_le_bytes(e[4..].try_into().unwrap()))
        });
        Some(entries.collect())
    }

    /// Runs `step` (which may process the queues) and checks the chains the device returned in it.
    fn checked(&mut self, step: impl FnOnce(&Self)) {
        let stats = self.dev.stats().get();
        let pre = self
            .mem
            .as_ref()
            .filter(|_| self.trusted)
            .map(|m| snapshot(m, RAM));
        step(self);
        let after = self.dev.stats().get();
        let sent: Vec<Vec<u8>> = std::iter::from_fn(|| self.peer.recv_bytes()).collect();
        assert_eq!(sent.len() as u64, after.tx_frames - stats.tx_frames);
        // The frames the device stored, in the order the wire sent them (a receive error or a
        // broken ring may lose one uncounted: then the harness stops following).
        let stored = (after.rx_frames - stats.rx_frames) as usize;
        let frames: Vec<Vec<u8>> = self.wire.drain(..stored.min(self.wire.len())).collect();
        let in_step = self.rx_in_step && frames.len() == stored;
        self.rx_in_step =
            in_step && after.rx_errors == stats.rx_errors && after.failed == stats.failed;
        let (Some(mem), Some(pre)) = (self.mem.as_ref(), pre) else {
            return;
        };
        let post = snapshot(mem, RAM);
        let size = self.queue_size;
        let (t0, t1) = (self.used_idx(&pre, 1), self.used_idx(&post, 1));
        let (r0, r1) = (self.used_idx(&pre, 0), self.used_idx(&post, 0));
        let entries = (self.used(&post, 1, t0, t1), self.used(&post, 0, r0, r1));
        let walks = |entries: &[(u32, u32)], q: usize| -> Option<Vec<Walk>> {
            let table = RINGS[q][0];
            entries
                .iter()
                .map(|(id, _)| walk(&pre, table, size, *id as u16))
                .collect()
        };
        let (Some(tx), Some(rx)) = entries else {
            self.trusted = false;
            return;
        };
        let (Some(tx_walks), Some(rx_walks)) = (walks(&tx, 1), walks(&rx, 0)) else {
            self.trusted = false;
            return;
        };
        // The walks are the device's unless its own writes in this step changed the descriptors,
        // and the used entries are as it wrote them unless a receive buffer overlaps a used ring.
        let rings = [
            (RINGS[0][2], 6 + 8 * u64::from(size)),
            (RINGS[1][2], 6 + 8 * u64::from(size)),
        ];
        let described = tx_walks
            .iter()
            .chain(&rx_walks)
            .all(|w| w.reads.iter().all(|r| !changed(&pre, &post, *r)));
        let rx_clear_of_rings = rx_walks.iter().all(|w| {
            w.segments
                .iter()
                .all(|s| rings.iter().all(|ring| !overlaps((s.0, s.1.into()), *ring)))
        });
        if !described || !rx_clear_of_rings {
            self.trusted = false;
            return;
        }
        // Transmit: each returned chain's bytes past the header, unless the device wrote over them.
        let mut expected = Some(Vec::new());
        let mut bad = 0;
        for ((_, len), w) in tx.iter().zip(&tx_walks) {
            assert_eq!(*len, 0, "a transmit chain's used length");
            let total: u64 = w.segments.iter().map(|s| u64::from(s.1)).sum();
            let frame_len = total
                .checked_sub(NET_HDR_LEN as u64)
                .expect("a returned chain too short");
            let ranges = stream_ranges(&w.segments, NET_HDR_LEN as u64, frame_len);
            if ranges.iter().any(|r| changed(&pre, &post, *r)) {
                expected = None;
            } else if let Some(list) = &mut expected {
                if frame_len == 0 || frame_len > MAX_FRAME_LEN as u64 {
                    bad += 1;
                } else {
                    list.push(gather(&pre, &ranges).expect("a chain outside RAM returned"));
                }
            }
        }
        if let Some(good) = expected {
            assert_eq!(
                after.tx_dropped_bad_length - stats.tx_dropped_bad_length,
                bad
            );
            let full = after.tx_dropped_backend_full - stats.tx_dropped_backend_full;
            assert_eq!(sent.len() as u64 + full, good.len() as u64);
            assert!(
                sent == good[..sent.len()],
                "frames sent differ from their chains"
            );
        }
        // Receive: each returned chain holds the next frame from the wire behind its header.
        assert_eq!(rx.len(), stored, "used receive entries and frames stored");
        if !in_step {
            return;
        }
        for (k, ((_, len), w)) in rx.iter().zip(&rx_walks).enumerate() {
            let frame = &frames[k];
            assert_eq!(
                *len as usize,
                NET_HDR_LEN + frame.len(),
                "a receive chain's used length"
            );
            let ranges = stream_ranges(&w.segments, 0, u64::from(*len));
            // Written in order: the frame, then the header; a later write wins where they overlap.
            let self_overlap = ranges
                .iter()
                .enumerate()
                .any(|(i, a)| ranges[i + 1..].iter().any(|b| overlaps(*a, *b)));
            let overwritten = self_overlap
                || ranges.iter().any(|r| {
                    rx_walks.iter().enumerate().any(|(j, other)| {
                        j > k
                            && other
                                .segments
                                .iter()
                                .any(|s| overlaps(*r, (s.0, s.1.into())))
                    })
                });
            if !overwritten {
                let got = gather(&post, &ranges).expect("a chain outside RAM returned");
                let mut header = [0u8; NET_HDR_LEN];
                header[10] = 1;
                assert!(got[..NET_HDR_LEN] == header, "receive header");
                assert!(
                    got[NET_HDR_LEN..] == frame[..],
                    "received frame differs from the wire's"
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let setup = input.u8();
    let capacity = if setup & 0x20 != 0 { 4 } else { 1024 };
    let (device_end, peer) = MemoryNet::pair_with_capacity(capacity).unwrap();
    let config = VirtioNetConfig {
        event_idx: setup & 0x10 == 0,
        ..VirtioNetConfig::new(MAC)
    };
    let dev = VirtioNetDevice::new(Box::new(device_end), config).unwrap();
    let mem = (setup & 0x40 == 0).then(|| {
        let half = (RAM / 2) as usize;
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), half), (GuestAddress(RAM / 2), half)])
            .unwrap()
    });
    if let Some(mem) = &mem {
        dev.attach_memory(mem.clone()).unwrap();
    }
    dev.connect_interrupt(Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()))
        .unwrap();
    let queue_size = 1u16 << ((setup >> 1) & 7);
    let mut r = Rig {
        dev,
        mem,
        peer,
        queue_size,
        avail_idx: [0; 2],
        trusted: false,
        wire: VecDeque::new(),
        rx_in_step: true,
    };
    if setup & 1 == 0 {
        standard_setup(&r.dev, queue_size);
        r.trusted = r.mem.is_some();
    }
    let mut buf = [0u8; 8];
    while !input.is_empty() {
        let status = r.dev.device_status();
        let before = r.dev.stats().get();
        let mut reset = false;
        match input.u8() % 12 {
            0 => {
                let (reg, n) = (register(&mut input), width(&mut input));
                buf = input.array();
                r.trusted = false;
                reset = reg == regs::STATUS && buf[..n.min(4)].iter().all(|b| *b == 0);
                r.checked(|r| r.dev.mmio_write(reg, &buf[..n]));
            }
            1 => {
                let (reg, n) = (register(&mut input), width(&mut input));
                r.dev.mmio_read(reg, &mut buf[..n]);
            }
            2 | 3 => {
                // Descriptor {addr, len, flags (NEXT 1, WRITE 2, INDIRECT 4), next}.
                let sel = input.u8();
                let q = usize::from(sel & 1);
                let table = if sel & 6 == 6 { INDIRECT } else { RINGS[q][0] };
                let index = u64::from(input.u8() % 32);
                let addr = match input.u8() % 4 {
                    0 => INDIRECT,
                    1 | 2 => [RX_BUFS, TX_BUFS][q] + u64::from(input.u16() % 0x4000),
                    _ => input.gpa(RAM),
                };
                let len = length(&mut input);
                let flags = u16::from(input.u8() & 7) | (u16::from(input.u8() >= 0xF0) << 8);
                let next = u16::from(input.u8() % 34);
                let mut d = [0u8; 16];
                d[..8].copy_from_slice(&addr.to_le_bytes());
                d[8..12].copy_from_slice(&len.to_le_bytes());
                d[12..14].copy_from_slice(&flags.to_le_bytes());
                d[14..16].copy_from_slice(&next.to_le_bytes());
                if let Some(mem) = &r.mem {
                    let _ = guest_memory::write(mem, table + index * 16, &d);
                }
            }
            4 => {
                let q = usize::from(input.u8() & 1);
                let head = match input.u8() {
                    h @ 0..=239 => u16::from(h) % queue_size,
                    _ => input.u16(),
                };
                let slot = u64::from(r.avail_idx[q] % queue_size);
                r.avail_idx[q] = match input.u8() {
                    0..=239 => r.avail_idx[q].wrapping_add(1),
                    _ => input.u16(),
                };
                if let Some(mem) = &r.mem {
                    let avail = RINGS[q][1];
                    let _ = guest_memory::write(mem, avail + 4 + slot * 2, &head.to_le_bytes());
                    let _ = guest_memory::write(mem, avail + 2, &r.avail_idx[q].to_le_bytes());
                }
            }
            5 => {
                let frame = wire_frame(&mut input);
                if let Ok(true) = r.peer.send_bytes(&frame) {
                    r.wire.push_back(frame);
                }
            }
            6 => {
                let at = u64::from(input.u16());
                let n = usize::from(input.u8());
                let bytes = input.bytes(n);
                let range = (at, bytes.len() as u64);
                if overlaps(range, (RINGS[0][2], 0x1000)) || overlaps(range, (RINGS[1][2], 0x1000))
                {
                    r.trusted = false;
                }
                if let Some(mem) = &r.mem {
                    let _ = guest_memory::write(mem, at, bytes);
                }
            }
            7 | 8 => {
                let value = match input.u8() {
                    0..=119 => u32::from(RX_QUEUE),
                    120..=239 => u32::from(TX_QUEUE),
                    _ => input.u32(),
                };
                r.checked(|r| w32(&r.dev, regs::QUEUE_NOTIFY, value));
            }
            9 => r.checked(|r| r.dev.process_queues()),
            10 => {
                // used_event of a queue (the driver's interrupt threshold under EVENT_IDX).
                let q = usize::from(input.u8() & 1);
                let value = input.u16();
                if let Some(mem) = &r.mem {
                    let at = RINGS[q][1] + 4 + 2 * u64::from(queue_size);
                    let _ = guest_memory::write(mem, at, &value.to_le_bytes());
                }
            }
            _ => {
                // The driver resets the device and sets it up again on fresh rings.
                reset = true;
                r.avail_idx = [0; 2];
                if let Some(mem) = &r.mem {
                    for rings in RINGS {
                        guest_memory::write(mem, rings[1], &[0; 0x1000]).unwrap();
                        guest_memory::write(mem, rings[2], &[0; 0x1000]).unwrap();
                    }
                }
                standard_setup(&r.dev, queue_size);
                r.trusted = r.mem.is_some();
            }
        }
        let after = r.dev.stats().get();
        if status & ds::NEEDS_RESET != 0 && !reset {
            assert_ne!(
                r.dev.device_status() & ds::NEEDS_RESET,
                0,
                "NEEDS_RESET cleared"
            );
            assert_eq!(
                after.tx_frames, before.tx_frames,
                "a failed device transmitted"
            );
            assert_eq!(
                after.rx_frames, before.rx_frames,
                "a failed device received"
            );
        }
    }
    r.checked(|r| r.dev.process_queues());
});
