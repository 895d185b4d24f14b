//! Writes the checked-in seed corpora of this crate's fuzz targets (`seeds/<target>/`): a few inputs
//! per target in its input format doing what a well-behaved guest does (a storvsc handshake and
//! SRBs, a VMBus open and close, an IDE IDENTIFY and sector transfers, virtio-blk read/write/GET_ID
//! chains, an IC negotiation and heartbeats, e1000 and virtio-net bring-up and traffic both ways)
//! plus some hostile variations.
//!
//! Run from `host-vsp/fuzz`: `cargo run --example write_seeds`.

use std::fs;
use std::path::Path;

use storvsp_protocol::{Operation, VmscsiRequest, VstorPacket};
use vmbus::client::{Client, ClientAction, ClientConfig};
use vmbus::gpadl::GpaRange;
use vmbus::protocol::{interface, Guid, MessageBuf};
use vmbus::server::{OfferConfig, Server, ServerAction, ServerConfig};
use zerocopy::FromZeros;

fn write(target: &str, name: &str, parts: &[&[u8]]) {
    let dir = Path::new("seeds").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), parts.concat()).unwrap();
}

/// An EXECUTE_SRB packet for `cdb` moving `len` bytes (`data_in`: device to guest).
fn srb(cdb: &[u8], len: u32, data_in: bool) -> Vec<u8> {
    let mut srb = VmscsiRequest::new_zeroed();
    srb.length = (core::mem::size_of::<VmscsiRequest>() as u16).into();
    srb.cdb_length = cdb.len() as u8;
    srb.cdb_or_sense[..cdb.len()].copy_from_slice(cdb);
    srb.data_in = u8::from(data_in);
    srb.data_transfer_length = len.into();
    let mut p = VstorPacket::new(Operation::EXECUTE_SRB, 1);
    p.set_srb(&srb);
    p.as_wire().to_vec()
}

/// A storvsp_packets chunk: `[type selector, flags, header words, trans id]`, header, payload.
fn chunk(selector: u8, trans_id: u8, header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut c = vec![selector, 0x81, (header.len() / 8) as u8, trans_id];
    c.extend_from_slice(header);
    c.extend_from_slice(payload);
    assert!(!c.contains(&0xA5), "chunk contains the separator");
    c.push(0xA5);
    c
}

/// A GPA-direct header of one range of `len` bytes at page `pfn`.
fn gpa_direct(len: u32, pfn: u64) -> Vec<u8> {
    [
        &0u32.to_le_bytes()[..],
        &1u32.to_le_bytes(),
        &len.to_le_bytes(),
        &0u32.to_le_bytes(),
        &pfn.to_le_bytes(),
    ]
    .concat()
}

fn storvsp_seeds() {
    let t = "storvsp_packets";
    let inquiry = chunk(0, 1, &[], &srb(&[0x12, 0, 0, 0, 36, 0], 36, true));
    write(t, "handshake_inquiry", &[&[0], &inquiry]);
    let read10 = [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0];
    let write10 = [0x2A, 0, 0, 0, 0, 1, 0, 0, 8, 0];
    let read = chunk(1, 2, &gpa_direct(4096, 2), &srb(&read10, 4096, true));
    let write_ = chunk(1, 3, &gpa_direct(4096, 3), &srb(&write10, 4096, false));
    write(t, "write_then_read_gpa_direct", &[&[0], &write_, &read]);
    let capacity = chunk(0, 4, &[], &srb(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8, true));
    let lun1 = {
        let mut p = srb(&[0x00, 0, 0, 0, 0, 0], 0, false);
        p[12 + 7] = 1; // lun
        chunk(0, 6, &[], &p)
    };
    write(
        t,
        "no_handshake_then_more",
        &[&[1], &capacity, &lun1, &read],
    );
}

fn pump(client: &mut Client, server: &mut Server, posts: &mut Vec<(u32, MessageBuf)>) {
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
                posts.push((connection_id, message));
            }
        }
        while let Some(action) = server.poll_action() {
            moved = true;
            match action {
                ServerAction::SendToGuest { message, .. } => {
                    drop(client.handle_message(message.as_bytes()))
                }
                ServerAction::OpenChannel { relid, .. } => drop(server.complete_open(relid, 0)),
                _ => {}
            }
        }
        if !moved {
            return;
        }
    }
}

