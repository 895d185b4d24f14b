//! GPADLs other than the ring: mapped for the device, read and written from its thread, refused
//! outside their range, revoked on teardown — after any write in progress has finished.

use std::sync::atomic::Ordering;
use std::time::Duration;

use vmbus::client::ClientAction;
use vmbus::gpadl::GpaRange;
use vmbus::mem::PAGE_SIZE;

use super::super::GpadlAccessError;
use super::echo_device::{
    EchoDevice, ACCESS_FAILED, ECHO, HAMMER, LOOKUP, NO_GPADL, OK, READ, SLICES, WRITE,
};
use super::guest::{eventually, Guest, TIMEOUT};

/// Where the data GPADL starts in its first page, and its length (three pages' worth).
const BYTE_OFFSET: u32 = 100;
const BYTE_COUNT: u32 = 10_000;
const SENTINEL: u8 = 0xEE;

fn pattern(i: u64) -> u8 {
    (i * 7 + i / 251 + 3) as u8
}

/// Arguments of READ, SLICES (`len`) and WRITE (`len` unused; append the bytes instead).
fn access(handle: u32, range: u32, offset: u64, len: u32) -> Vec<u8> {
    let mut args = handle.to_le_bytes().to_vec();
    args.extend_from_slice(&range.to_le_bytes());
    args.extend_from_slice(&offset.to_le_bytes());
    args.extend_from_slice(&len.to_le_bytes());
    args
}

fn write_args(handle: u32, offset: u64, bytes: &[u8]) -> Vec<u8> {
    let mut args = access(handle, 0, offset, 0);
    args.truncate(16);
    args.extend_from_slice(bytes);
    args
}

/// A GPADL of three scattered pages (out of order) starting [`BYTE_OFFSET`] into the first, the
/// pages filled with [`SENTINEL`] and the GPADL's bytes with [`pattern`]. Returns the handle and
/// the pages.
struct DataGpadl {
    handle: u32,
    pfns: Vec<u64>,
}

impl DataGpadl {
    fn create(g: &mut Guest, relid: u32) -> Self {
        let pages = g.alloc_pages(8);
        let pfns = vec![pages[5], pages[1], pages[7]];
        for &pfn in &pfns {
            g.write_memory(pfn * PAGE_SIZE as u64, &[SENTINEL; PAGE_SIZE]);
        }
        let data = Self { handle: 0, pfns };
        for i in 0..u64::from(BYTE_COUNT) {
            g.write_memory(data.gpa(i), &[pattern(i)]);
        }
        let range = GpaRange {
            byte_count: BYTE_COUNT,
            byte_offset: BYTE_OFFSET,
            pfns: &data.pfns,
        };
        let (handle, status) = g.create_gpadl(relid, range);
        assert_eq!(status, 0);
        Self { handle, ..data }
    }

    /// The guest physical address of byte `i` of the GPADL.
    fn gpa(&self, i: u64) -> u64 {
        let at = u64::from(BYTE_OFFSET) + i;
        self.pfns[(at / PAGE_SIZE as u64) as usize] * PAGE_SIZE as u64 + at % PAGE_SIZE as u64
    }

    fn guest_byte(&self, g: &Guest, i: u64) -> u8 {
        g.read_memory(self.gpa(i), 1)[0]
    }
}

