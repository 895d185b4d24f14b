//! Parsing a received channel message into a typed [`Message`], validating its length for its type.

use super::*;
use zerocopy::byteorder::little_endian::U64;

/// A parsed channel message, borrowing the received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    OfferChannel(&'a OfferChannel),
    RescindChannelOffer(&'a RescindChannelOffer),
    RequestOffers,
    AllOffersDelivered,
    OpenChannel(&'a OpenChannel),
    OpenChannelResult(&'a OpenChannelResult),
    CloseChannel(&'a CloseChannel),
    GpadlHeader(GpadlHeaderMessage<'a>),
    GpadlBody(GpadlBodyMessage<'a>),
    GpadlCreated(&'a GpadlCreated),
    GpadlTeardown(&'a GpadlTeardown),
    GpadlTorndown(&'a GpadlTorndown),
    RelidReleased(&'a RelidReleased),
    InitiateContact(&'a InitiateContact),
    VersionResponse(&'a VersionResponse),
    Unload,
    UnloadResponse,
    ModifyChannel(&'a ModifyChannel),
    ModifyChannelResponse(&'a ModifyChannelResponse),
}

/// GPADL_HEADER: the fixed part and the range data this message carries, in 8-byte units
/// (range heads and PFNs; more may follow in GPADL_BODY messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpadlHeaderMessage<'a> {
    pub header: &'a GpadlHeader,
    pub range_data: &'a [U64],
}

/// GPADL_BODY: the fixed part and the PFNs (8-byte units) it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpadlBodyMessage<'a> {
    pub body: &'a GpadlBody,
    pub pfns: &'a [U64],
}

impl Message<'_> {
    /// The message type of this message.
    pub fn message_type(&self) -> MessageType {
        match self {
            Self::OfferChannel(_) => MessageType::OFFERCHANNEL,
            Self::RescindChannelOffer(_) => MessageType::RESCIND_CHANNELOFFER,
            Self::RequestOffers => MessageType::REQUESTOFFERS,
            Self::AllOffersDelivered => MessageType::ALLOFFERS_DELIVERED,
            Self::OpenChannel(_) => MessageType::OPENCHANNEL,
            Self::OpenChannelResult(_) => MessageType::OPENCHANNEL_RESULT,
            Self::CloseChannel(_) => MessageType::CLOSECHANNEL,
            Self::GpadlHeader(_) => MessageType::GPADL_HEADER,
            Self::GpadlBody(_) => MessageType::GPADL_BODY,
            Self::GpadlCreated(_) => MessageType::GPADL_CREATED,
            Self::GpadlTeardown(_) => MessageType::GPADL_TEARDOWN,
            Self::GpadlTorndown(_) => MessageType::GPADL_TORNDOWN,
            Self::RelidReleased(_) => MessageType::RELID_RELEASED,
            Self::InitiateContact(_) => MessageType::INITIATE_CONTACT,
            Self::VersionResponse(_) => MessageType::VERSION_RESPONSE,
            Self::Unload => MessageType::UNLOAD,
            Self::UnloadResponse => MessageType::UNLOAD_RESPONSE,
            Self::ModifyChannel(_) => MessageType::MODIFYCHANNEL,
            Self::ModifyChannelResponse(_) => MessageType::MODIFYCHANNEL_RESPONSE,
        }
    }
}

/// Borrows the fixed struct `T` from the front of `bytes`; trailing bytes are allowed (hosts and
/// guests of other versions may send longer messages).
fn fixed<T: ChannelMessage>(bytes: &[u8]) -> Result<&T, ProtocolError> {
    T::ref_from_prefix(bytes)
        .map(|(msg, _)| msg)
        .map_err(|_| ProtocolError::TooShort {
            msgtype: T::TYPE,
            len: bytes.len(),
            min: size_of::<T>(),
        })
}

/// Borrows a fixed part `T` followed by whole 8-byte units filling the rest of the message.
fn with_units<T: FromBytes + KnownLayout + Immutable + Unaligned>(
    msgtype: MessageType,
    bytes: &[u8],
) -> Result<(&T, &[U64]), ProtocolError> {
    let (head, rest) = T::ref_from_prefix(bytes).map_err(|_| ProtocolError::TooShort {
        msgtype,
        len: bytes.len(),
        min: size_of::<T>(),
    })?;
    let units = <[U64]>::ref_from_bytes(rest).map_err(|_| ProtocolError::PartialPfn {
        msgtype,
        extra: rest.len() % 8,
    })?;
    Ok((head, units))
}

/// Parses one channel message (header included), validating its length for its type:
/// at most [`MAX_MESSAGE_SIZE`] bytes, at least the fixed size of its struct, and for GPADL messages
/// a whole number of 8-byte PFN units after the fixed part.
pub fn parse_message(bytes: &[u8]) -> Result<Message<'_>, ProtocolError> {
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(ProtocolError::TooLong { len: bytes.len() });
    }
    let (header, _) = MessageHeader::ref_from_prefix(bytes)
        .map_err(|_| ProtocolError::NoHeader { len: bytes.len() })?;
    Ok(match header.msgtype {
        MessageType::OFFERCHANNEL => Message::OfferChannel(fixed(bytes)?),
        MessageType::RESCIND_CHANNELOFFER => Message::RescindChannelOffer(fixed(bytes)?),
        MessageType::REQUESTOFFERS => {
            fixed::<RequestOffers>(bytes)?;
            Message::RequestOffers
        }
        MessageType::ALLOFFERS_DELIVERED => {
            fixed::<AllOffersDelivered>(bytes)?;
            Message::AllOffersDelivered
        }
        MessageType::OPENCHANNEL => Message::OpenChannel(fixed(bytes)?),
        MessageType::OPENCHANNEL_RESULT => Message::OpenChannelResult(fixed(bytes)?),
        MessageType::CLOSECHANNEL => Message::CloseChannel(fixed(bytes)?),
        MessageType::GPADL_HEADER => {
            let (header, range_data) = with_units::<GpadlHeader>(MessageType::GPADL_HEADER, bytes)?;
            Message::GpadlHeader(GpadlHeaderMessage { header, range_data })
        }
        MessageType::GPADL_BODY => {
            let (body, pfns) = with_units::<GpadlBody>(MessageType::GPADL_BODY, bytes)?;
            Message::GpadlBody(GpadlBodyMessage { body, pfns })
        }
        MessageType::GPADL_CREATED => Message::GpadlCreated(fixed(bytes)?),
        MessageType::GPADL_TEARDOWN => Message::GpadlTeardown(fixed(bytes)?),
        MessageType::GPADL_TORNDOWN => Message::GpadlTorndown(fixed(bytes)?),
        MessageType::RELID_RELEASED => Message::RelidReleased(fixed(bytes)?),
        MessageType::INITIATE_CONTACT => Message::InitiateContact(fixed(bytes)?),
        MessageType::VERSION_RESPONSE => Message::VersionResponse(fixed(bytes)?),
        MessageType::UNLOAD => {
            fixed::<Unload>(bytes)?;
            Message::Unload
        }
        MessageType::UNLOAD_RESPONSE => {
            fixed::<UnloadResponse>(bytes)?;
            Message::UnloadResponse
        }
        MessageType::MODIFYCHANNEL => Message::ModifyChannel(fixed(bytes)?),
        MessageType::MODIFYCHANNEL_RESPONSE => Message::ModifyChannelResponse(fixed(bytes)?),
        other => return Err(ProtocolError::UnknownType(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_fixed_messages() -> [MessageBuf; 17] {
        let offer = ChannelOffer::new(interface::NETWORK, Guid::new(1, 2, 3, [4; 8]));
        [
            OfferChannel::new(offer, 5, 0x2005).to_message(),
            RescindChannelOffer::new(5).to_message(),
            RequestOffers::new().to_message(),
            AllOffersDelivered::new().to_message(),
            OpenChannel::new(5, 5, 0xe1e10, 1, 4, [7; 120]).to_message(),
            OpenChannelResult::new(5, 5, 0).to_message(),
            CloseChannel::new(5).to_message(),
            GpadlCreated::new(5, 0xe1e10, 0).to_message(),
            GpadlTeardown::new(5, 0xe1e10).to_message(),
            GpadlTorndown::new(0xe1e10).to_message(),
            RelidReleased::new(5).to_message(),
            InitiateContact::new(Version::WIN10_V5_3, 0, 2, 0, (0x1000, 0x2000)).to_message(),
            VersionResponse::new(true, 0, 4).to_message(),
            Unload::new().to_message(),
            UnloadResponse::new().to_message(),
            ModifyChannel::new(5, 3).to_message(),
            ModifyChannelResponse::new(5, 0).to_message(),
        ]
    }

    #[test]
    fn every_builder_parses_back_to_its_type() {
        for buf in all_fixed_messages() {
            let msg = buf.parse().unwrap();
            assert_eq!(msg.message_type(), buf.message_type());
        }
        let buf = OpenChannel::new(5, 6, 7, 1, 4, [7; 120]).to_message();
        match buf.parse().unwrap() {
            Message::OpenChannel(m) => {
                assert_eq!({ m.openid }, 6);
                assert_eq!({ m.ringbuffer_gpadlhandle }, 7);
                assert_eq!({ m.downstream_ringbuffer_pageoffset }, 4);
                assert_eq!(m.userdata, [7; 120]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_messages_are_rejected_extended_accepted() {
        for buf in all_fixed_messages() {
            let bytes = buf.as_bytes();
            for cut in 0..bytes.len() {
                assert!(parse_message(&bytes[..cut]).is_err(), "{buf:?} cut {cut}");
            }
            let mut longer = bytes.to_vec();
            longer.resize(MAX_MESSAGE_SIZE, 0);
            assert_eq!(
                parse_message(&longer).unwrap().message_type(),
                buf.message_type()
            );
            longer.push(0);
            assert_eq!(
                parse_message(&longer),
                Err(ProtocolError::TooLong { len: 241 })
            );
        }
    }

    #[test]
    fn unknown_and_headerless() {
        assert_eq!(
            parse_message(&[1, 2, 3]),
            Err(ProtocolError::NoHeader { len: 3 })
        );
        let unknown = MessageHeader::new(MessageType(23));
        assert_eq!(
            parse_message(unknown.as_bytes()),
            Err(ProtocolError::UnknownType(MessageType(23)))
        );
        assert_eq!(
            parse_message(&[0; 8]),
            Err(ProtocolError::UnknownType(MessageType::INVALID))
        );
    }

    #[test]
    fn gpadl_messages_need_whole_units() {
        let buf = MessageBuf::with_pfns(&GpadlBody::new(1, 9), &[10, 11, 12]).unwrap();
        match buf.parse().unwrap() {
            Message::GpadlBody(b) => {
                assert_eq!({ b.body.gpadl }, 9);
                let pfns: Vec<u64> = b.pfns.iter().map(|p| p.get()).collect();
                assert_eq!(pfns, [10, 11, 12]);
            }
            other => panic!("{other:?}"),
        }
        let mut bytes = buf.as_bytes().to_vec();
        bytes.push(0);
        assert_eq!(
            parse_message(&bytes),
            Err(ProtocolError::PartialPfn {
                msgtype: MessageType::GPADL_BODY,
                extra: 1
            })
        );
        let hdr = MessageBuf::with_pfns(&GpadlHeader::new(1, 2, 16, 1), &[4096, 77]).unwrap();
        match hdr.parse().unwrap() {
            Message::GpadlHeader(h) => {
                assert_eq!(h.range_data.len(), 2);
                assert_eq!({ h.header.range_buflen }, 16);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_message(&hdr.as_bytes()[..19]).is_err());
        assert!(parse_message(&hdr.as_bytes()[..27]).is_err());
    }
}
