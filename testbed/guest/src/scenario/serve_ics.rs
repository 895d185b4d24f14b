//! The time-sync and KVP integration components of the `serve` scenario. The guest's clock starts at
//! the Unix epoch (it has no RTC) and runs on the partition reference counter; each time-sync message
//! is answered and reported as
//! `serve-timesync kind=sync|sample error=E adjusted=0|1 ref=R clock=C` (E: how far the clock was
//! from the host's time, C: the clock at reference time R, both in 100 ns units, C since 1970). The
//! KVP driver answers from the kernel's own values ([`auto_values`]) and stores what the host pushes,
//! reporting each push as `serve-kvp-set pool=P key=K value=V` and the end of each enumeration as
//! `serve-kvp-enumerated pool=P count=N`.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use guest_drivers::hv::detect::{self, features};
use guest_drivers::hv::msr;
use guest_drivers::ic::kvp::{KvpDriver, KvpGuestEvent, KvpStore};
use guest_drivers::ic::timesync::{TimeSyncDriver, TimeSyncEvent};
use guest_drivers::platform::Platform;
use guest_drivers::vmbus_client::{Channel, VmbusConnection};
use vmbus::packet::PacketFlags;
use vmbus::protocol::interface;

use crate::platform::Kernel;
use crate::println;
use crate::vmbus_global::KERNEL;

/// Ring pages per direction of each channel (a KVP message is 2.6 KB).
const RING_PAGES: usize = 4;

fn err(e: impl ToString) -> String {
    e.to_string()
}

/// The kernel's intrinsic KVP values (the AUTO pool the host enumerates).
pub fn auto_values() -> Vec<(&'static str, &'static str)> {
    vec![
        ("FullyQualifiedDomainName", "viridian-guest"),
        ("HostName", "viridian-guest"),
        ("IntegrationServicesVersion", env!("CARGO_PKG_VERSION")),
        ("OSName", "viridian guest kernel"),
        ("OSMajorVersion", env!("CARGO_PKG_VERSION_MAJOR")),
        ("OSMinorVersion", env!("CARGO_PKG_VERSION_MINOR")),
        ("OSBuildNumber", env!("CARGO_PKG_VERSION_PATCH")),
        ("OSVersion", env!("CARGO_PKG_VERSION")),
        ("ProcessorArchitecture", "x86_64"),
    ]
}

/// The partition reference counter.
fn reference_time() -> u64 {
    Kernel.rdmsr(msr::TIME_REF_COUNT)
}

/// The time-sync and KVP channels the host offered, opened.
pub struct ExtraIcs {
    time: Option<(Channel, TimeSyncDriver)>,
    kvp: Option<(Channel, KvpDriver)>,
}

impl ExtraIcs {
    /// Open whichever of the two the host offers. The time-sync IC needs the reference counter.
    pub fn open(conn: &mut VmbusConnection<'static, Kernel>) -> Result<Self, String> {
        let mut time = None;
        if let Some(offer) = conn.find_offer(interface::TIME_SYNC) {
            let info = detect::detect(&KERNEL).map_err(err)?;
            if info.features_eax & features::TIME_REF_COUNT == 0 {
                println!("serve-timesync-unavailable reason=no-reference-counter");
            } else {
                let channel = conn
                    .open_channel(offer.child_relid, RING_PAGES, RING_PAGES)
                    .map_err(err)?;
                let clock = TimeSyncDriver::at_epoch();
                let r = reference_time();
                println!("serve-clock-start ref={r} clock={}", clock.unix_time(r));
                time = Some((channel, clock));
            }
        }
        let kvp = match conn.find_offer(interface::KVP) {
            Some(offer) => {
                let channel = conn
                    .open_channel(offer.child_relid, RING_PAGES, RING_PAGES)
                    .map_err(err)?;
                Some((channel, KvpDriver::new(KvpStore::with_auto(&auto_values()))))
            }
            None => None,
        };
        Ok(Self { time, kvp })
    }

    /// How many are open.
    pub fn count(&self) -> usize {
        usize::from(self.time.is_some()) + usize::from(self.kvp.is_some())
    }

    /// Answer whatever the host sent on either; returns whether anything was answered.
    pub fn serve(
        &mut self,
        conn: &mut VmbusConnection<'static, Kernel>,
        buf: &mut [u8],
    ) -> Result<bool, String> {
        let mut progressed = false;
        if let Some((channel, clock)) = self.time.as_mut() {
            if channel.take_event(conn.synic()) {
                let served = answer_all(channel, buf, |request, reply| {
                    let r = reference_time();
                    let (len, event) = clock.handle(request, reply, r).map_err(err)?;
                    match event {
                        TimeSyncEvent::Synced { error } => println!(
                            "serve-timesync kind=sync error={error} adjusted=1 ref={r} clock={}",
                            clock.unix_time(r)
                        ),
                        TimeSyncEvent::Sampled { error, adjusted } => println!(
                            "serve-timesync kind=sample error={error} adjusted={} ref={r} clock={}",
                            u8::from(adjusted),
                            clock.unix_time(r)
                        ),
                        TimeSyncEvent::Negotiated(_) | TimeSyncEvent::Ignored => {}
                    }
                    Ok(len)
                })?;
                if served > 0 {
                    progressed = true;
                    channel.flush(conn.hypercalls()).map_err(err)?;
                }
            }
        }
        if let Some((channel, kvp)) = self.kvp.as_mut() {
            if channel.take_event(conn.synic()) {
                let served = answer_all(channel, buf, |request, reply| {
                    let (len, event) = kvp.handle(request, reply).map_err(err)?;
                    match event {
                        KvpGuestEvent::Set {
                            pool,
                            key,
                            value,
                            stored,
                        } => println!(
                            "serve-kvp-set pool={} key={key} value={value} stored={}",
                            pool.0,
                            u8::from(stored)
                        ),
                        KvpGuestEvent::Enumerated {
                            pool,
                            index,
                            found: false,
                        } => {
                            println!("serve-kvp-enumerated pool={} count={index}", pool.0)
                        }
                        KvpGuestEvent::Refused { operation, status } => {
                            println!("serve-kvp-refused op={operation} status={status:#x}")
                        }
                        _ => {}
                    }
                    Ok(len)
                })?;
                if served > 0 {
                    progressed = true;
                    channel.flush(conn.hypercalls()).map_err(err)?;
                }
            }
        }
        Ok(progressed)
    }
}

/// Drain `channel` completely, answering each request with `handle(request, reply) -> reply length`,
/// then queue the replies; returns how many were answered. A request the driver cannot parse ends
/// the scenario with its error.
fn answer_all(
    channel: &mut Channel,
    buf: &mut [u8],
    mut handle: impl FnMut(&[u8], &mut [u8]) -> Result<usize, String>,
) -> Result<usize, String> {
    let mut replies: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut failure = None;
    loop {
        let drained = channel
            .drain(buf, 64, |info, bytes| {
                let payload = &bytes[info.data_offset().min(bytes.len())..];
                let mut reply = vec![0u8; payload.len().max(64)];
                match handle(payload, &mut reply) {
                    Ok(len) => {
                        reply.truncate(len);
                        replies.push((info.desc.trans_id, reply));
                    }
                    Err(e) => failure = Some(e),
                }
            })
            .map_err(err)?;
        if !drained.more {
            break;
        }
    }
    if let Some(e) = failure {
        return Err(format!("bad IC request on relid {}: {e}", channel.relid));
    }
    for (trans_id, reply) in &replies {
        channel
            .write_inband(*trans_id, PacketFlags::empty(), &[reply])
            .map_err(err)?;
    }
    Ok(replies.len())
}
