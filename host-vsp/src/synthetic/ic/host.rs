//! Host side of the heartbeat and shutdown integration components: builds the requests the host sends
//! and checks every response the (untrusted) guest returns. Protocol logic only; the channel that carries
//! the bytes is the caller's.

use std::collections::VecDeque;

use ic_protocol::negotiate::{self, Negotiated};
use ic_protocol::{
    flags, parse, request_header, status, HeartbeatBody, IcError, IcMessageType, IcVersion,
    ShutdownBody, FRAMEWORK_VERSIONS, HEADER_SIZE, HEARTBEAT_VERSIONS, SHUTDOWN_MESSAGE_LEN,
    SHUTDOWN_VERSIONS,
};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

/// Largest request this module builds (a shutdown request with its display message).
pub const MAX_REQUEST: usize = HEADER_SIZE + 12 + SHUTDOWN_MESSAGE_LEN;

/// Most heartbeats that may be outstanding at once (bounds host memory whatever the guest does).
pub const MAX_OUTSTANDING: usize = 4096;

/// A response the guest got wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IcHostError {
    #[error("malformed IC response: {0}")]
    Malformed(IcError),
    #[error("IC response is not flagged as a response (flags {0:#x})")]
    NotAResponse(u8),
    #[error("guest answered with failure status {0:#x}")]
    GuestFailed(u32),
    #[error("response of type {0} while {1} was expected")]
    UnexpectedType(u16, &'static str),
    #[error("heartbeat answer {got} does not follow any outstanding sequence number (expected {expected:?})")]
    WrongSequence { got: u64, expected: Option<u64> },
    #[error("request refused: {0}")]
    NotReady(&'static str),
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<IcError> for IcHostError {
    fn from(e: IcError) -> Self {
        Self::Malformed(e)
    }
}

/// Which IC this host endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcService {
    Heartbeat,
    Shutdown,
}

/// The host end of one IC channel.
#[derive(Debug)]
pub struct IcHost {
    service: IcService,
    negotiated: Option<Negotiated>,
    negotiating: bool,
    outstanding: VecDeque<u64>,
    next_seq: u64,
    shutdown_pending: bool,
    /// Heartbeats the guest answered correctly.
    pub heartbeats_answered: u64,
    /// Shutdown requests the guest acknowledged.
    pub shutdowns_acknowledged: u64,
}

/// What a response meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcHostEvent {
    Negotiated(Negotiated),
    HeartbeatAnswered(u64),
    ShutdownAcknowledged,
}

impl IcHost {
    /// A new endpoint for `service`.
    pub fn new(service: IcService) -> Self {
        Self {
            service,
            negotiated: None,
            negotiating: false,
            outstanding: VecDeque::new(),
            next_seq: 0,
            shutdown_pending: false,
            heartbeats_answered: 0,
            shutdowns_acknowledged: 0,
        }
    }

