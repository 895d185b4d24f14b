//! Guest side of the Hyper-V integration components: the heartbeat and shutdown ICs here, the time
//! sync IC in [`timesync`], the key-value pair exchange in [`kvp`]. Each IC channel carries host
//! requests as in-band packets; the driver answers every request in place with the same transaction
//! id. These modules are the protocol logic only (request bytes in, reply bytes out); the VMBus
//! channel that carries it is the caller's.

pub mod kvp;
pub mod timesync;

use ic_protocol::negotiate::{self, Negotiated};
use ic_protocol::{
    parse, response_header, status, HeartbeatBody, IcError, IcMessageType, IcVersion, ShutdownBody,
    FRAMEWORK_VERSIONS, HEADER_SIZE, HEARTBEAT_VERSIONS, SHUTDOWN_VERSIONS,
};
use zerocopy::{FromBytes, IntoBytes};

/// Which integration component a driver serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcKind {
    Heartbeat,
    Shutdown,
}

impl IcKind {
    fn message_versions(self) -> &'static [IcVersion] {
        match self {
            IcKind::Heartbeat => HEARTBEAT_VERSIONS,
            IcKind::Shutdown => SHUTDOWN_VERSIONS,
        }
    }
}

/// What a handled request meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcEvent {
    /// Versions were negotiated (or `None`: no common version; the host was told so).
    Negotiated(Option<Negotiated>),
    /// A heartbeat with this sequence number was answered (with `seq + 1`).
    Heartbeat(u64),
    /// The host asks the guest to shut down (flags: bit 0 force, bit 1 reboot).
    Shutdown { flags: u32, reason: u32 },
}

/// One IC driver's state.
#[derive(Debug, Clone)]
pub struct IcDriver {
    kind: IcKind,
    negotiated: Option<Negotiated>,
    /// Requests answered.
    pub requests: u64,
}

impl IcDriver {
    /// A driver for `kind`, not yet negotiated.
    pub fn new(kind: IcKind) -> Self {
        Self {
            kind,
            negotiated: None,
            requests: 0,
        }
    }

