//! The e1000 model driven as a driver drives it — register writes, descriptor rings in guest
//! memory, frames through a [`MemoryNet`] — without KVM; hostile ring setups; property tests of
//! the register file and the descriptor engines.

use std::sync::Arc;
use std::time::{Duration, Instant};

use e1000_protocol::{
    ctrl, eerd, icr, rctl, reg, rx_status, status, tctl, tx_cmd, tx_status, RxDescriptor,
    TxDescriptor, RAH_AV,
};
use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use zerocopy::{FromBytes, IntoBytes};

use super::nic::{MIN_FRAME_LEN, RX_BATCH};
use super::*;
use crate::net::MemoryNet;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xe1, 0x00, 0x01];
const RAM: u64 = 1 << 20;
const TX_RING: u64 = 0x1000;
const RX_RING: u64 = 0x2000;
const TX_BUFS: u64 = 0x10_000;
const RX_BUFS: u64 = 0x40_000;

/// A guest of 1 MiB, a NIC and the host's end of its network.
struct Rig {
    mem: GuestMemoryMmap,
    nic: E1000Nic,
    net: MemoryNet,
    wire: MemoryNet,
    now: u64,
}

impl Rig {
    fn new() -> Self {
        let (net, wire) = MemoryNet::pair().unwrap();
        Self {
            mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap(),
            nic: E1000Nic::new(MAC),
            net,
            wire,
            now: 0,
        }
    }

    fn write(&mut self, offset: u32, value: u32) {
        self.nic.write(
            u64::from(offset),
            &value.to_le_bytes(),
            Some(&self.mem),
            &mut self.net,
            self.now,
        );
    }

    fn read(&mut self, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        self.nic.read(u64::from(offset), &mut b, self.now);
        u32::from_le_bytes(b)
    }

    fn receive(&mut self) -> RxPass {
        self.nic.receive(Some(&self.mem), &mut self.net, self.now)
    }

    /// A transmit ring of `count` descriptors at [`TX_RING`], enabled (PSP).
    fn setup_tx(&mut self, count: u32) {
        self.write(reg::TDBAL, TX_RING as u32);
        self.write(reg::TDBAH, 0);
        self.write(reg::TDLEN, count * 16);
        self.write(reg::TDH, 0);
        self.write(reg::TDT, 0);
        self.write(reg::TCTL, tctl::EN | tctl::PSP);
    }

    fn put_tx(&mut self, index: u32, d: TxDescriptor) {
        let gpa = TX_RING + u64::from(index) * 16;
        self.mem
            .write_slice(d.as_bytes(), GuestAddress(gpa))
            .unwrap();
    }

    fn tx_desc(&self, index: u32) -> TxDescriptor {
        let mut b = [0u8; 16];
        self.mem
            .read_slice(&mut b, GuestAddress(TX_RING + u64::from(index) * 16))
            .unwrap();
        TxDescriptor::read_from_bytes(&b).unwrap()
    }

    /// A receive ring of `count` descriptors at [`RX_RING`] with 2 KiB buffers, `given` of them
    /// handed to the device, and `rctl_bits` (EN added).
    fn setup_rx(&mut self, count: u32, given: u32, rctl_bits: u32) {
        for i in 0..count {
            let d = RxDescriptor {
                buffer_addr: RX_BUFS + u64::from(i) * 2048,
                ..Default::default()
            };
            self.mem
                .write_slice(d.as_bytes(), GuestAddress(RX_RING + u64::from(i) * 16))
                .unwrap();
        }
        self.write(reg::RDBAL, RX_RING as u32);
        self.write(reg::RDBAH, 0);
        self.write(reg::RDLEN, count * 16);
        self.write(reg::RDH, 0);
        self.write(reg::RDT, given);
        self.write(reg::RCTL, rctl::EN | rctl_bits);
    }

    fn rx_desc(&self, index: u32) -> RxDescriptor {
        let mut b = [0u8; 16];
        self.mem
            .read_slice(&mut b, GuestAddress(RX_RING + u64::from(index) * 16))
            .unwrap();
        RxDescriptor::read_from_bytes(&b).unwrap()
    }

