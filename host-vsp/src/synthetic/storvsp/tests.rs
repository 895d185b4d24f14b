//! SCSI command tests: every command a guest issues, run through [`ScsiController`] with a guest
//! buffer in a `GuestMemoryMmap`, checking data, status and sense bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use storvsp_protocol::scsi::{opcode, AdditionalSense, FixedSense, ScsiStatus, SenseKey};
use storvsp_protocol::{SrbStatus, VmscsiRequest};
use zerocopy::FromZeros;

use super::request::{DataBuffer, Segment};
use super::scsi::{ExecStorage, ScsiController, ScsiOutcome};
use super::LunMap;
use crate::backend::{BlockBackend, DiskError, IoBuffers, RamDisk};
use crate::guest_memory::{self, GuestMemoryMmap};
use vm_memory::GuestAddress;

/// A RAM disk that counts flushes and FUA writes.
#[derive(Debug)]
pub(super) struct CountingDisk {
    pub inner: RamDisk,
    pub flushes: AtomicU64,
    pub fua_writes: AtomicU64,
}

impl CountingDisk {
    pub fn new(bytes: u64) -> Self {
        Self {
            inner: RamDisk::new(bytes),
            flushes: AtomicU64::new(0),
            fua_writes: AtomicU64::new(0),
        }
    }
}

impl BlockBackend for CountingDisk {
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_vectored(&self, offset: u64, bufs: &IoBuffers<'_>) -> Result<(), DiskError> {
        self.inner.read_vectored(offset, bufs)
    }
    fn write_vectored(
        &self,
        offset: u64,
        bufs: &IoBuffers<'_>,
        fua: bool,
    ) -> Result<(), DiskError> {
        self.fua_writes.fetch_add(u64::from(fua), Ordering::Relaxed);
        self.inner.write_vectored(offset, bufs, fua)
    }
    fn flush(&self) -> Result<(), DiskError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.inner.discard(offset, len)
    }
}

const DISK_BYTES: u64 = 1 << 20;
const BUF_GPA: u64 = 0x1000;

struct Rig {
    mem: GuestMemoryMmap,
    ctl: ScsiController,
    disk: Arc<CountingDisk>,
    ro: Arc<RamDisk>,
}

impl Rig {
    /// LUN 0: writable counting disk; LUN 1: read-only disk filled with 0x5A; LUN 7: small RAM disk.
    fn new() -> Self {
        let disk = Arc::new(CountingDisk::new(DISK_BYTES));
        let ro = Arc::new(RamDisk::read_only_from(vec![0x5A; 64 * 1024]));
        let luns = LunMap::new()
            .with_backend(0, disk.clone())
            .with_backend(1, ro.clone())
            .with_backend(7, Arc::new(RamDisk::new(4096)));
        Self {
            mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 256 * 4096)]).unwrap(),
            ctl: ScsiController::new(luns, 64 * 1024),
            disk,
            ro,
        }
    }

    /// Runs `cdb` on `lun` with a `len`-byte buffer at [`BUF_GPA`] (filled with `data` first).
    fn run_with(&self, lun: u8, cdb: &[u8], len: u32, data: &[u8]) -> (ScsiOutcome, Vec<u8>) {
        guest_memory::write(&self.mem, BUF_GPA, data).unwrap();
        let mut srb = VmscsiRequest::new_zeroed();
        srb.lun = lun;
        srb.cdb_length = cdb.len() as u8;
        srb.cdb_or_sense[..cdb.len()].copy_from_slice(cdb);
        let segs = [Segment { gpa: BUF_GPA, len }];
        let buf = DataBuffer::new(
            &self.mem,
            if len == 0 { &[] } else { &segs },
            u64::from(len),
        );
        let outcome = self
            .ctl
            .execute(&srb, &buf, &mut ExecStorage::new(64 * 1024));
        let mut out = vec![0u8; outcome.transferred as usize];
        guest_memory::read(&self.mem, BUF_GPA, &mut out).unwrap();
        (outcome, out)
    }

    fn run(&self, lun: u8, cdb: &[u8], len: u32) -> (ScsiOutcome, Vec<u8>) {
        self.run_with(lun, cdb, len, &vec![0xEE; len as usize])
    }
}

