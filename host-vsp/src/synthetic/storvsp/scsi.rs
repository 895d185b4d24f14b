//! SCSI command execution for one controller: addressing (path 0, target 0, LUN from the [`LunMap`]),
//! dispatch by operation code, the data commands (READ/WRITE 6/10/12/16 with FUA, SYNCHRONIZE CACHE,
//! VERIFY, UNMAP) and the outcome every command ends in ([`ScsiOutcome`]: SRB status, SCSI status,
//! fixed-format sense data, bytes transferred). The informational commands (INQUIRY and VPD pages,
//! READ CAPACITY, MODE SENSE, REPORT LUNS) live in [`super::scsi_pages`].
//!
//! Every LBA range is checked against the disk before any I/O (ILLEGAL REQUEST / LBA OUT OF RANGE),
//! every transfer against the limit and the guest's buffer; writes to read-only disks fail with
//! DATA PROTECT / WRITE PROTECTED; unknown operation codes with ILLEGAL REQUEST / INVALID COMMAND
//! OPERATION CODE.

use storvsp_protocol::scsi::{
    opcode, AdditionalSense, FixedSense, ScsiStatus, SenseKey, SAI_READ_CAPACITY_16,
};
use storvsp_protocol::{SrbStatus, VmscsiRequest};

use super::request::DataBuffer;
use super::{LunMap, ScsiDisk};
use crate::backend::{DiskError, IovecStorage, SECTOR_SIZE};

/// Most block descriptors one UNMAP may carry.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Most blocks one UNMAP descriptor (and one UNMAP) may discard.
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 22;

/// What one executor (the worker itself or a pool thread) reuses from request to request, so the
/// data path allocates nothing: the iovecs of a transfer (READ/WRITE data moves straight between the
/// backend and the guest's pages) and the host copy of an UNMAP parameter list (which must be copied
/// out of guest memory before it is validated and used).
#[derive(Debug)]
pub struct ExecStorage {
    iovecs: IovecStorage,
    parameters: Vec<u8>,
}

impl ExecStorage {
    /// Storage for transfers of up to `max_transfer` bytes without growing.
    pub fn new(max_transfer: u32) -> Self {
        Self {
            // A transfer at an unaligned offset touches one page more than its length.
            iovecs: IovecStorage::new(max_transfer as usize / 4096 + 2),
            parameters: Vec::new(),
        }
    }
}

/// How an SRB ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiOutcome {
    /// SRB status (with [`SrbStatus::AUTOSENSE_VALID`] when `sense` is set).
    pub srb_status: SrbStatus,
    /// SCSI status.
    pub scsi_status: ScsiStatus,
    /// Sense data for CHECK CONDITION.
    pub sense: Option<FixedSense>,
    /// Bytes of data transferred.
    pub transferred: u32,
}

impl ScsiOutcome {
    /// GOOD with `transferred` bytes.
    pub fn good(transferred: usize) -> Self {
        Self {
            srb_status: SrbStatus::SUCCESS,
            scsi_status: ScsiStatus::GOOD,
            sense: None,
            transferred: transferred as u32,
        }
    }

    /// CHECK CONDITION with fixed-format sense data.
    pub fn check(key: SenseKey, additional: AdditionalSense) -> Self {
        Self {
            srb_status: SrbStatus::ERROR.with_autosense(),
            scsi_status: ScsiStatus::CHECK_CONDITION,
            sense: Some(FixedSense::new(key, additional)),
            transferred: 0,
        }
    }

    /// ILLEGAL REQUEST with `additional`.
    pub fn illegal(additional: AdditionalSense) -> Self {
        Self::check(SenseKey::ILLEGAL_REQUEST, additional)
    }

    /// A failure of the SRB itself (no SCSI status, no sense).
    pub fn srb(status: SrbStatus) -> Self {
        Self {
            srb_status: status,
            scsi_status: ScsiStatus::GOOD,
            sense: None,
            transferred: 0,
        }
    }

    /// Whether the command succeeded.
    pub fn is_good(&self) -> bool {
        self.srb_status == SrbStatus::SUCCESS && self.scsi_status == ScsiStatus::GOOD
    }
}

pub(super) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(super) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(super) fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// Copies `data` (truncated to `alloc` bytes) to the guest: the data-in phase of an informational
/// command.
pub(super) fn data_in(buf: &DataBuffer<'_>, data: &[u8], alloc: usize) -> ScsiOutcome {
    let n = data.len().min(alloc);
    match buf.write_from(&data[..n]) {
        Ok(done) => ScsiOutcome::good(done),
        Err(error) => {
            tracing::debug!(%error, "storvsp: data-in to guest memory failed");
            ScsiOutcome::srb(SrbStatus::INVALID_REQUEST)
        }
    }
}

