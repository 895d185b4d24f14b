//! The informational SCSI commands: standard INQUIRY and the VPD pages a Linux guest reads (0x00
//! supported pages, 0x80 serial number, 0x83 device identification, 0xB0 block limits, 0xB1 block
//! device characteristics, 0xB2 logical block provisioning), READ CAPACITY(10/16), MODE SENSE(6/10)
//! (caching and control pages; write-protect and DPOFUA in the header) and REPORT LUNS.

use storvsp_protocol::scsi::{mode_page, vpd, AdditionalSense};

use super::request::DataBuffer;
use super::scsi::{
    be16, be32, data_in, ScsiController, ScsiOutcome, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS,
};
use super::ScsiDisk;
use crate::backend::SECTOR_SIZE;

/// INQUIRY vendor identification (8 bytes).
pub const VENDOR_ID: &[u8; 8] = b"Msft    ";
/// INQUIRY product identification (16 bytes).
pub const PRODUCT_ID: &[u8; 16] = b"Virtual Disk    ";
/// INQUIRY product revision level (4 bytes).
pub const PRODUCT_REVISION: &[u8; 4] = b"1.0 ";
/// log2 of logical blocks per physical block reported (4 KiB physical blocks).
pub const PHYSICAL_BLOCK_EXPONENT: u8 = 3;

const SUPPORTED_VPD_PAGES: [u8; 6] = [
    vpd::SUPPORTED_PAGES,
    vpd::UNIT_SERIAL_NUMBER,
    vpd::DEVICE_IDENTIFICATION,
    vpd::BLOCK_LIMITS,
    vpd::BLOCK_DEVICE_CHARACTERISTICS,
    vpd::LOGICAL_BLOCK_PROVISIONING,
];

/// A VPD page: header `{device type 0, page code, u16 length}` then `body`.
fn vpd_page(code: u8, body: &[u8]) -> Vec<u8> {
    let mut page = vec![0, code];
    page.extend_from_slice(&(body.len() as u16).to_be_bytes());
    page.extend_from_slice(body);
    page
}

impl ScsiController {
    pub(super) fn inquiry(&self, disk: &ScsiDisk, cdb: &[u8], buf: &DataBuffer<'_>) -> ScsiOutcome {
        if cdb.len() < 6 {
            return ScsiOutcome::illegal(AdditionalSense::INVALID_FIELD_IN_CDB);
        }
        let evpd = cdb[1] & 0x01 != 0;
        let page = cdb[2];
        let alloc = usize::from(be16(cdb, 3));
        if !evpd {
            if page != 0 {
                return ScsiOutcome::illegal(AdditionalSense::INVALID_FIELD_IN_CDB);
            }
            return data_in(buf, &standard_inquiry(), alloc);
        }
        let data = match page {
            vpd::SUPPORTED_PAGES => vpd_page(page, &SUPPORTED_VPD_PAGES),
            vpd::UNIT_SERIAL_NUMBER => vpd_page(page, disk.serial.as_bytes()),
            vpd::DEVICE_IDENTIFICATION => vpd_page(page, &device_identification(disk)),
            vpd::BLOCK_LIMITS => vpd_page(page, &self.block_limits(disk)),
            vpd::BLOCK_DEVICE_CHARACTERISTICS => {
                let mut body = [0u8; 0x3C];
                // Medium rotation rate 1: a non-rotating medium.
                body[0..2].copy_from_slice(&1u16.to_be_bytes());
                vpd_page(page, &body)
            }
            vpd::LOGICAL_BLOCK_PROVISIONING => {
                let mut body = [0u8; 4];
                if !disk.backend.read_only() {
                    // LBPU: UNMAP supported; LBPRZ = 1: unmapped blocks read as zeros.
                    body[1] = 0x80 | 0x04;
                    // Provisioning type 2: thin provisioned.
                    body[2] = 0x02;
                }
                vpd_page(page, &body)
            }
            _ => return ScsiOutcome::illegal(AdditionalSense::INVALID_FIELD_IN_CDB),
        };
        data_in(buf, &data, alloc)
    }

