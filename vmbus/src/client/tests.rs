//! Client state machine tests against a scripted host.

use super::*;
use crate::protocol::{
    interface, AllOffersDelivered, ChannelOffer, GpadlCreated, GpadlTorndown, Guid,
    ModifyChannelResponse, OpenChannelResult, RescindChannelOffer, UnloadResponse, VersionResponse,
    HV_STATUS_INSUFFICIENT_BUFFERS,
};
use alloc::vec;

fn drain(client: &mut Client) -> Vec<ClientAction> {
    core::iter::from_fn(|| client.poll_action()).collect()
}

/// The (connection id, parsed type) of every post in `actions`.
fn posts(actions: &[ClientAction]) -> Vec<(u32, MessageType)> {
    actions
        .iter()
        .filter_map(|a| match a {
            ClientAction::PostMessage {
                connection_id,
                message,
            } => Some((*connection_id, message.message_type())),
            _ => None,
        })
        .collect()
}

fn contact_of(actions: &[ClientAction]) -> (u32, InitiateContact) {
    for a in actions {
        if let ClientAction::PostMessage {
            connection_id,
            message,
        } = a
        {
            if let Ok(Message::InitiateContact(m)) = message.parse() {
                return (*connection_id, *m);
            }
        }
    }
    panic!("no INITIATE_CONTACT in {actions:?}")
}

fn respond(client: &mut Client, supported: bool, conn: u32) {
    client
        .handle_message(
            VersionResponse::new(supported, 0, conn)
                .to_message()
                .as_bytes(),
        )
        .unwrap();
}

fn connected_client(versions: Vec<Version>) -> Client {
    let mut client = Client::new(ClientConfig {
        versions,
        ..ClientConfig::default()
    });
    client.connect().unwrap();
    respond(&mut client, true, 4);
    client.request_offers().unwrap();
    drain(&mut client);
    client
}

fn offer(client: &mut Client, relid: u32) {
    let msg = OfferChannel::new(
        ChannelOffer::new(interface::SCSI, Guid::new(relid, 0, 0, [0; 8])),
        relid,
        0x1000 + relid,
    );
    client.handle_message(msg.to_message().as_bytes()).unwrap();
}

#[test]
fn negotiates_newest_first_and_falls_back() {
    let mut client = Client::new(ClientConfig {
        versions: vec![Version::WIN10, Version::WIN10_V5_3, Version::WIN10_V5],
        target_vcpu: 1,
        ..ClientConfig::default()
    });
    client.connect().unwrap();
    let (conn, m) = contact_of(&drain(&mut client));
    assert_eq!(
        (conn, m.version(), m.msg_sint()),
        (4, Version::WIN10_V5_3, 2)
    );
    assert_eq!({ m.target_vcpu }, 1);
    respond(&mut client, false, 0);
    let (conn, m) = contact_of(&drain(&mut client));
    assert_eq!((conn, m.version()), (4, Version::WIN10_V5));
    respond(&mut client, false, 0);
    let (conn, m) = contact_of(&drain(&mut client));
    assert_eq!((conn, m.version()), (1, Version::WIN10));
    // Before 5.0 the host's msg_conn_id is not used: posts go to connection 1.
    respond(&mut client, true, 9);
    assert_eq!(
        drain(&mut client),
        [ClientAction::Connected {
            version: Version::WIN10,
            message_connection_id: 1
        }]
    );
    assert_eq!(client.version(), Some(Version::WIN10));
    assert_eq!(client.connect(), Err(ClientError::AlreadyConnected));
}

#[test]
fn invalid_connection_id_post_failure_falls_back() {
    let mut client = Client::new(ClientConfig::default());
    client.connect().unwrap();
    drain(&mut client);
    client
        .handle_post_failure(
            MessageType::INITIATE_CONTACT,
            HV_STATUS_INVALID_CONNECTION_ID,
        )
        .unwrap();
    let (_, m) = contact_of(&drain(&mut client));
    assert_eq!(m.version(), Version::WIN10_V5_2);
    // Another status is a hard failure.
    assert_eq!(
        client.handle_post_failure(
            MessageType::INITIATE_CONTACT,
            HV_STATUS_INSUFFICIENT_BUFFERS
        ),
        Err(ClientError::PostFailed {
            msgtype: MessageType::INITIATE_CONTACT,
            status: HV_STATUS_INSUFFICIENT_BUFFERS
        })
    );
    assert_eq!(drain(&mut client), [ClientAction::ConnectFailed]);
    // Disconnected again: can retry.
    client.connect().unwrap();
}