fn u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn a_gpadl_the_guest_created_is_the_devices_with_its_contents_and_bounds() {
    let dev = EchoDevice::new("echo", 1);
    let mut g = Guest::start(vec![dev.dyn_clone()]);
    let relid = g.connect()[0].child_relid;
    // Created before the open: the device finds it all the same.
    let data = DataGpadl::create(&mut g, relid);
    let handle = data.handle;
    let mut ring = g.open(relid, 0, &[]);
    assert_eq!(g.service.stats.gpadls_mapped.load(Ordering::Relaxed), 2);
    assert_eq!(
        g.request(&mut ring, LOOKUP, &[&handle.to_le_bytes()])
            .status,
        OK
    );
    let ring_gpadl = ring.gpadl.to_le_bytes();
    assert_eq!(g.request(&mut ring, LOOKUP, &[&ring_gpadl]).status, OK);

    // Reads from the device thread see the guest's bytes, page boundaries included.
    let whole = g.request(&mut ring, READ, &[&access(handle, 0, 0, BYTE_COUNT)]);
    assert_eq!(whole.status, OK);
    let expected: Vec<u8> = (0..u64::from(BYTE_COUNT)).map(pattern).collect();
    assert_eq!(whole.data, expected);
    let across = g.request(&mut ring, READ, &[&access(handle, 0, 3990, 300)]);
    assert_eq!(across.data, expected[3990..4290]);
    let empty_at_end = g.request(&mut ring, READ, &[&access(handle, 0, 10_000, 0)]);
    assert_eq!((empty_at_end.status, empty_at_end.data.len()), (OK, 0));

    // The zero-copy path hands out one slice per page piece.
    let pieces = g.request(&mut ring, SLICES, &[&access(handle, 0, 3990, 300)]);
    assert_eq!(pieces.data, u32s(&[6, 294]));
    let pieces = g.request(&mut ring, SLICES, &[&access(handle, 0, 0, BYTE_COUNT)]);
    assert_eq!(pieces.data, u32s(&[3996, 4096, 1908]));

    let mapped = dev.kept(handle).unwrap();
    assert_eq!(
        (mapped.handle(), mapped.relid(), mapped.range_count()),
        (handle, relid, 1)
    );
    assert_eq!((mapped.range_len(0), mapped.range_len(1)), (10_000, 0));
    assert!(!mapped.is_revoked());
    let mut buf = [0u8; 10];
    mapped.read(0, 5, &mut buf).unwrap();
    assert_eq!(buf[..], expected[5..15]);

    // Device writes land where the GPADL says, and nowhere else.
    let reply = g.request(&mut ring, WRITE, &[&write_args(handle, 4090, &[0x5A; 20])]);
    assert_eq!(reply.status, OK);
    for i in 4090..4110 {
        assert_eq!(data.guest_byte(&g, i), 0x5A, "byte {i}");
    }
    assert_eq!(data.guest_byte(&g, 4089), pattern(4089));
    assert_eq!(data.guest_byte(&g, 4110), pattern(4110));
    let first_page = data.pfns[0] * PAGE_SIZE as u64;
    assert!(g
        .read_memory(first_page, 100)
        .iter()
        .all(|&b| b == SENTINEL));
    let last_page = data.pfns[2] * PAGE_SIZE as u64;
    assert!(g
        .read_memory(last_page + 1908, PAGE_SIZE - 1908)
        .iter()
        .all(|&b| b == SENTINEL));

    // Outside the range: refused, nothing touched.
    let out_of_range = |range, offset, len| GpadlAccessError::OutOfRange {
        gpadl: handle,
        range,
        offset,
        len,
        size: if range == 0 { 10_000 } else { 0 },
    };
    for (range, offset, len) in [(0, 9990, 11), (1, 0, 1), (0, u64::MAX, 2), (0, 10_001, 0)] {
        let reply = g.request(&mut ring, READ, &[&access(handle, range, offset, len)]);
        assert_eq!(reply.status, ACCESS_FAILED);
        let error = out_of_range(range as usize, offset, u64::from(len));
        assert_eq!(dev.gpadl_errors().last(), Some(&error));
    }
    let reply = g.request(&mut ring, WRITE, &[&write_args(handle, 9999, &[1, 2])]);
    assert_eq!(reply.status, ACCESS_FAILED);
    assert_eq!(dev.gpadl_errors().last(), Some(&out_of_range(0, 9999, 2)));
    assert_eq!(data.guest_byte(&g, 9999), pattern(9999));
    assert!(g
        .read_memory(last_page + 1908, PAGE_SIZE - 1908)
        .iter()
        .all(|&b| b == SENTINEL));
    assert_eq!(
        mapped.write(0, 10_000, &[1]),
        Err(out_of_range(0, 10_000, 1))
    );

    // A handle the guest never created.
    assert_eq!(
        g.request(&mut ring, LOOKUP, &[&0xdeadu32.to_le_bytes()])
            .status,
        NO_GPADL
    );
    let reply = g.request(&mut ring, READ, &[&access(0xdead, 0, 0, 1)]);
    assert_eq!(reply.status, NO_GPADL);
}

