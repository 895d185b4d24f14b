//! The key-value pair exchange IC (`ICMSGTYPE_KVPEXCHANGE`), as `hv_kvp` and its daemon speak it:
//! after the IC header comes [`KvpHeader`] (operation, pool) and the operation's payload —
//! [`KvpValue`] for GET and SET, [`KvpEnumerate`] (an index and a value) for ENUMERATE, [`KvpDelete`]
//! for DELETE. Keys and values are UTF-16LE with their byte sizes counting the terminating NUL. The
//! host runs one transaction at a time; the guest answers each in place (same buffer, same length)
//! with the status in the IC header: S_OK, or S_CONT when the index or key is not there.

use core::fmt;

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::IcVersion;

/// KVP message versions (newest first), as hv_kvp lists them (WIN8, WIN7, WS2008).
pub const KVP_VERSIONS: &[IcVersion] = &[
    IcVersion::new(4, 0),
    IcVersion::new(3, 0),
    IcVersion::new(1, 0),
];

/// Bytes of a key field (`HV_KVP_EXCHANGE_MAX_KEY_SIZE`).
pub const MAX_KEY_SIZE: usize = 512;
/// Bytes of a value field (`HV_KVP_EXCHANGE_MAX_VALUE_SIZE`).
pub const MAX_VALUE_SIZE: usize = 2048;

/// A KVP operation (open: unknown values are representable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvpOperation(pub u8);

impl KvpOperation {
    pub const GET: Self = Self(0);
    pub const SET: Self = Self(1);
    pub const DELETE: Self = Self(2);
    pub const ENUMERATE: Self = Self(3);
    pub const GET_IP_INFO: Self = Self(4);
    pub const SET_IP_INFO: Self = Self(5);
}

/// A KVP pool (open).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KvpPool(pub u8);

impl KvpPool {
    /// Written by the host, read by the guest.
    pub const EXTERNAL: Self = Self(0);
    /// Written by the guest, read by the host.
    pub const GUEST: Self = Self(1);
    /// The guest's intrinsic values (host name, OS name and version...).
    pub const AUTO: Self = Self(2);
    pub const AUTO_EXTERNAL: Self = Self(3);
    pub const AUTO_INTERNAL: Self = Self(4);
    /// Number of pools.
    pub const COUNT: u8 = 5;
}

/// Value types (`KvpValue::value_type`).
pub mod value_type {
    /// A UTF-16 string.
    pub const REG_SZ: u32 = 1;
    /// A 32-bit number.
    pub const REG_U32: u32 = 4;
    /// A 64-bit number.
    pub const REG_U64: u32 = 8;
}

/// `hv_kvp_hdr`: the first 4 bytes of every KVP body.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct KvpHeader {
    pub operation: u8,
    pub pool: u8,
    pub pad: U16,
}

/// `hv_kvp_exchg_msg_value` (2572 bytes, packed).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct KvpValue {
    pub value_type: U32,
    /// Bytes of `key` in use, the UTF-16 NUL included.
    pub key_size: U32,
    /// Bytes of `value` in use (the NUL included for REG_SZ; 4 or 8 for the numbers).
    pub value_size: U32,
    pub key: [u8; MAX_KEY_SIZE],
    pub value: [u8; MAX_VALUE_SIZE],
}

/// `hv_kvp_msg_enumerate`: the index the host asks for, and the guest's answer.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct KvpEnumerate {
    pub index: U32,
    pub data: KvpValue,
}

/// `hv_kvp_msg_delete`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct KvpDelete {
    pub key_size: U32,
    pub key: [u8; MAX_KEY_SIZE],
}

/// Size of [`KvpHeader`].
pub const KVP_HEADER_SIZE: usize = 4;

/// Body length (after the IC header) of a message carrying `operation`: the KVP header and the
/// operation's payload. `None` for the IP-information operations, which this crate does not carry.
pub fn body_len(operation: KvpOperation) -> Option<usize> {
    let payload = match operation {
        KvpOperation::GET | KvpOperation::SET => core::mem::size_of::<KvpValue>(),
        KvpOperation::ENUMERATE => core::mem::size_of::<KvpEnumerate>(),
        KvpOperation::DELETE => core::mem::size_of::<KvpDelete>(),
        _ => return None,
    };
    Some(KVP_HEADER_SIZE + payload)
}

