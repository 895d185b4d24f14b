//! Completion semantics against Linux's storvsc: the SRB decides the outcome even under a failed
//! vstor status, sense only with CHECK CONDITION + AUTOSENSE_VALID, data overrun/underrun lengths,
//! INVALID_LUN, replies that are not COMPLETE_IO.
use super::tests::{completion, ready};
use super::*;
use storvsp_protocol::scsi::{AdditionalSense, FixedSense, ScsiStatus, SenseKey};
use storvsp_protocol::SrbStatus;

/// `STATUS_IO_DEVICE_ERROR`, what Hyper-V puts in `vstor_packet.status` for a failed SRB.
const STATUS_IO_DEVICE_ERROR: NtStatus = NtStatus(0xC000_0185);

/// How the host answers one SRB.
struct Answer {
    vstor: NtStatus,
    srb_status: u8,
    scsi_status: u8,
    transferred: u32,
    sense: Option<[u8; 18]>,
}

impl Answer {
    fn good(transferred: u32) -> Self {
        Self {
            vstor: NtStatus::SUCCESS,
            srb_status: SrbStatus::SUCCESS.0,
            scsi_status: ScsiStatus::GOOD.0,
            transferred,
            sense: None,
        }
    }

    /// The completion packet for `r`.
    fn to(&self, r: &Request) -> Vec<u8> {
        let mut p = r.packet;
        p.operation.set(Operation::COMPLETE_IO.0);
        p.set_status(self.vstor);
        let mut srb = p.srb();
        srb.srb_status = self.srb_status;
        srb.scsi_status = self.scsi_status;
        srb.data_transfer_length.set(self.transferred);
        srb.cdb_or_sense = [0; 20];
        srb.sense_info_length = 0;
        if let Some(sense) = self.sense {
            srb.cdb_or_sense[..18].copy_from_slice(&sense);
            srb.sense_info_length = 18;
        }
        p.set_srb(&srb);
        completion(r.trans_id, &p)
    }
}

fn medium_error() -> FixedSense {
    FixedSense {
        information: Some(0x1234),
        ..FixedSense::new(
            SenseKey::MEDIUM_ERROR,
            AdditionalSense::UNRECOVERED_READ_ERROR,
        )
    }
}

/// Hyper-V failing a read: vstor STATUS_IO_DEVICE_ERROR, SRB ERROR|AUTOSENSE_VALID, CHECK CONDITION,
/// MEDIUM ERROR sense. The old decode stopped at the vstor status and lost the sense.
#[test]
fn io_device_error_keeps_srb_status_and_sense() {
    let mut s = ready();
    let r = s.read_tagged(77, 2, 100, 8, &[1], 0).unwrap();
    let answer = Answer {
        vstor: STATUS_IO_DEVICE_ERROR,
        srb_status: 0x84,
        scsi_status: 2,
        transferred: 4096,
        sense: Some(medium_error().to_bytes()),
    };
    let c = s.complete(&answer.to(&r)).unwrap();
    assert_eq!(
        c.result,
        Err(IoError::Scsi {
            srb_status: SrbStatus(0x84),
            scsi_status: ScsiStatus::CHECK_CONDITION,
            sense: Some(medium_error()),
        })
    );
    assert_eq!(
        c.result.unwrap_err().sense().unwrap().key,
        SenseKey::MEDIUM_ERROR
    );
    assert!(!c.result.unwrap_err().is_invalid_lun());
    assert_eq!((c.tag, c.lun, c.opcode), (77, 2, opcode::READ_16));
    assert_eq!(c.vstor_status, STATUS_IO_DEVICE_ERROR);
    assert_eq!(c.srb_status, SrbStatus(0x84));
    assert_eq!(c.scsi_status, ScsiStatus::CHECK_CONDITION);
    assert_eq!(c.sense.as_bytes(), &medium_error().to_bytes()[..]);
    assert_eq!(c.sense.decode(), Some(medium_error()));
    // The host's length is shown, but an SRB error moves no data (Linux zeroes it).
    assert_eq!((c.data_transfer_length, c.transferred), (4096, 0));
    assert_eq!(s.outstanding(), 0);
}

#[test]
fn sense_needs_autosense_valid_and_check_condition() {
    let mut s = ready();
    // AUTOSENSE_VALID clear: the sense bytes in the SRB are not sense.
    let r = s.read(0, 100, 8, &[1], 0).unwrap();
    let answer = Answer {
        vstor: STATUS_IO_DEVICE_ERROR,
        srb_status: SrbStatus::ERROR.0,
        scsi_status: 2,
        transferred: 0,
        sense: Some(medium_error().to_bytes()),
    };
    let c = s.complete(&answer.to(&r)).unwrap();
    assert_eq!(
        c.result,
        Err(IoError::Scsi {
            srb_status: SrbStatus::ERROR,
            scsi_status: ScsiStatus::CHECK_CONDITION,
            sense: None,
        })
    );
    assert!(c.sense.is_empty());
    assert_eq!(c.sense.as_bytes(), &[] as &[u8]);
    // AUTOSENSE_VALID with a status other than CHECK CONDITION: Linux copies no sense either.
    let r = s.read(0, 100, 8, &[1], 0).unwrap();
    let answer = Answer {
        scsi_status: ScsiStatus::BUSY.0,
        srb_status: 0x84,
        ..answer
    };
    let c = s.complete(&answer.to(&r)).unwrap();
    assert!(c.sense.is_empty());
    assert_eq!(c.result.unwrap_err().sense(), None);
}