    fn rx_bytes(&self, d: &RxDescriptor) -> Vec<u8> {
        let mut b = vec![0u8; usize::from(d.length)];
        self.mem
            .read_slice(&mut b, GuestAddress(d.buffer_addr))
            .unwrap();
        b
    }
}

fn frame(dest: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dest);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    for (i, b) in f[14..].iter_mut().enumerate() {
        *b = seed.wrapping_add(i as u8);
    }
    f
}

#[test]
fn eeprom_status_and_receive_address_after_reset() {
    let mut r = Rig::new();
    let mut words = Vec::new();
    for addr in 0..64u32 {
        r.write(reg::EERD, eerd::START | (addr << eerd::ADDR_SHIFT));
        let v = r.read(reg::EERD);
        assert_ne!(v & eerd::DONE, 0);
        assert_eq!((v & eerd::ADDR_MASK) >> eerd::ADDR_SHIFT, addr);
        words.push((v >> eerd::DATA_SHIFT) as u16);
    }
    assert!(e1000_protocol::eeprom::checksum_ok(&words));
    assert_eq!(
        e1000_protocol::eeprom::mac_of([words[0], words[1], words[2]]),
        MAC
    );
    assert_eq!(
        r.read(reg::RAL0),
        u32::from_le_bytes([0x52, 0x54, 0x00, 0xe1])
    );
    assert_eq!(r.read(reg::RAH0), 0x0100 | RAH_AV);
    let s = r.read(reg::STATUS);
    assert_eq!(s & (status::LU | status::FD), status::LU | status::FD);
    assert_eq!(s & status::SPEED_MASK, status::SPEED_1000);
    // Registers read back; reset restores them.
    r.write(reg::ITR, 0x1_0123);
    assert_eq!(r.read(reg::ITR), 0x0123, "ITR holds 16 bits");
    r.write(reg::MTA + 4 * 5, 0xdead_beef);
    assert_eq!(r.read(reg::MTA + 4 * 5), 0xdead_beef);
    r.write(reg::CTRL, ctrl::SLU | ctrl::ASDE);
    assert_eq!(r.read(reg::CTRL), ctrl::SLU | ctrl::ASDE);
    r.write(reg::CTRL, ctrl::RST);
    assert_eq!(r.read(reg::CTRL) & ctrl::RST, 0, "RST self-clears");
    assert_eq!(r.read(reg::ITR), 0);
    assert_eq!(r.read(reg::MTA + 4 * 5), 0);
    let s = r.nic.stats();
    assert_eq!(s.resets, 1);
    assert_eq!(s.registers.eerd_accesses, 128);
    assert_eq!(s.registers.status_reads, 1);
    // A non-dword access is counted and has no effect.
    let mut two = [0xAAu8; 2];
    r.nic.read(u64::from(reg::CTRL), &mut two, 0);
    assert_eq!(two, [0, 0]);
    assert_eq!(r.nic.stats().registers.malformed, 1);
}

#[test]
fn icr_reads_clear_and_a_message_goes_out_per_rising_edge_of_icr_and_ims() {
    let mut r = Rig::new();
    r.write(reg::ICS, icr::RXT0);
    assert_eq!(r.nic.take_interrupts(), 0, "masked");
    r.write(reg::IMS, icr::RXT0 | icr::TXDW);
    assert_eq!(r.nic.take_interrupts(), 1, "unmasking a pending cause");
    r.write(reg::ICS, icr::TXDW);
    assert_eq!(r.nic.take_interrupts(), 0, "the line is already up");
    assert_eq!(r.read(reg::ICR), icr::RXT0 | icr::TXDW);
    assert_eq!(r.read(reg::ICR), 0, "read clears");
    r.write(reg::ICS, icr::TXDW);
    assert_eq!(r.nic.take_interrupts(), 1);
    // Masked while draining (IMC), unmasked after (IMS): a cause that came meanwhile fires then.
    r.write(reg::IMC, !0);
    assert_eq!(r.read(reg::IMS), 0);
    r.read(reg::ICR);
    r.write(reg::ICS, icr::RXT0);
    assert_eq!(r.nic.take_interrupts(), 0);
    r.write(reg::IMS, icr::RXT0);
    assert_eq!(r.nic.take_interrupts(), 1);
    // ICR write clears the bits written.
    r.write(reg::ICS, icr::LSC);
    r.write(reg::ICR, icr::RXT0);
    assert_eq!(r.read(reg::ICR), icr::LSC);
    // Link changes raise LSC.
    r.write(reg::IMS, icr::LSC);
    r.nic.set_link(false, 0);
    assert_eq!(r.nic.take_interrupts(), 1);
    assert_eq!(r.read(reg::STATUS) & status::LU, 0);
    assert_eq!(r.nic.stats().interrupts, 4);
    assert_eq!(r.nic.stats().registers.icr_reads, 4);
}

