//! The host's side of the KVP exchange IC, sans-I/O: [`KvpHost`] negotiates, builds one request at a
//! time ([`KvpRequest`]: enumerate an index of a pool, get, set or delete a key) and checks the
//! untrusted guest's answer to it — its length, that it answers the operation and pool asked, the
//! status, and every size inside the key and value it returns.

use ic_protocol::kvp::{
    self, KvpDelete, KvpEnumerate, KvpHeader, KvpOperation, KvpPool, KvpValue, KVP_HEADER_SIZE,
    KVP_VERSIONS,
};
use ic_protocol::negotiate::{self, Negotiated};
use ic_protocol::{
    flags, parse, request_header, status, IcError, IcMessageType, FRAMEWORK_VERSIONS, HEADER_SIZE,
};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::synthetic::ic::host::IcHostError;

/// Largest request this module builds (an ENUMERATE).
pub const MAX_REQUEST: usize = HEADER_SIZE + KVP_HEADER_SIZE + 2576;

/// One KVP transaction the host can start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvpRequest {
    /// The `index`-th value of `pool`.
    Enumerate { pool: KvpPool, index: u32 },
    /// The value of `key` in `pool`.
    Get { pool: KvpPool, key: String },
    /// Set `key` = `value` (REG_SZ) in `pool`.
    Set {
        pool: KvpPool,
        key: String,
        value: String,
    },
    /// Remove `key` from `pool`.
    Delete { pool: KvpPool, key: String },
}

impl KvpRequest {
    fn operation(&self) -> KvpOperation {
        match self {
            Self::Enumerate { .. } => KvpOperation::ENUMERATE,
            Self::Get { .. } => KvpOperation::GET,
            Self::Set { .. } => KvpOperation::SET,
            Self::Delete { .. } => KvpOperation::DELETE,
        }
    }

    fn pool(&self) -> KvpPool {
        match self {
            Self::Enumerate { pool, .. }
            | Self::Get { pool, .. }
            | Self::Set { pool, .. }
            | Self::Delete { pool, .. } => *pool,
        }
    }
}

/// What the guest answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvpEvent {
    Negotiated(Negotiated),
    /// ENUMERATE: the key and value at the index, or `None` past the last (a non-zero status).
    Enumerated(Option<(String, String)>),
    /// GET: the value, or `None` if the guest has no such key.
    Value(Option<String>),
    /// SET or DELETE: whether the guest did it (DELETE of a missing key: false).
    Done(bool),
}

/// The host end of one KVP channel.
#[derive(Debug, Default)]
pub struct KvpHost {
    negotiated: Option<Negotiated>,
    negotiating: bool,
    pending: Option<KvpRequest>,
}

impl KvpHost {
    /// A new endpoint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Versions agreed with the guest.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// The transaction waiting for its answer.
    pub fn pending(&self) -> Option<&KvpRequest> {
        self.pending.as_ref()
    }

    /// Give up the pending transaction (the guest did not answer in time); a late answer is then
    /// an error.
    pub fn abandon(&mut self) -> Option<KvpRequest> {
        self.pending.take()
    }

    /// The negotiate request, the first message on the channel.
    pub fn negotiate_request(&mut self, out: &mut [u8]) -> Result<usize, IcHostError> {
        self.negotiating = true;
        Ok(negotiate::request(FRAMEWORK_VERSIONS, KVP_VERSIONS, out)?)
    }

