//! The RNDIS control plane of one NIC, sans I/O: [`RndisControl`] answers INITIALIZE, QUERY, SET,
//! KEEPALIVE, RESET and HALT with the completion bytes to send the guest, keeps the packet filter
//! and the initialized state, refuses every request before INITIALIZE, and builds the link
//! indications. Answers are honest: the NIC has no checksum, LSO, RSC or RSS offloads and says so.

use netvsp_protocol::ndis::{
    ndis_offload_revision, ndis_offload_size, object_type, offload_parameter, MediaState,
    NdisObjectHeader, NdisOffload, NdisOffloadParameters, Oid, PacketFilter,
    OFFLOAD_PARAMETERS_SIZE_V4,
};
use netvsp_protocol::nvsp::NvspVersion;
use netvsp_protocol::rndis::{
    self, IndicateStatus, InitializeComplete, KeepaliveComplete, KeepaliveRequest, QueryComplete,
    QueryRequest, ResetComplete, RndisMessageRef, RndisMessageType, RndisStatus, SetComplete,
    DF_CONNECTIONLESS, MEDIUM_802_3, RNDIS_MAJOR_VERSION, RNDIS_MINOR_VERSION,
};
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromZeros, IntoBytes};

use super::NetvspConfig;
use crate::net::{MAX_FRAME_LEN, MTU};

/// Most PACKET messages the guest may batch in one send-buffer section (INITIALIZE_COMPLETE).
pub const MAX_PACKETS_PER_MESSAGE: u32 = 8;
/// Batched messages align to `1 << PACKET_ALIGNMENT_FACTOR` (8) bytes.
pub const PACKET_ALIGNMENT_FACTOR: u32 = 3;

/// Where the RNDIS device is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RndisState {
    /// No INITIALIZE yet (or HALT since): every request is refused, data is dropped.
    Uninitialized,
    /// Initialized: requests answered, data flows while the filter is non-zero.
    Initialized,
}

/// What one control message did.
#[derive(Debug, Default)]
pub struct ControlOutcome {
    /// The completion to send the guest (none for HALT and for messages that get no answer).
    pub response: Option<Vec<u8>>,
    /// The request was refused (before INITIALIZE, malformed, unsupported type).
    pub refused: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub struct RndisControl {
    state: RndisState,
    filter: PacketFilter,
    mac: [u8; 6],
    link_speed: u32,
    max_transfer_size: u32,
}

impl RndisControl {
    /// The control plane of a NIC configured by `config`.
    pub fn new(config: &NetvspConfig) -> Self {
        Self {
            state: RndisState::Uninitialized,
            filter: PacketFilter(0),
            mac: config.mac,
            link_speed: config.link_speed_100bps,
            max_transfer_size: config.send_section_size,
        }
    }

    /// The state.
    pub fn state(&self) -> RndisState {
        self.state
    }

    /// The guest's packet filter.
    pub fn filter(&self) -> PacketFilter {
        self.filter
    }

    /// Whether received frames may be delivered: initialized and a non-zero filter.
    pub fn delivers_frames(&self) -> bool {
        self.state == RndisState::Initialized && !self.filter.is_empty()
    }

    /// Whether guest data may be sent: initialized.
    pub fn is_initialized(&self) -> bool {
        self.state == RndisState::Initialized
    }

    /// The INDICATE_STATUS message for a link change.
    pub fn link_indication(up: bool) -> Vec<u8> {
        let status = if up {
            RndisStatus::MEDIA_CONNECT
        } else {
            RndisStatus::MEDIA_DISCONNECT
        };
        let body = IndicateStatus {
            status: U32::new(status.0),
            status_buffer_length: U32::new(0),
            status_buffer_offset: U32::new(size_of::<IndicateStatus>() as u32),
        };
        message(RndisMessageType::INDICATE_STATUS, &body, &[])
    }

