//! A property test: random and half-structured posts interleaved with a valid session (an open
//! channel echoing through its rings). The service never panics, the open channel keeps working,
//! and the service's bookkeeping stays consistent with its server's after every post.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use vmbus::gpadl::{GpaRange, GpadlMessages};
use vmbus::mem::PAGE_SIZE;
use vmbus::protocol::{
    parse_message, ChannelMessage, CloseChannel, GpadlTeardown, Message, MessageBuf, ModifyChannel,
    OpenChannel, RelidReleased, CHANNEL_MESSAGE_TYPE,
};

use super::super::VmbusService;
use super::echo_device::{EchoDevice, ECHO, OK};
use super::guest::Guest;

/// What the service knows must agree with what its server knows: every channel has a slot and
/// back, a device runs exactly on the open channels, sub-channels run only under an open primary,
/// and every GPADL mapped and not revoked is in exactly one device's table.
fn check_consistency(service: &VmbusService) -> Result<(), String> {
    let inner = service.lock();
    inner.server.check_invariants()?;
    if let Some((relid, _)) = inner
        .server
        .channels()
        .find(|(relid, _)| !inner.slots.contains_key(relid))
    {
        return Err(format!("server channel {relid} has no slot"));
    }
    let mut tables = Vec::new();
    for (&relid, slot) in &inner.slots {
        let info = inner
            .server
            .channel(relid)
            .ok_or(format!("slot {relid} has no server channel"))?;
        match (slot.running.is_some(), info.open.is_some()) {
            (true, false) => return Err(format!("a device serves closed channel {relid}")),
            (false, true) => return Err(format!("open channel {relid} has no device")),
            _ => {}
        }
        if { info.offer.sub_channel_index } != slot.subchannel_index {
            return Err(format!("channel {relid} was offered with another index"));
        }
        if slot.subchannel_index != 0 && slot.running.is_some() {
            let primary_running = inner
                .slots
                .get(&slot.primary)
                .is_some_and(|p| p.running.is_some());
            if !primary_running {
                return Err(format!(
                    "sub-channel {relid} served without its primary open"
                ));
            }
        }
        if !tables.iter().any(|t| Arc::ptr_eq(t, &slot.gpadls)) {
            tables.push(slot.gpadls.clone());
        }
    }
    let mapped = service.stats.gpadls_mapped.load(Ordering::Relaxed);
    let revoked = service.stats.gpadls_revoked.load(Ordering::Relaxed);
    let held: usize = tables.iter().map(|t| t.len()).sum();
    if mapped.checked_sub(revoked) != Some(held as u64) {
        return Err(format!(
            "{mapped} GPADLs mapped, {revoked} revoked, {held} held"
        ));
    }
    Ok(())
}

/// A guest→host channel message built from a few numbers, biased towards relids, GPADL handles,
/// splits and pages that exist, so that the service's deeper paths are reached.
fn hostile_message(kind: usize, a: u32, b: u32, c: u32, units: &[u64], cut: usize) -> Vec<u8> {
    const TYPES: [u32; 10] = [3, 5, 7, 8, 9, 11, 13, 14, 16, 22];
    let msgtype = TYPES[kind % TYPES.len()];
    let mut bytes = msgtype.to_le_bytes().to_vec();
    bytes.extend_from_slice(&0u32.to_le_bytes());
    let mut push = |v: u32| bytes.extend_from_slice(&v.to_le_bytes());
    match msgtype {
        // GPADL_HEADER: relid, handle, range_buflen and rangecount (right more often than not).
        8 => {
            push(a);
            push(b);
            let buflen = if !c.is_multiple_of(4) {
                (units.len() * 8) as u32
            } else {
                c & 0xffff
            };
            push(buflen | (((c >> 16) % 3) << 16));
        }
        // GPADL_BODY: msgnumber, handle.
        9 => {
            push(c % 4);
            push(b);
        }
        // OPENCHANNEL: relid, openid, ring GPADL, VP, split, user data.
        5 => {
            for v in [a, a, b, c % 5, c % 17] {
                push(v);
            }
            bytes.resize(bytes.len() + 120, 0);
        }
        _ => {
            for v in [a, b, c % 64, c] {
                push(v);
            }
        }
    }
    for u in units {
        bytes.extend_from_slice(&u.to_le_bytes());
    }
    bytes.truncate(bytes.len().saturating_sub(cut));
    bytes.truncate(240);
    bytes
}

