//! The two block baselines on KVM: our guest kernel writes a pattern through the emulated IDE disk and
//! through virtio-blk, reads it back and verifies it; the host checks the disk contents and counts the mode
//! transitions per 4 KiB I/O in the windows the guest marks (see `testbed/guest/src/scenario/block.rs`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use host_kvm::ide::KvmIde;
use host_kvm::virtio_blk::{KvmVirtioBlk, VirtioBlkPlacement};
use host_vsp::backend::{BlockBackend, FileDisk, RamDisk};
use host_vsp::emulated::ide::IdeController;
use host_vsp::virtio::blk::{VirtioBlkConfig, VirtioBlkDevice};
use hypervisor_lite::StatsSnapshot;
use testbed::{GuestRun, GuestVm, GuestVmConfig};

const ATA_SEED: u8 = 0xA5;
const VIRTIO_SEED: u8 = 0x5A;
const TIMEOUT: Duration = Duration::from_secs(120);

/// Same as the guest's `pattern_byte`.
fn pattern_byte(seed: u8, lba: u64, i: usize) -> u8 {
    (lba.wrapping_mul(131) ^ (lba >> 8) ^ (i as u64).wrapping_mul(7)) as u8 ^ seed
}

fn check_disk(disk: &dyn BlockBackend, seed: u8, sectors: u64) {
    let mut buf = vec![0u8; sectors as usize * 512];
    disk.read_at(0, &mut buf).unwrap();
    for (s, sector) in buf.chunks(512).enumerate() {
        for (i, b) in sector.iter().enumerate() {
            assert_eq!(
                *b,
                pattern_byte(seed, s as u64, i),
                "host disk sector {s} byte {i}"
            );
        }
    }
    // Nothing beyond the written range was touched.
    let mut after = vec![0u8; 512];
    disk.read_at(sectors * 512, &mut after).unwrap();
    assert_eq!(after, vec![0; 512], "sector after the pattern");
}

struct Window {
    user_exits: u64,
    io_exits: u64,
    mmio_exits: u64,
    kvm_exits: u64,
}

fn window(run: &GuestRun, start: u32, end: u32) -> Window {
    let w: StatsSnapshot = run
        .window(start, end)
        .unwrap_or_else(|| panic!("marks {start:#x}/{end:#x} missing:\n{}", run.console));
    let v = &w.vcpus[0];
    Window {
        user_exits: w.user_exits(),
        io_exits: v.user_exits.io,
        mmio_exits: v.user_exits.mmio,
        kvm_exits: w.kvm_exits(),
    }
}

fn temp_image(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("viridian-blk-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("disk.img")
}

fn run_ide(disk: Arc<dyn BlockBackend>, cmdline: &str) -> (GuestRun, Arc<IdeController>) {
    let ide = Arc::new(IdeController::new(disk));
    let mut cfg = GuestVmConfig::new(cmdline);
    let kvm = KvmIde::new(ide.clone());
    cfg.configure(move |pc| {
        kvm.register(pc);
        Ok(())
    });
    let run = GuestVm::new(cfg).unwrap().run(TIMEOUT).unwrap();
    run.expect_success().unwrap();
    (run, ide)
}

fn run_virtio(disk: Arc<dyn BlockBackend>, cmdline: &str) -> (GuestRun, Arc<VirtioBlkDevice>) {
    let dev = Arc::new(VirtioBlkDevice::new(disk, VirtioBlkConfig::default()).unwrap());
    let mut cfg = GuestVmConfig::new(cmdline);
    let kvm = KvmVirtioBlk::new(dev.clone(), VirtioBlkPlacement::default());
    let (d1, d2) = (kvm.clone(), kvm);
    cfg.configure(move |pc| {
        d1.register(pc);
        Ok(())
    });
    cfg.attach(move |partition, _hv| {
        d2.attach(partition)?;
        Ok(())
    });
    let run = GuestVm::new(cfg).unwrap().run(TIMEOUT).unwrap();
    run.expect_success().unwrap();
    (run, dev)
}

/// Port accesses of one 4 KiB (8-sector) PIO I/O when each sector's data takes `per_sector` data-register
/// accesses: select + 8 task-file writes + command, then per sector one status poll and the data, then the
/// final status read. Each port access is one user exit.
fn ata_exits_per_io(per_sector: u64) -> u64 {
    1 + 8 + 1 + 8 * (1 + per_sector) + 1
}

#[test]
fn ide_ram_disk_round_trips_and_costs_a_user_exit_per_register_access() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let disk = Arc::new(RamDisk::new(1 << 20));
    let (run, ide) = run_ide(disk.clone(), "ata-verify:64");
    let ios = run.console_number("ata-ios");
    assert_eq!(ios, 8);
    check_disk(&*disk, ATA_SEED, 64);
    let stats = ide.stats();
    assert_eq!(
        stats.errors, 0,
        "the driver refuses the read past the end itself"
    );
    assert_eq!(stats.sectors_written, 64);
    assert_eq!(stats.interrupts, 0, "polled driver: nIEN set");
    // KVM hands `rep insw` of a sector to user space in one exit (its emulator reads a string ahead) but
    // `rep outsw` one word per exit: IDENTIFY + 64 sectors in at 1 access each, 64 sectors out at 256.
    assert_eq!(stats.data_accesses, 65 + 64 * 256, "{stats:?}");
    for (start, end, what, per_sector) in [(0xA1, 0xA2, "write", 256), (0xA2, 0xA3, "read", 1)] {
        let w = window(&run, start, end);
        eprintln!(
            "IDE {what} (rep string PIO): per 4 KiB I/O {} user exits ({} port), {} KVM exits, 0 interrupts",
            w.user_exits as f64 / ios as f64,
            w.io_exits as f64 / ios as f64,
            w.kvm_exits as f64 / ios as f64
        );
        assert_eq!(w.io_exits, ios * ata_exits_per_io(per_sector), "{what}");
        assert_eq!(
            w.user_exits, w.io_exits,
            "{what}: every exit is a port access"
        );
        assert!(
            w.user_exits / ios >= 10,
            "{what}: emulated costs ≥ 10 user exits per 4 KiB I/O"
        );
        assert!(w.kvm_exits >= w.user_exits, "{what}");
    }
}

