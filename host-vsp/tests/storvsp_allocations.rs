//! The storvsp data path allocates nothing once warm: a counting global allocator, armed only around
//! `StorvspWorker::poll` on the test thread (the guest side's allocations do not count), sees no
//! allocation while the worker decodes, executes (inline, on a RAM disk and on a raw image file) and
//! completes 4 KiB and 128 KiB reads and writes at QD1 and QD8.

mod storvsp_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use host_vsp::backend::{BlockBackend, FileDisk, RamDisk};
use host_vsp::synthetic::storvsp::StorvspConfig;
use storvsp_common::Rig;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through `alloc`/`realloc` above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn count() {
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `rounds` rounds of `qd` requests of `sectors` sectors (reads and writes alternating by
/// round); returns the allocations made inside `poll`.
fn serve(rig: &mut Rig, rounds: u64, qd: u64, sectors: u32) -> u64 {
    let pages = u64::from(sectors).div_ceil(8) + 1;
    let before = ALLOCATIONS.with(Cell::get);
    for round in 0..rounds {
        for i in 0..qd {
            let pfns: Vec<u64> = (0..pages).map(|p| 16 + i * pages + p).collect();
            let lba = (round * qd + i) * u64::from(sectors) % 8192;
            let r = if round % 2 == 0 {
                rig.drv.write(0, lba, sectors, &pfns, 100, round % 4 == 0)
            } else {
                rig.drv.read(0, lba, sectors, &pfns, 100)
            };
            rig.send(&r.unwrap());
        }
        let mut done = 0;
        while done < qd {
            ARMED.with(|a| a.set(true));
            let r = rig.worker.poll();
            ARMED.with(|a| a.set(false));
            assert!(!r.failed);
            done += rig.drain_completions(sectors * 512);
        }
    }
    ALLOCATIONS.with(Cell::get) - before
}

fn check(backend: Arc<dyn BlockBackend>) {
    let mut rig = Rig::new(backend, 16 + 8 * 34, StorvspConfig::default());
    rig.handshake();
    // Warm up: segment lists, iovec storage and completion queues reach their working size.
    serve(&mut rig, 4, 8, 256);
    serve(&mut rig, 4, 8, 8);
    for (qd, sectors) in [(1, 8), (8, 8), (1, 256), (8, 256)] {
        assert_eq!(
            serve(&mut rig, 6, qd, sectors),
            0,
            "allocations at QD{qd}, {sectors} sectors"
        );
    }
}

#[test]
fn ram_disk_data_path_allocates_nothing() {
    check(Arc::new(RamDisk::new(8 << 20)));
}

#[test]
fn file_disk_data_path_allocates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    check(Arc::new(
        FileDisk::create(&dir.path().join("disk.img"), 8 << 20).unwrap(),
    ));
}
