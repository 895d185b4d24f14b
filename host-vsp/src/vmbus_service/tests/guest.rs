//! The guest side of the service tests: `vmbus`'s sans-I/O [`Client`] wired to a [`VmbusService`]
//! through a [`FakeSynic`] (client posts go to `handle_post`, messages the service posted go to
//! `Client::handle_message`), guest memory with a page allocator, and the guest ends of channel rings
//! ([`GuestRing`]) that talk to [`EchoDevice`](super::echo_device::EchoDevice)s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmbus::client::{Client, ClientAction, ClientConfig};
use vmbus::gpadl::GpaRange;
use vmbus::mem::PAGE_SIZE;
use vmbus::packet::{Packet, PacketFlags};
use vmbus::protocol::{parse_message, ChannelMessage, OfferChannel, CHANNEL_MESSAGE_TYPE};
use vmbus::ring::{initialize_control_page, RingConsumer, RingProducer, FEATURE_PENDING_SEND_SIZE};

use super::super::{GuestPages, ServiceConfig, VmbusDevice, VmbusService, STOP_TIMEOUT};
use super::synic::{FakeSynic, Posted};

/// Pages of guest memory (4 MiB).
pub const MEMORY_PAGES: u64 = 1024;
/// Pages of a ring GPADL, and where the host→guest ring starts.
pub const RING_PAGES: usize = 16;
pub const RING_SPLIT: usize = 8;
/// How long any wait for the service or a device may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Poll `done` until it holds; fail the test after [`TIMEOUT`].
pub fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// An answer of the echo device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub trans_id: u64,
    pub status: u8,
    pub data: Vec<u8>,
}

/// The guest end of one open channel.
#[derive(Debug)]
pub struct GuestRing {
    pub relid: u32,
    pub connection_id: u32,
    pub gpadl: u32,
    /// Guest→host ring (the first [`RING_SPLIT`] pages).
    pub to_host: RingProducer<GuestPages>,
    /// Host→guest ring.
    pub from_host: RingConsumer<GuestPages>,
    next_trans_id: u64,
}

/// How to build a [`Guest`].
pub struct Setup {
    pub devices: Vec<Arc<dyn VmbusDevice>>,
    pub client: ClientConfig,
    pub vp_count: u32,
    pub stop_timeout: Duration,
}

impl Setup {
    pub fn new(devices: Vec<Arc<dyn VmbusDevice>>) -> Self {
        Self {
            devices,
            client: ClientConfig::default(),
            vp_count: 4,
            stop_timeout: STOP_TIMEOUT,
        }
    }

    pub fn start(self) -> Guest {
        let memory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (MEMORY_PAGES as usize) * PAGE_SIZE)])
                .unwrap();
        let synic = Arc::new(FakeSynic::default());
        let config = ServiceConfig {
            vp_count: self.vp_count,
            versions: Vec::new(),
        };
        let service = VmbusService::start_with_stop_timeout(
            config,
            memory.clone(),
            synic.clone(),
            self.devices,
            self.stop_timeout,
        )
        .unwrap();
        Guest {
            service,
            synic,
            client: Client::new(self.client),
            memory,
            events: Vec::new(),
            refused: Vec::new(),
            lenient: false,
            next_pfn: 16,
        }
    }
}

/// The guest: a client, its memory, and the service it talks to.
pub struct Guest {
    pub service: Arc<VmbusService>,
    pub synic: Arc<FakeSynic>,
    pub client: Client,
    pub memory: GuestMemoryMmap,
    /// Client events (everything but posts) not taken yet.
    pub events: Vec<ClientAction>,
    /// Host messages the client refused (only collected when `lenient`; otherwise the test fails).
    pub refused: Vec<Posted>,
    pub lenient: bool,
    next_pfn: u64,
}

impl Guest {
    /// A guest of a service hosting `devices`, with default settings.
    pub fn start(devices: Vec<Arc<dyn VmbusDevice>>) -> Self {
        Setup::new(devices).start()
    }

