//! The control path against scripted hosts: Linux's order and values, then each host reply made
//! hostile in turn.

use netvsp_protocol::nvsp::{MessageType, NvspStatus};
use netvsp_protocol::rndis::RndisMessageRef;

use super::super::test_replies::*;
use super::*;

const RECEIVE_LEN: usize = 1 << 20;

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

#[test]
fn initialisation_follows_linux_order_and_values() {
    // The host refuses 6.1 and takes 6.
    let (info, client, t) = run_init(RECEIVE_LEN, |stage, reply| match stage {
        Stage::Init(0x60001) => {
            let Reply::Completion(tid, _) = reply else {
                unreachable!()
            };
            Reply::Completion(tid, init_complete(0, NvspStatus::FAIL))
        }
        _ => reply,
    });
    let info = info.unwrap();
    let types: Vec<_> = t.nvsp.iter().map(|(ty, _, c)| (*ty, *c)).collect();
    assert_eq!(
        types,
        [
            (MessageType::INIT, true),
            (MessageType::INIT, true),
            (MessageType::SEND_NDIS_CONFIG, false),
            (MessageType::SEND_NDIS_VERSION, false),
            (MessageType::SEND_RECEIVE_BUFFER, true),
            (MessageType::SEND_SEND_BUFFER, true),
        ]
    );
    let n = &t.nvsp;
    assert_eq!(
        (u32_at(&n[0].1, 4), u32_at(&n[0].1, 8)),
        (0x60001, 0x60001),
        "min = max"
    );
    assert_eq!((u32_at(&n[1].1, 4), u32_at(&n[1].1, 8)), (0x60000, 0x60000));
    assert_eq!(u32_at(&n[2].1, 4), 1514, "NDIS config MTU");
    assert_eq!(u64::from(u32_at(&n[2].1, 12)), 1 << 3, "802.1Q only");
    assert_eq!((u32_at(&n[3].1, 4), u32_at(&n[3].1, 8)), (6, 30));
    assert_eq!(u32_at(&n[4].1, 4), 0x101, "receive GPADL");
    assert_eq!(&n[4].1[8..10], &0xCAFEu16.to_le_bytes());
    assert_eq!(u32_at(&n[5].1, 4), 0x102, "send GPADL");
    assert_eq!(&n[5].1[8..10], &[0, 0]);
    assert!(n.iter().all(|(_, bytes, _)| bytes.len() == 40));
    assert_eq!(t.gpadls, 2);

    // RNDIS: INITIALIZE, the four QUERYs, the SET — request ids from 1.
    let control: Vec<(u32, u32, u32)> = t
        .control
        .iter()
        .map(|m| {
            let r = RndisMessageRef::parse(m).unwrap();
            (r.message_type.0, u32_at(m, 8), u32_at(m, 12))
        })
        .collect();
    assert_eq!(
        control,
        [
            (2, 1, 1),           // INITIALIZE id 1, major 1
            (4, 2, 0x0001_0106), // QUERY maximum frame size
            (4, 3, 0x0101_0101), // QUERY permanent address
            (4, 4, 0x0001_0114), // QUERY media connect status
            (4, 5, 0x0001_0107), // QUERY link speed (version ≥ 5)
            (5, 6, 0x0001_010E), // SET packet filter
        ]
    );
    assert_eq!(u32_at(&t.control[0], 20), 0x4000, "max transfer size");
    let set = &t.control[5];
    assert_eq!(
        (u32_at(set, 16), u32_at(set, 20)),
        (4, 20),
        "info length, offset"
    );
    assert_eq!(
        u32_at(set, 28),
        0x0D,
        "directed | all-multicast | broadcast"
    );

    assert_eq!(info.version, netvsp_protocol::nvsp::NvspVersion::V6);
    assert_eq!(info.ndis_version, (6, 30));
    assert_eq!(info.mac, MAC);
    assert_eq!(info.mtu, 1500);
    assert_eq!(info.send_section_size, 6144);
    assert_eq!(info.receive.size, RECEIVE_SECTION);
    assert_eq!(info.receive.count, RECEIVE_LEN as u32 / RECEIVE_SECTION);
    assert_eq!(info.link_speed_bps, Some(10_000_000_000));
    assert!(client.link_up());
}

