//! Arbitrary NVSP messages, RNDIS messages in send sections and GPA-direct pages, frames from the
//! network and receive completions through a NetvspWorker over a MemoryNet.
//!
//! After a Linux-order init (unless the first byte asks to skip parts of it), the input is split
//! into chunks at 0xA5; each chunk's first byte picks what it does: an inband NVSP packet, bytes
//! written into a send section then a SEND_RNDIS_PKT naming a (possibly bad) section, a GPA-direct
//! SEND_RNDIS_PKT with ranges from the input, a frame from the network, completing (or not) the
//! host's receive packets, or tearing a buffer down. The rings stay well framed, so the worker must
//! never fail, and must never panic.
#![no_main]

use std::sync::Arc;

use host_vsp::guest_memory::{self, GuestMemoryMmap};
use host_vsp::net::MemoryNet;
use host_vsp::synthetic::netvsp::{ContiguousBuffer, GuestBuffer, NetvspConfig, NetvspWorker};
use libfuzzer_sys::fuzz_target;
use netvsp_protocol::nvsp::{
    Init, MessageType, NvspMessage, SendNdisVersion, SendReceiveBuffer, SendRndisPacket,
    SendRndisPacketComplete,
};
use netvsp_protocol::rndis::{self, InitializeRequest, QueryRequest, RndisMessageType};
use vm_memory::GuestAddress;
use vmbus::mem::AlignedRingBuffer;
use vmbus::packet::{GpaRangeSpec, Packet, PacketFlags, PacketKind};
use vmbus::ring::{initialize_control_page, RingConsumer, RingProducer, FEATURE_PENDING_SEND_SIZE};
use zerocopy::byteorder::little_endian::{U16, U32};

type Ring = Arc<AlignedRingBuffer>;

const RECV_GPA: u64 = 0x10000;
const RECV_LEN: u64 = 16 * 4096;
const SEND_GPA: u64 = 0x20000;
const SEND_LEN: u64 = 8 * 4096;
const CONTROL_GPA: u64 = 0x30000;
const PAGES: usize = 64;

fn ring(data: usize) -> Ring {
    let r = Arc::new(AlignedRingBuffer::for_ring(data));
    initialize_control_page(&*r, FEATURE_PENDING_SEND_SIZE).unwrap();
    r
}

struct Guest {
    to_host: RingProducer<Ring>,
    from_host: RingConsumer<Ring>,
    memory: GuestMemoryMmap,
    buf: Vec<u8>,
    lent: Vec<u64>,
}

impl Guest {
    fn nvsp<T: zerocopy::IntoBytes + zerocopy::Immutable>(&mut self, ty: MessageType, body: &T) {
        let m = NvspMessage::new(ty, body);
        let _ = self
            .to_host
            .write_inband(1, PacketFlags::COMPLETION_REQUESTED, &[m.as_wire()]);
    }

    /// Reads the host's packets, remembering the receive packets lent.
    fn drain(&mut self) {
        while let Ok(Some(read)) = self.from_host.read_packet(&mut self.buf) {
            if let Ok(p) = Packet::parse(&self.buf[..read.info.len]) {
                if let PacketKind::TransferPages(_) = p.kind {
                    self.lent.push(p.desc.trans_id);
                }
            }
        }
    }

    fn complete(&mut self, trans_id: u64) {
        let m = NvspMessage::new(
            MessageType::SEND_RNDIS_PACKET_COMPLETE,
            &SendRndisPacketComplete { status: U32::new(1) },
        );
        let _ = self.to_host.write_completion(trans_id, &[&m.as_wire()[..8]]);
    }

    /// An RNDIS control message through GPA-direct.
    fn control(&mut self, bytes: &[u8]) {
        guest_memory::write(&self.memory, CONTROL_GPA, bytes).unwrap();
        let pfns = [CONTROL_GPA / 4096];
        let range = GpaRangeSpec { byte_count: bytes.len() as u32, byte_offset: 0, pfns: &pfns };
        let m = NvspMessage::new(
            MessageType::SEND_RNDIS_PACKET,
            &SendRndisPacket {
                channel_type: U32::new(1),
                send_buffer_section_index: U32::new(u32::MAX),
                send_buffer_section_size: U32::new(0),
            },
        );
        let _ = self.to_host.write_gpa_direct(2, PacketFlags::COMPLETION_REQUESTED, &[range], &[m.as_wire()]);
    }
}