fn id() -> impl Strategy<Value = u32> {
    prop_oneof![
        0u32..5,
        Just(0xE1E10),
        Just(0xE1E11),
        Just(0xE1E12),
        any::<u32>()
    ]
}

/// Range head and PFNs: pages 0..16 are guest RAM no ring of the session uses.
fn units() -> impl Strategy<Value = Vec<u64>> {
    let head = prop_oneof![
        Just(4 * 4096u64),
        Just(2 * 4096),
        Just(100 << 32 | 5000),
        any::<u64>()
    ];
    let pfns = vec(prop_oneof![8 => 0u64..16, 1 => any::<u64>()], 0..6);
    (head, pfns).prop_map(|(head, pfns)| [vec![head], pfns].concat())
}

/// Well-formed messages about the session's relids and a few GPADL handles, for a random guest to
/// build GPADLs of its own (pages 0..8) and open, close and tear down on them.
fn plausible() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let relid = prop_oneof![Just(1u32), Just(2), Just(3)];
    let handle = prop_oneof![Just(1u32), Just(2), Just(3), Just(0xE1E10), Just(0xE1E11)];
    let bytes = |m: MessageBuf| m.as_bytes().to_vec();
    prop_oneof![
        (
            relid.clone(),
            handle.clone(),
            vec(0u64..8, 1..8),
            any::<bool>()
        )
            .prop_map(move |(relid, handle, pfns, whole)| {
                let range = GpaRange::whole_pages(&pfns).unwrap();
                let messages = GpadlMessages::new(relid, handle, range).unwrap().map(bytes);
                // Sometimes only the header: the GPADL stays pending.
                messages.take(if whole { usize::MAX } else { 1 }).collect()
            }),
        // A ring GPADL and an open on it, back to back.
        (relid.clone(), handle.clone(), vec(0u64..8, 4..8), 2u32..4).prop_map(
            move |(r, h, pfns, split)| {
                let range = GpaRange::whole_pages(&pfns).unwrap();
                let mut messages: Vec<_> = GpadlMessages::new(r, h, range)
                    .unwrap()
                    .map(bytes)
                    .collect();
                messages.push(bytes(
                    OpenChannel::new(r, r, h, 0, split, [0; 120]).to_message(),
                ));
                messages
            }
        ),
        (relid.clone(), handle.clone(), 0u32..5, 0u32..9).prop_map(move |(r, h, vp, split)| {
            vec![bytes(
                OpenChannel::new(r, r, h, vp, split, [7; 120]).to_message(),
            )]
        }),
        relid
            .clone()
            .prop_map(move |r| vec![bytes(CloseChannel::new(r).to_message())]),
        (relid.clone(), handle)
            .prop_map(move |(r, h)| { vec![bytes(GpadlTeardown::new(r, h).to_message())] }),
        (relid.clone(), 0u32..6)
            .prop_map(move |(r, vp)| { vec![bytes(ModifyChannel::new(r, vp).to_message())] }),
        relid.prop_map(move |r| vec![bytes(RelidReleased::new(r).to_message())]),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    /// Messages posted one after the other.
    Post {
        connection_id: u32,
        message_type: u32,
        messages: Vec<Vec<u8>>,
    },
    Echo(Vec<u8>),
    /// The guest writes `value` at `offset` (a ring's write or read index) of page `pfn` (0..8).
    Scribble {
        pfn: u64,
        offset: u64,
        value: u32,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let structured = (0usize..10, id(), id(), any::<u32>(), units(), 0usize..4)
        .prop_map(|(kind, a, b, c, units, cut)| hostile_message(kind, a, b, c, &units, cut));
    let messages = prop_oneof![
        3 => structured.prop_map(|m| vec![m]),
        3 => plausible(),
        1 => vec(any::<u8>(), 0..250).prop_map(|m| vec![m]),
    ];
    let connection_id = prop_oneof![8 => Just(4u32), 1 => Just(1), 1 => any::<u32>()];
    let message_type = prop_oneof![12 => Just(CHANNEL_MESSAGE_TYPE), 1 => any::<u32>()];
    prop_oneof![
        1 => vec(any::<u8>(), 0..64).prop_map(Step::Echo),
        1 => (0u64..8, prop_oneof![Just(0u64), Just(4)], prop_oneof![Just(5u32), any::<u32>()])
            .prop_map(|(pfn, offset, value)| Step::Scribble { pfn, offset, value }),
        4 => (connection_id, message_type, messages).prop_map(
            |(connection_id, message_type, messages)| Step::Post {
                connection_id,
                message_type,
                messages,
            }
        ),
    ]
}

/// Posts that legitimately end the session's channel (the guest may close its own channel).
fn ends_the_session(bytes: &[u8], victim: u32) -> bool {
    match parse_message(bytes) {
        Ok(Message::Unload) => true,
        Ok(Message::CloseChannel(m)) => m.child_relid == victim,
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_posts_beside_a_valid_session_keep_the_service_consistent(steps in vec(step(), 1..30)) {
        let victim_device = EchoDevice::new("victim", 1);
        let other = EchoDevice::new("other", 2);
        let mut g = Guest::start(vec![victim_device.dyn_clone(), other.dyn_clone()]);
        let victim = g.connect()[0].child_relid;
        let mut ring = g.open(victim, 0, &[]);
        let data = g.alloc_pages(2);
        let (_, status) = g.create_gpadl(victim, GpaRange::whole_pages(&data).unwrap());
        prop_assert_eq!(status, 0);
        prop_assert_eq!(check_consistency(&g.service), Ok(()));
        for step in steps {
            match step {
                Step::Post { connection_id, message_type, messages } => {
                    for bytes in messages {
                        if ends_the_session(&bytes, victim) {
                            continue;
                        }
                        g.post_raw(connection_id, message_type, &bytes);
                        prop_assert_eq!(check_consistency(&g.service), Ok(()));
                        prop_assert!(g.service.is_serving(victim));
                    }
                }
                Step::Scribble { pfn, offset, value } => {
                    g.write_memory(pfn * PAGE_SIZE as u64 + offset, &value.to_le_bytes());
                }
                Step::Echo(body) => {
                    let reply = g.request(&mut ring, ECHO, &[&body]);
                    prop_assert_eq!(reply.status, OK);
                    prop_assert_eq!(reply.data, body);
                }
            }
        }
        let reply = g.request(&mut ring, ECHO, &[b"still here"]);
        prop_assert_eq!(reply.data, b"still here");
        prop_assert_eq!(victim_device.seen().len(), 1);
        // Random posts reach no client: nothing may be waiting for it now.
        g.lenient = true;
        g.close(victim);
        prop_assert!(!g.service.is_serving(victim));
        prop_assert_eq!(check_consistency(&g.service), Ok(()));
        g.service.shutdown();
        prop_assert_eq!(check_consistency_after_shutdown(&g.service), Ok(()));
    }
}

/// After shutdown no device runs, whatever the server thinks is open.
fn check_consistency_after_shutdown(service: &VmbusService) -> Result<(), String> {
    let inner = service.lock();
    match inner.slots.iter().find(|(_, s)| s.running.is_some()) {
        Some((relid, _)) => Err(format!("device of {relid} still runs after shutdown")),
        None => Ok(()),
    }
}
