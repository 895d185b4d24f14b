//! End to end without KVM: the guest's storvsc logic (guest-drivers) ⇄ two in-process rings ⇄
//! StorvspWorker, on a RAM disk and on a raw image file. Writes a pattern at QD1 and QD32 with 4 KiB
//! and 128 KiB requests from buffers at unaligned offsets, reads it back, and checks the image bytes
//! directly; flushes reach the backend; errors come back with sense data.

mod storvsp_common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use guest_drivers::storvsc::{parse_capacity16, IoError};
use host_vsp::backend::{BlockBackend, DiskError, FileDisk, IoBuffers, RamDisk};
use host_vsp::synthetic::storvsp::StorvspConfig;
use storvsp_common::{pages, Rig};
use storvsp_protocol::scsi::{AdditionalSense, SenseKey};
use storvsp_protocol::ProtocolVersion;

const DISK: u64 = 8 << 20;

fn pattern_byte(disk_offset: u64, seed: u8) -> u8 {
    ((disk_offset / 512).wrapping_mul(31) + disk_offset % 251) as u8 ^ seed
}

/// Writes `count` requests of `size` bytes at QD `qd`, reads them back at the same QD into cleared
/// buffers, and returns the disk bytes covered. Buffer `i` of a batch lives at an odd offset.
fn write_read(rig: &mut Rig, size: u32, count: u64, qd: usize, seed: u8) {
    let sectors = size / 512;
    let slot_pages = pages(size, 4095);
    let slot = |i: u64| -> (Vec<u64>, u32) {
        let offset = ((i * 328 + 100) % 4096) as u32;
        let base = 16 + (i % qd as u64) * slot_pages;
        ((base..base + pages(size, offset)).collect(), offset)
    };
    // Writes: each request needs its own buffer while outstanding, so run in waves of `qd`.
    for wave in (0..count).collect::<Vec<_>>().chunks(qd) {
        let mut reqs = Vec::new();
        for &i in wave {
            let (pfns, offset) = slot(i);
            let data: Vec<u8> = (0..u64::from(size))
                .map(|b| pattern_byte(i * u64::from(size) + b, seed))
                .collect();
            rig.poke(pfns[0], offset, &data);
            reqs.push(
                rig.drv
                    .write(0, i * u64::from(sectors), sectors, &pfns, offset, false)
                    .unwrap(),
            );
        }
        for c in rig.run_all(reqs, qd) {
            assert_eq!(c.result, Ok(size), "write {c:?}");
        }
    }
    for wave in (0..count).collect::<Vec<_>>().chunks(qd) {
        let mut reqs = Vec::new();
        let mut expect = std::collections::HashMap::new();
        for &i in wave {
            let (pfns, offset) = slot(i);
            rig.poke(pfns[0], offset, &vec![0; size as usize]);
            let r = rig
                .drv
                .read(0, i * u64::from(sectors), sectors, &pfns, offset)
                .unwrap();
            expect.insert(r.trans_id, (i, pfns[0], offset));
            reqs.push(r);
        }
        for c in rig.run_all(reqs, qd) {
            assert_eq!(c.result, Ok(size));
            let (i, pfn, offset) = expect[&c.trans_id];
            let got = rig.peek(pfn, offset, size as usize);
            let want: Vec<u8> = (0..u64::from(size))
                .map(|b| pattern_byte(i * u64::from(size) + b, seed))
                .collect();
            assert!(
                got == want,
                "read-back mismatch for request {i} ({size} bytes)"
            );
        }
    }
}

fn check_image(image: &[u8], size: u32, count: u64, seed: u8) {
    let end = (u64::from(size) * count) as usize;
    for (o, &b) in image[..end].iter().enumerate() {
        assert_eq!(b, pattern_byte(o as u64, seed), "image byte {o:#x}");
    }
    assert!(
        image[end..].iter().all(|&b| b == 0),
        "bytes beyond the written range stay zero"
    );
}

fn matrix(backend: Arc<dyn BlockBackend>, image: impl Fn() -> Vec<u8>, io_threads: usize) {
    for (size, count, qd, seed) in [
        (4096u32, 64u64, 1usize, 1u8),
        (4096, 256, 32, 2),
        (128 << 10, 8, 1, 3),
        (128 << 10, 48, 32, 4),
    ] {
        // A fresh worker each time, on the same disk: the image is rewritten from LBA 0.
        let mut rig = Rig::new(
            backend.clone(),
            16 + 32 * 40,
            StorvspConfig {
                io_threads,
                ..StorvspConfig::default()
            },
        );
        assert_eq!(rig.handshake(), ProtocolVersion::WIN10);
        backend.discard(0, DISK).unwrap();
        write_read(&mut rig, size, count, qd, seed);
        check_image(&image(), size, count, seed);
        let stats = rig.worker.stats();
        assert_eq!(stats.requests, count * 2);
        assert_eq!(stats.bytes, count * 2 * u64::from(size));
        assert_eq!(stats.failed_requests, 0);
    }
}

#[test]
fn ram_disk_patterns_inline_and_pooled() {
    let disk = Arc::new(RamDisk::new(DISK));
    let d = disk.clone();
    matrix(disk.clone(), move || d.snapshot(), 0);
    let d = disk.clone();
    matrix(disk, move || d.snapshot(), 4);
}