#[test]
fn itr_spaces_messages_and_a_throttled_one_goes_out_when_due() {
    let mut r = Rig::new();
    r.write(reg::ITR, 100); // 25.6 us
    r.write(reg::IMS, icr::RXT0);
    r.write(reg::ICS, icr::RXT0);
    assert_eq!(r.nic.take_interrupts(), 1);
    r.read(reg::ICR);
    r.now = 1_000;
    r.write(reg::ICS, icr::RXT0);
    assert_eq!(r.nic.take_interrupts(), 0, "too soon");
    assert_eq!(r.nic.deadline(), Some(25_600));
    r.nic.tick(25_599);
    assert_eq!(r.nic.take_interrupts(), 0);
    r.nic.tick(25_600);
    assert_eq!(r.nic.take_interrupts(), 1);
    assert_eq!(r.nic.deadline(), None);
    // A throttled cause the guest clears (it polled meanwhile) is never sent.
    r.read(reg::ICR);
    r.now = 30_000;
    r.write(reg::ICS, icr::RXT0);
    assert!(r.nic.deadline().is_some());
    r.read(reg::ICR);
    assert_eq!(r.nic.deadline(), None);
    r.nic.tick(60_000);
    assert_eq!(r.nic.take_interrupts(), 0);
    let s = r.nic.stats();
    assert_eq!((s.interrupts, s.interrupts_throttled), (2, 2));
}

#[test]
fn transmit_sends_whole_frames_on_tdt_and_writes_dd_where_asked() {
    let mut r = Rig::new();
    r.setup_tx(8);
    r.write(reg::IMS, icr::TXDW);
    let a = frame([2, 0, 0, 0, 0, 1], 100, 1);
    let b = frame([2, 0, 0, 0, 0, 1], 1514, 2);
    r.mem.write_slice(&a, GuestAddress(TX_BUFS)).unwrap();
    r.mem
        .write_slice(&b, GuestAddress(TX_BUFS + 0x1000))
        .unwrap();
    let eop_rs = tx_cmd::EOP | tx_cmd::RS | tx_cmd::IFCS;
    r.put_tx(
        0,
        TxDescriptor {
            buffer_addr: TX_BUFS,
            length: 100,
            cmd: eop_rs,
            ..Default::default()
        },
    );
    // The second frame in two pieces; only its last descriptor asks for status.
    r.put_tx(
        1,
        TxDescriptor {
            buffer_addr: TX_BUFS + 0x1000,
            length: 1000,
            cmd: tx_cmd::IFCS,
            ..Default::default()
        },
    );
    r.put_tx(
        2,
        TxDescriptor {
            buffer_addr: TX_BUFS + 0x1000 + 1000,
            length: 514,
            cmd: eop_rs,
            ..Default::default()
        },
    );
    // A third frame whose EOP is not yet before TDT waits.
    r.put_tx(
        3,
        TxDescriptor {
            buffer_addr: TX_BUFS,
            length: 14,
            cmd: 0,
            ..Default::default()
        },
    );
    r.put_tx(
        4,
        TxDescriptor {
            buffer_addr: TX_BUFS + 14,
            length: 20,
            cmd: eop_rs,
            ..Default::default()
        },
    );
    r.write(reg::TDT, 4);
    assert_eq!(r.wire.recv_bytes().unwrap(), a);
    assert_eq!(r.wire.recv_bytes().unwrap(), b);
    assert_eq!(r.wire.pending(), 0);
    assert_eq!(r.read(reg::TDH), 3, "stopped at the incomplete frame");
    assert_eq!(r.tx_desc(0).status & tx_status::DD, tx_status::DD);
    assert_eq!(r.tx_desc(1).status & tx_status::DD, 0, "no RS");
    assert_eq!(r.tx_desc(2).status & tx_status::DD, tx_status::DD);
    assert_eq!(r.read(reg::ICR), icr::TXDW);
    assert_eq!(r.nic.take_interrupts(), 1);
    r.write(reg::TDT, 5);
    // 34 bytes, padded to 60 (PSP).
    let short = r.wire.recv_bytes().unwrap();
    assert_eq!(short.len(), MIN_FRAME_LEN);
    assert_eq!(short[..34], a[..34]);
    assert!(short[34..].iter().all(|b| *b == 0));
    assert_eq!(r.read(reg::ICR), icr::TXDW | icr::TXQE);
    let s = r.nic.stats();
    assert_eq!((s.tx_frames, s.tx_bytes), (3, 100 + 1514 + 60));
    assert_eq!(s.registers.tdt_writes, 3);
}

