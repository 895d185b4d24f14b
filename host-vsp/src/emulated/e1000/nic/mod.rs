//! The 82540EM's register file and its two DMA engines, sans-I/O: [`E1000Nic::read`] and
//! [`E1000Nic::write`] take one guest register access (a window offset and a dword), and the two
//! engines move frames between guest memory and a [`NetBackend`] passed in by the caller:
//!
//! - **transmit** runs inside the TDT (or TCTL.EN) write that makes descriptors available, as the
//!   device would start fetching them: from TDH to TDT, whole frames only (descriptors up to one
//!   with EOP), each gathered straight from guest memory into one backend send, padded to 60 bytes
//!   under TCTL.PSP; DD is written back to every descriptor with RS (or RPS), then TXDW is raised
//!   (and TXQE once the ring is empty). Descriptors with DEXT (context and extended data
//!   descriptors: checksum and segmentation offload) are not modelled: the frame they belong to is
//!   consumed and dropped ([`E1000Stats::tx_dropped_bad_frame`]).
//! - **receive** ([`E1000Nic::receive`]) is called by the device's receive thread: each frame
//!   from the backend passes the receive filter (RAL/RAH with AV, UPE, BAM, MPE, the MTA hash under
//!   RCTL.MO), gets a 4-byte FCS unless RCTL.SECRC, and is stored across as many descriptors from
//!   RDH as RCTL's buffer size needs (DD and length written back, EOP on the last, IXSM since no
//!   checksum is checked), then RXT0 is raised. A frame that finds too few descriptors waits in the
//!   one-frame staging buffer (the device's FIFO) and raises RXO once; an RDT write then restarts
//!   the engine ([`E1000Nic::take_rx_kick`]).
//!
//! Interrupts: causes collect in ICR; the device's message is sent when `ICR & IMS` becomes
//! non-zero (a cause arriving while unmasked, or IMS unmasking a pending cause) — an MSI per
//! rising edge of what would be the level-triggered line. Reading ICR clears it (the line falls).
//! ITR, when non-zero, spaces messages at least `ITR × 256 ns` apart: a message due earlier waits
//! for [`E1000Nic::deadline`] and goes out from [`E1000Nic::tick`]. Messages are counted in
//! [`E1000Nic::take_interrupts`] for the caller to deliver outside its lock.
//!
//! The guest is hostile: ring bases, lengths, heads, tails and buffer addresses are checked before
//! any use; one that is out of range or not guest RAM fails only this NIC ([`Failure`], counted in
//! [`E1000Stats::failures`]): both engines stop until a device reset (CTRL.RST). Nothing here
//! panics or touches memory outside guest RAM whatever the guest writes.
//!
//! Not modelled: the PHY behind MDIC (reads 0, READY never set), bit-banged EEPROM access through
//! EECD (EERD reads the same words), receive checksum offload, VLAN, flow control, the
//! RDTR/RADV/TIDV/TADV delay timers (stored, interrupts are not delayed) and statistics registers
//! (read 0; counters are in [`E1000Stats`]).

use e1000_protocol::{
    ctrl, eecd, eeprom, eerd, icr, multicast_hash, rctl, reg, rx_status, status, tctl, tx_cmd,
    tx_status, TxDescriptor, DESCRIPTOR_SIZE, ITR_UNIT_NS, MTA_REGISTERS, RAH_AV,
    RECEIVE_ADDRESSES, RING_BASE_ALIGN, RING_INDEX_MASK, RING_LEN_MASK, RX_STATUS_OFFSET,
    TX_STATUS_OFFSET,
};
use vm_memory::VolatileSlice;
use zerocopy::FromBytes;

mod receive;
mod transmit;

use crate::guest_memory::{self, GuestMemoryMmap};
use crate::net::{NetBackend, NetError, ETHERNET_HEADER_LEN, MAX_FRAME_LEN};

/// Bytes of the Ethernet FCS the device appends unless RCTL.SECRC strips it.
pub const FCS_LEN: usize = 4;
/// Shortest frame TCTL.PSP pads to (without FCS).
pub const MIN_FRAME_LEN: usize = 60;
/// Frames one receive pass takes at most before giving the device lock back.
pub const RX_BATCH: usize = 64;
const DESC: u64 = DESCRIPTOR_SIZE as u64;

/// Which descriptor ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// The receive ring (RDBAL…RDT).
    Receive,
    /// The transmit ring (TDBAL…TDT).
    Transmit,
}

impl std::fmt::Display for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Receive => "receive",
            Self::Transmit => "transmit",
        })
    }
}

