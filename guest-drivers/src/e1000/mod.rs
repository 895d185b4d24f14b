//! A driver for the Intel 82540EM ("e1000") as an unenlightened guest drives it, register by
//! register, held to the discipline of Linux's `e1000` driver so the baseline is an honest one:
//!
//! - **Bring-up** ([`E1000Nic::open`]): interrupts masked, device reset (CTRL.RST, polled until
//!   it clears), the 64 EEPROM words read through EERD and their checksum checked, the MAC taken
//!   from words 0–2 and written to RAL0/RAH0, link set up (CTRL.SLU), the transmit ring (TIPG,
//!   TCTL: EN, PSP, collision threshold and distance) and the receive ring (every buffer given but
//!   one; RCTL: EN, BAM, SECRC, 2 KiB buffers) programmed, ITR written, then IMS with Linux's mask
//!   (RXT0, TXDW, RXDMT0, RXSEQ, LSC).
//! - **Transmit**: smoltcp builds each frame in a staging buffer, copied once into the slot of the
//!   next descriptor (one descriptor per frame: EOP, IFCS, RS). [`E1000Nic::flush`] writes TDT
//!   once for every frame queued since the last flush (Linux's `xmit_more`): one exit per batch.
//! - **Interrupts, NAPI style**: [`E1000Nic::poll`] does work only after the NIC's vector fired
//!   (or while the last drain stopped at its budget): it reads ICR once (read-to-clear: the cause
//!   is read once per interrupt), masks everything (IMC), reclaims transmit descriptors whose DD
//!   is set, drains up to [`E1000Config::budget`] received frames, and unmasks (IMS) only when the
//!   drain came in under budget — as `napi_complete_done` does; otherwise it stays masked and the
//!   next poll drains on. Writes are not followed by a flushing STATUS read as Linux's are: an MMIO
//!   write here is a synchronous exit, so there is nothing posted to flush.
//! - **Receive buffers** are re-armed in place as frames are copied out to the driver's receive
//!   queue and given back by advancing RDT once per 16 (Linux's `E1000_RX_BUFFER_WRITE`) and once
//!   at the end of a drain.
//! - [`E1000Nic::wait`] halts until an interrupt unless work is known to wait.
//!
//! The device is untrusted too: a receive descriptor with a length outside its buffer, or a frame
//! spread over several buffers (never made by a 2 KiB-buffer NIC with a 1500-byte MTU), is counted
//! in [`E1000Stats::rx_errors`], dropped and its buffer given back.

#![deny(unsafe_code)]

mod device;
pub mod regs;
#[cfg(test)]
mod tests;

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use e1000_protocol::{
    ctrl, eeprom, eerd, icr, rctl, reg, rx_status, status, tctl, tx_cmd, tx_status,
    DESCRIPTOR_SIZE, RAH_AV, RX_STATUS_OFFSET, TX_STATUS_OFFSET,
};

use crate::platform::{DmaRegion, Platform, PAGE_SIZE};
pub use device::{E1000RxToken, E1000TxToken};
pub use regs::{MmioRegisters, Registers};

/// Bytes of each receive and transmit buffer (RCTL.BSIZE 2048).
pub const BUFFER_SIZE: usize = 2048;
/// Largest frame the driver sends or takes: a 1500-byte MTU plus the Ethernet header.
pub const MAX_FRAME_LEN: usize = 1514;
/// Receive buffers given back per RDT write while draining (Linux's `E1000_RX_BUFFER_WRITE`).
pub const RX_BUFFER_WRITE: u32 = 16;
/// The causes the driver unmasks (Linux's `IMS_ENABLE_MASK`).
pub const IMS_ENABLE_MASK: u32 = icr::RXT0 | icr::TXDW | icr::RXDMT0 | icr::RXSEQ | icr::LSC;
/// Polls of CTRL.RST or EERD.DONE before giving up.
const POLL_LIMIT: u32 = 10_000;

/// How the driver sets the NIC up.
#[derive(Debug, Clone, Copy)]
pub struct E1000Config {
    /// Transmit descriptors (a multiple of 8, at most 256).
    pub tx_descriptors: u32,
    /// Receive descriptors (a multiple of 8, at most 256).
    pub rx_descriptors: u32,
    /// ITR: least spacing of interrupts in 256 ns units (0: none). The default, 195, is Linux's
    /// starting rate of 20 000 interrupts a second.
    pub itr: u32,
    /// Frames one interrupt-driven drain takes at most (NAPI's weight).
    pub budget: usize,
    /// Frames the driver's receive queue holds for the stack.
    pub rx_queue_frames: usize,
}

