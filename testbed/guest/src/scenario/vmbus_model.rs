//! VMBus steps that exercise the host's device model (run by `vmbus:<steps>`):
//! - `await-scsi=N`: wait until N SCSI controllers are offered (a controller the host adds at run
//!   time arrives meanwhile: hot-add);
//! - `await-rescind`: wait for the host to rescind a channel, close the controller opened on it and
//!   release its relid (RELID_RELEASED), forgetting what the bench model knew of that disk;
//! - `probe-gpadl`: give the probe device a GPADL besides its rings, check it reads and writes it,
//!   then tear the GPADL down while the device hammers it and check the device got an error and
//!   stopped touching the pages;
//! - `probe-sub`: ask the probe for 3 sub-channels, open all 4 channels and echo a burst on each;
//! - `probe-panic`: make the probe's device thread panic and expect the host to rescind it;
//! - `never-reads`: hostile: fill the first SCSI controller's request ring and never read a
//!   completion; after 2.5 s close the channel (timed), then fill it again and leave it so.
//!
//! Results are printed as `key=value` lines the host test reads.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use guest_drivers::platform::Platform;
use guest_drivers::vmbus_client::{Channel, VmbusConnection};
use probe_protocol::{fnv1a, op, status, Packet, FNV_OFFSET, PROBE_INTERFACE};
use vmbus::client::ClientAction;
use vmbus::gpadl::GpaRange;
use vmbus::packet::PacketFlags;
use vmbus::protocol::interface;

use crate::platform::Kernel;
use crate::println;

type Conn = VmbusConnection<'static, Kernel>;

fn err(e: impl ToString) -> String {
    e.to_string()
}

/// Run `step` if it is one of this module's; `None` otherwise.
pub fn step(conn: &mut Conn, step: &str) -> Option<Result<(), String>> {
    let (name, value) = step.split_once('=').unwrap_or((step, ""));
    Some(match name {
        "await-scsi" => await_scsi(conn, value),
        "await-rescind" => await_rescind(conn),
        "probe-gpadl" => probe_gpadl(conn),
        "probe-sub" => probe_sub(conn),
        "probe-panic" => probe_panic(conn),
        "never-reads" => never_reads(conn),
        _ => return None,
    })
}

fn await_scsi(conn: &mut Conn, value: &str) -> Result<(), String> {
    let want: usize = value
        .parse()
        .map_err(|_| format!("await-scsi: `{value}` is not a count"))?;
    conn.wait_for_offers(|c| c.primary_offers(interface::SCSI).len() >= want)
        .map_err(err)?;
    let relids: Vec<u32> = conn
        .primary_offers(interface::SCSI)
        .iter()
        .map(|o| o.child_relid)
        .collect();
    println!("scsi-relids={relids:?}");
    Ok(())
}

fn await_rescind(conn: &mut Conn) -> Result<(), String> {
    let relid = conn.wait_for_rescind().map_err(err)?;
    let index = conn
        .offers()
        .iter()
        .filter(|o| {
            let offer = o.offer;
            offer.if_type == interface::SCSI && offer.sub_channel_index == 0
        })
        .filter(|o| o.child_relid < relid)
        .count();
    let was_open = crate::vmbus_disk::release_rescinded(conn, relid)?;
    crate::scenario::bench::forget_device(&format!("vmbus{index}"));
    conn.release_channel(relid).map_err(err)?;
    println!(
        "rescinded-relid={relid} rescinded-was-open={}",
        u8::from(was_open)
    );
    Ok(())
}

/// Send `requests` on `channel` (one signal), then collect as many replies.
fn exchange(
    conn: &mut Conn,
    channel: &mut Channel,
    requests: &[Packet],
) -> Result<Vec<Packet>, String> {
    for (i, request) in requests.iter().enumerate() {
        channel
            .write_inband(i as u64 + 1, PacketFlags::empty(), &[&request.to_bytes()])
            .map_err(err)?;
    }
    channel.flush(conn.hypercalls()).map_err(err)?;
    let mut replies = Vec::new();
    let mut buf = vec![0u8; 256];
    let mut bad = 0;
    while replies.len() < requests.len() {
        let seen = Kernel.interrupt_total();
        channel.take_event(conn.synic());
        let drained = channel
            .drain(&mut buf, 64, |info, bytes| {
                match Packet::parse(bytes.get(info.data_offset()..).unwrap_or(&[])) {
                    Some(p) if p.is_reply() => replies.push(p),
                    _ => bad += 1,
                }
            })
            .map_err(err)?;
        if bad > 0 {
            return Err(format!(
                "{bad} bad probe replies on relid {}",
                channel.relid
            ));
        }
        if drained.packets == 0 && !drained.more {
            Kernel.wait_for_interrupt(seen);
        }
    }
    // A reader-side signal the host may be waiting for.
    channel.flush(conn.hypercalls()).map_err(err)?;
    Ok(replies)
}

fn one(conn: &mut Conn, channel: &mut Channel, request: Packet) -> Result<Packet, String> {
    exchange(conn, channel, &[request])?
        .pop()
        .ok_or_else(|| "no reply".to_string())
}

