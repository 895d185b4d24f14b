//! Frames both ways, byte for byte through a MemoryNet: sends from sections (batched) and from
//! GPA-direct pages, receives several per packet with sections recycled, the packet filter, link
//! indications.

use std::time::Duration;

use netvsp_protocol::ndis::Oid;
use netvsp_protocol::nvsp::NvspStatus;
use netvsp_protocol::rndis::{IndicateStatus, RndisMessageRef, RndisMessageType, RndisStatus};
use vmbus::packet::GpaRangeSpec;

use super::guest::{frame, HostPacket, NetGuest, MAC, RECV_PAGES};
use crate::synthetic::netvsp::NetvspConfig;

#[test]
fn guest_frames_reach_the_network_from_batched_sections_and_from_pages() {
    let mut g = NetGuest::start(NetvspConfig::new(MAC));
    g.linux_up();
    let frames = [frame(60, 1), frame(1514, 2), frame(333, 3)];
    let batch = NetGuest::packets(&[&frames[0], &frames[1], &frames[2]]);
    assert!(batch.len() < 6144);
    assert_eq!(
        g.send_section(2, &batch, batch.len() as u32),
        NvspStatus::SUCCESS.0
    );
    assert_eq!(g.net_frames(3), frames.to_vec());

    // A frame in GPA-direct pages: the header in one range, the frame across a page boundary.
    let f = frame(1000, 9);
    let header = netvsp_protocol::rndis::packet_message_header(1000, 0);
    let frame_gpa = g.scratch[0] * 4096 + 3500;
    g.vm.write_memory(g.scratch[1] * 4096 + 4000, &[0; 96]);
    g.vm.write_memory(frame_gpa, &f);
    let hdr_page = [g.vm.alloc_pages(1)[0]];
    g.vm.write_memory(hdr_page[0] * 4096 + 100, &header);
    let pages = [g.scratch[0], g.scratch[1]];
    let ranges = [
        GpaRangeSpec {
            byte_count: 44,
            byte_offset: 100,
            pfns: &hdr_page,
        },
        GpaRangeSpec {
            byte_count: 1000,
            byte_offset: 3500,
            pfns: &pages,
        },
    ];
    assert_eq!(g.send_gpa_direct(0, &ranges), NvspStatus::SUCCESS.0);
    assert_eq!(g.net_frames(1), vec![f]);
    super::guest::wait_stats(&g, |s| s.netvsp.tx_frames == 4);
    assert_eq!(g.stats().netvsp.tx_bytes, 60 + 1514 + 333 + 1000);
}

#[test]
fn network_frames_arrive_several_per_packet_and_sections_recycle() {
    let mut g = NetGuest::start(NetvspConfig::new(MAC));
    g.linux_up();
    let sections = RECV_PAGES * 4096 / 2048;
    // Lend every section: one frame each, none completed.
    let mut lent = Vec::new();
    let mut got = Vec::new();
    for i in 0..sections {
        g.net.send_bytes(&frame(100 + i, i as u8)).unwrap();
        let (t, frames) = g.take_frames();
        lent.push(t);
        got.extend(frames);
    }
    assert_eq!(
        got,
        (0..sections)
            .map(|i| frame(100 + i, i as u8))
            .collect::<Vec<_>>()
    );
    // With no section free, frames wait in the backend: none arrives, none is dropped.
    for i in 0..5 {
        g.net.send_bytes(&frame(1514, 0x40 + i)).unwrap();
    }
    assert!(!g.arrives_within(Duration::from_millis(150), |p| matches!(
        p,
        HostPacket::Transfer { .. }
    )));
    assert_eq!(g.stats().netvsp.rx_frames, sections as u64);
    // Sending still works while receive is stuck.
    let m = NetGuest::packets(&[&frame(70, 0x77)]);
    assert_eq!(g.send_section(0, &m, m.len() as u32), NvspStatus::SUCCESS.0);
    assert_eq!(g.net_frames(1), vec![frame(70, 0x77)]);
    // Completing returns the sections; the five waiting frames come in fewer than five packets.
    g.complete_receives(&lent);
    let mut rest = Vec::new();
    let mut packets = 0;
    while rest.len() < 5 {
        let (t, frames) = g.take_frames();
        packets += 1;
        rest.extend(frames);
        g.complete_receive(t);
    }
    assert_eq!(
        rest,
        (0..5).map(|i| frame(1514, 0x40 + i)).collect::<Vec<_>>()
    );
    assert!(
        packets < 5,
        "waiting frames were batched ({packets} packets)"
    );
    super::guest::wait_stats(&g, |s| s.netvsp.rx_frames == sections as u64 + 5);
    let s = g.stats().netvsp;
    assert_eq!(
        s.rx_dropped_filtered + s.rx_dropped_too_large + s.rx_errors,
        0
    );
}

