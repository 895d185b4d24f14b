//! The driver against a scripted register file (a log of every access, EERD and CTRL.RST
//! answered, ICR values queued by the test) and descriptors the test completes in DMA memory as
//! the device would: the bring-up sequence, one TDT write per batch, the NAPI discipline of
//! ICR/IMC/RDT/IMS per interrupt, the budget, reclaim on interrupt, hostile descriptors.
#![allow(unsafe_code)]

extern crate std;

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};

use e1000_protocol::{eeprom, eerd, icr, rctl, reg, rx_status, tctl, tx_cmd, tx_status};
use smoltcp::phy::{Device, RxToken, TxToken};
use smoltcp::time::Instant;

use super::*;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xe1, 0x00, 0x02];
const VECTOR: u8 = 0x58;

/// Page-aligned heap memory as DMA memory; interrupts counted by the test.
#[derive(Clone, Default)]
struct TestPlatform {
    irqs: Rc<Cell<u64>>,
    sleeps: Rc<Cell<u64>>,
}

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
        // SAFETY: non-zero size.
        let va = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some(DmaRegion {
            va,
            pa: va.as_ptr() as u64,
            len: pages * PAGE_SIZE,
        })
    }
    fn free_dma(&self, region: DmaRegion) {
        let layout = Layout::from_size_align(region.len, PAGE_SIZE).unwrap();
        // SAFETY: allocated by `alloc_dma` with this layout.
        unsafe { dealloc(region.va.as_ptr(), layout) };
    }
    fn interrupt_count(&self, vector: u8) -> u64 {
        if vector == VECTOR {
            self.irqs.get()
        } else {
            0
        }
    }
    fn interrupt_total(&self) -> u64 {
        self.irqs.get()
    }
    fn wait_for_interrupt(&self, seen: u64) -> u64 {
        self.sleeps.set(self.sleeps.get() + 1);
        seen
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read(u32),
    Write(u32, u32),
}

#[derive(Default)]
struct Script {
    log: Vec<Access>,
    eeprom: Vec<u16>,
    eerd: u32,
    icr: Vec<u32>,
    regs: std::collections::BTreeMap<u32, u32>,
}

#[derive(Clone)]
struct ScriptedRegs(Rc<RefCell<Script>>);

impl Registers for ScriptedRegs {
    fn read(&mut self, offset: u32) -> u32 {
        let mut s = self.0.borrow_mut();
        s.log.push(Access::Read(offset));
        match offset {
            reg::EERD => s.eerd,
            reg::ICR => {
                if s.icr.is_empty() {
                    0
                } else {
                    s.icr.remove(0)
                }
            }
            reg::STATUS => e1000_protocol::status::LU,
            o => s.regs.get(&o).copied().unwrap_or(0) & !e1000_protocol::ctrl::RST,
        }
    }
    fn write(&mut self, offset: u32, value: u32) {
        let mut s = self.0.borrow_mut();
        s.log.push(Access::Write(offset, value));
        if offset == reg::EERD {
            let addr = (value & eerd::ADDR_MASK) >> eerd::ADDR_SHIFT;
            let word = s.eeprom.get(addr as usize).copied().unwrap_or(0);
            s.eerd = u32::from(word) << eerd::DATA_SHIFT | value & eerd::ADDR_MASK | eerd::DONE;
        }
        s.regs.insert(offset, value);
    }
}

struct Rig {
    nic: E1000Nic<TestPlatform, ScriptedRegs>,
    regs: ScriptedRegs,
    platform: TestPlatform,
}

impl Rig {
    fn new(config: E1000Config) -> Self {
        let regs = ScriptedRegs(Rc::default());
        regs.0.borrow_mut().eeprom = eeprom::image(MAC).to_vec();
        let platform = TestPlatform::default();
        let nic = E1000Nic::open(platform.clone(), regs.clone(), VECTOR, config).unwrap();
        regs.0.borrow_mut().log.clear();
        Self {
            nic,
            regs,
            platform,
        }
    }

    fn log(&self) -> Vec<Access> {
        core::mem::take(&mut self.regs.0.borrow_mut().log)
    }

    fn interrupt(&self, causes: u32) {
        self.regs.0.borrow_mut().icr.push(causes);
        self.platform.irqs.set(self.platform.irqs.get() + 1);
    }

    /// Completes receive descriptor `i` as the device would, with `frame` in its buffer.
    fn complete_rx(&self, i: u32, frame: &[u8], status: u8) {
        let at = i as usize * DESCRIPTOR_SIZE;
        self.nic.rx_buffers.write(i as usize * BUFFER_SIZE, frame);
        self.nic
            .rx_ring
            .atomic_u32(at + 8)
            .store(frame.len() as u32, Ordering::Relaxed);
        self.nic
            .rx_ring
            .atomic_u32(at + 12)
            .store(u32::from(status), Ordering::Release);
    }

