//! The guest client and the host server state machines driven against each other in-process:
//! version negotiation and fallback, enumeration, GPADLs, open/close, rescind, unload; and a
//! hostile guest posting arbitrary messages next to a correctly opened channel.

use proptest::prelude::*;
use vmbus::client::{Client, ClientAction, ClientConfig};
use vmbus::gpadl::GpaRange;
use vmbus::protocol::{
    interface, parse_message, Guid, Message, MessageType, Version, HV_STATUS_INVALID_CONNECTION_ID,
};
use vmbus::server::{OfferConfig, PostOutcome, Server, ServerAction, ServerConfig};

/// A client and a server with the hypercall/SynIC plumbing between them reduced to function calls.
struct Bus {
    client: Client,
    server: Server,
    /// Connection ids whose posts fail with HV_STATUS_INVALID_CONNECTION_ID (a host without them).
    dead_connections: Vec<u32>,
    client_events: Vec<ClientAction>,
    server_events: Vec<ServerAction>,
    /// (vp, sint) of every message the server delivered.
    deliveries: Vec<(u32, u8, MessageType)>,
    refused_posts: usize,
}

impl Bus {
    fn new(client: ClientConfig, server: ServerConfig) -> Self {
        Self {
            client: Client::new(client),
            server: Server::new(server),
            dead_connections: Vec::new(),
            client_events: Vec::new(),
            server_events: Vec::new(),
            deliveries: Vec::new(),
            refused_posts: 0,
        }
    }

    /// Moves messages both ways until both sides are quiet.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(action) = self.client.poll_action() {
                moved = true;
                match action {
                    ClientAction::PostMessage {
                        connection_id,
                        message,
                    } => {
                        let outcome = if self.dead_connections.contains(&connection_id) {
                            PostOutcome::InvalidConnectionId
                        } else {
                            self.server
                                .handle_post(connection_id, message.as_bytes())
                                .expect("server refused a message from the real client")
                        };
                        if outcome.hv_status() != 0 {
                            assert_eq!(outcome.hv_status(), HV_STATUS_INVALID_CONNECTION_ID);
                            self.refused_posts += 1;
                            self.client
                                .handle_post_failure(message.message_type(), outcome.hv_status())
                                .unwrap();
                        }
                    }
                    event => self.client_events.push(event),
                }
            }
            while let Some(action) = self.server.poll_action() {
                moved = true;
                match action {
                    ServerAction::SendToGuest { vp, sint, message } => {
                        self.deliveries.push((vp, sint, message.message_type()));
                        self.client
                            .handle_message(message.as_bytes())
                            .expect("client refused a message from the real server");
                    }
                    event => {
                        if let ServerAction::OpenChannel { relid, .. } = &event {
                            // The device side starts: the host answers the open.
                            self.server.complete_open(*relid, 0).unwrap();
                        }
                        self.server_events.push(event)
                    }
                }
            }
            if !moved {
                break;
            }
            self.server.check_invariants().unwrap();
        }
    }

    fn connect(&mut self) {
        self.client.connect().unwrap();
        self.pump();
    }

    fn take_client_events(&mut self) -> Vec<ClientAction> {
        std::mem::take(&mut self.client_events)
    }

    fn take_server_events(&mut self) -> Vec<ServerAction> {
        std::mem::take(&mut self.server_events)
    }
}

fn versions(list: &[Version]) -> Vec<Version> {
    list.to_vec()
}

fn connected_version(events: &[ClientAction]) -> (Version, u32) {
    events
        .iter()
        .find_map(|e| match e {
            ClientAction::Connected {
                version,
                message_connection_id,
            } => Some((*version, *message_connection_id)),
            _ => None,
        })
        .expect("not connected")
}

#[test]
fn negotiates_the_newest_version() {
    let mut bus = Bus::new(
        ClientConfig {
            target_vcpu: 1,
            ..ClientConfig::default()
        },
        ServerConfig::default(),
    );
    bus.connect();
    assert_eq!(
        connected_version(&bus.take_client_events()),
        (Version::WIN10_V5_3, 4)
    );
    assert_eq!(bus.server.version(), Some(Version::WIN10_V5_3));
    assert_eq!(bus.deliveries, [(1, 2, MessageType::VERSION_RESPONSE)]);
    assert!(matches!(
        bus.take_server_events()[..],
        [ServerAction::Connected {
            version: Version::WIN10_V5_3,
            vp: 1,
            sint: 2,
            interrupt_page: None,
            ..
        }]
    ));
}

