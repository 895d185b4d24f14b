//! A hostile e1000 driver against host-vsp's emulated 82540EM (`E1000Nic`, the register file and
//! DMA engines `E1000Device` wraps in its lock): register reads and writes at any offset and width
//! (`E1000Nic::read`/`write`, what `E1000Device::mmio_read`/`mmio_write` — the entry points
//! host-kvm's MMIO handler calls — forward to, followed by `take_interrupts`/`take_rx_kick` as they
//! do), guest memory holding rings with any base, length, head and tail, buffers inside, straddling
//! or outside RAM, transmit descriptors with any command bits and length, and frames arriving from
//! the other end of a `MemoryNet` into receive passes made as the device's receive thread makes
//! them (`take_rx_kick`, `tick`, `set_link`, `receive`, `take_interrupts`) while the rings are
//! whatever the driver left. The harness plays the thread's clock, so ITR throttling is
//! deterministic. RAM is 64 KiB at 0 in two regions that touch at 32 KiB.
//!
//! Input: a setup byte (bit 0: skip the standard driver bring-up — reset, EEPROM reads, masks, a
//! transmit ring at 0x1000 and a receive ring at 0x2000 of 8 << (bits 1–2 % 3) descriptors, receive
//! buffers of 1 KiB from 0x4000 all but one given to the device; bit 3: SECRC; bit 4: ITR set;
//! bit 5: no guest memory; bit 6: a backend holding 4 frames each way), then steps `[op, ...]`:
//! register write or read, transmit or receive descriptor, TDT or RDT write, a frame from the wire,
//! a receive pass, time passing, a link change, raw bytes, a reset.
//!
//! Checks, besides no panic, no hang and no access outside RAM (vm-memory and ASan): a failed NIC
//! stays failed, with the same failure, until a reset, and moves no frame meanwhile; a register
//! write other than TDT/TCTL sends nothing; a TDT or TCTL write sends exactly the frames between
//! the old and the new TDH — each the concatenation of its descriptors' buffers (padded under PSP),
//! or counted as dropped when the model says so — and changes nothing in guest memory but DD in the
//! status byte of descriptors with RS/RPS; every frame from the wire is accounted for once.
#![no_main]

use e1000_protocol::{
    ctrl, eerd, icr, rctl, reg, tctl, tx_cmd, tx_status, TxDescriptor, DESCRIPTOR_SIZE, MMIO_SIZE,
    RING_BASE_ALIGN, RING_LEN_MASK, TX_STATUS_OFFSET,
};
use host_vsp::emulated::e1000::nic::{MIN_FRAME_LEN, RX_BATCH};
use host_vsp::emulated::e1000::E1000Nic;
use host_vsp::guest_memory::{self, GuestMemoryMmap};
use host_vsp::net::{MemoryNet, MAX_FRAME_LEN};
use host_vsp_fuzz::{snapshot, span, Input};
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;
use zerocopy::FromBytes;

const RAM: u64 = 64 * 1024;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xe1, 0x00, 0x01];
const TX_RING: u64 = 0x1000;
const RX_RING: u64 = 0x2000;
const RX_BUFS: u64 = 0x4000;
const RX_BUF_LEN: u64 = 1024;
const TX_BUFS: u64 = 0xC000;
const REGS: [u32; 34] = [
    reg::CTRL,
    reg::STATUS,
    reg::EECD,
    reg::EERD,
    reg::CTRL_EXT,
    reg::MDIC,
    reg::ICR,
    reg::ITR,
    reg::ICS,
    reg::IMS,
    reg::IMC,
    reg::RCTL,
    reg::TCTL,
    reg::TIPG,
    reg::RDBAL,
    reg::RDBAH,
    reg::RDLEN,
    reg::RDH,
    reg::RDT,
    reg::RDTR,
    reg::RADV,
    reg::TDBAL,
    reg::TDBAH,
    reg::TDLEN,
    reg::TDH,
    reg::TDT,
    reg::TIDV,
    reg::TADV,
    reg::MTA,
    reg::MTA + 4 * 127,
    reg::RAL0,
    reg::RAH0,
    reg::RAL0 + 8,
    reg::RAH0 + 8 * 15,
];

