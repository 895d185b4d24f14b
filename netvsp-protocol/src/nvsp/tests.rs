//! Layout and behaviour tests of [`super`] against Linux's definitions.
use super::*;
use core::mem::offset_of;

#[test]
fn body_layouts_match_linux() {
    assert_eq!(size_of::<Init>(), 8);
    assert_eq!(size_of::<InitComplete>(), 12);
    assert_eq!(offset_of!(InitComplete, status), 8);
    assert_eq!(size_of::<SendNdisVersion>(), 8);
    assert_eq!(size_of::<SendReceiveBuffer>(), 6);
    assert_eq!(offset_of!(SendReceiveBuffer, id), 4);
    assert_eq!(size_of::<ReceiveBufferSection>(), 16);
    assert_eq!(offset_of!(ReceiveBufferSection, sub_allocation_size), 4);
    assert_eq!(offset_of!(ReceiveBufferSection, sub_allocation_count), 8);
    assert_eq!(offset_of!(ReceiveBufferSection, end_offset), 12);
    assert_eq!(size_of::<SendReceiveBufferComplete>(), 24);
    assert_eq!(offset_of!(SendReceiveBufferComplete, section_count), 4);
    assert_eq!(offset_of!(SendReceiveBufferComplete, section), 8);
    assert_eq!(size_of::<RevokeBuffer>(), 2);
    assert_eq!(size_of::<SendSendBuffer>(), 6);
    assert_eq!(size_of::<SendSendBufferComplete>(), 8);
    assert_eq!(offset_of!(SendSendBufferComplete, section_size), 4);
    assert_eq!(size_of::<SendRndisPacket>(), 12);
    assert_eq!(offset_of!(SendRndisPacket, send_buffer_section_index), 4);
    assert_eq!(offset_of!(SendRndisPacket, send_buffer_section_size), 8);
    assert_eq!(size_of::<SendRndisPacketComplete>(), 4);
    assert_eq!(size_of::<SendNdisConfig>(), 16);
    assert_eq!(offset_of!(SendNdisConfig, capabilities), 8);
    assert_eq!(size_of::<VfAssociation>(), 8);
    assert_eq!(size_of::<SwitchDataPath>(), 4);
    assert_eq!(size_of::<SubchannelRequest>(), 8);
    assert_eq!(size_of::<SubchannelComplete>(), 8);
    assert_eq!(size_of::<SendIndirectionTable>(), 8);
    assert_eq!(size_of::<NvspMessage>(), NVSP_MESSAGE_SIZE);
    assert_eq!(offset_of!(NvspMessage, body), 4);
}

#[test]
fn linux_minimum_sizes() {
    assert_eq!(MIN_INIT_COMPLETE_LEN, 28);
    assert_eq!(MIN_RECEIVE_BUFFER_COMPLETE_LEN, 28);
    assert_eq!(MIN_SEND_BUFFER_COMPLETE_LEN, 12);
    assert_eq!(RNDIS_PACKET_COMPLETE_LEN, 8);
}

#[test]
fn codes_match_linux() {
    assert_eq!(
        LINUX_NVSP_VERSIONS.map(|v| v.0),
        [0x60001, 0x60000, 0x50000, 0x40000, 0x30002, 0x2]
    );
    assert_eq!(MessageType::SEND_NDIS_VERSION.0, 100);
    assert_eq!(MessageType::SEND_RNDIS_PACKET_COMPLETE.0, 108);
    assert_eq!(MessageType::SEND_NDIS_CONFIG.0, 125);
    assert_eq!(MessageType::SWITCH_DATA_PATH.0, 129);
    assert_eq!(MessageType::SUBCHANNEL.0, 133);
    assert_eq!(MessageType::SEND_INDIRECTION_TABLE.0, 134);
    assert_eq!(NvspStatus::PROTOCOL_UNSUPPORTED.0, 7);
    assert_eq!(RECEIVE_BUFFER_ID, 0xCAFE);
    assert_eq!(ndis_version_for(NvspVersion::V4), (6, 1));
    assert_eq!(ndis_version_for(NvspVersion::V5), (6, 30));
    assert!(NvspVersion::V2 < NvspVersion::V4);
    let caps = VscCapabilities::IEEE_8021Q | VscCapabilities::SRIOV;
    assert_eq!(caps.0, 0b1100);
    assert!(caps.contains(VscCapabilities::SRIOV));
    assert!(!caps.contains(VscCapabilities::RSC));
}

#[test]
fn messages_roundtrip_and_short_bodies_are_refused() {
    let body = SendRndisPacket {
        channel_type: U32::new(RndisChannelType::CONTROL.0),
        send_buffer_section_index: U32::new(INVALID_SECTION_INDEX),
        send_buffer_section_size: U32::new(0),
    };
    let m = NvspMessage::new(MessageType::SEND_RNDIS_PACKET, &body);
    assert_eq!(m.as_wire().len(), 40);
    assert_eq!(&m.as_wire()[..8], &[107, 0, 0, 0, 1, 0, 0, 0]);
    let r = NvspMessageRef::parse(m.as_wire()).unwrap();
    assert_eq!(r.message_type, MessageType::SEND_RNDIS_PACKET);
    assert_eq!(r.body_as::<SendRndisPacket>().unwrap(), body);

    let short = NvspMessageRef::parse(&m.as_wire()[..10]).unwrap();
    assert_eq!(
        short.body_as::<SendRndisPacket>(),
        Err(NvspError::ShortBody {
            message_type: MessageType::SEND_RNDIS_PACKET,
            have: 6,
            need: 12
        })
    );
    assert_eq!(
        NvspMessageRef::parse(&[1, 2, 3]).unwrap_err(),
        NvspError::NoType { len: 3 }
    );
}