    /// Answers one control message from the guest. `version` sizes the offload objects; `link_up`
    /// answers the media connect status.
    pub fn handle(
        &mut self,
        msg: &RndisMessageRef<'_>,
        version: NvspVersion,
        link_up: bool,
    ) -> ControlOutcome {
        let initialized = self.state == RndisState::Initialized;
        match msg.message_type {
            RndisMessageType::INITIALIZE => self.initialize(msg),
            RndisMessageType::HALT => {
                self.state = RndisState::Uninitialized;
                self.filter = PacketFilter(0);
                ControlOutcome {
                    response: None,
                    refused: !initialized,
                }
            }
            RndisMessageType::QUERY => self.query(msg, version, link_up),
            RndisMessageType::SET => self.set(msg),
            RndisMessageType::KEEPALIVE => {
                let Ok(req) = msg.body_as::<KeepaliveRequest>() else {
                    return refused();
                };
                let status = if initialized {
                    RndisStatus::SUCCESS
                } else {
                    RndisStatus::FAILURE
                };
                let body = KeepaliveComplete {
                    request_id: req.request_id,
                    status: U32::new(status.0),
                };
                ControlOutcome {
                    response: Some(message(RndisMessageType::KEEPALIVE_COMPLETE, &body, &[])),
                    refused: !initialized,
                }
            }
            RndisMessageType::RESET => {
                // The addressing is reset: the guest must set its filter again.
                let status = if initialized {
                    self.filter = PacketFilter(0);
                    RndisStatus::SUCCESS
                } else {
                    RndisStatus::FAILURE
                };
                let body = ResetComplete {
                    status: U32::new(status.0),
                    addressing_reset: U32::new(u32::from(initialized)),
                };
                ControlOutcome {
                    response: Some(message(RndisMessageType::RESET_COMPLETE, &body, &[])),
                    refused: !initialized,
                }
            }
            // Completions, indications and anything else are not requests a device answers.
            _ => refused(),
        }
    }

    fn initialize(&mut self, msg: &RndisMessageRef<'_>) -> ControlOutcome {
        let Ok(req) = msg.body_as::<rndis::InitializeRequest>() else {
            return refused();
        };
        let ok = req.major_version.get() == RNDIS_MAJOR_VERSION;
        if ok {
            self.state = RndisState::Initialized;
            self.filter = PacketFilter(0);
        }
        let status = if ok {
            RndisStatus::SUCCESS
        } else {
            RndisStatus::NOT_SUPPORTED
        };
        let body = InitializeComplete {
            request_id: req.request_id,
            status: U32::new(status.0),
            major_version: U32::new(RNDIS_MAJOR_VERSION),
            minor_version: U32::new(RNDIS_MINOR_VERSION),
            device_flags: U32::new(DF_CONNECTIONLESS),
            medium: U32::new(MEDIUM_802_3),
            max_packets_per_message: U32::new(MAX_PACKETS_PER_MESSAGE),
            max_transfer_size: U32::new(self.max_transfer_size),
            packet_alignment_factor: U32::new(PACKET_ALIGNMENT_FACTOR),
            af_list_offset: U32::new(0),
            af_list_size: U32::new(0),
        };
        ControlOutcome {
            response: Some(message(RndisMessageType::INITIALIZE_COMPLETE, &body, &[])),
            refused: !ok,
        }
    }

    fn query(
        &mut self,
        msg: &RndisMessageRef<'_>,
        version: NvspVersion,
        link_up: bool,
    ) -> ControlOutcome {
        let Ok(req) = msg.body_as::<QueryRequest>() else {
            return refused();
        };
        let complete = |status: RndisStatus, info: &[u8]| {
            let body = QueryComplete {
                request_id: req.request_id,
                status: U32::new(status.0),
                information_buffer_length: U32::new(info.len() as u32),
                information_buffer_offset: U32::new(if info.is_empty() {
                    0
                } else {
                    size_of::<QueryComplete>() as u32
                }),
            };
            message(RndisMessageType::QUERY_COMPLETE, &body, info)
        };
        if self.state != RndisState::Initialized {
            return ControlOutcome {
                response: Some(complete(RndisStatus::FAILURE, &[])),
                refused: true,
            };
        }
        let u32_info = |v: u32| v.to_le_bytes().to_vec();
        let info: Option<Vec<u8>> = match Oid(req.oid.get()) {
            Oid::GEN_MAXIMUM_FRAME_SIZE => Some(u32_info(MTU as u32)),
            Oid::GEN_MAXIMUM_TOTAL_SIZE => Some(u32_info(MAX_FRAME_LEN as u32)),
            Oid::IEEE_802_3_PERMANENT_ADDRESS | Oid::IEEE_802_3_CURRENT_ADDRESS => {
                Some(self.mac.to_vec())
            }
            Oid::GEN_LINK_SPEED => Some(u32_info(self.link_speed)),
            Oid::GEN_MEDIA_CONNECT_STATUS => Some(u32_info(if link_up {
                MediaState::CONNECTED.0
            } else {
                MediaState::DISCONNECTED.0
            })),
            Oid::GEN_CURRENT_PACKET_FILTER => Some(u32_info(self.filter.0)),
            Oid::TCP_OFFLOAD_HARDWARE_CAPABILITIES => {
                // No offload of any kind: every capability field zero.
                let mut caps = NdisOffload::new_zeroed();
                let size = ndis_offload_size(version);
                caps.header = NdisObjectHeader {
                    object_type: object_type::OFFLOAD,
                    revision: ndis_offload_revision(version),
                    size: U16::new(size as u16),
                };
                Some(caps.as_bytes()[..size].to_vec())
            }
            _ => None,
        };
        let response = match info {
            Some(info) => complete(RndisStatus::SUCCESS, &info),
            None => complete(RndisStatus::NOT_SUPPORTED, &[]),
        };
        ControlOutcome {
            response: Some(response),
            refused: false,
        }
    }

