//! A hostile guest on an integration-component channel: the heartbeat or shutdown `IcVsp`'s real
//! serve loop, running on its device thread in a real `VmbusService`, opened by the real client
//! (see `host_vsp_fuzz::VmbusGuest`), fed guest→host packets the input chooses.
//!
//! Input: a setup byte (bit 0: shutdown IC instead of heartbeat; bits 1–3: heartbeats planned;
//! bits 4–5: burst − 1; bit 6: before the open, scribble `[offset, u32]` on the host→guest ring's
//! control page), then steps `[op, ...]`: answer the host's next request correctly and then flip
//! some of its bytes; a negotiate response with garbage version counts and versions; a raw packet
//! of any type and bytes; a scribble on either ring's control page; a host-side
//! shutdown request; or a short wait for the device. After the steps the harness closes the
//! channel: the serve loop must return within the service's stop timeout (5 s; the service counts
//! devices that miss it), and no device thread
//! may have panicked (the service catches device panics, so the harness checks its counter).
#![no_main]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use host_vsp::synthetic::ic::IcVsp;
use host_vsp_fuzz::{GuestRing, Input, VmbusGuest};
use ic_protocol::{
    flags, negotiate, parse, IcMessageType, FRAMEWORK_VERSIONS, HEADER_SIZE, HEARTBEAT_VERSIONS,
    SHUTDOWN_VERSIONS,
};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmbus::packet::{PacketFlags, PacketType};
use vmbus::protocol::Guid;

/// The correct answer to one host request, as a Linux guest would send it.
fn answer(request: &[u8], shutdown_ic: bool) -> Vec<u8> {
    let Ok((header, body)) = parse(request) else {
        return request.to_vec();
    };
    let mut reply = request.to_vec();
    if header.message_type.get() == IcMessageType::NEGOTIATE.0 {
        let ours = if shutdown_ic {
            SHUTDOWN_VERSIONS
        } else {
            HEARTBEAT_VERSIONS
        };
        let mut out = vec![0u8; 512];
        if let Ok((n, _)) = negotiate::answer(request, FRAMEWORK_VERSIONS, ours, &mut out) {
            out.truncate(n);
            return out;
        }
    } else if header.message_type.get() == IcMessageType::HEARTBEAT.0 && body.len() >= 8 {
        let seq = u64::from_le_bytes(body[..8].try_into().unwrap()).wrapping_add(1);
        reply[HEADER_SIZE..HEADER_SIZE + 8].copy_from_slice(&seq.to_le_bytes());
    }
    reply[25] = flags::TRANSACTION | flags::RESPONSE;
    reply
}

/// The next packet the host wrote, waiting a little for it: `(trans_id, payload)`.
fn next_request(ring: &mut GuestRing) -> Option<(u64, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_millis(5);
    let mut buf = vec![0u8; 4096];
    let from_host = ring.from_host.as_mut()?;
    loop {
        match from_host.read_packet(&mut buf) {
            Ok(Some(read)) => {
                let payload = buf[read.info.data_offset()..read.info.len].to_vec();
                return Some((read.info.desc.trans_id, payload));
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(100)),
            _ => return None,
        }
    }
}

fn send(guest: &VmbusGuest, ring: &mut GuestRing, kind: PacketType, trans_id: u64, bytes: &[u8]) {
    let flags = PacketFlags::empty();
    let _ = ring
        .to_host
        .write_packet(kind, flags, trans_id, &[], &[bytes]);
    guest.synic.signal_host(ring.connection_id);
}

fn negotiate_garbage(input: &mut Input<'_>) -> Vec<u8> {
    let mut m = vec![0u8; HEADER_SIZE];
    m[0] = 2;
    let body_len = usize::from(input.u8() % 64);
    m[20..22].copy_from_slice(&(body_len as u16).to_le_bytes());
    m[25] = flags::TRANSACTION | flags::RESPONSE | (input.u8() & 0xF8);
    m.extend_from_slice(&[input.u8() % 40, 0, input.u8() % 40, 0, 0, 0, 0, 0]);
    m.extend_from_slice(input.bytes(body_len.saturating_sub(8)));
    m
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let setup = input.u8();
    let shutdown_ic = setup & 1 != 0;
    let instance = Guid::new(0x1C, 1, 1, [0; 8]);
    let vsp = Arc::new(if shutdown_ic {
        IcVsp::shutdown(instance)
    } else {
        IcVsp::heartbeat(
            instance,
            u64::from((setup >> 1) & 7),
            u64::from(setup >> 4 & 3) + 1,
        )
    });
    let control = vsp.control();
    let mut guest = VmbusGuest::connect(vec![vsp]);
    let scribble = (setup & 0x40 != 0).then(|| (u64::from(input.u8() % 17) * 4, input.u32()));
    // A scribble that breaks the ring's write index makes the open fail: nothing to serve.
    let Some(mut ring) = guest.open_first(scribble) else {
        guest.service.shutdown();
        return;
    };
    let mut next_id = 1u64;
    while !input.is_empty() {
        match input.u8() % 8 {
            0..=2 => {
                let Some((trans_id, request)) = next_request(&mut ring) else {
                    continue;
                };
                let mut reply = answer(&request, shutdown_ic);
                for _ in 0..input.u8() % 4 {
                    let (at, bits) = (usize::from(input.u8()), input.u8());
                    let len = reply.len().max(1);
                    if let Some(b) = reply.get_mut(at % len) {
                        *b ^= bits;
                    }
                }
                send(&guest, &mut ring, PacketType::INBAND, trans_id, &reply);
            }
            3 => {
                let m = negotiate_garbage(&mut input);
                send(&guest, &mut ring, PacketType::INBAND, next_id, &m);
                next_id += 1;
            }
            4 => {
                let kind = match input.u8() % 4 {
                    0 | 1 => PacketType::INBAND,
                    2 => PacketType::COMPLETION,
                    _ => PacketType(input.u16()),
                };
                let n = usize::from(input.u8());
                let bytes = input.bytes(n).to_vec();
                send(&guest, &mut ring, kind, next_id, &bytes);
                next_id += 1;
            }
            5 => {
                // The guest scribbles on a ring control page (indices, mask, pending size).
                let selector = input.u8();
                let pfn = if selector & 0x80 == 0 {
                    ring.to_host_pfn
                } else {
                    ring.from_host_pfn
                };
                let offset = u64::from(selector % 17) * 4;
                let value = input.u32();
                let gpa = GuestAddress(pfn * 4096 + offset);
                guest.memory.write_obj(value, gpa).unwrap();
                guest.synic.signal_host(ring.connection_id);
            }
            6 => control.request_shutdown(),
            _ => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    guest.close(ring.relid);
    let stats = &guest.service.stats;
    assert_eq!(
        stats.device_panics.load(Ordering::Relaxed),
        0,
        "the IC VSP panicked"
    );
    assert_eq!(
        stats.stuck_devices.load(Ordering::Relaxed),
        0,
        "the serve loop did not stop"
    );
    assert!(!control.snapshot().serving, "still serving after close");
    guest.service.shutdown();
});