impl Default for E1000Config {
    fn default() -> Self {
        Self {
            tx_descriptors: 256,
            rx_descriptors: 256,
            itr: 195,
            budget: 64,
            rx_queue_frames: 128,
        }
    }
}

/// Why the NIC cannot be driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum E1000Error {
    /// The platform had no DMA memory.
    #[error("no DMA memory for the e1000's {0}")]
    NoMemory(&'static str),
    /// CTRL.RST did not clear.
    #[error("the e1000 did not come out of reset")]
    ResetTimeout,
    /// EERD never reported DONE.
    #[error("the e1000's EEPROM read of word {0} never completed")]
    EepromTimeout(u32),
    /// The EEPROM words do not sum to 0xBABA.
    #[error("the e1000's EEPROM checksum is wrong")]
    EepromChecksum,
    /// A ring size the driver cannot use.
    #[error("{0} descriptors is not a ring size (a multiple of 8, 8..=256)")]
    RingSize(u32),
}

/// What the driver did and saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct E1000Stats {
    /// Frames queued to the transmit ring.
    pub tx_frames: u64,
    /// Frames smoltcp built that found no descriptor (dropped).
    pub tx_busy: u64,
    /// Transmit descriptors reclaimed.
    pub tx_reclaimed: u64,
    /// Frames received into the queue.
    pub rx_frames: u64,
    /// Malformed receive descriptors (skipped).
    pub rx_errors: u64,
    /// Interrupts handled (ICR reads).
    pub icr_reads: u64,
    /// IMC writes (masking).
    pub imc_writes: u64,
    /// IMS writes (unmasking).
    pub ims_writes: u64,
    /// TDT writes (one per flushed batch).
    pub tdt_writes: u64,
    /// RDT writes.
    pub rdt_writes: u64,
    /// Drains that stopped at the budget.
    pub budget_exhausted: u64,
    /// Times [`E1000Nic::wait`] halted.
    pub sleeps: u64,
}

/// Frames copied out of receive buffers, waiting for the stack.
#[derive(Debug)]
pub(crate) struct ReceiveQueue {
    slots: Vec<u8>,
    lens: VecDeque<usize>,
    capacity: usize,
    next: usize,
}

