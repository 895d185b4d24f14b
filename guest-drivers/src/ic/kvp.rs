//! Guest side of the KVP exchange IC: [`KvpDriver`] answers the host's transactions from a
//! [`KvpStore`] — ENUMERATE and GET from the pools (the guest's intrinsic values in
//! [`KvpPool::AUTO`], given at creation; what the host pushed in [`KvpPool::EXTERNAL`]), SET and
//! DELETE into them. Each answer is the request echoed in place with the value filled in and the
//! status S_OK, or S_CONT for an index past the end or a key not there (as the Linux daemon answers).
//! Protocol logic only; the channel is the caller's.

use alloc::string::String;
use alloc::vec::Vec;

use ic_protocol::kvp::{
    self, KvpDelete, KvpEnumerate, KvpHeader, KvpOperation, KvpPool, KvpValue, KVP_HEADER_SIZE,
    KVP_VERSIONS,
};
use ic_protocol::negotiate::{self, Negotiated};
use ic_protocol::{
    parse, response_header, status, IcError, IcMessageType, FRAMEWORK_VERSIONS, HEADER_SIZE,
};
use zerocopy::{FromBytes, IntoBytes};

/// Most keys one pool holds (a host pushing more gets a failure status).
pub const MAX_KEYS_PER_POOL: usize = 128;

/// The guest's key-value pools.
#[derive(Debug, Clone, Default)]
pub struct KvpStore {
    pools: [Vec<(String, String)>; KvpPool::COUNT as usize],
}

impl KvpStore {
    /// A store whose AUTO pool holds `values`.
    pub fn with_auto(values: &[(&str, &str)]) -> Self {
        let mut store = Self::default();
        store.pools[usize::from(KvpPool::AUTO.0)] = values
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        store
    }

    /// The values of `pool`, in enumeration order.
    pub fn pool(&self, pool: KvpPool) -> &[(String, String)] {
        self.pools
            .get(usize::from(pool.0))
            .map_or(&[], Vec::as_slice)
    }

    /// The value of `key` in `pool`.
    pub fn get(&self, pool: KvpPool, key: &str) -> Option<&str> {
        self.pool(pool)
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Set `key` = `value` in `pool`; false if the pool does not exist or is full.
    pub fn set(&mut self, pool: KvpPool, key: String, value: String) -> bool {
        let Some(entries) = self.pools.get_mut(usize::from(pool.0)) else {
            return false;
        };
        if let Some(entry) = entries.iter_mut().find(|(k, _)| *k == key) {
            entry.1 = value;
            return true;
        }
        if entries.len() >= MAX_KEYS_PER_POOL {
            return false;
        }
        entries.push((key, value));
        true
    }

    /// Remove `key` from `pool`; whether it was there.
    pub fn delete(&mut self, pool: KvpPool, key: &str) -> bool {
        let Some(entries) = self.pools.get_mut(usize::from(pool.0)) else {
            return false;
        };
        let before = entries.len();
        entries.retain(|(k, _)| k != key);
        entries.len() != before
    }
}

/// What a handled transaction was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvpGuestEvent {
    /// Versions were negotiated (`None`: no common version).
    Negotiated(Option<Negotiated>),
    /// The host enumerated `index` of `pool` (`found`: it exists).
    Enumerated {
        pool: KvpPool,
        index: u32,
        found: bool,
    },
    /// The host read `key` of `pool`.
    Got {
        pool: KvpPool,
        key: String,
        found: bool,
    },
    /// The host set `key` = `value` in `pool` (`stored`: the store took it).
    Set {
        pool: KvpPool,
        key: String,
        value: String,
        stored: bool,
    },
    /// The host deleted `key` from `pool`.
    Deleted {
        pool: KvpPool,
        key: String,
        found: bool,
    },
    /// An operation this driver does not serve (IP information), or a malformed one: answered
    /// with a failure status.
    Refused { operation: u8, status: u32 },
}

