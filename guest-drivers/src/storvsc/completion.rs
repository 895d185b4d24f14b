//! What a finished SRB says: [`Completion`] carries every field the host returned (vstor status, SRB
//! status, SCSI status, sense bytes, data length) and the typed outcome, decoded the way Linux's
//! storvsc does it (`storvsc_on_io_completion`, `storvsc_command_completion` and
//! `storvsc_handle_error` in `drivers/scsi/storvsc_drv.c`):
//!
//! - the outcome comes from the SRB; `vstor_packet.status` is only reported (Linux only logs it), so
//!   a failed vstor status with an SRB saying SUCCESS/GOOD is a success;
//! - sense bytes are kept only when the SCSI status is CHECK CONDITION and the SRB status has
//!   AUTOSENSE_VALID, at most the 20-byte sense buffer;
//! - the data length counts only on SUCCESS and DATA_OVERRUN (zero otherwise) and is capped at the
//!   bytes asked for.
//!
//! Where Linux has no answer we choose one and say so below.
#![forbid(unsafe_code)]

use storvsp_protocol::scsi::{FixedSense, ScsiStatus};
use storvsp_protocol::{NtStatus, Operation, SrbStatus, VstorPacket, SENSE_BUFFER_SIZE};

use super::slots::InFlight;

/// Why an SRB failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoError {
    /// The host failed the request (`vstor_packet.status`) and the SRB carries no SCSI result: no
    /// SCSI status, no sense, an SRB status that is neither SUCCESS nor one of the codes below.
    Status(NtStatus),
    /// The SRB completed with an error: [`SrbStatus::INVALID_LUN`] (see
    /// [`IoError::is_invalid_lun`]), a SCSI status other than GOOD, or another SRB error.
    Scsi {
        /// SRB status (with flags).
        srb_status: SrbStatus,
        /// SCSI status.
        scsi_status: ScsiStatus,
        /// Decoded sense data when the host returned it (CHECK CONDITION with AUTOSENSE_VALID).
        sense: Option<FixedSense>,
    },
    /// `SRB_STATUS_DATA_OVERRUN`: the host moved another amount than asked, usually fewer bytes
    /// (an underrun). Linux keeps the length on this status only.
    DataOverrun {
        /// Bytes moved (capped at `requested`).
        transferred: u32,
        /// Bytes asked for.
        requested: u32,
    },
    /// The SRB succeeded but moved fewer bytes than asked. [`super::Storvsc`] reports that as a
    /// success (as Linux does, leaving the residue to the caller); a block device that needs whole
    /// transfers (`StorvscDisk`) turns it into this error.
    Short {
        /// Bytes moved.
        transferred: u32,
        /// Bytes asked for.
        requested: u32,
    },
    /// The host answered the request with another operation than COMPLETE_IO, so no SRB. Linux
    /// ignores such a packet and lets the request time out; we have no timeouts, so we fail it.
    UnexpectedReply {
        /// The operation the host sent.
        operation: Operation,
        /// Its status.
        status: NtStatus,
    },
}

impl IoError {
    /// The LUN does not exist (`SRB_STATUS_INVALID_LUN`; Linux fails the command with
    /// DID_NO_CONNECT and removes the device).
    pub fn is_invalid_lun(&self) -> bool {
        matches!(self, Self::Scsi { srb_status, .. } if srb_status.code() == SrbStatus::INVALID_LUN)
    }

    /// The decoded sense data, if the error carries any.
    pub fn sense(&self) -> Option<FixedSense> {
        match self {
            Self::Scsi { sense, .. } => *sense,
            _ => None,
        }
    }
}

/// Sense bytes as the host returned them, in a fixed buffer (no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SenseData {
    bytes: [u8; SENSE_BUFFER_SIZE],
    len: u8,
}

impl SenseData {
    /// No sense data.
    pub const EMPTY: Self = Self {
        bytes: [0; SENSE_BUFFER_SIZE],
        len: 0,
    };

    /// The first [`SENSE_BUFFER_SIZE`] bytes of `bytes` at most.
    pub fn new(bytes: &[u8]) -> Self {
        let n = bytes.len().min(SENSE_BUFFER_SIZE);
        let mut s = Self::EMPTY;
        s.bytes[..n].copy_from_slice(&bytes[..n]);
        s.len = n as u8;
        s
    }