/// The SCSI side of one controller.
#[derive(Debug, Clone)]
pub struct ScsiController {
    pub(super) luns: LunMap,
    pub(super) max_transfer: u32,
}

impl ScsiController {
    /// A controller serving `luns` with transfers of at most `max_transfer` bytes.
    pub fn new(luns: LunMap, max_transfer: u32) -> Self {
        Self { luns, max_transfer }
    }

    /// The LUNs.
    pub fn luns(&self) -> &LunMap {
        &self.luns
    }

    /// Largest transfer in bytes.
    pub fn max_transfer(&self) -> u32 {
        self.max_transfer
    }

    /// Executes the SRB's CDB with `buf` as its data buffer, using the executor's `storage`.
    pub fn execute(
        &self,
        srb: &VmscsiRequest,
        buf: &DataBuffer<'_>,
        storage: &mut ExecStorage,
    ) -> ScsiOutcome {
        let Some(cdb) = srb.cdb() else {
            tracing::debug!(len = srb.cdb_length, "storvsp: bad CDB length");
            return ScsiOutcome::srb(SrbStatus::INVALID_REQUEST);
        };
        if srb.path_id != 0 || srb.target_id != 0 {
            return ScsiOutcome::srb(SrbStatus::INVALID_LUN);
        }
        // REPORT LUNS is answered by the target whichever LUN it is addressed to.
        if cdb[0] == opcode::REPORT_LUNS {
            return self.report_luns(cdb, buf);
        }
        let Some(disk) = self.luns.get(srb.lun) else {
            return ScsiOutcome::srb(SrbStatus::INVALID_LUN);
        };
        self.dispatch(disk, cdb, buf, storage)
    }

    fn dispatch(
        &self,
        disk: &ScsiDisk,
        cdb: &[u8],
        buf: &DataBuffer<'_>,
        storage: &mut ExecStorage,
    ) -> ScsiOutcome {
        match cdb[0] {
            opcode::TEST_UNIT_READY
            | opcode::START_STOP_UNIT
            | opcode::PREVENT_ALLOW_MEDIUM_REMOVAL => ScsiOutcome::good(0),
            opcode::REQUEST_SENSE => {
                let alloc = cdb.get(4).copied().unwrap_or(0);
                let sense = FixedSense::new(SenseKey::NO_SENSE, AdditionalSense::NONE).to_bytes();
                data_in(buf, &sense, usize::from(alloc))
            }
            opcode::INQUIRY => self.inquiry(disk, cdb, buf),
            opcode::READ_CAPACITY_10 => self.read_capacity_10(disk, cdb, buf),
            opcode::SERVICE_ACTION_IN_16
                if cdb.get(1).map(|b| b & 0x1F) == Some(SAI_READ_CAPACITY_16) =>
            {
                self.read_capacity_16(disk, cdb, buf)
            }
            opcode::MODE_SENSE_6 => self.mode_sense(disk, cdb, buf, false),
            opcode::MODE_SENSE_10 => self.mode_sense(disk, cdb, buf, true),
            opcode::READ_6 | opcode::READ_10 | opcode::READ_12 | opcode::READ_16 => {
                self.read_write(disk, cdb, buf, &mut storage.iovecs, false)
            }
            opcode::WRITE_6 | opcode::WRITE_10 | opcode::WRITE_12 | opcode::WRITE_16 => {
                self.read_write(disk, cdb, buf, &mut storage.iovecs, true)
            }
            opcode::SYNCHRONIZE_CACHE_10 | opcode::SYNCHRONIZE_CACHE_16 => {
                self.synchronize_cache(disk, cdb)
            }
            opcode::VERIFY_10 | opcode::VERIFY_16 => self.verify(disk, cdb),
            opcode::UNMAP => self.unmap(disk, cdb, buf, &mut storage.parameters),
            other => {
                tracing::debug!(opcode = other, "storvsp: unsupported SCSI operation");
                ScsiOutcome::illegal(AdditionalSense::INVALID_COMMAND_OPERATION_CODE)
            }
        }
    }

