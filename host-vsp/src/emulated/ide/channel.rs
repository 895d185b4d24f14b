//! The register-level model of one ATA channel with a single (master) disk, sans-I/O: [`AtaChannel::read`]
//! and [`AtaChannel::write`] take a register offset and the bytes of one guest port access, exactly as the
//! guest issued them, and the channel moves through the ATA PIO protocol (ATA/ATAPI-6): task-file registers
//! with the two-deep LBA48 FIFOs and the HOB read-back, status/alternate status (BSY, DRDY, DRQ, ERR), the
//! error register (ABRT, IDNF, UNC), device control (nIEN, SRST, HOB), and the commands IDENTIFY DEVICE,
//! READ/WRITE SECTORS (LBA28 or CHS), READ/WRITE SECTORS EXT (LBA48), FLUSH CACHE (EXT), SET FEATURES,
//! EXECUTE DEVICE DIAGNOSTIC. Every command completes synchronously in the access that issues it, so BSY is
//! never observed. Data moves through the 16-bit data register, 2 or 4 bytes per access or any even length
//! for string I/O; the backend is read and written in chunks of up to [`CHUNK_SECTORS`] sectors through
//! the channel's own sector buffer (PIO moves data through registers, so it has to be staged), allocated
//! once, with the same vectored backend calls as every other device model.

use std::sync::Arc;

use super::identify::{identify_block, DriveIdentity};
use crate::backend::{BlockBackend, DiskError, IovecStorage, SECTOR_SIZE};

/// Register offsets from the command block base (0x1F0 on the primary channel).
pub mod reg {
    /// Data (16-bit).
    pub const DATA: u16 = 0;
    /// Read: error; write: features.
    pub const ERROR_FEATURES: u16 = 1;
    /// Sector count.
    pub const SECTOR_COUNT: u16 = 2;
    /// LBA bits 0–7 (and 24–31 in the FIFO's previous slot).
    pub const LBA_LOW: u16 = 3;
    /// LBA bits 8–15 (and 32–39).
    pub const LBA_MID: u16 = 4;
    /// LBA bits 16–23 (and 40–47).
    pub const LBA_HIGH: u16 = 5;
    /// Device: bit 6 LBA, bit 4 DEV, bits 0–3 LBA 24–27 (LBA28) or head (CHS).
    pub const DEVICE: u16 = 6;
    /// Read: status (clears a pending interrupt); write: command.
    pub const STATUS_COMMAND: u16 = 7;
    /// Pseudo-offset of the control block register (0x3F6): read alternate status, write device control.
    pub const CONTROL: u16 = 8;
}

/// Status register bits.
pub mod status {
    /// Busy.
    pub const BSY: u8 = 0x80;
    /// Device ready.
    pub const DRDY: u8 = 0x40;
    /// Device seek complete (legacy drivers expect it with DRDY).
    pub const DSC: u8 = 0x10;
    /// Data request.
    pub const DRQ: u8 = 0x08;
    /// Error: see the error register.
    pub const ERR: u8 = 0x01;
}

/// Error register bits.
pub mod error {
    /// Uncorrectable data error (a backend read failed).
    pub const UNC: u8 = 0x40;
    /// ID not found (address outside the disk).
    pub const IDNF: u8 = 0x10;
    /// Command aborted (unknown command, bad parameters, write to a read-only disk, failed write).
    pub const ABRT: u8 = 0x04;
}

/// Command codes.
pub mod cmd {
    /// READ SECTORS (LBA28/CHS, PIO in).
    pub const READ_SECTORS: u8 = 0x20;
    /// READ SECTORS EXT (LBA48, PIO in).
    pub const READ_SECTORS_EXT: u8 = 0x24;
    /// WRITE SECTORS (LBA28/CHS, PIO out).
    pub const WRITE_SECTORS: u8 = 0x30;
    /// WRITE SECTORS EXT (LBA48, PIO out).
    pub const WRITE_SECTORS_EXT: u8 = 0x34;
    /// EXECUTE DEVICE DIAGNOSTIC.
    pub const EXECUTE_DIAGNOSTIC: u8 = 0x90;
    /// FLUSH CACHE.
    pub const FLUSH_CACHE: u8 = 0xE7;
    /// FLUSH CACHE EXT.
    pub const FLUSH_CACHE_EXT: u8 = 0xEA;
    /// IDENTIFY DEVICE.
    pub const IDENTIFY: u8 = 0xEC;
    /// SET FEATURES.
    pub const SET_FEATURES: u8 = 0xEF;
}