#[test]
fn client_that_only_knows_older_versions() {
    let mut bus = Bus::new(
        ClientConfig {
            versions: versions(&[Version::WIN8_1, Version::WIN10]),
            interrupt_page: 0x7000,
            ..ClientConfig::default()
        },
        ServerConfig::default(),
    );
    bus.connect();
    assert_eq!(
        connected_version(&bus.take_client_events()),
        (Version::WIN10, 1)
    );
    assert!(matches!(
        bus.take_server_events()[..],
        [ServerAction::Connected {
            interrupt_page: Some(0x7000),
            sint: 2,
            ..
        }]
    ));
}

#[test]
fn server_that_only_accepts_win10() {
    let mut bus = Bus::new(
        ClientConfig::default(),
        ServerConfig {
            versions: versions(&[Version::WIN10]),
            ..ServerConfig::default()
        },
    );
    bus.connect();
    assert_eq!(
        connected_version(&bus.take_client_events()),
        (Version::WIN10, 1)
    );
    // 5.3, 5.2, 5.1, 5.0, 4.1 refused with VERSION_RESPONSE, then 4.0 accepted.
    let refusals = bus
        .deliveries
        .iter()
        .filter(|d| d.2 == MessageType::VERSION_RESPONSE)
        .count();
    assert_eq!(refusals, 6);
    assert_eq!(bus.refused_posts, 0);
}

#[test]
fn host_without_connection_id_4_fails_posts_and_client_falls_back() {
    let mut bus = Bus::new(ClientConfig::default(), ServerConfig::default());
    bus.dead_connections.push(4);
    bus.connect();
    assert_eq!(
        connected_version(&bus.take_client_events()),
        (Version::WIN10_V4_1, 1)
    );
    assert_eq!(bus.refused_posts, 4);
}

#[test]
fn server_rejects_contact_on_the_wrong_connection_id() {
    let mut server = Server::new(ServerConfig::default());
    let contact = vmbus::protocol::InitiateContact::new(Version::WIN10_V5_3, 0, 2, 0, (0, 0));
    let bytes = vmbus::protocol::ChannelMessage::to_message(&contact);
    assert_eq!(
        server.handle_post(1, bytes.as_bytes()),
        Ok(PostOutcome::InvalidConnectionId)
    );
    assert_eq!(server.poll_action(), None);
    let old = vmbus::protocol::InitiateContact::new(Version::WIN10, 0, 2, 0, (0, 0));
    let bytes = vmbus::protocol::ChannelMessage::to_message(&old);
    assert_eq!(
        server.handle_post(4, bytes.as_bytes()),
        Ok(PostOutcome::InvalidConnectionId)
    );
    assert_eq!(
        server.handle_post(1, bytes.as_bytes()),
        Ok(PostOutcome::Accepted)
    );
}

/// Sets up a connected bus with SCSI, network and heartbeat offers enumerated.
fn enumerated_bus() -> (Bus, [u32; 3]) {
    let mut bus = Bus::new(ClientConfig::default(), ServerConfig::default());
    let guids = [interface::SCSI, interface::NETWORK, interface::HEARTBEAT];
    let relids = guids.map(|g| {
        bus.server
            .add_offer(OfferConfig::new(
                g,
                Guid::new(0x1234, 0, 0, [g.data4[0]; 8]),
            ))
            .unwrap()
    });
    bus.connect();
    bus.client.request_offers().unwrap();
    bus.pump();
    (bus, relids)
}

/// Creates a 40-page ring GPADL on `relid` and opens the channel on it; returns the GPADL handle.
fn open_ring(bus: &mut Bus, relid: u32, first_pfn: u64) -> (u32, Vec<u64>) {
    let pages: Vec<u64> = (first_pfn..first_pfn + 40).collect();
    let gpadl = bus
        .client
        .create_gpadl(relid, GpaRange::whole_pages(&pages).unwrap())
        .unwrap();
    bus.pump();
    bus.client
        .open_channel(relid, gpadl, 20, 0, &[1, 2])
        .unwrap();
    bus.pump();
    (gpadl, pages)
}

