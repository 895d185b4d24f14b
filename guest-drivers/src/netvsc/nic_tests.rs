//! The NIC against a scripted netvsp on real rings (vmbus ring buffers in host memory): the
//! whole initialisation, sends batched under one signal with sections recycled on completion,
//! receives completed to the host, hostile receive packets, link indications, and smoltcp talking
//! ARP and ICMP to a fake peer through it.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};

use netvsp_protocol::nvsp::{
    MessageType, NvspMessage, NvspMessageRef, NvspStatus, RndisChannelType, SendRndisPacket,
    INVALID_SECTION_INDEX,
};
use netvsp_protocol::rndis::{self, PacketHeader, PacketLayout, RndisMessageRef, RndisMessageType};
use vmbus::mem::AlignedRingBuffer;
use vmbus::packet::{Packet, PacketFlags, PacketKind, TransferPageRange};
use vmbus::ring::{initialize_control_page, RingConsumer, RingProducer};

use super::super::test_replies::*;
use super::*;

const PAGE: usize = PAGE_SIZE;
const RING: usize = 64 * 1024;

/// Page-aligned heap memory as DMA memory (guest physical = virtual address).
struct TestPlatform;

impl Platform for TestPlatform {
    fn cpuid(&self, _: u32, _: u32) -> [u32; 4] {
        [0; 4]
    }
    fn rdmsr(&self, _: u32) -> u64 {
        0
    }
    fn wrmsr(&self, _: u32, _: u64) {}
    fn alloc_dma(&self, pages: usize) -> Option<DmaRegion> {
        let layout = Layout::from_size_align(pages * PAGE, PAGE).ok()?;
        // SAFETY: non-zero size.
        let va = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some(DmaRegion {
            va,
            pa: va.as_ptr() as u64,
            len: pages * PAGE,
        })
    }
    fn free_dma(&self, region: DmaRegion) {
        let layout = Layout::from_size_align(region.len, PAGE).unwrap();
        // SAFETY: allocated by `alloc_dma` with this layout.
        unsafe { dealloc(region.va.as_ptr(), layout) };
    }
    fn interrupt_count(&self, _: u8) -> u64 {
        0
    }
    fn interrupt_total(&self) -> u64 {
        0
    }
    fn wait_for_interrupt(&self, seen: u64) -> u64 {
        seen
    }
}

/// A second view of guest memory, as the host maps it (never freed through).
fn view(pa: u64, len: usize) -> DmaRegion {
    DmaRegion {
        va: NonNull::new(pa as *mut u8).unwrap(),
        pa,
        len,
    }
}

type Regions = Rc<RefCell<Vec<(u32, u64, usize)>>>;

struct Gpadls(Regions);

impl GpadlCreator for Gpadls {
    fn create_gpadl(&mut self, region: &DmaRegion) -> Result<u32, NicError> {
        let mut regions = self.0.borrow_mut();
        let handle = 0x200 + regions.len() as u32;
        regions.push((handle, region.pa, region.len));
        Ok(handle)
    }
}

/// Answers the frames the guest sends (the network behind the host).
type Peer = Box<dyn FnMut(&[u8]) -> Vec<Vec<u8>>>;

/// A scripted netvsp on the host ends of the two rings.
struct Host {
    from_guest: RingConsumer<Arc<AlignedRingBuffer>>,
    to_guest: RingProducer<Arc<AlignedRingBuffer>>,
    regions: Regions,
    receive: Option<DmaRegion>,
    send: Option<DmaRegion>,
    free_slots: VecDeque<u32>,
    outstanding: BTreeMap<u64, u32>,
    next_tid: u64,
    pending: VecDeque<(RndisChannelType, Vec<u8>)>,
    /// SEND_RECV_BUF_COMPLETE to answer instead of the good one.
    receive_table: Option<Vec<u8>>,
    /// Frames the guest sent.
    frames: Vec<Vec<u8>>,
    /// The guest's completions of our receive packets: (transaction id, status).
    completions: Vec<(u64, u32)>,
    /// Keep send completions back (in `held`) instead of answering at once.
    hold_sends: bool,
    held: Vec<u64>,
    peer: Peer,
}

