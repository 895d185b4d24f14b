//! storvsp on the service with a backend that panics on one LBA: the request that hit it completes
//! to the guest as a failed I/O (CHECK CONDITION, HARDWARE ERROR / INTERNAL TARGET FAILURE), counted;
//! the device thread neither dies nor spins, later I/O on the same channel works, and another
//! channel is undisturbed — with the request executed on an I/O-pool thread and inline alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use guest_drivers::storvsc::{Completion, Event, HandshakeStep, Request, Storvsc};
use storvsp_protocol::scsi::{AdditionalSense, ScsiStatus, SenseKey};
use storvsp_protocol::SrbStatus;
use vmbus::mem::PAGE_SIZE;
use vmbus::protocol::Guid;

use super::echo_device::{EchoDevice, ECHO};
use super::guest::{Guest, GuestRing, TIMEOUT};
use crate::backend::{BlockBackend, DiskError, IoBuffers, RamDisk};
use crate::device_threads::DeviceThreads;
use crate::synthetic::storvsp::{LunMap, StorvspConfig, StorvspDevice};

/// The LBA whose reads panic.
const POISON_LBA: u64 = 666;

/// A RAM disk whose reads of [`POISON_LBA`] panic (a backend bug a guest can reach).
struct PanicsOnRead(RamDisk);