fuzz_target!(|data: &[u8]| {
    let memory =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), PAGES * 4096)]).unwrap();
    let recv = Arc::new(ContiguousBuffer::new(memory.clone(), RECV_GPA, RECV_LEN, 1));
    let send = Arc::new(ContiguousBuffer::new(memory.clone(), SEND_GPA, SEND_LEN, 2));
    let (r2, s2) = (recv.clone(), send.clone());
    let lookup = Box::new(move |h: u32| -> Option<Arc<dyn GuestBuffer>> {
        match h {
            1 => Some(r2.clone()),
            2 => Some(s2.clone()),
            _ => None,
        }
    });
    let (host_end, mut net) = MemoryNet::pair_with_capacity(16).unwrap();
    let (a, b) = (ring(32 * 1024), ring(16 * 1024));
    let mut worker = NetvspWorker::new(
        RingConsumer::new(a.clone()).unwrap(),
        RingProducer::new(b.clone()).unwrap(),
        memory.clone(),
        lookup,
        Box::new(host_end),
        NetvspConfig::new([0, 0x15, 0x5d, 1, 2, 3]),
    );
    let mut g = Guest {
        to_host: RingProducer::new(a).unwrap(),
        from_host: RingConsumer::new(b).unwrap(),
        memory: memory.clone(),
        buf: vec![0u8; 16 * 1024],
        lent: Vec::new(),
    };
    let poll = |worker: &mut NetvspWorker<Ring>, g: &mut Guest| {
        let r = worker.poll(true);
        assert!(!r.failed, "the worker failed on well-framed rings");
        g.drain();
    };
    let flags = data.first().copied().unwrap_or(0);
    if flags & 1 == 0 {
        g.nvsp(MessageType::INIT, &Init { min_protocol_version: U32::new(0x60001), max_protocol_version: U32::new(0x60001) });
        g.nvsp(MessageType::SEND_NDIS_VERSION, &SendNdisVersion { ndis_major_version: U32::new(6), ndis_minor_version: U32::new(30) });
        g.nvsp(MessageType::SEND_RECEIVE_BUFFER, &SendReceiveBuffer { gpadl_handle: U32::new(1), id: U16::new(0xCAFE) });
        g.nvsp(MessageType::SEND_SEND_BUFFER, &SendReceiveBuffer { gpadl_handle: U32::new(2), id: U16::new(0) });
        poll(&mut worker, &mut g);
    }
    if flags & 2 == 0 {
        let mut m = [0u8; 64];
        let n = rndis::encode(&mut m, RndisMessageType::INITIALIZE, &InitializeRequest { request_id: U32::new(1), major_version: U32::new(1), minor_version: U32::new(0), max_transfer_size: U32::new(0x4000) }, &[]).unwrap();
        g.control(&m[..n]);
        let set = QueryRequest { request_id: U32::new(2), oid: U32::new(0x0001_010E), information_buffer_length: U32::new(4), information_buffer_offset: U32::new(20), device_vc_handle: U32::new(0) };
        let n = rndis::encode(&mut m, RndisMessageType::SET, &set, &[0x0D, 0, 0, 0]).unwrap();
        poll(&mut worker, &mut g);
        g.control(&m[..n]);
        poll(&mut worker, &mut g);
    }
    for chunk in data.get(1..).unwrap_or(&[]).split(|&b| b == 0xA5).take(64) {
        let Some((&kind, rest)) = chunk.split_first() else { continue };
        match kind % 7 {
            0 => {
                let flags = PacketFlags::from_bits_truncate(u16::from(kind >> 3 & 1));
                let _ = g.to_host.write_inband(u64::from(kind), flags, &[rest]);
            }
            1 => {
                // [section, size lo, size hi, bytes...] written at section*6144.
                let (head, bytes) = rest.split_at(rest.len().min(3));
                let mut h = [0u8; 3];
                h[..head.len()].copy_from_slice(head);
                let section = u32::from(h[0] % 8);
                let at = u64::from(section) * 6144;
                if at + bytes.len() as u64 <= SEND_LEN {
                    guest_memory::write(&memory, SEND_GPA + at, bytes).unwrap();
                }
                let size = u32::from(u16::from_le_bytes([h[1], h[2]]));
                let index = if h[0] & 0x80 != 0 { u32::MAX - u32::from(h[0] & 1) } else { section };
                let m = NvspMessage::new(MessageType::SEND_RNDIS_PACKET, &SendRndisPacket {
                    channel_type: U32::new(0),
                    send_buffer_section_index: U32::new(index),
                    send_buffer_section_size: U32::new(size),
                });
                let _ = g.to_host.write_inband(3, PacketFlags::COMPLETION_REQUESTED, &[m.as_wire()]);
            }
            2 => {
                // [pfn, offset lo, offset hi, count lo, count hi, bytes...] at that page.
                let (head, bytes) = rest.split_at(rest.len().min(5));
                let mut h = [0u8; 5];
                h[..head.len()].copy_from_slice(head);
                let pfn = u64::from(h[0]);
                let offset = u32::from(u16::from_le_bytes([h[1], h[2]])) % 4096;
                let count = u32::from(u16::from_le_bytes([h[3], h[4]])).max(1);
                if pfn * 4096 + u64::from(offset) + bytes.len() as u64 <= (PAGES * 4096) as u64 {
                    guest_memory::write(&memory, pfn * 4096 + u64::from(offset), bytes).unwrap();
                }
                let pages = (u64::from(offset) + u64::from(count)).div_ceil(4096);
                let pfns: Vec<u64> = (0..pages).map(|i| pfn + i).collect();
                let range = GpaRangeSpec { byte_count: count, byte_offset: offset, pfns: &pfns };
                let m = NvspMessage::new(MessageType::SEND_RNDIS_PACKET, &SendRndisPacket {
                    channel_type: U32::new(u32::from(kind >> 7)),
                    send_buffer_section_index: U32::new(u32::MAX),
                    send_buffer_section_size: U32::new(0),
                });
                let _ = g.to_host.write_gpa_direct(4, PacketFlags::COMPLETION_REQUESTED, &[range], &[m.as_wire()]);
            }
            3 => {
                let _ = net.send_bytes(rest);
            }
            4 => {
                let lent = std::mem::take(&mut g.lent);
                for (i, t) in lent.into_iter().enumerate() {
                    if kind & 0x80 == 0 || i % 2 == 0 {
                        g.complete(t);
                    }
                }
                if let Some(&b) = rest.first() {
                    g.complete(u64::from(b));
                }
            }
            5 => {
                if kind & 0x80 != 0 {
                    recv.revoke();
                } else {
                    send.revoke();
                }
            }
            _ => g.control(&rest[..rest.len().min(4096)]),
        }
        poll(&mut worker, &mut g);
        while net.recv_bytes().is_some() {}
    }
    for _ in 0..4 {
        poll(&mut worker, &mut g);
    }
});
