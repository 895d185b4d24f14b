//! Building blocks shared by the host-vsp fuzz targets: [`Input`], the cursor every target reads
//! its decisions from, [`snapshot`] (a copy of guest RAM the NIC targets check a device's writes
//! against), and [`VmbusGuest`], a guest made of `vmbus`'s real client talking to a real
//! [`VmbusService`] through a recording [`Synic`], able to open a channel and hold the guest's ends
//! of its rings ([`GuestRing`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use host_vsp::vmbus_service::{
    EventDelivery, GuestPages, ServiceConfig, Synic, SynicError, VmbusDevice, VmbusService,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmbus::client::{Client, ClientAction, ClientConfig};
use vmbus::gpadl::GpaRange;
use vmbus::mem::PAGE_SIZE;
use vmbus::protocol::CHANNEL_MESSAGE_TYPE;
use vmbus::ring::{initialize_control_page, RingConsumer, RingProducer, FEATURE_PENDING_SEND_SIZE};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The fuzz input as a stream of decisions; reads past the end give zeros.
#[derive(Debug)]
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }
    /// Whether every byte was used.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }
    /// The next `N` bytes, zero-padded at the end of the input.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }
    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    /// The next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    /// A guest address for a RAM of `ram` bytes at 0: inside it (aligned or not), straddling its
    /// end, just past it, near the top of the address space, or any value.
    pub fn gpa(&mut self, ram: u64) -> u64 {
        let selector = self.u8();
        let low = u64::from(self.u16());
        match selector % 6 {
            0 | 1 => low % ram,
            2 => (low << 4) % ram,
            3 => ram - (low % 64),
            4 => u64::MAX - low,
            _ => self.u64(),
        }
    }
}

/// A copy of guest RAM `[0, len)` (which must all be RAM; regions may touch).
pub fn snapshot(mem: &GuestMemoryMmap, len: u64) -> Vec<u8> {
    let mut copy = vec![0u8; len as usize];
    mem.read_slice(&mut copy, GuestAddress(0)).unwrap();
    copy
}

/// `len` bytes of a [`snapshot`] at `gpa`, if they are all in it.
pub fn span(copy: &[u8], gpa: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(gpa).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    copy.get(start..end)
}

