//! VMBus protocol versions (`major << 16 | minor`) and the connection ids / SINT that a version implies
//! for INITIATE_CONTACT.

use core::fmt;

/// Connection id for channel messages before version 5.0 (and INITIATE_CONTACT of those versions).
pub const MESSAGE_CONNECTION_ID: u32 = 1;
/// Connection id INITIATE_CONTACT is posted to from version 5.0 on.
pub const MESSAGE_CONNECTION_ID_V5: u32 = 4;
/// The SINT channel messages are delivered on (Linux's `VMBUS_MESSAGE_SINT`).
pub const MESSAGE_SINT: u8 = 2;

/// A VMBus protocol version.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u32);

impl Version {
    /// Windows Server 2008.
    pub const WS2008: Self = Self::new(0, 13);
    /// Windows 7.
    pub const WIN7: Self = Self::new(1, 1);
    /// Windows 8 / Server 2012.
    pub const WIN8: Self = Self::new(2, 4);
    /// Windows 8.1 / Server 2012 R2.
    pub const WIN8_1: Self = Self::new(3, 0);
    /// Windows 10.
    pub const WIN10: Self = Self::new(4, 0);
    /// Windows 10 (adds MODIFYCHANNEL).
    pub const WIN10_V4_1: Self = Self::new(4, 1);
    /// Version 5.0: INITIATE_CONTACT carries the message SINT and goes to connection id 4.
    pub const WIN10_V5: Self = Self::new(5, 0);
    pub const WIN10_V5_1: Self = Self::new(5, 1);
    pub const WIN10_V5_2: Self = Self::new(5, 2);
    /// Version 5.3: the host answers MODIFYCHANNEL with MODIFYCHANNEL_RESPONSE.
    pub const WIN10_V5_3: Self = Self::new(5, 3);

    /// A version from its major and minor numbers.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self(((major as u32) << 16) | minor as u32)
    }

    pub const fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }

    pub const fn minor(self) -> u16 {
        self.0 as u16
    }

    /// Whether INITIATE_CONTACT for this version carries `msg_sint` (rather than an interrupt page GPA).
    pub const fn uses_message_sint(self) -> bool {
        self.0 >= Self::WIN10_V5.0
    }

    /// The connection id INITIATE_CONTACT for this version must be posted to.
    pub const fn initiate_contact_connection_id(self) -> u32 {
        if self.uses_message_sint() {
            MESSAGE_CONNECTION_ID_V5
        } else {
            MESSAGE_CONNECTION_ID
        }
    }

    /// Whether the guest may send MODIFYCHANNEL at this version.
    pub const fn supports_modify_channel(self) -> bool {
        self.0 >= Self::WIN10_V4_1.0
    }

    /// Whether the host answers MODIFYCHANNEL with MODIFYCHANNEL_RESPONSE at this version.
    pub const fn has_modify_channel_response(self) -> bool {
        self.0 >= Self::WIN10_V5_3.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({self})")
    }
}

/// The versions viridian speaks, newest first (the order a guest offers them in).
pub const SUPPORTED_VERSIONS: [Version; 8] = [
    Version::WIN10_V5_3,
    Version::WIN10_V5_2,
    Version::WIN10_V5_1,
    Version::WIN10_V5,
    Version::WIN10_V4_1,
    Version::WIN10,
    Version::WIN8_1,
    Version::WIN8,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_numbers_match_hyperv_h() {
        assert_eq!(Version::WS2008.0, 13);
        assert_eq!(Version::WIN7.0, (1 << 16) | 1);
        assert_eq!(Version::WIN8.0, (2 << 16) | 4);
        assert_eq!(Version::WIN8_1.0, 3 << 16);
        assert_eq!(Version::WIN10.0, 4 << 16);
        assert_eq!(Version::WIN10_V4_1.0, (4 << 16) | 1);
        assert_eq!(Version::WIN10_V5.0, 5 << 16);
        assert_eq!(Version::WIN10_V5_3.0, (5 << 16) | 3);
        assert_eq!(Version::WIN8.to_string(), "2.4");
        assert_eq!(Version::WIN10_V5_2.major(), 5);
        assert_eq!(Version::WIN10_V5_2.minor(), 2);
    }

    #[test]
    fn contact_connection_id_rule() {
        for v in SUPPORTED_VERSIONS {
            let expected = if v >= Version::WIN10_V5 { 4 } else { 1 };
            assert_eq!(v.initiate_contact_connection_id(), expected, "{v}");
        }
        assert_eq!(Version::new(6, 0).initiate_contact_connection_id(), 4);
    }

    #[test]
    fn supported_versions_newest_first() {
        assert!(SUPPORTED_VERSIONS.windows(2).all(|w| w[0] > w[1]));
    }
}