#[test]
fn transmit_drops_offload_and_bad_length_frames_and_honours_tctl_en() {
    let mut r = Rig::new();
    r.setup_tx(8);
    r.write(reg::TCTL, 0);
    let a = frame([2, 0, 0, 0, 0, 1], 64, 1);
    r.mem.write_slice(&a, GuestAddress(TX_BUFS)).unwrap();
    let eop_rs = tx_cmd::EOP | tx_cmd::RS;
    r.put_tx(
        0,
        TxDescriptor {
            buffer_addr: TX_BUFS,
            length: 64,
            cmd: eop_rs | tx_cmd::DEXT,
            ..Default::default()
        },
    );
    r.put_tx(
        1,
        TxDescriptor {
            buffer_addr: TX_BUFS,
            length: 0,
            cmd: eop_rs,
            ..Default::default()
        },
    );
    r.put_tx(
        2,
        TxDescriptor {
            buffer_addr: TX_BUFS,
            length: 1600,
            cmd: eop_rs,
            ..Default::default()
        },
    );
    r.put_tx(
        3,
        TxDescriptor {
            buffer_addr: TX_BUFS,
            length: 64,
            cmd: eop_rs,
            ..Default::default()
        },
    );
    r.write(reg::TDT, 4);
    assert_eq!(r.read(reg::TDH), 0, "transmitter disabled");
    r.write(reg::TCTL, tctl::EN);
    assert_eq!(r.read(reg::TDH), 4, "enabling starts it");
    assert_eq!(r.wire.recv_bytes().unwrap(), a);
    assert_eq!(r.wire.pending(), 0);
    let s = r.nic.stats();
    assert_eq!((s.tx_frames, s.tx_dropped_bad_frame), (1, 3));
    for i in 0..4 {
        assert_eq!(
            r.tx_desc(i).status,
            tx_status::DD,
            "dropped frames complete too"
        );
    }
}

#[test]
fn receive_stores_frames_the_filter_passes_and_raises_rxt0() {
    let mut r = Rig::new();
    r.setup_rx(8, 7, rctl::BAM | rctl::SECRC);
    r.write(reg::IMS, icr::RXT0);
    let mine = frame(MAC, 200, 1);
    let bcast = frame([0xff; 6], 60, 2);
    let other = frame([2, 0, 0, 0, 0, 7], 60, 3);
    let mcast_in = frame([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb], 60, 4);
    let mcast_out = frame([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01], 60, 5);
    // mDNS's hash under MO 0 is 0xfb0: MTA[0x7d] bit 16.
    r.write(reg::MTA + 4 * 0x7d, 1 << 16);
    for f in [&mine, &other, &bcast, &mcast_out, &mcast_in] {
        r.wire.send_bytes(f).unwrap();
    }
    let pass = r.receive();
    assert_eq!(
        pass,
        RxPass {
            stored: 3,
            more: false,
            want_rx: true
        }
    );
    for (i, want) in [&mine, &bcast, &mcast_in].into_iter().enumerate() {
        let d = r.rx_desc(i as u32);
        assert_eq!(d.status, rx_status::DD | rx_status::EOP | rx_status::IXSM);
        assert_eq!(r.rx_bytes(&d), *want);
    }
    assert_eq!(r.read(reg::RDH), 3);
    assert_eq!(r.nic.take_interrupts(), 1);
    assert_eq!(r.read(reg::ICR), icr::RXT0);
    // Promiscuous unicast takes the other frame; without SECRC the FCS comes along.
    r.write(reg::RCTL, rctl::EN | rctl::UPE);
    r.wire.send_bytes(&other).unwrap();
    assert_eq!(r.receive().stored, 1);
    let d = r.rx_desc(3);
    let got = r.rx_bytes(&d);
    assert_eq!(got.len(), 64);
    assert_eq!(got[..60], other[..]);
    assert_eq!(got[60..], crc32fast::hash(&other).to_le_bytes());
    let s = r.nic.stats();
    assert_eq!(
        (s.rx_frames, s.rx_bytes, s.rx_filtered),
        (4, 200 + 60 * 3, 2)
    );
}