    /// `(lba, blocks, fua)` of a READ/WRITE/VERIFY CDB, or `None` if the CDB is shorter than its group.
    fn lba_and_blocks(cdb: &[u8]) -> Option<(u64, u64, bool)> {
        let fua = cdb.get(1).is_some_and(|b| b & 0x08 != 0);
        match cdb[0] {
            opcode::READ_6 | opcode::WRITE_6 if cdb.len() >= 6 => {
                let lba = u64::from(cdb[1] & 0x1F) << 16 | u64::from(be16(cdb, 2));
                // A transfer length of 0 means 256 blocks in the 6-byte commands.
                let blocks = if cdb[4] == 0 { 256 } else { u64::from(cdb[4]) };
                Some((lba, blocks, false))
            }
            opcode::READ_10
            | opcode::WRITE_10
            | opcode::VERIFY_10
            | opcode::SYNCHRONIZE_CACHE_10
                if cdb.len() >= 10 =>
            {
                Some((u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)), fua))
            }
            opcode::READ_12 | opcode::WRITE_12 if cdb.len() >= 12 => {
                Some((u64::from(be32(cdb, 2)), u64::from(be32(cdb, 6)), fua))
            }
            opcode::READ_16
            | opcode::WRITE_16
            | opcode::VERIFY_16
            | opcode::SYNCHRONIZE_CACHE_16
                if cdb.len() >= 16 =>
            {
                Some((be64(cdb, 2), u64::from(be32(cdb, 10)), fua))
            }
            _ => None,
        }
    }

    fn check_range(disk: &ScsiDisk, lba: u64, blocks: u64) -> Result<(), ScsiOutcome> {
        match lba.checked_add(blocks) {
            Some(end) if end <= disk.backend.sectors() => Ok(()),
            _ => Err(ScsiOutcome::illegal(AdditionalSense::LBA_OUT_OF_RANGE)),
        }
    }

    fn read_write(
        &self,
        disk: &ScsiDisk,
        cdb: &[u8],
        buf: &DataBuffer<'_>,
        iovecs: &mut IovecStorage,
        write: bool,
    ) -> ScsiOutcome {
        let Some((lba, blocks, fua)) = Self::lba_and_blocks(cdb) else {
            return ScsiOutcome::illegal(AdditionalSense::INVALID_FIELD_IN_CDB);
        };
        if write && disk.backend.read_only() {
            return ScsiOutcome::check(SenseKey::DATA_PROTECT, AdditionalSense::WRITE_PROTECTED);
        }
        if let Err(outcome) = Self::check_range(disk, lba, blocks) {
            return outcome;
        }
        // blocks < 2^32, so this cannot overflow.
        let bytes = blocks * SECTOR_SIZE;
        if bytes > u64::from(self.max_transfer) {
            return ScsiOutcome::illegal(AdditionalSense::INVALID_FIELD_IN_CDB);
        }
        if bytes == 0 {
            return ScsiOutcome::good(0);
        }
        if bytes > buf.len() {
            tracing::debug!(
                bytes,
                buffer = buf.len(),
                "storvsp: data buffer shorter than the transfer"
            );
            return ScsiOutcome::srb(SrbStatus::INVALID_REQUEST);
        }
        let mut bufs = iovecs.buffers();
        if let Err(error) = buf.push_to(&mut bufs, bytes) {
            tracing::debug!(%error, "storvsp: data buffer is not guest RAM");
            return ScsiOutcome::srb(SrbStatus::INVALID_REQUEST);
        }
        let offset = lba * SECTOR_SIZE;
        let done = if write {
            disk.backend.write_vectored(offset, &bufs, fua)
        } else {
            disk.backend.read_vectored(offset, &bufs)
        };
        match done {
            Ok(()) => ScsiOutcome::good(bytes as usize),
            Err(e) => disk_error(e, write),
        }
    }

    fn synchronize_cache(&self, disk: &ScsiDisk, cdb: &[u8]) -> ScsiOutcome {
        let Some((lba, blocks, _)) = Self::lba_and_blocks(cdb) else {
            return ScsiOutcome::illegal(AdditionalSense::INVALID_FIELD_IN_CDB);
        };
        // Zero blocks means "to the end of the medium"; the LBA itself must still be on it.
        let blocks = if blocks == 0 {
            disk.backend.sectors().saturating_sub(lba)
        } else {
            blocks
        };
        if lba > disk.backend.sectors() {
            return ScsiOutcome::illegal(AdditionalSense::LBA_OUT_OF_RANGE);
        }
        if let Err(outcome) = Self::check_range(disk, lba, blocks) {
            return outcome;
        }
        match disk.backend.flush() {
            Ok(()) => ScsiOutcome::good(0),
            Err(e) => disk_error(e, true),
        }
    }

    fn verify(&self, disk: &ScsiDisk, cdb: &[u8]) -> ScsiOutcome {
        let Some((lba, blocks, _)) = Self::lba_and_blocks(cdb) else {
            return ScsiOutcome::illegal(AdditionalSense::INVALID_FIELD_IN_CDB);
        };
        // BYTCHK != 0 would compare guest data with the medium: not supported.
        if cdb[1] & 0x06 != 0 {
            return ScsiOutcome::illegal(AdditionalSense::INVALID_FIELD_IN_CDB);
        }
        match Self::check_range(disk, lba, blocks) {
            Ok(()) => ScsiOutcome::good(0),
            Err(outcome) => outcome,
        }
    }

    fn unmap(
        &self,
        disk: &ScsiDisk,
        cdb: &[u8],
        buf: &DataBuffer<'_>,
        list: &mut Vec<u8>,
    ) -> ScsiOutcome {
        if cdb.len() < 10 {
            return ScsiOutcome::illegal(AdditionalSense::INVALID_FIELD_IN_CDB);
        }
        if disk.backend.read_only() {
            return ScsiOutcome::check(SenseKey::DATA_PROTECT, AdditionalSense::WRITE_PROTECTED);
        }
        let param_len = usize::from(be16(cdb, 7));
        if param_len == 0 {
            return ScsiOutcome::good(0);
        }
        if param_len < 8 {
            return ScsiOutcome::illegal(AdditionalSense::PARAMETER_LIST_LENGTH_ERROR);
        }
        if param_len as u64 > buf.len() {
            return ScsiOutcome::srb(SrbStatus::INVALID_REQUEST);
        }
        if list.len() < param_len {
            list.resize(param_len, 0);
        }
        let list = &mut list[..param_len];
        if buf.read_into(list).is_err() {
            return ScsiOutcome::srb(SrbStatus::INVALID_REQUEST);
        }
        let descriptor_bytes = usize::from(be16(list, 2)).min(param_len - 8);
        let count = descriptor_bytes / 16;
        if count as u32 > MAX_UNMAP_DESCRIPTORS {
            return ScsiOutcome::illegal(AdditionalSense::INVALID_FIELD_IN_PARAMETER_LIST);
        }
        let descriptors = || {
            list[8..8 + count * 16]
                .chunks_exact(16)
                .map(|d| (be64(d, 0), u64::from(be32(d, 8))))
        };
        // Validate every descriptor before discarding anything.
        let mut total = 0u64;
        for (lba, blocks) in descriptors() {
            total += blocks;
            if blocks > u64::from(MAX_UNMAP_BLOCKS) || total > u64::from(MAX_UNMAP_BLOCKS) {
                return ScsiOutcome::illegal(AdditionalSense::INVALID_FIELD_IN_PARAMETER_LIST);
            }
            if let Err(outcome) = Self::check_range(disk, lba, blocks) {
                return outcome;
            }
        }
        for (lba, blocks) in descriptors() {
            if blocks == 0 {
                continue;
            }
            if let Err(e) = disk
                .backend
                .discard(lba * SECTOR_SIZE, blocks * SECTOR_SIZE)
            {
                return disk_error(e, true);
            }
        }
        ScsiOutcome::good(0)
    }
}