#[test]
fn teardown_revokes_the_gpadl_even_for_a_device_that_kept_it() {
    let dev = EchoDevice::new("echo", 1);
    let mut g = Guest::start(vec![dev.dyn_clone()]);
    let relid = g.connect()[0].child_relid;
    let mut ring = g.open(relid, 0, &[]);
    let data = DataGpadl::create(&mut g, relid);
    let handle = data.handle;
    assert_eq!(
        g.request(&mut ring, READ, &[&access(handle, 0, 0, 8)])
            .status,
        OK
    );
    let kept = dev.kept(handle).unwrap();

    g.client.teardown_gpadl(handle).unwrap();
    g.pump();
    assert_eq!(
        g.take_events(),
        [ClientAction::GpadlTornDown {
            relid,
            gpadl: handle
        }]
    );
    assert!(kept.is_revoked());
    assert_eq!(g.service.stats.gpadls_revoked.load(Ordering::Relaxed), 1);

    let revoked = GpadlAccessError::Revoked(handle);
    for (command, args) in [
        (READ, access(handle, 0, 0, 8)),
        (SLICES, access(handle, 0, 0, 8)),
        (WRITE, write_args(handle, 0, &[0; 8])),
    ] {
        let reply = g.request(&mut ring, command, &[&args]);
        assert_eq!(reply.status, ACCESS_FAILED, "command {command}");
        assert_eq!(dev.gpadl_errors().last(), Some(&revoked));
    }
    // Gone from the context too, and revoked for every holder, in range or not.
    assert_eq!(
        g.request(&mut ring, LOOKUP, &[&handle.to_le_bytes()])
            .status,
        NO_GPADL
    );
    assert_eq!(kept.read(0, 0, &mut [0; 4]), Err(revoked));
    assert_eq!(kept.write(0, 0, &[1; 4]), Err(revoked));
    assert_eq!(kept.read(7, 1 << 40, &mut [0; 4]), Err(revoked));
    assert_eq!(data.guest_byte(&g, 0), pattern(0));

    // The channel itself is untouched.
    assert_eq!(g.request(&mut ring, ECHO, &[b"ok"]).data, b"ok");
    assert!(g.service.is_serving(relid));
}

#[test]
fn teardown_waits_for_a_write_in_progress_and_no_write_lands_after_it() {
    let dev = EchoDevice::new("echo", 1);
    let mut g = Guest::start(vec![dev.dyn_clone()]);
    let relid = g.connect()[0].child_relid;
    let mut ring = g.open(relid, 0, &[]);
    // 128 KiB a write, so that teardown very likely finds one in progress.
    let pfns = g.alloc_pages(32);
    let (handle, status) = g.create_gpadl(relid, GpaRange::whole_pages(&pfns).unwrap());
    assert_eq!(status, 0);
    let gpa = pfns[0] * PAGE_SIZE as u64;
    let len = pfns.len() * PAGE_SIZE;

    let trans_id = g.send(&mut ring, HAMMER, &[&handle.to_le_bytes()]);
    eventually("the device to hammer the GPADL", || {
        dev.hammer_writes.load(Ordering::Relaxed) >= 3
    });
    // The teardown post returns once GPADL_TORNDOWN is on its way to the guest.
    g.client.teardown_gpadl(handle).unwrap();
    g.pump();
    assert!(g.events.contains(&ClientAction::GpadlTornDown {
        relid,
        gpadl: handle
    }));
    let after = g.read_memory(gpa, len);
    // The last write finished before the guest got its pages back: all of it, one value.
    assert_ne!(after[0], 0);
    assert!(after.iter().all(|&b| b == after[0]), "a torn write");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        g.read_memory(gpa, len),
        after,
        "the device wrote after GPADL_TORNDOWN"
    );

    let reply = Guest::try_recv(&mut ring, TIMEOUT).unwrap();
    assert_eq!((reply.trans_id, reply.status), (trans_id, ACCESS_FAILED));
    assert_eq!(dev.gpadl_errors(), [GpadlAccessError::Revoked(handle)]);
    assert_eq!(g.read_memory(gpa, len), after);
}
