//! The SCSI request block carried by `EXECUTE_SRB` (`struct vmscsi_request`), its status codes, data
//! direction and flags.

use vmbus::open_enum;
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Longest CDB an SRB carries.
pub const CDB_MAX_LEN: usize = 16;
/// Sense bytes an SRB can return (Windows 8 and later; also the size of the CDB/sense union).
pub const SENSE_BUFFER_SIZE: usize = 0x14;
/// Sense bytes before Windows 8.
pub const PRE_WIN8_SENSE_BUFFER_SIZE: usize = 0x12;
/// Size of the Windows 8 extension at the end of the SRB.
pub const VMSCSI_WIN8_EXTENSION_SIZE: usize = 16;
/// `sizeof(struct vmscsi_request)` with the Windows 8 extension.
pub const VMSCSI_REQUEST_SIZE: usize = 0x34;

open_enum! {
    /// `srb_status`: the low six bits are the status, bits 6 and 7 are flags.
    pub struct SrbStatus(u8) {
        /// Not completed.
        PENDING = 0,
        /// Completed successfully.
        SUCCESS = 1,
        /// Aborted.
        ABORTED = 2,
        /// Completed with an error (see `scsi_status`/sense).
        ERROR = 4,
        /// The request itself was invalid.
        INVALID_REQUEST = 6,
        /// No device at the address.
        NO_DEVICE = 8,
        /// Selection timed out.
        SELECTION_TIMEOUT = 0x0A,
        /// Data overrun or underrun.
        DATA_OVERRUN = 0x12,
        /// No such LUN.
        INVALID_LUN = 0x20,
        /// Internal error of the adapter.
        INTERNAL_ERROR = 0x30,
    }
}

impl SrbStatus {
    /// Flag: the queue is frozen.
    pub const QUEUE_FROZEN: u8 = 0x40;
    /// Flag: the sense data in the SRB is valid.
    pub const AUTOSENSE_VALID: u8 = 0x80;

    /// The status without its flag bits.
    pub fn code(self) -> Self {
        Self(self.0 & 0x3F)
    }

    /// Whether [`Self::AUTOSENSE_VALID`] is set.
    pub fn autosense_valid(self) -> bool {
        self.0 & Self::AUTOSENSE_VALID != 0
    }

    /// This status with [`Self::AUTOSENSE_VALID`] set.
    pub fn with_autosense(self) -> Self {
        Self(self.0 | Self::AUTOSENSE_VALID)
    }
}

open_enum! {
    /// `data_in`: the direction of the SRB's data.
    pub struct DataDirection(u8) {
        /// Guest → device (`WRITE_TYPE`).
        WRITE = 0,
        /// Device → guest (`READ_TYPE`).
        READ = 1,
        /// No data or unknown (`UNKNOWN_TYPE`).
        UNKNOWN = 2,
    }
}

/// `srb_flags` bits of the Windows 8 extension.
pub mod srb_flags {
    /// Honour `queue_action`.
    pub const QUEUE_ACTION_ENABLE: u32 = 0x0000_0002;
    /// Disable disconnects.
    pub const DISABLE_DISCONNECT: u32 = 0x0000_0004;
    /// Disable synchronous transfers.
    pub const DISABLE_SYNCH_TRANSFER: u32 = 0x0000_0008;
    /// Bypass a frozen queue.
    pub const BYPASS_FROZEN_QUEUE: u32 = 0x0000_0010;
    /// Do not return sense data.
    pub const DISABLE_AUTOSENSE: u32 = 0x0000_0020;
    /// Data flows to the initiator.
    pub const DATA_IN: u32 = 0x0000_0040;
    /// Data flows to the device.
    pub const DATA_OUT: u32 = 0x0000_0080;
}