/// Why the guest's setup stopped the NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The head register names no descriptor of the ring.
    #[error("the {ring} ring's head {head} is outside its {count} descriptors")]
    HeadOutOfRange {
        /// The ring.
        ring: Ring,
        /// RDH/TDH.
        head: u32,
        /// Descriptors in the ring.
        count: u32,
    },
    /// The tail register names no descriptor of the ring.
    #[error("the {ring} ring's tail {tail} is outside its {count} descriptors")]
    TailOutOfRange {
        /// The ring.
        ring: Ring,
        /// RDT/TDT.
        tail: u32,
        /// Descriptors in the ring.
        count: u32,
    },
    /// The ring is not entirely guest RAM.
    #[error("the {ring} descriptor ring at {gpa:#x}+{len:#x} is not guest RAM")]
    RingNotRam {
        /// The ring.
        ring: Ring,
        /// Its base.
        gpa: u64,
        /// Its length.
        len: u64,
    },
    /// A descriptor's buffer is not entirely guest RAM.
    #[error("a {ring} buffer at {gpa:#x}+{len:#x} is not guest RAM")]
    BufferNotRam {
        /// The ring.
        ring: Ring,
        /// The buffer address.
        gpa: u64,
        /// The bytes the device would have moved.
        len: u64,
    },
}

/// Guest register accesses, by register (each one a VM exit on a real partition).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegisterAccesses {
    /// ICR reads (read-to-clear).
    pub icr_reads: u64,
    /// IMS writes (unmask).
    pub ims_writes: u64,
    /// IMC writes (mask).
    pub imc_writes: u64,
    /// TDT writes (transmit doorbells).
    pub tdt_writes: u64,
    /// RDT writes (receive buffers returned).
    pub rdt_writes: u64,
    /// STATUS reads.
    pub status_reads: u64,
    /// EERD reads and writes.
    pub eerd_accesses: u64,
    /// Reads of every other register.
    pub other_reads: u64,
    /// Writes of every other register.
    pub other_writes: u64,
    /// Accesses that were not one aligned dword (ignored; reads return zeros).
    pub malformed: u64,
}

impl RegisterAccesses {
    /// Every access counted.
    pub fn total(&self) -> u64 {
        self.icr_reads
            + self.ims_writes
            + self.imc_writes
            + self.tdt_writes
            + self.rdt_writes
            + self.status_reads
            + self.eerd_accesses
            + self.other_reads
            + self.other_writes
            + self.malformed
    }
}

/// What the NIC has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct E1000Stats {
    /// Frames handed to the backend.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames the backend refused (its queue was full).
    pub tx_dropped_backend_full: u64,
    /// Frames dropped for their descriptors: no data, longer than a frame, or DEXT descriptors.
    pub tx_dropped_bad_frame: u64,
    /// Backend send errors.
    pub tx_backend_errors: u64,
    /// Frames stored in guest buffers.
    pub rx_frames: u64,
    /// Bytes of those frames (without FCS).
    pub rx_bytes: u64,
    /// Frames the receive filter dropped.
    pub rx_filtered: u64,
    /// Frames dropped because the receiver was disabled.
    pub rx_dropped_disabled: u64,
    /// Frames longer than the backend's largest (consumed and dropped).
    pub rx_too_large: u64,
    /// Backend receive errors.
    pub rx_backend_errors: u64,
    /// Times a frame found no free descriptor (RXO raised).
    pub rx_stalls: u64,
    /// Interrupt messages sent.
    pub interrupts: u64,
    /// Messages ITR made wait.
    pub interrupts_throttled: u64,
    /// Times the guest's setup failed the NIC.
    pub failures: u64,
    /// Device resets (CTRL.RST).
    pub resets: u64,
    /// Register accesses by register.
    pub registers: RegisterAccesses,
}

/// Base, length, head and tail registers of one ring.
#[derive(Debug, Clone, Copy, Default)]
struct RingRegs {
    bal: u32,
    bah: u32,
    len: u32,
    head: u32,
    tail: u32,
}

/// A ring as checked: base GPA and descriptor count (non-zero).
#[derive(Debug, Clone, Copy)]
struct CheckedRing {
    base: u64,
    count: u32,
}

impl CheckedRing {
    fn desc_gpa(&self, index: u32) -> u64 {
        // In range: index < count and the whole ring was checked to be RAM.
        self.base + u64::from(index) * DESC
    }
}

