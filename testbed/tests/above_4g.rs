//! Guest RAM above 4 GiB on KVM: a 32 GiB guest (3 GiB below the MMIO hole, 29 GiB above 4 GiB) maps all
//! of it and does storage I/O through storvsc/storvsp with its ring GPADL and its I/O buffers above 4 GiB;
//! the data is checked in the guest, in guest memory at the GPAs the guest printed, and on the disk; the
//! host process stays small because guest RAM is only committed where it is touched.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guest_abi::above_4g::pattern;
use host_vsp::backend::{BlockBackend, RamDisk};
use hypervisor_lite::GuestRam;
use testbed::bench::{DeviceKit, VmbusKit};
use testbed::{GuestVm, GuestVmConfig};

const GIB: u64 = 1 << 30;
const RAM: u64 = 32 * GIB;
/// Requests per direction and their size.
const IOS: u64 = 8;
const IO_BYTES: u64 = 64 << 10;
/// The guest's ring pages per direction (`scenario/above_4g.rs`).
const RING_PAGES: u64 = 16;
/// The host may grow by at most this much running a 32 GiB guest that touches a few MiB.
const RSS_BOUND: u64 = 512 << 20;

/// The process's resident set (VmRSS) in bytes.
fn vm_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .expect("VmRSS in /proc/self/status")
}

fn gpa(run: &testbed::GuestRun, key: &str) -> u64 {
    let value = run
        .console_value(key)
        .unwrap_or_else(|| panic!("no `{key}=` in the console:\n{}", run.console));
    u64::from_str_radix(value.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("{key}={value} is not a hex GPA"))
}

/// Bytes `[from, to)` of the pattern at guest RAM `base` (offset `from` of the pattern there).
fn check_guest_pattern(ram: &GuestRam, what: &str, base: u64, from: u64, to: u64) {
    let mut got = vec![0u8; (to - from) as usize];
    ram.read(base + from, &mut got).unwrap();
    if let Some(i) = (0..got.len()).find(|&i| got[i] != pattern(from + i as u64)) {
        panic!(
            "{what} at {:#x}: byte {:#x}",
            base + from + i as u64,
            got[i]
        );
    }
}

#[test]
fn storvsc_io_from_buffers_and_rings_above_4g_in_a_32_gib_guest() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let total = IOS * IO_BYTES;
    let rss_before = vm_rss();
    let disk = Arc::new(RamDisk::new(4 * total));
    let mut config = GuestVmConfig::new(format!("above4g:ios={IOS},kib={}", IO_BYTES >> 10));
    config.ram_bytes = RAM;
    VmbusKit::default()
        .configure(&mut config, disk.clone())
        .unwrap();
    // Keep guest RAM mapped past the run, to look at it (and count it in the RSS) afterwards.
    let ram_slot: Arc<Mutex<Option<GuestRam>>> = Arc::default();
    let slot = ram_slot.clone();
    config.attach(move |partition, _| {
        *slot.lock().unwrap() = Some(partition.ram().clone());
        Ok(())
    });
    let booting = Instant::now();
    let run = GuestVm::new(config)
        .unwrap()
        .run(Duration::from_secs(120))
        .unwrap();
    let elapsed = booting.elapsed();
    run.expect_success().unwrap();
    let ram = ram_slot.lock().unwrap().take().expect("guest RAM");
    let rss_delta = vm_rss().saturating_sub(rss_before);

    // Everything the guest handed the host is above 4 GiB, inside its RAM there.
    let ram_end = 4 * GIB + (RAM - 3 * GIB);
    let (ring, write, read) = (
        gpa(&run, "above4g-ring-gpa"),
        gpa(&run, "above4g-write-gpa"),
        gpa(&run, "above4g-read-gpa"),
    );
    eprintln!(
        "32 GiB guest: ring GPADL at {ring:#x} (PFN {:#x}), write buffers at {write:#x}, read \
         buffers at {read:#x}; run {elapsed:?}; process RSS grew {} KiB",
        ring >> 12,
        rss_delta >> 10
    );
    for (what, at, len) in [
        ("ring", ring, 2 * RING_PAGES * 4096),
        ("write buffers", write, total),
        ("read buffers", read, total),
    ] {
        assert!(at >> 12 >= 1 << 20, "{what} at {at:#x}: PFN below 2^20");
        assert!(at + len <= ram_end, "{what} at {at:#x} beyond RAM");
    }
    assert_eq!(run.console_number("above4g-verified"), total);

    // On the host: the disk holds the pattern...
    let mut on_disk = vec![0u8; (2 * total) as usize];
    disk.read_at(0, &mut on_disk).unwrap();
    for (i, b) in on_disk.iter().enumerate() {
        let want = if (i as u64) < total {
            pattern(i as u64)
        } else {
            0
        };
        assert_eq!(*b, want, "disk byte {i:#x}");
    }
    // ...and so does guest RAM at the GPAs the guest printed: what it wrote from, and what storvsp read
    // into. The guest's allocator keeps its free-list node in the first 16 bytes of a freed region.
    check_guest_pattern(&ram, "write buffer", write, 16, total);
    check_guest_pattern(&ram, "read buffer", read, 16, total);
    // The host→guest ring (after the guest→host one) carried storvsp's completions: its write index moved.
    let host_write_index = ram.read_u32(ring + RING_PAGES * 4096).unwrap();
    assert_ne!(
        host_write_index, 0,
        "the host never wrote the ring at {ring:#x}"
    );

    // Guest RAM is committed only where touched: a 32 GiB guest costs the host far less than 32 GiB.
    assert!(
        rss_delta < RSS_BOUND,
        "the host process grew by {rss_delta} bytes running a 32 GiB guest"
    );
}
