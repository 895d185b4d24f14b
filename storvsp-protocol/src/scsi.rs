//! SCSI constants both ends of the channel use (SPC/SBC): operation codes, status bytes, sense keys,
//! additional sense codes, VPD page codes, and fixed-format sense data ([`FixedSense`]).

use vmbus::open_enum;
open_enum! {
    /// SCSI status byte.
    pub struct ScsiStatus(u8) {
        /// Success.
        GOOD = 0x00,
        /// Sense data describes an error.
        CHECK_CONDITION = 0x02,
        /// Condition met.
        CONDITION_MET = 0x04,
        /// Busy.
        BUSY = 0x08,
        /// Reservation conflict.
        RESERVATION_CONFLICT = 0x18,
        /// Task set full.
        TASK_SET_FULL = 0x28,
    }
}

open_enum! {
    /// Sense key (low nibble of fixed sense byte 2).
    pub struct SenseKey(u8) {
        /// No error.
        NO_SENSE = 0x0,
        /// Recovered error.
        RECOVERED_ERROR = 0x1,
        /// Not ready.
        NOT_READY = 0x2,
        /// Medium error.
        MEDIUM_ERROR = 0x3,
        /// Hardware error.
        HARDWARE_ERROR = 0x4,
        /// Illegal request.
        ILLEGAL_REQUEST = 0x5,
        /// Unit attention.
        UNIT_ATTENTION = 0x6,
        /// Data protect.
        DATA_PROTECT = 0x7,
        /// Aborted command.
        ABORTED_COMMAND = 0xB,
    }
}

/// An additional sense code and qualifier (ASC, ASCQ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AdditionalSense {
    /// ASC.
    pub asc: u8,
    /// ASCQ.
    pub ascq: u8,
}

impl AdditionalSense {
    /// No additional sense information.
    pub const NONE: Self = Self::new(0x00, 0x00);
    /// WRITE ERROR.
    pub const WRITE_ERROR: Self = Self::new(0x0C, 0x00);
    /// UNRECOVERED READ ERROR.
    pub const UNRECOVERED_READ_ERROR: Self = Self::new(0x11, 0x00);
    /// PARAMETER LIST LENGTH ERROR.
    pub const PARAMETER_LIST_LENGTH_ERROR: Self = Self::new(0x1A, 0x00);
    /// INVALID COMMAND OPERATION CODE.
    pub const INVALID_COMMAND_OPERATION_CODE: Self = Self::new(0x20, 0x00);
    /// LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Self = Self::new(0x21, 0x00);
    /// INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: Self = Self::new(0x24, 0x00);
    /// LOGICAL UNIT NOT SUPPORTED.
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Self = Self::new(0x25, 0x00);
    /// INVALID FIELD IN PARAMETER LIST.
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Self = Self::new(0x26, 0x00);
    /// WRITE PROTECTED.
    pub const WRITE_PROTECTED: Self = Self::new(0x27, 0x00);
    /// SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Self = Self::new(0x39, 0x00);
    /// INTERNAL TARGET FAILURE.
    pub const INTERNAL_TARGET_FAILURE: Self = Self::new(0x44, 0x00);

    /// `(asc, ascq)`.
    pub const fn new(asc: u8, ascq: u8) -> Self {
        Self { asc, ascq }
    }
}

/// Operation codes (CDB byte 0).
pub mod opcode {
    /// TEST UNIT READY.
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE.
    pub const REQUEST_SENSE: u8 = 0x03;
    /// READ(6).
    pub const READ_6: u8 = 0x08;
    /// WRITE(6).
    pub const WRITE_6: u8 = 0x0A;
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// MODE SELECT(6).
    pub const MODE_SELECT_6: u8 = 0x15;
    /// MODE SENSE(6).
    pub const MODE_SENSE_6: u8 = 0x1A;
    /// START STOP UNIT.
    pub const START_STOP_UNIT: u8 = 0x1B;
    /// PREVENT ALLOW MEDIUM REMOVAL.
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1E;
    /// READ CAPACITY(10).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ(10).
    pub const READ_10: u8 = 0x28;
    /// WRITE(10).
    pub const WRITE_10: u8 = 0x2A;
    /// VERIFY(10).
    pub const VERIFY_10: u8 = 0x2F;
    /// SYNCHRONIZE CACHE(10).
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    /// WRITE SAME(10).
    pub const WRITE_SAME_10: u8 = 0x41;
    /// UNMAP.
    pub const UNMAP: u8 = 0x42;
    /// MODE SELECT(10).
    pub const MODE_SELECT_10: u8 = 0x55;
    /// MODE SENSE(10).
    pub const MODE_SENSE_10: u8 = 0x5A;
    /// ATA PASS-THROUGH(16).
    pub const ATA_PASS_THROUGH_16: u8 = 0x85;
    /// READ(16).
    pub const READ_16: u8 = 0x88;
    /// WRITE(16).
    pub const WRITE_16: u8 = 0x8A;
    /// VERIFY(16).
    pub const VERIFY_16: u8 = 0x8F;
    /// SYNCHRONIZE CACHE(16).
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    /// WRITE SAME(16).
    pub const WRITE_SAME_16: u8 = 0x93;
    /// SERVICE ACTION IN(16) (READ CAPACITY(16) is service action 0x10).
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    /// REPORT LUNS.
    pub const REPORT_LUNS: u8 = 0xA0;
    /// READ(12).
    pub const READ_12: u8 = 0xA8;
    /// WRITE(12).
    pub const WRITE_12: u8 = 0xAA;
}

