//! The probe device on the host: a VMBus device that exercises the device model from a real guest
//! (`probe-protocol` has the wire format). It echoes packets, offers sub-channels when asked, and
//! reads, writes and hammers GPADLs the guest names — one thread per open channel, like every device.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use host_vsp::vmbus_service::{GpadlAccessError, HostChannel, HostChannelStats, VmbusDevice, Wake};
use probe_protocol::{fnv1a, op, status, Packet, FNV_OFFSET, HAMMER_MAX_WRITES, PROBE_INTERFACE};
use vmbus::packet::PacketFlags;
use vmbus::protocol::Guid;
use vmbus::server::OfferConfig;

/// Longest a hammer request runs.
const HAMMER_BUDGET: Duration = Duration::from_secs(20);

/// What one channel of the probe has done.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProbeChannelStats {
    /// The channel's relid.
    pub relid: u32,
    /// Times the guest opened it.
    pub opens: u64,
    /// ECHO requests answered.
    pub echoes: u64,
    /// Requests of any kind answered.
    pub requests: u64,
    /// Packets that were not probe requests.
    pub malformed: u64,
    /// Counter writes the last hammer made, and the status it ended with.
    pub hammer: Option<(u64, u32)>,
    /// The channel's notifications.
    pub channel: HostChannelStats,
    /// The channel is being served.
    pub serving: bool,
}

/// The probe device.
#[derive(Debug)]
pub struct ProbeDevice {
    instance: Guid,
    stats: Arc<Mutex<BTreeMap<u16, ProbeChannelStats>>>,
}

impl ProbeDevice {
    /// A probe with instance GUID `instance`.
    pub fn new(instance: Guid) -> Self {
        Self {
            instance,
            stats: Arc::default(),
        }
    }

    /// Live counters by sub-channel index (0 = primary).
    pub fn stats(&self) -> Arc<Mutex<BTreeMap<u16, ProbeChannelStats>>> {
        self.stats.clone()
    }

    fn update(&self, index: u16, f: impl FnOnce(&mut ProbeChannelStats)) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        f(stats.entry(index).or_default());
    }
}

fn access_status(error: GpadlAccessError) -> u32 {
    match error {
        GpadlAccessError::Revoked(_) => status::REVOKED,
        _ => status::ACCESS,
    }
}

impl ProbeDevice {
    fn handle(&self, channel: &HostChannel, request: Packet) -> Packet {
        let context = &channel.context;
        match request.op {
            op::ECHO => request.reply(status::OK, request.a, request.b),
            op::SUBCHANNELS => match context.offer_subchannels(request.a.min(64) as u16) {
                Ok(()) => request.reply(status::OK, request.a, 0),
                Err(_) => request.reply(status::REFUSED, 0, 0),
            },
            op::GPADL_CHECK => {
                let Some(gpadl) = context.gpadl(request.a) else {
                    return request.reply(status::NO_GPADL, 0, 0);
                };
                let len = request.b as usize;
                let mut bytes = vec![0u8; len];
                if let Err(e) = gpadl.read(0, 0, &mut bytes) {
                    return request.reply(access_status(e), 0, 0);
                }
                let hash = fnv1a(FNV_OFFSET, &bytes);
                bytes.iter_mut().for_each(|b| *b = !*b);
                match gpadl.write(0, 0, &bytes) {
                    Ok(()) => request.reply(status::OK, hash, len as u32),
                    Err(e) => request.reply(access_status(e), hash, 0),
                }
            }
            op::GPADL_HAMMER => {
                let Some(gpadl) = context.gpadl(request.a) else {
                    return request.reply(status::NO_GPADL, 0, 0);
                };
                let deadline = Instant::now() + HAMMER_BUDGET;
                let mut writes = 0u64;
                let end = loop {
                    if writes >= HAMMER_MAX_WRITES
                        || channel.is_stopped()
                        || (writes.is_multiple_of(4096) && Instant::now() > deadline)
                    {
                        break status::OK;
                    }
                    match gpadl.write(0, 0, &(writes + 1).to_le_bytes()) {
                        Ok(()) => writes += 1,
                        Err(e) => break access_status(e),
                    }
                };
                let index = context.subchannel_index();
                self.update(index, |s| s.hammer = Some((writes, end)));
                request.reply(end, writes as u32, (writes >> 32) as u32)
            }
            op::PANIC => panic!("probe: the guest asked this device thread to panic"),
            _ => request.reply(status::REFUSED, 0, 0),
        }
    }
}

impl VmbusDevice for ProbeDevice {
    fn name(&self) -> &str {
        "probe"
    }

    fn offer(&self) -> OfferConfig {
        OfferConfig::new(PROBE_INTERFACE, self.instance)
    }

    fn serve(&self, mut channel: HostChannel) {
        let index = channel.context.subchannel_index();
        let (relid, opens) = (channel.relid, channel.context.opens());
        self.update(index, |s| {
            s.relid = relid;
            s.opens = opens;
            s.serving = true;
        });
        let mut buf = vec![0u8; 4096];
        loop {
            let mut requests = Vec::new();
            let mut malformed = 0;
            let drained = channel.inbound.drain(&mut buf, 64, |info, bytes| {
                match Packet::parse(bytes.get(info.data_offset()..).unwrap_or(&[])) {
                    Some(p) if !p.is_reply() => requests.push((info.desc.trans_id, p)),
                    _ => malformed += 1,
                }
            });
            let Ok(drained) = drained else {
                channel.signals.idle_until_stopped();
                break;
            };
            let mut signal = drained.signal;
            let (mut echoes, answered) = (0, requests.len() as u64);
            for (trans_id, request) in requests {
                echoes += u64::from(request.op == op::ECHO);
                let reply = self.handle(&channel, request).to_bytes();
                match channel
                    .outbound
                    .write_inband(trans_id, PacketFlags::empty(), &[&reply])
                {
                    Ok(written) => signal |= written.signal,
                    Err(error) => tracing::warn!(relid, %error, "probe reply dropped"),
                }
            }
            if signal {
                channel.notify_guest();
            }
            let stats = channel.stats();
            self.update(index, |s| {
                s.echoes += echoes;
                s.requests += answered;
                s.malformed += malformed;
                s.channel = stats;
            });
            if drained.more {
                continue;
            }
            if channel.wait(Duration::from_millis(100)) == Wake::Stopped {
                break;
            }
        }
        self.update(index, |s| s.serving = false);
    }
}