/// Device control bits.
pub mod control {
    /// Disable the device's interrupt.
    pub const NIEN: u8 = 0x02;
    /// Software reset.
    pub const SRST: u8 = 0x04;
    /// High order byte: reads of the LBA/count registers return the FIFO's previous values.
    pub const HOB: u8 = 0x80;
}

/// Largest backend transfer of one PIO data phase step, in sectors.
pub const CHUNK_SECTORS: u64 = 256;
const SECTOR: usize = SECTOR_SIZE as usize;
const HEADS: u64 = 16;
const SECTORS_PER_TRACK: u64 = 63;

/// Counters of what the guest did to the channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdeStats {
    /// Commands written to the command register (for the master device).
    pub commands: u64,
    /// Commands that ended with ERR.
    pub errors: u64,
    /// Sectors read from the disk for the guest.
    pub sectors_read: u64,
    /// Sectors written to the disk from the guest.
    pub sectors_written: u64,
    /// Accesses to the data register (each one a guest port access).
    pub data_accesses: u64,
    /// Register accesses of any kind.
    pub register_accesses: u64,
    /// Interrupts the channel asserted (only counted while nIEN is clear).
    pub interrupts: u64,
}

/// A two-deep register: `cur` is what the last write stored, `prev` the write before it (LBA48 FIFO).
#[derive(Debug, Clone, Copy, Default)]
struct Fifo {
    cur: u8,
    prev: u8,
}

impl Fifo {
    fn push(&mut self, v: u8) {
        self.prev = self.cur;
        self.cur = v;
    }
}

#[derive(Debug, Default)]
enum Transfer {
    #[default]
    Idle,
    /// Device to guest: `buffer[pos..len]` is still to be read; `left` sectors after it come from
    /// `lba`.
    In {
        len: usize,
        pos: usize,
        lba: u64,
        left: u64,
    },
    /// Guest to device: `buffer[pos..len]` is still to be filled and then written at `chunk_lba`;
    /// `left` sectors follow it.
    Out {
        len: usize,
        pos: usize,
        chunk_lba: u64,
        left: u64,
    },
}

/// One ATA channel with a master disk. See the module documentation.
pub struct AtaChannel {
    disk: Arc<dyn BlockBackend>,
    identity: DriveIdentity,
    features: Fifo,
    count: Fifo,
    lba: [Fifo; 3],
    device: u8,
    status: u8,
    error: u8,
    control: u8,
    irq_pending: bool,
    transfer: Transfer,
    /// The data of the current chunk ([`CHUNK_SECTORS`] sectors).
    buffer: Vec<u8>,
    iovecs: IovecStorage,
    stats: IdeStats,
}

