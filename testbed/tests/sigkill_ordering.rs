//! Killing the host process while the guest is still writing, right after the guest received a
//! flush completion: every write the guest had acknowledged before that flush completed must be in
//! the image file.
//!
//! The child (this test binary again) boots the guest on a raw image through storvsp. The guest runs
//! `flushed` (2048 random 4 KiB writes at QD32, each block of 8 MiB once), flushes (SYNCHRONIZE CACHE) and, once the flush has
//! completed, logs that workload's `bench` line; then it goes straight on with `running` (a million
//! sequential writes, wrapping over the next 8 MiB). The child's host side watches the guest's log every 2 ms and
//! turns that line into `FLUSHED <ios>` on its stdout; the parent SIGKILLs the child the moment it
//! reads it — with the guest mid-`running` — and checks every sector `flushed` could have touched.
//!
//! What this can and cannot show, honestly: SIGKILL kills the process, not the machine — the page
//! cache survives, so a write that reached `pwrite` before the kill is in the file whether or not it
//! was ever fsynced. This test therefore checks *ordering*: that the host acknowledged neither the
//! writes nor the flush before the data had left the process (no write-behind buffer of its own
//! that a crash loses). Durability against power loss — that a flush really makes the writes stable
//! — is `power_loss.rs`, with a volatile write cache that can lose them.
//!
//! It can fail: the twin run over [`WriteBehind`], a backend that acknowledges writes and flushes at
//! once and lets a thread write them to the file a second later, must lose data.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use host_vsp::backend::{BlockBackend, DiskError, FileDisk, FileDiskOptions, IoBuffers, RamDisk};
use testbed::bench::{
    run_device, verify_disk, Backend, BenchOptions, CompletedRun, LineHook, VmbusKit,
};
use workload::pattern::{pattern, PATTERN_UNIT};
use workload::{BenchLine, BenchOutcome, WorkloadSpec};

const IMAGE_BYTES: u64 = 32 << 20;
const CHILD_ENV: &str = "VIRIDIAN_SIGKILL_CHILD";
const VARIANT_ENV: &str = "VIRIDIAN_SIGKILL_VARIANT";
/// How long [`WriteBehind`] keeps a write before it writes it to the file.
const WRITE_BEHIND: Duration = Duration::from_secs(1);

fn specs() -> Vec<WorkloadSpec> {
    [
        "flushed:k=rw,bs=4096,qd=32,n=2048,seed=5,lba=0+16384",
        "running:k=sw,bs=4096,qd=32,n=1000000,lba=16384+16384",
    ]
    .iter()
    .map(|s| WorkloadSpec::parse(s).unwrap())
    .collect()
}

fn image_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("viridian-sigkill-{tag}-{}.img", std::process::id()))
}

/// The broken twin: a shadow in RAM answers reads; writes are acknowledged as soon as they are in
/// the shadow and written to the file by a thread [`WRITE_BEHIND`] later; a flush is acknowledged
/// at once, whatever is still queued.
struct WriteBehind {
    shadow: RamDisk,
    queue: Mutex<Sender<(Instant, u64, Vec<u8>)>>,
}

impl WriteBehind {
    fn new(file: FileDisk) -> Self {
        let (tx, rx) = mpsc::channel::<(Instant, u64, Vec<u8>)>();
        let shadow = RamDisk::new(file.capacity());
        std::thread::spawn(move || {
            for (at, offset, data) in rx {
                std::thread::sleep((at + WRITE_BEHIND).saturating_duration_since(Instant::now()));
                file.write_at(offset, &data, false).unwrap();
            }
        });
        Self {
            shadow,
            queue: Mutex::new(tx),
        }
    }
}