fn open_probe(conn: &mut Conn) -> Result<(Channel, vmbus::protocol::Guid), String> {
    let offer = conn
        .find_offer(PROBE_INTERFACE)
        .ok_or("no probe device offered")?;
    let instance = offer.offer.if_instance;
    let channel = conn.open_channel(offer.child_relid, 4, 4).map_err(err)?;
    Ok((channel, instance))
}

/// Bytes the GPADL range skips at its start, and its length: not page-aligned on purpose.
const GPADL_OFFSET: usize = 100;
const GPADL_PAGES: usize = 3;
const GPADL_LEN: usize = GPADL_PAGES * 4096 - 2 * GPADL_OFFSET;

fn probe_gpadl(conn: &mut Conn) -> Result<(), String> {
    let (mut channel, _) = open_probe(conn)?;
    let pages = Kernel.alloc_dma(GPADL_PAGES).ok_or("no memory")?;
    let pattern: Vec<u8> = (0..GPADL_LEN).map(|i| (i * 7 + 3) as u8).collect();
    pages.write(GPADL_OFFSET, &pattern);
    let pfns: Vec<u64> = pages.pfns().collect();
    let range = GpaRange {
        byte_count: GPADL_LEN as u32,
        byte_offset: GPADL_OFFSET as u32,
        pfns: &pfns,
    };
    let gpadl = conn
        .client_mut()
        .create_gpadl(channel.relid, range)
        .map_err(err)?;
    match conn
        .wait_for(|a| matches!(a, ClientAction::GpadlCreated { gpadl: g, .. } if *g == gpadl))
        .map_err(err)?
    {
        ClientAction::GpadlCreated { status: 0, .. } => {}
        other => return Err(format!("GPADL refused: {other:?}")),
    }
    // 1. The device reads what we wrote and writes its complement.
    let reply = one(
        conn,
        &mut channel,
        Packet::request(op::GPADL_CHECK, gpadl, GPADL_LEN as u32),
    )?;
    let (hash, written) = reply.values();
    if reply.status() != status::OK || hash != fnv1a(FNV_OFFSET, &pattern) {
        return Err(format!("GPADL check: {reply:?}"));
    }
    let mut back = vec![0u8; GPADL_LEN];
    pages.read(GPADL_OFFSET, &mut back);
    if written as usize != GPADL_LEN || back.iter().zip(&pattern).any(|(b, p)| *b != !*p) {
        return Err("the device's writes are not in the GPADL".into());
    }
    println!("probe-gpadl-check=ok");
    // 2. Tear it down while the device hammers it (its counter starts from a zeroed word).
    pages.write(GPADL_OFFSET, &[0; 8]);
    let hammer = Packet::request(op::GPADL_HAMMER, gpadl, 0);
    channel
        .write_inband(99, PacketFlags::empty(), &[&hammer.to_bytes()])
        .map_err(err)?;
    channel.flush(conn.hypercalls()).map_err(err)?;
    let counter = || {
        let mut c = [0u8; 8];
        pages.read(GPADL_OFFSET, &mut c);
        u64::from_le_bytes(c)
    };
    let mut spins = 0u64;
    while counter() < 10_000 {
        spins += 1;
        if spins > 2_000_000_000 {
            return Err("the device never wrote the GPADL".into());
        }
        core::hint::spin_loop();
    }
    conn.client_mut().teardown_gpadl(gpadl).map_err(err)?;
    conn.wait_for(|a| matches!(a, ClientAction::GpadlTornDown { gpadl: g, .. } if *g == gpadl))
        .map_err(err)?;
    let at_teardown = counter();
    for _ in 0..2_000_000 {
        core::hint::spin_loop();
    }
    let later = counter();
    if later != at_teardown {
        return Err(format!(
            "the device wrote the pages after GPADL_TORNDOWN ({at_teardown} then {later})"
        ));
    }
    let mut reply = None;
    let mut buf = vec![0u8; 256];
    while reply.is_none() {
        let seen = Kernel.interrupt_total();
        channel.take_event(conn.synic());
        let drained = channel
            .drain(&mut buf, 8, |info, bytes| {
                reply = Packet::parse(bytes.get(info.data_offset()..).unwrap_or(&[]));
            })
            .map_err(err)?;
        if reply.is_none() && !drained.more {
            Kernel.wait_for_interrupt(seen);
        }
    }
    let reply = reply.ok_or("no hammer reply")?;
    let (writes, _) = reply.values();
    println!(
        "probe-hammer-status={} probe-hammer-writes={writes} probe-counter-at-teardown={at_teardown}",
        reply.status()
    );
    if reply.status() != status::REVOKED {
        return Err(format!("hammer ended with status {}", reply.status()));
    }
    Kernel.free_dma(pages);
    // 3. The channel still works.
    let echo = one(conn, &mut channel, Packet::request(op::ECHO, 5, 6))?;
    if echo.values() != (5, 6) {
        return Err(format!("echo after teardown: {echo:?}"));
    }
    conn.close_channel(channel).map_err(err)?;
    println!("probe-gpadl=ok");
    Ok(())
}

const SUBCHANNELS: u32 = 3;
const BURST: u32 = 8;

