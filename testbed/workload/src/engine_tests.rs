//! Engine tests against an in-memory fake device that completes out of order, applies back-pressure and
//! can be told to misbehave.

use super::*;
use crate::pattern::PATTERN_UNIT;
use crate::spec::{Kind, LbaRange};
use core::cell::{Cell, RefCell};

/// A RAM disk that transfers at submit, completes only kicked requests, several per poll, in a seeded
/// shuffled order, and refuses more than `ring` requests in flight.
struct Fake {
    disk: Vec<u8>,
    block: u32,
    max_out: usize,
    ring: usize,
    pending: Vec<(u32, IoStatus, bool)>,
    rng: u64,
    busy: u64,
    kicks: u64,
    waits: u64,
    max_in_flight: usize,
    submits: u64,
    corrupt_reads: bool,
    drop_writes: bool,
    fail_every: Option<u64>,
    bogus_tag: bool,
}

impl Fake {
    fn new(sectors: u64, block: u32) -> Self {
        let mut disk = vec![0u8; sectors as usize * PATTERN_UNIT];
        pattern(0, 0, &mut disk);
        Self {
            disk,
            block,
            max_out: 64,
            ring: 64,
            pending: Vec::new(),
            rng: 0x1234_5678,
            busy: 0,
            kicks: 0,
            waits: 0,
            max_in_flight: 0,
            submits: 0,
            corrupt_reads: false,
            drop_writes: false,
            fail_every: None,
            bogus_tag: false,
        }
    }

    fn next_rand(&mut self) -> u64 {
        self.rng = crate::pattern::mix64(self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15));
        self.rng
    }
}

impl BlockQueue for Fake {
    fn block_size(&self) -> u32 {
        self.block
    }

    fn capacity_blocks(&self) -> u64 {
        self.disk.len() as u64 / u64::from(self.block)
    }

    fn max_outstanding(&self) -> usize {
        self.max_out
    }

    fn submit(
        &mut self,
        tag: u32,
        op: Op,
        lba: u64,
        buffer: &mut DmaBuffer<'_>,
    ) -> Result<(), SubmitError> {
        assert!(buffer.va().is_multiple_of(4096) && buffer.pa() == buffer.va() as u64 + 7);
        if self.pending.len() >= self.ring {
            self.busy += 1;
            return Err(SubmitError::Busy);
        }
        assert!(
            !self.pending.iter().any(|p| p.0 == tag),
            "tag {tag} reused while in flight"
        );
        self.submits += 1;
        let at = (lba * u64::from(self.block)) as usize;
        let bytes = buffer.bytes();
        let failed = self
            .fail_every
            .is_some_and(|n| self.submits.is_multiple_of(n));
        let status = if failed {
            IoStatus::Error(DeviceError {
                code: 2,
                reason: "fake media error",
            })
        } else {
            match op {
                Op::Read => {
                    bytes.copy_from_slice(&self.disk[at..at + bytes.len()]);
                    if self.corrupt_reads && self.submits == 5 {
                        bytes[100] ^= 0x40;
                    }
                }
                Op::Write if !self.drop_writes => {
                    self.disk[at..at + bytes.len()].copy_from_slice(bytes)
                }
                Op::Write => {}
            }
            IoStatus::Ok
        };
        self.pending.push((tag, status, false));
        self.max_in_flight = self.max_in_flight.max(self.pending.len());
        Ok(())
    }

    fn kick(&mut self) {
        self.kicks += 1;
        for p in &mut self.pending {
            p.2 = true;
        }
    }

    fn poll(&mut self, completions: &mut Vec<Completion>) -> usize {
        let kicked = self.pending.iter().filter(|p| p.2).count();
        if kicked == 0 {
            return 0;
        }
        let n = 1 + (self.next_rand() % kicked as u64) as usize;
        for _ in 0..n {
            let ready: Vec<usize> = (0..self.pending.len())
                .filter(|&i| self.pending[i].2)
                .collect();
            let pick = ready[(self.next_rand() % ready.len() as u64) as usize];
            let (tag, status, _) = self.pending.swap_remove(pick);
            let tag = if self.bogus_tag { tag + 1000 } else { tag };
            completions.push(Completion { tag, status });
        }
        n
    }

    fn wait(&mut self) {
        self.waits += 1;
        assert!(
            self.pending.iter().any(|p| p.2),
            "engine waits on a device with nothing kicked"
        );
    }

    fn signals(&self) -> u64 {
        self.kicks
    }
}