/// vmbus_service_posts steps: posts `[2 (connection 4), len, bytes]`, memory writes `[1, len, hi, lo, bytes]`.
fn service_seeds() {
    let mut server = Server::new(ServerConfig::default());
    server
        .add_offer(OfferConfig::new(interface::SCSI, Guid::ZERO))
        .unwrap();
    let mut client = Client::new(ClientConfig::default());
    let mut posts = Vec::new();
    client.connect().unwrap();
    pump(&mut client, &mut server, &mut posts);
    client.request_offers().unwrap();
    pump(&mut client, &mut server, &mut posts);
    posts.clear(); // the harness connects by itself
    let pfns: Vec<u64> = (2..10).collect(); // the harness's memory writes reach the first 16 pages
    let gpadl = client
        .create_gpadl(1, GpaRange::whole_pages(&pfns).unwrap())
        .unwrap();
    pump(&mut client, &mut server, &mut posts);
    let created = posts.len();
    client.open_channel(1, gpadl, 4, 0, &[]).unwrap();
    pump(&mut client, &mut server, &mut posts);
    let opened = posts.len();
    client.close_channel(1).unwrap();
    pump(&mut client, &mut server, &mut posts);
    client.teardown_gpadl(gpadl).unwrap();
    pump(&mut client, &mut server, &mut posts);
    let framed = |range: &[(u32, MessageBuf)]| -> Vec<u8> {
        range
            .iter()
            .flat_map(|(_, m)| [&[2u8, m.len() as u8][..], m.as_bytes()].concat())
            .collect()
    };
    // Feature bit 0 (pending send size) in both ring control pages: offset 0x40 of pages 2 and 6.
    let control = |page: u32| {
        let at = page * 4096 + 0x40;
        vec![1, 6, (at >> 8) as u8, at as u8, 1, 0, 0, 0]
    };
    let t = "vmbus_service_posts";
    write(t, "gpadl", &[&framed(&posts[..created])]);
    write(
        t,
        "gpadl_open",
        &[&control(2), &control(6), &framed(&posts[..opened])],
    );
    write(
        t,
        "open_close_teardown",
        &[&control(2), &control(6), &framed(&posts)],
    );
    let mut unload = vec![2u8, 8];
    unload.extend_from_slice(&[16, 0, 0, 0, 0, 0, 0, 0]);
    write(t, "open_then_unload", &[&framed(&posts[..opened]), &unload]);
}

/// ide_ports steps: `[op, port selector, ...]`; op ≥ 0xF0 issues `[device, count, lba0..2, command]`.
fn ide_seeds() {
    let t = "ide_ports";
    let identify: &[u8] = &[0xF0, 0, 0, 0, 0, 0, 7];
    let words: Vec<u8> = [3u8, 0].repeat(256);
    write(t, "identify_words", &[&[0], identify, &words, &[1, 7]]);
    let write_sector: &[u8] = &[0xF0, 0, 1, 5, 0, 0, 2];
    let string_out: Vec<u8> = [&[6u8, 0, 255][..], &[0x3C; 512]].concat();
    let read_sector: &[u8] = &[0xF0, 0, 1, 5, 0, 0, 0];
    let string_in: &[u8] = &[7, 0, 255];
    write(
        t,
        "write_read_string",
        &[
            &[0],
            write_sector,
            &string_out,
            &[1, 7],
            read_sector,
            string_in,
            &[1, 7],
        ],
    );
    // LBA48 READ SECTORS EXT of 2 sectors at LBA 3 through single-byte register writes, dword reads.
    let lba48: &[u8] = &[
        0, 6, 0x40, 0, 2, 0, 0, 3, 0, 0, 4, 0, 0, 5, 0, 0, 2, 2, 0, 3, 3, 0, 4, 0, 0, 5, 0, 0, 7,
        0x24,
    ];
    let dwords: Vec<u8> = [5u8, 0].repeat(256);
    write(t, "lba48_read_ext_dwords", &[&[0], lba48, &dwords, &[1, 1]]);
    // Software reset held and released, nIEN, then a command on the read-only disk.
    let reset: &[u8] = &[0, 8, 0x04, 1, 8, 0, 8, 0x00, 1, 7, 0, 8, 0x02];
    write(
        t,
        "srst_nien_read_only_write",
        &[&[1], reset, write_sector, &string_out, &[1, 1]],
    );
}

