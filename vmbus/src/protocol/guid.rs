//! Windows-style GUIDs as VMBus carries them (first three fields little-endian) and the interface
//! GUIDs of the devices viridian offers.

use core::fmt;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// A GUID in Windows layout: `{u32, u16, u16, [u8; 8]}`, integers little-endian on the wire.
#[derive(
    Copy,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C, packed)]
pub struct Guid {
    pub data1: u32,
    pub data2: u16,
    pub data3: u16,
    pub data4: [u8; 8],
}

impl Guid {
    /// The all-zero GUID.
    pub const ZERO: Self = Self::new(0, 0, 0, [0; 8]);

    /// A GUID from its textual fields: `data1-data2-data3-data4[0..2]-data4[2..8]`.
    pub const fn new(data1: u32, data2: u16, data3: u16, data4: [u8; 8]) -> Self {
        Self {
            data1,
            data2,
            data3,
            data4,
        }
    }

    /// Parses the standard text form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (case-insensitive,
    /// optionally in braces).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(text);
        let bytes = text.as_bytes();
        if bytes.len() != 36 {
            return None;
        }
        let mut digits = [0u8; 32];
        let mut n = 0;
        for (i, &c) in bytes.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return None;
                }
                continue;
            }
            let v = (c as char).to_digit(16)?;
            *digits.get_mut(n)? = v as u8;
            n += 1;
        }
        let field = |from: usize, len: usize| -> u64 {
            digits[from..from + len]
                .iter()
                .fold(0u64, |acc, &d| (acc << 4) | u64::from(d))
        };
        let mut data4 = [0u8; 8];
        for (i, b) in data4.iter_mut().enumerate() {
            *b = field(16 + 2 * i, 2) as u8;
        }
        Some(Self::new(
            field(0, 8) as u32,
            field(8, 4) as u16,
            field(12, 4) as u16,
            data4,
        ))
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (d1, d2, d3, d4) = (self.data1, self.data2, self.data3, self.data4);
        write!(
            f,
            "{d1:08x}-{d2:04x}-{d3:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            d4[0], d4[1], d4[2], d4[3], d4[4], d4[5], d4[6], d4[7]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{self}}}")
    }
}

/// Interface (device class) GUIDs carried in OFFERCHANNEL's `if_type`.
pub mod interface {
    use super::Guid;

    /// Synthetic SCSI controller (storvsc).
    pub const SCSI: Guid = Guid::new(
        0xba6163d9,
        0x04a1,
        0x4d29,
        [0xb6, 0x05, 0x72, 0xe2, 0xff, 0xb1, 0xdc, 0x7f],
    );
    /// Synthetic IDE controller (also driven by storvsc).
    pub const IDE: Guid = Guid::new(
        0x32412632,
        0x86cb,
        0x44a2,
        [0x9b, 0x5c, 0x50, 0xd1, 0x41, 0x73, 0x54, 0xf5],
    );
    /// Synthetic network adapter (netvsc).
    pub const NETWORK: Guid = Guid::new(
        0xf8615163,
        0xdf3e,
        0x46c5,
        [0x91, 0x3f, 0xf2, 0xd2, 0xf9, 0x65, 0xed, 0x0e],
    );
    /// Heartbeat integration component.
    pub const HEARTBEAT: Guid = Guid::new(
        0x57164f39,
        0x9115,
        0x4e78,
        [0xab, 0x55, 0x38, 0x2f, 0x3b, 0xd5, 0x42, 0x2d],
    );
    /// Shutdown integration component.
    pub const SHUTDOWN: Guid = Guid::new(
        0x0e0b6031,
        0x5213,
        0x4934,
        [0x81, 0x8b, 0x38, 0xd9, 0x0c, 0xed, 0x39, 0xdb],
    );
    /// Time synchronization integration component.
    pub const TIME_SYNC: Guid = Guid::new(
        0x9527e630,
        0xd0ae,
        0x497b,
        [0xad, 0xce, 0xe8, 0x0a, 0xb0, 0x17, 0x5c, 0xaf],
    );
    /// Key-value pair exchange integration component.
    pub const KVP: Guid = Guid::new(
        0xa9a0f4e7,
        0x5a45,
        0x4d96,
        [0xb8, 0x27, 0x8a, 0x84, 0x1e, 0x8c, 0x03, 0xe6],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_windows_guid() {
        assert_eq!(size_of::<Guid>(), 16);
        assert_eq!(core::mem::align_of::<Guid>(), 1);
        assert_eq!(core::mem::offset_of!(Guid, data2), 4);
        assert_eq!(core::mem::offset_of!(Guid, data3), 6);
        assert_eq!(core::mem::offset_of!(Guid, data4), 8);
        // Linux GUID_INIT(0xba6163d9, 0x04a1, 0x4d29, ...) lays the bytes out like this.
        assert_eq!(
            interface::SCSI.as_bytes(),
            &[
                0xd9, 0x63, 0x61, 0xba, 0xa1, 0x04, 0x29, 0x4d, 0xb6, 0x05, 0x72, 0xe2, 0xff, 0xb1,
                0xdc, 0x7f
            ]
        );
    }

    #[test]
    fn display_and_parse_round_trip() {
        let cases = [
            (interface::SCSI, "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f"),
            (interface::IDE, "32412632-86cb-44a2-9b5c-50d1417354f5"),
            (interface::NETWORK, "f8615163-df3e-46c5-913f-f2d2f965ed0e"),
            (interface::HEARTBEAT, "57164f39-9115-4e78-ab55-382f3bd5422d"),
            (interface::SHUTDOWN, "0e0b6031-5213-4934-818b-38d90ced39db"),
            (interface::TIME_SYNC, "9527e630-d0ae-497b-adce-e80ab0175caf"),
            (interface::KVP, "a9a0f4e7-5a45-4d96-b827-8a841e8c03e6"),
        ];
        for (guid, text) in cases {
            assert_eq!(guid.to_string(), text);
            assert_eq!(Guid::parse(text), Some(guid));
            assert_eq!(Guid::parse(&text.to_uppercase()), Some(guid));
            assert_eq!(Guid::parse(&format!("{{{text}}}")), Some(guid));
            assert_eq!(format!("{guid:?}"), format!("{{{text}}}"));
        }
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in [
            "",
            "ba6163d9-04a1-4d29-b605-72e2ffb1dc7",
            "ba6163d9-04a1-4d29-b605-72e2ffb1dc7fa",
            "ba6163d9x04a1-4d29-b605-72e2ffb1dc7f",
            "ba6163d9-04a1-4d29-b605-72e2ffb1dcg0",
            "{ba6163d9-04a1-4d29-b605-72e2ffb1dc7f",
            "ba6163d9-04a1-4d29-b605-72e2ffb1dc\u{e9}",
        ] {
            assert_eq!(Guid::parse(bad), None, "{bad}");
        }
    }
}