impl BlockBackend for PanicsOnRead {
    fn capacity(&self) -> u64 {
        self.0.capacity()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_vectored(&self, offset: u64, bufs: &IoBuffers<'_>) -> Result<(), DiskError> {
        let sectors = offset / 512..(offset + bufs.len()).div_ceil(512);
        assert!(
            !sectors.contains(&POISON_LBA),
            "injected backend panic at LBA {POISON_LBA}"
        );
        self.0.read_vectored(offset, bufs)
    }
    fn write_vectored(
        &self,
        offset: u64,
        bufs: &IoBuffers<'_>,
        fua: bool,
    ) -> Result<(), DiskError> {
        self.0.write_vectored(offset, bufs, fua)
    }
    fn flush(&self) -> Result<(), DiskError> {
        self.0.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.0.discard(offset, len)
    }
}

/// Send `request` and wait for the driver's event about it.
pub(super) fn exchange(
    g: &Guest,
    ring: &mut GuestRing,
    drv: &mut Storvsc,
    request: &Request,
) -> Event {
    let _ = request.write_to(&mut ring.to_host).unwrap();
    g.synic.signal_host(ring.connection_id);
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(read) = ring.from_host.read_packet(&mut buf).unwrap() {
            return drv.handle_packet(&buf[..read.info.len]).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no answer to trans_id {}",
            request.trans_id
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub(super) fn completed(event: Event) -> Completion {
    match event {
        Event::Completed(c) => c,
        other => panic!("expected a completion, got {other:?}"),
    }
}

pub(super) fn handshake(g: &Guest, ring: &mut GuestRing, drv: &mut Storvsc) {
    let mut next = drv.begin_init();
    loop {
        match exchange(g, ring, drv, &next) {
            Event::Handshake(HandshakeStep::Send(r)) => next = *r,
            Event::Handshake(HandshakeStep::Ready(_)) => return,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn assert_failed_with_hardware_error(c: &Completion) {
    assert!(c.result.is_err(), "{c:?}");
    assert_eq!(
        c.srb_status.0 & !SrbStatus::AUTOSENSE_VALID,
        SrbStatus::ERROR.0,
        "{c:?}"
    );
    assert_eq!(c.scsi_status, ScsiStatus::CHECK_CONDITION, "{c:?}");
    let sense = c.sense.decode().expect("sense data");
    assert_eq!(sense.key, SenseKey::HARDWARE_ERROR);
    assert_eq!(sense.additional, AdditionalSense::INTERNAL_TARGET_FAILURE);
}

fn a_panicking_read_fails_alone(io_threads: usize) {
    let threads = DeviceThreads::new();
    let _entered = threads.enter();
    let scsi = Arc::new(StorvspDevice::new(
        Guid::new(0x5c51, 1, 2, [3; 8]),
        LunMap::new().with_backend(0, Arc::new(PanicsOnRead(RamDisk::new(1 << 20)))),
        StorvspConfig {
            io_threads,
            ..StorvspConfig::default()
        },
    ));
    let echo = EchoDevice::new("echo", 1);
    let mut g = Guest::start(vec![scsi.clone(), echo.dyn_clone()]);
    let offers = g.connect();
    let (scsi_relid, echo_relid) = (offers[0].child_relid, offers[1].child_relid);
    let mut ring = g.open(scsi_relid, 0, &[]);
    let mut drv = Storvsc::new();
    handshake(&g, &mut ring, &mut drv);

    let page = g.alloc_pages(1)[0];
    let gpa = page * PAGE_SIZE as u64;
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 1) as u8).collect();
    g.write_memory(gpa, &data);
    let w = drv.write(0, 100, 8, &[page], 0, false).unwrap();
    assert_eq!(
        completed(exchange(&g, &mut ring, &mut drv, &w)).result,
        Ok(4096)
    );

    // The poisoned read: a failed I/O, not a lost one.
    let r = drv.read(0, POISON_LBA, 8, &[page], 0).unwrap();
    let c = completed(exchange(&g, &mut ring, &mut drv, &r));
    assert_failed_with_hardware_error(&c);
    super::guest::eventually("the panic counted", || {
        scsi.stats().lock().unwrap().worker.io_panics == 1
    });

    // Idle afterwards: the device thread sleeps (no in-flight request left to wait for).
    let (cpu0, turns0) = (threads.cpu().total, scsi.stats().lock().unwrap().turns);
    std::thread::sleep(Duration::from_millis(500));
    let (cpu1, turns1) = (threads.cpu().total, scsi.stats().lock().unwrap().turns);
    let (cpu, turns) = (cpu1 - cpu0, turns1 - turns0);
    eprintln!(
        "io_threads {io_threads}: after the panic, 500 ms idle: device threads CPU {cpu:?}, \
         serve-loop turns {turns}"
    );
    // Asleep: a turn per 100 ms wait at most (about 5); a spinning loop turns millions of times.
    assert!(
        turns <= 20,
        "the serve loop turned {turns} times while idle"
    );
    assert!(
        cpu < Duration::from_millis(50),
        "device threads used {cpu:?} while idle"
    );

    // The channel goes on: a good read, another poisoned one, and a good read again.
    g.write_memory(gpa, &[0; 4096]);
    let r = drv.read(0, 100, 8, &[page], 0).unwrap();
    assert_eq!(
        completed(exchange(&g, &mut ring, &mut drv, &r)).result,
        Ok(4096)
    );
    assert_eq!(g.read_memory(gpa, 4096), data);
    let r = drv.read(0, POISON_LBA - 3, 8, &[page], 0).unwrap();
    assert_failed_with_hardware_error(&completed(exchange(&g, &mut ring, &mut drv, &r)));
    let r = drv.read(0, 100, 8, &[page], 0).unwrap();
    assert_eq!(
        completed(exchange(&g, &mut ring, &mut drv, &r)).result,
        Ok(4096)
    );
    let stats = scsi.stats().lock().unwrap().worker;
    assert_eq!(stats.io_panics, 2);
    assert_eq!(stats.failed_requests, 2);

    // Nothing failed at the service level, and another channel works.
    assert!(
        g.service.failures().is_empty(),
        "{:?}",
        g.service.failures()
    );
    assert!(g.service.is_serving(scsi_relid));
    let mut echo_ring = g.open(echo_relid, 0, &[]);
    assert_eq!(
        g.request(&mut echo_ring, ECHO, &[b"still here"]).data,
        b"still here"
    );
}

#[test]
fn a_read_that_panics_on_a_pool_thread_fails_alone_and_the_device_sleeps() {
    a_panicking_read_fails_alone(1);
}

#[test]
fn a_read_that_panics_inline_on_the_device_thread_fails_alone() {
    a_panicking_read_fails_alone(0);
}