/// The guest's KVP exchange driver.
#[derive(Debug, Clone)]
pub struct KvpDriver {
    negotiated: Option<Negotiated>,
    /// The pools it answers from.
    pub store: KvpStore,
    /// Transactions answered.
    pub requests: u64,
}

impl KvpDriver {
    /// A driver answering from `store`.
    pub fn new(store: KvpStore) -> Self {
        Self {
            negotiated: None,
            store,
            requests: 0,
        }
    }

    /// The versions agreed with the host.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// Answer one host message into `reply`; returns the reply length and what happened.
    pub fn handle(
        &mut self,
        request: &[u8],
        reply: &mut [u8],
    ) -> Result<(usize, KvpGuestEvent), IcError> {
        let (header, body) = parse(request)?;
        match IcMessageType(header.message_type.get()) {
            IcMessageType::NEGOTIATE => {
                let (len, chosen) =
                    negotiate::answer(request, FRAMEWORK_VERSIONS, KVP_VERSIONS, reply)?;
                self.negotiated = chosen;
                self.requests += 1;
                Ok((len, KvpGuestEvent::Negotiated(chosen)))
            }
            IcMessageType::KVP_EXCHANGE if self.negotiated.is_some() => {
                let len = HEADER_SIZE + body.len();
                let out = reply.get_mut(..len).ok_or(IcError::BufferTooSmall)?;
                out.copy_from_slice(&request[..len]);
                let (status_code, event) = self.transact(&mut out[HEADER_SIZE..]);
                out[..HEADER_SIZE]
                    .copy_from_slice(response_header(&header, status_code).as_bytes());
                self.requests += 1;
                Ok((len, event))
            }
            other => Err(IcError::UnexpectedType(other.0)),
        }
    }

    /// Run the transaction in `body` (the reply, a copy of the request) in place.
    fn transact(&mut self, body: &mut [u8]) -> (u32, KvpGuestEvent) {
        let Ok((h, _)) = KvpHeader::read_from_prefix(body) else {
            return refused(0, status::FAIL);
        };
        let operation = KvpOperation(h.operation);
        let pool = KvpPool(h.pool);
        if kvp::body_len(operation).is_none_or(|need| body.len() < need) {
            return refused(h.operation, status::NOT_SUPPORTED);
        }
        if pool.0 >= KvpPool::COUNT {
            return refused(h.operation, status::FAIL);
        }
        let payload = &mut body[KVP_HEADER_SIZE..];
        match operation {
            KvpOperation::ENUMERATE => {
                let Ok((mut e, _)) = KvpEnumerate::read_from_prefix(payload) else {
                    return refused(h.operation, status::FAIL);
                };
                let index = e.index.get();
                let entry = self.store.pool(pool).get(index as usize);
                let found = match entry.and_then(|(k, v)| KvpValue::string(k, v).ok()) {
                    Some(value) => {
                        e.data = value;
                        payload[..core::mem::size_of::<KvpEnumerate>()]
                            .copy_from_slice(e.as_bytes());
                        true
                    }
                    None => false,
                };
                let code = if found { status::OK } else { status::CONT };
                (code, KvpGuestEvent::Enumerated { pool, index, found })
            }
            KvpOperation::GET => {
                let Some(key) = read_key(payload) else {
                    return refused(h.operation, status::FAIL);
                };
                let value = self
                    .store
                    .get(pool, &key)
                    .and_then(|v| KvpValue::string(&key, v).ok());
                let found = value.is_some();
                if let Some(value) = value {
                    payload[..core::mem::size_of::<KvpValue>()].copy_from_slice(value.as_bytes());
                }
                let code = if found { status::OK } else { status::CONT };
                (code, KvpGuestEvent::Got { pool, key, found })
            }
            KvpOperation::SET => {
                let Ok((v, _)) = KvpValue::read_from_prefix(payload) else {
                    return refused(h.operation, status::FAIL);
                };
                let (mut key, mut value) = (String::new(), String::new());
                if v.write_key(&mut key).is_err() || v.write_value(&mut value).is_err() {
                    return refused(h.operation, status::FAIL);
                }
                let stored = self.store.set(pool, key.clone(), value.clone());
                let code = if stored { status::OK } else { status::CONT };
                (
                    code,
                    KvpGuestEvent::Set {
                        pool,
                        key,
                        value,
                        stored,
                    },
                )
            }
            KvpOperation::DELETE => {
                let Ok((d, _)) = KvpDelete::read_from_prefix(payload) else {
                    return refused(h.operation, status::FAIL);
                };
                let mut key = String::new();
                if kvp::decode_utf16("key", &d.key, d.key_size.get(), &mut key).is_err() {
                    return refused(h.operation, status::FAIL);
                }
                let found = self.store.delete(pool, &key);
                let code = if found { status::OK } else { status::CONT };
                (code, KvpGuestEvent::Deleted { pool, key, found })
            }
            _ => refused(h.operation, status::NOT_SUPPORTED),
        }
    }
}

