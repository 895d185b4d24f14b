//! Building blocks shared by the hypervisor-lite fuzz targets: a fake [`HvPlatform`] that records the
//! interrupts it is asked to inject, a small attached [`HvPartition`] (no KVM), and [`Input`], the
//! cursor every target reads its decisions from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hypervisor_lite::hv::{new_event_fd, HvConfig, HvPartition, HvPlatform};
use hypervisor_lite::GuestRam;
use vmm_sys_util::eventfd::EventFd;

/// Guest RAM of every fuzzed partition: 16 pages, so random GPAs mostly miss it.
pub const RAM_BYTES: u64 = 16 * 4096;
/// VPs of every fuzzed partition (inputs also name VP 2, which does not exist).
pub const VP_COUNT: u32 = 2;
/// Bound of each VP×SINT message queue (small, so queues fill).
pub const QUEUE_DEPTH: usize = 4;

/// A platform that accepts every MSI and doorbell, recording the MSIs.
#[derive(Debug, Default)]
pub struct FakePlatform {
    /// `(apic_id, vector)` of every MSI, in order.
    pub msis: Mutex<Vec<(u32, u8)>>,
    /// Doorbells registered.
    pub doorbells: AtomicU64,
}

impl HvPlatform for FakePlatform {
    fn signal_msi(&self, apic_id: u32, vector: u8) -> std::io::Result<()> {
        self.msis.lock().unwrap().push((apic_id, vector));
        Ok(())
    }
    fn register_doorbell(&self, _port: u16, _datamatch: u32) -> std::io::Result<EventFd> {
        self.doorbells.fetch_add(1, Ordering::Relaxed);
        new_event_fd()
    }
}

/// A partition of [`VP_COUNT`] VPs attached to [`RAM_BYTES`] of RAM and a [`FakePlatform`].
pub fn partition() -> (Arc<HvPartition>, Arc<FakePlatform>, GuestRam) {
    let ram = GuestRam::new(RAM_BYTES).expect("guest RAM");
    let hv = HvPartition::new(HvConfig {
        queue_depth: QUEUE_DEPTH,
        ..HvConfig::new(VP_COUNT)
    });
    let platform = Arc::new(FakePlatform::default());
    hv.attach(ram.clone(), platform.clone()).expect("attach");
    (hv, platform, ram)
}

/// Every interrupt the partition injected went to an existing VP with a legal vector, and the
/// partition counted each exactly once.
pub fn check_interrupts(hv: &HvPartition, platform: &FakePlatform) {
    let msis = platform.msis.lock().unwrap();
    assert_eq!(hv.stats().interrupts, msis.len() as u64);
    for &(apic, vector) in msis.iter() {
        assert!(apic < VP_COUNT, "MSI to APIC {apic}");
        assert!(vector >= 16, "MSI with reserved vector {vector}");
    }
}

/// A GPA chosen by one selector byte: page-aligned, 8-aligned or unaligned inside RAM, straddling
/// or just past its end, in the high half of the address space, or any 64-bit value.
pub fn gpa(input: &mut Input<'_>) -> u64 {
    let selector = input.u8();
    let low = u64::from(input.u16());
    match selector % 7 {
        0 => (low << 12) % RAM_BYTES,
        1 => (low * 8) % RAM_BYTES,
        2 => low % RAM_BYTES,
        3 => RAM_BYTES - (low % 512),
        4 => RAM_BYTES + (low << 12),
        5 => u64::MAX - low,
        _ => input.u64(),
    }
}

/// The fuzz input as a stream of decisions; reads past the end give zeros.
#[derive(Debug)]
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }
    /// Whether every byte was used.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}
