//! VMBus scenarios: `vmbus:<steps>` connects (newest version first, falling back as the host refuses),
//! lists the offers, then runs the comma-separated steps in order:
//! - `hostile`: misbehave towards the host (garbage messages, unknown relids, GPADLs beyond RAM,
//!   oversized and flooded posts) and check each gets an error while the connection keeps working;
//! - `ic`: open the heartbeat and shutdown channels and serve them until the host asks us to shut
//!   down, answering each burst of requests with one batch of replies and at most one signal.
//!
//! Results are printed as `key=value` lines the host test reads.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use guest_drivers::hv::status;
use guest_drivers::ic::{IcDriver, IcEvent, IcKind};
use guest_drivers::platform::Platform;
use guest_drivers::vmbus_client::{Channel, VmbusConnection};
use vmbus::client::ClientAction;
use vmbus::gpadl::GpaRange;
use vmbus::packet::PacketFlags;
use vmbus::protocol::CHANNEL_MESSAGE_TYPE;
use vmbus::protocol::{interface, ChannelMessage, OpenChannel};

use super::Outcome;
use crate::platform::Kernel;
use crate::println;

use crate::vmbus_global::VMBUS_VECTOR;

/// Run `name` if it is a VMBus scenario.
pub fn run(name: &str, args: &str) -> Option<Outcome> {
    match name {
        "vmbus" => Some(vmbus(args)),
        _ => None,
    }
}

fn err(e: impl ToString) -> String {
    e.to_string()
}

fn vmbus(steps: &str) -> Outcome {
    crate::vmbus_global::with_connection(|conn| run_steps(conn, steps))?
}

fn run_steps(conn: &mut VmbusConnection<'static, Kernel>, steps: &str) -> Outcome {
    let version = conn.version().ok_or("not connected")?;
    println!("vmbus-version={}.{}", version.major(), version.minor());
    println!("vmbus-offers={}", conn.offers().len());
    for step in steps.split(',').filter(|s| !s.is_empty()) {
        match step {
            "hostile" => hostile(conn)?,
            "ic" => serve_ics(conn)?,
            other => match super::vmbus_model::step(conn, other) {
                Some(result) => result?,
                None => return Err(format!("unknown vmbus step `{other}`")),
            },
        }
    }
    println!(
        "vmbus-posts={} vmbus-messages={} vmbus-eoms={}",
        conn.stats.posts,
        conn.stats.messages,
        conn.eoms()
    );
    Ok(())
}

