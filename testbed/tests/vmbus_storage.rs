//! Synthetic storage over VMBus on KVM: the guest's storvsc writes patterns to a 64 MiB raw image through
//! storvsp (QD1 and QD32, 4 KiB and 128 KiB, buffers not page-aligned), reads them back and verifies them;
//! the host then checks the image file byte for byte. (Killing the host process mid-run is
//! `sigkill_ordering.rs`.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use host_vsp::backend::{FileDisk, FileDiskOptions};
use testbed::bench::{run_device, verify_disk, BenchOptions, CompletedRun, VmbusKit};
use workload::WorkloadSpec;

const IMAGE_BYTES: u64 = 64 << 20;

fn specs() -> Vec<WorkloadSpec> {
    [
        // Writes: 4 KiB at QD1, page-aligned; 128 KiB at QD32 from buffers 512 bytes into a page.
        "w4k-qd1:k=sw,bs=4096,qd=1,n=400,lba=0+3200",
        "w128k-qd32:k=rw,bs=128k,qd=32,n=200,seed=9,off=512,lba=4096+65536",
        // Reads of both, verified in the guest: 4 KiB at QD32 from buffers 8 bytes into a page, 128 KiB
        // at QD1.
        "r4k-qd32:k=rr,bs=4096,qd=32,n=400,seed=3,off=8,lba=0+3200",
        "r128k-qd1:k=sr,bs=128k,qd=1,n=200,off=2048,lba=4096+65536",
        // Mixed, many outstanding, over the whole image.
        "mix-qd32:k=mix50,bs=4096,qd=32,n=2000,seed=11,lba=0+131072",
    ]
    .iter()
    .map(|s| WorkloadSpec::parse(s).unwrap())
    .collect()
}

fn options() -> BenchOptions {
    BenchOptions::quiet(Duration::from_secs(90))
}

fn image_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("viridian-storvsc-{tag}-{}.img", std::process::id()))
}

/// Run the specs through storvsc/storvsp on the image; returns what the guest completed.
fn run_on_image(path: &Path) -> Vec<CompletedRun> {
    let disk = Arc::new(FileDisk::create(path, IMAGE_BYTES).unwrap());
    let specs = specs();
    let run = run_device(&VmbusKit::default(), disk, &specs, &options());
    let mut completed = Vec::new();
    for (k, (row, spec)) in run.rows.iter().zip(&specs).enumerate() {
        let m = row
            .outcome
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}\n--- console ---\n{}", row.workload, run.console));
        assert_eq!(m.ios, spec.max_ios, "{}", row.workload);
        completed.push(CompletedRun {
            spec: spec.clone(),
            generation: if spec.kind.writes() { k as u8 + 1 } else { 0 },
            ios: m.ios,
            read_digest: 0,
            vp_ios: Vec::new(),
        });
    }
    completed
}

/// Reopen the image from disk and check every sector the workloads touched.
fn verify_image(path: &Path, runs: &[CompletedRun]) {
    let reopened = FileDisk::open(
        path,
        FileDiskOptions {
            read_only: true,
            direct: false,
        },
    )
    .unwrap();
    verify_disk(&reopened, runs).unwrap();
}

#[test]
fn storvsc_patterns_verify_in_guest_and_in_the_image() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let path = image_path("verify");
    let runs = run_on_image(&path);
    verify_image(&path, &runs);
    std::fs::remove_file(&path).unwrap();
}
