//! Property tests: random NVSP messages and random RNDIS section contents through a worker on
//! in-process rings (no service), after a valid bring-up. The worker never panics or fails, every
//! request asking for a completion gets one, and nothing but whole frames it validated reaches the
//! network.

use std::sync::Arc;

use netvsp_protocol::nvsp::{Init, MessageType, NvspMessage, SendReceiveBuffer, SendRndisPacket};
use proptest::prelude::*;
use vm_memory::GuestAddress;
use vmbus::mem::AlignedRingBuffer;
use vmbus::packet::{Packet, PacketFlags, PacketKind};
use vmbus::ring::{initialize_control_page, RingConsumer, RingProducer, FEATURE_PENDING_SEND_SIZE};
use zerocopy::byteorder::little_endian::{U16, U32};

use crate::guest_memory::{self, GuestMemoryMmap};
use crate::net::{MemoryNet, MAX_FRAME_LEN};
use crate::synthetic::netvsp::{ContiguousBuffer, GuestBuffer, NetvspConfig, NetvspWorker};

type Ring = Arc<AlignedRingBuffer>;

fn ring(data: usize) -> Ring {
    let r = Arc::new(AlignedRingBuffer::for_ring(data));
    initialize_control_page(&*r, FEATURE_PENDING_SEND_SIZE).unwrap();
    r
}

pub(super) struct Rig {
    pub(super) worker: NetvspWorker<Ring>,
    pub(super) to_host: RingProducer<Ring>,
    pub(super) from_host: RingConsumer<Ring>,
    memory: GuestMemoryMmap,
    net: MemoryNet,
}

const SEND_GPA: u64 = 0x20000;

impl Rig {
    fn new() -> Self {
        Self::with_rings(64 * 1024, 64 * 1024)
    }

    /// A rig whose guest→host ring holds `inbound` and host→guest ring `outbound` data bytes.
    pub(super) fn with_rings(inbound: usize, outbound: usize) -> Self {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 * 4096)]).unwrap();
        let recv: Arc<dyn GuestBuffer> =
            Arc::new(ContiguousBuffer::new(memory.clone(), 0x10000, 0x10000, 1));
        let send: Arc<dyn GuestBuffer> =
            Arc::new(ContiguousBuffer::new(memory.clone(), SEND_GPA, 0x8000, 2));
        let lookup = Box::new(move |h| match h {
            1 => Some(recv.clone()),
            2 => Some(send.clone()),
            _ => None,
        });
        let (host_end, net) = MemoryNet::pair().unwrap();
        let (a, b) = (ring(inbound), ring(outbound));
        let worker = NetvspWorker::new(
            RingConsumer::new(a.clone()).unwrap(),
            RingProducer::new(b.clone()).unwrap(),
            memory.clone(),
            lookup,
            Box::new(host_end),
            NetvspConfig::new([2; 6]),
        );
        let mut rig = Self {
            worker,
            to_host: RingProducer::new(a).unwrap(),
            from_host: RingConsumer::new(b).unwrap(),
            memory,
            net,
        };
        rig.nvsp(
            MessageType::INIT,
            &Init {
                min_protocol_version: U32::new(0x60001),
                max_protocol_version: U32::new(0x60001),
            },
        );
        rig.nvsp(
            MessageType::SEND_RECEIVE_BUFFER,
            &SendReceiveBuffer {
                gpadl_handle: U32::new(1),
                id: U16::new(0xCAFE),
            },
        );
        rig.nvsp(
            MessageType::SEND_SEND_BUFFER,
            &SendReceiveBuffer {
                gpadl_handle: U32::new(2),
                id: U16::new(0),
            },
        );
        let init = super::guest::encode(
            netvsp_protocol::rndis::RndisMessageType::INITIALIZE,
            &[1u32, 1, 0, 0x4000].map(U32::new),
            &[],
        );
        rig.section(0, &init, init.len() as u32);
        assert_eq!(rig.poll_completions(), 4);
        rig
    }

    fn nvsp<T: zerocopy::IntoBytes + zerocopy::Immutable>(&mut self, ty: MessageType, body: &T) {
        let m = NvspMessage::new(ty, body);
        let _ = self
            .to_host
            .write_inband(1, PacketFlags::COMPLETION_REQUESTED, &[m.as_wire()])
            .unwrap();
    }

    pub(super) fn section(&mut self, index: u32, bytes: &[u8], size: u32) {
        guest_memory::write(&self.memory, SEND_GPA + u64::from(index) * 6144, bytes).unwrap();
        self.nvsp(
            MessageType::SEND_RNDIS_PACKET,
            &SendRndisPacket {
                channel_type: U32::new(0),
                send_buffer_section_index: U32::new(index),
                send_buffer_section_size: U32::new(size),
            },
        );
    }

    /// Polls until quiet; returns the completions read (transfer packets are completed).
    pub(super) fn poll_completions(&mut self) -> usize {
        let mut completions = 0;
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..8 {
            let r = self.worker.poll(true);
            assert!(!r.failed);
            while let Some(read) = self.from_host.read_packet(&mut buf).unwrap() {
                let p = Packet::parse(&buf[..read.info.len]).unwrap();
                match p.kind {
                    PacketKind::Completion => completions += 1,
                    PacketKind::TransferPages(_) => {
                        let m = [108u8, 0, 0, 0, 1, 0, 0, 0];
                        let _ = self
                            .to_host
                            .write_completion(p.desc.trans_id, &[&m])
                            .unwrap();
                    }
                    _ => panic!("unexpected host packet"),
                }
            }
        }
        completions
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_nvsp_messages_never_break_the_worker(
        msgs in proptest::collection::vec((0u32..140, proptest::collection::vec(any::<u8>(), 0..48), any::<bool>()), 1..16)
    ) {
        let mut rig = Rig::new();
        for (ty, body, completion) in &msgs {
            let mut bytes = ty.to_le_bytes().to_vec();
            bytes.extend_from_slice(body);
            let flags = if *completion { PacketFlags::COMPLETION_REQUESTED } else { PacketFlags::empty() };
            let _ = rig.to_host.write_inband(7, flags, &[&bytes]).unwrap();
        }
        rig.poll_completions();
        prop_assert!(!rig.worker.poll(true).failed);
    }

    #[test]
    fn random_section_contents_send_only_valid_frames(
        contents in proptest::collection::vec(any::<u8>(), 0..700),
        size in 0u32..7000,
        index in 0u32..6,
    ) {
        let mut rig = Rig::new();
        rig.section(index, &contents, size);
        let completions = rig.poll_completions();
        prop_assert_eq!(completions, 1, "every SEND_RNDIS_PKT is completed");
        let s = rig.worker.stats();
        let mut sent = 0;
        while let Some(f) = rig.net.recv_bytes() {
            prop_assert!(!f.is_empty() && f.len() <= MAX_FRAME_LEN);
            sent += 1;
        }
        prop_assert_eq!(sent, s.tx_frames);
    }
}
