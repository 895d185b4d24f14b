//! The fixed-size channel message structs, header included, laid out like Linux's packed structs.
//! Variable-length messages (GPADL header/body) have their fixed part here; their PFN arrays follow.

use super::{
    ChannelMessage, Guid, MessageHeader, MessageType, ProtocolError, Version,
    MAX_USER_DEFINED_BYTES,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

macro_rules! channel_message {
    ($name:ident, $ty:ident) => {
        impl ChannelMessage for $name {
            const TYPE: MessageType = MessageType::$ty;
        }
    };
}

/// Copies user data into a zero-padded 120-byte array.
pub fn user_defined(data: &[u8]) -> Result<[u8; MAX_USER_DEFINED_BYTES], ProtocolError> {
    let mut out = [0; MAX_USER_DEFINED_BYTES];
    out.get_mut(..data.len())
        .ok_or(ProtocolError::UserDataTooLong { len: data.len() })?
        .copy_from_slice(data);
    Ok(out)
}

/// The offer proper (`struct vmbus_channel_offer`), 176 bytes.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C, packed)]
pub struct ChannelOffer {
    /// Interface (device class) GUID.
    pub if_type: Guid,
    /// Instance GUID of this device.
    pub if_instance: Guid,
    pub int_latency: u64,
    pub if_revision: u32,
    pub server_ctx_area_size: u32,
    /// `FLAG_*` bits.
    pub chn_flags: u16,
    pub mmio_megabytes: u16,
    /// User-defined bytes; in pipe mode the first u32 is the pipe mode.
    pub user_def: [u8; MAX_USER_DEFINED_BYTES],
    /// 0 for a primary channel, else the sub-channel index.
    pub sub_channel_index: u16,
    pub reserved: u16,
}

impl ChannelOffer {
    pub const FLAG_ENUMERATE_DEVICE_INTERFACE: u16 = 0x1;
    pub const FLAG_NAMED_PIPE_MODE: u16 = 0x10;
    pub const FLAG_TLNPI_PROVIDER_OFFER: u16 = 0x2000;

    /// An offer for a primary channel with no flags and no user data.
    pub const fn new(if_type: Guid, if_instance: Guid) -> Self {
        Self {
            if_type,
            if_instance,
            int_latency: 0,
            if_revision: 0,
            server_ctx_area_size: 0,
            chn_flags: 0,
            mmio_megabytes: 0,
            user_def: [0; MAX_USER_DEFINED_BYTES],
            sub_channel_index: 0,
            reserved: 0,
        }
    }

    /// The pipe mode word (first u32 of the user data), meaningful with `FLAG_NAMED_PIPE_MODE`.
    pub fn pipe_mode(&self) -> u32 {
        let u = self.user_def;
        u32::from_le_bytes([u[0], u[1], u[2], u[3]])
    }
}

/// CHANNELMSG_OFFERCHANNEL (`struct vmbus_channel_offer_channel`), 196 bytes.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C, packed)]
pub struct OfferChannel {
    pub header: MessageHeader,
    pub offer: ChannelOffer,
    pub child_relid: u32,
    pub monitorid: u8,
    /// Bit 0: monitor_allocated.
    pub monitor_allocated: u8,
    /// Bit 0: is_dedicated_interrupt.
    pub is_dedicated_interrupt: u16,
    /// The connection id the guest signals this channel with.
    pub connection_id: u32,
}
channel_message!(OfferChannel, OFFERCHANNEL);

impl OfferChannel {
    /// An offer without a monitor page slot and with a dedicated interrupt, as viridian's host sends.
    pub const fn new(offer: ChannelOffer, child_relid: u32, connection_id: u32) -> Self {
        Self {
            header: MessageHeader::new(MessageType::OFFERCHANNEL),
            offer,
            child_relid,
            monitorid: 0,
            monitor_allocated: 0,
            is_dedicated_interrupt: 1,
            connection_id,
        }
    }

    pub const fn is_monitor_allocated(&self) -> bool {
        self.monitor_allocated & 1 != 0
    }

    pub const fn has_dedicated_interrupt(&self) -> bool {
        self.is_dedicated_interrupt & 1 != 0
    }
}

/// Declares a message that is just the header plus a list of u32 fields, with a `new` taking them
/// in order.
macro_rules! simple_message {
    ($(#[$doc:meta])* $name:ident = $ty:ident { $($(#[$fdoc:meta])* $field:ident),* }) => {
        $(#[$doc])*
        #[derive(
            Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
            Unaligned,
        )]
        #[repr(C, packed)]
        pub struct $name {
            pub header: MessageHeader,
            $($(#[$fdoc])* pub $field: u32,)*
        }
        channel_message!($name, $ty);

        impl $name {
            #[allow(clippy::new_without_default)]
            pub const fn new($($field: u32),*) -> Self {
                Self { header: MessageHeader::new(MessageType::$ty), $($field,)* }
            }
        }
    };
}

pub use simple::*;

/// Messages that are the header plus u32 fields.
mod simple {
    // zerocopy's derives emit helper types without Debug; under macro_rules the lint sees them.
    #![allow(missing_debug_implementations)]

    use super::*;

    simple_message!(
        /// CHANNELMSG_RESCIND_CHANNELOFFER, 12 bytes.
        RescindChannelOffer = RESCIND_CHANNELOFFER { child_relid }
    );
    simple_message!(
        /// CHANNELMSG_REQUESTOFFERS, header only.
        RequestOffers = REQUESTOFFERS {}
    );
    simple_message!(
        /// CHANNELMSG_ALLOFFERS_DELIVERED, header only.
        AllOffersDelivered = ALLOFFERS_DELIVERED {}
    );
    simple_message!(
        /// CHANNELMSG_OPENCHANNEL_RESULT, 20 bytes.
        OpenChannelResult = OPENCHANNEL_RESULT { child_relid, openid, status }
    );
    simple_message!(
        /// CHANNELMSG_CLOSECHANNEL, 12 bytes.
        CloseChannel = CLOSECHANNEL { child_relid }
    );
    simple_message!(
        /// CHANNELMSG_GPADL_CREATED, 20 bytes.
        GpadlCreated = GPADL_CREATED { child_relid, gpadl, creation_status }
    );
    simple_message!(
        /// CHANNELMSG_GPADL_TEARDOWN, 16 bytes.
        GpadlTeardown = GPADL_TEARDOWN { child_relid, gpadl }
    );
    simple_message!(
        /// CHANNELMSG_GPADL_TORNDOWN, 12 bytes.
        GpadlTorndown = GPADL_TORNDOWN { gpadl }
    );
    simple_message!(
        /// CHANNELMSG_RELID_RELEASED, 12 bytes.
        RelidReleased = RELID_RELEASED { child_relid }
    );
    simple_message!(
        /// CHANNELMSG_UNLOAD, header only.
        Unload = UNLOAD {}
    );
    simple_message!(
        /// CHANNELMSG_UNLOAD_RESPONSE, header only.
        UnloadResponse = UNLOAD_RESPONSE {}
    );
    simple_message!(
        /// CHANNELMSG_MODIFYCHANNEL, 16 bytes: move a channel's interrupts to another VP.
        ModifyChannel = MODIFYCHANNEL { child_relid, target_vp }
    );
    simple_message!(
        /// CHANNELMSG_MODIFYCHANNEL_RESPONSE, 16 bytes (version 5.3+).
        ModifyChannelResponse = MODIFYCHANNEL_RESPONSE { child_relid, status }
    );
}

/// CHANNELMSG_OPENCHANNEL (`struct vmbus_channel_open_channel`), 148 bytes.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C, packed)]
pub struct OpenChannel {
    pub header: MessageHeader,
    pub child_relid: u32,
    /// Echoed back in OPENCHANNEL_RESULT (Linux uses the relid).
    pub openid: u32,
    /// GPADL holding both rings: guest→host first.
    pub ringbuffer_gpadlhandle: u32,
    /// VP the host interrupts for this channel.
    pub target_vp: u32,
    /// Page offset of the host→guest ring inside the GPADL.
    pub downstream_ringbuffer_pageoffset: u32,
    pub userdata: [u8; MAX_USER_DEFINED_BYTES],
}
channel_message!(OpenChannel, OPENCHANNEL);

impl OpenChannel {
    pub const fn new(
        child_relid: u32,
        openid: u32,
        ringbuffer_gpadlhandle: u32,
        target_vp: u32,
        downstream_ringbuffer_pageoffset: u32,
        userdata: [u8; MAX_USER_DEFINED_BYTES],
    ) -> Self {
        Self {
            header: MessageHeader::new(MessageType::OPENCHANNEL),
            child_relid,
            openid,
            ringbuffer_gpadlhandle,
            target_vp,
            downstream_ringbuffer_pageoffset,
            userdata,
        }
    }
}

/// Fixed part of CHANNELMSG_GPADL_HEADER (20 bytes); `range_buflen` bytes of ranges follow
/// (`{u32 byte_count, u32 byte_offset, u64 pfn[]}` each), as many as fit in this message.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C, packed)]
pub struct GpadlHeader {
    pub header: MessageHeader,
    pub child_relid: u32,
    pub gpadl: u32,
    /// Bytes of all ranges together (range headers and PFNs).
    pub range_buflen: u16,
    pub rangecount: u16,
}

impl GpadlHeader {
    pub const fn new(child_relid: u32, gpadl: u32, range_buflen: u16, rangecount: u16) -> Self {
        Self {
            header: MessageHeader::new(MessageType::GPADL_HEADER),
            child_relid,
            gpadl,
            range_buflen,
            rangecount,
        }
    }
}

/// Head of one range (`struct gpa_range` without its PFN array), 8 bytes.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C, packed)]
pub struct GpaRangeHeader {
    pub byte_count: u32,
    /// Offset of the first byte within the first page.
    pub byte_offset: u32,
}

/// Fixed part of CHANNELMSG_GPADL_BODY (16 bytes); PFNs follow.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C, packed)]
pub struct GpadlBody {
    pub header: MessageHeader,
    pub msgnumber: u32,
    pub gpadl: u32,
}

impl GpadlBody {
    pub const fn new(msgnumber: u32, gpadl: u32) -> Self {
        Self {
            header: MessageHeader::new(MessageType::GPADL_BODY),
            msgnumber,
            gpadl,
        }
    }
}

/// CHANNELMSG_INITIATE_CONTACT (`struct vmbus_channel_initiate_contact`), 40 bytes.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C, packed)]
pub struct InitiateContact {
    pub header: MessageHeader,
    pub vmbus_version_requested: u32,
    /// VP the host delivers channel messages to.
    pub target_vcpu: u32,
    /// Before 5.0: GPA of the interrupt page. From 5.0: byte 0 msg_sint, byte 1 msg_vtl,
    /// bytes 4..8 feature flags (5.3+).
    pub interrupt_page_or_sint: u64,
    pub monitor_page1: u64,
    pub monitor_page2: u64,
}
channel_message!(InitiateContact, INITIATE_CONTACT);

impl InitiateContact {
    /// A request for `version`: from 5.0 on the union carries `msg_sint`, before it `interrupt_page`.
    pub const fn new(
        version: Version,
        target_vcpu: u32,
        msg_sint: u8,
        interrupt_page: u64,
        monitor_pages: (u64, u64),
    ) -> Self {
        let union = if version.uses_message_sint() {
            msg_sint as u64
        } else {
            interrupt_page
        };
        Self {
            header: MessageHeader::new(MessageType::INITIATE_CONTACT),
            vmbus_version_requested: version.0,
            target_vcpu,
            interrupt_page_or_sint: union,
            monitor_page1: monitor_pages.0,
            monitor_page2: monitor_pages.1,
        }
    }

    pub const fn version(&self) -> Version {
        Version(self.vmbus_version_requested)
    }

    /// The message SINT (meaningful from version 5.0 on).
    pub const fn msg_sint(&self) -> u8 {
        self.interrupt_page_or_sint as u8
    }

    /// The VTL messages are for (meaningful from version 5.0 on).
    pub const fn msg_vtl(&self) -> u8 {
        (self.interrupt_page_or_sint >> 8) as u8
    }

    /// Feature flags (meaningful from version 5.3 on).
    pub const fn feature_flags(&self) -> u32 {
        (self.interrupt_page_or_sint >> 32) as u32
    }
}

/// CHANNELMSG_VERSION_RESPONSE (`struct vmbus_channel_version_response`), 16 bytes.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C, packed)]
pub struct VersionResponse {
    pub header: MessageHeader,
    /// Non-zero if the requested version is accepted.
    pub version_supported: u8,
    /// `CONNECTION_*`.
    pub connection_state: u8,
    pub padding: u16,
    /// Connection id for later posts (used by guests from version 5.0 on).
    pub msg_conn_id: u32,
}
channel_message!(VersionResponse, VERSION_RESPONSE);

impl VersionResponse {
    pub const CONNECTION_SUCCESSFUL: u8 = 0;
    pub const CONNECTION_FAILED_LOW_RESOURCES: u8 = 1;
    pub const CONNECTION_FAILED_UNKNOWN_FAILURE: u8 = 2;

    pub const fn new(supported: bool, connection_state: u8, msg_conn_id: u32) -> Self {
        Self {
            header: MessageHeader::new(MessageType::VERSION_RESPONSE),
            version_supported: supported as u8,
            connection_state,
            padding: 0,
            msg_conn_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn offer_layout_matches_hyperv_h() {
        assert_eq!(size_of::<ChannelOffer>(), 176);
        assert_eq!(offset_of!(ChannelOffer, if_type), 0);
        assert_eq!(offset_of!(ChannelOffer, if_instance), 16);
        assert_eq!(offset_of!(ChannelOffer, int_latency), 32);
        assert_eq!(offset_of!(ChannelOffer, if_revision), 40);
        assert_eq!(offset_of!(ChannelOffer, server_ctx_area_size), 44);
        assert_eq!(offset_of!(ChannelOffer, chn_flags), 48);
        assert_eq!(offset_of!(ChannelOffer, mmio_megabytes), 50);
        assert_eq!(offset_of!(ChannelOffer, user_def), 52);
        assert_eq!(offset_of!(ChannelOffer, sub_channel_index), 172);
        assert_eq!(offset_of!(ChannelOffer, reserved), 174);

        assert_eq!(size_of::<OfferChannel>(), 196);
        assert_eq!(offset_of!(OfferChannel, offer), 8);
        assert_eq!(offset_of!(OfferChannel, child_relid), 184);
        assert_eq!(offset_of!(OfferChannel, monitorid), 188);
        assert_eq!(offset_of!(OfferChannel, monitor_allocated), 189);
        assert_eq!(offset_of!(OfferChannel, is_dedicated_interrupt), 190);
        assert_eq!(offset_of!(OfferChannel, connection_id), 192);
    }

    #[test]
    fn fixed_message_sizes_match_hyperv_h() {
        assert_eq!(size_of::<RescindChannelOffer>(), 12);
        assert_eq!(size_of::<RequestOffers>(), 8);
        assert_eq!(size_of::<AllOffersDelivered>(), 8);
        assert_eq!(size_of::<OpenChannel>(), 148);
        assert_eq!(size_of::<OpenChannelResult>(), 20);
        assert_eq!(size_of::<CloseChannel>(), 12);
        assert_eq!(size_of::<GpadlHeader>(), 20);
        assert_eq!(size_of::<GpaRangeHeader>(), 8);
        assert_eq!(size_of::<GpadlBody>(), 16);
        assert_eq!(size_of::<GpadlCreated>(), 20);
        assert_eq!(size_of::<GpadlTeardown>(), 16);
        assert_eq!(size_of::<GpadlTorndown>(), 12);
        assert_eq!(size_of::<RelidReleased>(), 12);
        assert_eq!(size_of::<InitiateContact>(), 40);
        assert_eq!(size_of::<VersionResponse>(), 16);
        assert_eq!(size_of::<Unload>(), 8);
        assert_eq!(size_of::<UnloadResponse>(), 8);
        assert_eq!(size_of::<ModifyChannel>(), 16);
        assert_eq!(size_of::<ModifyChannelResponse>(), 16);
    }

    #[test]
    fn field_offsets_match_hyperv_h() {
        assert_eq!(offset_of!(RescindChannelOffer, child_relid), 8);
        assert_eq!(offset_of!(OpenChannel, child_relid), 8);
        assert_eq!(offset_of!(OpenChannel, openid), 12);
        assert_eq!(offset_of!(OpenChannel, ringbuffer_gpadlhandle), 16);
        assert_eq!(offset_of!(OpenChannel, target_vp), 20);
        assert_eq!(
            offset_of!(OpenChannel, downstream_ringbuffer_pageoffset),
            24
        );
        assert_eq!(offset_of!(OpenChannel, userdata), 28);
        assert_eq!(offset_of!(OpenChannelResult, child_relid), 8);
        assert_eq!(offset_of!(OpenChannelResult, openid), 12);
        assert_eq!(offset_of!(OpenChannelResult, status), 16);
        assert_eq!(offset_of!(CloseChannel, child_relid), 8);
        assert_eq!(offset_of!(GpadlHeader, child_relid), 8);
        assert_eq!(offset_of!(GpadlHeader, gpadl), 12);
        assert_eq!(offset_of!(GpadlHeader, range_buflen), 16);
        assert_eq!(offset_of!(GpadlHeader, rangecount), 18);
        assert_eq!(offset_of!(GpaRangeHeader, byte_offset), 4);
        assert_eq!(offset_of!(GpadlBody, msgnumber), 8);
        assert_eq!(offset_of!(GpadlBody, gpadl), 12);
        assert_eq!(offset_of!(GpadlCreated, child_relid), 8);
        assert_eq!(offset_of!(GpadlCreated, gpadl), 12);
        assert_eq!(offset_of!(GpadlCreated, creation_status), 16);
        assert_eq!(offset_of!(GpadlTeardown, child_relid), 8);
        assert_eq!(offset_of!(GpadlTeardown, gpadl), 12);
        assert_eq!(offset_of!(GpadlTorndown, gpadl), 8);
        assert_eq!(offset_of!(RelidReleased, child_relid), 8);
        assert_eq!(offset_of!(InitiateContact, vmbus_version_requested), 8);
        assert_eq!(offset_of!(InitiateContact, target_vcpu), 12);
        assert_eq!(offset_of!(InitiateContact, interrupt_page_or_sint), 16);
        assert_eq!(offset_of!(InitiateContact, monitor_page1), 24);
        assert_eq!(offset_of!(InitiateContact, monitor_page2), 32);
        assert_eq!(offset_of!(VersionResponse, version_supported), 8);
        assert_eq!(offset_of!(VersionResponse, connection_state), 9);
        assert_eq!(offset_of!(VersionResponse, padding), 10);
        assert_eq!(offset_of!(VersionResponse, msg_conn_id), 12);
        assert_eq!(offset_of!(ModifyChannel, child_relid), 8);
        assert_eq!(offset_of!(ModifyChannel, target_vp), 12);
        assert_eq!(offset_of!(ModifyChannelResponse, child_relid), 8);
        assert_eq!(offset_of!(ModifyChannelResponse, status), 12);
    }

    #[test]
    fn initiate_contact_union() {
        let v5 = InitiateContact::new(Version::WIN10_V5_2, 3, 2, 0xdead_0000, (0x1000, 0x2000));
        assert_eq!(v5.msg_sint(), 2);
        assert_eq!(v5.msg_vtl(), 0);
        assert_eq!(v5.feature_flags(), 0);
        assert_eq!(v5.version(), Version::WIN10_V5_2);
        let bytes = v5.as_bytes();
        assert_eq!(&bytes[0..4], &14u32.to_le_bytes());
        assert_eq!(&bytes[8..12], &((5u32 << 16) | 2).to_le_bytes());
        assert_eq!(&bytes[12..16], &3u32.to_le_bytes());
        assert_eq!(&bytes[16..24], &2u64.to_le_bytes());
        let old = InitiateContact::new(Version::WIN10, 0, 2, 0xdead_0000, (0, 0));
        assert_eq!({ old.interrupt_page_or_sint }, 0xdead_0000);
    }

    #[test]
    fn offer_defaults_and_bits() {
        let offer = ChannelOffer::new(crate::protocol::interface::SCSI, Guid::ZERO);
        let msg = OfferChannel::new(offer, 7, 0x1007);
        assert!(msg.has_dedicated_interrupt());
        assert!(!msg.is_monitor_allocated());
        let bytes = msg.as_bytes();
        assert_eq!(bytes.len(), 196);
        assert_eq!(&bytes[0..4], &1u32.to_le_bytes());
        assert_eq!(&bytes[184..188], &7u32.to_le_bytes());
        assert_eq!(bytes[190], 1);
        assert_eq!(&bytes[192..196], &0x1007u32.to_le_bytes());
        let mut piped = offer;
        piped.user_def[..4].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(piped.pipe_mode(), 1);
    }

    #[test]
    fn user_defined_bounds() {
        assert_eq!(user_defined(&[1, 2]).unwrap()[..3], [1, 2, 0]);
        assert!(user_defined(&[0; 120]).is_ok());
        assert_eq!(
            user_defined(&[0; 121]),
            Err(ProtocolError::UserDataTooLong { len: 121 })
        );
    }
}