/// `struct vmscsi_request` (packed, with the Windows 8 extension from offset 36).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct VmscsiRequest {
    /// Size of this structure as the sender sees it.
    pub length: U16,
    /// [`SrbStatus`] (reply).
    pub srb_status: u8,
    /// SCSI status byte (reply).
    pub scsi_status: u8,
    /// HBA number chosen by the initiator.
    pub port_number: u8,
    /// Bus.
    pub path_id: u8,
    /// Target.
    pub target_id: u8,
    /// Logical unit.
    pub lun: u8,
    /// Valid CDB bytes (at most [`CDB_MAX_LEN`]).
    pub cdb_length: u8,
    /// Request: sense bytes the initiator accepts; reply: sense bytes returned.
    pub sense_info_length: u8,
    /// [`DataDirection`].
    pub data_in: u8,
    /// Reserved.
    pub reserved: u8,
    /// Request: bytes of data; reply: bytes transferred.
    pub data_transfer_length: U32,
    /// The CDB (request) or the sense data (reply).
    pub cdb_or_sense: [u8; SENSE_BUFFER_SIZE],
    /// Windows 8 extension: reserved.
    pub reserve: U16,
    /// Windows 8 extension: queue tag.
    pub queue_tag: u8,
    /// Windows 8 extension: queue action.
    pub queue_action: u8,
    /// Windows 8 extension: [`srb_flags`].
    pub srb_flags: U32,
    /// Windows 8 extension: timeout in seconds.
    pub time_out_value: U32,
    /// Windows 8 extension: queue sort key.
    pub queue_sort_key: U32,
}

impl VmscsiRequest {
    /// The valid CDB bytes, or `None` if `cdb_length` exceeds [`CDB_MAX_LEN`] or is zero.
    pub fn cdb(&self) -> Option<&[u8]> {
        let len = usize::from(self.cdb_length);
        if len == 0 || len > CDB_MAX_LEN {
            return None;
        }
        Some(&self.cdb_or_sense[..len])
    }

    /// [`SrbStatus`] of a reply.
    pub fn status(&self) -> SrbStatus {
        SrbStatus(self.srb_status)
    }

    /// The data direction.
    pub fn direction(&self) -> DataDirection {
        DataDirection(self.data_in)
    }

    /// The sense bytes of a reply (`sense_info_length`, clamped to the buffer).
    pub fn sense(&self) -> &[u8] {
        let n = usize::from(self.sense_info_length).min(SENSE_BUFFER_SIZE);
        &self.cdb_or_sense[..n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn vmscsi_request_layout_matches_linux() {
        assert_eq!(size_of::<VmscsiRequest>(), VMSCSI_REQUEST_SIZE);
        assert_eq!(size_of::<VmscsiRequest>(), 52);
        assert_eq!(offset_of!(VmscsiRequest, srb_status), 2);
        assert_eq!(offset_of!(VmscsiRequest, scsi_status), 3);
        assert_eq!(offset_of!(VmscsiRequest, port_number), 4);
        assert_eq!(offset_of!(VmscsiRequest, path_id), 5);
        assert_eq!(offset_of!(VmscsiRequest, target_id), 6);
        assert_eq!(offset_of!(VmscsiRequest, lun), 7);
        assert_eq!(offset_of!(VmscsiRequest, cdb_length), 8);
        assert_eq!(offset_of!(VmscsiRequest, sense_info_length), 9);
        assert_eq!(offset_of!(VmscsiRequest, data_in), 10);
        assert_eq!(offset_of!(VmscsiRequest, reserved), 11);
        assert_eq!(offset_of!(VmscsiRequest, data_transfer_length), 12);
        assert_eq!(offset_of!(VmscsiRequest, cdb_or_sense), 16);
        // The Windows 8 extension starts right after the 20-byte union.
        assert_eq!(offset_of!(VmscsiRequest, reserve), 36);
        assert_eq!(offset_of!(VmscsiRequest, queue_tag), 38);
        assert_eq!(offset_of!(VmscsiRequest, queue_action), 39);
        assert_eq!(offset_of!(VmscsiRequest, srb_flags), 40);
        assert_eq!(offset_of!(VmscsiRequest, time_out_value), 44);
        assert_eq!(offset_of!(VmscsiRequest, queue_sort_key), 48);
        assert_eq!(
            VMSCSI_REQUEST_SIZE - offset_of!(VmscsiRequest, reserve),
            VMSCSI_WIN8_EXTENSION_SIZE
        );
    }

    #[test]
    fn status_flags_and_cdb_bounds() {
        let s = SrbStatus::ERROR.with_autosense();
        assert_eq!(s.0, 0x84);
        assert!(s.autosense_valid());
        assert_eq!(s.code(), SrbStatus::ERROR);
        assert_eq!(SrbStatus::INVALID_LUN.0, 0x20);
        let mut srb: VmscsiRequest = zerocopy::FromZeros::new_zeroed();
        assert_eq!(srb.cdb(), None);
        srb.cdb_length = 10;
        assert_eq!(srb.cdb().map(<[u8]>::len), Some(10));
        srb.cdb_length = 17;
        assert_eq!(srb.cdb(), None);
        srb.sense_info_length = 200;
        assert_eq!(srb.sense().len(), SENSE_BUFFER_SIZE);
    }
}
