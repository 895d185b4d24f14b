//! What a host answers a netvsc with, built byte by byte for the tests (the same numbers a
//! Linux-compatible netvsp sends), and a scripted host that walks a [`NetvscClient`] through
//! initialisation with a hook to make any one reply hostile.

use alloc::vec;
use alloc::vec::Vec;

use netvsp_protocol::nvsp::{
    InitComplete, MessageType, NvspMessage, NvspMessageRef, NvspStatus, ReceiveBufferSection,
    SendReceiveBufferComplete, SendSendBufferComplete,
};
use netvsp_protocol::rndis::{
    self, IndicateStatus, InitializeComplete, QueryComplete, RndisMessageRef, RndisMessageType,
    SetComplete, MEDIUM_802_3,
};
use zerocopy::{Immutable, IntoBytes};

use super::client::{ClientAction, NetvscClient, NicInfo};
use super::NetvscError;

pub const MAC: [u8; 6] = [0x00, 0x15, 0x5d, 0x01, 0x02, 0x03];
pub const RECEIVE_SECTION: u32 = 1806;

/// The 40-byte NVSP message `message_type` with `body`.
pub fn nvsp(message_type: MessageType, body: &(impl IntoBytes + Immutable)) -> Vec<u8> {
    NvspMessage::new(message_type, body).as_wire().to_vec()
}

pub fn init_complete(version: u32, status: NvspStatus) -> Vec<u8> {
    nvsp(
        MessageType::INIT_COMPLETE,
        &InitComplete {
            negotiated_protocol_version: version.into(),
            max_mdl_chain_length: 34.into(),
            status: status.0.into(),
        },
    )
}

/// SEND_RECV_BUF_COMPLETE with one section of `count` `size`-byte slots at `offset`.
pub fn receive_complete(sections: u32, offset: u32, size: u32, count: u32, end: u32) -> Vec<u8> {
    nvsp(
        MessageType::SEND_RECEIVE_BUFFER_COMPLETE,
        &SendReceiveBufferComplete {
            status: NvspStatus::SUCCESS.0.into(),
            section_count: sections.into(),
            section: ReceiveBufferSection {
                offset: offset.into(),
                sub_allocation_size: size.into(),
                sub_allocation_count: count.into(),
                end_offset: end.into(),
            },
        },
    )
}

/// The good SEND_RECV_BUF_COMPLETE for a `len`-byte receive buffer.
pub fn good_receive_complete(len: usize) -> Vec<u8> {
    let count = len as u32 / RECEIVE_SECTION;
    receive_complete(1, 0, RECEIVE_SECTION, count, count * RECEIVE_SECTION)
}

pub fn send_complete(status: NvspStatus, size: u32) -> Vec<u8> {
    nvsp(
        MessageType::SEND_SEND_BUFFER_COMPLETE,
        &SendSendBufferComplete {
            status: status.0.into(),
            section_size: size.into(),
        },
    )
}

pub fn rndis_message(
    message_type: RndisMessageType,
    body: &(impl IntoBytes + Immutable),
    data: &[u8],
) -> Vec<u8> {
    let mut out = vec![0u8; 8 + body.as_bytes().len() + data.len()];
    let len = rndis::encode(&mut out, message_type, body, data).unwrap();
    out.truncate(len);
    out
}

pub fn initialize_complete(request_id: u32, status: u32, medium: u32) -> Vec<u8> {
    let body = InitializeComplete {
        request_id: request_id.into(),
        status: status.into(),
        major_version: 1.into(),
        device_flags: 1.into(),
        medium: medium.into(),
        max_packets_per_message: 8.into(),
        max_transfer_size: 0xEFFF_FFFF.into(),
        packet_alignment_factor: 3.into(),
        ..Default::default()
    };
    rndis_message(RndisMessageType::INITIALIZE_COMPLETE, &body, &[])
}

/// QUERY_COMPLETE carrying `value` at `offset` (16 = right after the fixed fields).
pub fn query_complete(
    request_id: u32,
    status: u32,
    value: &[u8],
    offset: u32,
    len: u32,
) -> Vec<u8> {
    let body = QueryComplete {
        request_id: request_id.into(),
        status: status.into(),
        information_buffer_length: len.into(),
        information_buffer_offset: offset.into(),
    };
    rndis_message(RndisMessageType::QUERY_COMPLETE, &body, value)
}

pub fn good_query(request_id: u32, value: &[u8]) -> Vec<u8> {
    query_complete(request_id, 0, value, 16, value.len() as u32)
}

pub fn set_complete(request_id: u32, status: u32) -> Vec<u8> {
    let body = SetComplete {
        request_id: request_id.into(),
        status: status.into(),
    };
    rndis_message(RndisMessageType::SET_COMPLETE, &body, &[])
}

pub fn indicate(status: u32, buffer: &[u8]) -> Vec<u8> {
    let body = IndicateStatus {
        status: status.into(),
        status_buffer_length: (buffer.len() as u32).into(),
        status_buffer_offset: if buffer.is_empty() {
            0.into()
        } else {
            12.into()
        },
    };
    rndis_message(RndisMessageType::INDICATE_STATUS, &body, buffer)
}

/// A point of initialisation where the host answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// INIT proposing this version.
    Init(u32),
    ReceiveBuffer,
    SendBuffer,
    /// The completion of a control send (its packet, not the RNDIS reply).
    ControlSent,
    RndisInit,
    MaxFrameSize,
    PermanentAddress,
    MediaConnect,
    LinkSpeed,
    PacketFilter,
}

