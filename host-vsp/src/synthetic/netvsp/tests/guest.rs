//! The scripted guest of the netvsp tests: a VMBus guest ([`Guest`]) with the NIC's channel open,
//! and netvsc's side of NVSP and RNDIS — requests with completions, RNDIS control messages through
//! GPA-direct pages, frames through send sections or pages, and the host's transfer-page packets
//! read out of the receive buffer and completed (or deliberately not).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netvsp_protocol::nvsp::{
    Init, MessageType, NvspMessage, NvspMessageRef, NvspStatus, SendNdisConfig, SendNdisVersion,
    SendReceiveBuffer, SendReceiveBufferComplete, SendRndisPacket, SendRndisPacketComplete,
    SendSendBufferComplete, INVALID_SECTION_INDEX, RECEIVE_BUFFER_ID, SEND_BUFFER_ID,
};
use netvsp_protocol::rndis::{
    self, InitializeRequest, QueryComplete, QueryRequest, RndisMessageRef, RndisMessageType,
};
use netvsp_protocol::NIC_CLASS_GUID;
use vmbus::gpadl::GpaRange;
use vmbus::packet::{GpaRangeSpec, Packet, PacketFlags, PacketKind, PacketType};
use vmbus::protocol::Guid;
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{Immutable, IntoBytes};

use crate::net::MemoryNet;
use crate::synthetic::netvsp::{NetvspConfig, NetvspDevice, NetvspDeviceStats};
use crate::vmbus_service::tests::guest::{eventually, Guest, GuestRing, TIMEOUT};
use crate::vmbus_service::VmbusDevice;

pub const MAC: [u8; 6] = [0x00, 0x15, 0x5D, 0x12, 0x34, 0x56];
/// Pages of the receive buffer (16 sections of 2048 bytes by default).
pub const RECV_PAGES: usize = 8;
/// Pages of the send buffer (4 sections of 6144).
pub const SEND_PAGES: usize = 6;

/// A packet the host sent: a completion or a transfer-page packet, decoded.
#[derive(Debug, Clone)]
pub enum HostPacket {
    Completion {
        trans_id: u64,
        payload: Vec<u8>,
    },
    /// A transfer-page packet: its set id and the RNDIS messages of its ranges.
    Transfer {
        trans_id: u64,
        set_id: u16,
        messages: Vec<Vec<u8>>,
        ranges: Vec<(u32, u32)>,
    },
    Other {
        #[allow(dead_code)]
        packet_type: PacketType,
    },
}

pub struct NetGuest {
    pub vm: Guest,
    pub device: Arc<NetvspDevice>,
    pub ring: GuestRing,
    #[allow(dead_code)]
    pub relid: u32,
    /// The network's far end.
    pub net: MemoryNet,
    pub recv_pfns: Vec<u64>,
    pub recv_gpadl: u32,
    pub send_pfns: Vec<u64>,
    pub send_gpadl: u32,
    /// A page for control messages and GPA-direct frames (two pages).
    pub scratch: Vec<u64>,
    pub section_size: u32,
    pub sub_alloc: u32,
    next_trans_id: u64,
    next_request_id: u32,
    /// Host packets read but not yet taken.
    pub inbox: VecDeque<HostPacket>,
}

impl NetGuest {
    /// A VM with one NIC over a fresh MemoryNet pair, its channel open (no NVSP yet).
    pub fn start(config: NetvspConfig) -> Self {
        let (host_end, net) = MemoryNet::pair().unwrap();
        Self::start_with(config, host_end, net)
    }

    pub fn start_with(config: NetvspConfig, host_end: MemoryNet, net: MemoryNet) -> Self {
        let device = Arc::new(
            NetvspDevice::new(Guid::new(0x1234, 1, 2, [3; 8]), Box::new(host_end), config).unwrap(),
        );
        let mut vm = Guest::start(vec![device.clone() as Arc<dyn VmbusDevice>]);
        let offers = vm.connect();
        let offer = offers
            .iter()
            .find(|o| o.offer.if_type == NIC_CLASS_GUID)
            .expect("the NIC is offered");
        let relid = offer.child_relid;
        let ring = vm.open(relid, 0, &[]);
        let recv_pfns = vm.alloc_pages(RECV_PAGES);
        let (recv_gpadl, status) =
            vm.create_gpadl(relid, GpaRange::whole_pages(&recv_pfns).unwrap());
        assert_eq!(status, 0);
        let send_pfns = vm.alloc_pages(SEND_PAGES);
        let (send_gpadl, status) =
            vm.create_gpadl(relid, GpaRange::whole_pages(&send_pfns).unwrap());
        assert_eq!(status, 0);
        let scratch = vm.alloc_pages(2);
        Self {
            vm,
            device,
            ring,
            relid,
            net,
            recv_pfns,
            recv_gpadl,
            send_pfns,
            send_gpadl,
            scratch,
            section_size: 0,
            sub_alloc: 0,
            next_trans_id: 100,
            next_request_id: 1,
            inbox: VecDeque::new(),
        }
    }