/// The NIC, the guest's memory, both ends of the network and what the harness has seen.
struct Rig {
    nic: E1000Nic,
    mem: Option<GuestMemoryMmap>,
    /// The NIC's end (its backend).
    net: MemoryNet,
    /// The wire's end.
    peer: MemoryNet,
    now: u64,
    link: bool,
    /// Frames the wire handed to the NIC's end.
    sent: u64,
    /// Times a frame waiting in the NIC's staging buffer may have been dropped uncounted (a reset,
    /// a receive pass with the receiver off).
    staging_drops: u64,
    /// The harness's idea of the rings' sizes and tails (for its doorbells).
    count: u32,
    tdt: u32,
    rdt: u32,
}

impl Rig {
    fn read(&mut self, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        self.access_read(u64::from(offset), &mut b);
        u32::from_le_bytes(b)
    }

    fn write(&mut self, offset: u32, value: u32) {
        self.access_write(u64::from(offset), &value.to_le_bytes());
    }

    /// `E1000Device::mmio_read` without its lock.
    fn access_read(&mut self, offset: u64, data: &mut [u8]) {
        let tx_before = self.nic.stats().tx_frames;
        self.nic.read(offset, data, self.now);
        let _ = self.nic.take_interrupts();
        assert_eq!(self.nic.stats().tx_frames, tx_before, "a read transmitted");
        assert_eq!(self.peer.pending(), 0, "a read transmitted");
    }

    /// `E1000Device::mmio_write` without its lock, checked against the transmit model when it is
    /// a doorbell.
    fn access_write(&mut self, offset: u64, data: &[u8]) {
        let resets = self.nic.stats().resets;
        let doorbell = offset == u64::from(reg::TDT) || offset == u64::from(reg::TCTL);
        let model = doorbell.then(|| self.tx_model_before());
        let before = self.nic.stats();
        self.nic
            .write(offset, data, self.mem.as_ref(), &mut self.net, self.now);
        let _ = self.nic.take_interrupts();
        let _ = self.nic.take_rx_kick();
        if self.nic.stats().resets != resets {
            self.staging_drops += 1;
        }
        match model {
            Some(model) => self.tx_model_check(model, before),
            None => {
                assert_eq!(
                    self.nic.stats().tx_frames,
                    before.tx_frames,
                    "not a doorbell"
                );
                assert_eq!(self.peer.pending(), 0, "not a doorbell");
            }
        }
    }

    /// What the transmit model needs from before a doorbell: the ring registers and guest RAM.
    fn tx_model_before(&mut self) -> TxBefore {
        let bal = self.read(reg::TDBAL);
        let bah = self.read(reg::TDBAH);
        TxBefore {
            base: (u64::from(bah) << 32) | u64::from(bal & !(RING_BASE_ALIGN - 1)),
            count: (self.read(reg::TDLEN) & RING_LEN_MASK) / DESCRIPTOR_SIZE as u32,
            head: self.read(reg::TDH),
            ram: self.mem.as_ref().map(|m| snapshot(m, RAM)),
        }
    }