    fn set(&mut self, msg: &RndisMessageRef<'_>) -> ControlOutcome {
        let Ok(req) = msg.body_as::<QueryRequest>() else {
            return refused();
        };
        let status = if self.state != RndisState::Initialized {
            RndisStatus::FAILURE
        } else {
            match msg.buffer(
                req.information_buffer_offset.get(),
                req.information_buffer_length.get(),
            ) {
                Err(_) => RndisStatus::INVALID_LENGTH,
                Ok(info) => self.set_oid(Oid(req.oid.get()), info),
            }
        };
        let body = SetComplete {
            request_id: req.request_id,
            status: U32::new(status.0),
        };
        ControlOutcome {
            response: Some(message(RndisMessageType::SET_COMPLETE, &body, &[])),
            refused: status != RndisStatus::SUCCESS,
        }
    }

    fn set_oid(&mut self, oid: Oid, info: &[u8]) -> RndisStatus {
        match oid {
            Oid::GEN_CURRENT_PACKET_FILTER => match info.first_chunk::<4>() {
                Some(v) => {
                    self.filter = PacketFilter(u32::from_le_bytes(*v));
                    RndisStatus::SUCCESS
                }
                None => RndisStatus::INVALID_LENGTH,
            },
            Oid::TCP_OFFLOAD_PARAMETERS => {
                if info.len() < OFFLOAD_PARAMETERS_SIZE_V4 {
                    return RndisStatus::INVALID_LENGTH;
                }
                let mut raw = [0u8; size_of::<NdisOffloadParameters>()];
                let n = info.len().min(raw.len());
                raw[..n].copy_from_slice(&info[..n]);
                let p: NdisOffloadParameters = zerocopy::transmute!(raw);
                if p.header.object_type != object_type::DEFAULT {
                    return RndisStatus::INVALID_DATA;
                }
                // Only "leave" or "disable" can be honoured: there is nothing to enable.
                let checksums = [
                    p.ip4_checksum,
                    p.tcp4_checksum,
                    p.udp4_checksum,
                    p.tcp6_checksum,
                    p.udp6_checksum,
                ];
                let checksum_ok = checksums.iter().all(|&v| {
                    v == offload_parameter::NO_CHANGE || v == offload_parameter::TX_RX_DISABLED
                });
                let lso_ok = [p.lso_v1, p.lso_v2_ip4, p.lso_v2_ip6].iter().all(|&v| {
                    v == offload_parameter::NO_CHANGE || v == offload_parameter::LSOV2_DISABLED
                });
                let rsc_ok = [p.rsc_ip4, p.rsc_ip6].iter().all(|&v| {
                    v == offload_parameter::NO_CHANGE || v == offload_parameter::RSC_DISABLED
                });
                if checksum_ok && lso_ok && rsc_ok {
                    RndisStatus::SUCCESS
                } else {
                    RndisStatus::NOT_SUPPORTED
                }
            }
            _ => RndisStatus::NOT_SUPPORTED,
        }
    }
}

fn refused() -> ControlOutcome {
    ControlOutcome {
        response: None,
        refused: true,
    }
}

/// Encodes a message (every body here is a few dozen bytes).
fn message<T: IntoBytes + zerocopy::Immutable>(
    message_type: RndisMessageType,
    body: &T,
    trailing: &[u8],
) -> Vec<u8> {
    let mut out = vec![0u8; rndis::RNDIS_HEADER_SIZE + size_of::<T>() + trailing.len()];
    let n = rndis::encode(&mut out, message_type, body, trailing)
        .unwrap_or_else(|_| unreachable!("the buffer is sized for the message"));
    out.truncate(n);
    out
}