impl ReceiveQueue {
    fn new(capacity: usize) -> Self {
        Self {
            slots: vec![0; capacity * MAX_FRAME_LEN],
            lens: VecDeque::with_capacity(capacity),
            capacity,
            next: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    fn is_full(&self) -> bool {
        self.lens.len() == self.capacity
    }

    fn slot(&self, index: usize) -> core::ops::Range<usize> {
        index * MAX_FRAME_LEN..(index + 1) * MAX_FRAME_LEN
    }

    /// Room for the next frame (call only when not full).
    fn push_with(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) {
        let index = (self.next + self.lens.len()) % self.capacity;
        let range = self.slot(index);
        fill(&mut self.slots[range][..len]);
        self.lens.push_back(len);
    }

    pub(crate) fn front(&self) -> Option<&[u8]> {
        let len = *self.lens.front()?;
        Some(&self.slots[self.slot(self.next)][..len])
    }

    pub(crate) fn pop(&mut self) {
        if self.lens.pop_front().is_some() {
            self.next = (self.next + 1) % self.capacity;
        }
    }
}

/// The transmit ring and its buffers: what a transmit token needs.
#[derive(Debug)]
pub(crate) struct TxPath {
    ring: DmaRegion,
    buffers: DmaRegion,
    count: u32,
    /// Next descriptor to fill (TDT once flushed).
    tail: u32,
    /// Oldest descriptor not yet reclaimed.
    clean: u32,
    /// Frames queued since the last TDT write.
    unflushed: u32,
    pub(crate) staging: Vec<u8>,
    pub(crate) stats: E1000Stats,
}

impl TxPath {
    pub(crate) fn can_send(&self) -> bool {
        (self.tail + 1) % self.count != self.clean
    }

    /// Queues `staging[..len]` in the next descriptor; `false` (counted) if the ring is full.
    pub(crate) fn send_staged(&mut self, len: usize) -> bool {
        if !self.can_send() || len == 0 || len > MAX_FRAME_LEN {
            self.stats.tx_busy += 1;
            return false;
        }
        let slot = self.tail as usize * BUFFER_SIZE;
        self.buffers.write(slot, &self.staging[..len]);
        let at = self.tail as usize * DESCRIPTOR_SIZE;
        let addr = self.buffers.pa + slot as u64;
        self.ring.atomic_u64(at).store(addr, Ordering::Relaxed);
        let cmd = tx_cmd::EOP | tx_cmd::IFCS | tx_cmd::RS;
        // length, cso 0, cmd; then status 0, css 0, special 0.
        let lower = len as u32 | u32::from(cmd) << 24;
        self.ring.atomic_u32(at + 8).store(lower, Ordering::Relaxed);
        self.ring
            .atomic_u32(at + TX_STATUS_OFFSET)
            .store(0, Ordering::Release);
        self.tail = (self.tail + 1) % self.count;
        self.unflushed += 1;
        self.stats.tx_frames += 1;
        true
    }

    /// Reclaims descriptors the device has written DD to.
    fn clean(&mut self) -> usize {
        let mut n = 0;
        while self.clean != self.tail {
            let at = self.clean as usize * DESCRIPTOR_SIZE + TX_STATUS_OFFSET;
            let status = self.ring.atomic_u32(at).load(Ordering::Acquire) as u8;
            if status & tx_status::DD == 0 {
                break;
            }
            self.clean = (self.clean + 1) % self.count;
            n += 1;
        }
        self.stats.tx_reclaimed += n as u64;
        n
    }
}

/// An 82540EM brought up. See the module documentation.
pub struct E1000Nic<P: Platform, R: Registers> {
    platform: P,
    regs: R,
    vector: u8,
    config: E1000Config,
    mac: [u8; 6],
    link_up: bool,
    pub(crate) tx: TxPath,
    rx_ring: DmaRegion,
    rx_buffers: DmaRegion,
    rx_count: u32,
    /// Next descriptor the device will complete.
    rx_next: u32,
    /// RDT as last written.
    rx_tail: u32,
    /// Descriptors re-armed but not yet given back.
    rx_unreturned: u32,
    pub(crate) rx: ReceiveQueue,
    /// The vector's count when the last interrupt was handled.
    irq_seen: u64,
    /// The last drain stopped at its budget: drain on without an interrupt (still masked).
    more: bool,
    masked: bool,
}

impl<P: Platform, R: Registers> core::fmt::Debug for E1000Nic<P, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("E1000Nic")
            .field("mac", &self.mac)
            .field("stats", &self.tx.stats)
            .finish_non_exhaustive()
    }
}

fn ring_size(n: u32) -> Result<u32, E1000Error> {
    if (8..=256).contains(&n) && n.is_multiple_of(8) {
        Ok(n)
    } else {
        Err(E1000Error::RingSize(n))
    }
}

fn pages(bytes: usize) -> usize {
    bytes.div_ceil(PAGE_SIZE)
}