    /// The frames between the old and new TDH, from the copy of RAM taken before the write, with
    /// DD applied to it as the device applies it: they are what the wire got, and the copy is what
    /// guest RAM is now.
    fn tx_model_check(&mut self, before: TxBefore, stats: host_vsp::emulated::e1000::E1000Stats) {
        let after = self.nic.stats();
        let sent: Vec<Vec<u8>> = std::iter::from_fn(|| self.peer.recv_bytes()).collect();
        let head = self.read(reg::TDH);
        let psp = self.read(reg::TCTL) & tctl::PSP != 0;
        let (Some(mut ram), Some(mem)) = (before.ram, self.mem.as_ref()) else {
            assert_eq!(head, before.head, "no memory: nothing sent");
            assert!(sent.is_empty());
            return;
        };
        let mut expected: Vec<Option<Vec<u8>>> = Vec::new();
        let mut i = before.head;
        while i != head {
            // The device only moves TDH past whole frames of a ring it checked.
            assert!(before.count > 0 && head < before.count && i < before.count);
            let mut descs = Vec::new();
            loop {
                assert!(
                    descs.len() < before.count as usize,
                    "TDH passed a frame without EOP"
                );
                let gpa = before.base + u64::from(i) * DESCRIPTOR_SIZE as u64;
                let bytes = span(&ram, gpa, DESCRIPTOR_SIZE as u64).expect("ring outside RAM");
                let d = TxDescriptor::read_from_bytes(bytes).unwrap();
                descs.push((gpa, d));
                i = (i + 1) % before.count;
                if d.cmd & tx_cmd::EOP != 0 {
                    break;
                }
                assert_ne!(i, head, "TDH stopped inside a frame");
            }
            let total: usize = descs.iter().map(|(_, d)| usize::from(d.length)).sum();
            let extended = descs.iter().any(|(_, d)| d.cmd & tx_cmd::DEXT != 0);
            let frame = (!extended && total > 0 && total <= MAX_FRAME_LEN).then(|| {
                let mut f = Vec::with_capacity(total.max(MIN_FRAME_LEN));
                // A descriptor of no bytes moves none, wherever its address points.
                for (_, d) in descs.iter().filter(|(_, d)| d.length > 0) {
                    let len = u64::from(d.length);
                    let part = span(&ram, d.buffer_addr, len).expect("a buffer outside RAM sent");
                    f.extend_from_slice(part);
                }
                if psp && f.len() < MIN_FRAME_LEN {
                    f.resize(MIN_FRAME_LEN, 0);
                }
                f
            });
            for (gpa, d) in &descs {
                if d.cmd & (tx_cmd::RS | tx_cmd::RPS) != 0 {
                    ram[(gpa + TX_STATUS_OFFSET as u64) as usize] |= tx_status::DD;
                }
            }
            expected.push(frame);
        }
        assert!(
            snapshot(mem, RAM) == ram,
            "a doorbell wrote more than DD bits"
        );
        let good: Vec<Vec<u8>> = expected.iter().flatten().cloned().collect();
        let bad = (expected.len() - good.len()) as u64;
        assert_eq!(after.tx_dropped_bad_frame - stats.tx_dropped_bad_frame, bad);
        let taken = after.tx_frames - stats.tx_frames;
        let full = after.tx_dropped_backend_full - stats.tx_dropped_backend_full;
        assert_eq!(after.tx_backend_errors, stats.tx_backend_errors);
        assert_eq!(taken + full, good.len() as u64);
        // The backend takes frames until it is full, then refuses the rest.
        assert!(
            sent == good[..taken as usize],
            "frames sent differ from their descriptors"
        );
        let bytes: usize = sent.iter().map(Vec::len).sum();
        assert_eq!(after.tx_bytes - stats.tx_bytes, bytes as u64);
    }

    /// One pass of the device's receive thread (and its immediate reruns while there is more).
    fn receive_pass(&mut self) {
        for _ in 0..4 {
            let off = self.nic.failure().is_none()
                && (self.mem.is_none() || self.read(reg::RCTL) & rctl::EN == 0);
            let _ = self.nic.take_rx_kick();
            self.nic.tick(self.now);
            self.nic.set_link(self.link, self.now);
            let pass = self.nic.receive(self.mem.as_ref(), &mut self.net, self.now);
            let _ = self.nic.take_interrupts();
            self.staging_drops += u64::from(off);
            assert!(pass.stored <= RX_BATCH);
            assert!(!pass.more || pass.want_rx);
            if !pass.more {
                break;
            }
        }
    }

    /// Every frame from the wire is stored, filtered, dropped, still in the backend, or (one at a
    /// time) in the staging buffer — or lost with it at a reset or a pass with the receiver off.
    fn check_accounting(&self) {
        let s = self.nic.stats();
        let counted = s.rx_frames
            + s.rx_filtered
            + s.rx_dropped_disabled
            + s.rx_too_large
            + self.net.pending() as u64;
        assert!(counted <= self.sent, "a frame counted twice");
        assert!(
            self.sent - counted <= 1 + self.staging_drops,
            "frames vanished"
        );
        assert_eq!(s.rx_backend_errors, 0);
    }
}

struct TxBefore {
    base: u64,
    count: u32,
    head: u32,
    ram: Option<Vec<u8>>,
}

