//! Bring-up as Linux does it: version fallback, NDIS config and version, both buffers, RNDIS
//! INITIALIZE and every OID Linux queries and sets, answered honestly.

use netvsp_protocol::ndis::{object_type, NdisObjectHeader, NdisOffloadParameters, Oid};
use netvsp_protocol::nvsp::{NvspStatus, NvspVersion};
use netvsp_protocol::rndis::{InitializeComplete, RndisMessageRef, RndisMessageType, RndisStatus};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::guest::{NetGuest, MAC};
use crate::synthetic::netvsp::NetvspConfig;

#[test]
fn linux_order_init_negotiates_6_1_and_answers_every_oid() {
    let mut g = NetGuest::start(NetvspConfig::new(MAC));
    assert_eq!(g.nvsp_init(), NvspVersion::V61.0);
    assert_eq!(g.sub_alloc, 2048);
    assert_eq!(g.section_size, 6144);

    let init = g.rndis_init();
    let msg = RndisMessageRef::parse(&init).unwrap();
    assert_eq!(msg.message_type, RndisMessageType::INITIALIZE_COMPLETE);
    let c: InitializeComplete = msg.body_as().unwrap();
    assert_eq!(c.status.get(), RndisStatus::SUCCESS.0);
    assert_eq!(
        (c.major_version.get(), c.device_flags.get(), c.medium.get()),
        (1, 1, 0)
    );
    assert_eq!(
        (
            c.max_packets_per_message.get(),
            c.packet_alignment_factor.get()
        ),
        (8, 3)
    );

    let (s, mtu) = g.query(Oid::GEN_MAXIMUM_FRAME_SIZE.0);
    assert_eq!((s, mtu), (0, 1500u32.to_le_bytes().to_vec()));
    let (s, mac) = g.query(Oid::IEEE_802_3_PERMANENT_ADDRESS.0);
    assert_eq!((s, mac), (0, MAC.to_vec()));
    let (s, caps) = g.query(Oid::TCP_OFFLOAD_HARDWARE_CAPABILITIES.0);
    assert_eq!(s, 0);
    assert_eq!(caps.len(), 156, "revision 3 at NVSP >= 5");
    let (h, _) = NdisObjectHeader::read_from_prefix(&caps).unwrap();
    assert_eq!((h.object_type, h.revision, h.size.get()), (0xA7, 3, 156));
    assert!(caps[4..].iter().all(|&b| b == 0), "no offload is claimed");

    // Linux's offload parameters with everything disabled are accepted; enabling LSO is not.
    let mut p = NdisOffloadParameters::new_zeroed();
    p.header = NdisObjectHeader {
        object_type: object_type::DEFAULT,
        revision: 3,
        size: 28.into(),
    };
    p.ip4_checksum = 1;
    p.tcp4_checksum = 1;
    p.lso_v2_ip4 = 1;
    assert_eq!(g.set(Oid::TCP_OFFLOAD_PARAMETERS.0, p.as_bytes()), 0);
    p.lso_v2_ip4 = 2;
    assert_eq!(
        g.set(Oid::TCP_OFFLOAD_PARAMETERS.0, p.as_bytes()),
        RndisStatus::NOT_SUPPORTED.0
    );

    assert_eq!(
        g.query(Oid::GEN_MEDIA_CONNECT_STATUS.0),
        (0, 0u32.to_le_bytes().to_vec())
    );
    assert_eq!(
        g.query(Oid::GEN_LINK_SPEED.0),
        (0, 100_000_000u32.to_le_bytes().to_vec())
    );
    assert_eq!(
        g.query(Oid::GEN_RECEIVE_SCALE_CAPABILITIES.0).0,
        RndisStatus::NOT_SUPPORTED.0
    );
    assert_eq!(
        g.query(Oid::GEN_FRIENDLY_NAME.0).0,
        RndisStatus::NOT_SUPPORTED.0
    );
    assert_eq!(
        g.set(Oid::GEN_CURRENT_PACKET_FILTER.0, &0x0Du32.to_le_bytes()),
        0
    );
    assert_eq!(
        g.query(Oid::GEN_CURRENT_PACKET_FILTER.0),
        (0, 0x0Du32.to_le_bytes().to_vec())
    );
    // A filter value shorter than a u32 is refused.
    assert_eq!(
        g.set(Oid::GEN_CURRENT_PACKET_FILTER.0, &[1, 0]),
        RndisStatus::INVALID_LENGTH.0
    );
    let s = g.stats();
    assert_eq!(s.netvsp.malformed, 0);
    assert!(
        s.channel.guest_signals > 0 && s.channel.interrupts > 0,
        "{s:?}"
    );
}

#[test]
fn versions_the_host_lacks_are_refused_and_linux_falls_back() {
    let mut config = NetvspConfig::new(MAC);
    config.versions = vec![NvspVersion::V1, NvspVersion::V2, NvspVersion::V4];
    let mut g = NetGuest::start(config);
    assert_eq!(g.init(NvspVersion::V61.0), (NvspStatus::FAIL.0, u32::MAX));
    assert_eq!(g.init(NvspVersion::V5.0).0, NvspStatus::FAIL.0);
    assert_eq!(
        g.init(NvspVersion::V4.0),
        (NvspStatus::SUCCESS.0, NvspVersion::V4.0)
    );
    // The whole Linux sequence lands on 4, where NDIS_OFFLOAD is revision 2, 144 bytes.
    assert_eq!(g.nvsp_init(), NvspVersion::V4.0);
    g.rndis_init();
    let (s, caps) = g.query(Oid::TCP_OFFLOAD_HARDWARE_CAPABILITIES.0);
    assert_eq!((s, caps.len(), caps[1]), (0, 144, 2));
}

#[test]
fn rndis_requests_before_initialize_are_refused() {
    let mut g = NetGuest::start(NetvspConfig::new(MAC));
    g.nvsp_init();
    let (status, info) = g.query(Oid::IEEE_802_3_PERMANENT_ADDRESS.0);
    assert_eq!((status, info.len()), (RndisStatus::FAILURE.0, 0));
    assert_eq!(
        g.set(Oid::GEN_CURRENT_PACKET_FILTER.0, &0x0Du32.to_le_bytes()),
        RndisStatus::FAILURE.0
    );
    // A frame before INITIALIZE is completed but never sent.
    let msgs = NetGuest::packets(&[&super::guest::frame(60, 1)]);
    assert_eq!(
        g.send_section(0, &msgs, msgs.len() as u32),
        NvspStatus::SUCCESS.0
    );
    super::guest::wait_stats(&g, |s| s.netvsp.tx_dropped_not_initialized == 1);
    let s = g.stats().netvsp;
    assert_eq!((s.tx_frames, s.rndis_refused), (0, 2));
    assert_eq!(g.net.pending(), 0);
    // After INITIALIZE the same query succeeds.
    g.rndis_init();
    assert_eq!(
        g.query(Oid::IEEE_802_3_PERMANENT_ADDRESS.0),
        (0, MAC.to_vec())
    );
}