#[test]
fn full_channel_lifecycle() {
    let (mut bus, relids) = enumerated_bus();
    assert_eq!(relids, [1, 2, 3]);
    let events = bus.take_client_events();
    let offers: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ClientAction::Offer(o) => Some((o.child_relid, o.offer.if_type, o.connection_id)),
            _ => None,
        })
        .collect();
    assert_eq!(
        offers,
        [
            (1, interface::SCSI, 0x1001),
            (2, interface::NETWORK, 0x1002),
            (3, interface::HEARTBEAT, 0x1003)
        ]
    );
    assert_eq!(events.last(), Some(&ClientAction::OffersComplete));
    bus.take_server_events();

    // A 40-page GPADL: header (26 PFNs) plus one body (14 PFNs).
    let pages: Vec<u64> = (0x8000..0x8000 + 40).collect();
    let gpadl = bus
        .client
        .create_gpadl(1, GpaRange::whole_pages(&pages).unwrap())
        .unwrap();
    bus.pump();
    assert_eq!(
        bus.take_client_events(),
        [ClientAction::GpadlCreated {
            relid: 1,
            gpadl,
            status: 0
        }]
    );
    assert_eq!(
        bus.take_server_events(),
        [ServerAction::GpadlReady { relid: 1, gpadl }]
    );
    assert_eq!(
        bus.server
            .gpadl(gpadl)
            .unwrap()
            .single_range()
            .unwrap()
            .pfns,
        pages
    );

    bus.client.open_channel(1, gpadl, 20, 0, b"scsi").unwrap();
    bus.pump();
    assert_eq!(
        bus.take_client_events(),
        [ClientAction::ChannelOpened {
            relid: 1,
            status: 0
        }]
    );
    match &bus.take_server_events()[..] {
        [ServerAction::OpenChannel {
            relid: 1,
            connection_id: 0x1001,
            gpadl: g,
            pfns,
            downstream_page_offset: 20,
            target_vp: 0,
            user_data,
        }] => {
            assert_eq!(*g, gpadl);
            assert_eq!(pfns, &pages);
            assert_eq!(&user_data[..5], b"scsi\0");
        }
        other => panic!("{other:?}"),
    }
    assert!(bus.client.is_open(1));

    bus.client.modify_channel(1, 1).unwrap();
    bus.pump();
    assert_eq!(
        bus.take_server_events(),
        [ServerAction::ModifyChannel {
            relid: 1,
            target_vp: 1
        }]
    );
    assert_eq!(
        bus.take_client_events(),
        [ClientAction::ChannelModified {
            relid: 1,
            status: 0
        }]
    );

    bus.client.close_channel(1).unwrap();
    bus.pump();
    assert_eq!(
        bus.take_server_events(),
        [ServerAction::ChannelClosed { relid: 1 }]
    );
    bus.client.teardown_gpadl(gpadl).unwrap();
    bus.pump();
    assert_eq!(
        bus.take_client_events(),
        [ClientAction::GpadlTornDown { relid: 1, gpadl }]
    );
    assert_eq!(
        bus.take_server_events(),
        [ServerAction::GpadlTornDown { relid: 1, gpadl }]
    );
    assert_eq!(bus.server.reserved_pfns(), 0);

    // Rescind channel 2 while it is open.
    let (gpadl2, _) = open_ring(&mut bus, 2, 0x9000);
    bus.take_client_events();
    bus.take_server_events();
    bus.server.rescind(2).unwrap();
    bus.pump();
    assert_eq!(
        bus.take_client_events(),
        [ClientAction::OfferRescinded { relid: 2 }]
    );
    assert_eq!(
        bus.take_server_events(),
        [ServerAction::ChannelClosed { relid: 2 }]
    );
    assert!(bus.server.channel(2).unwrap().revoked);
    bus.client.close_channel(2).unwrap();
    bus.client.release_channel(2).unwrap();
    bus.pump();
    assert_eq!(
        bus.take_server_events(),
        [
            ServerAction::GpadlTornDown {
                relid: 2,
                gpadl: gpadl2
            },
            ServerAction::ChannelReleased { relid: 2 }
        ]
    );
    assert!(bus.server.channel(2).is_none());

    // Hot-add reuses the free relid and reaches the guest at once.
    let relid = bus
        .server
        .add_offer(OfferConfig::new(interface::SHUTDOWN, Guid::ZERO))
        .unwrap();
    bus.pump();
    assert_eq!(relid, 2);
    assert!(matches!(
        &bus.take_client_events()[..],
        [ClientAction::Offer(o)] if o.offer.if_type == interface::SHUTDOWN
    ));

    // Unload with channel 3 open: everything closes on both sides.
    open_ring(&mut bus, 3, 0xa000);
    bus.take_client_events();
    bus.take_server_events();
    bus.client.unload().unwrap();
    bus.pump();
    assert_eq!(bus.take_client_events(), [ClientAction::Unloaded]);
    let server_events = bus.take_server_events();
    assert!(server_events.contains(&ServerAction::ChannelClosed { relid: 3 }));
    assert!(matches!(
        server_events[..],
        [
            ..,
            ServerAction::GpadlTornDown { relid: 3, .. },
            ServerAction::Unloaded
        ]
    ));
    assert_eq!(bus.server.version(), None);
    assert_eq!(bus.server.reserved_pfns(), 0);

    // And the guest can come back.
    bus.connect();
    bus.client.request_offers().unwrap();
    bus.pump();
    let offers = bus
        .take_client_events()
        .iter()
        .filter(|e| matches!(e, ClientAction::Offer(_)))
        .count();
    assert_eq!(offers, 3);
}