/// A malformed key or value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvpError {
    #[error("KVP {what} of {size} bytes does not fit its {field}-byte field")]
    TooLong {
        what: &'static str,
        size: usize,
        field: usize,
    },
    #[error("KVP {what} size {size} is odd (UTF-16 is two bytes per unit)")]
    OddSize { what: &'static str, size: usize },
    #[error("KVP {0} is not valid UTF-16")]
    BadUtf16(&'static str),
    #[error("KVP value of type {value_type} with {size} bytes is not a string or number")]
    BadValue { value_type: u32, size: usize },
    #[error("KVP text could not be written out")]
    Output,
}

/// Encode `text` as NUL-terminated UTF-16LE into `field` (the rest zeroed); returns the byte size
/// (the NUL included) for `key_size`/`value_size`.
pub fn encode_utf16(what: &'static str, text: &str, field: &mut [u8]) -> Result<u32, KvpError> {
    let units = text.encode_utf16().count();
    let size = 2 * (units + 1);
    if size > field.len() {
        return Err(KvpError::TooLong {
            what,
            size,
            field: field.len(),
        });
    }
    field.fill(0);
    for (i, unit) in text.encode_utf16().enumerate() {
        field[2 * i..2 * i + 2].copy_from_slice(&unit.to_le_bytes());
    }
    Ok(size as u32)
}

/// Decode the UTF-16LE text of the first `size` bytes of `field` (a peer's size: checked against the
/// field, ending at the first NUL if there is one earlier) into `out`.
pub fn decode_utf16(
    what: &'static str,
    field: &[u8],
    size: u32,
    out: &mut impl fmt::Write,
) -> Result<(), KvpError> {
    let size = size as usize;
    let bytes = field.get(..size).ok_or(KvpError::TooLong {
        what,
        size,
        field: field.len(),
    })?;
    if size & 1 != 0 {
        return Err(KvpError::OddSize { what, size });
    }
    let units = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0);
    for c in char::decode_utf16(units) {
        out.write_char(c.map_err(|_| KvpError::BadUtf16(what))?)
            .map_err(|_| KvpError::Output)?;
    }
    Ok(())
}

impl KvpValue {
    /// An all-zero value.
    pub fn empty() -> Self {
        Self::new_zeroed()
    }

    /// A REG_SZ value `key` = `value`.
    pub fn string(key: &str, value: &str) -> Result<Self, KvpError> {
        let mut v = Self::empty();
        v.set_key(key)?;
        v.value_size = U32::new(encode_utf16("value", value, &mut v.value)?);
        v.value_type = U32::new(value_type::REG_SZ);
        Ok(v)
    }

    /// Set the key (UTF-16, NUL-terminated).
    pub fn set_key(&mut self, key: &str) -> Result<(), KvpError> {
        self.key_size = U32::new(encode_utf16("key", key, &mut self.key)?);
        Ok(())
    }

    /// Write the key's text to `out`.
    pub fn write_key(&self, out: &mut impl fmt::Write) -> Result<(), KvpError> {
        decode_utf16("key", &self.key, self.key_size.get(), out)
    }