impl<P: Platform, R: Registers> E1000Nic<P, R> {
    /// Resets the NIC behind `regs` and brings it up; its interrupt arrives on `vector`.
    pub fn open(
        platform: P,
        mut regs: R,
        vector: u8,
        config: E1000Config,
    ) -> Result<Self, E1000Error> {
        let tx_count = ring_size(config.tx_descriptors)?;
        let rx_count = ring_size(config.rx_descriptors)?;
        regs.write(reg::IMC, !0);
        let ctrl_now = regs.read(reg::CTRL);
        regs.write(reg::CTRL, ctrl_now | ctrl::RST);
        if !(0..POLL_LIMIT).any(|_| regs.read(reg::CTRL) & ctrl::RST == 0) {
            return Err(E1000Error::ResetTimeout);
        }
        regs.write(reg::IMC, !0);
        regs.read(reg::ICR);

        let mut words = [0u16; eeprom::WORDS];
        for (addr, word) in words.iter_mut().enumerate() {
            let addr = addr as u32;
            regs.write(reg::EERD, eerd::START | addr << eerd::ADDR_SHIFT);
            let done = (0..POLL_LIMIT)
                .map(|_| regs.read(reg::EERD))
                .find(|v| v & eerd::DONE != 0)
                .ok_or(E1000Error::EepromTimeout(addr))?;
            *word = (done >> eerd::DATA_SHIFT) as u16;
        }
        if !eeprom::checksum_ok(&words) {
            return Err(E1000Error::EepromChecksum);
        }
        let mac = eeprom::mac_of([words[0], words[1], words[2]]);
        regs.write(
            reg::RAL0,
            u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]),
        );
        regs.write(
            reg::RAH0,
            u32::from(u16::from_le_bytes([mac[4], mac[5]])) | RAH_AV,
        );
        regs.write(reg::CTRL, ctrl::FD | ctrl::ASDE | ctrl::SLU);

        let alloc = |bytes: usize, what| {
            platform
                .alloc_dma(pages(bytes))
                .ok_or(E1000Error::NoMemory(what))
        };
        let tx_ring = alloc(tx_count as usize * DESCRIPTOR_SIZE, "transmit ring")?;
        let tx_buffers = alloc(tx_count as usize * BUFFER_SIZE, "transmit buffers")?;
        let rx_ring = alloc(rx_count as usize * DESCRIPTOR_SIZE, "receive ring")?;
        let rx_buffers = alloc(rx_count as usize * BUFFER_SIZE, "receive buffers")?;

        regs.write(reg::TDBAL, tx_ring.pa as u32);
        regs.write(reg::TDBAH, (tx_ring.pa >> 32) as u32);
        regs.write(reg::TDLEN, tx_count * DESCRIPTOR_SIZE as u32);
        regs.write(reg::TDH, 0);
        regs.write(reg::TDT, 0);
        // IPGT 8, IPGR1 8, IPGR2 6: the copper defaults.
        regs.write(reg::TIPG, 8 | 8 << 10 | 6 << 20);
        regs.write(
            reg::TCTL,
            tctl::EN | tctl::PSP | 0x0F << tctl::CT_SHIFT | 0x3F << tctl::COLD_SHIFT,
        );

        for i in 0..rx_count as usize {
            let addr = rx_buffers.pa + (i * BUFFER_SIZE) as u64;
            rx_ring
                .atomic_u64(i * DESCRIPTOR_SIZE)
                .store(addr, Ordering::Relaxed);
        }
        regs.write(reg::RDBAL, rx_ring.pa as u32);
        regs.write(reg::RDBAH, (rx_ring.pa >> 32) as u32);
        regs.write(reg::RDLEN, rx_count * DESCRIPTOR_SIZE as u32);
        regs.write(reg::RDH, 0);
        // Every buffer but one: a full ring would look empty (RDH == RDT).
        let rx_tail = rx_count - 1;
        regs.write(reg::RDT, rx_tail);
        let bsize = rctl::buffer_size_bits(BUFFER_SIZE).unwrap_or(0);
        regs.write(reg::RCTL, rctl::EN | rctl::BAM | rctl::SECRC | bsize);

        regs.write(reg::ITR, config.itr);
        let irq_seen = platform.interrupt_count(vector);
        regs.write(reg::IMS, IMS_ENABLE_MASK);
        let link_up = regs.read(reg::STATUS) & status::LU != 0;
        let mut nic = Self {
            platform,
            regs,
            vector,
            config,
            mac,
            link_up,
            tx: TxPath {
                ring: tx_ring,
                buffers: tx_buffers,
                count: tx_count,
                tail: 0,
                clean: 0,
                unflushed: 0,
                staging: vec![0; MAX_FRAME_LEN],
                stats: E1000Stats::default(),
            },
            rx_ring,
            rx_buffers,
            rx_count,
            rx_next: 0,
            rx_tail,
            rx_unreturned: 0,
            rx: ReceiveQueue::new(config.rx_queue_frames.max(1)),
            irq_seen,
            more: false,
            masked: false,
        };
        nic.tx.stats.ims_writes = 1;
        Ok(nic)
    }

    /// The MAC address from the EEPROM.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Whether the link was up when last looked at (at open and on LSC).
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// What the driver did so far.
    pub fn stats(&self) -> E1000Stats {
        self.tx.stats
    }

    /// The interrupt vector's count as last handled.
    pub fn interrupts_handled(&self) -> u64 {
        self.irq_seen
    }

    /// Handles an interrupt if one came (or drains on if the last drain hit its budget): ICR read
    /// once, everything masked, transmit descriptors reclaimed, up to a budget of frames drained,
    /// unmasked if under budget. Returns how many descriptors were handled.
    pub fn poll(&mut self) -> usize {
        let seen = self.platform.interrupt_count(self.vector);
        let interrupted = seen != self.irq_seen;
        if !interrupted && !self.more {
            return 0;
        }
        self.irq_seen = seen;
        if interrupted {
            let causes = self.regs.read(reg::ICR);
            self.tx.stats.icr_reads += 1;
            if causes == 0 && !self.more {
                // Not ours, or already handled by the previous drain.
                return 0;
            }
            if !self.masked {
                self.regs.write(reg::IMC, !0);
                self.tx.stats.imc_writes += 1;
                self.masked = true;
            }
            if causes & icr::LSC != 0 {
                self.link_up = self.regs.read(reg::STATUS) & status::LU != 0;
            }
        }
        let reclaimed = self.tx.clean();
        let (received, stopped) = self.drain_rx();
        self.more = stopped;
        if stopped {
            self.tx.stats.budget_exhausted += 1;
        } else if self.masked {
            self.regs.write(reg::IMS, IMS_ENABLE_MASK);
            self.tx.stats.ims_writes += 1;
            self.masked = false;
        }
        reclaimed + received
    }

    /// Takes completed receive descriptors into the queue, re-arming each and giving them back in
    /// groups. Returns how many, and whether it stopped with work left (budget or a full queue).
    fn drain_rx(&mut self) -> (usize, bool) {
        let mut done = 0;
        let stopped = loop {
            let at = self.rx_next as usize * DESCRIPTOR_SIZE;
            let word = self.rx_ring.atomic_u32(at + RX_STATUS_OFFSET);
            let status = word.load(Ordering::Acquire) as u8;
            if status & rx_status::DD == 0 {
                break false;
            }
            if done == self.config.budget || self.rx.is_full() {
                break true;
            }
            let len = (self.rx_ring.atomic_u32(at + 8).load(Ordering::Acquire) & 0xFFFF) as usize;
            if status & rx_status::EOP == 0 || len == 0 || len > MAX_FRAME_LEN {
                self.tx.stats.rx_errors += 1;
            } else {
                let offset = self.rx_next as usize * BUFFER_SIZE;
                let buffers = &self.rx_buffers;
                self.rx.push_with(len, |dst| buffers.read(offset, dst));
                self.tx.stats.rx_frames += 1;
            }
            // Re-arm: the buffer address stays; the device owns it again once RDT passes it.
            word.store(0, Ordering::Relaxed);
            self.rx_next = (self.rx_next + 1) % self.rx_count;
            self.rx_unreturned += 1;
            done += 1;
            if self.rx_unreturned >= RX_BUFFER_WRITE {
                self.return_rx_buffers();
            }
        };
        if self.rx_unreturned > 0 {
            self.return_rx_buffers();
        }
        (done, stopped)
    }

    fn return_rx_buffers(&mut self) {
        self.rx_tail = (self.rx_tail + self.rx_unreturned) % self.rx_count;
        self.rx_unreturned = 0;
        self.regs.write(reg::RDT, self.rx_tail);
        self.tx.stats.rdt_writes += 1;
    }

    /// Writes TDT once if frames were queued since the last flush.
    pub fn flush(&mut self) {
        if self.tx.unflushed > 0 {
            self.tx.unflushed = 0;
            self.regs.write(reg::TDT, self.tx.tail);
            self.tx.stats.tdt_writes += 1;
        }
    }

    /// Sleeps until the NIC may have something (returns at once if work is known to wait).
    pub fn wait(&mut self) {
        if self.more || !self.rx.is_empty() {
            return;
        }
        let total = self.platform.interrupt_total();
        if self.platform.interrupt_count(self.vector) != self.irq_seen {
            return;
        }
        self.tx.stats.sleeps += 1;
        self.platform.wait_for_interrupt(total);
    }
}

impl<P: Platform, R: Registers> Drop for E1000Nic<P, R> {
    fn drop(&mut self) {
        // Stop the device's DMA before its rings and buffers are freed.
        self.regs.write(reg::IMC, !0);
        self.regs.write(reg::RCTL, 0);
        self.regs.write(reg::TCTL, 0);
        self.regs.write(reg::CTRL, ctrl::RST);
        for region in [
            core::mem::replace(&mut self.tx.ring, DmaRegion::empty()),
            core::mem::replace(&mut self.tx.buffers, DmaRegion::empty()),
            core::mem::replace(&mut self.rx_ring, DmaRegion::empty()),
            core::mem::replace(&mut self.rx_buffers, DmaRegion::empty()),
        ] {
            self.platform.free_dma(region);
        }
    }
}
