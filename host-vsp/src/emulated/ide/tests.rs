//! IDE register sequences driven through [`IdeController::io_read`]/[`IdeController::io_write`] exactly as a
//! guest driver issues them, without KVM.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::channel::{cmd, control, error, status};
use super::*;
use crate::backend::{BlockBackend, DiskError, IoBuffers, RamDisk, SECTOR_SIZE};

const DATA: u16 = 0x1F0;
const ERR: u16 = 0x1F1;
const COUNT: u16 = 0x1F2;
const LBA_LO: u16 = 0x1F3;
const LBA_MID: u16 = 0x1F4;
const LBA_HI: u16 = 0x1F5;
const DEVICE: u16 = 0x1F6;
const STATUS: u16 = 0x1F7;
const CTRL: u16 = 0x3F6;

fn inb(ide: &IdeController, port: u16) -> u8 {
    let mut b = [0u8];
    ide.io_read(port, &mut b);
    b[0]
}

fn outb(ide: &IdeController, port: u16, v: u8) {
    ide.io_write(port, &[v]);
}

/// Data transfer style of the test driver.
#[derive(Debug, Clone, Copy)]
enum Width {
    Word,
    Dword,
    /// One string access per sector (`rep insw`, handed over as one 512-byte access).
    String,
}

fn issue_lba48(ide: &IdeController, command: u8, lba: u64, count: u16) {
    outb(ide, DEVICE, 0x40);
    let [c0, c1] = count.to_le_bytes();
    let l = lba.to_le_bytes();
    outb(ide, COUNT, c1);
    outb(ide, LBA_LO, l[3]);
    outb(ide, LBA_MID, l[4]);
    outb(ide, LBA_HI, l[5]);
    outb(ide, COUNT, c0);
    outb(ide, LBA_LO, l[0]);
    outb(ide, LBA_MID, l[1]);
    outb(ide, LBA_HI, l[2]);
    outb(ide, STATUS, command);
}

fn issue_lba28(ide: &IdeController, command: u8, lba: u32, count: u8) {
    outb(ide, DEVICE, 0x40 | ((lba >> 24) as u8 & 0x0F));
    outb(ide, COUNT, count);
    outb(ide, LBA_LO, lba as u8);
    outb(ide, LBA_MID, (lba >> 8) as u8);
    outb(ide, LBA_HI, (lba >> 16) as u8);
    outb(ide, STATUS, command);
}

/// Reads `sectors` sectors of a PIO data-in command, checking DRQ before each.
fn pio_in(ide: &IdeController, sectors: usize, width: Width) -> Vec<u8> {
    let mut out = Vec::new();
    for s in 0..sectors {
        let st = inb(ide, STATUS);
        assert_eq!(
            st & (status::DRQ | status::ERR),
            status::DRQ,
            "sector {s}: status {st:#x}"
        );
        match width {
            Width::Word | Width::Dword => {
                let size = if matches!(width, Width::Word) { 2 } else { 4 };
                for _ in 0..512 / size {
                    let mut b = vec![0u8; size];
                    ide.io_read(DATA, &mut b);
                    out.extend_from_slice(&b);
                }
            }
            Width::String => {
                let mut b = [0u8; 512];
                ide.io_read(DATA, &mut b);
                out.extend_from_slice(&b);
            }
        }
    }
    out
}