    pub fn stats(&self) -> NetvspDeviceStats {
        self.device.stats().get()
    }

    fn trans_id(&mut self) -> u64 {
        self.next_trans_id += 1;
        self.next_trans_id
    }

    fn signal(&self) {
        self.vm.synic.signal_host(self.ring.connection_id);
    }

    /// Sends an NVSP message inband (40 bytes, as Linux does); returns its trans id.
    pub fn send_nvsp<T: IntoBytes + Immutable>(
        &mut self,
        ty: MessageType,
        body: &T,
        completion: bool,
    ) -> u64 {
        let msg = NvspMessage::new(ty, body);
        self.send_raw_inband(msg.as_wire(), completion)
    }

    pub fn send_raw_inband(&mut self, bytes: &[u8], completion: bool) -> u64 {
        let trans_id = self.trans_id();
        let flags = if completion {
            PacketFlags::COMPLETION_REQUESTED
        } else {
            PacketFlags::empty()
        };
        let _ = self
            .ring
            .to_host
            .write_inband(trans_id, flags, &[bytes])
            .unwrap();
        self.signal();
        trans_id
    }

    /// Reads every packet the host wrote into the inbox.
    pub fn read_host(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        while let Some(read) = self.ring.from_host.read_packet(&mut buf).unwrap() {
            let packet = Packet::parse(&buf[..read.info.len]).unwrap();
            let trans_id = packet.desc.trans_id;
            let decoded = match packet.kind {
                PacketKind::Completion => HostPacket::Completion {
                    trans_id,
                    payload: packet.payload.to_vec(),
                },
                PacketKind::TransferPages(tp) => {
                    let nvsp = NvspMessageRef::parse(packet.payload).unwrap();
                    assert_eq!(nvsp.message_type, MessageType::SEND_RNDIS_PACKET);
                    assert_eq!(
                        packet.payload.len(),
                        40,
                        "the NVSP payload is Linux's full message"
                    );
                    let ranges: Vec<(u32, u32)> =
                        tp.iter().map(|r| (r.byte_offset, r.byte_count)).collect();
                    let messages = ranges
                        .iter()
                        .map(|&(off, len)| self.read_recv(off, len as usize))
                        .collect();
                    HostPacket::Transfer {
                        trans_id,
                        set_id: tp.transfer_page_set_id,
                        messages,
                        ranges,
                    }
                }
                _ => HostPacket::Other {
                    packet_type: packet.desc.packet_type,
                },
            };
            self.inbox.push_back(decoded);
        }
    }

    /// Bytes of the receive buffer at `offset`.
    pub fn read_recv(&self, offset: u32, len: usize) -> Vec<u8> {
        let gpa = self.recv_pfns[0] * 4096 + u64::from(offset);
        self.vm.read_memory(gpa, len)
    }

