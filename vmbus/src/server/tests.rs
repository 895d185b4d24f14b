//! Server tests with hand-built (often hostile) guest messages.

use super::*;
use crate::gpadl::{GpaRange, GpadlMessages};
use crate::protocol::{
    interface, CloseChannel, GpadlBody, GpadlCreated, GpadlHeader, GpadlTeardown, ModifyChannel,
    OpenChannel, RelidReleased, RequestOffers, Unload, STATUS_INVALID_PARAMETER,
};
use alloc::vec;

const CONN: u32 = 4;

fn drain(server: &mut Server) -> Vec<ServerAction> {
    core::iter::from_fn(|| server.poll_action()).collect()
}

/// Types of the messages sent to the guest.
fn sent(actions: &[ServerAction]) -> Vec<Message<'_>> {
    actions
        .iter()
        .filter_map(|a| match a {
            ServerAction::SendToGuest { message, .. } => Some(message.parse().unwrap()),
            _ => None,
        })
        .collect()
}

fn post<T: ChannelMessage>(server: &mut Server, msg: &T) -> Result<PostOutcome, ServerError> {
    server.handle_post(CONN, msg.to_message().as_bytes())
}

/// A server with `n` offers, connected at 5.3 and enumerated.
fn connected(config: ServerConfig, n: usize) -> Server {
    let mut server = Server::new(config);
    for i in 0..n {
        server
            .add_offer(OfferConfig::new(
                interface::SCSI,
                Guid::new(i as u32, 0, 0, [0; 8]),
            ))
            .unwrap();
    }
    let contact = InitiateContact::new(Version::WIN10_V5_3, 0, 2, 0, (0, 0));
    assert_eq!(post(&mut server, &contact), Ok(PostOutcome::Accepted));
    post(&mut server, &RequestOffers::new()).unwrap();
    drain(&mut server);
    server
}

fn make_gpadl(server: &mut Server, relid: u32, gpadl: u32, pages: usize) {
    let pfns: Vec<u64> = (0..pages as u64).map(|p| 0x100 + p).collect();
    let range = GpaRange::whole_pages(&pfns).unwrap();
    for msg in GpadlMessages::new(relid, gpadl, range).unwrap() {
        server.handle_post(CONN, msg.as_bytes()).unwrap();
    }
    assert!(server.gpadl(gpadl).is_some());
    drain(server);
}

fn open(relid: u32, gpadl: u32, offset: u32, vp: u32) -> OpenChannel {
    OpenChannel::new(relid, relid, gpadl, vp, offset, [0; 120])
}

#[test]
fn contact_checks() {
    let mut server = Server::new(ServerConfig {
        vp_count: 2,
        versions: vec![Version::WIN10_V5_3],
        ..ServerConfig::default()
    });
    // Messages before contact, and host→guest types.
    assert_eq!(
        post(&mut server, &RequestOffers::new()),
        Err(ServerError::NotConnected(MessageType::REQUESTOFFERS))
    );
    assert_eq!(
        post(&mut server, &GpadlCreated::new(1, 1, 0)),
        Err(ServerError::NotGuestMessage(MessageType::GPADL_CREATED))
    );
    assert!(matches!(
        server.handle_post(CONN, &[14, 0, 0, 0]),
        Err(ServerError::Protocol(_))
    ));
    let bad_vp = InitiateContact::new(Version::WIN10_V5_3, 2, 2, 0, (0, 0));
    assert_eq!(post(&mut server, &bad_vp), Err(ServerError::BadVp(2)));
    let bad_sint = InitiateContact::new(Version::WIN10_V5_3, 0, 16, 0, (0, 0));
    assert_eq!(post(&mut server, &bad_sint), Err(ServerError::BadSint(16)));
    let mut vtl = InitiateContact::new(Version::WIN10_V5_3, 0, 2, 0, (0, 0));
    vtl.interrupt_page_or_sint |= 1 << 8;
    assert_eq!(post(&mut server, &vtl), Err(ServerError::BadVtl(1)));
    assert!(drain(&mut server).is_empty());
    // Unsupported version: answered on the named VP/SINT, still disconnected.
    let old = InitiateContact::new(Version::WIN10_V5_2, 1, 3, 0, (0, 0));
    assert_eq!(post(&mut server, &old), Ok(PostOutcome::Accepted));
    let actions = drain(&mut server);
    assert!(matches!(
        &actions[..],
        [ServerAction::SendToGuest { vp: 1, sint: 3, message }]
            if matches!(message.parse(), Ok(Message::VersionResponse(r)) if r.version_supported == 0)
    ));
    assert_eq!(server.version(), None);
    let good = InitiateContact::new(Version::WIN10_V5_3, 1, 3, 0, (0, 0));
    assert_eq!(post(&mut server, &good), Ok(PostOutcome::Accepted));
    assert_eq!(post(&mut server, &good), Err(ServerError::AlreadyConnected));
    // After connecting, posts must use the message connection id.
    assert_eq!(
        server.handle_post(1, RequestOffers::new().to_message().as_bytes()),
        Ok(PostOutcome::InvalidConnectionId)
    );
    post(&mut server, &RequestOffers::new()).unwrap();
    assert_eq!(
        post(&mut server, &RequestOffers::new()),
        Err(ServerError::OffersAlreadyRequested)
    );
}