#[test]
fn file_disk_patterns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let disk = Arc::new(FileDisk::create(&path, DISK).unwrap());
    let p = path.clone();
    matrix(disk, move || std::fs::read(&p).unwrap(), 3);
}

#[derive(Debug)]
struct FlushCounter {
    inner: RamDisk,
    flushes: AtomicU64,
    fua: AtomicU64,
}

impl BlockBackend for FlushCounter {
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_vectored(&self, offset: u64, bufs: &IoBuffers<'_>) -> Result<(), DiskError> {
        self.inner.read_vectored(offset, bufs)
    }
    fn write_vectored(
        &self,
        offset: u64,
        bufs: &IoBuffers<'_>,
        fua: bool,
    ) -> Result<(), DiskError> {
        self.fua.fetch_add(u64::from(fua), Ordering::Relaxed);
        self.inner.write_vectored(offset, bufs, fua)
    }
    fn flush(&self) -> Result<(), DiskError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.inner.discard(offset, len)
    }
}

#[test]
fn flush_and_fua_reach_the_backend() {
    let disk = Arc::new(FlushCounter {
        inner: RamDisk::new(DISK),
        flushes: AtomicU64::new(0),
        fua: AtomicU64::new(0),
    });
    let mut rig = Rig::new(disk.clone(), 64, StorvspConfig::default());
    rig.handshake();
    rig.poke(20, 0, &[0x42; 4096]);
    let w = rig.drv.write(0, 8, 8, &[20], 0, true).unwrap();
    assert_eq!(rig.run(w).result, Ok(4096));
    assert_eq!(disk.fua.load(Ordering::Relaxed), 1);
    let f = rig.drv.synchronize_cache(0).unwrap();
    assert_eq!(rig.run(f).result, Ok(0));
    assert_eq!(disk.flushes.load(Ordering::Relaxed), 1);
    assert_eq!(&disk.inner.snapshot()[4096..8192], &[0x42; 4096]);
    // And a FileDisk flush (fdatasync) succeeds end to end.
    let dir = tempfile::tempdir().unwrap();
    let file = Arc::new(FileDisk::create(&dir.path().join("f.img"), 1 << 20).unwrap());
    let mut rig = Rig::new(file, 64, StorvspConfig::default());
    rig.handshake();
    let f = rig.drv.synchronize_cache(0).unwrap();
    assert_eq!(rig.run(f).result, Ok(0));
}

#[test]
fn discovery_commands_and_errors_end_to_end() {
    let mut rig = Rig::new(Arc::new(RamDisk::new(DISK)), 64, StorvspConfig::default());
    rig.handshake();
    let tur = rig.drv.test_unit_ready(0).unwrap();
    assert_eq!(rig.run(tur).result, Ok(0));
    let inq = rig.drv.inquiry(0, None, 36, &[30], 7).unwrap();
    assert_eq!(rig.run(inq).result, Ok(36));
    assert_eq!(&rig.peek(30, 7 + 8, 8), b"Msft    ");
    let vpd = rig.drv.inquiry(0, Some(0x00), 64, &[30], 0).unwrap();
    assert_eq!(rig.run(vpd).result, Ok(10));
    let cap = rig.drv.read_capacity(0, &[31], 4090).unwrap_err();
    assert!(matches!(
        cap,
        guest_drivers::storvsc::StorvscError::BadBuffer { .. }
    ));
    let cap = rig.drv.read_capacity(0, &[31, 32], 4090).unwrap();
    assert_eq!(rig.run(cap).result, Ok(32));
    assert_eq!(
        parse_capacity16(&rig.peek(31, 4090, 32)),
        Some((DISK / 512, 512))
    );
    // Reading past the end: CHECK CONDITION with ILLEGAL REQUEST / LBA OUT OF RANGE.
    let bad = rig.drv.read(0, DISK / 512, 1, &[33], 0).unwrap();
    let Err(IoError::Scsi {
        sense: Some(sense), ..
    }) = rig.run(bad).result
    else {
        panic!()
    };
    assert_eq!(
        (sense.key, sense.additional),
        (SenseKey::ILLEGAL_REQUEST, AdditionalSense::LBA_OUT_OF_RANGE)
    );
    // A LUN that does not exist.
    let none = rig.drv.test_unit_ready(5).unwrap();
    let Err(IoError::Scsi { srb_status, .. }) = rig.run(none).result else {
        panic!()
    };
    assert_eq!(srb_status.0, 0x20);
    // A buffer page outside guest RAM: error status, no access.
    let oob = rig.drv.read(0, 0, 8, &[1 << 30], 0).unwrap();
    assert!(matches!(rig.run(oob).result, Err(IoError::Status(_))));
}

#[test]
fn version_fallback_end_to_end() {
    let config = StorvspConfig {
        versions: vec![ProtocolVersion::WIN8],
        ..StorvspConfig::default()
    };
    let mut rig = Rig::new(Arc::new(RamDisk::new(1 << 20)), 64, config);
    assert_eq!(rig.handshake(), ProtocolVersion::WIN8);
    let tur = rig.drv.test_unit_ready(0).unwrap();
    assert_eq!(rig.run(tur).result, Ok(0));
}