#[test]
fn filter_zero_delivers_nothing() {
    let mut g = NetGuest::start(NetvspConfig::new(MAC));
    g.nvsp_init();
    g.rndis_init();
    g.net.send_bytes(&frame(60, 1)).unwrap();
    assert!(!g.arrives_within(Duration::from_millis(150), |p| matches!(
        p,
        HostPacket::Transfer { .. }
    )));
    super::guest::wait_stats(&g, |s| s.netvsp.rx_dropped_filtered == 1);
    assert_eq!(
        g.set(Oid::GEN_CURRENT_PACKET_FILTER.0, &0x0Du32.to_le_bytes()),
        0
    );
    g.net.send_bytes(&frame(61, 2)).unwrap();
    let (t, frames) = g.take_frames();
    assert_eq!(frames, vec![frame(61, 2)]);
    g.complete_receive(t);
    assert_eq!(
        g.set(Oid::GEN_CURRENT_PACKET_FILTER.0, &0u32.to_le_bytes()),
        0
    );
    g.net.send_bytes(&frame(62, 3)).unwrap();
    assert!(!g.arrives_within(Duration::from_millis(150), |p| matches!(
        p,
        HostPacket::Transfer { .. }
    )));
    super::guest::wait_stats(&g, |s| s.netvsp.rx_dropped_filtered == 2);
    assert_eq!(g.stats().netvsp.rx_frames, 1);
}

fn indication(m: &[u8]) -> u32 {
    let msg = RndisMessageRef::parse(m).unwrap();
    assert_eq!(msg.message_type, RndisMessageType::INDICATE_STATUS);
    let i: IndicateStatus = msg.body_as().unwrap();
    i.status.get()
}

#[test]
fn link_changes_are_indicated_and_queried() {
    let mut g = NetGuest::start(NetvspConfig::new(MAC));
    g.linux_up();
    g.device.set_link_up(false);
    assert_eq!(
        indication(&g.take_control()),
        RndisStatus::MEDIA_DISCONNECT.0
    );
    assert_eq!(
        g.query(Oid::GEN_MEDIA_CONNECT_STATUS.0),
        (0, 1u32.to_le_bytes().to_vec())
    );
    g.device.set_link_up(true);
    assert_eq!(indication(&g.take_control()), RndisStatus::MEDIA_CONNECT.0);
    assert_eq!(
        g.query(Oid::GEN_MEDIA_CONNECT_STATUS.0),
        (0, 0u32.to_le_bytes().to_vec())
    );
    super::guest::wait_stats(&g, |s| s.netvsp.link_indications == 2);
}

#[test]
fn keepalive_reset_and_halt() {
    let mut g = NetGuest::start(NetvspConfig::new(MAC));
    g.linux_up();
    let ka = super::guest::encode(RndisMessageType::KEEPALIVE, &7u32.to_le_bytes(), &[]);
    let a = g.rndis(&ka);
    assert_eq!(
        RndisMessageRef::parse(&a).unwrap().message_type,
        RndisMessageType::KEEPALIVE_COMPLETE
    );
    assert_eq!(&a[8..16], &[7, 0, 0, 0, 0, 0, 0, 0]);
    // RESET clears the addressing (the filter) and says so.
    let a = g.rndis(&super::guest::encode(
        RndisMessageType::RESET,
        &0u32.to_le_bytes(),
        &[],
    ));
    assert_eq!(&a[8..16], &[0, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(
        g.query(Oid::GEN_CURRENT_PACKET_FILTER.0),
        (0, 0u32.to_le_bytes().to_vec())
    );
    // HALT gets no answer and uninitializes.
    let halt = super::guest::encode(RndisMessageType::HALT, &9u32.to_le_bytes(), &[]);
    assert_eq!(g.send_control(&halt), NvspStatus::SUCCESS.0);
    assert_eq!(
        g.query(Oid::IEEE_802_3_PERMANENT_ADDRESS.0).0,
        RndisStatus::FAILURE.0
    );
}