/// Builds an arbitrary guest→host channel message from a few numbers, biased towards ids that
/// exist so that the server's deeper paths are reached.
fn hostile_message(kind: u8, a: u32, b: u32, c: u32, units: &[u64], cut: usize) -> Vec<u8> {
    let types = [3u32, 5, 7, 8, 9, 11, 13, 14, 16, 22];
    let msgtype = types[usize::from(kind) % types.len()];
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&msgtype.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    match msgtype {
        8 => {
            bytes.extend_from_slice(&a.to_le_bytes());
            bytes.extend_from_slice(&b.to_le_bytes());
            bytes.extend_from_slice(&(c as u16).to_le_bytes());
            bytes.extend_from_slice(&((c >> 16) as u16 % 4).to_le_bytes());
        }
        9 => {
            bytes.extend_from_slice(&(c % 4).to_le_bytes());
            bytes.extend_from_slice(&b.to_le_bytes());
        }
        // OPENCHANNEL: relid, openid, ring GPADL, target VP, downstream page offset.
        5 => {
            for v in [a, a, b, c % 41, c % 64] {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        _ => {
            for v in [a, b, c % 64, c % 41, c] {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    for u in units {
        bytes.extend_from_slice(&u.to_le_bytes());
    }
    bytes.resize(bytes.len().saturating_sub(cut % 4), 0);
    bytes.truncate(240);
    bytes
}

/// Whether a message would legitimately change the victim channel (the guest may close its own
/// channel); everything else must leave it alone.
fn touches_victim(bytes: &[u8], victim: u32) -> bool {
    match parse_message(bytes) {
        Ok(Message::Unload) => true,
        Ok(Message::CloseChannel(m)) => m.child_relid == victim,
        Ok(Message::ModifyChannel(m)) => m.child_relid == victim,
        _ => false,
    }
}

fn id_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        0u32..6,
        Just(0xE1E10),
        Just(0xE1E11),
        Just(0xE1E12),
        any::<u32>()
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_posts_never_disturb_an_open_channel(
        posts in proptest::collection::vec(
            (
                prop_oneof![Just(4u32), Just(1u32), any::<u32>()],
                any::<u8>(),
                id_strategy(),
                id_strategy(),
                any::<u32>(),
                proptest::collection::vec(
                    prop_oneof![0u64..64, Just(4 * 4096u64), any::<u64>()],
                    0..30,
                ),
                any::<usize>(),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..250)),
            ),
            1..40,
        )
    ) {
        let (mut bus, _) = enumerated_bus();
        let (gpadl, pages) = open_ring(&mut bus, 1, 0x5000);
        let victim = *bus.server.channel(1).unwrap();
        prop_assert!(victim.open.is_some());
        for (conn, kind, a, b, c, units, cut, raw) in posts {
            let bytes = match raw {
                Some(raw) => raw,
                None => hostile_message(kind, a, b, c, &units, cut),
            };
            if touches_victim(&bytes, 1) {
                continue;
            }
            let _ = bus.server.handle_post(conn, &bytes);
            while bus.server.poll_action().is_some() {}
            prop_assert_eq!(bus.server.check_invariants(), Ok(()));
            prop_assert_eq!(bus.server.channel(1), Some(&victim));
            prop_assert_eq!(
                &bus.server.gpadl(gpadl).unwrap().single_range().unwrap().pfns,
                &pages
            );
        }
    }

    #[test]
    fn arbitrary_bytes_into_a_fresh_server_never_panic(
        posts in proptest::collection::vec(
            (0u32..6, proptest::collection::vec(any::<u8>(), 0..260)),
            1..20,
        )
    ) {
        let mut server = Server::new(ServerConfig::default());
        server.add_offer(OfferConfig::new(interface::SCSI, Guid::ZERO)).unwrap();
        for (conn, bytes) in posts {
            let _ = server.handle_post(conn, &bytes);
            while server.poll_action().is_some() {}
            prop_assert_eq!(server.check_invariants(), Ok(()));
        }
    }
}
