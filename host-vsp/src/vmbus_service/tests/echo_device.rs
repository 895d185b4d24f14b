//! The device the service tests host: answers requests the guest writes into its ring (echo, GPADL
//! reads and writes, sub-channel offers, a panic on demand) and records what the device model told it
//! (one [`Seen`] per `serve` call), which threads ran and which ended.
//!
//! A request is an in-band packet `[command, 0, 0, 0, argument length (u32), arguments...]`; the answer is an in-band packet
//! with the same transaction id, `[status, 0, 0, 0, data length (u32), data...]`, followed by an
//! interrupt of the guest.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::Duration;

use vmbus::packet::PacketFlags;
use vmbus::protocol::Guid;
use vmbus::server::OfferConfig;

use super::super::{ContextError, GpadlAccessError, HostChannel, MappedGpadl, VmbusDevice, Wake};

/// Answer the arguments unchanged.
pub const ECHO: u8 = 1;
/// Panic on the device thread.
pub const PANIC: u8 = 2;
/// `handle u32, range u32, offset u64, len u32`: read from a GPADL; the data is the bytes read.
pub const READ: u8 = 3;
/// `handle u32, range u32, offset u64, bytes...`: write into a GPADL.
pub const WRITE: u8 = 4;
/// `handle u32, range u32, offset u64, len u32`: `with_slices`; the data is each piece's length (u32).
pub const SLICES: u8 = 5;
/// `handle u32`: whether `ChannelContext::gpadl(handle)` finds it now (no cache).
pub const LOOKUP: u8 = 6;
/// `handle u32`: write range 0 of the GPADL whole, over and over (bytes 1, 2, ... 255, 1, ...),
/// until a write fails; then answer.
pub const HAMMER: u8 = 7;
/// `count u16`: `offer_subchannels(count)`.
pub const SUBCHANNELS: u8 = 8;
/// No arguments: the data is the channel's relid and current target VP (u32 each).
pub const CONTEXT: u8 = 9;

/// The request was carried out.
pub const OK: u8 = 0;
/// A GPADL access failed; see [`EchoDevice::gpadl_errors`].
pub const ACCESS_FAILED: u8 = 1;
/// `ChannelContext::gpadl` did not know the handle.
pub const NO_GPADL: u8 = 2;
/// A request to the device model failed; see [`EchoDevice::context_errors`].
pub const CONTEXT_FAILED: u8 = 3;
/// The request could not be parsed.
pub const BAD_REQUEST: u8 = 4;

/// What one `serve` call was told, and where it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub relid: u32,
    pub primary: u32,
    pub subchannel_index: u16,
    pub opens: u64,
    pub target_vp: u32,
    pub user_data: Vec<u8>,
    pub thread_name: Option<String>,
    pub thread: ThreadId,
}

#[derive(Debug, Default)]
struct Record {
    seen: Vec<Seen>,
    exits: Vec<u32>,
    guest_signals: BTreeMap<u32, u64>,
    gpadl_errors: Vec<GpadlAccessError>,
    context_errors: Vec<ContextError>,
    /// GPADLs the device looked up once, kept across teardown (as a real device holding a buffer).
    kept: BTreeMap<u32, Arc<MappedGpadl>>,
}

/// A test device; see the module documentation.
#[derive(Debug)]
pub struct EchoDevice {
    name: String,
    offer: OfferConfig,
    /// While set, `serve` ignores the stop request and only returns once [`EchoDevice::release`]d.
    pub ignore_stop: AtomicBool,
    released: AtomicBool,
    /// Writes completed by [`HAMMER`].
    pub hammer_writes: AtomicU64,
    record: Mutex<Record>,
}

impl EchoDevice {
    /// A device whose offer has instance GUID number `instance`.
    pub fn new(name: &str, instance: u8) -> Arc<Self> {
        let if_type = Guid::new(0x7e57_0000, 0x5e55, 0x1c3d, [0xab; 8]);
        let if_instance = Guid::new(0x1000 + u32::from(instance), 1, 2, [instance; 8]);
        Arc::new(Self {
            name: name.into(),
            offer: OfferConfig::new(if_type, if_instance),
            ignore_stop: AtomicBool::new(false),
            released: AtomicBool::new(false),
            hammer_writes: AtomicU64::new(0),
            record: Mutex::default(),
        })
    }

    /// The same device as a trait object, for the service.
    pub fn dyn_clone(self: &Arc<Self>) -> Arc<dyn VmbusDevice> {
        self.clone()
    }

    fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Let threads that ignore stop return.
    pub fn release(&self) {
        self.released.store(true, Ordering::Release);
    }

    /// One entry per `serve` call so far, in call order.
    pub fn seen(&self) -> Vec<Seen> {
        self.record().seen.clone()
    }

    /// Relids whose `serve` returned, in order.
    pub fn exits(&self) -> Vec<u32> {
        self.record().exits.clone()
    }

    /// Signals the device threads of `relid` woke up for.
    pub fn guest_signals(&self, relid: u32) -> u64 {
        self.record()
            .guest_signals
            .get(&relid)
            .copied()
            .unwrap_or(0)
    }

    pub fn gpadl_errors(&self) -> Vec<GpadlAccessError> {
        self.record().gpadl_errors.clone()
    }

    pub fn context_errors(&self) -> Vec<ContextError> {
        self.record().context_errors.clone()
    }

    /// The GPADL `handle` as the device got it the first time it used it.
    pub fn kept(&self, handle: u32) -> Option<Arc<MappedGpadl>> {
        self.record().kept.get(&handle).cloned()
    }