    /// The valid bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Number of valid bytes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fixed- or descriptor-format sense decoded, if the bytes are either.
    pub fn decode(&self) -> Option<FixedSense> {
        FixedSense::parse(self.as_bytes())
    }
}

impl core::fmt::Debug for SenseData {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SenseData({:02x?})", self.as_bytes())
    }
}

/// A finished SRB: what was asked, everything the host answered, and the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The request's transaction id.
    pub trans_id: u64,
    /// The caller's tag given when the request was built (0 if none).
    pub tag: u32,
    /// The LUN it addressed.
    pub lun: u8,
    /// Its CDB operation code.
    pub opcode: u8,
    /// Data bytes asked for.
    pub requested: u32,
    /// The host's `vstor_packet.status`.
    pub vstor_status: NtStatus,
    /// SRB status with its flag bits, as returned.
    pub srb_status: SrbStatus,
    /// SCSI status, as returned.
    pub scsi_status: ScsiStatus,
    /// `data_transfer_length` as returned (unchecked).
    pub data_transfer_length: u32,
    /// Bytes moved as Linux counts them: `data_transfer_length` on SUCCESS and DATA_OVERRUN, else 0,
    /// capped at `requested`.
    pub transferred: u32,
    /// Sense bytes, kept only for CHECK CONDITION with AUTOSENSE_VALID.
    pub sense: SenseData,
    /// Bytes transferred, or the error.
    pub result: Result<u32, IoError>,
}

/// The completion of the request `entry` from the host's answer `vstor`.
pub(super) fn decode(trans_id: u64, entry: InFlight, vstor: &VstorPacket) -> Completion {
    let vstor_status = vstor.status();
    let mut c = Completion {
        trans_id,
        tag: entry.tag,
        lun: entry.lun,
        opcode: entry.opcode,
        requested: entry.requested,
        vstor_status,
        srb_status: SrbStatus(0),
        scsi_status: ScsiStatus::GOOD,
        data_transfer_length: 0,
        transferred: 0,
        sense: SenseData::EMPTY,
        result: Err(IoError::UnexpectedReply {
            operation: vstor.operation(),
            status: vstor_status,
        }),
    };
    // Only COMPLETE_IO carries the SRB back.
    if vstor.operation() != Operation::COMPLETE_IO {
        return c;
    }
    let srb = vstor.srb();
    c.srb_status = srb.status();
    c.scsi_status = ScsiStatus(srb.scsi_status);
    c.data_transfer_length = srb.data_transfer_length.get();
    if c.scsi_status == ScsiStatus::CHECK_CONDITION && c.srb_status.autosense_valid() {
        // `VmscsiRequest::sense` caps `sense_info_length` at the 20-byte buffer, as Linux does.
        c.sense = SenseData::new(srb.sense());
    }
    // Linux compares the whole byte with SUCCESS/DATA_OVERRUN; we ignore the flag bits, so a
    // SUCCESS with a stray AUTOSENSE_VALID still counts its bytes.
    let code = c.srb_status.code();
    if code == SrbStatus::SUCCESS || code == SrbStatus::DATA_OVERRUN {
        c.transferred = c.data_transfer_length.min(entry.requested);
    }
    c.result = match code {
        // Linux (storvsc_command_completion) takes the result from the SRB alone, so a failed
        // vstor status under a SUCCESS/GOOD SRB is a success; `vstor_status` still shows it.
        SrbStatus::SUCCESS if c.scsi_status == ScsiStatus::GOOD => Ok(c.transferred),
        SrbStatus::DATA_OVERRUN => Err(IoError::DataOverrun {
            transferred: c.transferred,
            requested: entry.requested,
        }),
        // Linux's storvsc_handle_error sets no host byte for SRB codes outside its list (PENDING,
        // NO_DEVICE, ...), so with GOOD status such an SRB ends with result 0 and the whole length
        // as residue. We fail every SRB status but SUCCESS, and name the vstor status when that
        // failed and the SRB has nothing more to say (our host answers malformed requests so).
        code if c.scsi_status == ScsiStatus::GOOD
            && c.sense.is_empty()
            && code != SrbStatus::INVALID_LUN
            && vstor_status != NtStatus::SUCCESS =>
        {
            Err(IoError::Status(vstor_status))
        }
        _ => Err(IoError::Scsi {
            srb_status: c.srb_status,
            scsi_status: c.scsi_status,
            sense: c.sense.decode(),
        }),
    };
    c
}