fn probe_sub(conn: &mut Conn) -> Result<(), String> {
    let (mut primary, instance) = open_probe(conn)?;
    let reply = one(
        conn,
        &mut primary,
        Packet::request(op::SUBCHANNELS, SUBCHANNELS, 0),
    )?;
    if reply.status() != status::OK {
        return Err(format!("sub-channels refused: {reply:?}"));
    }
    conn.wait_for_offers(|c| c.subchannel_offers(instance).len() >= SUBCHANNELS as usize)
        .map_err(err)?;
    let mut channels = vec![primary];
    for offer in conn.subchannel_offers(instance) {
        channels.push(conn.open_channel(offer.child_relid, 4, 4).map_err(err)?);
    }
    for (index, channel) in channels.iter_mut().enumerate() {
        let signals_before = channel.stats.signals;
        let burst: Vec<Packet> = (0..BURST)
            .map(|i| Packet::request(op::ECHO, index as u32, i))
            .collect();
        let replies = exchange(conn, channel, &burst)?;
        for (i, reply) in replies.iter().enumerate() {
            if reply.values() != (index as u32, i as u32) {
                return Err(format!("channel {index}: reply {i} is {reply:?}"));
            }
        }
        println!(
            "probe-sub{index}-relid={} probe-sub{index}-signals={}",
            channel.relid,
            channel.stats.signals - signals_before
        );
    }
    // Sub-channels first, then the primary (as Linux's vmbus_close does).
    let primary = channels.remove(0);
    for channel in channels {
        conn.close_channel(channel).map_err(err)?;
    }
    conn.close_channel(primary).map_err(err)?;
    println!("probe-sub=ok");
    Ok(())
}

fn probe_panic(conn: &mut Conn) -> Result<(), String> {
    let (channel, _) = open_probe(conn)?;
    let relid = channel.relid;
    let mut channel = channel;
    channel
        .write_inband(
            1,
            PacketFlags::empty(),
            &[&Packet::request(op::PANIC, 0, 0).to_bytes()],
        )
        .map_err(err)?;
    channel.flush(conn.hypercalls()).map_err(err)?;
    let rescinded = conn.wait_for_rescind().map_err(err)?;
    if rescinded != relid {
        return Err(format!(
            "relid {rescinded} rescinded, not the probe's {relid}"
        ));
    }
    conn.close_channel(channel).map_err(err)?;
    conn.release_channel(relid).map_err(err)?;
    println!("probe-panic-rescinded={relid}");
    Ok(())
}

/// Fill `channel`'s request ring with storvsc requests the host will answer, signalling after each
/// round, until the ring stays full; never read a completion. Returns the packets written.
fn fill_without_reading(conn: &mut Conn, channel: &mut Channel) -> Result<u64, String> {
    let mut storvsc = guest_drivers::storvsc::Storvsc::new();
    let mut written = 0u64;
    let mut stuck_rounds = 0;
    while stuck_rounds < 20 {
        let mut this_round = 0;
        loop {
            let request = storvsc.begin_init();
            let flags = request.flags();
            match channel.write_inband(written + 1, flags, &[request.payload()]) {
                Ok(()) => {
                    written += 1;
                    this_round += 1;
                }
                Err(vmbus::ring::RingError::Full { .. }) => break,
                Err(e) => return Err(err(e)),
            }
        }
        channel.flush(conn.hypercalls()).map_err(err)?;
        stuck_rounds = if this_round == 0 { stuck_rounds + 1 } else { 0 };
        spin_for_us(2_000);
    }
    Ok(written)
}

fn spin_for_us(us: u64) {
    let hz = crate::scenario::bench::tsc_hz().max(1_000_000);
    let start = crate::scenario::bench::tsc();
    while crate::scenario::bench::tsc().wrapping_sub(start) < hz / 1_000_000 * us {
        core::hint::spin_loop();
    }
}

fn never_reads(conn: &mut Conn) -> Result<(), String> {
    if crate::scenario::bench::tsc_hz() == 0 {
        return Err("never-reads needs bench-tsc".into());
    }
    let relid = conn
        .find_offer(interface::SCSI)
        .ok_or("no SCSI controller offered")?
        .child_relid;
    // A small host→guest ring: it fills after a few dozen completions.
    let mut channel = conn.open_channel(relid, 8, 2).map_err(err)?;
    let written = fill_without_reading(conn, &mut channel)?;
    println!("never-reads-packets={written}");
    // The host measures its device thread's CPU while we wait.
    spin_for_us(2_500_000);
    let hz = crate::scenario::bench::tsc_hz();
    let start = crate::scenario::bench::tsc();
    conn.close_channel(channel).map_err(err)?;
    let close_us = crate::scenario::bench::tsc().wrapping_sub(start) / (hz / 1_000_000).max(1);
    println!("never-reads-close-us={close_us}");
    // Again, and leave it full: the partition goes down with the device blocked on the guest.
    let mut channel = conn.open_channel(relid, 8, 2).map_err(err)?;
    let again = fill_without_reading(conn, &mut channel)?;
    println!("never-reads-again={again}");
    let _still_full = channel;
    Ok(())
}