/// virtio_blk_mmio steps: op 0/1 register write/read, 2 descriptor, 4 avail push, 5 header, 6 raw,
/// 7 notify, 9 queue pass.
fn virtio_seeds() {
    let t = "virtio_blk_mmio";
    // Descriptor `index` at GPA `addr` (< 64 KiB), length selector `len` (0: 16, 1: 512, 3: u16 follows).
    let desc = |index: u8, addr: u16, len: &[u8], flags: u8, next: u8| -> Vec<u8> {
        [
            &[2, index, 0][..],
            &addr.to_le_bytes(),
            len,
            &[flags, 0, next],
        ]
        .concat()
    };
    let header = |kind_selector: u8, sector: u8| vec![5, 0, 0, kind_selector, 0, sector];
    let push: &[u8] = &[4, 0, 0];
    let notify: &[u8] = &[7, 0];
    let setup: &[u8] = &[3 << 1]; // standard setup, 8 entries
    let read = [
        header(0, 3),
        desc(0, 0x4000, &[0], 1, 1),
        desc(1, 0x5000, &[1], 3, 2),
        desc(2, 0x6000, &[3, 1, 0], 2, 0),
        push.to_vec(),
        notify.to_vec(),
    ];
    let read: Vec<&[u8]> = std::iter::once(setup)
        .chain(read.iter().map(Vec::as_slice))
        .collect();
    write(t, "read_request", &read);
    let out = [
        header(1, 7),
        desc(0, 0x4000, &[0], 1, 1),
        desc(1, 0x5000, &[1], 1, 2),
        desc(2, 0x6000, &[3, 1, 0], 2, 0),
    ];
    write(
        t,
        "write_request",
        &[setup, &out.concat(), push, notify, &[9]],
    );
    let get_id = [
        header(3, 0),
        desc(0, 0x4000, &[0], 1, 1),
        desc(1, 0x5000, &[3, 20, 0], 3, 2),
        desc(2, 0x6000, &[3, 1, 0], 2, 0),
    ];
    write(
        t,
        "get_id_and_flush",
        &[
            setup,
            &get_id.concat(),
            push,
            notify,
            &header(2, 0),
            push,
            notify,
        ],
    );
    // An indirect table at 0x7000 with the same three-descriptor read.
    let mut table = Vec::new();
    for (addr, len, flags, next) in [
        (0x4000u64, 16u32, 1u16, 1u16),
        (0x5000, 512, 3, 2),
        (0x6000, 1, 2, 0),
    ] {
        table.extend_from_slice(&addr.to_le_bytes());
        table.extend_from_slice(&len.to_le_bytes());
        table.extend_from_slice(&flags.to_le_bytes());
        table.extend_from_slice(&next.to_le_bytes());
    }
    let raw = [&[6u8, 0x00, 0x70, table.len() as u8][..], &table].concat();
    write(
        t,
        "indirect",
        &[
            setup,
            &header(0, 1),
            &raw,
            &desc(0, 0x7000, &[3, 48, 0], 4, 0),
            push,
            notify,
        ],
    );
    let looped = [desc(0, 0x4000, &[0], 1, 1), desc(1, 0x5000, &[1], 3, 0)];
    write(
        t,
        "descriptor_loop",
        &[setup, &header(0, 0), &looped.concat(), push, notify],
    );
    // No setup: probe every register, then the driver's status dance by hand.
    let probe: Vec<u8> = (0..24u8).flat_map(|r| [1, r, 0]).collect();
    write(
        t,
        "register_probe",
        &[
            &[1],
            &probe,
            &[0, 12, 0, 3, 0, 0, 0, 0, 0, 0, 0],
            &[0, 12, 0, 0x0B, 0, 0, 0, 0, 0, 0, 0],
        ],
    );
}

/// ic_serve_loop steps: 0 answer `[0, mutations, (at, xor)...]`, 3 garbage negotiate, 4 raw packet,
/// 5 ring scribble, 6 host shutdown request, 7 wait.
fn ic_seeds() {
    let t = "ic_serve_loop";
    let answer: &[u8] = &[0, 0];
    let wait: &[u8] = &[7];
    write(
        t,
        "heartbeat_flow",
        &[&[2 << 1], answer, wait, answer, wait, answer, wait],
    );
    write(
        t,
        "shutdown_flow",
        &[&[1], answer, &[6], wait, answer, wait],
    );
    let garbage: Vec<u8> = [&[3u8, 40, 0, 30, 30][..], &[0x11; 32]].concat();
    write(
        t,
        "garbage_negotiate_then_bad_answer",
        &[&[2 << 1], &garbage, &[0, 2, 44, 0xFF, 20, 0x01], answer],
    );
    let raw: &[u8] = &[4, 2, 8, 1, 2, 3, 4, 5, 6, 7, 8];
    let scribble: &[u8] = &[5, 0, 0xFF, 0xFF, 0, 0];
    write(
        t,
        "raw_completion_and_scribble",
        &[&[2 << 1], answer, raw, scribble, answer, wait],
    );
}