fn pio_out(ide: &IdeController, data: &[u8], width: Width) {
    for (s, sector) in data.chunks(512).enumerate() {
        let st = inb(ide, STATUS);
        assert_eq!(
            st & (status::DRQ | status::ERR),
            status::DRQ,
            "sector {s}: status {st:#x}"
        );
        match width {
            Width::Word => sector.chunks(2).for_each(|w| ide.io_write(DATA, w)),
            Width::Dword => sector.chunks(4).for_each(|w| ide.io_write(DATA, w)),
            Width::String => ide.io_write(DATA, sector),
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn identify_reports_strings_and_capacity() {
    let disk = Arc::new(RamDisk::new(3 << 20));
    let ide = IdeController::with_identity(
        disk,
        DriveIdentity {
            model: "TEST MODEL".into(),
            serial: "S1".into(),
            firmware: "F1".into(),
        },
    );
    // Power-on signature.
    assert_eq!(inb(&ide, COUNT), 1);
    assert_eq!(inb(&ide, LBA_LO), 1);
    assert_eq!(inb(&ide, STATUS), status::DRDY | status::DSC);
    outb(&ide, DEVICE, 0x40);
    outb(&ide, STATUS, cmd::IDENTIFY);
    let block = pio_in(&ide, 1, Width::Word);
    let words: Vec<u16> = block
        .chunks(2)
        .map(|w| u16::from_le_bytes([w[0], w[1]]))
        .collect();
    let model: Vec<u8> = words[27..47].iter().flat_map(|w| w.to_be_bytes()).collect();
    assert!(model.starts_with(b"TEST MODEL "));
    assert_eq!(u32::from(words[60]) | u32::from(words[61]) << 16, 6144);
    assert_eq!((words[100], words[101]), (6144, 0));
    assert_eq!(
        inb(&ide, STATUS),
        status::DRDY | status::DSC,
        "DRQ clears after the block"
    );
    // Reading past the end returns all-ones and changes nothing.
    let mut extra = [0u8; 2];
    ide.io_read(DATA, &mut extra);
    assert_eq!(extra, [0xFF, 0xFF]);
}

#[test]
fn lba28_write_then_read_in_every_width() {
    let disk = Arc::new(RamDisk::new(1 << 20));
    let ide = IdeController::new(disk.clone());
    for (i, width) in [Width::Word, Width::Dword, Width::String]
        .into_iter()
        .enumerate()
    {
        let lba = 100 + 10 * i as u32;
        let data = pattern(3 * 512, i as u8);
        issue_lba28(&ide, cmd::WRITE_SECTORS, lba, 3);
        pio_out(&ide, &data, width);
        assert_eq!(inb(&ide, STATUS), status::DRDY | status::DSC, "{width:?}");
        let snap = disk.snapshot();
        assert_eq!(
            &snap[lba as usize * 512..][..3 * 512],
            &data[..],
            "{width:?}"
        );
        issue_lba28(&ide, cmd::READ_SECTORS, lba, 3);
        assert_eq!(pio_in(&ide, 3, width), data, "{width:?}");
        assert_eq!(inb(&ide, STATUS) & status::DRQ, 0);
    }
    let stats = ide.stats();
    assert_eq!(stats.sectors_written, 9);
    assert_eq!(stats.sectors_read, 9);
    assert_eq!(stats.errors, 0);
    // Word: 256 accesses per sector; dword: 128; string: 1 — per direction, 3 sectors each.
    assert_eq!(stats.data_accesses, 2 * 3 * (256 + 128 + 1));
}

/// A sparse disk bigger than LBA28 can address, backed by a map of written sectors.
#[derive(Default)]
struct SparseDisk {
    sectors: Mutex<HashMap<u64, Vec<u8>>>,
    fail: bool,
}

impl BlockBackend for SparseDisk {
    fn capacity(&self) -> u64 {
        1 << 50
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_vectored(&self, offset: u64, bufs: &IoBuffers<'_>) -> Result<(), DiskError> {
        if self.fail {
            return Err(DiskError::Io(std::io::Error::other("injected")));
        }
        let map = self.sectors.lock().unwrap();
        for i in 0..bufs.len() / SECTOR_SIZE {
            let s = offset / SECTOR_SIZE + i;
            let data = map.get(&s).map_or(&[0u8; 512][..], |d| &d[..]);
            bufs.copy_from_host(i * SECTOR_SIZE, data)?;
        }
        Ok(())
    }
    fn write_vectored(
        &self,
        offset: u64,
        bufs: &IoBuffers<'_>,
        _fua: bool,
    ) -> Result<(), DiskError> {
        if self.fail {
            return Err(DiskError::Io(std::io::Error::other("injected")));
        }
        let mut map = self.sectors.lock().unwrap();
        for i in 0..bufs.len() / SECTOR_SIZE {
            let mut sector = vec![0u8; 512];
            bufs.copy_to_host(i * SECTOR_SIZE, &mut sector)?;
            map.insert(offset / SECTOR_SIZE + i, sector);
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), DiskError> {
        if self.fail {
            return Err(DiskError::Io(std::io::Error::other("injected")));
        }
        Ok(())
    }
    fn discard(&self, _offset: u64, _len: u64) -> Result<(), DiskError> {
        Ok(())
    }
}

#[test]
fn lba48_uses_the_high_order_bytes_and_count() {
    let disk = Arc::new(SparseDisk::default());
    let ide = IdeController::new(disk.clone());
    let lba = 0x0123_4567_89AB; // needs all 48 bits
    let data = pattern(2 * 512, 7);
    issue_lba48(&ide, cmd::WRITE_SECTORS_EXT, lba, 2);
    pio_out(&ide, &data, Width::String);
    assert_eq!(inb(&ide, STATUS), status::DRDY | status::DSC);
    assert_eq!(
        disk.sectors.lock().unwrap().get(&(lba + 1)).unwrap()[..],
        data[512..]
    );
    issue_lba48(&ide, cmd::READ_SECTORS_EXT, lba, 2);
    assert_eq!(pio_in(&ide, 2, Width::Dword), data);
    // HOB: with the bit set, the count/LBA registers read back the previous FIFO values.
    issue_lba48(&ide, cmd::FLUSH_CACHE_EXT, lba, 0x0102);
    assert_eq!(inb(&ide, COUNT), 0x02);
    assert_eq!(inb(&ide, LBA_HI), 0x67);
    outb(&ide, CTRL, control::HOB);
    assert_eq!(inb(&ide, COUNT), 0x01);
    assert_eq!(inb(&ide, LBA_LO), 0x45);
    assert_eq!(inb(&ide, LBA_MID), 0x23);
    assert_eq!(inb(&ide, LBA_HI), 0x01);
    outb(&ide, COUNT, 0);
    assert_eq!(inb(&ide, COUNT), 0, "a command block write clears HOB");
}

#[test]
fn lba48_count_zero_means_65536_sectors() {
    let disk = Arc::new(SparseDisk::default());
    let ide = IdeController::new(disk.clone());
    issue_lba48(&ide, cmd::WRITE_SECTORS_EXT, 5, 0);
    let sector = pattern(512, 1);
    for _ in 0..65536 {
        ide.io_write(DATA, &sector);
    }
    assert_eq!(inb(&ide, STATUS), status::DRDY | status::DSC);
    assert_eq!(ide.stats().sectors_written, 65536);
    assert!(disk.sectors.lock().unwrap().contains_key(&(5 + 65535)));
    assert!(!disk.sectors.lock().unwrap().contains_key(&(5 + 65536)));
}

fn expect_error(ide: &IdeController, bits: u8) {
    let st = inb(ide, STATUS);
    assert_eq!(
        st,
        status::DRDY | status::DSC | status::ERR,
        "status {st:#x}"
    );
    assert_eq!(inb(ide, ERR), bits);
}

#[test]
fn out_of_range_unknown_and_read_only_commands_fail_cleanly() {
    let disk = Arc::new(RamDisk::new(64 * 512));
    let ide = IdeController::new(disk.clone());
    issue_lba28(&ide, cmd::READ_SECTORS, 63, 2);
    expect_error(&ide, error::IDNF);
    issue_lba48(&ide, cmd::WRITE_SECTORS_EXT, u64::from(u32::MAX), 1);
    expect_error(&ide, error::IDNF);
    issue_lba28(&ide, cmd::READ_SECTORS, 63, 1);
    assert_eq!(pio_in(&ide, 1, Width::String).len(), 512);
    outb(&ide, STATUS, 0x42);
    expect_error(&ide, error::ABRT);
    // SET FEATURES with an unknown subcommand aborts; write-cache enable succeeds.
    outb(&ide, ERR, 0x55);
    outb(&ide, STATUS, cmd::SET_FEATURES);
    expect_error(&ide, error::ABRT);
    outb(&ide, ERR, 0x02);
    outb(&ide, STATUS, cmd::SET_FEATURES);
    assert_eq!(inb(&ide, STATUS), status::DRDY | status::DSC);
    // An EXT command without the LBA bit aborts.
    outb(&ide, DEVICE, 0);
    outb(&ide, STATUS, cmd::READ_SECTORS_EXT);
    expect_error(&ide, error::ABRT);

    let ro = IdeController::new(Arc::new(RamDisk::read_only_from(vec![9; 8 * 512])));
    issue_lba28(&ro, cmd::WRITE_SECTORS, 0, 1);
    expect_error(&ro, error::ABRT);
    ro.io_write(DATA, &[0; 512]);
    issue_lba28(&ro, cmd::READ_SECTORS, 0, 1);
    assert_eq!(pio_in(&ro, 1, Width::Word), vec![9; 512]);
    issue_lba28(&ro, cmd::FLUSH_CACHE, 0, 0);
    assert_eq!(inb(&ro, STATUS), status::DRDY | status::DSC);
}

#[test]
fn backend_failures_map_to_unc_and_abrt() {
    let ide = IdeController::new(Arc::new(SparseDisk {
        fail: true,
        ..Default::default()
    }));
    issue_lba28(&ide, cmd::READ_SECTORS, 0, 1);
    expect_error(&ide, error::UNC);
    issue_lba28(&ide, cmd::WRITE_SECTORS, 0, 1);
    ide.io_write(DATA, &[1; 512]);
    expect_error(&ide, error::ABRT);
    outb(&ide, STATUS, cmd::FLUSH_CACHE);
    expect_error(&ide, error::ABRT);
    assert_eq!(ide.stats().errors, 3);
}

#[test]
fn chs_addressing_translates_with_the_default_geometry() {
    let disk = Arc::new(RamDisk::new(4 << 20));
    let ide = IdeController::new(disk.clone());
    // Cylinder 1, head 2, sector 3 = (1 * 16 + 2) * 63 + 2.
    outb(&ide, DEVICE, 0x02);
    outb(&ide, COUNT, 1);
    outb(&ide, LBA_LO, 3);
    outb(&ide, LBA_MID, 1);
    outb(&ide, LBA_HI, 0);
    outb(&ide, STATUS, cmd::WRITE_SECTORS);
    pio_out(&ide, &[0x5A; 512], Width::Word);
    let lba = (16 + 2) * 63 + 2;
    assert_eq!(disk.snapshot()[lba * 512..][..512], [0x5A; 512]);
    outb(&ide, LBA_LO, 0);
    outb(&ide, STATUS, cmd::READ_SECTORS);
    expect_error(&ide, error::IDNF);
}

#[test]
fn interrupts_follow_nien_and_status_reads() {
    let ide = IdeController::new(Arc::new(RamDisk::new(1 << 20)));
    let line = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    ide.connect_interrupt(line.clone()).unwrap();
    assert!(matches!(
        ide.connect_interrupt(line.clone()),
        Err(super::IdeError::AlreadyConnected)
    ));
    issue_lba28(&ide, cmd::READ_SECTORS, 0, 2);
    // One interrupt per DRQ block of a PIO read, each one trigger of the line.
    assert_eq!(ide.stats().interrupts, 1);
    assert_eq!(line.read().unwrap(), 1);
    assert!(ide.channel.lock().unwrap().irq_pending());
    assert_eq!(
        inb(&ide, CTRL) & status::DRQ,
        status::DRQ,
        "alternate status"
    );
    assert!(
        ide.channel.lock().unwrap().irq_pending(),
        "alternate status leaves it"
    );
    pio_in(&ide, 2, Width::String);
    assert_eq!(ide.stats().interrupts, 2);
    assert_eq!(line.read().unwrap(), 1);
    assert!(!ide.channel.lock().unwrap().irq_pending());
    outb(&ide, CTRL, control::NIEN);
    issue_lba28(&ide, cmd::WRITE_SECTORS, 0, 2);
    pio_out(&ide, &[0; 1024], Width::String);
    outb(&ide, STATUS, cmd::FLUSH_CACHE);
    assert_eq!(ide.stats().interrupts, 2, "nIEN masks the line");
    assert!(line.read().is_err(), "nothing triggered while masked");
    outb(&ide, CTRL, 0);
    issue_lba28(&ide, cmd::WRITE_SECTORS, 0, 2);
    pio_out(&ide, &[0; 1024], Width::String);
    // Data-out: one after the first sector, one at completion.
    assert_eq!(ide.stats().interrupts, 4);
}

#[test]
fn slave_is_absent_and_soft_reset_restores_the_signature() {
    let disk = Arc::new(RamDisk::new(1 << 20));
    let ide = IdeController::new(disk.clone());
    outb(&ide, DEVICE, 0x10);
    assert_eq!(inb(&ide, STATUS), 0);
    outb(&ide, STATUS, cmd::IDENTIFY);
    assert_eq!(ide.stats().commands, 0, "commands to device 1 are ignored");
    outb(&ide, DEVICE, 0x40);
    issue_lba28(&ide, cmd::WRITE_SECTORS, 0, 1);
    ide.io_write(DATA, &[1; 100]);
    outb(&ide, CTRL, control::SRST);
    assert_eq!(inb(&ide, CTRL), status::BSY);
    outb(&ide, STATUS, cmd::IDENTIFY);
    outb(&ide, CTRL, 0);
    assert_eq!(inb(&ide, STATUS), status::DRDY | status::DSC);
    assert_eq!(
        (inb(&ide, COUNT), inb(&ide, LBA_LO), inb(&ide, ERR)),
        (1, 1, 1)
    );
    ide.io_write(DATA, &[1; 412]);
    assert_eq!(
        disk.snapshot()[..512],
        [0; 512],
        "the aborted write never reached the disk"
    );
    assert_eq!(ide.stats().commands, 1);
}

proptest! {
    /// Any sequence of register accesses keeps the model consistent: no panic, and a full write then read
    /// afterwards still round-trips.
    #[test]
    fn random_register_traffic_never_breaks_the_model(
        ops in proptest::collection::vec((0u16..10, any::<u8>(), 0usize..4, any::<bool>()), 0..300)
    ) {
        let disk = Arc::new(RamDisk::new(256 * 512));
        let ide = IdeController::new(disk.clone());
        for (reg, value, size, is_read) in ops {
            let port = if reg >= 8 { CTRL } else { DATA + reg };
            let len = [1usize, 2, 4, 512][size];
            if is_read {
                let mut b = vec![0u8; len];
                ide.io_read(port, &mut b);
            } else {
                let b = vec![value; len];
                ide.io_write(port, &b);
            }
        }
        outb(&ide, CTRL, control::SRST);
        outb(&ide, CTRL, 0);
        let data = pattern(1024, 3);
        issue_lba28(&ide, cmd::WRITE_SECTORS, 10, 2);
        pio_out(&ide, &data, Width::Dword);
        issue_lba28(&ide, cmd::READ_SECTORS, 10, 2);
        prop_assert_eq!(pio_in(&ide, 2, Width::Word), data);
    }
}