    fn send(&mut self, len: usize, seed: u8) -> bool {
        match self.nic.transmit(Instant::ZERO) {
            Some(tok) => {
                tok.consume(len, |b| {
                    b.iter_mut()
                        .enumerate()
                        .for_each(|(i, x)| *x = seed ^ i as u8)
                });
                true
            }
            None => false,
        }
    }
}

fn ok_rx() -> u8 {
    rx_status::DD | rx_status::EOP | rx_status::IXSM
}

#[test]
fn open_resets_reads_the_eeprom_and_programs_both_rings() {
    let regs = ScriptedRegs(Rc::default());
    regs.0.borrow_mut().eeprom = eeprom::image(MAC).to_vec();
    let nic = E1000Nic::open(
        TestPlatform::default(),
        regs.clone(),
        VECTOR,
        E1000Config::default(),
    )
    .unwrap();
    assert_eq!(nic.mac(), MAC);
    assert!(nic.link_up());
    let s = regs.0.borrow();
    let writes: Vec<(u32, u32)> = s
        .log
        .iter()
        .filter_map(|a| match a {
            Access::Write(o, v) => Some((*o, *v)),
            _ => None,
        })
        .collect();
    assert_eq!(writes[0], (reg::IMC, !0));
    assert_eq!(writes[1].0, reg::CTRL);
    assert_ne!(writes[1].1 & e1000_protocol::ctrl::RST, 0);
    assert_eq!(writes.iter().filter(|(o, _)| *o == reg::EERD).count(), 64);
    let last = |o: u32| writes.iter().rev().find(|(r, _)| *r == o).map(|w| w.1);
    assert_eq!(
        last(reg::RAL0),
        Some(u32::from_le_bytes([0x52, 0x54, 0x00, 0xe1]))
    );
    assert_eq!(last(reg::RAH0), Some(0x0200 | RAH_AV));
    assert_eq!(last(reg::TDLEN), Some(4096));
    assert_eq!(last(reg::RDLEN), Some(4096));
    assert_eq!(last(reg::RDT), Some(255), "every buffer but one");
    assert_eq!(last(reg::RCTL), Some(rctl::EN | rctl::BAM | rctl::SECRC));
    assert_ne!(last(reg::TCTL).unwrap() & (tctl::EN | tctl::PSP), 0);
    assert_eq!(last(reg::ITR), Some(195));
    assert_eq!(
        writes.last(),
        Some(&(reg::IMS, IMS_ENABLE_MASK)),
        "unmasked last"
    );
    drop(s);

    let bad = ScriptedRegs(Rc::default());
    let mut image = eeprom::image(MAC).to_vec();
    image[9] ^= 1;
    bad.0.borrow_mut().eeprom = image;
    assert_eq!(
        E1000Nic::open(TestPlatform::default(), bad, VECTOR, E1000Config::default()).unwrap_err(),
        E1000Error::EepromChecksum
    );
}

#[test]
fn a_batch_of_frames_costs_one_tdt_write() {
    let mut r = Rig::new(E1000Config::default());
    for i in 0..5 {
        assert!(r.send(60 + i, i as u8));
    }
    assert!(r.log().is_empty(), "queueing touches no register");
    r.nic.flush();
    assert_eq!(r.log(), [Access::Write(reg::TDT, 5)]);
    r.nic.flush();
    assert!(r.log().is_empty(), "nothing new: no doorbell");
    for i in 0..5usize {
        let at = i * DESCRIPTOR_SIZE;
        let lower = r.nic.tx.ring.atomic_u32(at + 8).load(Ordering::Relaxed);
        assert_eq!(lower & 0xFFFF, 60 + i as u32);
        assert_eq!((lower >> 24) as u8, tx_cmd::EOP | tx_cmd::IFCS | tx_cmd::RS);
        let mut b = [0u8; 3];
        r.nic.tx.buffers.read(i * BUFFER_SIZE, &mut b);
        assert_eq!(b, [i as u8, i as u8 ^ 1, i as u8 ^ 2]);
    }
    assert_eq!(r.nic.stats().tdt_writes, 1);
}