#[test]
fn old_versions_skip_ndis_config_and_link_speed() {
    let (info, _, t) = run_init(RECEIVE_LEN, |stage, reply| match (stage, reply) {
        (Stage::Init(v), Reply::Completion(tid, _)) if v != 0x2 => {
            Reply::Completion(tid, init_complete(0, NvspStatus::FAIL))
        }
        (_, reply) => reply,
    });
    let info = info.unwrap();
    assert_eq!(info.version, netvsp_protocol::nvsp::NvspVersion::V1);
    assert_eq!(info.ndis_version, (6, 1));
    assert_eq!(
        t.nvsp.iter().filter(|n| n.0 == MessageType::INIT).count(),
        6
    );
    assert!(t.nvsp.iter().all(|n| n.0 != MessageType::SEND_NDIS_CONFIG));
    assert_eq!(t.control.len(), 5, "no link speed query below version 5");
    assert_eq!(info.link_speed_bps, None);
}

#[test]
fn a_smaller_host_mtu_lowers_ours_and_a_failed_media_query_leaves_the_link_up() {
    let (info, client, _) = run_init(RECEIVE_LEN, |stage, reply| match stage {
        Stage::MaxFrameSize => {
            let Reply::Rndis(m) = reply else {
                unreachable!()
            };
            Reply::Rndis(good_query(u32_at(&m, 8), &1400u32.to_le_bytes()))
        }
        Stage::MediaConnect => {
            let Reply::Rndis(m) = reply else {
                unreachable!()
            };
            Reply::Rndis(query_complete(u32_at(&m, 8), 0xC000_0001, &[], 0, 0))
        }
        _ => reply,
    });
    assert_eq!(info.unwrap().mtu, 1400);
    assert!(client.link_up());
}

#[test]
fn the_next_control_message_waits_for_the_previous_packets_completion() {
    let mut held = 0;
    let (info, _, _) = run_init(RECEIVE_LEN, |stage, reply| {
        if stage == Stage::ControlSent {
            held += 1;
        }
        reply
    });
    assert!(info.is_ok());
    assert_eq!(held, 6);
    // And without the completion nothing more is sent.
    let (info, client, t) = run_init(RECEIVE_LEN, |stage, reply| match stage {
        Stage::ControlSent => Reply::None,
        _ => reply,
    });
    assert_eq!(
        info.unwrap_err(),
        NetvscError::NotReady,
        "stalled, not failed"
    );
    assert_eq!(t.control.len(), 1);
    assert!(!client.is_ready());
}

/// Runs initialisation with the reply at `at` replaced by `bad` (given the good one).
fn hostile(at: Stage, bad: impl Fn(Reply) -> Reply) -> NetvscError {
    let (info, client, _) = run_init(
        RECEIVE_LEN,
        |stage, reply| if stage == at { bad(reply) } else { reply },
    );
    assert!(!client.is_ready());
    info.unwrap_err()
}

fn completion(f: impl Fn(u64) -> Vec<u8>) -> impl Fn(Reply) -> Reply {
    move |reply| {
        let Reply::Completion(tid, _) = reply else {
            unreachable!()
        };
        Reply::Completion(tid, f(tid))
    }
}

fn rndis(f: impl Fn(u32) -> Vec<u8>) -> impl Fn(Reply) -> Reply {
    move |reply| {
        let Reply::Rndis(m) = reply else {
            unreachable!()
        };
        Reply::Rndis(f(u32_at(&m, 8)))
    }
}