    /// The versions agreed with the host, once negotiated.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// Answer one host request into `reply`; returns the reply length and what happened.
    /// A malformed request is an error and gets no reply (the host times it out).
    pub fn handle(
        &mut self,
        request: &[u8],
        reply: &mut [u8],
    ) -> Result<(usize, IcEvent), IcError> {
        let (header, body) = parse(request)?;
        let kind = IcMessageType(header.message_type.get());
        let result = match kind {
            IcMessageType::NEGOTIATE => {
                let (len, chosen) = negotiate::answer(
                    request,
                    FRAMEWORK_VERSIONS,
                    self.kind.message_versions(),
                    reply,
                )?;
                self.negotiated = chosen;
                Ok((len, IcEvent::Negotiated(chosen)))
            }
            IcMessageType::HEARTBEAT if self.kind == IcKind::Heartbeat => {
                let (mut hb, _) = HeartbeatBody::read_from_prefix(body)
                    .map_err(|_| IcError::TooShort(request.len()))?;
                let seq = hb.seq_num.get();
                hb.seq_num.set(seq.wrapping_add(1));
                let len = HEADER_SIZE + body.len();
                let out = reply.get_mut(..len).ok_or(IcError::BufferTooSmall)?;
                out[..HEADER_SIZE].copy_from_slice(response_header(&header, status::OK).as_bytes());
                out[HEADER_SIZE..].copy_from_slice(body);
                out[HEADER_SIZE..HEADER_SIZE + 40].copy_from_slice(hb.as_bytes());
                Ok((len, IcEvent::Heartbeat(seq)))
            }
            IcMessageType::SHUTDOWN if self.kind == IcKind::Shutdown => {
                let (sd, _) = ShutdownBody::read_from_prefix(body)
                    .map_err(|_| IcError::TooShort(request.len()))?;
                let len = HEADER_SIZE + body.len();
                let out = reply.get_mut(..len).ok_or(IcError::BufferTooSmall)?;
                out[..HEADER_SIZE].copy_from_slice(response_header(&header, status::OK).as_bytes());
                out[HEADER_SIZE..].copy_from_slice(body);
                Ok((
                    len,
                    IcEvent::Shutdown {
                        flags: sd.flags.get(),
                        reason: sd.reason_code.get(),
                    },
                ))
            }
            other => Err(IcError::UnexpectedType(other.0)),
        };
        if result.is_ok() {
            self.requests += 1;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_protocol::{request_header, IcHeader};
    use zerocopy::little_endian::{U32, U64};

    fn heartbeat(seq: u64) -> alloc::vec::Vec<u8> {
        let mut m = request_header(
            IcMessageType::HEARTBEAT,
            FRAMEWORK_VERSIONS[0],
            HEARTBEAT_VERSIONS[0],
            40,
            3,
        )
        .as_bytes()
        .to_vec();
        m.extend_from_slice(
            HeartbeatBody {
                seq_num: U64::new(seq),
                reserved: [U32::new(0); 8],
            }
            .as_bytes(),
        );
        m
    }

    #[test]
    fn negotiates_then_answers_heartbeats() {
        let mut drv = IcDriver::new(IcKind::Heartbeat);
        let mut req = [0u8; 128];
        let n = negotiate::request(FRAMEWORK_VERSIONS, HEARTBEAT_VERSIONS, &mut req).unwrap();
        let mut reply = [0u8; 256];
        let (len, ev) = drv.handle(&req[..n], &mut reply).unwrap();
        assert_eq!(
            ev,
            IcEvent::Negotiated(Some(Negotiated {
                framework: IcVersion::new(3, 0),
                message: IcVersion::new(3, 0)
            }))
        );
        assert!(negotiate::read_response(&reply[..len]).is_ok());
        let (len, ev) = drv.handle(&heartbeat(41), &mut reply).unwrap();
        assert_eq!(ev, IcEvent::Heartbeat(41));
        let (hdr, body) = parse(&reply[..len]).unwrap();
        assert_eq!(
            hdr.flags,
            ic_protocol::flags::TRANSACTION | ic_protocol::flags::RESPONSE
        );
        assert_eq!(
            HeartbeatBody::read_from_prefix(body)
                .unwrap()
                .0
                .seq_num
                .get(),
            42
        );
        assert_eq!(drv.requests, 2);
    }

    #[test]
    fn shutdown_request_is_reported_and_acknowledged() {
        let mut drv = IcDriver::new(IcKind::Shutdown);
        let mut m = request_header(
            IcMessageType::SHUTDOWN,
            FRAMEWORK_VERSIONS[0],
            SHUTDOWN_VERSIONS[0],
            12,
            1,
        )
        .as_bytes()
        .to_vec();
        m.extend_from_slice(
            ShutdownBody {
                reason_code: U32::new(5),
                timeout_seconds: U32::new(0),
                flags: U32::new(1),
            }
            .as_bytes(),
        );
        let mut reply = [0u8; 64];
        let (len, ev) = drv.handle(&m, &mut reply).unwrap();
        assert_eq!(
            ev,
            IcEvent::Shutdown {
                flags: 1,
                reason: 5
            }
        );
        let (hdr, _) = IcHeader::read_from_prefix(&reply[..len]).unwrap();
        assert_eq!(hdr.status.get(), status::OK);
    }

    #[test]
    fn wrong_or_truncated_requests_are_errors() {
        let mut drv = IcDriver::new(IcKind::Shutdown);
        let mut reply = [0u8; 256];
        assert_eq!(
            drv.handle(&heartbeat(1), &mut reply),
            Err(IcError::UnexpectedType(1))
        );
        let mut hb = IcDriver::new(IcKind::Heartbeat);
        let short = &heartbeat(1)[..40];
        assert!(hb.handle(short, &mut reply).is_err());
        assert_eq!(
            hb.handle(&heartbeat(1), &mut [0u8; 10]),
            Err(IcError::BufferTooSmall)
        );
        assert_eq!(hb.requests, 0);
    }
}