fn assert_sense(outcome: ScsiOutcome, key: SenseKey, additional: AdditionalSense) {
    assert_eq!(outcome.srb_status, SrbStatus(0x84), "{outcome:?}");
    assert_eq!(outcome.scsi_status, ScsiStatus::CHECK_CONDITION);
    let sense = outcome.sense.expect("sense data");
    assert_eq!((sense.key, sense.additional), (key, additional));
    // The wire form is fixed-format sense.
    let bytes = sense.to_bytes();
    assert_eq!(
        (bytes[0], bytes[2], bytes[7], bytes[12], bytes[13]),
        (0x70, key.0, 10, additional.asc, additional.ascq)
    );
}

fn cdb10(op: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn cdb16(op: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

#[test]
fn standard_inquiry() {
    let rig = Rig::new();
    let (o, d) = rig.run(0, &[opcode::INQUIRY, 0, 0, 0, 96, 0], 96);
    assert!(o.is_good());
    assert_eq!(d.len(), 36);
    assert_eq!(d[0], 0x00);
    assert_eq!(d[4], 31);
    assert_ne!(d[7] & 0x02, 0, "CmdQue");
    assert_eq!(&d[8..16], b"Msft    ");
    assert_eq!(&d[16..32], b"Virtual Disk    ");
    // Allocation length truncates.
    let (o, d) = rig.run(0, &[opcode::INQUIRY, 0, 0, 0, 5, 0], 96);
    assert_eq!((o.transferred, d.len()), (5, 5));
    // A page code without EVPD is an invalid field.
    let (o, _) = rig.run(0, &[opcode::INQUIRY, 0, 0x80, 0, 96, 0], 96);
    assert_sense(
        o,
        SenseKey::ILLEGAL_REQUEST,
        AdditionalSense::INVALID_FIELD_IN_CDB,
    );
}

#[test]
fn vpd_pages() {
    let rig = Rig::new();
    let page = |code: u8, lun: u8| {
        let (o, d) = rig.run(lun, &[opcode::INQUIRY, 1, code, 1, 0, 0], 256);
        assert!(o.is_good(), "page {code:#x}: {o:?}");
        assert_eq!(d[1], code);
        assert_eq!(u16::from_be_bytes([d[2], d[3]]) as usize, d.len() - 4);
        d
    };
    assert_eq!(&page(0x00, 0)[4..], &[0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]);
    assert_eq!(&page(0x80, 0)[4..], b"VIRIDIAN-LUN000");
    let id = page(0x83, 0);
    assert_eq!(&id[4..8], &[0x01, 0x03, 0x00, 16]);
    assert_eq!(id[8] >> 4, 6, "NAA 6");
    assert_ne!(
        page(0x83, 0)[8..24],
        page(0x83, 7)[8..24],
        "distinct ids per LUN"
    );
    let limits = page(0xB0, 0);
    assert_eq!(limits.len(), 64);
    assert_eq!(
        u32::from_be_bytes(limits[8..12].try_into().unwrap()),
        128,
        "max transfer blocks"
    );
    assert_ne!(
        u32::from_be_bytes(limits[20..24].try_into().unwrap()),
        0,
        "max unmap LBA count"
    );
    assert_eq!(
        u32::from_be_bytes(page(0xB0, 1)[20..24].try_into().unwrap()),
        0,
        "read-only: no unmap"
    );
    assert_eq!(&page(0xB1, 0)[4..6], &[0, 1], "non-rotating");
    assert_eq!(page(0xB2, 0)[5] & 0x80, 0x80, "LBPU");
    assert_eq!(page(0xB2, 1)[5] & 0x80, 0, "read-only: no LBPU");
    let (o, _) = rig.run(0, &[opcode::INQUIRY, 1, 0xC7, 1, 0, 0], 256);
    assert_sense(
        o,
        SenseKey::ILLEGAL_REQUEST,
        AdditionalSense::INVALID_FIELD_IN_CDB,
    );
}

#[test]
fn test_unit_ready_and_capacity() {
    let rig = Rig::new();
    assert!(rig.run(0, &[0; 6], 0).0.is_good());
    let (o, d) = rig.run(0, &cdb10(opcode::READ_CAPACITY_10, 0, 0), 8);
    assert!(o.is_good());
    assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 2047);
    assert_eq!(u32::from_be_bytes(d[4..8].try_into().unwrap()), 512);
    let mut c = cdb16(opcode::SERVICE_ACTION_IN_16, 0, 32);
    c[1] = 0x10;
    let (o, d) = rig.run(0, &c, 32);
    assert!(o.is_good());
    assert_eq!(u64::from_be_bytes(d[0..8].try_into().unwrap()), 2047);
    assert_eq!(u32::from_be_bytes(d[8..12].try_into().unwrap()), 512);
    assert_eq!(d[13], 3, "4 KiB physical blocks");
    assert_eq!(d[14] & 0xC0, 0xC0, "LBPME and LBPRZ");
    let (_, d) = rig.run(1, &c, 32);
    assert_eq!(d[14], 0);
    // SERVICE ACTION IN with another service action is not supported.
    c[1] = 0x11;
    assert_sense(
        rig.run(0, &c, 32).0,
        SenseKey::ILLEGAL_REQUEST,
        AdditionalSense::INVALID_COMMAND_OPERATION_CODE,
    );
}

#[test]
fn read_write_10_and_16_roundtrip_with_fua() {
    let rig = Rig::new();
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let (o, _) = rig.run_with(0, &cdb10(opcode::WRITE_10, 10, 8), 4096, &pattern);
    assert!(o.is_good());
    assert_eq!(o.transferred, 4096);
    assert_eq!(&rig.disk.inner.snapshot()[10 * 512..18 * 512], &pattern[..]);
    assert_eq!(rig.disk.fua_writes.load(Ordering::Relaxed), 0);
    let (o, d) = rig.run(0, &cdb16(opcode::READ_16, 10, 8), 4096);
    assert!(o.is_good());
    assert_eq!(d, pattern);
    let mut w16 = cdb16(opcode::WRITE_16, 2000, 1);
    w16[1] = 0x08;
    assert!(rig.run_with(0, &w16, 512, &pattern[..512]).0.is_good());
    assert_eq!(
        rig.disk.fua_writes.load(Ordering::Relaxed),
        1,
        "FUA passed to the backend"
    );
    let (o, d) = rig.run(0, &cdb10(opcode::READ_10, 2000, 1), 512);
    assert!(o.is_good());
    assert_eq!(d, &pattern[..512]);
    // A larger buffer than the transfer: only the transfer moves.
    let (o, _) = rig.run(0, &cdb10(opcode::READ_10, 0, 1), 4096);
    assert_eq!(o.transferred, 512);
    // Zero blocks: nothing to do.
    assert_eq!(
        rig.run(0, &cdb10(opcode::READ_10, 0, 0), 0).0,
        ScsiOutcome::good(0)
    );
}

#[test]
fn read_6_and_12() {
    let rig = Rig::new();
    rig.disk.inner.write_at(512 * 3, &[9; 512], false).unwrap();
    let (o, d) = rig.run(0, &[opcode::READ_6, 0, 0, 3, 1, 0], 512);
    assert!(o.is_good());
    assert_eq!(d, vec![9; 512]);
    // Transfer length 0 means 256 blocks in READ(6): 128 KiB, over this controller's 64 KiB limit.
    let (o, _) = rig.run(0, &[opcode::READ_6, 0, 0, 0, 0, 0], 256 * 512);
    assert_sense(
        o,
        SenseKey::ILLEGAL_REQUEST,
        AdditionalSense::INVALID_FIELD_IN_CDB,
    );
    let (o, _) = rig.run(0, &[opcode::READ_6, 0, 0, 0, 128, 0], 128 * 512);
    assert_eq!(o.transferred, 128 * 512);
    let mut c = vec![0u8; 12];
    c[0] = opcode::READ_12;
    c[2..6].copy_from_slice(&3u32.to_be_bytes());
    c[6..10].copy_from_slice(&1u32.to_be_bytes());
    assert_eq!(rig.run(0, &c, 512).1, vec![9; 512]);
}

#[test]
fn bad_lbas_and_transfer_sizes() {
    let rig = Rig::new();
    let lba_out = |o| {
        assert_sense(
            o,
            SenseKey::ILLEGAL_REQUEST,
            AdditionalSense::LBA_OUT_OF_RANGE,
        )
    };
    lba_out(rig.run(0, &cdb10(opcode::READ_10, 2047, 2), 1024).0);
    lba_out(rig.run(0, &cdb16(opcode::READ_16, u64::MAX, 1), 512).0);
    lba_out(
        rig.run_with(0, &cdb16(opcode::WRITE_16, 2048, 1), 512, &[1; 512])
            .0,
    );
    lba_out(rig.run(0, &cdb16(opcode::VERIFY_16, 2040, 9), 0).0);
    assert!(rig
        .run(0, &cdb16(opcode::VERIFY_16, 2040, 8), 0)
        .0
        .is_good());
    // The last block works.
    assert!(rig
        .run(0, &cdb10(opcode::READ_10, 2047, 1), 512)
        .0
        .is_good());
    // Over the transfer limit (64 KiB here).
    assert_sense(
        rig.run(0, &cdb10(opcode::READ_10, 0, 129), 129 * 512).0,
        SenseKey::ILLEGAL_REQUEST,
        AdditionalSense::INVALID_FIELD_IN_CDB,
    );
    // Buffer shorter than the transfer: the SRB itself is invalid, and the image is untouched.
    let before = rig.disk.inner.snapshot();
    let (o, _) = rig.run_with(0, &cdb10(opcode::WRITE_10, 0, 2), 512, &[1; 512]);
    assert_eq!(o, ScsiOutcome::srb(SrbStatus::INVALID_REQUEST));
    assert_eq!(rig.disk.inner.snapshot(), before);
    // A CDB shorter than its group.
    assert_sense(
        rig.run(0, &[opcode::READ_16, 0, 0, 0, 0, 0], 512).0,
        SenseKey::ILLEGAL_REQUEST,
        AdditionalSense::INVALID_FIELD_IN_CDB,
    );
}

#[test]
fn read_only_disk_refuses_writes() {
    let rig = Rig::new();
    let protect = |o| assert_sense(o, SenseKey::DATA_PROTECT, AdditionalSense::WRITE_PROTECTED);
    protect(
        rig.run_with(1, &cdb10(opcode::WRITE_10, 0, 1), 512, &[0; 512])
            .0,
    );
    protect(
        rig.run_with(1, &cdb16(opcode::WRITE_16, 0, 1), 512, &[0; 512])
            .0,
    );
    protect(
        rig.run_with(
            1,
            &[opcode::UNMAP, 0, 0, 0, 0, 0, 0, 0, 24, 0],
            24,
            &[0; 24],
        )
        .0,
    );
    assert_eq!(rig.ro.snapshot(), vec![0x5A; 64 * 1024]);
    let (o, d) = rig.run(1, &cdb10(opcode::READ_10, 0, 1), 512);
    assert!(o.is_good());
    assert_eq!(d, vec![0x5A; 512]);
    // Flushing a read-only disk is fine.
    assert!(rig
        .run(1, &cdb10(opcode::SYNCHRONIZE_CACHE_10, 0, 0), 0)
        .0
        .is_good());
}

#[test]
fn synchronize_cache_flushes() {
    let rig = Rig::new();
    assert!(rig
        .run(0, &cdb10(opcode::SYNCHRONIZE_CACHE_10, 0, 0), 0)
        .0
        .is_good());
    assert!(rig
        .run(0, &cdb16(opcode::SYNCHRONIZE_CACHE_16, 100, 8), 0)
        .0
        .is_good());
    assert_eq!(rig.disk.flushes.load(Ordering::Relaxed), 2);
    assert_sense(
        rig.run(0, &cdb16(opcode::SYNCHRONIZE_CACHE_16, 4096, 0), 0)
            .0,
        SenseKey::ILLEGAL_REQUEST,
        AdditionalSense::LBA_OUT_OF_RANGE,
    );
    assert_eq!(rig.disk.flushes.load(Ordering::Relaxed), 2);
}

#[test]
fn mode_sense_6_and_10() {
    let rig = Rig::new();
    // MODE SENSE(6), caching page, with block descriptor.
    let (o, d) = rig.run(0, &[opcode::MODE_SENSE_6, 0, 0x08, 0, 255, 0], 255);
    assert!(o.is_good());
    assert_eq!(d.len(), 4 + 8 + 20);
    assert_eq!(d[0] as usize, d.len() - 1);
    assert_eq!(d[2], 0x10, "DPOFUA, not write-protected");
    assert_eq!(d[3], 8);
    assert_eq!(u32::from_be_bytes(d[4..8].try_into().unwrap()), 2048);
    assert_eq!(&d[12..15], &[0x08, 0x12, 0x04], "caching page with WCE");
    // Read-only: WP set. DBD: no block descriptor.
    let (_, d) = rig.run(1, &[opcode::MODE_SENSE_6, 0x08, 0x3F, 0, 255, 0], 255);
    assert_eq!(d[2] & 0x80, 0x80);
    assert_eq!(d[3], 0);
    assert_eq!(d.len(), 4 + 20 + 12);
    // MODE SENSE(10), all pages.
    let (o, d) = rig.run(
        0,
        &[opcode::MODE_SENSE_10, 0, 0x3F, 0, 0, 0, 0, 1, 0, 0],
        256,
    );
    assert!(o.is_good());
    assert_eq!(u16::from_be_bytes([d[0], d[1]]) as usize, d.len() - 2);
    assert_eq!(u16::from_be_bytes([d[6], d[7]]), 8);
    assert_eq!(d[16], 0x08);
    assert_eq!(d[36], 0x0A);
    // Changeable values: nothing is.
    let (_, d) = rig.run(0, &[opcode::MODE_SENSE_6, 0x08, 0x48, 0, 255, 0], 255);
    assert_eq!(d[6], 0);
    // Saved values are not supported; unknown pages are invalid.
    assert_sense(
        rig.run(0, &[opcode::MODE_SENSE_6, 0, 0xC8, 0, 255, 0], 255)
            .0,
        SenseKey::ILLEGAL_REQUEST,
        AdditionalSense::SAVING_PARAMETERS_NOT_SUPPORTED,
    );
    assert_sense(
        rig.run(0, &[opcode::MODE_SENSE_6, 0, 0x19, 0, 255, 0], 255)
            .0,
        SenseKey::ILLEGAL_REQUEST,
        AdditionalSense::INVALID_FIELD_IN_CDB,
    );
}

#[test]
fn report_luns_lists_every_lun() {
    let rig = Rig::new();
    let cdb = [opcode::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    let (o, d) = rig.run(0, &cdb, 256);
    assert!(o.is_good());
    assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 24);
    assert_eq!(d.len(), 32);
    assert_eq!([d[9], d[17], d[25]], [0, 1, 7]);
    // Addressed to a LUN that does not exist, it still answers (the target does).
    assert!(rig.run(5, &cdb, 256).0.is_good());
    let short = [opcode::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0];
    assert_sense(
        rig.run(0, &short, 256).0,
        SenseKey::ILLEGAL_REQUEST,
        AdditionalSense::INVALID_FIELD_IN_CDB,
    );
}

fn unmap_list(descriptors: &[(u64, u32)]) -> Vec<u8> {
    let mut l = vec![0u8; 8];
    l[0..2].copy_from_slice(&((6 + descriptors.len() * 16) as u16).to_be_bytes());
    l[2..4].copy_from_slice(&((descriptors.len() * 16) as u16).to_be_bytes());
    for &(lba, n) in descriptors {
        l.extend_from_slice(&lba.to_be_bytes());
        l.extend_from_slice(&n.to_be_bytes());
        l.extend_from_slice(&[0; 4]);
    }
    l
}

#[test]
fn unmap_discards_and_validates_first() {
    let rig = Rig::new();
    rig.disk
        .inner
        .write_at(0, &vec![0xAB; 64 * 512], false)
        .unwrap();
    let list = unmap_list(&[(0, 4), (10, 2)]);
    let cdb = [opcode::UNMAP, 0, 0, 0, 0, 0, 0, 0, list.len() as u8, 0];
    assert!(rig.run_with(0, &cdb, list.len() as u32, &list).0.is_good());
    let img = rig.disk.inner.snapshot();
    assert!(img[..4 * 512].iter().all(|&b| b == 0));
    assert!(img[4 * 512..10 * 512].iter().all(|&b| b == 0xAB));
    assert!(img[10 * 512..12 * 512].iter().all(|&b| b == 0));
    // One bad descriptor: nothing is discarded.
    let list = unmap_list(&[(20, 1), (2047, 2)]);
    let cdb = [opcode::UNMAP, 0, 0, 0, 0, 0, 0, 0, list.len() as u8, 0];
    assert_sense(
        rig.run_with(0, &cdb, list.len() as u32, &list).0,
        SenseKey::ILLEGAL_REQUEST,
        AdditionalSense::LBA_OUT_OF_RANGE,
    );
    assert_eq!(rig.disk.inner.snapshot()[20 * 512], 0xAB);
    let cdb = [opcode::UNMAP, 0, 0, 0, 0, 0, 0, 0, 4, 0];
    assert_sense(
        rig.run(0, &cdb, 4).0,
        SenseKey::ILLEGAL_REQUEST,
        AdditionalSense::PARAMETER_LIST_LENGTH_ERROR,
    );
}

#[test]
fn unsupported_opcodes_and_addressing() {
    let rig = Rig::new();
    for op in [
        0xEE,
        opcode::WRITE_SAME_16,
        opcode::ATA_PASS_THROUGH_16,
        opcode::MODE_SELECT_10,
    ] {
        let cdb = [op, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_sense(
            rig.run(0, &cdb, 0).0,
            SenseKey::ILLEGAL_REQUEST,
            AdditionalSense::INVALID_COMMAND_OPERATION_CODE,
        );
    }
    assert_eq!(
        rig.run(3, &[0; 6], 0).0,
        ScsiOutcome::srb(SrbStatus::INVALID_LUN)
    );
    let mut srb = VmscsiRequest::new_zeroed();
    srb.cdb_length = 6;
    srb.target_id = 1;
    let buf = DataBuffer::empty(&rig.mem);
    assert_eq!(
        rig.ctl
            .execute(&srb, &buf, &mut ExecStorage::new(64 * 1024)),
        ScsiOutcome::srb(SrbStatus::INVALID_LUN)
    );
    srb.target_id = 0;
    srb.cdb_length = 17;
    assert_eq!(
        rig.ctl
            .execute(&srb, &buf, &mut ExecStorage::new(64 * 1024)),
        ScsiOutcome::srb(SrbStatus::INVALID_REQUEST)
    );
    srb.cdb_length = 0;
    assert_eq!(
        rig.ctl
            .execute(&srb, &buf, &mut ExecStorage::new(64 * 1024)),
        ScsiOutcome::srb(SrbStatus::INVALID_REQUEST)
    );
    // REQUEST SENSE reports no pending sense.
    let (o, d) = rig.run(0, &[opcode::REQUEST_SENSE, 0, 0, 0, 18, 0], 18);
    assert!(o.is_good());
    assert_eq!(FixedSense::parse(&d).unwrap().key, SenseKey::NO_SENSE);
}

/// Guest memory in two regions that touch (pages 0–7), a hole, and a third region (pages 16–19).
fn fragmented_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 4 * 4096),
        (GuestAddress(4 * 4096), 4 * 4096),
        (GuestAddress(16 * 4096), 4 * 4096),
    ])
    .unwrap()
}