#[test]
fn ide_file_disk_dword_pio_costs_an_exit_per_four_bytes() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let path = temp_image("ide");
    let disk = Arc::new(FileDisk::create(&path, 1 << 20).unwrap());
    let (run, _ide) = run_ide(disk.clone(), "ata-verify:16,dword");
    let ios = run.console_number("ata-ios");
    check_disk(&*disk, ATA_SEED, 16);
    drop(disk);
    // The image on disk holds the pattern too.
    let reopened = FileDisk::open(&path, Default::default()).unwrap();
    check_disk(&reopened, ATA_SEED, 16);
    for (start, end, what) in [(0xA1, 0xA2, "write"), (0xA2, 0xA3, "read")] {
        let w = window(&run, start, end);
        eprintln!(
            "IDE dword {what}: per 4 KiB I/O {} user exits, {} KVM exits",
            w.user_exits as f64 / ios as f64,
            w.kvm_exits as f64 / ios as f64
        );
        // 128 dword accesses per sector.
        assert_eq!(w.io_exits, ios * ata_exits_per_io(128), "{what}");
        assert_eq!(w.user_exits, w.io_exits, "{what}");
    }
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn virtio_ram_disk_round_trips_without_user_exits_on_the_data_path() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let disk = Arc::new(RamDisk::new(1 << 20));
    let (run, dev) = run_virtio(disk.clone(), "virtio-verify:256");
    let ios = run.console_number("virtio-ios");
    assert_eq!(ios, 32);
    check_disk(&*disk, VIRTIO_SEED, 256);
    let s = dev.stats();
    assert_eq!(s.writes, 32);
    assert!(s.reads >= 33, "{s:?}");
    assert_eq!(
        s.register_notifies, 0,
        "every notify was caught by the ioeventfd: {s:?}"
    );
    let irqs = run.console_number("virtio-irqs");
    for (start, end, what) in [(0xB1, 0xB2, "write"), (0xB2, 0xB3, "read")] {
        let w = window(&run, start, end);
        eprintln!(
            "virtio-blk {what}: per 4 KiB I/O {} user exits ({} MMIO), {} KVM exits; {irqs} interrupts \
             for {} I/Os in both windows; device {s:?}",
            w.user_exits as f64 / ios as f64,
            w.mmio_exits as f64 / ios as f64,
            w.kvm_exits as f64 / ios as f64,
            2 * ios
        );
        assert_eq!(
            w.mmio_exits + w.io_exits,
            0,
            "{what}: no register access exits"
        );
        assert_eq!(
            w.user_exits, 0,
            "{what}: no user exits at all on the data path"
        );
        assert!(
            w.kvm_exits > 0,
            "{what}: notifies and interrupts are kernel exits"
        );
    }
    assert!(irqs >= 1 && irqs <= 2 * ios, "interrupts {irqs}");
}

#[test]
fn virtio_file_disk_round_trips_with_polled_completion() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let path = temp_image("virtio");
    let disk = Arc::new(FileDisk::create(&path, 1 << 20).unwrap());
    let (run, dev) = run_virtio(disk.clone(), "virtio-verify:64,poll");
    assert_eq!(run.console_number("virtio-ios"), 8);
    assert_eq!(run.console_number("virtio-sleeps"), 0);
    check_disk(&*disk, VIRTIO_SEED, 64);
    assert!(dev.stats().flushes >= 1);
    for (start, end) in [(0xB1, 0xB2), (0xB2, 0xB3)] {
        assert_eq!(window(&run, start, end).user_exits, 0);
    }
    drop(disk);
    let reopened = FileDisk::open(&path, Default::default()).unwrap();
    check_disk(&reopened, VIRTIO_SEED, 64);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}