    /// Build `request` into `out`; refused while another is pending (one transaction at a time).
    pub fn request(&mut self, request: KvpRequest, out: &mut [u8]) -> Result<usize, IcHostError> {
        let v = self
            .negotiated
            .ok_or(IcHostError::NotReady("versions not negotiated"))?;
        if self.pending.is_some() {
            return Err(IcHostError::NotReady("a KVP transaction is pending"));
        }
        let operation = request.operation();
        let body_len = kvp::body_len(operation).ok_or(IcHostError::NotReady("no such request"))?;
        let len = HEADER_SIZE + body_len;
        let out = out.get_mut(..len).ok_or(IcError::BufferTooSmall)?;
        out.fill(0);
        let header = request_header(
            IcMessageType::KVP_EXCHANGE,
            v.framework,
            v.message,
            body_len as u16,
            0,
        );
        out[..HEADER_SIZE].copy_from_slice(header.as_bytes());
        let kvp_header = KvpHeader {
            operation: operation.0,
            pool: request.pool().0,
            pad: U16::new(0),
        };
        out[HEADER_SIZE..HEADER_SIZE + KVP_HEADER_SIZE].copy_from_slice(kvp_header.as_bytes());
        let payload = &mut out[HEADER_SIZE + KVP_HEADER_SIZE..];
        let bad = |e: kvp::KvpError| IcHostError::NotReady(kvp_error_text(e));
        match &request {
            KvpRequest::Enumerate { index, .. } => {
                let mut e = KvpEnumerate::new_zeroed();
                e.index = U32::new(*index);
                payload.copy_from_slice(e.as_bytes());
            }
            KvpRequest::Get { key, .. } => {
                let mut value = KvpValue::empty();
                value.set_key(key).map_err(bad)?;
                payload.copy_from_slice(value.as_bytes());
            }
            KvpRequest::Set { key, value, .. } => {
                payload.copy_from_slice(KvpValue::string(key, value).map_err(bad)?.as_bytes());
            }
            KvpRequest::Delete { key, .. } => {
                let mut d = KvpDelete::new_zeroed();
                d.key_size = U32::new(kvp::encode_utf16("key", key, &mut d.key).map_err(bad)?);
                payload.copy_from_slice(d.as_bytes());
            }
        }
        self.pending = Some(request);
        Ok(len)
    }

    /// Check one answer from the guest.
    pub fn handle_response(&mut self, response: &[u8]) -> Result<KvpEvent, IcHostError> {
        let (header, body) = parse(response)?;
        if header.flags & flags::RESPONSE == 0 {
            return Err(IcHostError::NotAResponse(header.flags));
        }
        match IcMessageType(header.message_type.get()) {
            IcMessageType::NEGOTIATE if self.negotiating => {
                let n = negotiate::read_response(response)?;
                if !FRAMEWORK_VERSIONS.contains(&n.framework) || !KVP_VERSIONS.contains(&n.message)
                {
                    return Err(IcError::NoCommonVersion.into());
                }
                self.negotiating = false;
                self.negotiated = Some(n);
                Ok(KvpEvent::Negotiated(n))
            }
            IcMessageType::KVP_EXCHANGE if self.pending.is_some() => {
                let request = self.pending.take().expect("checked above");
                answer(&request, header.status.get(), body)
            }
            other => Err(IcHostError::UnexpectedType(
                other.0,
                if self.negotiating {
                    "negotiate"
                } else {
                    "the answer to a pending KVP request"
                },
            )),
        }
    }
}

fn kvp_error_text(e: kvp::KvpError) -> &'static str {
    match e {
        kvp::KvpError::TooLong { .. } => "KVP key or value too long",
        kvp::KvpError::OddSize { .. } => "KVP size odd",
        kvp::KvpError::BadUtf16(_) => "KVP text is not UTF-16",
        kvp::KvpError::BadValue { .. } => "KVP value is not a string or number",
        kvp::KvpError::Output => "KVP text could not be written",
    }
}

