//! IC version negotiation (`ICMSGTYPE_NEGOTIATE`): the host lists the framework and message versions it
//! offers; the guest answers with exactly one of each — the newest both sides know — or with a failure
//! status (counts 0) when there is none.

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::{
    parse, response_header, status, IcError, IcHeader, IcMessageType, IcVersion, HEADER_SIZE,
};

/// The negotiate body's fixed part; `framework_count + message_count` versions follow.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct NegotiateBody {
    pub framework_count: U16,
    pub message_count: U16,
    pub reserved: U32,
}

/// Most versions one negotiate message may list (keeps the message within one small ring packet).
pub const MAX_VERSIONS: usize = 32;

/// Outcome of a negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub framework: IcVersion,
    pub message: IcVersion,
}

/// Build the host's negotiate request offering `framework` and `message` versions.
/// Returns the number of bytes written to `out`.
pub fn request(
    framework: &[IcVersion],
    message: &[IcVersion],
    out: &mut [u8],
) -> Result<usize, IcError> {
    let count = framework.len() + message.len();
    if count > MAX_VERSIONS {
        return Err(IcError::BadVersionCounts {
            framework: framework.len(),
            message: message.len(),
        });
    }
    let body_len = 8 + 4 * count;
    let total = HEADER_SIZE + body_len;
    let out = out.get_mut(..total).ok_or(IcError::BufferTooSmall)?;
    let header = crate::request_header(
        IcMessageType::NEGOTIATE,
        framework.first().copied().unwrap_or(IcVersion::new(1, 0)),
        message.first().copied().unwrap_or(IcVersion::new(1, 0)),
        body_len as u16,
        0,
    );
    out[..HEADER_SIZE].copy_from_slice(header.as_bytes());
    let body = NegotiateBody {
        framework_count: U16::new(framework.len() as u16),
        message_count: U16::new(message.len() as u16),
        reserved: U32::new(0),
    };
    out[HEADER_SIZE..HEADER_SIZE + 8].copy_from_slice(body.as_bytes());
    for (i, v) in framework.iter().chain(message).enumerate() {
        let at = HEADER_SIZE + 8 + 4 * i;
        out[at..at + 4].copy_from_slice(v.as_bytes());
    }
    Ok(total)
}

/// Read the versions listed in a negotiate body.
fn offered(body: &[u8]) -> Result<(&[IcVersion], &[IcVersion]), IcError> {
    let (fixed, rest) =
        NegotiateBody::read_from_prefix(body).map_err(|_| IcError::TooShort(body.len()))?;
    let framework = usize::from(fixed.framework_count.get());
    let message = usize::from(fixed.message_count.get());
    let versions = <[IcVersion]>::ref_from_prefix_with_elems(rest, framework + message)
        .map_err(|_| IcError::BadVersionCounts { framework, message })?
        .0;
    Ok(versions.split_at(framework))
}

/// Newest version present in both lists.
fn best(offered: &[IcVersion], ours: &[IcVersion]) -> Option<IcVersion> {
    offered.iter().filter(|v| ours.contains(v)).max().copied()
}