fn refused(operation: u8, status_code: u32) -> (u32, KvpGuestEvent) {
    (
        status_code,
        KvpGuestEvent::Refused {
            operation,
            status: status_code,
        },
    )
}

/// The key of a GET's value.
fn read_key(payload: &[u8]) -> Option<String> {
    let (v, _) = KvpValue::read_from_prefix(payload).ok()?;
    let mut key = String::new();
    v.write_key(&mut key).ok()?;
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use ic_protocol::request_header;
    use zerocopy::little_endian::{U16, U32};
    use zerocopy::FromZeros;

    fn message(operation: KvpOperation, pool: KvpPool, payload: &[u8]) -> Vec<u8> {
        let body_len = kvp::body_len(operation).unwrap();
        let mut m = request_header(
            IcMessageType::KVP_EXCHANGE,
            FRAMEWORK_VERSIONS[0],
            KVP_VERSIONS[0],
            body_len as u16,
            0,
        )
        .as_bytes()
        .to_vec();
        m.extend_from_slice(
            KvpHeader {
                operation: operation.0,
                pool: pool.0,
                pad: U16::new(0),
            }
            .as_bytes(),
        );
        m.extend_from_slice(payload);
        m.resize(HEADER_SIZE + body_len, 0);
        m
    }

    fn driver() -> KvpDriver {
        let mut drv = KvpDriver::new(KvpStore::with_auto(&[
            ("HostName", "viridian-guest"),
            ("OSName", "viridian guest kernel"),
        ]));
        let mut req = [0u8; 128];
        let n = negotiate::request(FRAMEWORK_VERSIONS, KVP_VERSIONS, &mut req).unwrap();
        drv.handle(&req[..n], &mut [0u8; 128]).unwrap();
        drv
    }

    fn enumerate(
        drv: &mut KvpDriver,
        pool: KvpPool,
        index: u32,
    ) -> (u32, Option<(String, String)>) {
        let mut e = KvpEnumerate::new_zeroed();
        e.index = U32::new(index);
        let m = message(KvpOperation::ENUMERATE, pool, e.as_bytes());
        let mut reply = vec![0u8; m.len()];
        let (len, _) = drv.handle(&m, &mut reply).unwrap();
        assert_eq!(len, m.len(), "answered in place");
        let (h, body) = parse(&reply).unwrap();
        let (e, _) = KvpEnumerate::read_from_prefix(&body[KVP_HEADER_SIZE..]).unwrap();
        let (mut k, mut v) = (String::new(), String::new());
        if h.status.get() == status::OK {
            e.data.write_key(&mut k).unwrap();
            e.data.write_value(&mut v).unwrap();
            return (h.status.get(), Some((k, v)));
        }
        (h.status.get(), None)
    }

    #[test]
    fn enumerates_the_auto_pool_then_says_no_more() {
        let mut drv = driver();
        assert_eq!(
            enumerate(&mut drv, KvpPool::AUTO, 0),
            (
                status::OK,
                Some(("HostName".into(), "viridian-guest".into()))
            )
        );
        assert_eq!(enumerate(&mut drv, KvpPool::AUTO, 1).0, status::OK);
        assert_eq!(enumerate(&mut drv, KvpPool::AUTO, 2), (status::CONT, None));
        assert_eq!(enumerate(&mut drv, KvpPool::GUEST, 0), (status::CONT, None));
    }

    #[test]
    fn set_values_are_stored_and_returned_by_get() {
        let mut drv = driver();
        let value = KvpValue::string("Greeting", "hello").unwrap();
        let m = message(KvpOperation::SET, KvpPool::EXTERNAL, value.as_bytes());
        let mut reply = vec![0u8; m.len()];
        let (_, ev) = drv.handle(&m, &mut reply).unwrap();
        assert_eq!(
            ev,
            KvpGuestEvent::Set {
                pool: KvpPool::EXTERNAL,
                key: "Greeting".into(),
                value: "hello".into(),
                stored: true
            }
        );
        assert_eq!(drv.store.get(KvpPool::EXTERNAL, "Greeting"), Some("hello"));
        let mut get = KvpValue::empty();
        get.set_key("Greeting").unwrap();
        let m = message(KvpOperation::GET, KvpPool::EXTERNAL, get.as_bytes());
        drv.handle(&m, &mut reply).unwrap();
        let (h, body) = parse(&reply).unwrap();
        assert_eq!(h.status.get(), status::OK);
        let (v, _) = KvpValue::read_from_prefix(&body[KVP_HEADER_SIZE..]).unwrap();
        let mut text = String::new();
        v.write_value(&mut text).unwrap();
        assert_eq!(text, "hello");
        // DELETE, then GET finds nothing.
        let mut d = KvpDelete::new_zeroed();
        d.key_size = U32::new(kvp::encode_utf16("key", "Greeting", &mut d.key).unwrap());
        let m = message(KvpOperation::DELETE, KvpPool::EXTERNAL, d.as_bytes());
        let mut reply2 = vec![0u8; m.len()];
        drv.handle(&m, &mut reply2).unwrap();
        assert_eq!(parse(&reply2).unwrap().0.status.get(), status::OK);
        let m = message(KvpOperation::GET, KvpPool::EXTERNAL, get.as_bytes());
        drv.handle(&m, &mut reply).unwrap();
        assert_eq!(parse(&reply).unwrap().0.status.get(), status::CONT);
    }

    #[test]
    fn malformed_transactions_get_a_failure_status_not_a_crash() {
        let mut drv = driver();
        let mut bad = KvpValue::string("k", "v").unwrap();
        bad.key_size = U32::new(9999);
        let m = message(KvpOperation::SET, KvpPool::EXTERNAL, bad.as_bytes());
        let mut reply = vec![0u8; m.len()];
        let (_, ev) = drv.handle(&m, &mut reply).unwrap();
        assert!(matches!(ev, KvpGuestEvent::Refused { .. }));
        assert_eq!(parse(&reply).unwrap().0.status.get(), status::FAIL);
        let m = message(
            KvpOperation::SET,
            KvpPool(9),
            KvpValue::string("k", "v").unwrap().as_bytes(),
        );
        drv.handle(&m, &mut reply).unwrap();
        assert_eq!(parse(&reply).unwrap().0.status.get(), status::FAIL);
        // A body too short for its operation.
        let mut short = message(KvpOperation::GET, KvpPool::AUTO, &[]);
        short.truncate(HEADER_SIZE + 8);
        short[18..20].copy_from_slice(&8u16.to_le_bytes());
        let (_, ev) = drv.handle(&short, &mut reply).unwrap();
        assert!(matches!(
            ev,
            KvpGuestEvent::Refused {
                status: status::NOT_SUPPORTED,
                ..
            }
        ));
        assert!(drv.store.pool(KvpPool::EXTERNAL).is_empty());
    }
}