#[test]
fn a_frame_spans_small_buffers_and_waits_for_descriptors() {
    let mut r = Rig::new();
    let bits = rctl::buffer_size_bits(256).unwrap() | rctl::SECRC;
    r.setup_rx(8, 2, bits);
    r.write(reg::IMS, icr::RXT0 | icr::RXO);
    assert!(r.nic.take_rx_kick(), "RCTL.EN");
    let big = frame(MAC, 600, 9); // three 256-byte buffers
    r.wire.send_bytes(&big).unwrap();
    let pass = r.receive();
    assert_eq!(
        pass,
        RxPass {
            stored: 0,
            more: false,
            want_rx: false
        }
    );
    assert_eq!(r.read(reg::ICR), icr::RXO);
    assert_eq!(r.nic.stats().rx_stalls, 1);
    assert!(!r.nic.take_rx_kick());
    r.write(reg::RDT, 5);
    assert!(
        r.nic.take_rx_kick(),
        "buffers returned to a starved receiver"
    );
    assert_eq!(r.receive().stored, 1);
    let parts: Vec<_> = (0..3).map(|i| r.rx_desc(i)).collect();
    assert_eq!(
        parts.iter().map(|d| d.length).collect::<Vec<_>>(),
        [256, 256, 88]
    );
    assert_eq!(parts[0].status & rx_status::EOP, 0);
    assert_eq!(parts[1].status & rx_status::EOP, 0);
    assert_eq!(parts[2].status & rx_status::EOP, rx_status::EOP);
    let joined: Vec<u8> = parts.iter().flat_map(|d| r.rx_bytes(d)).collect();
    assert_eq!(joined, big);
    assert_eq!(r.read(reg::RDH), 3);
}

#[test]
fn a_disabled_receiver_drops_what_arrives_and_a_batch_stops_at_rx_batch() {
    let mut r = Rig::new();
    r.wire.send_bytes(&frame(MAC, 60, 0)).unwrap();
    let pass = r.receive();
    assert!(pass.want_rx && pass.stored == 0);
    assert_eq!(r.nic.stats().rx_dropped_disabled, 1);
    let (net, wire) = MemoryNet::pair_with_capacity(RX_BATCH + 10).unwrap();
    r.net = net;
    r.wire = wire;
    r.setup_rx(256, 255, rctl::SECRC);
    for i in 0..RX_BATCH + 5 {
        r.wire.send_bytes(&frame(MAC, 60, i as u8)).unwrap();
    }
    assert_eq!(
        r.receive(),
        RxPass {
            stored: RX_BATCH,
            more: true,
            want_rx: true
        }
    );
    assert_eq!(r.receive().stored, 5);
}

