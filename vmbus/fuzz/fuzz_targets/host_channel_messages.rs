//! A hostile guest's channel messages fed to the host's VMBus server.
//!
//! Each run starts from a server with three offers, a connected guest and channel 1 opened
//! correctly by the real client. The input is then split into posts of `[connection selector, length,
//! bytes...]` and fed to `Server::handle_post`. After every post the server's bookkeeping must be
//! consistent and channel 1 must be exactly as opened, unless the post legitimately closed,
//! retargeted or unloaded it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmbus::client::{Client, ClientAction, ClientConfig};
use vmbus::gpadl::GpaRange;
use vmbus::protocol::{interface, parse_message, Guid, Message};
use vmbus::server::{OfferConfig, Server, ServerAction, ServerConfig};

/// Moves messages between a real client and the server until both are quiet.
fn pump(client: &mut Client, server: &mut Server) {
    loop {
        let mut moved = false;
        while let Some(action) = client.poll_action() {
            moved = true;
            if let ClientAction::PostMessage {
                connection_id,
                message,
            } = action
            {
                server
                    .handle_post(connection_id, message.as_bytes())
                    .expect("valid setup message refused");
            }
        }
        while let Some(action) = server.poll_action() {
            moved = true;
            match action {
                ServerAction::SendToGuest { message, .. } => client
                    .handle_message(message.as_bytes())
                    .expect("valid server message refused"),
                ServerAction::OpenChannel { relid, .. } => {
                    let _ = server.complete_open(relid, 0);
                }
                _ => {}
            }
        }
        if !moved {
            return;
        }
    }
}

fn setup() -> (Server, u32) {
    let mut server = Server::new(ServerConfig::default());
    for guid in [interface::SCSI, interface::NETWORK, interface::HEARTBEAT] {
        server
            .add_offer(OfferConfig::new(guid, Guid::ZERO))
            .expect("offer");
    }
    let mut client = Client::new(ClientConfig::default());
    client.connect().expect("connect");
    pump(&mut client, &mut server);
    client.request_offers().expect("request offers");
    pump(&mut client, &mut server);
    let pages: Vec<u64> = (0x4000..0x4000 + 40).collect();
    let gpadl = client
        .create_gpadl(1, GpaRange::whole_pages(&pages).expect("range"))
        .expect("gpadl");
    pump(&mut client, &mut server);
    client.open_channel(1, gpadl, 20, 0, &[]).expect("open");
    pump(&mut client, &mut server);
    (server, gpadl)
}

fn touches_victim(bytes: &[u8]) -> bool {
    match parse_message(bytes) {
        Ok(Message::Unload) => true,
        Ok(Message::CloseChannel(m)) => m.child_relid == 1,
        Ok(Message::ModifyChannel(m)) => m.child_relid == 1,
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let (mut server, gpadl) = setup();
    let victim = *server.channel(1).expect("victim");
    let victim_pages = server.gpadl(gpadl).expect("victim gpadl").clone();
    let mut victim_alive = true;
    let mut rest = data;
    while let [selector, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (bytes, next) = tail.split_at(n);
        rest = next;
        let connection_id = match selector {
            0..=127 => 4,
            128..=191 => 1,
            other => u32::from(*other),
        };
        victim_alive &= !touches_victim(bytes);
        let _ = server.handle_post(connection_id, bytes);
        while server.poll_action().is_some() {}
        if let Err(e) = server.check_invariants() {
            panic!("server invariant broken: {e}");
        }
        if victim_alive {
            assert_eq!(server.channel(1), Some(&victim));
            assert_eq!(server.gpadl(gpadl), Some(&victim_pages));
        }
    }
});