/// Linux ignores `vstor_packet.status` when the SRB says SUCCESS/GOOD; so do we, but show it.
#[test]
fn failed_vstor_status_under_a_good_srb_is_a_success() {
    let mut s = ready();
    let r = s.read(0, 0, 8, &[1], 0).unwrap();
    let answer = Answer {
        vstor: STATUS_IO_DEVICE_ERROR,
        ..Answer::good(4096)
    };
    let c = s.complete(&answer.to(&r)).unwrap();
    assert_eq!(c.result, Ok(4096));
    assert_eq!(c.vstor_status, STATUS_IO_DEVICE_ERROR);
    // A failed vstor status and an SRB with nothing to say (our host's answer to a malformed
    // request): the vstor status is the error.
    let r = s.read(0, 0, 8, &[1], 0).unwrap();
    let answer = Answer {
        vstor: NtStatus::INVALID_PARAMETER,
        srb_status: SrbStatus::INVALID_REQUEST.0,
        ..Answer::good(0)
    };
    let c = s.complete(&answer.to(&r)).unwrap();
    assert_eq!(c.result, Err(IoError::Status(NtStatus::INVALID_PARAMETER)));
    assert_eq!(c.srb_status, SrbStatus::INVALID_REQUEST);
    // The same SRB under a SUCCESS vstor status is an SRB error.
    let r = s.read(0, 0, 8, &[1], 0).unwrap();
    let answer = Answer {
        srb_status: SrbStatus::INVALID_REQUEST.0,
        ..Answer::good(0)
    };
    let c = s.complete(&answer.to(&r)).unwrap();
    assert!(matches!(
        c.result,
        Err(IoError::Scsi {
            srb_status: SrbStatus::INVALID_REQUEST,
            sense: None,
            ..
        })
    ));
}

#[test]
fn underrun_and_overrun_report_the_bytes_moved() {
    let mut s = ready();
    // SRB SUCCESS with fewer bytes: a success of that many (Linux leaves the residue to the caller).
    let r = s.read(0, 0, 8, &[1], 0).unwrap();
    let c = s.complete(&Answer::good(1024).to(&r)).unwrap();
    assert_eq!(
        (c.result, c.requested, c.transferred),
        (Ok(1024), 4096, 1024)
    );
    // SRB_STATUS_DATA_OVERRUN carrying an underrun.
    let r = s.read(0, 0, 8, &[1], 0).unwrap();
    let answer = Answer {
        srb_status: SrbStatus::DATA_OVERRUN.0,
        ..Answer::good(2048)
    };
    let c = s.complete(&answer.to(&r)).unwrap();
    assert_eq!(
        c.result,
        Err(IoError::DataOverrun {
            transferred: 2048,
            requested: 4096
        })
    );
    assert_eq!((c.data_transfer_length, c.transferred), (2048, 2048));
    // A host claiming more than asked is capped at the request.
    for srb_status in [SrbStatus::SUCCESS, SrbStatus::DATA_OVERRUN] {
        let r = s.read(0, 0, 8, &[1], 0).unwrap();
        let answer = Answer {
            srb_status: srb_status.0,
            ..Answer::good(1 << 20)
        };
        let c = s.complete(&answer.to(&r)).unwrap();
        assert_eq!((c.data_transfer_length, c.transferred), (1 << 20, 4096));
        assert!(matches!(
            c.result,
            Ok(4096)
                | Err(IoError::DataOverrun {
                    transferred: 4096,
                    ..
                })
        ));
    }
}

#[test]
fn invalid_lun_is_recognised() {
    let mut s = ready();
    let r = s.test_unit_ready(5).unwrap();
    let answer = Answer {
        srb_status: SrbStatus::INVALID_LUN.0,
        ..Answer::good(0)
    };
    let c = s.complete(&answer.to(&r)).unwrap();
    let e = c.result.unwrap_err();
    assert!(e.is_invalid_lun(), "{e:?}");
    assert!(matches!(e, IoError::Scsi { srb_status, .. } if srb_status.0 == 0x20));
    // Even when the vstor status failed too.
    let r = s.test_unit_ready(5).unwrap();
    let answer = Answer {
        vstor: STATUS_IO_DEVICE_ERROR,
        ..answer
    };
    assert!(s
        .complete(&answer.to(&r))
        .unwrap()
        .result
        .unwrap_err()
        .is_invalid_lun());
}

#[test]
fn a_reply_that_is_not_complete_io_fails_the_request() {
    let mut s = ready();
    let r = s.read(0, 0, 8, &[1], 0).unwrap();
    let mut p = r.packet;
    p.set_status(NtStatus::INVALID_DEVICE_REQUEST);
    // Still EXECUTE_SRB: an echo, no answer.
    let c = s.complete(&completion(r.trans_id, &p)).unwrap();
    assert_eq!(
        c.result,
        Err(IoError::UnexpectedReply {
            operation: Operation::EXECUTE_SRB,
            status: NtStatus::INVALID_DEVICE_REQUEST
        })
    );
    assert_eq!(s.outstanding(), 0);
}