impl RingRegs {
    /// `Ok(None)` for a ring of no descriptors; the ring, if the head, tail and every byte of it
    /// are valid.
    fn check(&self, ring: Ring, mem: &GuestMemoryMmap) -> Result<Option<CheckedRing>, Failure> {
        let count = (self.len & RING_LEN_MASK) / DESCRIPTOR_SIZE as u32;
        if count == 0 {
            return Ok(None);
        }
        if self.head >= count {
            return Err(Failure::HeadOutOfRange {
                ring,
                head: self.head,
                count,
            });
        }
        if self.tail >= count {
            return Err(Failure::TailOutOfRange {
                ring,
                tail: self.tail,
                count,
            });
        }
        let base = (u64::from(self.bah) << 32) | u64::from(self.bal & !(RING_BASE_ALIGN - 1));
        let len = u64::from(count) * DESC;
        guest_memory::check(mem, base, len).map_err(|_| Failure::RingNotRam {
            ring,
            gpa: base,
            len,
        })?;
        Ok(Some(CheckedRing { base, count }))
    }

    /// Descriptors the driver has made available: from head up to (not including) tail.
    fn available(&self, count: u32) -> u32 {
        (self.tail + count - self.head) % count
    }
}

/// Registers stored as written and read back, with no effect of their own.
const PLAIN: [u32; 6] = [
    reg::CTRL_EXT,
    reg::TIPG,
    reg::RDTR,
    reg::RADV,
    reg::TIDV,
    reg::TADV,
];

/// What one receive pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxPass {
    /// Frames stored in guest buffers.
    pub stored: usize,
    /// Stopped at [`RX_BATCH`]: frames may still wait.
    pub more: bool,
    /// Frames can be taken now: wait on the backend's receive fd (else wait for an RDT write).
    pub want_rx: bool,
}

/// The 82540EM. See the module documentation.
#[derive(Debug)]
pub struct E1000Nic {
    eeprom: [u16; eeprom::WORDS],
    link_up: bool,
    ctrl: u32,
    eerd: u32,
    icr: u32,
    ims: u32,
    itr: u32,
    rctl: u32,
    tctl: u32,
    rx: RingRegs,
    tx: RingRegs,
    plain: [u32; PLAIN.len()],
    mta: [u32; MTA_REGISTERS],
    ra: [u32; 2 * RECEIVE_ADDRESSES],
    failed: Option<Failure>,
    /// `ICR & IMS` was non-zero when last looked at (a message went out for it, or waits).
    line: bool,
    last_interrupt_ns: Option<u64>,
    throttled_until: Option<u64>,
    pending_interrupts: u32,
    /// A frame waits in `staging[..len]` for descriptors: (len with FCS, len without).
    staged: Option<(usize, usize)>,
    staging: Vec<u8>,
    /// The receive engine stopped for want of descriptors (or a frame reported RXO).
    rx_starved: bool,
    rx_kick: bool,
    /// The descriptors of the frame being sent, read from guest memory once (reused).
    tx_descs: Vec<TxDescriptor>,
    stats: E1000Stats,
}

impl E1000Nic {
    /// A NIC whose EEPROM (and so RAL0/RAH0 after reset) holds `mac`, in its power-on state.
    pub fn new(mac: [u8; 6]) -> Self {
        let mut nic = Self {
            eeprom: eeprom::image(mac),
            link_up: true,
            ctrl: 0,
            eerd: 0,
            icr: 0,
            ims: 0,
            itr: 0,
            rctl: 0,
            tctl: 0,
            rx: RingRegs::default(),
            tx: RingRegs::default(),
            plain: [0; PLAIN.len()],
            mta: [0; MTA_REGISTERS],
            ra: [0; 2 * RECEIVE_ADDRESSES],
            failed: None,
            line: false,
            last_interrupt_ns: None,
            throttled_until: None,
            pending_interrupts: 0,
            staged: None,
            staging: vec![0; MAX_FRAME_LEN + FCS_LEN],
            rx_starved: false,
            rx_kick: false,
            tx_descs: Vec::new(),
            stats: E1000Stats::default(),
        };
        nic.reset();
        nic
    }

    /// The MAC address in the EEPROM.
    pub fn mac(&self) -> [u8; 6] {
        eeprom::mac_of([self.eeprom[0], self.eeprom[1], self.eeprom[2]])
    }

    /// Counters so far.
    pub fn stats(&self) -> E1000Stats {
        self.stats
    }

    /// Why the NIC stopped, if it did.
    pub fn failure(&self) -> Option<Failure> {
        self.failed
    }