/// Runs `spec` with a ticking clock; returns the result and the marks (id, clock) seen.
fn run_fake(
    fake: &mut Fake,
    spec: &WorkloadSpec,
    model: &mut DiskModel,
    generation: u8,
    tick: u64,
    tsc_hz: u64,
) -> (Result<WorkloadResult, RunError>, Vec<(u32, u64)>) {
    let clock = Cell::new(0u64);
    let marks = RefCell::new(Vec::new());
    let tick_clock = || {
        clock.set(clock.get() + tick);
        clock.get()
    };
    let mark = |id| marks.borrow_mut().push((id, clock.get()));
    let env = RunEnv {
        clock: &tick_clock,
        tsc_hz,
        mark: &mark,
        start_mark: 6,
        end_mark: 7,
        phys: &|va| va as u64 + 7,
        interrupts: &|| 0,
        generation,
    };
    let r = run(fake, spec, model, &env);
    (r, marks.into_inner())
}

fn spec(kind: Kind, bs: u32, qd: u16, n: u64) -> WorkloadSpec {
    WorkloadSpec {
        seed: 11,
        lba_range: LbaRange::default(),
        ..WorkloadSpec::new("t", kind, bs, qd, n)
    }
}

#[test]
fn random_reads_complete_out_of_order_and_verify() {
    let mut fake = Fake::new(4096, 512);
    let s = spec(Kind::RandRead, 4096, 32, 300);
    let mut model = DiskModel::new();
    let (r, marks) = run_fake(&mut fake, &s, &mut model, 0, 1, 0);
    let r = r.unwrap();
    assert_eq!((r.ios, r.reads, r.writes, r.errors), (300, 300, 0, 0));
    assert_eq!(r.bytes, 300 * 4096);
    let plan = Plan::new(&s, 4096).unwrap();
    assert_eq!(r.checksum, plan.checksum(300));
    assert!(fake.max_in_flight > 1 && fake.max_in_flight <= 32);
    assert_eq!(r.achieved_qd, fake.max_in_flight as u64);
    assert!(r.p50 >= 1 && r.p50 <= r.p99 && r.p99 <= r.max);
    assert_eq!(r.signals, fake.kicks);
    assert!(fake.kicks < 300, "one doorbell per batch, not per request");
    // The window brackets the work: start before any clock read of the run, end after the last.
    assert_eq!(marks.iter().map(|m| m.0).collect::<Vec<_>>(), [6, 7]);
    assert_eq!(marks[0].1, 0);
    assert!(marks[1].1 >= r.cycles);
    assert!(fake.pending.is_empty());
}

/// Over an image the engine cannot check unwritten sectors: it digests them, exactly as the host can
/// recompute from the image, and a device that returns other data changes the digest.
#[test]
fn over_an_image_reads_of_unwritten_sectors_are_digested() {
    let image: Vec<u8> = (0..2048 * PATTERN_UNIT)
        .map(|i| (i * 31 % 253) as u8)
        .collect();
    let expected = |s: &WorkloadSpec, ios: u64| {
        let plan = Plan::new(s, 2048).unwrap();
        (0..ios).fold(0u64, |d, i| {
            let (_, first) = plan.io(i);
            (first..first + plan.block_sectors()).fold(d, |d, sector| {
                let at = sector as usize * PATTERN_UNIT;
                let term = crate::pattern::digest_term(
                    sector,
                    crate::pattern::sector_hash(&image[at..at + PATTERN_UNIT]),
                );
                d.wrapping_add(term)
            })
        })
    };
    let s = spec(Kind::RandRead, 4096, 16, 200);
    let mut fake = Fake::new(2048, 512);
    fake.disk.copy_from_slice(&image);
    let (r, _) = run_fake(&mut fake, &s, &mut DiskModel::over_image(), 0, 1, 0);
    let r = r.unwrap();
    assert_eq!(r.ios, 200);
    assert_eq!(r.read_digest, expected(&s, 200));
    // Over the pre-fill the same run would have failed on the first read: nothing was checked here
    // that the guest cannot know.
    assert!(run_fake(&mut fake, &s, &mut DiskModel::new(), 0, 1, 0)
        .0
        .is_err());
    // Corrupted reads change the digest (the host then fails the device).
    let mut fake = Fake::new(2048, 512);
    fake.disk.copy_from_slice(&image);
    fake.corrupt_reads = true;
    let (r, _) = run_fake(&mut fake, &s, &mut DiskModel::over_image(), 0, 1, 0);
    assert_ne!(r.unwrap().read_digest, expected(&s, 200));
}