impl Host {
    fn region(&self, gpadl: u32) -> DmaRegion {
        let regions = self.regions.borrow();
        let &(_, pa, len) = regions.iter().find(|r| r.0 == gpadl).expect("known GPADL");
        view(pa, len)
    }

    fn complete(&mut self, trans_id: u64, payload: &[u8]) {
        let _ = self
            .to_guest
            .write_completion(trans_id, &[payload])
            .unwrap();
    }

    fn rndis_done(&mut self, trans_id: u64) {
        self.complete(
            trans_id,
            &super::super::datapath::receive_completion(NvspStatus::SUCCESS),
        );
    }

    /// Reads and answers everything the guest wrote, then delivers what waits.
    fn step(&mut self) {
        let mut buf = vec![0u8; RING];
        while let Some(read) = self.from_guest.read_packet(&mut buf).unwrap() {
            let bytes = buf[..read.info.len].to_vec();
            self.handle(&bytes);
        }
        self.deliver();
    }

    fn handle(&mut self, bytes: &[u8]) {
        let packet = Packet::parse(bytes).unwrap();
        let tid = packet.desc.trans_id;
        match packet.kind {
            PacketKind::InBand => {
                let m = NvspMessageRef::parse(packet.payload).unwrap();
                let word = |at: usize| u32::from_le_bytes(m.body[at..at + 4].try_into().unwrap());
                match m.message_type {
                    MessageType::INIT => {
                        self.complete(tid, &init_complete(word(0), NvspStatus::SUCCESS))
                    }
                    MessageType::SEND_RECEIVE_BUFFER => {
                        let region = self.region(word(0));
                        let slots = region.len as u32 / RECEIVE_SECTION;
                        self.free_slots = (0..slots).collect();
                        let reply = self
                            .receive_table
                            .clone()
                            .unwrap_or(good_receive_complete(region.len));
                        self.receive = Some(region);
                        self.complete(tid, &reply);
                    }
                    MessageType::SEND_SEND_BUFFER => {
                        self.send = Some(self.region(word(0)));
                        self.complete(tid, &send_complete(NvspStatus::SUCCESS, 6144));
                    }
                    MessageType::SEND_RNDIS_PACKET => {
                        assert_eq!(word(0), 0, "data channel");
                        let (index, size) = (word(4) as usize, word(8) as usize);
                        let mut message = vec![0u8; size];
                        self.send.as_ref().unwrap().read(index * 6144, &mut message);
                        let m = RndisMessageRef::parse(&message).unwrap();
                        assert_eq!(m.message_type, RndisMessageType::PACKET);
                        let header: PacketHeader = m.body_as().unwrap();
                        let layout = PacketLayout::validate(&header, m.len()).unwrap();
                        let frame = message[layout.data].to_vec();
                        for reply in (self.peer)(&frame) {
                            self.pending
                                .push_back((RndisChannelType::DATA, packet_message(&reply)));
                        }
                        self.frames.push(frame);
                        if self.hold_sends {
                            self.held.push(tid);
                        } else {
                            self.rndis_done(tid);
                        }
                    }
                    MessageType::SEND_NDIS_CONFIG | MessageType::SEND_NDIS_VERSION => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            PacketKind::GpaDirect(ranges) => {
                let range = ranges.iter().next().unwrap();
                let page = view(range.pfn(0).unwrap() * PAGE as u64, PAGE);
                let mut message = vec![0u8; range.byte_count as usize];
                page.read(range.byte_offset as usize, &mut message);
                let m = RndisMessageRef::parse(&message).unwrap();
                let id: u32 = m.body_as().unwrap();
                let reply = match m.message_type {
                    RndisMessageType::INITIALIZE => initialize_complete(id, 0, 0),
                    RndisMessageType::SET => set_complete(id, 0),
                    _ => match u32::from_le_bytes(m.body[4..8].try_into().unwrap()) {
                        0x0001_0106 => good_query(id, &1500u32.to_le_bytes()),
                        0x0101_0101 => good_query(id, &MAC),
                        0x0001_0114 => good_query(id, &0u32.to_le_bytes()),
                        _ => good_query(id, &100_000_000u32.to_le_bytes()),
                    },
                };
                self.rndis_done(tid);
                self.pending.push_back((RndisChannelType::CONTROL, reply));
            }
            PacketKind::Completion => {
                let status = u32::from_le_bytes(packet.payload[4..8].try_into().unwrap());
                self.completions.push((tid, status));
                if let Some(slot) = self.outstanding.remove(&tid) {
                    self.free_slots.push_back(slot);
                }
            }
            _ => panic!("unexpected packet {:?}", packet.desc.packet_type),
        }
    }

    fn release_sends(&mut self) {
        for tid in core::mem::take(&mut self.held) {
            self.rndis_done(tid);
        }
    }

    /// Puts waiting RNDIS messages into free receive slots, one transfer-page packet each.
    fn deliver(&mut self) {
        while let (Some((channel, message)), Some(&slot)) =
            (self.pending.front(), self.free_slots.front())
        {
            let offset = slot * RECEIVE_SECTION;
            self.receive
                .as_ref()
                .unwrap()
                .write(offset as usize, message);
            let ranges = [TransferPageRange {
                byte_count: message.len() as u32,
                byte_offset: offset,
            }];
            let tid = self.inject(0xCAFE, &ranges, *channel);
            self.outstanding.insert(tid, slot);
            self.free_slots.pop_front();
            self.pending.pop_front();
        }
    }

    /// Writes a transfer-page packet as given; returns its transaction id.
    fn inject(
        &mut self,
        set_id: u16,
        ranges: &[TransferPageRange],
        channel: RndisChannelType,
    ) -> u64 {
        let nvsp = NvspMessage::new(
            MessageType::SEND_RNDIS_PACKET,
            &SendRndisPacket {
                channel_type: channel.0.into(),
                send_buffer_section_index: INVALID_SECTION_INDEX.into(),
                send_buffer_section_size: 0.into(),
            },
        );
        self.next_tid += 1;
        let _ = self
            .to_guest
            .write_transfer_pages(
                self.next_tid,
                PacketFlags::COMPLETION_REQUESTED,
                set_id,
                false,
                ranges,
                &[nvsp.as_wire()],
            )
            .unwrap();
        self.next_tid
    }
}

/// An RNDIS PACKET message carrying `frame`.
fn packet_message(frame: &[u8]) -> Vec<u8> {
    let mut m = rndis::packet_message_header(frame.len() as u32, 0).to_vec();
    m.extend_from_slice(frame);
    m
}

/// The guest's ends of the rings; waiting runs the host.
struct PeerTransport {
    out: RingProducer<Arc<AlignedRingBuffer>>,
    inbound: RingConsumer<Arc<AlignedRingBuffer>>,
    host: Rc<RefCell<Host>>,
    signal: bool,
    signals: u64,
}

impl NetTransport for PeerTransport {
    fn write_inband(
        &mut self,
        trans_id: u64,
        flags: PacketFlags,
        payload: &[&[u8]],
    ) -> Result<(), RingError> {
        self.signal |= self.out.write_inband(trans_id, flags, payload)?.signal;
        Ok(())
    }
    fn write_gpa_direct(
        &mut self,
        trans_id: u64,
        flags: PacketFlags,
        range: GpaRangeSpec<'_>,
        payload: &[&[u8]],
    ) -> Result<(), RingError> {
        self.signal |= self
            .out
            .write_gpa_direct(trans_id, flags, &[range], payload)?
            .signal;
        Ok(())
    }
    fn write_completion(&mut self, trans_id: u64, payload: &[&[u8]]) -> Result<(), RingError> {
        self.signal |= self.out.write_completion(trans_id, payload)?.signal;
        Ok(())
    }
    fn writable_len(&mut self) -> Result<usize, RingError> {
        self.out.writable_len()
    }
    fn drain(
        &mut self,
        buf: &mut [u8],
        limit: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<Drained, RingError> {
        let drained = self.inbound.drain(buf, limit, |_, bytes| f(bytes))?;
        self.signal |= drained.signal;
        Ok(drained)
    }
    fn flush(&mut self) -> Result<bool, HypercallError> {
        let signal = core::mem::take(&mut self.signal);
        self.signals += u64::from(signal);
        Ok(signal)
    }
    fn wait(&mut self) {
        self.host.borrow_mut().step();
    }
}

fn setup(
    peer: Peer,
    receive_table: Option<Vec<u8>>,
) -> (
    Result<NetvscNic<PeerTransport>, NicError>,
    Rc<RefCell<Host>>,
) {
    let rings = [(); 2].map(|_| {
        let ring = Arc::new(AlignedRingBuffer::for_ring(RING));
        initialize_control_page(&*ring, 1).unwrap();
        ring
    });
    let regions = Regions::default();
    let host = Rc::new(RefCell::new(Host {
        from_guest: RingConsumer::new(rings[0].clone()).unwrap(),
        to_guest: RingProducer::new(rings[1].clone()).unwrap(),
        regions: regions.clone(),
        receive: None,
        send: None,
        free_slots: VecDeque::new(),
        outstanding: BTreeMap::new(),
        next_tid: 0,
        pending: VecDeque::new(),
        receive_table,
        frames: Vec::new(),
        completions: Vec::new(),
        hold_sends: false,
        held: Vec::new(),
        peer,
    }));
    let transport = PeerTransport {
        out: RingProducer::new(rings[0].clone()).unwrap(),
        inbound: RingConsumer::new(rings[1].clone()).unwrap(),
        host: host.clone(),
        signal: false,
        signals: 0,
    };
    let config = NetvscConfig {
        receive_buffer_len: 64 * PAGE,
        ..NetvscConfig::default()
    };
    let nic = NetvscNic::open(transport, &mut Gpadls(regions), &TestPlatform, config);
    (nic, host)
}

fn silent() -> Peer {
    Box::new(|_| Vec::new())
}

fn frame(n: u8, len: usize) -> Vec<u8> {
    let mut f = vec![n; len];
    f[..6].copy_from_slice(&[0xff; 6]);
    f
}

#[test]
fn sends_are_batched_under_one_signal_and_receives_completed_to_the_host() {
    let (nic, host) = setup(silent(), None);
    let mut nic = nic.unwrap();
    assert_eq!(nic.info().mac, MAC);
    assert_eq!(nic.max_frame_len(), 1514);
    assert!(nic.link_up());
    // The host reads what initialisation left in the ring (our last receive completion).
    host.borrow_mut().step();
    nic.poll().unwrap();
    let signals = nic.transport_mut().signals;

    for n in 0..3 {
        nic.send(&frame(n, 60 + usize::from(n))).unwrap();
    }
    assert_eq!(nic.sends_in_flight(), 3);
    assert!(nic.flush().unwrap(), "the ring was empty before the first");
    assert!(!nic.flush().unwrap(), "nothing new");
    assert_eq!(
        nic.transport_mut().signals,
        signals + 1,
        "three frames, one signal"
    );
    host.borrow_mut().step();
    assert_eq!(
        host.borrow().frames,
        [frame(0, 60), frame(1, 61), frame(2, 62)]
    );
    nic.poll().unwrap();
    assert_eq!(nic.sends_in_flight(), 0, "completions recycle the sections");
    assert_eq!(nic.stats().tx_frames, 3);

    // Host → guest: two frames, completed with success, their slots reused.
    {
        let mut h = host.borrow_mut();
        h.pending
            .push_back((RndisChannelType::DATA, packet_message(&frame(7, 100))));
        h.pending
            .push_back((RndisChannelType::DATA, packet_message(&frame(8, 1514))));
        h.deliver();
    }
    let slots = host.borrow().free_slots.len();
    assert_eq!(nic.poll().unwrap(), 2);
    let mut got = Vec::new();
    while nic.receive(|f| got.push(f.to_vec())) {}
    assert_eq!(got, [frame(7, 100), frame(8, 1514)]);
    host.borrow_mut().step();
    let h = host.borrow();
    let data: Vec<u32> = h.completions.iter().rev().take(2).map(|c| c.1).collect();
    assert_eq!(data, [1, 1], "NVSP success");
    assert_eq!(h.free_slots.len(), slots + 2);
    assert!(h.outstanding.is_empty());
    assert_eq!(nic.stats().rx_frames, 2);
}

#[test]
fn sections_run_out_and_come_back_on_completion() {
    let (nic, host) = setup(silent(), None);
    let mut nic = nic.unwrap();
    host.borrow_mut().hold_sends = true;
    let mut sent = 0;
    loop {
        match nic.send(&frame(1, 60)) {
            Ok(()) => sent += 1,
            Err(NicError::Busy) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(sent <= 64, "never more than the sections");
    }
    assert_eq!(sent, 64, "384 KiB of 6144-byte sections");
    assert_eq!(nic.stats().tx_busy, 1);
    nic.flush().unwrap();
    host.borrow_mut().step();
    nic.poll().unwrap();
    assert_eq!(nic.sends_in_flight(), 64, "nothing completed yet");
    host.borrow_mut().release_sends();
    nic.poll().unwrap();
    assert_eq!(nic.sends_in_flight(), 0);
    nic.send(&frame(2, 60)).unwrap();
    assert!(matches!(
        nic.send(&[0u8; 1515]),
        Err(NicError::Protocol(NetvscError::BadFrameLength {
            len: 1515,
            max: 1514
        }))
    ));
}

#[test]
fn hostile_receive_packets_are_skipped_counted_and_completed_with_fail() {
    let (nic, host) = setup(silent(), None);
    let mut nic = nic.unwrap();
    let before = nic.stats().rx_errors;
    let outside = TransferPageRange {
        byte_count: 100,
        byte_offset: 64 * PAGE as u32 - 50,
    };
    let tid = host
        .borrow_mut()
        .inject(0xCAFE, &[outside], RndisChannelType::DATA);
    nic.poll().unwrap();
    assert!(matches!(
        nic.last_error(),
        Some(NetvscError::RangeOutsideSections { .. })
    ));
    let wrong_set = TransferPageRange {
        byte_count: 100,
        byte_offset: 0,
    };
    let tid2 = host
        .borrow_mut()
        .inject(0x1234, &[wrong_set], RndisChannelType::DATA);
    nic.poll().unwrap();
    assert!(matches!(
        nic.last_error(),
        Some(NetvscError::BadTransferPages(_))
    ));
    // A PACKET whose frame lies past its message.
    let mut bad = packet_message(&frame(3, 60));
    bad[8..12].copy_from_slice(&500u32.to_le_bytes());
    host.borrow_mut()
        .pending
        .push_back((RndisChannelType::DATA, bad));
    host.borrow_mut().deliver();
    nic.poll().unwrap();
    assert!(matches!(nic.last_error(), Some(NetvscError::Rndis(_))));
    assert_eq!(nic.stats().rx_errors, before + 3);
    assert!(!nic.receive(|_| {}), "nothing delivered");

    host.borrow_mut().step();
    let completions = host.borrow().completions.clone();
    assert!(
        completions.contains(&(tid, 2)) && completions.contains(&(tid2, 2)),
        "FAIL: {completions:?}"
    );
    assert_eq!(completions.last().unwrap().1, 2);
    // The NIC goes on working.
    host.borrow_mut()
        .pending
        .push_back((RndisChannelType::DATA, packet_message(&frame(4, 80))));
    host.borrow_mut().deliver();
    nic.poll().unwrap();
    assert!(nic.receive(|f| assert_eq!(f, frame(4, 80))));
}

#[test]
fn indications_move_the_link() {
    let (nic, host) = setup(silent(), None);
    let mut nic = nic.unwrap();
    host.borrow_mut()
        .pending
        .push_back((RndisChannelType::CONTROL, indicate(0x4001_000C, &[])));
    host.borrow_mut().deliver();
    nic.poll().unwrap();
    assert!(!nic.link_up());
    host.borrow_mut()
        .pending
        .push_back((RndisChannelType::CONTROL, indicate(0x4001_000B, &[])));
    host.borrow_mut().deliver();
    nic.poll().unwrap();
    assert!(nic.link_up());
    assert_eq!(nic.stats().link_events, 2);
}

#[test]
fn a_hostile_section_table_fails_open() {
    let (nic, _) = setup(silent(), Some(receive_complete(1, 0, 1806, 10_000, 0)));
    let Err(err) = nic else { panic!("opened") };
    assert!(matches!(
        err,
        NicError::Protocol(NetvscError::BadReceiveSections { slots: 10_000, .. })
    ));
}

#[path = "smoltcp_tests.rs"]
mod smoltcp_tests;