fn srb_for(cdb: &[u8]) -> VmscsiRequest {
    let mut srb = VmscsiRequest::new_zeroed();
    srb.cdb_length = cdb.len() as u8;
    srb.cdb_or_sense[..cdb.len()].copy_from_slice(cdb);
    srb
}

/// WRITE then READ of 16 KiB whose buffer starts mid-page, crosses a region boundary and continues in
/// another region after a hole: the data lands on the disk and back in guest memory in order.
#[test]
fn transfers_span_guest_pages_and_regions() {
    let rig = Rig::new();
    let mem = fragmented_memory();
    let segs = [
        Segment {
            gpa: 3 * 4096 + 100,
            len: 8192,
        },
        Segment {
            gpa: 16 * 4096,
            len: 8192,
        },
    ];
    let pattern: Vec<u8> = (0..16384u32).map(|i| (i * 13 % 251) as u8).collect();
    guest_memory::write(&mem, segs[0].gpa, &pattern[..8192]).unwrap();
    guest_memory::write(&mem, segs[1].gpa, &pattern[8192..]).unwrap();
    let buf = DataBuffer::new(&mem, &segs, 16384);
    let mut storage = ExecStorage::new(64 * 1024);
    let o = rig.ctl.execute(
        &srb_for(&cdb16(opcode::WRITE_16, 40, 32)),
        &buf,
        &mut storage,
    );
    assert!(o.is_good() && o.transferred == 16384, "{o:?}");
    let mut on_disk = vec![0u8; 16384];
    rig.disk.inner.read_at(40 * 512, &mut on_disk).unwrap();
    assert_eq!(on_disk, pattern);
    for s in &segs {
        guest_memory::write(&mem, s.gpa, &vec![0; s.len as usize]).unwrap();
    }
    let o = rig.ctl.execute(
        &srb_for(&cdb16(opcode::READ_16, 40, 32)),
        &buf,
        &mut storage,
    );
    assert!(o.is_good() && o.transferred == 16384, "{o:?}");
    let mut back = vec![0u8; 16384];
    guest_memory::read(&mem, segs[0].gpa, &mut back[..8192]).unwrap();
    guest_memory::read(&mem, segs[1].gpa, &mut back[8192..]).unwrap();
    assert_eq!(back, pattern);
}

