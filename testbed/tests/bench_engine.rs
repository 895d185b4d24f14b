//! The benchmark machinery end to end on KVM with the in-guest `ramdisk` baseline: the guest runs the
//! workload engine, the host pairs each result line with its mark window, checks the disk afterwards
//! and reports. Wrong data — seen by the guest or by the host, over the pre-fill or over an image — makes
//! FAILED rows, never numbers.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use host_vsp::backend::{BlockBackend, RamDisk};
use testbed::bench::{
    run_device, Backend, BenchOptions, CompletedRun, DeviceKit, DiskContents, RamdiskKit,
};
use testbed::report;
use testbed::GuestVmConfig;
use workload::pattern::first_mismatch;
use workload::{BenchLine, BenchOutcome, Op, Plan, WorkloadSpec};

fn specs() -> Vec<WorkloadSpec> {
    [
        "rr4k:k=rr,bs=4096,qd=8,n=300,seed=3,lba=0+8192",
        "rw4k:k=rw,bs=4096,qd=4,n=200,seed=4,lba=0+8192",
        "sr64k:k=sr,bs=64k,qd=2,n=80,lba=0+8192",
        "mix:k=mix50,bs=2048,qd=16,n=400,seed=5,lba=8192+4096",
    ]
    .iter()
    .map(|s| WorkloadSpec::parse(s).unwrap())
    .collect()
}

fn options() -> BenchOptions {
    BenchOptions::quiet(Duration::from_secs(60))
}

#[test]
fn ramdisk_workloads_run_in_the_guest_without_user_exits() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let disk = Arc::new(RamDisk::new(8 << 20));
    let specs = specs();
    let run = run_device(&RamdiskKit, disk.clone(), &specs, &options());

    // The guest printed one result line per workload, each with the I/Os asked for and no errors.
    let lines: Vec<BenchLine> = run
        .console
        .lines()
        .filter_map(|l| BenchLine::parse(l).ok())
        .collect();
    assert_eq!(lines.len(), specs.len(), "{}", run.console);
    for (k, (line, spec)) in lines.iter().zip(&specs).enumerate() {
        assert_eq!(line.mark, 2 * k as u32);
        assert_eq!(
            (line.device.as_str(), &line.workload),
            ("ramdisk", &spec.name)
        );
        let BenchOutcome::Done(r) = &line.outcome else {
            panic!("{line:?}\n{}", run.console)
        };
        assert_eq!(r.ios, spec.max_ios, "{}", spec.name);
        assert_eq!(r.errors, 0);
        assert_eq!(r.bytes, spec.max_ios * u64::from(spec.block_bytes));
        assert_eq!(
            line.generation,
            if spec.kind.writes() { k as u8 + 1 } else { 0 }
        );
    }

    // Every row has numbers; the ramdisk never leaves the guest inside the window.
    assert_eq!(run.rows.len(), specs.len());
    for (row, spec) in run.rows.iter().zip(&specs) {
        let m = row
            .outcome
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", spec.name, run.console));
        assert!(row.baseline);
        assert_eq!(m.ios, spec.max_ios);
        assert_eq!(m.user_exits, 0, "{}", spec.name);
        assert_eq!(
            (m.interrupts, m.guest_signals, m.guest_interrupts),
            (0, 0, 0)
        );
        assert!(m.seconds > 0.0 && m.iops() > 0.0);
        assert!(m.lat_p50_us > 0.0 && m.lat_p50_us <= m.lat_p99_us);
    }

    // The writes reached the host's disk: the first random write's block holds generation 2.
    let plan = Plan::new(&specs[1], disk.sectors()).unwrap();
    let (op, sector) = plan.io(0);
    assert_eq!(op, Op::Write);
    let mut block = vec![0u8; 4096];
    disk.read_at(sector * 512, &mut block).unwrap();
    assert_eq!(first_mismatch(sector, 2, &block), None);

    // The report has the rows.
    let table = report::table(&run.rows);
    for spec in &specs {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("ramdisk*") && l.contains(&spec.name)),
            "{table}"
        );
    }
    let json = report::json(&run.rows);
    let first = &json[0];
    assert_eq!(first["device"], "ramdisk");
    assert_eq!(first["workload"], "rr4k");
    assert_eq!(first["ios"], 300);
    assert_eq!(first["user_exits_per_io"], 0.0);
    for key in [
        "iops",
        "lat_p50_us",
        "lat_p99_us",
        "vm_exits_per_io",
        "interrupts_per_io",
    ] {
        assert!(first[key].is_number(), "{key}");
    }
}

/// The ramdisk with a fault: `before_boot` damages the disk after the pre-fill (the guest's reads must
/// notice), `after_run` damages it after the guest wrote it (the host's check must notice).
struct Damaged {
    before_boot: bool,
}