/// Read the guest's answer `body` (status `status_code`) to `request`.
fn answer(request: &KvpRequest, status_code: u32, body: &[u8]) -> Result<KvpEvent, IcHostError> {
    let operation = request.operation();
    let need = kvp::body_len(operation).unwrap_or(usize::MAX);
    if body.len() < need {
        return Err(IcError::BodyTruncated {
            declared: need,
            available: body.len(),
        }
        .into());
    }
    let (kvp_header, payload) =
        KvpHeader::read_from_prefix(body).map_err(|_| IcError::TooShort(body.len()))?;
    if kvp_header.operation != operation.0 || kvp_header.pool != request.pool().0 {
        return Err(IcHostError::UnexpectedType(
            u16::from(kvp_header.operation),
            "the operation and pool of the pending KVP request",
        ));
    }
    let ok = status_code == status::OK;
    if !ok && status_code != status::CONT {
        // Any other failure still ends an enumeration (the host enumerates until a non-zero status).
        if operation == KvpOperation::ENUMERATE {
            return Ok(KvpEvent::Enumerated(None));
        }
        return Err(IcHostError::GuestFailed(status_code));
    }
    let malformed = |e: kvp::KvpError| IcHostError::NotReady(kvp_error_text(e));
    let text = |v: &KvpValue| -> Result<(String, String), IcHostError> {
        let (mut key, mut value) = (String::new(), String::new());
        v.write_key(&mut key).map_err(malformed)?;
        v.write_value(&mut value).map_err(malformed)?;
        Ok((key, value))
    };
    match operation {
        KvpOperation::ENUMERATE => {
            if !ok {
                return Ok(KvpEvent::Enumerated(None));
            }
            let (e, _) = KvpEnumerate::read_from_prefix(payload)
                .map_err(|_| IcError::TooShort(body.len()))?;
            Ok(KvpEvent::Enumerated(Some(text(&e.data)?)))
        }
        KvpOperation::GET => {
            if !ok {
                return Ok(KvpEvent::Value(None));
            }
            let (v, _) =
                KvpValue::read_from_prefix(payload).map_err(|_| IcError::TooShort(body.len()))?;
            Ok(KvpEvent::Value(Some(text(&v)?.1)))
        }
        _ => Ok(KvpEvent::Done(ok)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest with one value per pool entry: answers like hv_kvp with its daemon.
    fn guest_answer(request: &[u8], store: &mut Vec<(u8, String, String)>) -> Vec<u8> {
        let (header, body) = parse(request).unwrap();
        if header.message_type.get() == IcMessageType::NEGOTIATE.0 {
            let mut out = vec![0u8; 256];
            let (n, _) =
                negotiate::answer(request, FRAMEWORK_VERSIONS, KVP_VERSIONS, &mut out).unwrap();
            out.truncate(n);
            return out;
        }
        let mut reply = request.to_vec();
        reply[25] = flags::TRANSACTION | flags::RESPONSE;
        let (h, payload) = KvpHeader::read_from_prefix(body).unwrap();
        let at = HEADER_SIZE + KVP_HEADER_SIZE;
        let mut status_code = status::OK;
        match KvpOperation(h.operation) {
            KvpOperation::ENUMERATE => {
                let (e, _) = KvpEnumerate::read_from_prefix(payload).unwrap();
                let found: Vec<_> = store.iter().filter(|s| s.0 == h.pool).collect();
                match found.get(e.index.get() as usize) {
                    Some((_, k, v)) => {
                        let value = KvpValue::string(k, v).unwrap();
                        reply[at + 4..at + 4 + 2572].copy_from_slice(value.as_bytes());
                    }
                    None => status_code = status::CONT,
                }
            }
            KvpOperation::SET => {
                let (v, _) = KvpValue::read_from_prefix(payload).unwrap();
                let (mut k, mut val) = (String::new(), String::new());
                v.write_key(&mut k).unwrap();
                v.write_value(&mut val).unwrap();
                store.push((h.pool, k, val));
            }
            KvpOperation::GET => {
                let (v, _) = KvpValue::read_from_prefix(payload).unwrap();
                let mut k = String::new();
                v.write_key(&mut k).unwrap();
                match store.iter().find(|s| s.0 == h.pool && s.1 == k) {
                    Some((_, k, v)) => {
                        let value = KvpValue::string(k, v).unwrap();
                        reply[at..at + 2572].copy_from_slice(value.as_bytes());
                    }
                    None => status_code = status::CONT,
                }
            }
            _ => status_code = status::CONT,
        }
        reply[20..24].copy_from_slice(&status_code.to_le_bytes());
        reply
    }

    fn negotiated(store: &mut Vec<(u8, String, String)>) -> KvpHost {
        let mut host = KvpHost::new();
        let mut buf = vec![0u8; MAX_REQUEST];
        let n = host.negotiate_request(&mut buf).unwrap();
        assert!(matches!(
            host.handle_response(&guest_answer(&buf[..n], store)),
            Ok(KvpEvent::Negotiated(_))
        ));
        host
    }

    #[test]
    fn enumerates_until_a_non_zero_status_then_sets_and_gets() {
        let mut store = vec![
            (2, "HostName".to_string(), "viridian-guest".to_string()),
            (2, "OSName".to_string(), "viridian guest kernel".to_string()),
        ];
        let mut host = negotiated(&mut store);
        let mut buf = vec![0u8; MAX_REQUEST];
        let mut seen = Vec::new();
        for index in 0.. {
            let n = host
                .request(
                    KvpRequest::Enumerate {
                        pool: KvpPool::AUTO,
                        index,
                    },
                    &mut buf,
                )
                .unwrap();
            assert_eq!(n, MAX_REQUEST);
            match host
                .handle_response(&guest_answer(&buf[..n], &mut store))
                .unwrap()
            {
                KvpEvent::Enumerated(Some(kv)) => seen.push(kv),
                KvpEvent::Enumerated(None) => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], ("HostName".into(), "viridian-guest".into()));
        let set = KvpRequest::Set {
            pool: KvpPool::EXTERNAL,
            key: "greeting".into(),
            value: "hello".into(),
        };
        let n = host.request(set.clone(), &mut buf).unwrap();
        assert!(
            host.request(set, &mut buf).is_err(),
            "one transaction at a time"
        );
        assert_eq!(
            host.handle_response(&guest_answer(&buf[..n], &mut store)),
            Ok(KvpEvent::Done(true))
        );
        let get = |key: &str| KvpRequest::Get {
            pool: KvpPool::EXTERNAL,
            key: key.into(),
        };
        let n = host.request(get("greeting"), &mut buf).unwrap();
        assert_eq!(
            host.handle_response(&guest_answer(&buf[..n], &mut store)),
            Ok(KvpEvent::Value(Some("hello".into())))
        );
        let n = host.request(get("nothing"), &mut buf).unwrap();
        assert_eq!(
            host.handle_response(&guest_answer(&buf[..n], &mut store)),
            Ok(KvpEvent::Value(None))
        );
    }

    #[test]
    fn answers_that_lie_are_refused() {
        let mut store = vec![(2, "k".to_string(), "v".to_string())];
        let mut host = negotiated(&mut store);
        let mut buf = vec![0u8; MAX_REQUEST];
        let enumerate = KvpRequest::Enumerate {
            pool: KvpPool::AUTO,
            index: 0,
        };
        // A key size beyond its field.
        let n = host.request(enumerate.clone(), &mut buf).unwrap();
        let mut reply = guest_answer(&buf[..n], &mut store);
        let key_size = HEADER_SIZE + KVP_HEADER_SIZE + 4 + 4;
        reply[key_size..key_size + 4].copy_from_slice(&4000u32.to_le_bytes());
        assert!(host.handle_response(&reply).is_err());
        // Another pool than asked.
        let n = host.request(enumerate.clone(), &mut buf).unwrap();
        let mut reply = guest_answer(&buf[..n], &mut store);
        reply[HEADER_SIZE + 1] = 0;
        assert!(host.handle_response(&reply).is_err());
        // Truncated.
        let n = host.request(enumerate.clone(), &mut buf).unwrap();
        let reply = guest_answer(&buf[..n], &mut store);
        assert!(host.handle_response(&reply[..HEADER_SIZE + 100]).is_err());
        // A packet that is no answer leaves the transaction pending: the real answer still counts,
        // once.
        assert!(host.handle_response(&reply).is_ok());
        assert!(host.handle_response(&reply).is_err(), "unsolicited");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_answers_never_panic(
            head in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            tail_len in 0usize..2700,
            status_code in proptest::prop_oneof![proptest::strategy::Just(0u32), proptest::strategy::Just(status::CONT), proptest::num::u32::ANY],
            op in 0u8..6,
            key_size in proptest::num::u32::ANY,
        ) {
            let mut store = Vec::new();
            let mut host = negotiated(&mut store);
            let mut buf = vec![0u8; MAX_REQUEST];
            let n = host.request(KvpRequest::Enumerate { pool: KvpPool::AUTO, index: 0 }, &mut buf).unwrap();
            // A plausible answer with arbitrary fields, then arbitrary bytes.
            let mut reply = buf[..n].to_vec();
            reply[25] = flags::TRANSACTION | flags::RESPONSE;
            reply[20..24].copy_from_slice(&status_code.to_le_bytes());
            reply[HEADER_SIZE] = op;
            reply[HEADER_SIZE + 8..HEADER_SIZE + 12].copy_from_slice(&key_size.to_le_bytes());
            let body = tail_len.min(n - HEADER_SIZE);
            reply.truncate(HEADER_SIZE + body);
            reply[18..20].copy_from_slice(&(body as u16).to_le_bytes());
            let _ = host.handle_response(&reply);
            host.abandon();
            let n = host.request(KvpRequest::Get { pool: KvpPool::EXTERNAL, key: "k".into() }, &mut buf).unwrap();
            let _ = n;
            let _ = host.handle_response(&head);
        }
    }
}