    /// Write the value's text to `out`: a REG_SZ as it is, REG_U32/REG_U64 in decimal.
    pub fn write_value(&self, out: &mut impl fmt::Write) -> Result<(), KvpError> {
        let size = self.value_size.get() as usize;
        let bad = KvpError::BadValue {
            value_type: self.value_type.get(),
            size,
        };
        match self.value_type.get() {
            value_type::REG_SZ => decode_utf16("value", &self.value, self.value_size.get(), out),
            value_type::REG_U32 if size == 4 => {
                let n = u32::from_le_bytes([
                    self.value[0],
                    self.value[1],
                    self.value[2],
                    self.value[3],
                ]);
                write!(out, "{n}").map_err(|_| KvpError::Output)
            }
            value_type::REG_U64 if size == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.value[..8]);
                write!(out, "{}", u64::from_le_bytes(b)).map_err(|_| KvpError::Output)
            }
            _ => Err(bad),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_the_uapi_header() {
        assert_eq!(size_of::<KvpHeader>(), KVP_HEADER_SIZE);
        assert_eq!(offset_of!(KvpHeader, pool), 1);
        assert_eq!(size_of::<KvpValue>(), 2572);
        assert_eq!(offset_of!(KvpValue, key_size), 4);
        assert_eq!(offset_of!(KvpValue, value_size), 8);
        assert_eq!(offset_of!(KvpValue, key), 12);
        assert_eq!(offset_of!(KvpValue, value), 524);
        assert_eq!(size_of::<KvpEnumerate>(), 2576);
        assert_eq!(offset_of!(KvpEnumerate, data), 4);
        assert_eq!(size_of::<KvpDelete>(), 516);
        assert_eq!(body_len(KvpOperation::ENUMERATE), Some(2580));
        assert_eq!(body_len(KvpOperation::GET), Some(2576));
        assert_eq!(body_len(KvpOperation::DELETE), Some(520));
        assert_eq!(body_len(KvpOperation::GET_IP_INFO), None);
    }

    #[test]
    fn strings_are_nul_terminated_utf16_with_sizes_counting_the_nul() {
        let v = KvpValue::string("HostName", "viridian-gäst").unwrap();
        assert_eq!(v.key_size.get(), 2 * 9);
        assert_eq!(&v.key[..4], &[b'H', 0, b'o', 0]);
        assert_eq!(v.value_size.get(), 2 * 14);
        assert_eq!(v.value_type.get(), value_type::REG_SZ);
        let mut key = String::new();
        v.write_key(&mut key).unwrap();
        assert_eq!(key, "HostName");
        let mut value = String::new();
        v.write_value(&mut value).unwrap();
        assert_eq!(value, "viridian-gäst");
    }

    #[test]
    fn numbers_print_in_decimal_and_bad_sizes_are_refused() {
        let mut v = KvpValue::empty();
        v.value_type = U32::new(value_type::REG_U32);
        v.value_size = U32::new(4);
        v.value[..4].copy_from_slice(&1234u32.to_le_bytes());
        let mut t = String::new();
        v.write_value(&mut t).unwrap();
        assert_eq!(t, "1234");
        v.value_size = U32::new(5);
        assert!(matches!(
            v.write_value(&mut String::new()),
            Err(KvpError::BadValue { .. })
        ));
        v.value_type = U32::new(value_type::REG_SZ);
        v.value_size = U32::new(4000);
        assert!(matches!(
            v.write_value(&mut String::new()),
            Err(KvpError::TooLong { .. })
        ));
        v.value_size = U32::new(3);
        assert!(matches!(
            v.write_value(&mut String::new()),
            Err(KvpError::OddSize { .. })
        ));
        // A lone surrogate.
        v.value[..2].copy_from_slice(&0xD800u16.to_le_bytes());
        v.value_size = U32::new(2);
        assert_eq!(
            v.write_value(&mut String::new()),
            Err(KvpError::BadUtf16("value"))
        );
    }

    #[test]
    fn keys_too_long_for_the_field_are_refused() {
        let long = "k".repeat(256);
        assert!(matches!(
            KvpValue::string(&long, "v"),
            Err(KvpError::TooLong { size: 514, .. })
        ));
        assert!(KvpValue::string(&long[..255], "v").is_ok());
    }

    proptest::proptest! {
        #[test]
        fn decoding_any_value_never_panics(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 2572),
        ) {
            let (v, _) = KvpValue::read_from_prefix(&bytes).unwrap();
            let _ = v.write_key(&mut String::new());
            let _ = v.write_value(&mut String::new());
        }

        #[test]
        fn any_text_that_fits_round_trips(text in "\\PC{0,200}") {
            let mut field = [0u8; MAX_VALUE_SIZE];
            let size = encode_utf16("value", &text, &mut field).unwrap();
            let mut out = String::new();
            decode_utf16("value", &field, size, &mut out).unwrap();
            proptest::prop_assert_eq!(out, text);
        }
    }
}