/// The bring-up Linux's e1000 does, in short.
fn standard_setup(r: &mut Rig, setup: u8) {
    r.write(reg::CTRL, ctrl::RST);
    for word in 0..3 {
        r.write(reg::EERD, eerd::START | (word << eerd::ADDR_SHIFT));
        r.read(reg::EERD);
    }
    r.write(reg::CTRL, ctrl::SLU | ctrl::ASDE | ctrl::FD);
    r.write(reg::IMC, u32::MAX);
    r.read(reg::ICR);
    for i in 0..4 {
        r.write(reg::MTA + 4 * i, 0);
    }
    if setup & 0x10 != 0 {
        r.write(reg::ITR, 651); // ~6000 interrupts/s
    }
    let count = r.count;
    // Receive descriptors: buffer addresses, all else zero.
    if let Some(mem) = &r.mem {
        for i in 0..u64::from(count) {
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&(RX_BUFS + i * RX_BUF_LEN).to_le_bytes());
            guest_memory::write(mem, RX_RING + i * 16, &d).unwrap();
        }
    }
    r.write(reg::TDBAL, TX_RING as u32);
    r.write(reg::TDBAH, 0);
    r.write(reg::TDLEN, count * 16);
    r.write(reg::TDH, 0);
    r.write(reg::TDT, 0);
    r.write(reg::TCTL, tctl::EN | tctl::PSP);
    r.write(reg::RDBAL, RX_RING as u32);
    r.write(reg::RDBAH, 0);
    r.write(reg::RDLEN, count * 16);
    r.write(reg::RDH, 0);
    r.rdt = count - 1;
    r.write(reg::RDT, r.rdt);
    let secrc = if setup & 8 != 0 { rctl::SECRC } else { 0 };
    let bsize = rctl::buffer_size_bits(RX_BUF_LEN as usize).unwrap();
    r.write(reg::RCTL, rctl::EN | rctl::BAM | bsize | secrc);
    r.write(
        reg::IMS,
        icr::TXDW | icr::TXQE | icr::LSC | icr::RXO | icr::RXT0 | icr::RXDMT0,
    );
}

fn register(input: &mut Input<'_>) -> u64 {
    match input.u8() {
        s @ 0..=199 => u64::from(REGS[usize::from(s) % REGS.len()]),
        200..=239 => u64::from(input.u16() & !3),
        _ => u64::from(input.u32()) % MMIO_SIZE,
    }
}

fn width(input: &mut Input<'_>) -> usize {
    [4, 4, 4, 4, 1, 2, 8, 4][usize::from(input.u8() % 8)]
}

fn tx_length(input: &mut Input<'_>) -> u16 {
    match input.u8() % 7 {
        0 => 60,
        1 => 14,
        2 => 1514,
        3 => 0,
        4 => 1515,
        5 => u16::from(input.u8()),
        _ => input.u16(),
    }
}

/// A frame from the wire: a destination the filter passes or not, any length the wire carries.
fn wire_frame(input: &mut Input<'_>) -> Vec<u8> {
    let dest: [u8; 6] = match input.u8() % 6 {
        0 | 1 => MAC,
        2 => [0xFF; 6],
        3 => [0x01, 0x00, 0x5e, 0x00, 0x00, input.u8()],
        4 => [0x02, 0, 0, 0, 0, input.u8()],
        _ => input.array(),
    };
    let len = match input.u8() % 7 {
        0 => 60,
        1 => 1514,
        2 => 14,
        3 => usize::from(input.u8() % 14),
        4 => 1024 - 4 + usize::from(input.u8() % 8),
        5 => 42,
        _ => usize::from(input.u16()) % (MAX_FRAME_LEN + 1),
    };
    let mut f = vec![0u8; len];
    let n = len.min(6);
    f[..n].copy_from_slice(&dest[..n]);
    let fill = input.u8();
    for (i, b) in f.iter_mut().enumerate().skip(6) {
        *b = fill.wrapping_add(i as u8);
    }
    f
}