#[test]
fn queue_full_backpressure_is_respected() {
    let mut fake = Fake::new(2048, 512);
    fake.ring = 3;
    let s = spec(Kind::RandRead, 512, 32, 500);
    let (r, _) = run_fake(&mut fake, &s, &mut DiskModel::new(), 0, 1, 0);
    let r = r.unwrap();
    assert_eq!(r.ios, 500);
    assert_eq!(fake.max_in_flight, 3);
    assert_eq!(
        r.achieved_qd, 3,
        "the device's back-pressure, not the spec's depth"
    );
    assert!(fake.busy > 0);
}

#[test]
fn depth_is_capped_by_the_device() {
    let mut fake = Fake::new(2048, 512);
    fake.max_out = 4;
    let s = spec(Kind::SeqRead, 512, 64, 200);
    let (r, _) = run_fake(&mut fake, &s, &mut DiskModel::new(), 0, 1, 0);
    let r = r.unwrap();
    assert_eq!(r.ios, 200);
    assert!(fake.max_in_flight <= 4);
    assert_eq!(r.achieved_qd, fake.max_in_flight as u64);
    assert_eq!(fake.busy, 0);
}

#[test]
fn achieved_depth_is_the_most_in_flight() {
    // Completes at most one request per poll: the engine refills to the full depth after every one.
    struct OneAtATime(Fake);
    impl BlockQueue for OneAtATime {
        fn block_size(&self) -> u32 {
            self.0.block_size()
        }
        fn capacity_blocks(&self) -> u64 {
            self.0.capacity_blocks()
        }
        fn max_outstanding(&self) -> usize {
            self.0.max_outstanding()
        }
        fn submit(
            &mut self,
            tag: u32,
            op: Op,
            lba: u64,
            buffer: &mut DmaBuffer<'_>,
        ) -> Result<(), SubmitError> {
            self.0.submit(tag, op, lba, buffer)
        }
        fn kick(&mut self) {
            self.0.kick()
        }
        fn poll(&mut self, completions: &mut Vec<Completion>) -> usize {
            match self.0.pending.iter().position(|p| p.2) {
                Some(i) => {
                    let (tag, status, _) = self.0.pending.remove(i);
                    completions.push(Completion { tag, status });
                    1
                }
                None => 0,
            }
        }
    }
    for (qd, want) in [(1u16, 1u64), (8, 8), (32, 32), (100, 64)] {
        let mut dev = OneAtATime(Fake::new(4096, 512));
        let s = spec(Kind::RandRead, 4096, qd, 300);
        let clock = Cell::new(0u64);
        let tick = || {
            clock.set(clock.get() + 1);
            clock.get()
        };
        let env = RunEnv {
            clock: &tick,
            tsc_hz: 0,
            mark: &|_| {},
            start_mark: 0,
            end_mark: 1,
            phys: &|va| va as u64 + 7,
            interrupts: &|| 0,
            generation: 0,
        };
        let r = run(&mut dev, &s, &mut DiskModel::new(), &env).unwrap();
        assert_eq!(r.ios, 300);
        // Depth 100 is capped by the device's 64.
        assert_eq!(r.achieved_qd, want, "qd {qd}");
    }
}

#[test]
fn writes_land_as_the_model_says_and_later_reads_verify() {
    let mut fake = Fake::new(8192, 512);
    let mut model = DiskModel::new();
    let w = spec(Kind::RandWrite, 4096, 16, 400);
    let (r, _) = run_fake(&mut fake, &w, &mut model, 3, 1, 0);
    assert_eq!(r.unwrap().writes, 400);
    // Every sector of the fake disk holds what the model says (written ones generation 3).
    assert_eq!(model.check(0, &fake.disk), Ok(()));
    assert_eq!(
        (0..8192).filter(|&s| model.generation(s) == 3).count(),
        400 * 8
    );
    // A 64 KiB sequential read across written and pre-filled sectors checks out.
    let r = spec(Kind::SeqRead, 65536, 8, 100);
    let (res, _) = run_fake(&mut fake, &r, &mut model, 0, 1, 0);
    assert_eq!(res.unwrap().ios, 100);
    // A mixed workload keeps the model exact too.
    let m = spec(Kind::Mix { read_percent: 50 }, 1024, 8, 1000);
    let (res, _) = run_fake(&mut fake, &m, &mut model, 4, 1, 0);
    let res = res.unwrap();
    assert!(res.reads > 300 && res.writes > 300);
    assert_eq!(model.check(0, &fake.disk), Ok(()));
}