/// Misbehave in every way the host must survive, checking the answers, then prove the connection
/// still works by creating a valid GPADL.
fn hostile(conn: &mut VmbusConnection<'_, Kernel>) -> Outcome {
    let msg_conn = conn.message_connection_id().ok_or("not connected")?;
    let hc_status = |r: Result<(), guest_drivers::hv::hypercall::HypercallError>| match r {
        Ok(()) => status::SUCCESS,
        Err(guest_drivers::hv::hypercall::HypercallError::Status(s)) => s,
        Err(_) => u16::MAX,
    };
    // 1. Garbage: an unknown message type and random bytes. The hypercall succeeds (the message was
    //    delivered); the VMBus server refuses it.
    let garbage = [0xEFu8, 0xBE, 0xAD, 0xDE, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let s = hc_status(
        conn.hypercalls()
            .post_message(msg_conn, CHANNEL_MESSAGE_TYPE, &garbage),
    );
    expect("garbage message", s, status::SUCCESS)?;
    let s = hc_status(
        conn.hypercalls()
            .post_message(msg_conn, CHANNEL_MESSAGE_TYPE, &[1, 2, 3]),
    );
    expect("truncated message", s, status::SUCCESS)?;
    // 2. OPENCHANNEL for a relid the host never offered.
    let open = OpenChannel::new(999, 999, 0x1234, 0, 1, [0; 120]);
    let s = hc_status(conn.hypercalls().post_message(
        msg_conn,
        CHANNEL_MESSAGE_TYPE,
        open.to_message().as_bytes(),
    ));
    expect("OPENCHANNEL of an unknown relid", s, status::SUCCESS)?;
    // 3. A GPADL naming pages beyond guest RAM, for a real channel: the host must refuse it.
    let relid = conn
        .offers()
        .first()
        .map(|o| o.child_relid)
        .ok_or("no offers")?;
    let far: Vec<u64> = (0..40).map(|i| 0x40_0000_0000 + i).collect();
    let gpadl = conn
        .client_mut()
        .create_gpadl(relid, GpaRange::whole_pages(&far).map_err(err)?)
        .map_err(err)?;
    match conn
        .wait_for(|a| matches!(a, ClientAction::GpadlCreated { gpadl: g, .. } if *g == gpadl))
        .map_err(err)?
    {
        ClientAction::GpadlCreated { status: 0, .. } => {
            return Err("host accepted a GPADL beyond RAM".into())
        }
        ClientAction::GpadlCreated { status, .. } => println!("hostile-gpadl-status={status}"),
        _ => return Err("unexpected action".into()),
    }
    // 4. Oversized post (241 bytes) and a post to a connection id nobody serves.
    let big = [0u8; 241];
    let s = hc_status(
        conn.hypercalls()
            .post_message(msg_conn, CHANNEL_MESSAGE_TYPE, &big[..240]),
    );
    expect("240-byte post", s, status::SUCCESS)?;
    let input = {
        let mut bytes = vec![0u8; 16 + 241];
        bytes[0..4].copy_from_slice(&msg_conn.to_le_bytes());
        bytes[8..12].copy_from_slice(&CHANNEL_MESSAGE_TYPE.to_le_bytes());
        bytes[12..16].copy_from_slice(&241u32.to_le_bytes());
        conn.hypercalls().stage_input(&bytes)
    };
    expect(
        "241-byte post",
        conn.hypercalls().raw(0x5C, input, 0),
        status::INVALID_PARAMETER,
    )?;
    let s = hc_status(
        conn.hypercalls()
            .post_message(0x7777, CHANNEL_MESSAGE_TYPE, &garbage),
    );
    expect(
        "post to an unknown connection",
        s,
        status::INVALID_CONNECTION_ID,
    )?;
    // 5. A flood of garbage posts: each must be answered, none may wedge the host.
    for i in 0..200u32 {
        let mut flood = garbage;
        flood[8..12].copy_from_slice(&i.to_le_bytes());
        let s = hc_status(
            conn.hypercalls()
                .post_message(msg_conn, CHANNEL_MESSAGE_TYPE, &flood),
        );
        if s != status::SUCCESS && s != status::INSUFFICIENT_BUFFERS {
            return Err(format!("flood post {i}: status {s:#x}"));
        }
    }
    conn.poll_messages().map_err(err)?;
    // The connection still works: a valid GPADL on the same channel is created.
    let pages = Kernel.alloc_dma(2).ok_or("no memory")?;
    let pfns: Vec<u64> = pages.pfns().collect();
    let gpadl = conn
        .client_mut()
        .create_gpadl(relid, GpaRange::whole_pages(&pfns).map_err(err)?)
        .map_err(err)?;
    match conn
        .wait_for(|a| matches!(a, ClientAction::GpadlCreated { gpadl: g, .. } if *g == gpadl))
        .map_err(err)?
    {
        ClientAction::GpadlCreated { status: 0, .. } => {}
        ClientAction::GpadlCreated { status, .. } => {
            return Err(format!("valid GPADL refused: {status:#x}"))
        }
        _ => return Err("unexpected action".into()),
    }
    conn.client_mut().teardown_gpadl(gpadl).map_err(err)?;
    conn.wait_for(|a| matches!(a, ClientAction::GpadlTornDown { gpadl: g, .. } if *g == gpadl))
        .map_err(err)?;
    Kernel.free_dma(pages);
    println!("hostile=survived");
    Ok(())
}

fn expect(what: &str, got: u16, want: u16) -> Outcome {
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{what}: hypercall status {got:#x}, expected {want:#x}"
        ))
    }
}