fn raw_write(mem: &GuestMemoryMmap, gpa: u64, bytes: &[u8]) {
    let _ = guest_memory::write(mem, gpa, bytes);
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let setup = input.u8();
    let capacity = if setup & 0x40 != 0 { 4 } else { 8192 };
    let (net, peer) = MemoryNet::pair_with_capacity(capacity).unwrap();
    let mem = (setup & 0x20 == 0).then(|| {
        let half = (RAM / 2) as usize;
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), half), (GuestAddress(RAM / 2), half)])
            .unwrap()
    });
    let mut r = Rig {
        nic: E1000Nic::new(MAC),
        mem,
        net,
        peer,
        now: 0,
        link: true,
        sent: 0,
        staging_drops: 0,
        count: 8 << ((setup >> 1) % 4 % 3),
        tdt: 0,
        rdt: 0,
    };
    if setup & 1 == 0 {
        standard_setup(&mut r, setup);
    }
    let mut buf = [0u8; 8];
    while !input.is_empty() {
        let failure = r.nic.failure();
        let before = r.nic.stats();
        match input.u8() % 12 {
            0 => {
                let (offset, n) = (register(&mut input), width(&mut input));
                buf = input.array();
                r.access_write(offset, &buf[..n]);
            }
            1 => {
                let (offset, n) = (register(&mut input), width(&mut input));
                r.access_read(offset, &mut buf[..n]);
            }
            2 => {
                // Transmit descriptor {addr, length, cso, cmd, status, css, special}.
                let index = u64::from(input.u8() % 64);
                let addr = match input.u8() % 4 {
                    0..=2 => TX_BUFS + u64::from(input.u16()) % (RAM - TX_BUFS),
                    _ => input.gpa(RAM),
                };
                let length = tx_length(&mut input);
                let cmd = input.u8();
                let status = if input.u8() >= 0xF0 { input.u8() } else { 0 };
                let mut d = [0u8; 16];
                d[..8].copy_from_slice(&addr.to_le_bytes());
                d[8..10].copy_from_slice(&length.to_le_bytes());
                d[11] = cmd;
                d[12] = status;
                if let Some(mem) = &r.mem {
                    raw_write(mem, TX_RING + index * 16, &d);
                }
            }
            3 => {
                // Receive descriptor: a buffer address (status cleared, as a driver hands it).
                let index = u64::from(input.u8() % 64);
                let addr = match input.u8() % 4 {
                    0..=2 => RX_BUFS + index * RX_BUF_LEN,
                    _ => input.gpa(RAM),
                };
                let mut d = [0u8; 16];
                d[..8].copy_from_slice(&addr.to_le_bytes());
                if let Some(mem) = &r.mem {
                    raw_write(mem, RX_RING + index * 16, &d);
                }
            }
            4 => {
                r.tdt = match input.u8() {
                    s @ 0..=239 => (r.tdt + 1 + u32::from(s % 4)) % r.count,
                    _ => u32::from(input.u16()),
                };
                r.write(reg::TDT, r.tdt);
            }
            5 => {
                r.rdt = match input.u8() {
                    s @ 0..=239 => (r.rdt + 1 + u32::from(s % 4)) % r.count,
                    _ => u32::from(input.u16()),
                };
                r.write(reg::RDT, r.rdt);
            }
            6 => {
                let frame = wire_frame(&mut input);
                if let Ok(true) = r.peer.send_bytes(&frame) {
                    r.sent += 1;
                }
            }
            7 => r.receive_pass(),
            8 => {
                r.now += u64::from(input.u16()) * 256;
                r.nic.tick(r.now);
                let _ = r.nic.take_interrupts();
            }
            9 => {
                r.link = !r.link;
                r.nic.set_link(r.link, r.now);
                let _ = r.nic.take_interrupts();
            }
            10 => {
                let at = u64::from(input.u16());
                let n = usize::from(input.u8());
                let bytes = input.bytes(n);
                if let Some(mem) = &r.mem {
                    raw_write(mem, at, bytes);
                }
            }
            _ => match input.u8() % 4 {
                0 => r.write(reg::CTRL, ctrl::RST),
                1 => r.write(reg::TCTL, 0),
                2 => r.write(reg::TCTL, tctl::EN | (u32::from(input.u8()) & tctl::PSP)),
                _ => {
                    let value = r.read(reg::RCTL) ^ rctl::EN;
                    r.write(reg::RCTL, value);
                }
            },
        }
        let after = r.nic.stats();
        if failure.is_some() && after.resets == before.resets {
            assert_eq!(
                r.nic.failure(),
                failure,
                "a failure changed without a reset"
            );
            assert_eq!(
                after.tx_frames, before.tx_frames,
                "a failed NIC transmitted"
            );
            assert_eq!(after.rx_frames, before.rx_frames, "a failed NIC received");
        }
        r.check_accounting();
    }
    r.receive_pass();
    r.check_accounting();
});