#[test]
fn an_interrupt_is_handled_napi_style_with_rdt_written_per_16_buffers() {
    let mut r = Rig::new(E1000Config::default());
    for i in 0..20u32 {
        r.complete_rx(i, &[i as u8; 60], ok_rx());
    }
    assert_eq!(r.nic.poll(), 0, "no interrupt yet: nothing is looked at");
    assert!(r.log().is_empty());
    r.interrupt(icr::RXT0);
    assert_eq!(r.nic.poll(), 20);
    assert_eq!(
        r.log(),
        [
            Access::Read(reg::ICR),
            Access::Write(reg::IMC, !0),
            Access::Write(reg::RDT, (255 + 16) % 256),
            Access::Write(reg::RDT, (255 + 20) % 256),
            Access::Write(reg::IMS, IMS_ENABLE_MASK),
        ]
    );
    for i in 0..20u8 {
        let tok = r.nic.receive(Instant::ZERO).unwrap().0;
        tok.consume(|f| assert_eq!(f, &[i; 60]));
    }
    assert!(r.nic.receive(Instant::ZERO).is_none());
    // An interrupt whose causes the previous drain already took reads ICR and stops.
    r.interrupt(0);
    assert_eq!(r.nic.poll(), 0);
    assert_eq!(r.log(), [Access::Read(reg::ICR)]);
}

#[test]
fn a_drain_over_budget_stays_masked_and_drains_on() {
    let mut r = Rig::new(E1000Config {
        budget: 8,
        ..Default::default()
    });
    for i in 0..12u32 {
        r.complete_rx(i, &[1; 60], ok_rx());
    }
    r.interrupt(icr::RXT0);
    assert_eq!(r.nic.poll(), 8);
    assert_eq!(
        r.log(),
        [
            Access::Read(reg::ICR),
            Access::Write(reg::IMC, !0),
            Access::Write(reg::RDT, 7)
        ]
    );
    r.nic.wait();
    assert_eq!(r.platform.sleeps.get(), 0, "work waits: no sleep");
    assert_eq!(r.nic.poll(), 4, "no interrupt needed");
    assert_eq!(
        r.log(),
        [
            Access::Write(reg::RDT, 11),
            Access::Write(reg::IMS, IMS_ENABLE_MASK)
        ]
    );
    while r
        .nic
        .receive(Instant::ZERO)
        .map(|(t, _)| t.consume(|_| ()))
        .is_some()
    {}
    r.nic.wait();
    assert_eq!(r.platform.sleeps.get(), 1);
    assert_eq!(r.nic.stats().budget_exhausted, 1);
}

#[test]
fn transmit_descriptors_are_reclaimed_on_interrupt_only() {
    let mut r = Rig::new(E1000Config {
        tx_descriptors: 8,
        ..Default::default()
    });
    let sent = (0..10).filter(|i| r.send(60, *i)).count();
    assert_eq!(sent, 7, "a ring of 8 holds 7");
    assert_eq!(r.nic.stats().tx_busy, 0, "no token was given for the rest");
    r.nic.flush();
    for i in 0..7usize {
        r.nic
            .tx
            .ring
            .atomic_u32(i * 16 + 12)
            .store(u32::from(tx_status::DD), Ordering::Release);
    }
    assert!(!r.send(60, 0), "DD alone reclaims nothing");
    r.interrupt(icr::TXDW);
    assert_eq!(r.nic.poll(), 7);
    assert!(r.send(60, 0));
    assert_eq!(r.nic.stats().tx_reclaimed, 7);
}

#[test]
fn malformed_receive_descriptors_are_skipped_and_their_buffers_returned() {
    let mut r = Rig::new(E1000Config::default());
    r.complete_rx(0, &[1; 60], rx_status::DD); // no EOP: a frame over several buffers
    r.complete_rx(1, &[2; 60], ok_rx());
    // A length past the buffer.
    r.nic
        .rx_ring
        .atomic_u32(2 * 16 + 8)
        .store(4000, Ordering::Relaxed);
    r.nic
        .rx_ring
        .atomic_u32(2 * 16 + 12)
        .store(u32::from(ok_rx()), Ordering::Release);
    r.interrupt(icr::RXT0);
    assert_eq!(r.nic.poll(), 3);
    assert_eq!(r.nic.stats().rx_errors, 2);
    assert_eq!(r.nic.stats().rx_frames, 1);
    assert!(r.log().contains(&Access::Write(reg::RDT, 2)));
}

#[test]
fn link_changes_are_read_on_lsc() {
    let mut r = Rig::new(E1000Config::default());
    r.interrupt(icr::LSC);
    r.nic.poll();
    assert_eq!(
        r.log(),
        [
            Access::Read(reg::ICR),
            Access::Write(reg::IMC, !0),
            Access::Read(reg::STATUS),
            Access::Write(reg::IMS, IMS_ENABLE_MASK),
        ]
    );
    assert!(r.nic.link_up());
}