    fn gpadl(&self, channel: &HostChannel, handle: u32) -> Option<Arc<MappedGpadl>> {
        if let Some(gpadl) = self.kept(handle) {
            return Some(gpadl);
        }
        let gpadl = channel.context.gpadl(handle)?;
        self.record().kept.insert(handle, gpadl.clone());
        Some(gpadl)
    }

    fn access_failed(&self, error: GpadlAccessError) -> (u8, Vec<u8>) {
        self.record().gpadl_errors.push(error);
        (ACCESS_FAILED, Vec::new())
    }

    fn handle(&self, channel: &mut HostChannel, request: &[u8]) -> (u8, Vec<u8>) {
        let (Some(&command), Some(len)) = (request.first(), u32_at(request, 4)) else {
            return (BAD_REQUEST, Vec::new());
        };
        let Some(args) = request.get(8..8 + len as usize) else {
            return (BAD_REQUEST, Vec::new());
        };
        let handle = u32_at(args, 0);
        let range = u32_at(args, 4).map(|r| r as usize);
        let offset = u64_at(args, 8);
        match command {
            ECHO => (OK, args.to_vec()),
            PANIC => panic!("test device told to panic"),
            READ | WRITE | SLICES => {
                let (Some(handle), Some(range), Some(offset)) = (handle, range, offset) else {
                    return (BAD_REQUEST, Vec::new());
                };
                let Some(gpadl) = self.gpadl(channel, handle) else {
                    return (NO_GPADL, Vec::new());
                };
                let len = u32_at(args, 16).map(u64::from);
                let result = match (command, len) {
                    (READ, Some(len)) => {
                        let mut buf = vec![0; len as usize];
                        gpadl.read(range, offset, &mut buf).map(|()| buf)
                    }
                    (WRITE, _) => gpadl
                        .write(range, offset, args.get(16..).unwrap_or(&[]))
                        .map(|()| Vec::new()),
                    (SLICES, Some(len)) => gpadl.with_slices(range, offset, len, |slices| {
                        slices
                            .flat_map(|s| (s.len() as u32).to_le_bytes())
                            .collect()
                    }),
                    _ => return (BAD_REQUEST, Vec::new()),
                };
                match result {
                    Ok(data) => (OK, data),
                    Err(error) => self.access_failed(error),
                }
            }
            LOOKUP => match handle {
                Some(handle) if channel.context.gpadl(handle).is_some() => (OK, Vec::new()),
                Some(_) => (NO_GPADL, Vec::new()),
                None => (BAD_REQUEST, Vec::new()),
            },
            HAMMER => {
                let Some(gpadl) = handle.and_then(|h| self.gpadl(channel, h)) else {
                    return (NO_GPADL, Vec::new());
                };
                let mut buf = vec![0u8; gpadl.range_len(0) as usize];
                let mut value = 0u8;
                while !channel.is_stopped() {
                    value = value % 255 + 1;
                    buf.fill(value);
                    if let Err(error) = gpadl.write(0, 0, &buf) {
                        return self.access_failed(error);
                    }
                    self.hammer_writes.fetch_add(1, Ordering::Relaxed);
                }
                (OK, Vec::new())
            }
            SUBCHANNELS => {
                let Some(count) = args.get(..2).map(|b| u16::from_le_bytes([b[0], b[1]])) else {
                    return (BAD_REQUEST, Vec::new());
                };
                match channel.context.offer_subchannels(count) {
                    Ok(()) => (OK, Vec::new()),
                    Err(error) => {
                        self.record().context_errors.push(error);
                        (CONTEXT_FAILED, Vec::new())
                    }
                }
            }
            CONTEXT => {
                let mut data = channel.context.relid().to_le_bytes().to_vec();
                data.extend_from_slice(&channel.context.target_vp().to_le_bytes());
                (OK, data)
            }
            _ => (BAD_REQUEST, Vec::new()),
        }
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

impl VmbusDevice for EchoDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn offer(&self) -> OfferConfig {
        self.offer
    }

    fn serve(&self, mut channel: HostChannel) {
        let context = &channel.context;
        let thread = std::thread::current();
        self.record().seen.push(Seen {
            relid: context.relid(),
            primary: context.primary_relid(),
            subchannel_index: context.subchannel_index(),
            opens: context.opens(),
            target_vp: context.target_vp(),
            user_data: context.user_data().to_vec(),
            thread_name: thread.name().map(String::from),
            thread: thread.id(),
        });
        let relid = channel.relid;
        if self.ignore_stop.load(Ordering::Acquire) {
            while !self.released.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.record().exits.push(relid);
            return;
        }
        let mut buf = vec![0u8; 64 * 1024];
        'serve: loop {
            loop {
                let info = match channel.inbound.read_packet(&mut buf) {
                    Ok(Some(packet)) => packet.info,
                    Ok(None) => break,
                    Err(_) => {
                        channel.signals.idle_until_stopped();
                        break 'serve;
                    }
                };
                let trans_id = info.desc.trans_id;
                let request = buf[info.data_offset()..info.len].to_vec();
                let (status, data) = self.handle(&mut channel, &request);
                let mut head = [0u8; 8];
                head[0] = status;
                head[4..].copy_from_slice(&(data.len() as u32).to_le_bytes());
                // The guest drains its ring; a full ring is a test bug, seen as a missing answer.
                let _ =
                    channel
                        .outbound
                        .write_inband(trans_id, PacketFlags::empty(), &[&head, &data]);
                channel.notify_guest();
            }
            // Only a guest signal or the stop request wakes the thread: answers prove signalling.
            match channel.wait(Duration::from_secs(60)) {
                Wake::Stopped => break,
                Wake::Signalled(n) => *self.record().guest_signals.entry(relid).or_default() += n,
                Wake::Timeout => {}
            }
        }
        self.record().exits.push(relid);
    }
}