impl BlockBackend for WriteBehind {
    fn capacity(&self) -> u64 {
        self.shadow.capacity()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_vectored(&self, offset: u64, bufs: &IoBuffers<'_>) -> Result<(), DiskError> {
        self.shadow.read_vectored(offset, bufs)
    }
    fn write_vectored(
        &self,
        offset: u64,
        bufs: &IoBuffers<'_>,
        fua: bool,
    ) -> Result<(), DiskError> {
        self.shadow.write_vectored(offset, bufs, fua)?;
        let mut data = vec![0u8; bufs.len() as usize];
        bufs.copy_to_host(0, &mut data)?;
        let _ = self
            .queue
            .lock()
            .unwrap()
            .send((Instant::now(), offset, data));
        Ok(())
    }
    fn flush(&self) -> Result<(), DiskError> {
        // The bug under test: acknowledged while writes are still queued.
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.shadow.discard(offset, len)
    }
}

/// The child: run the specs on the image and report the flushed workload the moment its line
/// appears; it is killed while the guest runs on.
fn child(path: &Path, variant: &str) -> ! {
    let file = FileDisk::create(path, IMAGE_BYTES).unwrap();
    let disk: Backend = match variant {
        "file" => Arc::new(file),
        "write-behind" => Arc::new(WriteBehind::new(file)),
        other => panic!("unknown variant {other}"),
    };
    let report = LineHook(Arc::new(|line: &BenchLine| {
        if line.mark == 0 {
            let mut out = std::io::stdout().lock();
            // On a line of its own: the test harness may have left its `test ... ` unterminated.
            let _ = match &line.outcome {
                BenchOutcome::Done(r) => writeln!(out, "\nFLUSHED {}", r.ios),
                BenchOutcome::Failed(why) => writeln!(out, "\nFAILED {why}"),
            };
            let _ = out.flush();
        }
    }));
    let opts = BenchOptions {
        on_line: Some(report),
        ..BenchOptions::quiet(Duration::from_secs(180))
    };
    let run = run_device(&VmbusKit::default(), disk, &specs(), &opts);
    // Reaching here means the parent never killed us: say so, with what happened.
    println!(
        "\nFINISHED {:?}",
        run.rows.iter().map(|r| &r.outcome).collect::<Vec<_>>()
    );
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Run a child over `variant`, kill it right after the guest's first flush completed, and check the
/// image: `Err` names what was lost.
fn kill_after_flush(test: &str, variant: &str) -> Result<(), String> {
    let path = image_path(variant);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .env(VARIANT_ENV, variant)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.by_ref().map_while(Result::ok).find(|l| {
        l.starts_with("FLUSHED ") || l.starts_with("FAILED ") || l.starts_with("FINISHED")
    });
    // SIGKILL at once: no destructor, no orderly close of the image, the guest mid-write.
    child.kill().unwrap();
    child.wait().unwrap();
    let line = line.expect("the child reports its flushed workload");
    let ios: u64 = line
        .strip_prefix("FLUSHED ")
        .unwrap_or_else(|| panic!("child: {line}"))
        .parse()
        .unwrap();
    let specs = specs();
    assert_eq!(ios, specs[0].max_ios);
    let image = FileDisk::open(
        &path,
        FileDiskOptions {
            read_only: true,
            direct: false,
        },
    )
    .unwrap();
    // How far the guest had got with `running`, for the record: sectors of its range that no longer
    // hold the pre-fill (with write-behind, the pre-fill itself may not have reached the file).
    let (start, count) = (specs[1].lba_range.start, specs[1].lba_range.count);
    let mut sector = vec![0u8; PATTERN_UNIT];
    let mut prefill = vec![0u8; PATTERN_UNIT];
    let mut rewritten = 0u64;
    for s in start..start + count {
        image.read_at(s * PATTERN_UNIT as u64, &mut sector).unwrap();
        pattern(s, 0, &mut prefill);
        rewritten += u64::from(sector != prefill);
    }
    let flushed = [CompletedRun {
        spec: specs[0].clone(),
        generation: 1,
        ios,
        read_digest: 0,
        vp_ios: Vec::new(),
    }];
    let checked = verify_disk(&image, &flushed).map_err(|e| e.to_string());
    eprintln!(
        "{variant}: killed after the flush of {ios} writes; {rewritten} of {count} sectors of \
         `running`'s range no longer held the pre-fill; check of `flushed`: {checked:?}"
    );
    std::fs::remove_file(&path).unwrap();
    checked
}

#[test]
fn writes_acknowledged_before_a_completed_flush_are_in_the_file_when_the_host_is_killed() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        child(Path::new(&path), &std::env::var(VARIANT_ENV).unwrap());
    }
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    kill_after_flush(
        "writes_acknowledged_before_a_completed_flush_are_in_the_file_when_the_host_is_killed",
        "file",
    )
    .unwrap();
}

#[test]
fn a_host_that_acknowledges_before_writing_the_file_loses_flushed_writes_when_killed() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        child(Path::new(&path), &std::env::var(VARIANT_ENV).unwrap());
    }
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let lost = kill_after_flush(
        "a_host_that_acknowledges_before_writing_the_file_loses_flushed_writes_when_killed",
        "write-behind",
    );
    assert!(lost.is_err(), "no flushed write was lost with write-behind");
}