#[test]
fn hostile_rings_fail_only_this_nic_until_reset() {
    // Head or tail past the ring.
    let mut r = Rig::new();
    r.setup_tx(8);
    r.write(reg::TDT, 9);
    assert!(matches!(
        r.nic.failure(),
        Some(Failure::TailOutOfRange {
            ring: Ring::Transmit,
            tail: 9,
            count: 8
        })
    ));
    r.write(reg::TDT, 1);
    assert_eq!(
        r.nic.stats().failures,
        1,
        "counted once; the NIC stays stopped"
    );
    r.write(reg::CTRL, ctrl::RST);
    assert_eq!(r.nic.failure(), None);

    // A ring that runs out of guest RAM.
    r.write(reg::TDBAL, (RAM - 64) as u32);
    r.write(reg::TDLEN, 128);
    r.write(reg::TCTL, tctl::EN);
    r.write(reg::TDT, 1);
    assert!(matches!(r.nic.failure(), Some(Failure::RingNotRam { .. })));

    // A transmit buffer outside RAM: nothing is sent.
    let mut r = Rig::new();
    r.setup_tx(8);
    r.put_tx(
        0,
        TxDescriptor {
            buffer_addr: RAM - 10,
            length: 64,
            cmd: tx_cmd::EOP,
            ..Default::default()
        },
    );
    r.write(reg::TDT, 1);
    assert!(matches!(
        r.nic.failure(),
        Some(Failure::BufferNotRam {
            ring: Ring::Transmit,
            ..
        })
    ));
    assert_eq!(r.wire.pending(), 0);
    assert_eq!(r.read(reg::TDH), 0);

    // A receive buffer outside RAM; a head past the ring; a base above 4 GiB.
    let mut r = Rig::new();
    r.setup_rx(8, 4, rctl::SECRC);
    r.mem
        .write_slice(&u64::MAX.to_le_bytes(), GuestAddress(RX_RING))
        .unwrap();
    r.wire.send_bytes(&frame(MAC, 60, 0)).unwrap();
    r.receive();
    assert!(matches!(
        r.nic.failure(),
        Some(Failure::BufferNotRam {
            ring: Ring::Receive,
            ..
        })
    ));
    assert_eq!(r.receive(), RxPass::default(), "a failed NIC takes nothing");
    r.write(reg::CTRL, ctrl::RST);
    r.setup_rx(8, 4, rctl::SECRC);
    r.write(reg::RDH, 8);
    r.receive();
    assert!(matches!(
        r.nic.failure(),
        Some(Failure::HeadOutOfRange {
            ring: Ring::Receive,
            ..
        })
    ));
    r.write(reg::CTRL, ctrl::RST);
    r.setup_rx(8, 4, rctl::SECRC);
    r.write(reg::RDBAH, 1);
    r.receive();
    assert!(matches!(
        r.nic.failure(),
        Some(Failure::RingNotRam {
            ring: Ring::Receive,
            ..
        })
    ));
    assert_eq!(r.nic.stats().failures, 3);
}

#[test]
fn the_device_receives_on_its_thread_and_interrupts_through_its_eventfd() {
    let (net, mut wire) = MemoryNet::pair().unwrap();
    let dev = E1000Device::new(MAC, Box::new(net)).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    dev.attach_memory(mem.clone()).unwrap();
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    dev.connect_interrupt(irq.clone()).unwrap();
    dev.start().unwrap();
    assert!(dev.start().is_err());
    let w = |off: u32, v: u32| dev.mmio_write(u64::from(off), &v.to_le_bytes());
    for i in 0..4u64 {
        let d = RxDescriptor {
            buffer_addr: RX_BUFS + i * 2048,
            ..Default::default()
        };
        mem.write_slice(d.as_bytes(), GuestAddress(RX_RING + i * 16))
            .unwrap();
    }
    w(reg::RDBAL, RX_RING as u32);
    w(reg::RDLEN, 128);
    w(reg::RDT, 2);
    w(reg::IMS, icr::RXT0);
    w(reg::RCTL, rctl::EN | rctl::SECRC);
    let frames: Vec<_> = (0..3).map(|i| frame(MAC, 100, i)).collect();
    for f in &frames {
        wire.send_bytes(f).unwrap();
    }
    let stats = dev.stats_handle();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.get().rx_frames < 2 {
        assert!(Instant::now() < deadline, "{:?}", stats.get());
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(irq.read().unwrap(), 1);
    // The ring is full; returning buffers restarts the thread.
    assert_eq!(stats.get().rx_stalls, 1);
    w(reg::RDT, 3);
    while stats.get().rx_frames < 3 {
        assert!(Instant::now() < deadline, "{:?}", stats.get());
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut got = vec![0u8; 100];
    mem.read_slice(&mut got, GuestAddress(RX_BUFS + 2 * 2048))
        .unwrap();
    assert_eq!(got, frames[2]);
    dev.stop();
}

/// A register offset a guest might write, with weight on the ones with effects.
fn any_register() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(reg::CTRL),
        Just(reg::ICR),
        Just(reg::ICS),
        Just(reg::IMS),
        Just(reg::IMC),
        Just(reg::ITR),
        Just(reg::RCTL),
        Just(reg::TCTL),
        Just(reg::RDBAL),
        Just(reg::RDBAH),
        Just(reg::RDLEN),
        Just(reg::RDH),
        Just(reg::RDT),
        Just(reg::TDBAL),
        Just(reg::TDBAH),
        Just(reg::TDLEN),
        Just(reg::TDH),
        Just(reg::TDT),
        Just(reg::EERD),
        (0u32..0x2_0000).prop_map(|o| o & !3),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Write(u32, u32),
    Read(u32),
    Frame(usize),
    Receive,
    Poke(u64, u64),
    Time(u64),
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any_register(), prop_oneof![any::<u32>(), 0u32..64, Just(0x2000u32), Just(0x1000)])
            .prop_map(|(o, v)| Op::Write(o, v)),
        2 => any_register().prop_map(Op::Read),
        1 => (1usize..1600).prop_map(Op::Frame),
        1 => Just(Op::Receive),
        2 => (0u64..0x3000, any::<u64>()).prop_map(|(a, v)| Op::Poke(a & !7, v)),
        1 => (0u64..100_000).prop_map(Op::Time),
    ]
}