#[test]
fn gpadl_hostile_cases() {
    let limits = ServerLimits {
        max_pending_gpadls: 2,
        max_total_pfns: 100,
        ..ServerLimits::default()
    };
    let mut server = connected(
        ServerConfig {
            limits,
            ..ServerConfig::default()
        },
        2,
    );
    let header = |relid, gpadl, pages: u16| {
        MessageBuf::with_pfns(
            &GpadlHeader::new(relid, gpadl, 8 + 8 * pages, 1),
            &[u64::from(pages) * 4096, 1],
        )
        .unwrap()
    };
    let post_buf = |s: &mut Server, b: &MessageBuf| s.handle_post(CONN, b.as_bytes());
    assert_eq!(
        post_buf(&mut server, &header(9, 1, 30)),
        Err(ServerError::UnknownChannel(9))
    );
    assert!(drain(&mut server).is_empty());
    // Two pending GPADLs are the limit; the third is refused with a failure answer.
    post_buf(&mut server, &header(1, 1, 30)).unwrap();
    post_buf(&mut server, &header(1, 2, 30)).unwrap();
    assert_eq!(
        post_buf(&mut server, &header(1, 1, 30)),
        Err(ServerError::DuplicateGpadl(1))
    );
    assert_eq!(
        post_buf(&mut server, &header(2, 3, 30)),
        Err(ServerError::Limit("pending GPADLs"))
    );
    let actions = drain(&mut server);
    assert!(matches!(
        sent(&actions)[..],
        [Message::GpadlCreated(c)] if c.gpadl == 3 && c.creation_status != 0
    ));
    assert_eq!(server.reserved_pfns(), 60);
    // A bad body abandons its GPADL, frees its pages and tells the guest.
    let bad = MessageBuf::with_pfns(&GpadlBody::new(1, 1), &[5; 29]);
    assert!(bad.is_none(), "29 PFNs do not fit a body");
    let overflow = MessageBuf::with_pfns(&GpadlBody::new(1, 2), &[5; 28]).unwrap();
    post_buf(&mut server, &overflow).unwrap();
    assert!(matches!(
        post_buf(&mut server, &overflow),
        Err(ServerError::Gpadl {
            gpadl: 2,
            error: GpadlError::BodyOverflow { .. }
        })
    ));
    assert_eq!(server.reserved_pfns(), 30);
    assert!(drain(&mut server).iter().any(|a| matches!(
        a, ServerAction::SendToGuest { message, .. }
            if matches!(message.parse(), Ok(Message::GpadlCreated(c)) if c.gpadl == 2 && c.creation_status == STATUS_INVALID_PARAMETER)
    )));
    assert_eq!(
        post_buf(&mut server, &overflow),
        Err(ServerError::UnknownGpadl(2))
    );
    // Total page budget: 30 reserved, 71 more is too many.
    assert_eq!(
        post_buf(&mut server, &header(2, 4, 71)),
        Err(ServerError::Limit("total GPADL pages"))
    );
    // Invalid range data is answered with a failure.
    let zero = MessageBuf::with_pfns(&GpadlHeader::new(2, 5, 16, 1), &[0, 1]).unwrap();
    assert!(matches!(
        post_buf(&mut server, &zero),
        Err(ServerError::Gpadl { gpadl: 5, .. })
    ));
    // A body for a completed GPADL is refused without touching it.
    make_gpadl(&mut server, 2, 6, 4);
    let extra = MessageBuf::with_pfns(&GpadlBody::new(1, 6), &[1]).unwrap();
    assert_eq!(
        post_buf(&mut server, &extra),
        Err(ServerError::GpadlNotPending(6))
    );
    assert_eq!(server.gpadl(6).unwrap().total_pfns(), 4);
    server.check_invariants().unwrap();
}