#[test]
fn hostile_nvsp_completions_are_refused() {
    let init = Stage::Init(0x60001);
    assert_eq!(
        hostile(init, |_| Reply::Completion(
            12345,
            init_complete(0, NvspStatus::SUCCESS)
        )),
        NetvscError::UnknownTransaction(12345)
    );
    assert!(matches!(
        hostile(
            init,
            completion(|_| init_complete(0, NvspStatus::SUCCESS)[..20].to_vec())
        ),
        NetvscError::ShortNvsp {
            len: 20,
            need: 28,
            ..
        }
    ));
    assert!(matches!(
        hostile(
            init,
            completion(|_| send_complete(NvspStatus::SUCCESS, 6144))
        ),
        NetvscError::UnexpectedNvsp {
            expected: MessageType::INIT_COMPLETE,
            ..
        }
    ));
    assert!(matches!(
        hostile(init, completion(|_| alloc::vec![1, 0])),
        NetvscError::Nvsp(_)
    ));
    // Every version refused.
    let (info, _, _) = run_init(RECEIVE_LEN, |stage, reply| match (stage, reply) {
        (Stage::Init(_), Reply::Completion(tid, _)) => {
            Reply::Completion(tid, init_complete(0, NvspStatus::FAIL))
        }
        (_, r) => r,
    });
    assert_eq!(info.unwrap_err(), NetvscError::NoCommonVersion);
}

#[test]
fn hostile_receive_buffer_tables_are_refused() {
    let at = Stage::ReceiveBuffer;
    let end = RECEIVE_LEN as u32;
    for table in [
        receive_complete(2, 0, 1728, 100, 172_800), // two sections
        receive_complete(1, 4096, 1728, 100, 176_896), // not at offset 0
        receive_complete(1, 0, 32, 100, 3200),      // slots too small for a message
        receive_complete(1, 0, 1728, 0, 0),         // no slot
        receive_complete(1, 0, 1728, 1000, 1_728_000), // beyond the buffer
        receive_complete(1, 0, 0x1000_0000, 0x10, 0), // size × count beyond the buffer
        receive_complete(1, 0, 1728, 100, end + 1), // end beyond the buffer
    ] {
        let err = hostile(at, completion(|_| table.clone()));
        assert!(
            matches!(err, NetvscError::BadReceiveSections { .. }),
            "{err:?}"
        );
    }
    assert!(matches!(
        hostile(
            at,
            completion(|_| good_receive_complete(RECEIVE_LEN)[..24].to_vec())
        ),
        NetvscError::ShortNvsp { need: 28, .. }
    ));
    let mut refused = good_receive_complete(RECEIVE_LEN);
    refused[4] = 2;
    assert_eq!(
        hostile(at, completion(|_| refused.clone())),
        NetvscError::HostRefused {
            what: "SEND_RECV_BUF",
            status: 2
        }
    );
}

#[test]
fn hostile_send_buffer_sections_are_refused() {
    let at = Stage::SendBuffer;
    let buffer = NetvscConfig::default().send_buffer_len;
    for size in [0, 67, buffer as u32 + 1] {
        assert_eq!(
            hostile(at, completion(|_| send_complete(NvspStatus::SUCCESS, size))),
            NetvscError::BadSendSection { size, buffer }
        );
    }
    assert_eq!(
        hostile(at, completion(|_| send_complete(NvspStatus::FAIL, 6144))),
        NetvscError::HostRefused {
            what: "SEND_SEND_BUF",
            status: 2
        }
    );
    assert!(matches!(
        hostile(
            at,
            completion(|_| send_complete(NvspStatus::SUCCESS, 6144)[..8].to_vec())
        ),
        NetvscError::ShortNvsp { need: 12, .. }
    ));
}

