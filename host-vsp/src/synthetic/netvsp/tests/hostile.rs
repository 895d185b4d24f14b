//! A hostile guest: section indices and sizes outside the send buffer, RNDIS lengths, data and PPI
//! offsets beyond their message, oversized frames, pages outside guest RAM, a send flood while
//! receive is full, the receive buffer torn down while lent. Each gets an error status or is
//! dropped and counted; nothing reaches the network or memory it must not.

use std::time::Duration;

use netvsp_protocol::nvsp::NvspStatus;
use netvsp_protocol::rndis::packet_message_header;
use vmbus::packet::GpaRangeSpec;

use super::guest::{frame, wait_stats, HostPacket, NetGuest, MAC, RECV_PAGES};
use crate::synthetic::netvsp::NetvspConfig;

const FAIL: u32 = NvspStatus::FAIL.0;
const INVALID: u32 = NvspStatus::INVALID_RNDIS_PACKET.0;

#[test]
fn bad_sections_lengths_offsets_and_pages_are_refused() {
    let mut g = NetGuest::start(NetvspConfig::new(MAC));
    g.linux_up();
    let good = NetGuest::packets(&[&frame(60, 1)]);
    let n = good.len() as u32;
    let sections = (super::guest::SEND_PAGES * 4096 / 6144) as u32;
    // Section index past the buffer, huge index, size beyond a section, empty section.
    assert_eq!(g.send_section(sections, &[], n), FAIL);
    assert_eq!(g.send_section(0xFFFF_FFFE, &[], n), FAIL);
    assert_eq!(g.send_section(0, &good, 6145), FAIL);
    assert_eq!(g.send_section(0, &good, 0), INVALID);
    // msg_len beyond the bytes sent, and below a header.
    let mut m = good.clone();
    m[4..8].copy_from_slice(&(n + 8).to_le_bytes());
    assert_eq!(g.send_section(0, &m, n), INVALID);
    m[4..8].copy_from_slice(&4u32.to_le_bytes());
    assert_eq!(g.send_section(0, &m, n), INVALID);
    // data_offset/length beyond the message, wrapping, or into the header.
    for (off, len) in [(36u32, 1000u32), (u32::MAX - 2, 8), (4, 60)] {
        let mut m = good.clone();
        m[8..12].copy_from_slice(&off.to_le_bytes());
        m[12..16].copy_from_slice(&len.to_le_bytes());
        assert_eq!(g.send_section(1, &m, n), INVALID, "data {off}+{len}");
    }
    // A PPI record whose size runs past the PPI area, and a PPI area past the message.
    let mut m = packet_message_header(60, 12).to_vec();
    m.extend_from_slice(&100u32.to_le_bytes());
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(&12u32.to_le_bytes());
    m.extend_from_slice(&frame(60, 2));
    assert_eq!(g.send_section(1, &m, m.len() as u32), INVALID);
    let mut m2 = m.clone();
    m2[28..32].copy_from_slice(&5000u32.to_le_bytes());
    assert_eq!(g.send_section(1, &m2, m2.len() as u32), INVALID);
    // An oversized frame (it fits the section, not the wire) is dropped, not sent.
    let big = NetGuest::packets(&[&frame(2000, 3)]);
    assert_eq!(
        g.send_section(2, &big, big.len() as u32),
        NvspStatus::SUCCESS.0
    );
    // GPA-direct pages outside guest RAM.
    let far = [1u64 << 40];
    let range = [GpaRangeSpec {
        byte_count: 100,
        byte_offset: 0,
        pfns: &far,
    }];
    assert_eq!(g.send_gpa_direct(0, &range), INVALID);
    let huge = [u64::MAX / 4096 + 1];
    let range = [GpaRangeSpec {
        byte_count: 100,
        byte_offset: 0,
        pfns: &huge,
    }];
    assert_eq!(g.send_gpa_direct(0, &range), FAIL);
    // A frame header in RAM whose data lies outside it.
    let hdr = [g.scratch[0]];
    g.vm.write_memory(hdr[0] * 4096, &packet_message_header(200, 0));
    let ranges = [
        GpaRangeSpec {
            byte_count: 44,
            byte_offset: 0,
            pfns: &hdr,
        },
        GpaRangeSpec {
            byte_count: 200,
            byte_offset: 0,
            pfns: &far,
        },
    ];
    assert_eq!(g.send_gpa_direct(0, &ranges), FAIL);

    assert_eq!(g.net.pending(), 0, "nothing malformed reached the network");
    wait_stats(&g, |s| s.netvsp.bad_rndis >= 7 && s.netvsp.tx_errors >= 1);
    let s = g.stats().netvsp;
    assert_eq!(s.tx_frames, 0);
    assert_eq!(s.tx_dropped_bad_length, 1);
    assert!(s.bad_sections >= 3 && s.bad_rndis >= 7, "{s:?}");
    // The NIC still works.
    assert_eq!(g.send_section(0, &good, n), NvspStatus::SUCCESS.0);
    assert_eq!(g.net_frames(1), vec![frame(60, 1)]);
}