/// Counters of the IC service loop.
#[derive(Default)]
pub(super) struct IcStats {
    pub(super) heartbeats: u64,
    batches: u64,
    wakeups: u64,
}

/// Serve the heartbeat and shutdown ICs until the host requests a shutdown.
fn serve_ics(conn: &mut VmbusConnection<'_, Kernel>) -> Outcome {
    let heartbeat = conn
        .find_offer(interface::HEARTBEAT)
        .ok_or("no heartbeat offer")?;
    let shutdown = conn
        .find_offer(interface::SHUTDOWN)
        .ok_or("no shutdown offer")?;
    let mut channels = [
        (
            conn.open_channel(heartbeat.child_relid, 8, 8)
                .map_err(err)?,
            IcDriver::new(IcKind::Heartbeat),
        ),
        (
            conn.open_channel(shutdown.child_relid, 4, 4).map_err(err)?,
            IcDriver::new(IcKind::Shutdown),
        ),
    ];
    println!("ic-open=2");
    let interrupts_before = Kernel.interrupt_count(VMBUS_VECTOR);
    let mut stats = IcStats::default();
    let mut buf = vec![0u8; 8192];
    let mut shutdown_requested = false;
    while !shutdown_requested {
        let seen = Kernel.interrupt_total();
        let mut progressed = false;
        for (channel, driver) in channels.iter_mut() {
            // Only a host notification starts a batch: the host notifies after writing a whole burst,
            // so a batch is never a partial burst and each burst costs exactly one reply signal.
            if !channel.take_event(conn.synic()) {
                continue;
            }
            let (served, shut) = serve_batch(channel, driver, &mut buf, &mut stats)?;
            progressed |= served > 0;
            if served > 0 {
                channel.flush(conn.hypercalls()).map_err(err)?;
            }
            shutdown_requested |= shut;
        }
        conn.poll_messages().map_err(err)?;
        if !progressed && !shutdown_requested {
            stats.wakeups += 1;
            Kernel.wait_for_interrupt(seen);
        }
    }
    let signals: u64 = channels.iter().map(|(c, _)| c.stats.signals).sum();
    // The heartbeat channel is done: close it (the shutdown channel stays open until we power off,
    // so the host surely reads our acknowledgement).
    let [(heartbeat_channel, _), _] = channels;
    conn.close_channel(heartbeat_channel).map_err(err)?;
    println!("ic-closed=1");
    println!(
        "ic-heartbeats={} ic-batches={} ic-signals={} ic-interrupts={} ic-waits={}",
        stats.heartbeats,
        stats.batches,
        signals,
        Kernel.interrupt_count(VMBUS_VECTOR) - interrupts_before,
        stats.wakeups
    );
    Ok(())
}

/// Drain one channel completely (interrupts masked while draining, unmasked and re-checked before
/// replying), then queue every reply. Returns the requests served and whether one was a shutdown.
pub(super) fn serve_batch(
    channel: &mut Channel,
    driver: &mut IcDriver,
    buf: &mut [u8],
    stats: &mut IcStats,
) -> Result<(usize, bool), String> {
    let mut replies: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut shutdown = false;
    let mut failure = None;
    loop {
        let drained = channel
            .drain(buf, 256, |info, bytes| {
                let payload = &bytes[info.data_offset().min(bytes.len())..];
                let mut reply = vec![0u8; payload.len().max(64)];
                match driver.handle(payload, &mut reply) {
                    Ok((len, event)) => {
                        reply.truncate(len);
                        replies.push((info.desc.trans_id, reply));
                        match event {
                            IcEvent::Heartbeat(_) => stats.heartbeats += 1,
                            IcEvent::Shutdown { .. } => shutdown = true,
                            IcEvent::Negotiated(_) => {}
                        }
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
    if replies.is_empty() {
        return Ok((0, false));
    }
    stats.batches += 1;
    for (trans_id, reply) in &replies {
        channel
            .write_inband(*trans_id, PacketFlags::empty(), &[reply])
            .map_err(err)?;
    }
    Ok((replies.len(), shutdown))
}