    fn message_versions(&self) -> &'static [IcVersion] {
        match self.service {
            IcService::Heartbeat => HEARTBEAT_VERSIONS,
            IcService::Shutdown => SHUTDOWN_VERSIONS,
        }
    }

    /// Versions agreed with the guest.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// Heartbeats sent and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// The negotiate request, the first message on the channel.
    pub fn negotiate_request(&mut self, out: &mut [u8]) -> Result<usize, IcHostError> {
        self.negotiating = true;
        Ok(negotiate::request(
            FRAMEWORK_VERSIONS,
            self.message_versions(),
            out,
        )?)
    }

    fn versions(&self) -> Result<Negotiated, IcHostError> {
        self.negotiated
            .ok_or(IcHostError::NotReady("versions not negotiated"))
    }

    /// The next heartbeat request; returns its length and sequence number.
    pub fn heartbeat_request(&mut self, out: &mut [u8]) -> Result<(usize, u64), IcHostError> {
        if self.service != IcService::Heartbeat {
            return Err(IcHostError::NotReady("not a heartbeat channel"));
        }
        if self.outstanding.len() >= MAX_OUTSTANDING {
            return Err(IcHostError::NotReady("too many heartbeats outstanding"));
        }
        let v = self.versions()?;
        let len = HEADER_SIZE + 40;
        let out = out.get_mut(..len).ok_or(IcError::BufferTooSmall)?;
        let seq = self.next_seq;
        let header = request_header(IcMessageType::HEARTBEAT, v.framework, v.message, 40, 0);
        out[..HEADER_SIZE].copy_from_slice(header.as_bytes());
        let body = HeartbeatBody {
            seq_num: U64::new(seq),
            reserved: [U32::new(0); 8],
        };
        out[HEADER_SIZE..].copy_from_slice(body.as_bytes());
        self.next_seq = self.next_seq.wrapping_add(2);
        self.outstanding.push_back(seq);
        Ok((len, seq))
    }

    /// A shutdown request (`force`: do not wait for applications; `reboot`: restart instead).
    pub fn shutdown_request(
        &mut self,
        force: bool,
        reboot: bool,
        out: &mut [u8],
    ) -> Result<usize, IcHostError> {
        if self.service != IcService::Shutdown {
            return Err(IcHostError::NotReady("not a shutdown channel"));
        }
        let v = self.versions()?;
        let body_len = 12 + SHUTDOWN_MESSAGE_LEN;
        let len = HEADER_SIZE + body_len;
        let out = out.get_mut(..len).ok_or(IcError::BufferTooSmall)?;
        out.fill(0);
        let header = request_header(
            IcMessageType::SHUTDOWN,
            v.framework,
            v.message,
            body_len as u16,
            0,
        );
        out[..HEADER_SIZE].copy_from_slice(header.as_bytes());
        let flags = u32::from(force) * ic_protocol::SHUTDOWN_FLAG_FORCE
            + u32::from(reboot) * ic_protocol::SHUTDOWN_FLAG_REBOOT;
        let body = ShutdownBody {
            reason_code: U32::new(0),
            timeout_seconds: U32::new(0),
            flags: U32::new(flags),
        };
        out[HEADER_SIZE..HEADER_SIZE + 12].copy_from_slice(body.as_bytes());
        let text = b"viridian host requested shutdown";
        out[HEADER_SIZE + 12..HEADER_SIZE + 12 + text.len()].copy_from_slice(text);
        self.shutdown_pending = true;
        Ok(len)
    }

    /// Check one response from the guest.
    pub fn handle_response(&mut self, response: &[u8]) -> Result<IcHostEvent, IcHostError> {
        let (header, body) = parse(response)?;
        if header.flags & flags::RESPONSE == 0 {
            return Err(IcHostError::NotAResponse(header.flags));
        }
        match IcMessageType(header.message_type.get()) {
            IcMessageType::NEGOTIATE if self.negotiating => {
                let n = negotiate::read_response(response)?;
                if !FRAMEWORK_VERSIONS.contains(&n.framework)
                    || !self.message_versions().contains(&n.message)
                {
                    return Err(IcError::NoCommonVersion.into());
                }
                self.negotiating = false;
                self.negotiated = Some(n);
                Ok(IcHostEvent::Negotiated(n))
            }
            IcMessageType::HEARTBEAT if self.service == IcService::Heartbeat => {
                if header.status.get() != status::OK {
                    return Err(IcHostError::GuestFailed(header.status.get()));
                }
                let (hb, _) = HeartbeatBody::read_from_prefix(body)
                    .map_err(|_| IcError::TooShort(response.len()))?;
                let got = hb.seq_num.get();
                let expected = self.outstanding.front().map(|s| s.wrapping_add(1));
                if expected != Some(got) {
                    return Err(IcHostError::WrongSequence { got, expected });
                }
                self.outstanding.pop_front();
                self.heartbeats_answered += 1;
                Ok(IcHostEvent::HeartbeatAnswered(got))
            }
            IcMessageType::SHUTDOWN if self.shutdown_pending => {
                if header.status.get() != status::OK {
                    return Err(IcHostError::GuestFailed(header.status.get()));
                }
                self.shutdown_pending = false;
                self.shutdowns_acknowledged += 1;
                Ok(IcHostEvent::ShutdownAcknowledged)
            }
            other => Err(IcHostError::UnexpectedType(
                other.0,
                if self.negotiating {
                    "negotiate"
                } else {
                    "a response to an outstanding request"
                },
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A correct guest: answers negotiate with the newest common versions and heartbeats with seq + 1.
    fn guest_answer(request: &[u8], service: IcService) -> Vec<u8> {
        let (header, body) = parse(request).unwrap();
        let mut out = vec![0u8; MAX_REQUEST];
        if header.message_type.get() == IcMessageType::NEGOTIATE.0 {
            let versions = if service == IcService::Heartbeat {
                HEARTBEAT_VERSIONS
            } else {
                SHUTDOWN_VERSIONS
            };
            let (n, _) =
                negotiate::answer(request, FRAMEWORK_VERSIONS, versions, &mut out).unwrap();
            out.truncate(n);
            return out;
        }
        let mut reply = request.to_vec();
        reply[25] = flags::TRANSACTION | flags::RESPONSE;
        if header.message_type.get() == IcMessageType::HEARTBEAT.0 {
            let seq = u64::from_le_bytes(body[..8].try_into().unwrap()) + 1;
            reply[HEADER_SIZE..HEADER_SIZE + 8].copy_from_slice(&seq.to_le_bytes());
        }
        reply
    }

    #[test]
    fn heartbeat_round_trips_in_order() {
        let mut host = IcHost::new(IcService::Heartbeat);
        let mut buf = vec![0u8; MAX_REQUEST];
        assert!(
            host.heartbeat_request(&mut buf).is_err(),
            "no heartbeat before negotiation"
        );
        let n = host.negotiate_request(&mut buf).unwrap();
        let ev = host
            .handle_response(&guest_answer(&buf[..n], IcService::Heartbeat))
            .unwrap();
        assert!(matches!(ev, IcHostEvent::Negotiated(_)));
        let mut sent = Vec::new();
        for _ in 0..5 {
            let (n, _) = host.heartbeat_request(&mut buf).unwrap();
            sent.push(buf[..n].to_vec());
        }
        for req in &sent {
            host.handle_response(&guest_answer(req, IcService::Heartbeat))
                .unwrap();
        }
        assert_eq!(host.heartbeats_answered, 5);
        assert_eq!(host.outstanding(), 0);
    }

    #[test]
    fn wrong_sequence_and_unsolicited_responses_are_rejected() {
        let mut host = IcHost::new(IcService::Heartbeat);
        let mut buf = vec![0u8; MAX_REQUEST];
        let n = host.negotiate_request(&mut buf).unwrap();
        host.handle_response(&guest_answer(&buf[..n], IcService::Heartbeat))
            .unwrap();
        let (n, seq) = host.heartbeat_request(&mut buf).unwrap();
        let mut bad = guest_answer(&buf[..n], IcService::Heartbeat);
        bad[HEADER_SIZE..HEADER_SIZE + 8].copy_from_slice(&(seq + 7).to_le_bytes());
        assert_eq!(
            host.handle_response(&bad),
            Err(IcHostError::WrongSequence {
                got: seq + 7,
                expected: Some(seq + 1)
            })
        );
        let request_not_response = buf[..n].to_vec();
        assert!(matches!(
            host.handle_response(&request_not_response),
            Err(IcHostError::NotAResponse(_))
        ));
        let mut shut = IcHost::new(IcService::Shutdown);
        assert!(matches!(
            shut.handle_response(&guest_answer(&buf[..n], IcService::Heartbeat)),
            Err(IcHostError::UnexpectedType(1, _))
        ));
    }

    #[test]
    fn shutdown_is_acknowledged_once() {
        let mut host = IcHost::new(IcService::Shutdown);
        let mut buf = vec![0u8; MAX_REQUEST];
        let n = host.negotiate_request(&mut buf).unwrap();
        let ev = host
            .handle_response(&guest_answer(&buf[..n], IcService::Shutdown))
            .unwrap();
        assert_eq!(
            ev,
            IcHostEvent::Negotiated(Negotiated {
                framework: IcVersion::new(3, 0),
                message: IcVersion::new(3, 2)
            })
        );
        let n = host.shutdown_request(true, false, &mut buf).unwrap();
        let ack = guest_answer(&buf[..n], IcService::Shutdown);
        assert_eq!(
            host.handle_response(&ack),
            Ok(IcHostEvent::ShutdownAcknowledged)
        );
        assert!(
            host.handle_response(&ack).is_err(),
            "a second ack answers nothing"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_responses_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut host = IcHost::new(IcService::Heartbeat);
            let mut buf = vec![0u8; MAX_REQUEST];
            host.negotiate_request(&mut buf).unwrap();
            let _ = host.handle_response(&bytes);
        }
    }
}