#[test]
fn running_out_of_versions_fails_the_connection() {
    let mut client = Client::new(ClientConfig {
        versions: vec![Version::WIN8],
        ..ClientConfig::default()
    });
    client.connect().unwrap();
    let (conn, m) = contact_of(&drain(&mut client));
    assert_eq!(conn, 1);
    assert_eq!({ m.interrupt_page_or_sint }, 0);
    respond(&mut client, false, 0);
    assert_eq!(drain(&mut client), [ClientAction::ConnectFailed]);
    assert_eq!(client.version(), None);
    let mut empty = Client::new(ClientConfig {
        versions: vec![],
        ..ClientConfig::default()
    });
    assert_eq!(empty.connect(), Err(ClientError::NoVersions));
}

#[test]
fn unexpected_host_messages_are_errors_without_effect() {
    let mut client = Client::new(ClientConfig::default());
    let resp = VersionResponse::new(true, 0, 4).to_message();
    assert!(matches!(
        client.handle_message(resp.as_bytes()),
        Err(ClientError::Unexpected { .. })
    ));
    assert!(matches!(
        client.handle_message(&[1, 0, 0]),
        Err(ClientError::Protocol(_))
    ));
    let mut client = connected_client(vec![Version::WIN10_V5_3]);
    // Guest→host message types coming from the host.
    assert!(matches!(
        client.handle_message(Unload::new().to_message().as_bytes()),
        Err(ClientError::Unexpected { .. })
    ));
    offer(&mut client, 3);
    let again = OfferChannel::new(ChannelOffer::new(interface::IDE, Guid::ZERO), 3, 9);
    assert_eq!(
        client.handle_message(again.to_message().as_bytes()),
        Err(ClientError::DuplicateOffer(3))
    );
    let created = GpadlCreated::new(3, 77, 0).to_message();
    assert_eq!(
        client.handle_message(created.as_bytes()),
        Err(ClientError::UnknownGpadl(77))
    );
    let result = OpenChannelResult::new(3, 3, 0).to_message();
    assert!(matches!(
        client.handle_message(result.as_bytes()),
        Err(ClientError::Unexpected { .. })
    ));
    assert_eq!(
        client.handle_message(GpadlTorndown::new(5).to_message().as_bytes()),
        Err(ClientError::UnknownGpadl(5))
    );
    assert!(matches!(
        client.handle_message(UnloadResponse::new().to_message().as_bytes()),
        Err(ClientError::Unexpected { .. })
    ));
    assert!(matches!(
        client.handle_message(ModifyChannelResponse::new(3, 0).to_message().as_bytes()),
        Err(ClientError::Unexpected { .. })
    ));
    assert_eq!(
        client.handle_message(RescindChannelOffer::new(4).to_message().as_bytes()),
        Err(ClientError::UnknownChannel(4))
    );
    client
        .handle_message(AllOffersDelivered::new().to_message().as_bytes())
        .unwrap();
    assert!(matches!(
        client.handle_message(AllOffersDelivered::new().to_message().as_bytes()),
        Err(ClientError::Unexpected { .. })
    ));
    assert!(client.offer(3).is_some());
}

