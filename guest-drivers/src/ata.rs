//! A polled PIO ATA disk driver for the primary IDE channel (ports 0x1F0–0x1F7, control 0x3F6): IDENTIFY
//! DEVICE, READ/WRITE SECTORS (EXT when the disk supports 48-bit addressing), FLUSH CACHE (EXT). Interrupts
//! are disabled (nIEN); completion is polled on the status register. Every register access is a port access
//! — on an emulated controller, one exit each — and the data moves through the 16-bit data register as words,
//! dwords or one `rep insw`/`rep outsw` string per sector ([`PioWidth`]).
//!
//! Port I/O goes through [`PortIo`]; [`X86PortIo`] executes the `in`/`out` instructions.

use alloc::string::String;
use core::arch::asm;

/// Primary channel command block base.
pub const PRIMARY_BASE: u16 = 0x1F0;
/// Primary channel control register.
pub const PRIMARY_CONTROL: u16 = 0x3F6;
const SECTOR: usize = 512;
/// Status polls before a command is declared dead.
const POLL_LIMIT: u32 = 1_000_000;

const ST_BSY: u8 = 0x80;
const ST_DRDY: u8 = 0x40;
const ST_DRQ: u8 = 0x08;
const ST_ERR: u8 = 0x01;

/// Port I/O primitives the driver needs.
pub trait PortIo {
    /// `in al, dx`.
    fn inb(&self, port: u16) -> u8;
    /// `out dx, al`.
    fn outb(&self, port: u16, value: u8);
    /// `in ax, dx`.
    fn inw(&self, port: u16) -> u16;
    /// `out dx, ax`.
    fn outw(&self, port: u16, value: u16);
    /// `in eax, dx`.
    fn inl(&self, port: u16) -> u32;
    /// `out dx, eax`.
    fn outl(&self, port: u16, value: u32);
    /// `rep insw`: fill `buf` with words from `port`.
    fn insw(&self, port: u16, buf: &mut [u16]);
    /// `rep outsw`: send `buf` to `port`.
    fn outsw(&self, port: u16, buf: &[u16]);
}

/// Port I/O with the x86 instructions (the kernel must allow them at the current privilege level).
#[derive(Debug, Clone, Copy, Default)]
pub struct X86PortIo;

impl PortIo for X86PortIo {
    fn inb(&self, port: u16) -> u8 {
        let v: u8;
        // SAFETY: port input has no effect on this program's memory; the kernel permits port I/O here.
        unsafe {
            asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
        };
        v
    }

    fn outb(&self, port: u16, value: u8) {
        // SAFETY: as for `inb`.
        unsafe {
            asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
        };
    }

    fn inw(&self, port: u16) -> u16 {
        let v: u16;
        // SAFETY: as for `inb`.
        unsafe {
            asm!("in ax, dx", in("dx") port, out("ax") v, options(nomem, nostack, preserves_flags))
        };
        v
    }

    fn outw(&self, port: u16, value: u16) {
        // SAFETY: as for `inb`.
        unsafe {
            asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
        };
    }

    fn inl(&self, port: u16) -> u32 {
        let v: u32;
        // SAFETY: as for `inb`.
        unsafe {
            asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
        };
        v
    }

    fn outl(&self, port: u16, value: u32) {
        // SAFETY: as for `inb`.
        unsafe {
            asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
        };
    }

    fn insw(&self, port: u16, buf: &mut [u16]) {
        // SAFETY: `rep insw` writes exactly `buf.len()` words starting at `buf`'s address, which `buf` owns
        // exclusively; DF is clear per the ABI.
        unsafe {
            asm!("rep insw", in("dx") port, inout("rdi") buf.as_mut_ptr() => _,
                 inout("rcx") buf.len() => _, options(nostack, preserves_flags))
        };
    }

    fn outsw(&self, port: u16, buf: &[u16]) {
        // SAFETY: `rep outsw` reads exactly `buf.len()` words from `buf`; DF is clear per the ABI.
        unsafe {
            asm!("rep outsw", in("dx") port, inout("rsi") buf.as_ptr() => _,
                 inout("rcx") buf.len() => _, options(nostack, preserves_flags, readonly))
        };
    }
}

/// How sector data crosses the data register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PioWidth {
    /// 256 16-bit accesses per sector.
    Word,
    /// 128 32-bit accesses per sector.
    Dword,
    /// One `rep insw`/`rep outsw` of 256 words per sector.
    String,
}