impl std::fmt::Debug for AtaChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtaChannel")
            .field("sectors", &self.disk.sectors())
            .field("status", &self.status)
            .field("error", &self.error)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl AtaChannel {
    /// A channel whose master is `disk`, in the state after power-on (diagnostic signature loaded).
    pub fn new(disk: Arc<dyn BlockBackend>, identity: DriveIdentity) -> Self {
        let mut c = Self {
            disk,
            identity,
            features: Fifo::default(),
            count: Fifo::default(),
            lba: [Fifo::default(); 3],
            device: 0,
            status: 0,
            error: 0,
            control: 0,
            irq_pending: false,
            transfer: Transfer::Idle,
            buffer: vec![0; CHUNK_SECTORS as usize * SECTOR],
            iovecs: IovecStorage::new(1),
            stats: IdeStats::default(),
        };
        c.load_signature();
        c
    }

    /// Counters so far.
    pub fn stats(&self) -> IdeStats {
        self.stats
    }

    /// Whether the interrupt line is asserted (a completion not yet acknowledged by reading status).
    pub fn irq_pending(&self) -> bool {
        self.irq_pending
    }

    fn slave_selected(&self) -> bool {
        self.device & 0x10 != 0
    }

    fn load_signature(&mut self) {
        self.count = Fifo { cur: 1, prev: 0 };
        self.lba = [Fifo { cur: 1, prev: 0 }, Fifo::default(), Fifo::default()];
        self.device = 0;
        self.error = 0x01; // diagnostic code: device 0 passed, device 1 absent
        self.status = status::DRDY | status::DSC;
        self.transfer = Transfer::Idle;
    }

    fn raise_irq(&mut self) {
        if self.control & control::NIEN == 0 {
            self.irq_pending = true;
            self.stats.interrupts += 1;
        }
    }

    /// Guest `in` from register `offset` (see [`reg`]); fills `data` (its length is the access size).
    pub fn read(&mut self, offset: u16, data: &mut [u8]) {
        self.stats.register_accesses += 1;
        if offset == reg::DATA {
            self.stats.data_accesses += 1;
            self.read_data(data);
            return;
        }
        let hob = self.control & control::HOB != 0;
        let pick = |f: Fifo| if hob { f.prev } else { f.cur };
        let value = match offset {
            reg::ERROR_FEATURES => self.error,
            reg::SECTOR_COUNT => pick(self.count),
            reg::LBA_LOW => pick(self.lba[0]),
            reg::LBA_MID => pick(self.lba[1]),
            reg::LBA_HIGH => pick(self.lba[2]),
            reg::DEVICE => self.device | 0xA0,
            reg::STATUS_COMMAND | reg::CONTROL => {
                if offset == reg::STATUS_COMMAND {
                    self.irq_pending = false;
                }
                // No device 1: its status reads as 0 so drivers see nothing there.
                if self.slave_selected() {
                    0
                } else {
                    self.status
                }
            }
            _ => 0xFF,
        };
        data.fill(value);
    }

    /// Guest `out` of `data` to register `offset` (see [`reg`]).
    pub fn write(&mut self, offset: u16, data: &[u8]) {
        self.stats.register_accesses += 1;
        let Some(&value) = data.first() else { return };
        match offset {
            reg::DATA => {
                self.stats.data_accesses += 1;
                self.write_data(data);
            }
            reg::CONTROL => self.write_control(value),
            _ if self.status & (status::BSY | status::DRQ) != 0
                && offset != reg::STATUS_COMMAND =>
            {
                // Task-file writes are ignored while a command owns the registers.
            }
            reg::ERROR_FEATURES => self.features.push(value),
            reg::SECTOR_COUNT => self.count.push(value),
            reg::LBA_LOW => self.lba[0].push(value),
            reg::LBA_MID => self.lba[1].push(value),
            reg::LBA_HIGH => self.lba[2].push(value),
            reg::DEVICE => self.device = value & 0x5F,
            reg::STATUS_COMMAND => self.command(value),
            _ => {}
        }
        if offset != reg::CONTROL {
            // Any write to a command block register clears HOB (ATA/ATAPI-6 §7.9).
            self.control &= !control::HOB;
        }
    }

    fn write_control(&mut self, value: u8) {
        let was_reset = self.control & control::SRST != 0;
        self.control = value;
        if value & control::SRST != 0 {
            self.transfer = Transfer::Idle;
            self.status = status::BSY;
            self.irq_pending = false;
        } else if was_reset {
            self.load_signature();
        }
    }

    fn finish_ok(&mut self) {
        self.status = status::DRDY | status::DSC;
        self.transfer = Transfer::Idle;
        self.raise_irq();
    }

    fn fail(&mut self, bits: u8) {
        self.error = bits;
        self.status = status::DRDY | status::DSC | status::ERR;
        self.transfer = Transfer::Idle;
        self.stats.errors += 1;
        self.raise_irq();
    }

    fn command(&mut self, code: u8) {
        if self.status & status::BSY != 0 || self.slave_selected() {
            return;
        }
        self.stats.commands += 1;
        self.transfer = Transfer::Idle;
        self.error = 0;
        match code {
            cmd::IDENTIFY => {
                let block = identify_block(self.disk.sectors(), &self.identity);
                self.buffer[..block.len()].copy_from_slice(&block);
                self.start_in(block.len(), 0, 0);
            }
            cmd::READ_SECTORS | cmd::READ_SECTORS_EXT => {
                match self.address(code == cmd::READ_SECTORS_EXT) {
                    Ok((lba, n)) => self.begin_read(lba, n),
                    Err(bits) => self.fail(bits),
                }
            }
            cmd::WRITE_SECTORS | cmd::WRITE_SECTORS_EXT => {
                if self.disk.read_only() {
                    return self.fail(error::ABRT);
                }
                match self.address(code == cmd::WRITE_SECTORS_EXT) {
                    Ok((lba, n)) => {
                        let first = n.min(CHUNK_SECTORS);
                        self.transfer = Transfer::Out {
                            len: first as usize * SECTOR,
                            pos: 0,
                            chunk_lba: lba,
                            left: n - first,
                        };
                        // No interrupt before the first block of a PIO data-out command.
                        self.status = status::DRDY | status::DSC | status::DRQ;
                    }
                    Err(bits) => self.fail(bits),
                }
            }
            cmd::FLUSH_CACHE | cmd::FLUSH_CACHE_EXT => match self.disk.flush() {
                Ok(()) => self.finish_ok(),
                Err(_) => self.fail(error::ABRT),
            },
            cmd::SET_FEATURES => match self.features.cur {
                // Enable/disable write cache, set transfer mode: accepted, nothing to change.
                0x02 | 0x82 | 0x03 => self.finish_ok(),
                _ => self.fail(error::ABRT),
            },
            cmd::EXECUTE_DIAGNOSTIC => {
                self.load_signature();
                self.raise_irq();
            }
            _ => self.fail(error::ABRT),
        }
    }

    /// The command's first sector and sector count, validated against the disk (error bits otherwise).
    fn address(&self, ext: bool) -> Result<(u64, u64), u8> {
        let lba_mode = self.device & 0x40 != 0;
        let (lba, count) = if ext {
            if !lba_mode {
                return Err(error::ABRT);
            }
            let lba = [
                self.lba[0].cur,
                self.lba[1].cur,
                self.lba[2].cur,
                self.lba[0].prev,
                self.lba[1].prev,
                self.lba[2].prev,
            ]
            .iter()
            .enumerate()
            .fold(0u64, |acc, (i, b)| acc | (u64::from(*b) << (8 * i)));
            let n = u64::from(u16::from_le_bytes([self.count.cur, self.count.prev]));
            (lba, if n == 0 { 65536 } else { n })
        } else {
            let n = u64::from(self.count.cur);
            let n = if n == 0 { 256 } else { n };
            if lba_mode {
                let lba = u64::from(self.lba[0].cur)
                    | (u64::from(self.lba[1].cur) << 8)
                    | (u64::from(self.lba[2].cur) << 16)
                    | (u64::from(self.device & 0x0F) << 24);
                (lba, n)
            } else {
                let cylinder = u64::from(self.lba[1].cur) | (u64::from(self.lba[2].cur) << 8);
                let head = u64::from(self.device & 0x0F);
                let sector = u64::from(self.lba[0].cur);
                if sector == 0 || sector > SECTORS_PER_TRACK {
                    return Err(error::IDNF);
                }
                (
                    (cylinder * HEADS + head) * SECTORS_PER_TRACK + sector - 1,
                    n,
                )
            }
        };
        match lba.checked_add(count) {
            Some(end) if end <= self.disk.sectors() => Ok((lba, count)),
            _ => Err(error::IDNF),
        }
    }

    fn start_in(&mut self, len: usize, lba: u64, left: u64) {
        self.transfer = Transfer::In {
            len,
            pos: 0,
            lba,
            left,
        };
        self.status = status::DRDY | status::DSC | status::DRQ;
        // PIO data-in: an interrupt at the start of every DRQ block.
        self.raise_irq();
    }

    /// Reads `sectors` (at most [`CHUNK_SECTORS`]) at `lba` into the buffer; returns their bytes.
    fn load_chunk(&mut self, lba: u64, sectors: u64) -> Result<usize, DiskError> {
        let len = sectors as usize * SECTOR;
        let mut bufs = self.iovecs.buffers();
        bufs.push((&mut self.buffer[..len]).into());
        self.disk.read_vectored(lba * SECTOR_SIZE, &bufs)?;
        self.stats.sectors_read += sectors;
        Ok(len)
    }

    /// Writes the buffer's first `len` bytes at `lba`.
    fn store_chunk(&mut self, lba: u64, len: usize) -> Result<(), DiskError> {
        let mut bufs = self.iovecs.buffers();
        bufs.push((&mut self.buffer[..len]).into());
        self.disk.write_vectored(lba * SECTOR_SIZE, &bufs, false)
    }

    fn begin_read(&mut self, lba: u64, n: u64) {
        let first = n.min(CHUNK_SECTORS);
        match self.load_chunk(lba, first) {
            Ok(len) => self.start_in(len, lba + first, n - first),
            Err(_) => self.fail(error::UNC),
        }
    }

    fn read_data(&mut self, data: &mut [u8]) {
        let mut done = 0;
        while done < data.len() {
            let Transfer::In {
                len,
                pos,
                lba,
                left,
            } = &mut self.transfer
            else {
                break;
            };
            let n = (data.len() - done).min(*len - *pos);
            data[done..done + n].copy_from_slice(&self.buffer[*pos..*pos + n]);
            let sector_before = *pos / SECTOR;
            *pos += n;
            done += n;
            if *pos < *len {
                if *pos / SECTOR != sector_before {
                    // The next sector's DRQ block starts.
                    self.raise_irq();
                }
                continue;
            }
            let (next, left_now) = (*lba, *left);
            if left_now == 0 {
                // Last DRQ block read: the command is complete, no further interrupt (PIO data-in).
                self.status = status::DRDY | status::DSC;
                self.transfer = Transfer::Idle;
                break;
            }
            let chunk = left_now.min(CHUNK_SECTORS);
            match self.load_chunk(next, chunk) {
                Ok(fresh) => {
                    self.transfer = Transfer::In {
                        len: fresh,
                        pos: 0,
                        lba: next + chunk,
                        left: left_now - chunk,
                    };
                    self.raise_irq();
                }
                Err(_) => {
                    self.fail(error::UNC);
                    break;
                }
            }
        }
        data[done..].fill(0xFF);
    }

    fn write_data(&mut self, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let Transfer::Out {
                len,
                pos,
                chunk_lba,
                left,
            } = &mut self.transfer
            else {
                return;
            };
            let n = (data.len() - done).min(*len - *pos);
            self.buffer[*pos..*pos + n].copy_from_slice(&data[done..done + n]);
            let sector_before = *pos / SECTOR;
            *pos += n;
            done += n;
            if *pos < *len {
                if *pos / SECTOR != sector_before {
                    // A whole sector arrived; the device asks for the next one.
                    self.raise_irq();
                }
                continue;
            }
            let (lba, left_now, chunk) = (*chunk_lba, *left, *len);
            let sectors = (chunk / SECTOR) as u64;
            if self.store_chunk(lba, chunk).is_err() {
                return self.fail(error::ABRT);
            }
            self.stats.sectors_written += sectors;
            if left_now == 0 {
                return self.finish_ok();
            }
            let next = left_now.min(CHUNK_SECTORS);
            self.transfer = Transfer::Out {
                len: next as usize * SECTOR,
                pos: 0,
                chunk_lba: lba + sectors,
                left: left_now - next,
            };
            self.raise_irq();
        }
    }
}