    fn block_limits(&self, disk: &ScsiDisk) -> [u8; 0x3C] {
        let mut b = [0u8; 0x3C];
        let blocks_per_physical = 1u16 << PHYSICAL_BLOCK_EXPONENT;
        let max_blocks = self.max_transfer / SECTOR_SIZE as u32;
        // Offsets below are page offsets minus the 4-byte header.
        b[2..4].copy_from_slice(&blocks_per_physical.to_be_bytes()); // optimal transfer length granularity
        b[4..8].copy_from_slice(&max_blocks.to_be_bytes()); // maximum transfer length
        b[8..12].copy_from_slice(&max_blocks.to_be_bytes()); // optimal transfer length
        if !disk.backend.read_only() {
            b[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes()); // maximum unmap LBA count
            b[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes()); // maximum unmap descriptors
            b[24..28].copy_from_slice(&u32::from(blocks_per_physical).to_be_bytes());
            // unmap granularity
        }
        b
    }

    pub(super) fn read_capacity_10(
        &self,
        disk: &ScsiDisk,
        cdb: &[u8],
        buf: &DataBuffer<'_>,
    ) -> ScsiOutcome {
        if cdb.len() < 10 {
            return ScsiOutcome::illegal(AdditionalSense::INVALID_FIELD_IN_CDB);
        }
        let last = disk.backend.sectors().saturating_sub(1);
        // Too large for 32 bits: 0xFFFFFFFF tells the initiator to use READ CAPACITY(16).
        let last = u32::try_from(last).unwrap_or(u32::MAX);
        let mut data = [0u8; 8];
        data[0..4].copy_from_slice(&last.to_be_bytes());
        data[4..8].copy_from_slice(&(SECTOR_SIZE as u32).to_be_bytes());
        data_in(buf, &data, data.len())
    }

    pub(super) fn read_capacity_16(
        &self,
        disk: &ScsiDisk,
        cdb: &[u8],
        buf: &DataBuffer<'_>,
    ) -> ScsiOutcome {
        if cdb.len() < 16 {
            return ScsiOutcome::illegal(AdditionalSense::INVALID_FIELD_IN_CDB);
        }
        let alloc = be32(cdb, 10) as usize;
        let mut data = [0u8; 32];
        data[0..8].copy_from_slice(&disk.backend.sectors().saturating_sub(1).to_be_bytes());
        data[8..12].copy_from_slice(&(SECTOR_SIZE as u32).to_be_bytes());
        data[13] = PHYSICAL_BLOCK_EXPONENT;
        if !disk.backend.read_only() {
            // LBPME (logical block provisioning enabled) and LBPRZ (unmapped blocks read zero).
            data[14] = 0x80 | 0x40;
        }
        data_in(buf, &data, alloc)
    }