#[test]
fn open_hostile_cases() {
    let mut server = connected(
        ServerConfig {
            vp_count: 2,
            ..ServerConfig::default()
        },
        2,
    );
    make_gpadl(&mut server, 1, 10, 8);
    make_gpadl(&mut server, 2, 20, 8);
    assert_eq!(
        post(&mut server, &open(7, 10, 4, 0)),
        Err(ServerError::UnknownChannel(7))
    );
    assert!(drain(&mut server).is_empty());
    let refused = |server: &mut Server, msg: OpenChannel, err: ServerError| {
        assert_eq!(post(server, &msg), Err(err));
        let actions = drain(server);
        assert!(matches!(
            sent(&actions)[..],
            [Message::OpenChannelResult(r)] if r.status == STATUS_INVALID_PARAMETER
        ));
    };
    refused(
        &mut server,
        open(1, 99, 4, 0),
        ServerError::UnknownGpadl(99),
    );
    refused(
        &mut server,
        open(1, 20, 4, 0),
        ServerError::GpadlWrongChannel {
            gpadl: 20,
            relid: 1,
            owner: 2,
        },
    );
    refused(
        &mut server,
        open(1, 10, 7, 0),
        ServerError::BadRingSplit {
            offset: 7,
            pages: 8,
        },
    );
    refused(&mut server, open(1, 10, 4, 2), ServerError::BadVp(2));
    // A partial-page GPADL cannot hold rings.
    let partial = MessageBuf::with_pfns(
        &GpadlHeader::new(1, 11, 8 + 8 * 4, 1),
        &[(3 * 4096 + 100) | (5 << 32), 1, 2, 3, 4],
    )
    .unwrap();
    server.handle_post(CONN, partial.as_bytes()).unwrap();
    drain(&mut server);
    refused(
        &mut server,
        open(1, 11, 2, 0),
        ServerError::NotARingGpadl(11),
    );

    post(&mut server, &open(1, 10, 4, 1)).unwrap();
    let actions = drain(&mut server);
    assert!(matches!(
        &actions[..],
        [ServerAction::OpenChannel { relid: 1, gpadl: 10, downstream_page_offset: 4, target_vp: 1, pfns, .. }]
            if pfns.len() == 8
    ));
    // The guest hears the result only once the host answers; a second answer is refused.
    server.complete_open(1, 0).unwrap();
    assert!(matches!(
        &drain(&mut server)[..],
        [ServerAction::SendToGuest { .. }]
    ));
    assert_eq!(server.complete_open(1, 0), Err(ServerError::AlreadyOpen(1)));
    assert_eq!(
        post(&mut server, &open(1, 10, 4, 1)),
        Err(ServerError::AlreadyOpen(1))
    );
    assert_eq!(
        post(&mut server, &GpadlTeardown::new(1, 10)),
        Err(ServerError::GpadlInUse {
            gpadl: 10,
            relid: 1
        })
    );
    assert_eq!(
        post(&mut server, &GpadlTeardown::new(2, 10)),
        Err(ServerError::GpadlWrongChannel {
            gpadl: 10,
            relid: 2,
            owner: 1
        })
    );
    assert_eq!(
        post(&mut server, &ModifyChannel::new(1, 5)),
        Err(ServerError::BadVp(5))
    );
    assert_eq!(
        post(&mut server, &CloseChannel::new(2)),
        Err(ServerError::NotOpen(2))
    );
    assert_eq!(
        post(&mut server, &RelidReleased::new(2)),
        Err(ServerError::ChannelNotRevoked(2))
    );
    assert_eq!(server.channel(1).unwrap().open.unwrap().target_vp, 1);
    server.check_invariants().unwrap();
}

#[test]
fn modify_channel_needs_version_4_1() {
    let mut server = Server::new(ServerConfig::default());
    server
        .add_offer(OfferConfig::new(interface::SCSI, Guid::ZERO))
        .unwrap();
    let contact = InitiateContact::new(Version::WIN10, 0, 2, 0, (0, 0));
    server
        .handle_post(1, contact.to_message().as_bytes())
        .unwrap();
    assert_eq!(
        server.handle_post(1, ModifyChannel::new(1, 0).to_message().as_bytes()),
        Err(ServerError::Unsupported(MessageType::MODIFYCHANNEL))
    );
}