fn flip(backend: &dyn BlockBackend, at: u64) {
    let mut b = [0u8; 1];
    backend.read_at(at, &mut b).unwrap();
    backend.write_at(at, &[b[0] ^ 0x10], false).unwrap();
}

impl DeviceKit for Damaged {
    fn name(&self) -> &str {
        "damaged"
    }

    fn guest_name(&self) -> &str {
        "ramdisk"
    }

    fn configure(&self, config: &mut GuestVmConfig, backend: Backend) -> Result<()> {
        if self.before_boot {
            // Damage every 4 KiB block so the first read of the first workload hits one.
            for block in 0..(8192 / 8) {
                flip(&*backend, block * 4096 + 100);
            }
        }
        RamdiskKit.configure(config, backend)
    }

    fn verify(&self, backend: &dyn BlockBackend, runs: &[CompletedRun]) -> Result<()> {
        if !self.before_boot {
            flip(backend, 4096 * 77 + 5);
        }
        RamdiskKit.verify(backend, runs)
    }
}

#[test]
fn wrong_data_fails_the_device_instead_of_reporting_numbers() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let specs = specs();
    for before_boot in [true, false] {
        let disk: Backend = Arc::new(RamDisk::new(8 << 20));
        let run = run_device(&Damaged { before_boot }, disk, &specs, &options());
        assert_eq!(run.rows.len(), specs.len());
        for row in &run.rows {
            let why = row
                .outcome
                .as_ref()
                .expect_err("a damaged disk has no numbers");
            if before_boot {
                assert!(why.contains("mismatch") || why.contains("not run"), "{why}");
            } else {
                assert!(why.contains("data check after the run"), "{why}");
            }
        }
        let table = report::table(&run.rows);
        assert_eq!(table.matches("FAILED").count(), specs.len(), "{table}");
        assert!(report::json(&run.rows)[0]["iops"].is_null());
    }
}

/// Over an image, a device that serves other data than the image holds is caught by the host, although
/// the guest could check none of those reads itself; a correct one passes, and the image is not
/// written by read workloads.
#[test]
fn over_an_image_reads_are_checked_against_the_image_by_the_host() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    /// Serves the guest a different disk of the same size.
    struct Impostor;
    impl DeviceKit for Impostor {
        fn name(&self) -> &str {
            "impostor"
        }
        fn guest_name(&self) -> &str {
            "ramdisk"
        }
        fn configure(&self, config: &mut GuestVmConfig, backend: Backend) -> Result<()> {
            let other = RamDisk::new(backend.capacity());
            other.write_at(4096 * 3, &[0x5a; 4096], false)?;
            RamdiskKit.configure(config, Arc::new(other))
        }
    }
    let image = || -> Backend {
        let disk = RamDisk::new(8 << 20);
        let bytes: Vec<u8> = (0..8u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        disk.write_at(0, &bytes, false).unwrap();
        Arc::new(disk)
    };
    let reads: Vec<WorkloadSpec> = [
        "rr4k:k=rr,bs=4096,qd=8,n=300,seed=3,lba=0+8192",
        "sr64k:k=sr,bs=64k,qd=2,n=40,lba=0+8192",
    ]
    .iter()
    .map(|s| WorkloadSpec::parse(s).unwrap())
    .collect();
    let opts = BenchOptions {
        contents: DiskContents::Image,
        ..options()
    };
    let disk = image();
    let mut before = vec![0u8; 8 << 20];
    disk.read_at(0, &mut before).unwrap();
    let good = run_device(&RamdiskKit, disk.clone(), &reads, &opts);
    for row in &good.rows {
        assert!(row.outcome.is_ok(), "{row:?}\n{}", good.console);
    }
    let mut after = vec![0u8; 8 << 20];
    disk.read_at(0, &mut after).unwrap();
    assert!(before == after, "read workloads changed the image");

    let bad = run_device(&Impostor, image(), &reads, &opts);
    for row in &bad.rows {
        let why = row.outcome.as_ref().expect_err("other data has no numbers");
        assert!(
            why.contains("returned data the image does not hold"),
            "{why}"
        );
    }
    // With writes too: written sectors are checked in the guest, the rest by the host.
    let mixed = [
        WorkloadSpec::parse("w:k=rw,bs=4096,qd=4,n=200,seed=4,lba=0+8192").unwrap(),
        WorkloadSpec::parse("m:k=mix50,bs=2048,qd=16,n=400,seed=5,lba=0+8192").unwrap(),
        reads[0].clone(),
    ];
    let run = run_device(&RamdiskKit, image(), &mixed, &opts);
    for row in &run.rows {
        assert!(row.outcome.is_ok(), "{row:?}\n{}", run.console);
    }
}
