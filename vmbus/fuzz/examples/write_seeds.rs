//! Writes the checked-in seed corpora of this crate's fuzz targets (`seeds/<target>/`): a few
//! well-formed inputs per target, built with the real ring producer and the real client, so the
//! fuzzer starts from the framing each target's input format expects.
//!
//! Run from `vmbus/fuzz`: `cargo run --example write_seeds`.

use std::fs;
use std::path::Path;

use vmbus::client::{Client, ClientAction, ClientConfig};
use vmbus::gpadl::GpaRange;
use vmbus::mem::{AlignedRingBuffer, RingMemory};
use vmbus::packet::{PacketFlags, PacketType};
use vmbus::protocol::{interface, Guid, MessageBuf};
use vmbus::ring::{
    initialize_control_page, RingProducer, CONTROL_PAGE_SIZE, FEATURE_PENDING_SEND_SIZE,
};
use vmbus::server::{OfferConfig, Server, ServerAction, ServerConfig};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("seeds").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

/// `ring_consumer` input: `[shape, 0x44 control bytes, data area]` of a ring a real producer filled.
fn ring_seed(shape: u8, packets: &[(&[u8], u16)]) -> Vec<u8> {
    let size = (usize::from(shape & 0x3f) + 4) * 8;
    let mem = AlignedRingBuffer::for_ring(size);
    initialize_control_page(&mem, FEATURE_PENDING_SEND_SIZE).unwrap();
    let mut p = RingProducer::new(&mem).unwrap();
    for (i, (payload, header_words)) in packets.iter().enumerate() {
        let header = vec![0xAB; usize::from(*header_words) * 8];
        let _ = p.write_packet(
            PacketType::INBAND,
            PacketFlags::COMPLETION_REQUESTED,
            i as u64 + 1,
            &header,
            &[payload],
        );
    }
    let mut control = vec![0u8; 0x44];
    mem.read_bytes(0, &mut control);
    let mut data = vec![0u8; size];
    mem.read_bytes(CONTROL_PAGE_SIZE, &mut data);
    let mut out = vec![shape];
    out.extend_from_slice(&control);
    out.extend_from_slice(&data);
    out
}

/// Every post a real client makes for `act` once connected to a server with three offers.
fn client_posts(
    act: impl FnOnce(&mut Client, &mut Server, &mut Vec<MessageBuf>),
) -> Vec<MessageBuf> {
    let mut server = Server::new(ServerConfig::default());
    for guid in [interface::SCSI, interface::NETWORK, interface::HEARTBEAT] {
        server
            .add_offer(OfferConfig::new(guid, Guid::ZERO))
            .unwrap();
    }
    let mut client = Client::new(ClientConfig::default());
    client.connect().unwrap();
    pump(&mut client, &mut server, &mut Vec::new());
    client.request_offers().unwrap();
    pump(&mut client, &mut server, &mut Vec::new());
    let mut posts = Vec::new();
    act(&mut client, &mut server, &mut posts);
    pump(&mut client, &mut server, &mut posts);
    posts
}

fn pump(client: &mut Client, server: &mut Server, posts: &mut Vec<MessageBuf>) {
    loop {
        let mut moved = false;
        while let Some(action) = client.poll_action() {
            moved = true;
            if let ClientAction::PostMessage {
                connection_id,
                message,
            } = action
            {
                let _ = server.handle_post(connection_id, message.as_bytes());
                posts.push(message);
            }
        }
        while let Some(action) = server.poll_action() {
            moved = true;
            match action {
                ServerAction::SendToGuest { message, .. } => {
                    let _ = client.handle_message(message.as_bytes());
                }
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

/// `host_channel_messages` input: posts as `[selector (0 = connection 4), len, bytes]`.
fn framed(posts: &[MessageBuf]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in posts {
        out.extend_from_slice(&[0, m.len() as u8]);
        out.extend_from_slice(m.as_bytes());
    }
    out
}

fn main() {
    write(
        "ring_consumer",
        "one_packet",
        &ring_seed(0x3f, &[(b"hello vmbus!", 0)]),
    );
    write(
        "ring_consumer",
        "three_packets_batched",
        &ring_seed(0x7f, &[(&[1; 40], 1), (&[2; 17], 0), (&[3; 64], 2)]),
    );
    write(
        "ring_consumer",
        "small_buffer",
        &ring_seed(0x88, &[(&[9; 100], 0)]),
    );

    let pages: Vec<u64> = (0x5000..0x5000 + 8).collect();
    let open_2 = client_posts(|client, server, posts| {
        let gpadl = client
            .create_gpadl(2, GpaRange::whole_pages(&pages).unwrap())
            .unwrap();
        pump(client, server, posts);
        client.open_channel(2, gpadl, 4, 1, b"user").unwrap();
    });
    write(
        "host_channel_messages",
        "open_second_channel",
        &framed(&open_2),
    );
    let many: Vec<u64> = (0x6000..0x6000 + 60).collect();
    let big_gpadl = client_posts(|client, _, _| {
        client
            .create_gpadl(3, GpaRange::whole_pages(&many).unwrap())
            .unwrap();
    });
    write(
        "host_channel_messages",
        "gpadl_header_and_bodies",
        &framed(&big_gpadl),
    );
    let close = client_posts(|client, server, posts| {
        let gpadl = client
            .create_gpadl(2, GpaRange::whole_pages(&pages).unwrap())
            .unwrap();
        pump(client, server, posts);
        client.open_channel(2, gpadl, 4, 0, &[]).unwrap();
        pump(client, server, posts);
        client.modify_channel(2, 1).unwrap();
        pump(client, server, posts);
        client.close_channel(2).unwrap();
        pump(client, server, posts);
        client.teardown_gpadl(gpadl).unwrap();
    });
    write(
        "host_channel_messages",
        "open_modify_close_teardown",
        &framed(&close),
    );
    let unload = client_posts(|client, _, _| client.unload().unwrap());
    write("host_channel_messages", "unload", &framed(&unload));
}