#[test]
fn offers_rescind_and_limits() {
    let mut server = Server::new(ServerConfig {
        limits: ServerLimits {
            max_channels: 2,
            ..ServerLimits::default()
        },
        ..ServerConfig::default()
    });
    let a = server
        .add_offer(OfferConfig::new(interface::SCSI, Guid::ZERO))
        .unwrap();
    let mut bad = OfferConfig::new(interface::IDE, Guid::ZERO);
    bad.connection_id = Some(0x100_0000);
    assert_eq!(
        server.add_offer(bad),
        Err(ServerError::BadConnectionId(0x100_0000))
    );
    server
        .add_offer(OfferConfig::new(interface::IDE, Guid::ZERO))
        .unwrap();
    assert_eq!(
        server.add_offer(OfferConfig::new(interface::NETWORK, Guid::ZERO)),
        Err(ServerError::Limit("channels"))
    );
    // Never seen by a guest: gone at once.
    server.rescind(a).unwrap();
    assert_eq!(
        drain(&mut server),
        [ServerAction::ChannelReleased { relid: a }]
    );
    assert_eq!(server.rescind(a), Err(ServerError::UnknownChannel(a)));
    assert_eq!(server.channel(2).unwrap().connection_id, 0x1002);
    // A guest cannot use a channel it was never offered.
    let contact = InitiateContact::new(Version::WIN10_V5_3, 0, 2, 0, (0, 0));
    post(&mut server, &contact).unwrap();
    let hdr = MessageBuf::with_pfns(&GpadlHeader::new(2, 1, 16, 1), &[4096, 1]).unwrap();
    assert_eq!(
        server.handle_post(CONN, hdr.as_bytes()),
        Err(ServerError::NotOffered(2))
    );
    post(&mut server, &RequestOffers::new()).unwrap();
    server.rescind(2).unwrap();
    assert_eq!(server.rescind(2), Err(ServerError::ChannelRevoked(2)));
    assert_eq!(
        server.handle_post(CONN, hdr.as_bytes()),
        Err(ServerError::ChannelRevoked(2))
    );
    post(&mut server, &Unload::new()).unwrap();
    let actions = drain(&mut server);
    assert!(actions.contains(&ServerAction::ChannelReleased { relid: 2 }));
    assert_eq!(actions.last(), Some(&ServerAction::Unloaded));
    assert!(matches!(
        sent(&actions).last(),
        Some(Message::UnloadResponse)
    ));
}

#[test]
fn gpadl_pages_outside_guest_ram_fail() {
    let mut server = connected(
        ServerConfig {
            guest_pfns: vec![0x100..0x110, 0x1000..0x1004],
            ..ServerConfig::default()
        },
        1,
    );
    // Pages 0x100..0x108 are RAM: accepted.
    make_gpadl(&mut server, 1, 7, 8);
    // 40 pages from 0x100 run past 0x110: refused with an error status, nothing reaches the devices.
    let pfns: Vec<u64> = (0..40).map(|p| 0x100 + p).collect();
    let range = GpaRange::whole_pages(&pfns).unwrap();
    let mut last = Ok(PostOutcome::Accepted);
    for msg in GpadlMessages::new(1, 8, range).unwrap() {
        last = server.handle_post(CONN, msg.as_bytes());
    }
    assert_eq!(
        last,
        Err(ServerError::GpadlOutsideRam {
            gpadl: 8,
            pfn: 0x110
        })
    );
    let actions = drain(&mut server);
    assert!(!actions
        .iter()
        .any(|a| matches!(a, ServerAction::GpadlReady { .. })));
    assert!(sent(&actions)
        .iter()
        .any(|m| matches!(m, Message::GpadlCreated(c) if c.gpadl == 8 && c.creation_status != 0)));
    assert!(server.gpadl(8).is_none());
    assert_eq!(server.check_invariants(), Ok(()));
    // The accepted GPADL is untouched.
    assert!(server.gpadl(7).is_some());
}

#[test]
fn a_failed_device_open_closes_the_channel_and_tells_the_guest() {
    let mut server = connected(ServerConfig::default(), 1);
    make_gpadl(&mut server, 1, 10, 8);
    drain(&mut server);
    post(&mut server, &open(1, 10, 4, 0)).unwrap();
    assert!(matches!(
        &drain(&mut server)[..],
        [ServerAction::OpenChannel { relid: 1, .. }]
    ));
    server.complete_open(1, STATUS_INVALID_PARAMETER).unwrap();
    let actions = drain(&mut server);
    let [ServerAction::SendToGuest { message, .. }] = &actions[..] else {
        panic!("{actions:?}");
    };
    let Ok(Message::OpenChannelResult(result)) = message.parse() else {
        panic!("{message:?}");
    };
    let status = result.status;
    assert_eq!(status, STATUS_INVALID_PARAMETER);
    assert!(server.channel(1).is_some_and(|c| c.open.is_none()));
    assert_eq!(server.complete_open(1, 0), Err(ServerError::NotOpen(1)));
    // The guest may try again.
    post(&mut server, &open(1, 10, 4, 0)).unwrap();
    assert!(matches!(
        &drain(&mut server)[..],
        [ServerAction::OpenChannel { relid: 1, .. }]
    ));
    server.check_invariants().unwrap();
}