#[test]
fn hostile_rndis_replies_are_refused() {
    // A reply for another request.
    assert_eq!(
        hostile(
            Stage::RndisInit,
            rndis(|id| initialize_complete(id + 7, 0, 0))
        ),
        NetvscError::UnexpectedRndis {
            message_type: netvsp_protocol::rndis::RndisMessageType::INITIALIZE_COMPLETE,
            got: 8,
            expected: Some(1),
        }
    );
    // A reply of another type.
    assert!(matches!(
        hostile(Stage::RndisInit, rndis(|id| set_complete(id, 0))),
        NetvscError::UnexpectedRndis {
            expected: Some(1),
            ..
        }
    ));
    assert_eq!(
        hostile(
            Stage::RndisInit,
            rndis(|id| initialize_complete(id, 0xC000_0001, 0))
        ),
        NetvscError::HostRefused {
            what: "RNDIS INITIALIZE",
            status: 0xC000_0001
        }
    );
    assert!(matches!(
        hostile(Stage::RndisInit, rndis(|id| initialize_complete(id, 0, 2))),
        NetvscError::BadValue {
            what: "RNDIS medium",
            value: 2
        }
    ));
    // msg_len longer than the bytes it came in.
    assert!(matches!(
        hostile(
            Stage::RndisInit,
            rndis(|id| {
                let mut m = initialize_complete(id, 0, 0);
                m[4] = 200;
                m
            })
        ),
        NetvscError::Rndis(_)
    ));
    // Information buffers outside the message, overlapping its header, or too short.
    for (value, offset, len) in [
        (&[0u8; 4][..], 16, 40),
        (&[0u8; 4][..], 8, 4),
        (&[0u8; 4][..], 0xFFFF_FFF0, 4),
        (&[0u8; 2][..], 16, 2),
    ] {
        let err = hostile(
            Stage::MaxFrameSize,
            rndis(|id| query_complete(id, 0, value, offset, len)),
        );
        assert!(
            matches!(
                err,
                NetvscError::BadQueryInfo {
                    what: "maximum frame size",
                    ..
                }
            ),
            "{err:?}"
        );
    }
    assert!(matches!(
        hostile(
            Stage::MaxFrameSize,
            rndis(|id| good_query(id, &60u32.to_le_bytes()))
        ),
        NetvscError::BadValue {
            what: "maximum frame size",
            value: 60
        }
    ));
    for mac in [[0u8; 6], [0x01, 0, 0x5e, 0, 0, 1]] {
        assert!(matches!(
            hostile(Stage::PermanentAddress, rndis(|id| good_query(id, &mac))),
            NetvscError::BadValue {
                what: "MAC address",
                ..
            }
        ));
    }
    assert!(matches!(
        hostile(
            Stage::PermanentAddress,
            rndis(|id| good_query(id, &MAC[..4]))
        ),
        NetvscError::BadQueryInfo {
            what: "permanent address",
            len: 4,
            ..
        }
    ));
    assert_eq!(
        hostile(
            Stage::PacketFilter,
            rndis(|id| set_complete(id, 0xC000_00BB))
        ),
        NetvscError::HostRefused {
            what: "SET packet filter",
            status: 0xC000_00BB
        }
    );
    // The packet's completion with a forged transaction id.
    assert_eq!(
        hostile(Stage::ControlSent, |_| Reply::Completion(
            RNDIS_TID | 99,
            alloc::vec![108, 0, 0, 0, 1, 0, 0, 0]
        )),
        NetvscError::UnknownTransaction(RNDIS_TID | 99)
    );
}

#[test]
fn indications_track_the_link() {
    let (info, mut client, _) = run_init(RECEIVE_LEN, |_, r| r);
    info.unwrap();
    assert_eq!(
        client.handle_rndis(&indicate(0x4001_000C, &[])),
        Ok(Some(LinkEvent::Down))
    );
    assert!(!client.link_up());
    assert_eq!(
        client.handle_rndis(&indicate(0x4001_000B, &[])),
        Ok(Some(LinkEvent::Up))
    );
    assert!(client.link_up());
    assert_eq!(
        client.handle_rndis(&indicate(0x4001_0013, &1000u32.to_le_bytes())),
        Ok(Some(LinkEvent::Speed(100_000)))
    );
    assert!(matches!(
        client.handle_rndis(&indicate(0x4001_0013, &[1])),
        Err(NetvscError::Rndis(_))
    ));
    // Replies with nothing outstanding are refused, the client stays usable.
    assert!(matches!(
        client.handle_rndis(&set_complete(9, 0)),
        Err(NetvscError::UnexpectedRndis { expected: None, .. })
    ));
    assert!(client.is_ready());
    assert_eq!(
        client.handle_completion(NVSP_TID | 1, &[]),
        Err(NetvscError::UnknownTransaction(NVSP_TID | 1))
    );
}