/// A [`Synic`] with no hypervisor: posted messages queue up for the guest's client, event signals
/// are counted, and each connection id has a real event fd the guest side writes to play
/// HvSignalEvent.
#[derive(Debug, Default)]
pub struct RecordingSynic {
    messages: Mutex<VecDeque<Vec<u8>>>,
    events: Mutex<BTreeMap<u32, EventFd>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RecordingSynic {
    /// The guest's HvSignalEvent on `connection_id` (ignored for an id the service never asked for).
    pub fn signal_host(&self, connection_id: u32) {
        if let Some(event) = lock(&self.events).get(&connection_id) {
            let _ = event.write(1);
        }
    }
}

impl Synic for RecordingSynic {
    fn post_message(&self, _: u32, _: u8, _: u32, payload: &[u8]) -> Result<(), SynicError> {
        lock(&self.messages).push_back(payload.to_vec());
        Ok(())
    }
    fn signal_event(&self, _: u32, _: u8, _: u32) -> Result<EventDelivery, SynicError> {
        Ok(EventDelivery::Set)
    }
    fn event_for(&self, connection_id: u32) -> Result<EventFd, SynicError> {
        let mut events = lock(&self.events);
        let fd = match events.get(&connection_id) {
            Some(fd) => fd.try_clone(),
            None => EventFd::new(EFD_NONBLOCK).and_then(|fd| {
                let clone = fd.try_clone()?;
                events.insert(connection_id, fd);
                Ok(clone)
            }),
        };
        fd.map_err(|e| SynicError(Box::new(e)))
    }
}

/// Pages of guest memory of a [`VmbusGuest`].
pub const GUEST_PAGES: u64 = 64;
/// Pages of each ring of a channel [`VmbusGuest::open`] opens.
pub const RING_PAGES: usize = 4;
/// How long the guest waits for the service or a device before giving up on a step.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The guest ends of one open channel.
#[derive(Debug)]
pub struct GuestRing {
    /// The channel.
    pub relid: u32,
    /// The connection id the guest signals the host with.
    pub connection_id: u32,
    /// First page of the guest→host ring (its control page).
    pub to_host_pfn: u64,
    /// First page of the host→guest ring (its control page).
    pub from_host_pfn: u64,
    /// Guest→host ring.
    pub to_host: RingProducer<GuestPages>,
    /// Host→guest ring; `None` when the guest broke its own read index before the open (the host
    /// may still have opened the channel: its end only checks the write index).
    pub from_host: Option<RingConsumer<GuestPages>>,
}

/// A guest: the real client, its memory and the service it talks to.
#[derive(Debug)]
pub struct VmbusGuest {
    /// The service under test.
    pub service: Arc<VmbusService>,
    /// The SynIC between them.
    pub synic: Arc<RecordingSynic>,
    /// The guest's VMBus client.
    pub client: Client,
    /// Guest memory ([`GUEST_PAGES`] pages at 0).
    pub memory: GuestMemoryMmap,
    actions: Vec<ClientAction>,
}

impl VmbusGuest {
    /// A guest of a service hosting `devices`, connected (newest version) and with the offers in.
    pub fn connect(devices: Vec<Arc<dyn VmbusDevice>>) -> Self {
        let bytes = (GUEST_PAGES as usize) * PAGE_SIZE;
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes)]).unwrap();
        let synic = Arc::new(RecordingSynic::default());
        let config = ServiceConfig {
            vp_count: 1,
            versions: Vec::new(),
        };
        let service = VmbusService::start(config, memory.clone(), synic.clone(), devices).unwrap();
        let mut guest = Self {
            service,
            synic,
            client: Client::new(ClientConfig::default()),
            memory,
            actions: Vec::new(),
        };
        guest.client.connect().unwrap();
        guest.pump();
        guest.client.request_offers().unwrap();
        assert!(guest.pump_until(|a| matches!(a, ClientAction::OffersComplete)));
        guest
    }

    /// Moves messages both ways until both sides are quiet.
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
                        let bytes = message.as_bytes();
                        let status =
                            self.service
                                .handle_post(connection_id, 0, CHANNEL_MESSAGE_TYPE, bytes);
                        if status != 0 {
                            let _ = self
                                .client
                                .handle_post_failure(message.message_type(), status);
                        }
                    }
                    other => self.actions.push(other),
                }
            }
            let messages: Vec<Vec<u8>> = lock(&self.synic.messages).drain(..).collect();
            for message in messages {
                moved = true;
                let _ = self.client.handle_message(&message);
            }
            if !moved {
                return;
            }
        }
    }

    /// Pumps until the client reports an action matching `done` (taken), at most [`PATIENCE`].
    pub fn pump_until(&mut self, mut done: impl FnMut(&ClientAction) -> bool) -> bool {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.pump();
            if let Some(i) = self.actions.iter().position(&mut done) {
                self.actions.remove(i);
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Opens the first offer on a fresh ring GPADL (pages from 16 on); `None` if the service refused.
    /// `scribble`: `(offset, value)` the guest writes into the host→guest ring's control page after
    /// initialising it and before the open (the page is the guest's to write at any time).
    pub fn open_first(&mut self, scribble: Option<(u64, u32)>) -> Option<GuestRing> {
        let offer = *self.client.offers().next()?;
        let relid = offer.child_relid;
        let pfns: Vec<u64> = (16..16 + 2 * RING_PAGES as u64).collect();
        let halves = pfns.split_at(RING_PAGES);
        for half in [halves.0, halves.1] {
            let pages = GuestPages::new(&self.memory, half).unwrap();
            initialize_control_page(&pages, FEATURE_PENDING_SEND_SIZE).unwrap();
        }
        if let Some((offset, value)) = scribble {
            let gpa = GuestAddress(halves.1[0] * PAGE_SIZE as u64 + offset);
            self.memory.write_obj(value, gpa).unwrap();
        }
        let gpadl = self
            .client
            .create_gpadl(relid, GpaRange::whole_pages(&pfns).unwrap())
            .unwrap();
        let mut status = None;
        self.pump_until(|a| {
            if let ClientAction::GpadlCreated { status: s, .. } = a {
                status = Some(*s);
            }
            status.is_some()
        });
        (status? == 0).then_some(())?;
        self.client
            .open_channel(relid, gpadl, RING_PAGES as u32, 0, &[])
            .unwrap();
        let mut status = None;
        self.pump_until(|a| {
            if let ClientAction::ChannelOpened { status: s, .. } = a {
                status = Some(*s);
            }
            status.is_some()
        });
        (status? == 0).then_some(())?;
        Some(GuestRing {
            relid,
            connection_id: offer.connection_id,
            to_host_pfn: pfns[0],
            from_host_pfn: halves.1[0],
            to_host: RingProducer::new(GuestPages::new(&self.memory, halves.0).unwrap()).unwrap(),
            from_host: RingConsumer::new(GuestPages::new(&self.memory, halves.1).unwrap()).ok(),
        })
    }

    /// Closes `relid` (the service stops its device before answering the post).
    pub fn close(&mut self, relid: u32) {
        let _ = self.client.close_channel(relid);
        self.pump();
    }
}