/// SERVICE ACTION IN(16) service action of READ CAPACITY(16).
pub const SAI_READ_CAPACITY_16: u8 = 0x10;

/// Vital product data page codes.
pub mod vpd {
    /// Supported VPD pages.
    pub const SUPPORTED_PAGES: u8 = 0x00;
    /// Unit serial number.
    pub const UNIT_SERIAL_NUMBER: u8 = 0x80;
    /// Device identification.
    pub const DEVICE_IDENTIFICATION: u8 = 0x83;
    /// Block limits.
    pub const BLOCK_LIMITS: u8 = 0xB0;
    /// Block device characteristics.
    pub const BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xB1;
    /// Logical block provisioning.
    pub const LOGICAL_BLOCK_PROVISIONING: u8 = 0xB2;
}

/// Mode page codes.
pub mod mode_page {
    /// Caching mode page.
    pub const CACHING: u8 = 0x08;
    /// Control mode page.
    pub const CONTROL: u8 = 0x0A;
    /// All pages.
    pub const ALL: u8 = 0x3F;
}

/// Size of fixed-format sense data with no additional bytes beyond the standard ten.
pub const FIXED_SENSE_LEN: usize = 18;
/// Response code of current fixed-format sense data.
pub const SENSE_RESPONSE_FIXED_CURRENT: u8 = 0x70;
/// Response code of current descriptor-format sense data.
pub const SENSE_RESPONSE_DESCRIPTOR_CURRENT: u8 = 0x72;

/// Fixed-format sense data: a sense key with its additional sense code, optionally an information
/// field (e.g. the first bad LBA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedSense {
    /// Sense key.
    pub key: SenseKey,
    /// ASC/ASCQ.
    pub additional: AdditionalSense,
    /// Information field (bytes 3..7), with the VALID bit set when present.
    pub information: Option<u32>,
}

impl FixedSense {
    /// Sense data with `key` and `additional`, no information field.
    pub const fn new(key: SenseKey, additional: AdditionalSense) -> Self {
        Self {
            key,
            additional,
            information: None,
        }
    }

    /// The 18 wire bytes (response code 0x70, additional sense length 10).
    pub fn to_bytes(&self) -> [u8; FIXED_SENSE_LEN] {
        let mut b = [0u8; FIXED_SENSE_LEN];
        b[0] = SENSE_RESPONSE_FIXED_CURRENT;
        if let Some(info) = self.information {
            b[0] |= 0x80;
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        b[2] = self.key.0 & 0x0F;
        b[7] = (FIXED_SENSE_LEN - 8) as u8;
        b[12] = self.additional.asc;
        b[13] = self.additional.ascq;
        b
    }

    /// Decodes fixed (0x70/0x71) or descriptor (0x72/0x73) sense data; `None` if too short or of
    /// another format.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let code = bytes.first()? & 0x7F;
        match code {
            0x70 | 0x71 if bytes.len() >= 14 => Some(Self {
                key: SenseKey(bytes[2] & 0x0F),
                additional: AdditionalSense::new(bytes[12], bytes[13]),
                information: (bytes[0] & 0x80 != 0)
                    .then(|| u32::from_be_bytes([bytes[3], bytes[4], bytes[5], bytes[6]])),
            }),
            0x72 | 0x73 if bytes.len() >= 4 => Some(Self {
                key: SenseKey(bytes[1] & 0x0F),
                additional: AdditionalSense::new(bytes[2], bytes[3]),
                information: None,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_sense_layout() {
        let s = FixedSense::new(SenseKey::ILLEGAL_REQUEST, AdditionalSense::LBA_OUT_OF_RANGE);
        let b = s.to_bytes();
        assert_eq!(b[0], 0x70);
        assert_eq!(b[2], 0x05);
        assert_eq!(b[7], 10);
        assert_eq!(b[12], 0x21);
        assert_eq!(b[13], 0x00);
        assert_eq!(FixedSense::parse(&b), Some(s));
        let with_info = FixedSense {
            information: Some(0x1234_5678),
            ..FixedSense::new(
                SenseKey::MEDIUM_ERROR,
                AdditionalSense::UNRECOVERED_READ_ERROR,
            )
        };
        let b = with_info.to_bytes();
        assert_eq!(b[0], 0xF0);
        assert_eq!(&b[3..7], &[0x12, 0x34, 0x56, 0x78]);
        assert_eq!(FixedSense::parse(&b), Some(with_info));
    }

    #[test]
    fn descriptor_sense_and_garbage() {
        let d = [0x72, 0x07, 0x27, 0x00, 0, 0, 0, 0];
        let s = FixedSense::parse(&d).unwrap();
        assert_eq!(s.key, SenseKey::DATA_PROTECT);
        assert_eq!(s.additional, AdditionalSense::WRITE_PROTECTED);
        assert_eq!(FixedSense::parse(&[]), None);
        assert_eq!(FixedSense::parse(&[0x70, 0, 5]), None);
        assert_eq!(FixedSense::parse(&[0x00; 18]), None);
    }

    #[test]
    fn codes_match_the_specs() {
        assert_eq!(ScsiStatus::CHECK_CONDITION.0, 2);
        assert_eq!(SenseKey::DATA_PROTECT.0, 7);
        assert_eq!(AdditionalSense::INVALID_COMMAND_OPERATION_CODE.asc, 0x20);
        assert_eq!(AdditionalSense::WRITE_PROTECTED.asc, 0x27);
        assert_eq!(opcode::READ_16, 0x88);
        assert_eq!(opcode::SYNCHRONIZE_CACHE_16, 0x91);
        assert_eq!(opcode::REPORT_LUNS, 0xA0);
    }
}