/// A frame to `dest` of `len` bytes (EtherType IPv4, a counting payload).
fn eth_frame(dest: [u8; 6], len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| i as u8).collect();
    f[..6].copy_from_slice(&dest);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 9]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f
}

/// e1000_mmio steps: 0 register write, 1 read, 2 tx descriptor, 3 rx descriptor, 4 TDT, 5 RDT,
/// 6 wire frame, 7 receive pass, 8 time, 9 link, 10 raw bytes, 11 reset/TCTL/RCTL.
fn e1000_seeds() {
    let t = "e1000_mmio";
    // Register selectors (indexes into the target's REGS) and a dword write of `v`.
    const TDBAL: u8 = 21;
    const TDH: u8 = 24;
    const ICR: u8 = 6;
    const RDLEN: u8 = 16;
    let write_reg = |sel: u8, v: u32| [&[0, sel, 0][..], &u64::from(v).to_le_bytes()].concat();
    let read_reg = |sel: u8| vec![1, sel, 0];
    // A transmit descriptor at `index`: buffer TX_BUFS + `at`, length selector bytes, command.
    let tx_desc = |index: u8, at: u16, len: &[u8], cmd: u8| {
        [&[2, index, 0][..], &at.to_le_bytes(), len, &[cmd, 0]].concat()
    };
    let raw = |at: u16, bytes: &[u8]| {
        [&[10][..], &at.to_le_bytes(), &[bytes.len() as u8], bytes].concat()
    };
    let wire = |dest_sel: u8, len: &[u8]| [&[6, dest_sel][..], len, &[0x30]].concat();
    let (eop_rs, tdt1, tdt2, pass) = (0x0B, [4u8, 0], [4u8, 1], [7u8]);
    let frame = eth_frame([0x02, 0, 0, 0, 0, 1], 60);
    let mut u16_1500 = vec![6];
    u16_1500.extend_from_slice(&1500u16.to_le_bytes());
    let transmit = [
        raw(0xC000, &frame),
        tx_desc(0, 0, &[0], eop_rs),
        tdt1.to_vec(),
        raw(0xC100, &frame[..14]),
        tx_desc(1, 0x100, &[1], 0),
        tx_desc(2, 0x200, &u16_1500, eop_rs),
        tdt2.to_vec(),
        read_reg(TDH),
        read_reg(ICR),
    ];
    write(t, "transmit_frames", &[&[0], &transmit.concat()]);
    let receive = [
        wire(0, &[0]),
        pass.to_vec(),
        wire(2, &[1]),
        pass.to_vec(),
        read_reg(ICR),
        vec![5, 1],
        wire(3, &[2, 0]),
        wire(0, &[5]),
        pass.to_vec(),
    ];
    write(t, "receive_frames", &[&[0], &receive.concat()]);
    // Eight frames for seven free descriptors of 1 KiB: the ring runs dry (RXO), RDT refills it.
    let flood: Vec<u8> = (0..8).flat_map(|_| wire(1, &[0])).collect();
    write(
        t,
        "receive_ring_exhausted_then_refilled",
        &[
            &[0x08],
            &flood,
            &pass,
            &read_reg(ICR),
            &[5, 3],
            &pass,
            &[5, 3],
            &pass,
        ],
    );
    // The transmit ring moved to straddle the end of RAM: the NIC fails until reset.
    write(
        t,
        "transmit_ring_outside_ram_then_reset",
        &[
            &[0],
            &write_reg(TDBAL, 0xFFC0),
            &tx_desc(0, 0, &[0], eop_rs),
            &tdt1,
            &wire(0, &[0]),
            &pass,
            &[11, 0],
            &write_reg(RDLEN, 0x80),
            &pass,
        ],
    );
    // A buffer at the top of the address space, then a DEXT descriptor, with ITR throttling.
    let outside = [&[2, 1, 3, 4, 0x10, 0][..], &[0], &[eop_rs, 0]].concat();
    write(
        t,
        "buffer_outside_ram_and_dext_throttled",
        &[
            &[0x10],
            &tx_desc(0, 0, &[0], 0x20 | eop_rs),
            &tdt1,
            &[8, 0x10, 0],
            &outside,
            &tdt1,
            &pass,
            &[9],
            &pass,
        ],
    );
    let probe: Vec<u8> = (0..34u8).flat_map(|r| [1, r, 0]).collect();
    write(
        t,
        "register_probe",
        &[&[1], &probe, &[1, 200, 4, 0x03, 0x00]],
    );
}