/// A buffer whose second segment runs from RAM into the hole fails as a whole: a READ writes no guest
/// byte (not even the first, valid segment), a WRITE leaves the disk untouched.
#[test]
fn a_buffer_partly_outside_ram_fails_without_partial_effect() {
    let rig = Rig::new();
    let mem = fragmented_memory();
    let segs = [
        Segment {
            gpa: 4096,
            len: 4096,
        },
        Segment {
            gpa: 7 * 4096,
            len: 8192,
        },
    ];
    guest_memory::write(&mem, 4096, &[0xEE; 4096]).unwrap();
    rig.disk.inner.write_at(0, &[0x11; 12288], false).unwrap();
    let buf = DataBuffer::new(&mem, &segs, 12288);
    let mut storage = ExecStorage::new(64 * 1024);
    let o = rig
        .ctl
        .execute(&srb_for(&cdb16(opcode::READ_16, 0, 24)), &buf, &mut storage);
    assert_eq!(o.srb_status, SrbStatus::INVALID_REQUEST, "{o:?}");
    let mut first = vec![0u8; 4096];
    guest_memory::read(&mem, 4096, &mut first).unwrap();
    assert_eq!(first, vec![0xEE; 4096], "no guest byte written");
    let o = rig.ctl.execute(
        &srb_for(&cdb16(opcode::WRITE_16, 0, 24)),
        &buf,
        &mut storage,
    );
    assert_eq!(o.srb_status, SrbStatus::INVALID_REQUEST, "{o:?}");
    let mut on_disk = vec![0u8; 12288];
    rig.disk.inner.read_at(0, &mut on_disk).unwrap();
    assert_eq!(on_disk, vec![0x11; 12288], "no disk byte written");
}