#[test]
fn gpadl_open_close_teardown_sequence() {
    let mut client = connected_client(vec![Version::WIN10_V5_3]);
    offer(&mut client, 1);
    drain(&mut client);
    let pages: Vec<u64> = (100..140).collect();
    let range = GpaRange::whole_pages(&pages).unwrap();
    let g = client.create_gpadl(1, range).unwrap();
    assert_eq!(g, 0xE1E10);
    assert_eq!(
        posts(&drain(&mut client)),
        [(4, MessageType::GPADL_HEADER), (4, MessageType::GPADL_BODY)]
    );
    let g2 = client.create_gpadl(1, range).unwrap();
    assert_ne!(g, g2);
    drain(&mut client);
    // Not created yet: cannot open.
    assert!(matches!(
        client.open_channel(1, g, 20, 0, &[]),
        Err(ClientError::GpadlState { .. })
    ));
    client
        .handle_message(GpadlCreated::new(1, g, 0).to_message().as_bytes())
        .unwrap();
    client
        .handle_message(
            GpadlCreated::new(1, g2, 0xC000_0001)
                .to_message()
                .as_bytes(),
        )
        .unwrap();
    assert_eq!(
        drain(&mut client),
        [
            ClientAction::GpadlCreated {
                relid: 1,
                gpadl: g,
                status: 0
            },
            ClientAction::GpadlCreated {
                relid: 1,
                gpadl: g2,
                status: 0xC000_0001
            },
        ]
    );
    assert_eq!(
        client.open_channel(1, g2, 20, 0, &[]),
        Err(ClientError::UnknownGpadl(g2))
    );
    assert!(matches!(
        client.open_channel(1, g, 39, 0, &[]),
        Err(ClientError::BadRingSplit { .. })
    ));
    assert!(matches!(
        client.open_channel(1, g, 20, 0, &[0; 121]),
        Err(ClientError::Protocol(_))
    ));
    client.open_channel(1, g, 20, 0, &[1, 2, 3]).unwrap();
    assert_eq!(posts(&drain(&mut client)), [(4, MessageType::OPENCHANNEL)]);
    assert!(matches!(
        client.teardown_gpadl(g),
        Err(ClientError::GpadlInUse { .. })
    ));
    client
        .handle_message(OpenChannelResult::new(1, 1, 0).to_message().as_bytes())
        .unwrap();
    assert_eq!(
        drain(&mut client),
        [ClientAction::ChannelOpened {
            relid: 1,
            status: 0
        }]
    );
    assert!(client.is_open(1));
    client.modify_channel(1, 1).unwrap();
    assert_eq!(
        posts(&drain(&mut client)),
        [(4, MessageType::MODIFYCHANNEL)]
    );
    client
        .handle_message(ModifyChannelResponse::new(1, 0).to_message().as_bytes())
        .unwrap();
    assert_eq!(
        drain(&mut client),
        [ClientAction::ChannelModified {
            relid: 1,
            status: 0
        }]
    );
    client.close_channel(1).unwrap();
    assert_eq!(posts(&drain(&mut client)), [(4, MessageType::CLOSECHANNEL)]);
    client.teardown_gpadl(g).unwrap();
    assert_eq!(
        posts(&drain(&mut client)),
        [(4, MessageType::GPADL_TEARDOWN)]
    );
    client
        .handle_message(GpadlTorndown::new(g).to_message().as_bytes())
        .unwrap();
    assert_eq!(
        drain(&mut client),
        [ClientAction::GpadlTornDown { relid: 1, gpadl: g }]
    );
}

#[test]
fn rescind_then_release() {
    let mut client = connected_client(vec![Version::WIN10_V5]);
    offer(&mut client, 2);
    drain(&mut client);
    client
        .handle_message(RescindChannelOffer::new(2).to_message().as_bytes())
        .unwrap();
    assert_eq!(
        drain(&mut client),
        [ClientAction::OfferRescinded { relid: 2 }]
    );
    assert!(client.is_revoked(2));
    assert_eq!(client.offers().count(), 0);
    let pages = [1, 2, 3, 4];
    assert_eq!(
        client.create_gpadl(2, GpaRange::whole_pages(&pages).unwrap()),
        Err(ClientError::ChannelRevoked(2))
    );
    client.release_channel(2).unwrap();
    assert_eq!(
        posts(&drain(&mut client)),
        [(4, MessageType::RELID_RELEASED)]
    );
    assert_eq!(
        client.release_channel(2),
        Err(ClientError::UnknownChannel(2))
    );
    // The relid may be offered again.
    offer(&mut client, 2);
    assert_eq!(
        client.release_channel(2),
        Err(ClientError::ChannelNotRevoked(2))
    );
}

#[test]
fn unload_forgets_everything() {
    let mut client = connected_client(vec![Version::WIN10_V5_1]);
    offer(&mut client, 1);
    // MODIFYCHANNEL needs an open channel; at 5.1 it gets no response.
    assert!(matches!(
        client.modify_channel(1, 0),
        Err(ClientError::ChannelState { .. })
    ));
    client.unload().unwrap();
    assert_eq!(posts(&drain(&mut client)), [(4, MessageType::UNLOAD)]);
    assert_eq!(client.request_offers(), Err(ClientError::NotConnected));
    client
        .handle_message(UnloadResponse::new().to_message().as_bytes())
        .unwrap();
    assert_eq!(drain(&mut client), [ClientAction::Unloaded]);
    assert!(client.offer(1).is_none());
    client.connect().unwrap();
}