/// Sense data for a backend failure.
fn disk_error(error: DiskError, write: bool) -> ScsiOutcome {
    let source = std::error::Error::source(&error).map(ToString::to_string);
    crate::guest_warn!(%error, ?source, write, "storvsp: disk backend error");
    match error {
        DiskError::OutOfRange { .. } => ScsiOutcome::illegal(AdditionalSense::LBA_OUT_OF_RANGE),
        DiskError::ReadOnly => {
            ScsiOutcome::check(SenseKey::DATA_PROTECT, AdditionalSense::WRITE_PROTECTED)
        }
        DiskError::Io(_) | DiskError::EarlierFlushFailed if write => {
            ScsiOutcome::check(SenseKey::MEDIUM_ERROR, AdditionalSense::WRITE_ERROR)
        }
        DiskError::Io(_) | DiskError::EarlierFlushFailed => ScsiOutcome::check(
            SenseKey::MEDIUM_ERROR,
            AdditionalSense::UNRECOVERED_READ_ERROR,
        ),
        DiskError::Invalid(_) | DiskError::ReadOnlyBuffers | DiskError::BufferRange { .. } => {
            ScsiOutcome::check(
                SenseKey::HARDWARE_ERROR,
                AdditionalSense::INTERNAL_TARGET_FAILURE,
            )
        }
    }
}