/// Driver errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AtaError {
    /// Nothing answers on the channel (status 0 or 0xFF).
    #[error("no ATA device (status {0:#x})")]
    NoDevice(u8),
    /// The device reported an error.
    #[error("ATA command {command:#x} failed: status {status:#x}, error {error:#x}")]
    Device {
        /// The command.
        command: u8,
        /// Status register.
        status: u8,
        /// Error register.
        error: u8,
    },
    /// The device stayed busy or never asked for data.
    #[error("ATA command {0:#x} timed out")]
    Timeout(u8),
    /// The buffer is empty, not whole sectors, or too long for one command.
    #[error("buffer of {0} bytes is not 1..=65536 whole sectors")]
    BadLength(usize),
    /// The request reaches beyond the disk.
    #[error("sectors {lba}+{count} are beyond the disk's {sectors}")]
    OutOfRange {
        /// First sector.
        lba: u64,
        /// Sector count.
        count: u64,
        /// Disk size in sectors.
        sectors: u64,
    },
}

/// A disk on the primary channel.
#[derive(Debug)]
pub struct AtaDisk<P: PortIo> {
    io: P,
    width: PioWidth,
    sectors: u64,
    lba48: bool,
    model: String,
}

impl<P: PortIo> AtaDisk<P> {
    /// Disables the channel interrupt, identifies the master disk and returns a driver for it.
    pub fn probe(io: P, width: PioWidth) -> Result<Self, AtaError> {
        io.outb(PRIMARY_CONTROL, 0x02); // nIEN: polled
        io.outb(PRIMARY_BASE + 6, 0x40); // master, LBA
        let st = io.inb(PRIMARY_CONTROL);
        if st == 0 || st == 0xFF {
            return Err(AtaError::NoDevice(st));
        }
        let mut disk = Self {
            io,
            width,
            sectors: 0,
            lba48: false,
            model: String::new(),
        };
        let mut id = [0u8; SECTOR];
        disk.command(0xEC)?;
        disk.pio_in(0xEC, &mut id)?;
        let word = |i: usize| u16::from_le_bytes([id[2 * i], id[2 * i + 1]]);
        disk.lba48 = word(83) & (1 << 10) != 0 && word(86) & (1 << 10) != 0;
        disk.sectors = if disk.lba48 {
            (0..4).fold(0u64, |acc, i| acc | (u64::from(word(100 + i)) << (16 * i)))
        } else {
            u64::from(word(60)) | (u64::from(word(61)) << 16)
        };
        disk.model = (27..47)
            .flat_map(|i| word(i).to_be_bytes())
            .map(char::from)
            .collect::<String>()
            .trim_end()
            .into();
        disk.finish(0xEC)?;
        Ok(disk)
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether 48-bit commands are used.
    pub fn lba48(&self) -> bool {
        self.lba48
    }

    /// The model string from IDENTIFY.
    pub fn model(&self) -> &str {
        &self.model
    }

    fn status(&self) -> u8 {
        self.io.inb(PRIMARY_BASE + 7)
    }

    fn error(&self, command: u8, status: u8) -> AtaError {
        AtaError::Device {
            command,
            status,
            error: self.io.inb(PRIMARY_BASE + 1),
        }
    }

    /// Waits until BSY clears; returns the status.
    fn wait_not_busy(&self, command: u8) -> Result<u8, AtaError> {
        for _ in 0..POLL_LIMIT {
            let st = self.status();
            if st & ST_BSY == 0 {
                return Ok(st);
            }
            core::hint::spin_loop();
        }
        Err(AtaError::Timeout(command))
    }

    fn command(&self, command: u8) -> Result<(), AtaError> {
        self.io.outb(PRIMARY_BASE + 7, command);
        Ok(())
    }

    /// Waits for DRQ (or an error) before a data block.
    fn wait_drq(&self, command: u8) -> Result<(), AtaError> {
        let st = self.wait_not_busy(command)?;
        if st & ST_ERR != 0 {
            return Err(self.error(command, st));
        }
        if st & ST_DRQ == 0 {
            return Err(AtaError::Timeout(command));
        }
        Ok(())
    }

    /// Final status check after the last data block (or a non-data command).
    fn finish(&self, command: u8) -> Result<(), AtaError> {
        let st = self.wait_not_busy(command)?;
        if st & ST_ERR != 0 || st & ST_DRDY == 0 {
            return Err(self.error(command, st));
        }
        Ok(())
    }

    fn pio_in(&self, command: u8, buf: &mut [u8]) -> Result<(), AtaError> {
        let data = PRIMARY_BASE;
        for sector in buf.chunks_exact_mut(SECTOR) {
            self.wait_drq(command)?;
            match self.width {
                PioWidth::Word => {
                    for w in sector.chunks_exact_mut(2) {
                        w.copy_from_slice(&self.io.inw(data).to_le_bytes());
                    }
                }
                PioWidth::Dword => {
                    for d in sector.chunks_exact_mut(4) {
                        d.copy_from_slice(&self.io.inl(data).to_le_bytes());
                    }
                }
                PioWidth::String => {
                    let mut words = [0u16; SECTOR / 2];
                    self.io.insw(data, &mut words);
                    for (w, b) in words.iter().zip(sector.chunks_exact_mut(2)) {
                        b.copy_from_slice(&w.to_le_bytes());
                    }
                }
            }
        }
        Ok(())
    }

    fn pio_out(&self, command: u8, buf: &[u8]) -> Result<(), AtaError> {
        let data = PRIMARY_BASE;
        for sector in buf.chunks_exact(SECTOR) {
            self.wait_drq(command)?;
            match self.width {
                PioWidth::Word => {
                    for w in sector.chunks_exact(2) {
                        self.io.outw(data, u16::from_le_bytes([w[0], w[1]]));
                    }
                }
                PioWidth::Dword => {
                    for d in sector.chunks_exact(4) {
                        self.io
                            .outl(data, u32::from_le_bytes([d[0], d[1], d[2], d[3]]));
                    }
                }
                PioWidth::String => {
                    let mut words = [0u16; SECTOR / 2];
                    for (w, b) in words.iter_mut().zip(sector.chunks_exact(2)) {
                        *w = u16::from_le_bytes([b[0], b[1]]);
                    }
                    self.io.outsw(data, &words);
                }
            }
        }
        Ok(())
    }

    /// Loads the task file for a transfer of `count` sectors at `lba`; returns the command to issue.
    fn setup(&self, lba: u64, len: usize, cmd28: u8, cmd48: u8) -> Result<u8, AtaError> {
        let count = (len / SECTOR) as u64;
        if len == 0 || !len.is_multiple_of(SECTOR) || count > 65536 {
            return Err(AtaError::BadLength(len));
        }
        if lba.checked_add(count).is_none_or(|end| end > self.sectors) {
            return Err(AtaError::OutOfRange {
                lba,
                count,
                sectors: self.sectors,
            });
        }
        let b = lba.to_le_bytes();
        let base = PRIMARY_BASE;
        if self.lba48 {
            let c = (count as u32 & 0xFFFF) as u16; // 65536 is encoded as 0
            self.io.outb(base + 6, 0x40);
            self.io.outb(base + 2, (c >> 8) as u8);
            self.io.outb(base + 3, b[3]);
            self.io.outb(base + 4, b[4]);
            self.io.outb(base + 5, b[5]);
            self.io.outb(base + 2, c as u8);
            self.io.outb(base + 3, b[0]);
            self.io.outb(base + 4, b[1]);
            self.io.outb(base + 5, b[2]);
            Ok(cmd48)
        } else {
            if count > 256 {
                return Err(AtaError::BadLength(len));
            }
            self.io.outb(base + 6, 0x40 | (b[3] & 0x0F));
            self.io.outb(base + 2, count as u8); // 256 is encoded as 0
            self.io.outb(base + 3, b[0]);
            self.io.outb(base + 4, b[1]);
            self.io.outb(base + 5, b[2]);
            Ok(cmd28)
        }
    }

    /// Reads whole sectors starting at `lba` into `buf` (1..=65536 sectors).
    pub fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), AtaError> {
        let command = self.setup(lba, buf.len(), 0x20, 0x24)?;
        self.command(command)?;
        self.pio_in(command, buf)?;
        self.finish(command)
    }

    /// Writes whole sectors from `buf` starting at `lba` (1..=65536 sectors).
    pub fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), AtaError> {
        let command = self.setup(lba, buf.len(), 0x30, 0x34)?;
        self.command(command)?;
        self.pio_out(command, buf)?;
        self.finish(command)
    }

    /// Makes completed writes durable (FLUSH CACHE EXT, or FLUSH CACHE without 48-bit support).
    pub fn flush(&mut self) -> Result<(), AtaError> {
        let command = if self.lba48 { 0xEA } else { 0xE7 };
        self.io.outb(PRIMARY_BASE + 6, 0x40);
        self.command(command)?;
        self.finish(command)
    }
}