/// virtio_net_mmio steps: 0 register write, 1 read, 2 descriptor, 4 avail push, 5 wire frame,
/// 6 raw bytes, 7 notify, 9 queue pass, 10 used_event, 11 reset and setup.
fn virtio_net_seeds() {
    let t = "virtio_net_mmio";
    // Descriptor `index` of queue `q` (sel bits 1-2 = 3: the indirect table) at buffer offset `at`.
    let desc = |sel: u8, index: u8, at: u16, len: &[u8], flags: u8, next: u8| {
        [
            &[2, sel, index, 1][..],
            &at.to_le_bytes(),
            len,
            &[flags, 0, next],
        ]
        .concat()
    };
    let push = |q: u8, head: u8| vec![4, q, head, 0];
    let notify = |q: u8| vec![7, if q == 0 { 0 } else { 120 }];
    let raw =
        |at: u16, bytes: &[u8]| [&[6][..], &at.to_le_bytes(), &[bytes.len() as u8], bytes].concat();
    let u16_len = |n: u16| [&[4][..], &n.to_le_bytes()].concat();
    let setup: &[u8] = &[3 << 1]; // standard setup, 8 entries
    let packet = [&[0u8; 12][..], &eth_frame([0x02, 0, 0, 0, 0, 1], 60)].concat();
    let transmit = [
        raw(0xC000, &packet),
        desc(1, 0, 0, &[3], 0, 0),
        push(1, 0),
        notify(1),
        raw(0xC100, &[0; 12]),
        raw(0xC200, &packet[12..]),
        desc(1, 1, 0x100, &[0], 1, 2),
        desc(1, 2, 0x200, &u16_len(60), 0, 0),
        push(1, 1),
        notify(1),
    ];
    write(t, "transmit_frames", &[setup, &transmit.concat()]);
    let receive = [
        desc(0, 0, 0, &[2], 2, 0),
        push(0, 0),
        notify(0),
        vec![5, 0, 0x41],
        vec![9],
        vec![5, 1, 0x42],
        desc(0, 1, 0x800, &[0], 3, 2),
        desc(0, 2, 0x1000, &[1], 2, 0),
        push(0, 1),
        notify(0),
        vec![1, 12, 0],
        vec![0, 13, 0, 1, 0, 0, 0, 0, 0, 0, 0],
    ];
    write(t, "receive_frames", &[setup, &receive.concat()]);
    // Frames before any buffer: the device stops reading; a posted buffer and a kick resume it.
    let starved = [
        vec![5, 0, 1],
        vec![5, 4, 0x00, 0x02, 2],
        vec![9],
        desc(0, 3, 0x2000, &[2], 2, 0),
        push(0, 3),
        vec![10, 0, 1, 0],
        notify(0),
        vec![9],
    ];
    write(
        t,
        "receive_starved_then_refilled",
        &[setup, &starved.concat()],
    );
    // The same two-descriptor transmit through an indirect table at 0x7000.
    let indirect = [
        raw(0xC000, &packet),
        desc(7, 0, 0, &[0], 1, 1),
        desc(7, 1, 12, &u16_len(60), 0, 0),
        [&[2, 1, 0, 0][..], &[6, 2], &[4, 0, 0]].concat(),
        push(1, 0),
        notify(1),
    ];
    write(t, "indirect_transmit", &[setup, &indirect.concat()]);
    // A descriptor loop: NEEDS_RESET until the driver resets and sets up again.
    let looped = [
        desc(1, 0, 0, &[0], 1, 1),
        desc(1, 1, 0x100, &[3], 1, 0),
        push(1, 0),
        notify(1),
        vec![1, 14, 0],
        transmit.concat(),
        vec![11],
        transmit.concat(),
    ];
    write(t, "descriptor_loop_then_reset", &[setup, &looped.concat()]);
    // A readable receive buffer, then an avail index far ahead on the transmit queue.
    let hostile = [
        desc(0, 0, 0, &[2], 0, 0),
        push(0, 0),
        notify(0),
        vec![11],
        vec![4, 1, 0, 0xF0, 0x00, 0x10],
        notify(1),
    ];
    write(
        t,
        "wrong_direction_and_avail_ahead",
        &[setup, &hostile.concat()],
    );
    let probe: Vec<u8> = (0..26u8).flat_map(|r| [1, r, 0]).collect();
    write(t, "register_probe", &[&[1], &probe]);
}

fn main() {
    storvsp_seeds();
    service_seeds();
    ide_seeds();
    virtio_seeds();
    ic_seeds();
    e1000_seeds();
    virtio_net_seeds();
}