/// One reply of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A VMBus completion.
    Completion(u64, Vec<u8>),
    /// An RNDIS message delivered through the receive buffer.
    Rndis(Vec<u8>),
    /// Nothing (the host stays silent).
    None,
}

/// What a good host answers at `stage` (`request_id` for RNDIS replies): it accepts 6.1.
pub fn good_reply(stage: Stage, trans_id: u64, request_id: u32, receive_len: usize) -> Reply {
    use Reply::*;
    match stage {
        Stage::Init(v) => Completion(trans_id, init_complete(v, NvspStatus::SUCCESS)),
        Stage::ReceiveBuffer => Completion(trans_id, good_receive_complete(receive_len)),
        Stage::SendBuffer => Completion(trans_id, send_complete(NvspStatus::SUCCESS, 6144)),
        Stage::ControlSent => Completion(
            trans_id,
            super::datapath::receive_completion(NvspStatus::SUCCESS).to_vec(),
        ),
        Stage::RndisInit => Rndis(initialize_complete(request_id, 0, MEDIUM_802_3)),
        Stage::MaxFrameSize => Rndis(good_query(request_id, &1500u32.to_le_bytes())),
        Stage::PermanentAddress => Rndis(good_query(request_id, &MAC)),
        Stage::MediaConnect => Rndis(good_query(request_id, &0u32.to_le_bytes())),
        Stage::LinkSpeed => Rndis(good_query(request_id, &100_000_000u32.to_le_bytes())),
        Stage::PacketFilter => Rndis(set_complete(request_id, 0)),
    }
}

/// Which stage a control message asks for.
fn control_stage(message: &[u8]) -> (Stage, u32) {
    let m = RndisMessageRef::parse(message).unwrap();
    let id: u32 = m.body_as().unwrap();
    let stage = match m.message_type {
        RndisMessageType::INITIALIZE => Stage::RndisInit,
        RndisMessageType::SET => Stage::PacketFilter,
        _ => {
            let oid = u32::from_le_bytes(m.body[4..8].try_into().unwrap());
            match oid {
                0x0001_0106 => Stage::MaxFrameSize,
                0x0101_0101 => Stage::PermanentAddress,
                0x0001_0114 => Stage::MediaConnect,
                0x0001_0107 => Stage::LinkSpeed,
                other => panic!("unexpected OID {other:#x}"),
            }
        }
    };
    (stage, id)
}

/// Everything the client sent, in order, as (stage or message type, bytes).
#[derive(Debug, Default)]
pub struct Transcript {
    pub nvsp: Vec<(MessageType, Vec<u8>, bool)>,
    pub control: Vec<Vec<u8>>,
    pub gpadls: usize,
}

/// Runs initialisation against a host that answers `good_reply` unless `hook` says otherwise.
pub fn run_init(
    receive_len: usize,
    mut hook: impl FnMut(Stage, Reply) -> Reply,
) -> (Result<NicInfo, NetvscError>, NetvscClient, Transcript) {
    let config = super::client::NetvscConfig {
        receive_buffer_len: receive_len,
        ..Default::default()
    };
    let mut client = NetvscClient::new(config);
    let mut transcript = Transcript::default();
    if let Err(e) = client.start() {
        return (Err(e), client, transcript);
    }
    for _ in 0..100 {
        let Some(action) = client.poll_action() else {
            break;
        };
        let mut replies = Vec::new();
        match action {
            ClientAction::SendNvsp {
                trans_id,
                message,
                completion,
            } => {
                let bytes = message.as_wire().to_vec();
                let ty = NvspMessageRef::parse(&bytes).unwrap().message_type;
                transcript.nvsp.push((ty, bytes.clone(), completion));
                let stage = match ty {
                    MessageType::INIT => Some(Stage::Init(u32::from_le_bytes(
                        bytes[4..8].try_into().unwrap(),
                    ))),
                    MessageType::SEND_RECEIVE_BUFFER => Some(Stage::ReceiveBuffer),
                    MessageType::SEND_SEND_BUFFER => Some(Stage::SendBuffer),
                    _ => None,
                };
                if let Some(stage) = stage {
                    replies.push(hook(stage, good_reply(stage, trans_id, 0, receive_len)));
                }
            }
            ClientAction::CreateGpadl(kind) => {
                transcript.gpadls += 1;
                let handle = 0x100 + transcript.gpadls as u32;
                if let Err(e) = client.buffer_gpadl(kind, handle) {
                    return (Err(e), client, transcript);
                }
            }
            ClientAction::SendControl { trans_id, message } => {
                transcript.control.push(message.as_bytes().to_vec());
                let (stage, id) = control_stage(message.as_bytes());
                // The RNDIS reply first, then the packet's completion (hosts may do either).
                replies.push(hook(stage, good_reply(stage, trans_id, id, receive_len)));
                replies.push(hook(
                    Stage::ControlSent,
                    good_reply(Stage::ControlSent, trans_id, id, receive_len),
                ));
            }
            ClientAction::Ready => return (Ok(client.info().unwrap()), client, transcript),
        }
        for reply in replies {
            let result = match reply {
                Reply::Completion(tid, bytes) => client.handle_completion(tid, &bytes),
                Reply::Rndis(bytes) => client.handle_rndis(&bytes).map(|_| ()),
                Reply::None => Ok(()),
            };
            if let Err(e) = result {
                return (Err(e), client, transcript);
            }
        }
    }
    (Err(NetvscError::NotReady), client, transcript)
}