#[test]
fn lost_writes_are_caught_by_reads() {
    let mut fake = Fake::new(1024, 512);
    fake.drop_writes = true;
    let mut model = DiskModel::new();
    let (r, _) = run_fake(
        &mut fake,
        &spec(Kind::SeqWrite, 4096, 4, 128),
        &mut model,
        1,
        1,
        0,
    );
    assert!(r.is_ok());
    let (r, marks) = run_fake(
        &mut fake,
        &spec(Kind::SeqRead, 4096, 4, 128),
        &mut model,
        0,
        1,
        0,
    );
    assert!(matches!(r, Err(RunError::Mismatch { .. })), "{r:?}");
    assert_eq!(
        marks.len(),
        2,
        "the window is closed even when the run fails"
    );
    assert!(fake.pending.is_empty(), "in-flight requests were drained");
}

#[test]
fn corrupted_reads_fail_the_run() {
    let mut fake = Fake::new(1024, 512);
    fake.corrupt_reads = true;
    let (r, _) = run_fake(
        &mut fake,
        &spec(Kind::RandRead, 512, 8, 100),
        &mut DiskModel::new(),
        0,
        1,
        0,
    );
    match r {
        Err(RunError::Mismatch {
            op, mismatch, at, ..
        }) => {
            assert_eq!(op, Op::Read);
            assert_eq!(mismatch.sector, at);
            assert_eq!(mismatch.expected, 0);
        }
        other => panic!("{other:?}"),
    }
    assert!(fake.pending.is_empty());
}

#[test]
fn device_errors_are_counted_and_make_sectors_unknown() {
    let mut fake = Fake::new(1024, 512);
    fake.fail_every = Some(10);
    let mut model = DiskModel::new();
    let (r, _) = run_fake(
        &mut fake,
        &spec(Kind::RandWrite, 512, 4, 100),
        &mut model,
        2,
        1,
        0,
    );
    let r = r.unwrap();
    assert_eq!((r.ios, r.errors), (100, 10));
    assert_eq!(r.bytes, 90 * 512);
    assert_eq!(
        (0..1024)
            .filter(|&s| model.generation(s) == UNKNOWN)
            .count(),
        10
    );
    assert_eq!(model.check(0, &fake.disk), Ok(()));
}

#[test]
fn time_budget_stops_submission() {
    let mut fake = Fake::new(1 << 16, 512);
    let mut s = spec(Kind::SeqRead, 512, 4, 100_000);
    s.max_millis = 1;
    // 1 MHz TSC, 10 ticks per clock read: the 1 ms budget is 1000 ticks.
    let (r, _) = run_fake(&mut fake, &s, &mut DiskModel::new(), 0, 10, 1_000_000);
    let r = r.unwrap();
    assert!(r.ios > 5 && r.ios < 100, "{}", r.ios);
    assert!(fake.pending.is_empty());
    let (r, _) = run_fake(&mut fake, &s, &mut DiskModel::new(), 0, 10, 0);
    assert_eq!(r.unwrap_err(), RunError::NoTimeBase);
}

#[test]
fn protocol_violations_are_errors() {
    let mut fake = Fake::new(1024, 512);
    fake.bogus_tag = true;
    let (r, _) = run_fake(
        &mut fake,
        &spec(Kind::RandRead, 512, 4, 10),
        &mut DiskModel::new(),
        0,
        1,
        0,
    );
    assert!(matches!(r, Err(RunError::UnknownTag(_))), "{r:?}");

    let mut full = Fake::new(1024, 512);
    full.ring = 0;
    let (r, _) = run_fake(
        &mut full,
        &spec(Kind::RandRead, 512, 4, 10),
        &mut DiskModel::new(),
        0,
        1,
        0,
    );
    assert_eq!(r.unwrap_err(), RunError::Stalled);

    let mut big = Fake::new(1024, 4096);
    let (r, _) = run_fake(
        &mut big,
        &spec(Kind::RandRead, 512, 4, 10),
        &mut DiskModel::new(),
        0,
        1,
        0,
    );
    assert!(matches!(r, Err(RunError::BlockSize { .. })));

    let mut f = Fake::new(1024, 512);
    let (r, _) = run_fake(
        &mut f,
        &spec(Kind::RandWrite, 512, 4, 10),
        &mut DiskModel::new(),
        0,
        1,
        0,
    );
    assert_eq!(r.unwrap_err(), RunError::Generation(0));
    assert_eq!(f.submits, 0);
}

#[test]
fn percentiles_use_nearest_rank() {
    let v: Vec<u64> = (1..=100).collect();
    assert_eq!(
        (percentile(&v, 50), percentile(&v, 99), percentile(&v, 100)),
        (50, 99, 100)
    );
    assert_eq!(percentile(&[7], 99), 7);
    assert_eq!(percentile(&[], 50), 0);
    assert_eq!(percentile(&[1, 2, 3], 50), 2);
}