    /// Move messages both ways until both sides are quiet.
    pub fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(action) = self.client.poll_action() {
                moved = true;
                match action {
                    ClientAction::PostMessage {
                        connection_id,
                        message,
                    } => {
                        let status = self.service.handle_post(
                            connection_id,
                            0,
                            CHANNEL_MESSAGE_TYPE,
                            message.as_bytes(),
                        );
                        if status != 0 {
                            // An error for anything but INITIATE_CONTACT's fallback: keep going.
                            let _ = self
                                .client
                                .handle_post_failure(message.message_type(), status);
                        }
                    }
                    event => self.events.push(event),
                }
            }
            for posted in self.synic.take_messages() {
                moved = true;
                assert_eq!(posted.message_type, CHANNEL_MESSAGE_TYPE);
                if let Err(error) = self.client.handle_message(&posted.bytes) {
                    assert!(
                        self.lenient,
                        "client refused {:?}: {error}",
                        parse_message(&posted.bytes)
                    );
                    self.refused.push(posted);
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// Pump until `done` holds (messages from the service's own thread arrive asynchronously).
    pub fn pump_until(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            self.pump();
            if done(self) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.synic.wait_for_activity(Duration::from_millis(20));
        }
    }

    pub fn take_events(&mut self) -> Vec<ClientAction> {
        std::mem::take(&mut self.events)
    }

    /// Offers among the events so far (taken).
    pub fn take_offers(&mut self) -> Vec<OfferChannel> {
        let (offers, rest): (Vec<_>, Vec<_>) = self
            .take_events()
            .into_iter()
            .partition(|e| matches!(e, ClientAction::Offer(_)));
        self.events = rest;
        offers
            .into_iter()
            .filter_map(|e| match e {
                ClientAction::Offer(offer) => Some(offer),
                _ => None,
            })
            .collect()
    }

    /// Connect, enumerate; returns the initial offers.
    pub fn connect(&mut self) -> Vec<OfferChannel> {
        self.client.connect().unwrap();
        self.pump();
        assert!(self.client.version().is_some(), "{:?}", self.events);
        self.client.request_offers().unwrap();
        self.pump();
        assert!(self.events.contains(&ClientAction::OffersComplete));
        let offers = self.take_offers();
        self.events.clear();
        offers
    }

    /// Post `message` as the guest would, bypassing the client (whose state it does not change);
    /// returns the hypercall status and what the service answered (not delivered to the client).
    pub fn post_raw(
        &mut self,
        connection_id: u32,
        message_type: u32,
        bytes: &[u8],
    ) -> (u16, Vec<Vec<u8>>) {
        self.pump();
        let status = self
            .service
            .handle_post(connection_id, 0, message_type, bytes);
        let answers = self
            .synic
            .take_messages()
            .into_iter()
            .map(|p| p.bytes)
            .collect();
        (status, answers)
    }

    /// [`Guest::post_raw`] of a channel message to the connection's message connection id.
    pub fn post_message<T: ChannelMessage>(&mut self, message: &T) -> (u16, Vec<Vec<u8>>) {
        let conn = self.client.message_connection_id().unwrap();
        self.post_raw(conn, CHANNEL_MESSAGE_TYPE, message.to_message().as_bytes())
    }

    /// `n` fresh pages of guest memory.
    pub fn alloc_pages(&mut self, n: usize) -> Vec<u64> {
        let first = self.next_pfn;
        self.next_pfn += n as u64;
        assert!(self.next_pfn <= MEMORY_PAGES, "test guest out of memory");
        (first..self.next_pfn).collect()
    }

    /// Create a GPADL through the client; returns its handle and the GPADL_CREATED status.
    pub fn create_gpadl(&mut self, relid: u32, range: GpaRange<'_>) -> (u32, u32) {
        let handle = self.client.create_gpadl(relid, range).unwrap();
        self.pump_until("GPADL_CREATED", |g| {
            g.events
                .iter()
                .any(|e| matches!(e, ClientAction::GpadlCreated { gpadl, .. } if *gpadl == handle))
        });
        let status = self
            .take_events()
            .into_iter()
            .find_map(|e| match e {
                ClientAction::GpadlCreated { gpadl, status, .. } if gpadl == handle => Some(status),
                _ => None,
            })
            .unwrap();
        (handle, status)
    }

    /// A ring GPADL of [`RING_PAGES`] fresh pages with both control pages initialized; returns the
    /// GPADL handle and its pages.
    pub fn ring_gpadl(&mut self, relid: u32) -> (u32, Vec<u64>) {
        let pfns = self.alloc_pages(RING_PAGES);
        for half in [&pfns[..RING_SPLIT], &pfns[RING_SPLIT..]] {
            let pages = GuestPages::new(&self.memory, half).unwrap();
            initialize_control_page(&pages, FEATURE_PENDING_SEND_SIZE).unwrap();
        }
        let (gpadl, status) = self.create_gpadl(relid, GpaRange::whole_pages(&pfns).unwrap());
        assert_eq!(status, 0);
        (gpadl, pfns)
    }

    /// Open `relid` on the ring GPADL `gpadl` (pages `pfns`); returns the OPENCHANNEL_RESULT status
    /// and, on success, the guest's ring ends.
    pub fn open_on(
        &mut self,
        relid: u32,
        gpadl: u32,
        pfns: Vec<u64>,
        target_vp: u32,
        user_data: &[u8],
    ) -> (u32, Option<GuestRing>) {
        self.client
            .open_channel(relid, gpadl, RING_SPLIT as u32, target_vp, user_data)
            .unwrap();
        self.pump_until("OPENCHANNEL_RESULT", |g| {
            g.events
                .iter()
                .any(|e| matches!(e, ClientAction::ChannelOpened { relid: r, .. } if *r == relid))
        });
        let status = self
            .take_events()
            .into_iter()
            .find_map(|e| match e {
                ClientAction::ChannelOpened { relid: r, status } if r == relid => Some(status),
                _ => None,
            })
            .unwrap();
        if status != 0 {
            return (status, None);
        }
        let connection_id = self.client.offer(relid).unwrap().connection_id;
        let ring = GuestRing {
            relid,
            connection_id,
            gpadl,
            to_host: RingProducer::new(GuestPages::new(&self.memory, &pfns[..RING_SPLIT]).unwrap())
                .unwrap(),
            from_host: RingConsumer::new(
                GuestPages::new(&self.memory, &pfns[RING_SPLIT..]).unwrap(),
            )
            .unwrap(),
            next_trans_id: 1,
        };
        (status, Some(ring))
    }

    /// Open `relid` on a fresh ring; the open must succeed.
    pub fn open(&mut self, relid: u32, target_vp: u32, user_data: &[u8]) -> GuestRing {
        let (gpadl, pfns) = self.ring_gpadl(relid);
        let (status, ring) = self.open_on(relid, gpadl, pfns, target_vp, user_data);
        assert_eq!(status, 0, "open of {relid} failed");
        ring.unwrap()
    }

    /// Close `relid` through the client.
    pub fn close(&mut self, relid: u32) {
        self.client.close_channel(relid).unwrap();
        self.pump();
    }

    /// Write a request `[command, 0, 0, 0, len, args...]` into the ring and signal the host.
    pub fn send(&self, ring: &mut GuestRing, command: u8, args: &[&[u8]]) -> u64 {
        let trans_id = ring.next_trans_id;
        ring.next_trans_id += 1;
        let len: usize = args.iter().map(|a| a.len()).sum();
        let head = [command, 0, 0, 0];
        let len = (len as u32).to_le_bytes();
        let mut parts: Vec<&[u8]> = vec![&head, &len];
        parts.extend_from_slice(args);
        let _ = ring
            .to_host
            .write_inband(trans_id, PacketFlags::empty(), &parts)
            .unwrap();
        self.synic.signal_host(ring.connection_id);
        trans_id
    }

    /// The next answer in the ring, waiting up to [`TIMEOUT`]; `None` if none came.
    pub fn try_recv(ring: &mut GuestRing, timeout: Duration) -> Option<Reply> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(read) = ring.from_host.read_packet(&mut buf).unwrap() {
                let packet = Packet::parse(&buf[..read.info.len]).unwrap();
                let payload = packet.payload;
                let len = u32::from_le_bytes(payload[4..8].try_into().unwrap()) as usize;
                return Some(Reply {
                    trans_id: read.info.desc.trans_id,
                    status: payload[0],
                    data: payload[8..8 + len].to_vec(),
                });
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Send a request and wait for its answer and the interrupt that follows it.
    pub fn request(&self, ring: &mut GuestRing, command: u8, args: &[&[u8]]) -> Reply {
        let interrupts = self.synic.signals().len();
        let trans_id = self.send(ring, command, args);
        let reply = Self::try_recv(ring, TIMEOUT)
            .unwrap_or_else(|| panic!("no answer to command {command} on relid {}", ring.relid));
        assert_eq!(reply.trans_id, trans_id);
        eventually("the interrupt after an answer", || {
            self.synic.signals().len() > interrupts
        });
        reply
    }

    /// Guest memory bytes at `gpa`.
    pub fn read_memory(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.memory.read_slice(&mut buf, GuestAddress(gpa)).unwrap();
        buf
    }

    pub fn write_memory(&self, gpa: u64, bytes: &[u8]) {
        self.memory.write_slice(bytes, GuestAddress(gpa)).unwrap();
    }
}