    /// Waits for a host packet matching `f` (others stay in the inbox).
    pub fn wait_for(&mut self, what: &str, mut f: impl FnMut(&HostPacket) -> bool) -> HostPacket {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            self.read_host();
            if let Some(i) = self.inbox.iter().position(&mut f) {
                return self.inbox.remove(i).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; stats {:?}",
                self.stats()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits `for_` and returns whether a packet matching `f` arrived.
    pub fn arrives_within(
        &mut self,
        for_: Duration,
        mut f: impl FnMut(&HostPacket) -> bool,
    ) -> bool {
        let deadline = Instant::now() + for_;
        while Instant::now() < deadline {
            self.read_host();
            if self.inbox.iter().any(&mut f) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    /// The completion of `trans_id`'s NVSP payload.
    pub fn completion(&mut self, trans_id: u64) -> Vec<u8> {
        match self.wait_for(
            "a completion",
            |p| matches!(p, HostPacket::Completion { trans_id: t, .. } if *t == trans_id),
        ) {
            HostPacket::Completion { payload, .. } => payload,
            _ => unreachable!(),
        }
    }

    /// Sends a request and returns the completion's NVSP payload.
    pub fn request<T: IntoBytes + Immutable>(&mut self, ty: MessageType, body: &T) -> Vec<u8> {
        let t = self.send_nvsp(ty, body, true);
        self.completion(t)
    }

    /// INIT with min = max = `version`; returns the INIT_COMPLETE status and negotiated version.
    pub fn init(&mut self, version: u32) -> (u32, u32) {
        let c = self.request(
            MessageType::INIT,
            &Init {
                min_protocol_version: U32::new(version),
                max_protocol_version: U32::new(version),
            },
        );
        assert!(
            c.len() >= netvsp_protocol::nvsp::MIN_INIT_COMPLETE_LEN,
            "INIT_COMPLETE of {} bytes",
            c.len()
        );
        assert_eq!(
            u32::from_le_bytes(c[..4].try_into().unwrap()),
            MessageType::INIT_COMPLETE.0
        );
        let word = |i: usize| u32::from_le_bytes(c[4 + 4 * i..8 + 4 * i].try_into().unwrap());
        (word(2), word(0))
    }

    /// Linux's NVSP sequence: versions 6.1 down until one is accepted, NDIS config, NDIS version,
    /// receive buffer, send buffer. Returns the negotiated version.
    pub fn nvsp_init(&mut self) -> u32 {
        let version = netvsp_protocol::nvsp::LINUX_NVSP_VERSIONS
            .iter()
            .map(|v| v.0)
            .find(|&v| self.init(v).0 == NvspStatus::SUCCESS.0)
            .expect("some version accepted");
        if version >= 0x30002 {
            self.send_nvsp(
                MessageType::SEND_NDIS_CONFIG,
                &SendNdisConfig {
                    mtu: U32::new(1514),
                    reserved: U32::new(0),
                    capabilities: (0b1000u64 | 0b100100).into(),
                },
                false,
            );
        }
        let (major, minor) = if version <= 0x40000 { (6, 1) } else { (6, 30) };
        self.send_nvsp(
            MessageType::SEND_NDIS_VERSION,
            &SendNdisVersion {
                ndis_major_version: U32::new(major),
                ndis_minor_version: U32::new(minor),
            },
            false,
        );
        let c = self.request(
            MessageType::SEND_RECEIVE_BUFFER,
            &SendReceiveBuffer {
                gpadl_handle: U32::new(self.recv_gpadl),
                id: U16::new(RECEIVE_BUFFER_ID),
            },
        );
        assert_eq!(c.len(), 40);
        let (rc, _) = zerocopy::FromBytes::read_from_prefix(&c[4..]).unwrap();
        let rc: SendReceiveBufferComplete = rc;
        assert_eq!(rc.status.get(), NvspStatus::SUCCESS.0);
        assert_eq!(rc.section_count.get(), 1);
        assert_eq!(rc.section.offset.get(), 0);
        self.sub_alloc = rc.section.sub_allocation_size.get();
        assert!(self.sub_alloc >= 68);
        assert!(
            u64::from(self.sub_alloc) * u64::from(rc.section.sub_allocation_count.get())
                <= (RECV_PAGES * 4096) as u64
        );
        let c = self.request(
            MessageType::SEND_SEND_BUFFER,
            &SendReceiveBuffer {
                gpadl_handle: U32::new(self.send_gpadl),
                id: U16::new(SEND_BUFFER_ID),
            },
        );
        let (sc, _) = zerocopy::FromBytes::read_from_prefix(&c[4..]).unwrap();
        let sc: SendSendBufferComplete = sc;
        assert_eq!(sc.status.get(), NvspStatus::SUCCESS.0);
        self.section_size = sc.section_size.get();
        version
    }

    /// Completes the host's transfer-page packet `trans_id` as Linux does (8 bytes, status 1).
    pub fn complete_receive(&mut self, trans_id: u64) {
        self.complete_receives(&[trans_id]);
    }

    /// Completes several transfer-page packets with one signal.
    pub fn complete_receives(&mut self, trans_ids: &[u64]) {
        let m = NvspMessage::new(
            MessageType::SEND_RNDIS_PACKET_COMPLETE,
            &SendRndisPacketComplete {
                status: U32::new(NvspStatus::SUCCESS.0),
            },
        );
        for &trans_id in trans_ids {
            let _ = self
                .ring
                .to_host
                .write_completion(trans_id, &[&m.as_wire()[..8]])
                .unwrap();
        }
        self.signal();
    }

    /// Sends an RNDIS message through GPA-direct pages (Linux's control path); returns the NVSP
    /// completion status.
    pub fn send_control(&mut self, message: &[u8]) -> u32 {
        self.vm.write_memory(self.scratch[0] * 4096, message);
        let pfns: Vec<u64> = self.scratch[..(message.len().div_ceil(4096)).max(1)].to_vec();
        let range = GpaRangeSpec {
            byte_count: message.len() as u32,
            byte_offset: 0,
            pfns: &pfns,
        };
        self.send_gpa_direct(1, &[range])
    }

    /// A SEND_RNDIS_PKT in GPA-direct `ranges`; returns the completion status.
    pub fn send_gpa_direct(&mut self, channel: u32, ranges: &[GpaRangeSpec<'_>]) -> u32 {
        let msg = NvspMessage::new(
            MessageType::SEND_RNDIS_PACKET,
            &SendRndisPacket {
                channel_type: U32::new(channel),
                send_buffer_section_index: U32::new(INVALID_SECTION_INDEX),
                send_buffer_section_size: U32::new(0),
            },
        );
        let trans_id = self.trans_id();
        let _ = self
            .ring
            .to_host
            .write_gpa_direct(
                trans_id,
                PacketFlags::COMPLETION_REQUESTED,
                ranges,
                &[msg.as_wire()],
            )
            .unwrap();
        self.signal();
        Self::status(&self.completion(trans_id))
    }

    fn status(c: &[u8]) -> u32 {
        assert_eq!(
            u32::from_le_bytes(c[..4].try_into().unwrap()),
            MessageType::SEND_RNDIS_PACKET_COMPLETE.0
        );
        u32::from_le_bytes(c[4..8].try_into().unwrap())
    }

    /// Writes `bytes` into send section `index` and sends it (`size` bytes used); returns the
    /// completion status.
    pub fn send_section(&mut self, index: u32, bytes: &[u8], size: u32) -> u32 {
        let gpa = self.send_pfns[0] * 4096 + u64::from(index) * u64::from(self.section_size.max(1));
        if u64::from(index) * u64::from(self.section_size) + bytes.len() as u64
            <= (SEND_PAGES * 4096) as u64
        {
            self.vm.write_memory(gpa, bytes);
        }
        let t = self.send_nvsp(
            MessageType::SEND_RNDIS_PACKET,
            &SendRndisPacket {
                channel_type: U32::new(0),
                send_buffer_section_index: U32::new(index),
                send_buffer_section_size: U32::new(size),
            },
            true,
        );
        Self::status(&self.completion(t))
    }

    /// RNDIS PACKET messages for `frames`, each padded to 8 inside its msg_len (as Linux batches).
    pub fn packets(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            let padded = (44 + f.len()).div_ceil(8) * 8;
            let mut m = rndis::packet_message_header(f.len() as u32, 0).to_vec();
            m[4..8].copy_from_slice(&(padded as u32).to_le_bytes());
            m.extend_from_slice(f);
            m.resize(padded, 0);
            out.extend_from_slice(&m);
        }
        out
    }

    /// Sends a control request and returns the RNDIS answer (its transfer packet completed).
    pub fn rndis(&mut self, message: &[u8]) -> Vec<u8> {
        assert_eq!(self.send_control(message), NvspStatus::SUCCESS.0);
        self.take_control()
    }

    /// The next control message the host delivered (its transfer packet completed).
    pub fn take_control(&mut self) -> Vec<u8> {
        let p = self.wait_for("an RNDIS control message", |p| matches!(p,
            HostPacket::Transfer { messages, .. } if messages.len() == 1
                && u32::from_le_bytes(messages[0][..4].try_into().unwrap()) != RndisMessageType::PACKET.0));
        let HostPacket::Transfer {
            trans_id,
            set_id,
            mut messages,
            ..
        } = p
        else {
            unreachable!()
        };
        assert_eq!(set_id, RECEIVE_BUFFER_ID);
        self.complete_receive(trans_id);
        let m = messages.remove(0);
        // The range covers the message exactly.
        assert_eq!(
            u32::from_le_bytes(m[4..8].try_into().unwrap()) as usize,
            m.len()
        );
        m
    }

    fn request_id(&mut self) -> u32 {
        self.next_request_id += 1;
        self.next_request_id
    }

    pub fn rndis_init(&mut self) -> Vec<u8> {
        let req = InitializeRequest {
            request_id: U32::new(self.request_id()),
            major_version: U32::new(1),
            minor_version: U32::new(0),
            max_transfer_size: U32::new(0x4000),
        };
        self.rndis(&encode(RndisMessageType::INITIALIZE, &req, &[]))
    }

    /// QUERY `oid`; returns (status, information buffer).
    pub fn query(&mut self, oid: u32) -> (u32, Vec<u8>) {
        let req = QueryRequest {
            request_id: U32::new(self.request_id()),
            oid: U32::new(oid),
            information_buffer_length: U32::new(0),
            information_buffer_offset: U32::new(20),
            device_vc_handle: U32::new(0),
        };
        let answer = self.rndis(&encode(RndisMessageType::QUERY, &req, &[]));
        let msg = RndisMessageRef::parse(&answer).unwrap();
        assert_eq!(msg.message_type, RndisMessageType::QUERY_COMPLETE);
        let c: QueryComplete = msg.body_as().unwrap();
        assert_eq!(c.request_id, req.request_id);
        let info = msg
            .buffer(
                c.information_buffer_offset.get(),
                c.information_buffer_length.get(),
            )
            .unwrap()
            .to_vec();
        (c.status.get(), info)
    }

    /// SET `oid` to `info`; returns the status.
    pub fn set(&mut self, oid: u32, info: &[u8]) -> u32 {
        let req = QueryRequest {
            request_id: U32::new(self.request_id()),
            oid: U32::new(oid),
            information_buffer_length: U32::new(info.len() as u32),
            information_buffer_offset: U32::new(20),
            device_vc_handle: U32::new(0),
        };
        let answer = self.rndis(&encode(RndisMessageType::SET, &req, info));
        let msg = RndisMessageRef::parse(&answer).unwrap();
        assert_eq!(msg.message_type, RndisMessageType::SET_COMPLETE);
        assert_eq!(&msg.body[..4], req.request_id.as_bytes());
        u32::from_le_bytes(msg.body[4..8].try_into().unwrap())
    }

    /// Full Linux-order bring-up to a NIC with filter 0x0D; returns the NVSP version.
    pub fn linux_up(&mut self) -> u32 {
        let v = self.nvsp_init();
        let init = self.rndis_init();
        assert_eq!(
            u32::from_le_bytes(init[12..16].try_into().unwrap()),
            0,
            "INIT status"
        );
        assert_eq!(self.set(0x0001_010E, &0x0Du32.to_le_bytes()), 0);
        v
    }

    /// The frames of the next data transfer packet, and its trans id (not completed).
    pub fn take_frames(&mut self) -> (u64, Vec<Vec<u8>>) {
        let p = self.wait_for("frames", |p| matches!(p,
            HostPacket::Transfer { messages, .. }
                if u32::from_le_bytes(messages[0][..4].try_into().unwrap()) == RndisMessageType::PACKET.0));
        let HostPacket::Transfer {
            trans_id,
            messages,
            ranges,
            ..
        } = p
        else {
            unreachable!()
        };
        let frames = messages
            .iter()
            .zip(&ranges)
            .map(|(m, &(off, _))| {
                let msg = RndisMessageRef::parse(m).unwrap();
                let h: rndis::PacketHeader = msg.body_as().unwrap();
                let layout = rndis::PacketLayout::validate(&h, msg.len()).unwrap();
                assert_eq!(off % self.sub_alloc, 0, "each frame starts a section");
                m[layout.data].to_vec()
            })
            .collect();
        (trans_id, frames)
    }

    /// Waits until the far end has `n` frames and returns them.
    pub fn net_frames(&mut self, n: usize) -> Vec<Vec<u8>> {
        eventually("frames at the far end", || self.net.pending() >= n);
        (0..n).map(|_| self.net.recv_bytes().unwrap()).collect()
    }
}

pub fn encode<T: IntoBytes + Immutable>(
    ty: RndisMessageType,
    body: &T,
    trailing: &[u8],
) -> Vec<u8> {
    let mut out = vec![0u8; 8 + size_of::<T>() + trailing.len()];
    rndis::encode(&mut out, ty, body, trailing).unwrap();
    out
}

/// A recognisable frame of `len` bytes (Ethernet header to our MAC, then a counting pattern).
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    f[..6].copy_from_slice(&MAC);
    f
}

/// Waits until the device's counters satisfy `f`.
pub fn wait_stats(g: &NetGuest, mut f: impl FnMut(&NetvspDeviceStats) -> bool) {
    eventually("device counters", || f(&g.stats()));
}