    pub(super) fn mode_sense(
        &self,
        disk: &ScsiDisk,
        cdb: &[u8],
        buf: &DataBuffer<'_>,
        ten: bool,
    ) -> ScsiOutcome {
        if cdb.len() < if ten { 10 } else { 6 } {
            return ScsiOutcome::illegal(AdditionalSense::INVALID_FIELD_IN_CDB);
        }
        let dbd = cdb[1] & 0x08 != 0;
        let pc = cdb[2] >> 6;
        let page = cdb[2] & 0x3F;
        let subpage = cdb[3];
        let alloc = if ten {
            usize::from(be16(cdb, 7))
        } else {
            usize::from(cdb[4])
        };
        if pc == 3 {
            return ScsiOutcome::illegal(AdditionalSense::SAVING_PARAMETERS_NOT_SUPPORTED);
        }
        if subpage != 0 && !(page == mode_page::ALL && subpage == 0xFF) {
            return ScsiOutcome::illegal(AdditionalSense::INVALID_FIELD_IN_CDB);
        }
        // pc 1 (changeable values): nothing is changeable, so every field is zero.
        let changeable = pc == 1;
        let caching = {
            let mut p = [0u8; 20];
            p[0] = mode_page::CACHING;
            p[1] = 0x12;
            if !changeable {
                p[2] = 0x04; // WCE: writes are cached until SYNCHRONIZE CACHE or FUA
            }
            p
        };
        let control = {
            let mut p = [0u8; 12];
            p[0] = mode_page::CONTROL;
            p[1] = 0x0A;
            if !changeable {
                p[3] = 0x10; // queue algorithm modifier 1: unrestricted reordering
            }
            p
        };
        let mut pages = Vec::new();
        match page {
            mode_page::CACHING => pages.extend_from_slice(&caching),
            mode_page::CONTROL => pages.extend_from_slice(&control),
            mode_page::ALL => {
                pages.extend_from_slice(&caching);
                pages.extend_from_slice(&control);
            }
            _ => return ScsiOutcome::illegal(AdditionalSense::INVALID_FIELD_IN_CDB),
        }
        // Short LBA block descriptor: u32 blocks (saturated), reserved, 24-bit block length.
        let mut descriptor = [0u8; 8];
        let blocks = u32::try_from(disk.backend.sectors()).unwrap_or(u32::MAX);
        descriptor[0..4].copy_from_slice(&blocks.to_be_bytes());
        descriptor[5..8].copy_from_slice(&(SECTOR_SIZE as u32).to_be_bytes()[1..]);
        let descriptor: &[u8] = if dbd { &[] } else { &descriptor };
        // Device-specific parameter: WP for read-only disks, DPOFUA (FUA supported).
        let device_specific = if disk.backend.read_only() { 0x80 } else { 0 } | 0x10;
        let mut data = Vec::with_capacity(8 + descriptor.len() + pages.len());
        if ten {
            let len = (6 + descriptor.len() + pages.len()) as u16;
            data.extend_from_slice(&len.to_be_bytes());
            data.extend_from_slice(&[0, device_specific, 0, 0]);
            data.extend_from_slice(&(descriptor.len() as u16).to_be_bytes());
        } else {
            let len = (3 + descriptor.len() + pages.len()) as u8;
            data.extend_from_slice(&[len, 0, device_specific, descriptor.len() as u8]);
        }
        data.extend_from_slice(descriptor);
        data.extend_from_slice(&pages);
        data_in(buf, &data, alloc)
    }

    pub(super) fn report_luns(&self, cdb: &[u8], buf: &DataBuffer<'_>) -> ScsiOutcome {
        if cdb.len() < 12 {
            return ScsiOutcome::illegal(AdditionalSense::INVALID_FIELD_IN_CDB);
        }
        let alloc = be32(cdb, 6) as usize;
        if alloc < 16 {
            return ScsiOutcome::illegal(AdditionalSense::INVALID_FIELD_IN_CDB);
        }
        let count = self.luns.len();
        let mut data = Vec::with_capacity(8 + count * 8);
        data.extend_from_slice(&((count * 8) as u32).to_be_bytes());
        data.extend_from_slice(&[0; 4]);
        for lun in self.luns.luns() {
            // Peripheral device addressing, bus 0.
            data.extend_from_slice(&[0, lun, 0, 0, 0, 0, 0, 0]);
        }
        data_in(buf, &data, alloc)
    }
}

/// Standard INQUIRY data (36 bytes): direct-access block device, SPC-4, command queueing.
fn standard_inquiry() -> [u8; 36] {
    let mut d = [0u8; 36];
    d[0] = 0x00; // peripheral qualifier 0, direct-access block device
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HiSup, response data format 2
    d[4] = 36 - 5; // additional length
    d[7] = 0x02; // CmdQue
    d[8..16].copy_from_slice(VENDOR_ID);
    d[16..32].copy_from_slice(PRODUCT_ID);
    d[32..36].copy_from_slice(PRODUCT_REVISION);
    d
}

/// VPD 0x83 body: an NAA designator (binary, LU association) and a T10 vendor id (ASCII).
fn device_identification(disk: &ScsiDisk) -> Vec<u8> {
    let mut body = vec![0x01, 0x03, 0x00, 16];
    body.extend_from_slice(&disk.naa_id);
    let mut t10 = VENDOR_ID.to_vec();
    t10.extend_from_slice(disk.serial.as_bytes());
    t10.truncate(251);
    body.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
    body.extend_from_slice(&t10);
    body
}