/// Guest side: answer the host's negotiate `request` in `out` with the newest common versions.
/// Returns the reply length and the outcome (`None` when there is no common version; the reply then
/// carries a failure status and zero counts, as Hyper-V expects).
pub fn answer(
    request: &[u8],
    our_framework: &[IcVersion],
    our_message: &[IcVersion],
    out: &mut [u8],
) -> Result<(usize, Option<Negotiated>), IcError> {
    let (header, body) = parse(request)?;
    if header.message_type.get() != IcMessageType::NEGOTIATE.0 {
        return Err(IcError::UnexpectedType(header.message_type.get()));
    }
    let (framework, message) = offered(body)?;
    let chosen = best(framework, our_framework)
        .zip(best(message, our_message))
        .map(|(framework, message)| Negotiated { framework, message });
    let body_len = if chosen.is_some() { 16 } else { 8 };
    let total = HEADER_SIZE + body_len;
    let out = out.get_mut(..total).ok_or(IcError::BufferTooSmall)?;
    let mut reply: IcHeader = response_header(
        &header,
        if chosen.is_some() {
            status::OK
        } else {
            status::FAIL
        },
    );
    reply.message_size = U16::new(body_len as u16);
    reply.pipe_msgsize = U32::new(body_len as u32 + 20);
    if let Some(n) = chosen {
        reply.framework_version = n.framework;
        reply.message_version = n.message;
    }
    out[..HEADER_SIZE].copy_from_slice(reply.as_bytes());
    let count = u16::from(chosen.is_some());
    let fixed = NegotiateBody {
        framework_count: U16::new(count),
        message_count: U16::new(count),
        reserved: U32::new(0),
    };
    out[HEADER_SIZE..HEADER_SIZE + 8].copy_from_slice(fixed.as_bytes());
    if let Some(n) = chosen {
        out[HEADER_SIZE + 8..HEADER_SIZE + 12].copy_from_slice(n.framework.as_bytes());
        out[HEADER_SIZE + 12..HEADER_SIZE + 16].copy_from_slice(n.message.as_bytes());
    }
    Ok((total, chosen))
}

/// Host side: read the guest's negotiate response.
pub fn read_response(response: &[u8]) -> Result<Negotiated, IcError> {
    let (header, body) = parse(response)?;
    if header.message_type.get() != IcMessageType::NEGOTIATE.0 {
        return Err(IcError::UnexpectedType(header.message_type.get()));
    }
    if header.status.get() != status::OK {
        return Err(IcError::NoCommonVersion);
    }
    let (framework, message) = offered(body)?;
    match (framework, message) {
        ([f], [m]) => Ok(Negotiated {
            framework: *f,
            message: *m,
        }),
        _ => Err(IcError::BadVersionCounts {
            framework: framework.len(),
            message: message.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FRAMEWORK_VERSIONS, HEARTBEAT_VERSIONS, SHUTDOWN_VERSIONS};

    #[test]
    fn picks_newest_common_versions() {
        let mut req = [0u8; 128];
        let n = request(FRAMEWORK_VERSIONS, SHUTDOWN_VERSIONS, &mut req).unwrap();
        let mut reply = [0u8; 128];
        let (len, chosen) = answer(
            &req[..n],
            &[IcVersion::new(3, 0)],
            &[IcVersion::new(3, 1), IcVersion::new(1, 0)],
            &mut reply,
        )
        .unwrap();
        let chosen = chosen.unwrap();
        assert_eq!(
            chosen,
            Negotiated {
                framework: IcVersion::new(3, 0),
                message: IcVersion::new(3, 1)
            }
        );
        assert_eq!(read_response(&reply[..len]).unwrap(), chosen);
    }

    #[test]
    fn no_common_version_fails_cleanly() {
        let mut req = [0u8; 128];
        let n = request(FRAMEWORK_VERSIONS, HEARTBEAT_VERSIONS, &mut req).unwrap();
        let mut reply = [0u8; 128];
        let (len, chosen) = answer(
            &req[..n],
            FRAMEWORK_VERSIONS,
            &[IcVersion::new(9, 9)],
            &mut reply,
        )
        .unwrap();
        assert_eq!(chosen, None);
        assert_eq!(read_response(&reply[..len]), Err(IcError::NoCommonVersion));
    }

    #[test]
    fn hostile_counts_are_rejected() {
        let mut req = [0u8; 128];
        let n = request(FRAMEWORK_VERSIONS, HEARTBEAT_VERSIONS, &mut req).unwrap();
        // Claim 200 framework versions in a message that carries 4.
        req[HEADER_SIZE] = 200;
        let mut reply = [0u8; 128];
        assert!(matches!(
            answer(
                &req[..n],
                FRAMEWORK_VERSIONS,
                HEARTBEAT_VERSIONS,
                &mut reply
            ),
            Err(IcError::BadVersionCounts { .. })
        ));
        assert_eq!(
            answer(
                &req[..n],
                FRAMEWORK_VERSIONS,
                HEARTBEAT_VERSIONS,
                &mut [0u8; 4]
            )
            .err(),
            Some(IcError::BadVersionCounts {
                framework: 200,
                message: 2
            })
        );
    }
}