proptest! {
    /// Whatever the guest writes to the registers and its rings, in any order, the model neither
    /// panics nor moves more frames than it was given, and a failure stops it until reset.
    #[test]
    fn any_register_and_ring_sequence_is_survived(ops in proptest::collection::vec(any_op(), 1..200)) {
        let mut r = Rig::new();
        let mut sent = 0u64;
        for op in ops {
            match op {
                Op::Write(o, v) => r.write(o, v),
                Op::Read(o) => { r.read(o); }
                Op::Frame(len) => {
                    if r.wire.send_bytes(&frame(MAC, len.clamp(14, 1514), 0)).unwrap() {
                        sent += 1;
                    }
                }
                Op::Receive => { r.receive(); }
                Op::Poke(a, v) => r.mem.write_slice(&v.to_le_bytes(), GuestAddress(a)).unwrap(),
                Op::Time(t) => { r.now += t; r.nic.tick(r.now); }
            }
            let s = r.nic.stats();
            prop_assert!(s.rx_frames + s.rx_filtered + s.rx_dropped_disabled <= sent);
            if r.nic.failure().is_some() {
                prop_assert!(r.receive().stored == 0);
            }
        }
    }

    /// Frames queued in a transmit ring arrive at the backend exactly as the descriptors say:
    /// the concatenation of each EOP-terminated group's buffers, padded to 60 under PSP.
    #[test]
    fn transmitted_frames_are_the_descriptors_buffers(
        frames in proptest::collection::vec(
            proptest::collection::vec((1u16..600, any::<u8>()), 1..4), 1..6)
    ) {
        let mut r = Rig::new();
        r.setup_tx(32);
        let mut index = 0u32;
        let mut at = TX_BUFS;
        let mut expected = Vec::new();
        for parts in &frames {
            let mut whole = Vec::new();
            for (k, (len, seed)) in parts.iter().enumerate() {
                let bytes: Vec<u8> = (0..*len).map(|i| seed.wrapping_add(i as u8)).collect();
                r.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
                let eop = if k + 1 == parts.len() { tx_cmd::EOP } else { 0 };
                r.put_tx(index, TxDescriptor { buffer_addr: at, length: *len, cmd: eop | tx_cmd::RS, ..Default::default() });
                whole.extend_from_slice(&bytes);
                at += u64::from(*len);
                index += 1;
            }
            if whole.len() <= crate::net::MAX_FRAME_LEN {
                whole.resize(whole.len().max(MIN_FRAME_LEN), 0);
                expected.push(whole);
            }
        }
        r.write(reg::TDT, index);
        let mut got = Vec::new();
        while let Some(f) = r.wire.recv_bytes() {
            got.push(f);
        }
        prop_assert_eq!(got, expected);
        prop_assert_eq!(r.read(reg::TDH), index);
        for i in 0..index {
            prop_assert_eq!(r.tx_desc(i).status, tx_status::DD);
        }
    }
}