    /// Interrupt messages raised since the last call (the caller delivers them).
    pub fn take_interrupts(&mut self) -> u32 {
        std::mem::take(&mut self.pending_interrupts)
    }

    /// Whether the receive engine has been given descriptors (or was enabled) since it stopped for
    /// want of them: the receive thread should run a pass.
    pub fn take_rx_kick(&mut self) -> bool {
        std::mem::take(&mut self.rx_kick)
    }

    /// When a throttled interrupt message is due (ns on the caller's clock).
    pub fn deadline(&self) -> Option<u64> {
        self.throttled_until
    }

    /// Sends a throttled message that has come due.
    pub fn tick(&mut self, now_ns: u64) {
        if self.throttled_until.is_some_and(|t| now_ns >= t) {
            self.throttled_until = None;
            self.line = false;
            self.update_interrupt(now_ns);
        }
    }

    /// Tells the NIC the backend's link state; a change raises LSC.
    pub fn set_link(&mut self, up: bool, now_ns: u64) {
        if up != self.link_up {
            self.link_up = up;
            self.raise(icr::LSC, now_ns);
        }
    }

    /// Device reset: every register to its power-on value, RAL0/RAH0 loaded from the EEPROM, the
    /// staged frame and any failure dropped.
    fn reset(&mut self) {
        let mac = self.mac();
        self.ctrl = ctrl::FD;
        self.eerd = 0;
        self.icr = 0;
        self.ims = 0;
        self.itr = 0;
        self.rctl = 0;
        self.tctl = 0;
        self.rx = RingRegs::default();
        self.tx = RingRegs::default();
        self.plain = [0; PLAIN.len()];
        self.mta = [0; MTA_REGISTERS];
        self.ra = [0; 2 * RECEIVE_ADDRESSES];
        self.ra[0] = u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]);
        self.ra[1] = u32::from(u16::from_le_bytes([mac[4], mac[5]])) | RAH_AV;
        self.failed = None;
        self.line = false;
        self.throttled_until = None;
        self.staged = None;
        self.rx_starved = false;
    }

    fn fail(&mut self, failure: Failure) {
        if self.failed.is_none() {
            crate::guest_warn!(%failure, "e1000: the guest's setup stopped the NIC");
            self.stats.failures += 1;
            self.failed = Some(failure);
        }
    }

    fn raise(&mut self, causes: u32, now_ns: u64) {
        self.icr |= causes & icr::VALID;
        self.update_interrupt(now_ns);
    }

    /// Sends a message on a rising edge of `ICR & IMS`, unless ITR makes it wait.
    fn update_interrupt(&mut self, now_ns: u64) {
        if self.icr & self.ims == 0 {
            self.line = false;
            self.throttled_until = None;
            return;
        }
        if self.line {
            return;
        }
        self.line = true;
        let interval = u64::from(self.itr & 0xFFFF) * ITR_UNIT_NS;
        if let Some(last) = self.last_interrupt_ns {
            let due = last.saturating_add(interval);
            if interval > 0 && now_ns < due {
                self.throttled_until = Some(due);
                self.stats.interrupts_throttled += 1;
                return;
            }
        }
        self.last_interrupt_ns = Some(now_ns);
        self.pending_interrupts += 1;
        self.stats.interrupts += 1;
    }

    /// A guest read of `data.len()` bytes at window `offset`.
    pub fn read(&mut self, offset: u64, data: &mut [u8], now_ns: u64) {
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.stats.registers.malformed += 1;
            data.fill(0);
            return;
        }
        let value = self.read_dword(offset as u32, now_ns);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn read_dword(&mut self, offset: u32, now_ns: u64) -> u32 {
        let r = &mut self.stats.registers;
        match offset {
            reg::ICR => r.icr_reads += 1,
            reg::STATUS => r.status_reads += 1,
            reg::EERD => r.eerd_accesses += 1,
            _ => r.other_reads += 1,
        }
        match offset {
            reg::CTRL => self.ctrl,
            reg::STATUS => {
                let link = if self.link_up { status::LU } else { 0 };
                status::FD | status::SPEED_1000 | link
            }
            reg::EECD => eecd::PRES,
            reg::EERD => self.eerd,
            reg::ICR => {
                let causes = self.icr;
                self.icr = 0;
                self.update_interrupt(now_ns);
                causes
            }
            reg::ITR => self.itr,
            reg::IMS => self.ims,
            reg::RCTL => self.rctl,
            reg::TCTL => self.tctl,
            reg::RDBAL => self.rx.bal,
            reg::RDBAH => self.rx.bah,
            reg::RDLEN => self.rx.len,
            reg::RDH => self.rx.head,
            reg::RDT => self.rx.tail,
            reg::TDBAL => self.tx.bal,
            reg::TDBAH => self.tx.bah,
            reg::TDLEN => self.tx.len,
            reg::TDH => self.tx.head,
            reg::TDT => self.tx.tail,
            o if (reg::MTA..reg::MTA + 4 * MTA_REGISTERS as u32).contains(&o) => {
                self.mta[((o - reg::MTA) / 4) as usize]
            }
            o if (reg::RAL0..reg::RAL0 + 8 * RECEIVE_ADDRESSES as u32).contains(&o) => {
                self.ra[((o - reg::RAL0) / 4) as usize]
            }
            o => match PLAIN.iter().position(|p| *p == o) {
                Some(i) => self.plain[i],
                None => 0,
            },
        }
    }

    /// A guest write of `data` at window `offset`; transmits if it makes descriptors available.
    pub fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        mem: Option<&GuestMemoryMmap>,
        backend: &mut dyn NetBackend,
        now_ns: u64,
    ) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.stats.registers.malformed += 1;
            return;
        };
        if !offset.is_multiple_of(4) {
            self.stats.registers.malformed += 1;
            return;
        }
        let value = u32::from_le_bytes(bytes);
        let offset = offset as u32;
        let r = &mut self.stats.registers;
        match offset {
            reg::IMS => r.ims_writes += 1,
            reg::IMC => r.imc_writes += 1,
            reg::TDT => r.tdt_writes += 1,
            reg::RDT => r.rdt_writes += 1,
            reg::EERD => r.eerd_accesses += 1,
            _ => r.other_writes += 1,
        }
        match offset {
            reg::CTRL if value & ctrl::RST != 0 => {
                self.stats.resets += 1;
                self.reset();
                self.rx_kick = true;
            }
            reg::CTRL => self.ctrl = value,
            reg::EERD => {
                if value & eerd::START != 0 {
                    let addr = (value & eerd::ADDR_MASK) >> eerd::ADDR_SHIFT;
                    let word = self.eeprom.get(addr as usize).copied().unwrap_or(0);
                    self.eerd = (u32::from(word) << eerd::DATA_SHIFT)
                        | (value & eerd::ADDR_MASK)
                        | eerd::DONE;
                }
            }
            reg::ICR => {
                self.icr &= !value;
                self.update_interrupt(now_ns);
            }
            reg::ITR => self.itr = value & 0xFFFF,
            reg::ICS => self.raise(value, now_ns),
            reg::IMS => {
                self.ims |= value & icr::VALID;
                self.update_interrupt(now_ns);
            }
            reg::IMC => {
                self.ims &= !value;
                self.update_interrupt(now_ns);
            }
            reg::RCTL => {
                let enabled = value & rctl::EN != 0 && self.rctl & rctl::EN == 0;
                self.rctl = value;
                self.rx_kick |= enabled;
            }
            reg::TCTL => {
                let enabled = value & tctl::EN != 0 && self.tctl & tctl::EN == 0;
                self.tctl = value;
                if enabled {
                    self.transmit(mem, backend, now_ns);
                }
            }
            reg::RDBAL => self.rx.bal = value,
            reg::RDBAH => self.rx.bah = value,
            reg::RDLEN => self.rx.len = value & RING_LEN_MASK,
            reg::RDH => self.rx.head = value & RING_INDEX_MASK,
            reg::RDT => {
                self.rx.tail = value & RING_INDEX_MASK;
                if self.rx_starved {
                    self.rx_starved = false;
                    self.rx_kick = true;
                }
            }
            reg::TDBAL => self.tx.bal = value,
            reg::TDBAH => self.tx.bah = value,
            reg::TDLEN => self.tx.len = value & RING_LEN_MASK,
            reg::TDH => self.tx.head = value & RING_INDEX_MASK,
            reg::TDT => {
                self.tx.tail = value & RING_INDEX_MASK;
                self.transmit(mem, backend, now_ns);
            }
            o if (reg::MTA..reg::MTA + 4 * MTA_REGISTERS as u32).contains(&o) => {
                self.mta[((o - reg::MTA) / 4) as usize] = value;
            }
            o if (reg::RAL0..reg::RAL0 + 8 * RECEIVE_ADDRESSES as u32).contains(&o) => {
                self.ra[((o - reg::RAL0) / 4) as usize] = value;
            }
            o => {
                if let Some(i) = PLAIN.iter().position(|p| *p == o) {
                    self.plain[i] = value;
                }
            }
        }
    }
}