#[test]
fn garbage_nvsp_is_counted_and_the_channel_keeps_working() {
    let mut g = NetGuest::start(NetvspConfig::new(MAC));
    // Before INIT, and unknown types, short bodies, empty payloads.
    g.send_raw_inband(&[107, 0, 0, 0], true);
    g.linux_up();
    g.send_raw_inband(&[0xEE, 0, 0, 0, 1, 2], true);
    g.send_raw_inband(&[101, 0, 0, 0, 1], true);
    g.send_raw_inband(&[1, 2], true);
    // A receive completion for a packet never sent.
    g.complete_receive(0xDEAD);
    // A second receive buffer is refused.
    let c = g.request(
        netvsp_protocol::nvsp::MessageType::SEND_RECEIVE_BUFFER,
        &netvsp_protocol::nvsp::SendReceiveBuffer {
            gpadl_handle: g.recv_gpadl.into(),
            id: 0xCAFE.into(),
        },
    );
    assert_eq!(u32::from_le_bytes(c[4..8].try_into().unwrap()), FAIL);
    wait_stats(&g, |s| {
        s.netvsp.stray_completions == 1 && s.netvsp.malformed >= 4
    });
    g.net.send_bytes(&frame(64, 5)).unwrap();
    let (_, frames) = g.take_frames();
    assert_eq!(frames, vec![frame(64, 5)]);
}

#[test]
fn a_send_flood_while_receive_is_full_is_served() {
    let mut g = NetGuest::start(NetvspConfig::new(MAC));
    g.linux_up();
    let sections = RECV_PAGES * 4096 / 2048;
    for i in 0..sections + 10 {
        g.net.send_bytes(&frame(200, i as u8)).unwrap();
    }
    wait_stats(&g, |s| s.netvsp.rx_frames == sections as u64);
    let before = g.stats().channel.wakeups;
    for i in 0..200u32 {
        let m = NetGuest::packets(&[&frame(100, i as u8)]);
        assert_eq!(
            g.send_section(i % 4, &m, m.len() as u32),
            NvspStatus::SUCCESS.0
        );
    }
    let got = g.net_frames(200);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, f)| *f == frame(100, i as u8)));
    // Receive stayed stuck without the device spinning on the waiting frames.
    std::thread::sleep(Duration::from_millis(200));
    let s = g.stats();
    assert_eq!(s.netvsp.rx_frames, sections as u64);
    assert!(
        s.channel.wakeups - before < 1000,
        "{} wakeups",
        s.channel.wakeups - before
    );
}

#[test]
fn the_receive_buffer_torn_down_while_lent_is_dropped_not_touched() {
    let mut g = NetGuest::start(NetvspConfig::new(MAC));
    g.linux_up();
    g.net.send_bytes(&frame(300, 1)).unwrap();
    let (t, _) = g.take_frames();
    g.vm.client.teardown_gpadl(g.recv_gpadl).unwrap();
    g.vm.pump_until("GPADL_TORNDOWN", |vm| {
        vm.events
            .iter()
            .any(|e| matches!(e, vmbus::client::ClientAction::GpadlTornDown { .. }))
    });
    let base = g.recv_pfns[0] * 4096;
    g.vm.write_memory(base, &vec![0xEE; RECV_PAGES * 4096]);
    g.complete_receive(t);
    for i in 0..5 {
        g.net.send_bytes(&frame(100, i)).unwrap();
    }
    wait_stats(&g, |s| {
        s.netvsp.rx_dropped_no_buffer + s.netvsp.revoked_buffers >= 5
    });
    assert!(!g.arrives_within(Duration::from_millis(100), |p| matches!(
        p,
        HostPacket::Transfer { .. }
    )));
    assert!(g
        .vm
        .read_memory(base, RECV_PAGES * 4096)
        .iter()
        .all(|&b| b == 0xEE));
    let m = NetGuest::packets(&[&frame(90, 9)]);
    assert_eq!(g.send_section(0, &m, m.len() as u32), NvspStatus::SUCCESS.0);
    assert_eq!(g.net_frames(1), vec![frame(90, 9)]);
}
