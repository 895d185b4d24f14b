//! Checking a run on a disk whose contents the testbed did not write: a user's image (or a new, sparse
//! one). Nothing is pre-filled; the guest runs over [`DiskModel::over_image`], so it checks only the
//! sectors the workloads wrote and digests every other read. The host then checks those digests against
//! what it reads from the image itself ([`verify_image`]).
//!
//! Reads of a sector a later workload overwrote cannot be recomputed from the image after the run, so
//! before the guest boots the host hashes every sector a workload may write ([`ImageSnapshot::take`]);
//! after the run that snapshot also shows that no sector changed that no workload wrote.

use std::collections::HashMap;

use host_vsp::backend::BlockBackend;
use workload::pattern::{digest_term, sector_hash, UNKNOWN};
use workload::{DiskModel, Op, Plan, WorkloadSpec, PATTERN_UNIT};

use super::{CompletedRun, DataError};

/// Hashes ([`sector_hash`]) of the sectors the workloads may write, as the image held them before the
/// run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSnapshot {
    hashes: HashMap<u64, u64>,
}

impl ImageSnapshot {
    /// Hash every sector the write I/Os of `specs` could touch (all of each plan, whatever a time budget
    /// later cuts). Read-only specs cost nothing.
    pub fn take(backend: &dyn BlockBackend, specs: &[WorkloadSpec]) -> Result<Self, DataError> {
        let capacity = backend.sectors();
        let mut hashes = HashMap::new();
        for spec in specs.iter().filter(|s| s.kind.writes()) {
            let plan = Plan::new(spec, capacity)?;
            let mut buf = vec![0u8; plan.block_bytes() as usize];
            for i in 0..plan.ios() {
                let (op, first) = plan.io(i);
                if op != Op::Write || hashes.contains_key(&first) {
                    continue;
                }
                backend.read_at(first * PATTERN_UNIT as u64, &mut buf)?;
                for (k, bytes) in buf.chunks(PATTERN_UNIT).enumerate() {
                    hashes.insert(first + k as u64, sector_hash(bytes));
                }
            }
        }
        Ok(Self { hashes })
    }

    /// The hash `sector` had before the run, if a workload may have written it.
    pub fn hash(&self, sector: u64) -> Option<u64> {
        self.hashes.get(&sector).copied()
    }

    /// How many sectors were hashed.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether no sector was hashed (the workloads only read).
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// Check a run over an image: each run's read digest against the image's contents (as they were before
/// the run where a workload may have overwritten them), the sectors the workloads wrote against the
/// pattern, and every other sector a workload could have written against the snapshot. Runs whose
/// generation is [`UNKNOWN`] were interrupted: their writes may or may not have landed and their reads
/// are not checked.
pub fn verify_image(
    backend: &dyn BlockBackend,
    runs: &[CompletedRun],
    snapshot: &ImageSnapshot,
) -> Result<(), DataError> {
    let capacity = backend.sectors();
    let mut model = DiskModel::over_image();
    for run in runs {
        // A run split over vCPUs: its shares are disjoint, so every share's reads saw the model as it
        // was before the run, and the guest's digest is the sum of theirs.
        let parts = run.parts(capacity)?;
        if run.generation != UNKNOWN {
            let mut expected = 0u64;
            for (plan, ios) in &parts {
                let share = expected_digest(backend, plan, *ios, &model, snapshot)?;
                expected = expected.wrapping_add(share);
            }
            if expected != run.read_digest {
                return Err(DataError::ReadDigest {
                    workload: run.spec.name.clone(),
                });
            }
        }
        if run.spec.kind.writes() {
            for (plan, ios) in &parts {
                for i in 0..*ios {
                    if let (Op::Write, sector) = plan.io(i) {
                        model.record(sector, plan.block_sectors(), run.generation);
                    }
                }
            }
        }
    }
    let mut sectors: Vec<(u64, u64)> = snapshot.hashes.iter().map(|(&s, &h)| (s, h)).collect();
    sectors.sort_unstable();
    let mut bytes = [0u8; PATTERN_UNIT];
    for (sector, before) in sectors {
        let generation = model.generation(sector);
        if generation == UNKNOWN {
            continue;
        }
        backend.read_at(sector * PATTERN_UNIT as u64, &mut bytes)?;
        if generation == 0 {
            if sector_hash(&bytes) != before {
                return Err(DataError::Changed { sector });
            }
        } else {
            model
                .check(sector, &bytes)
                .map_err(|m| DataError::Mismatch {
                    sector: m.sector,
                    expected: m.expected,
                })?;
        }
    }
    Ok(())
}

/// The read digest the guest should have reported for the first `ios` I/Os of `plan`, given which
/// sectors earlier runs wrote (`model`). Within one run reads and writes never share a block (random
/// kinds visit each slot once; sequential kinds only read or only write), so the model before the run
/// is the one its reads saw.
fn expected_digest(
    backend: &dyn BlockBackend,
    plan: &Plan,
    ios: u64,
    model: &DiskModel,
    snapshot: &ImageSnapshot,
) -> Result<u64, DataError> {
    let mut digest = 0u64;
    let mut buf = vec![0u8; plan.block_bytes() as usize];
    for i in 0..ios {
        let (op, first) = plan.io(i);
        if op != Op::Read {
            continue;
        }
        let mut read = false;
        for (k, sector) in (first..first + plan.block_sectors()).enumerate() {
            if model.generation(sector) != 0 {
                continue;
            }
            let hash = match snapshot.hash(sector) {
                Some(h) => h,
                None => {
                    if !read {
                        backend.read_at(first * PATTERN_UNIT as u64, &mut buf)?;
                        read = true;
                    }
                    sector_hash(&buf[k * PATTERN_UNIT..(k + 1) * PATTERN_UNIT])
                }
            };
            digest = digest.wrapping_add(digest_term(sector, hash));
        }
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use host_vsp::backend::RamDisk;
    use workload::pattern::pattern;

    fn spec(token: &str) -> WorkloadSpec {
        WorkloadSpec::parse(token).unwrap()
    }

    /// What a correct device and guest do: apply the writes, digest the reads of unwritten sectors.
    fn run_like_a_guest(
        disk: &RamDisk,
        model: &mut DiskModel,
        spec: &WorkloadSpec,
        generation: u8,
    ) -> CompletedRun {
        let plan = Plan::new(spec, disk.sectors()).unwrap();
        let mut buf = vec![0u8; plan.block_bytes() as usize];
        let mut digest = 0u64;
        for i in 0..plan.ios() {
            match plan.io(i) {
                (Op::Write, sector) => {
                    pattern(sector, generation, &mut buf);
                    disk.write_at(sector * 512, &buf, false).unwrap();
                    model.record(sector, plan.block_sectors(), generation);
                }
                (Op::Read, sector) => {
                    disk.read_at(sector * 512, &mut buf).unwrap();
                    digest = digest.wrapping_add(model.check_read(sector, &buf).unwrap());
                }
            }
        }
        CompletedRun {
            spec: spec.clone(),
            generation,
            ios: plan.ios(),
            read_digest: digest,
            vp_ios: Vec::new(),
        }
    }

    fn image() -> RamDisk {
        let disk = RamDisk::new(1 << 20);
        let bytes: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        disk.write_at(0, &bytes, false).unwrap();
        disk
    }

    #[test]
    fn reads_are_checked_against_the_image_before_and_after_later_writes() {
        let disk = image();
        let specs = [
            spec("r:k=rr,bs=4096,n=100,seed=3,lba=0+2048"),
            spec("w:k=rw,bs=4096,n=100,seed=4,lba=0+2048"),
            spec("m:k=mix50,bs=2048,n=300,seed=5,lba=0+2048"),
            spec("s:k=sr,bs=64k,n=20,lba=0+2048"),
        ];
        let snapshot = ImageSnapshot::take(&disk, &specs).unwrap();
        // The read-only spec costs nothing; the writers' blocks are all hashed.
        assert_eq!(ImageSnapshot::take(&disk, &specs[..1]).unwrap().len(), 0);
        assert!(snapshot.len() >= 100 * 8);
        let mut model = DiskModel::over_image();
        let runs: Vec<CompletedRun> = specs
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let generation = if s.kind.writes() { k as u8 + 1 } else { 0 };
                run_like_a_guest(&disk, &mut model, s, generation)
            })
            .collect();
        verify_image(&disk, &runs, &snapshot).unwrap();

        // A read that returned other data: its run is named.
        let mut wrong = runs.clone();
        wrong[0].read_digest ^= 1;
        assert!(matches!(
            verify_image(&disk, &wrong, &snapshot),
            Err(DataError::ReadDigest { workload }) if workload == "r"
        ));
        // The first run read sectors the second overwrote: only the snapshot still knows them, so
        // without it the check fails.
        assert!(matches!(
            verify_image(&disk, &runs, &ImageSnapshot::default()),
            Err(DataError::ReadDigest { .. })
        ));
        // A written sector that lost its data.
        let (_, sector) = Plan::new(&specs[1], disk.sectors()).unwrap().io(0);
        let mut b = [0u8; 1];
        disk.read_at(sector * 512 + 7, &mut b).unwrap();
        disk.write_at(sector * 512 + 7, &[b[0] ^ 1], false).unwrap();
        assert!(matches!(
            verify_image(&disk, &runs, &snapshot),
            Err(DataError::Mismatch { .. })
        ));
    }

    #[test]
    fn an_unwritten_sector_that_changed_is_caught_and_interrupted_runs_are_not_checked() {
        let disk = image();
        let specs = [spec("w:k=rw,bs=4096,n=200,seed=4,lba=0+2048")];
        let snapshot = ImageSnapshot::take(&disk, &specs).unwrap();
        let mut model = DiskModel::over_image();
        let mut run = run_like_a_guest(&disk, &mut model, &specs[0], 1);
        // The guest completed only half of the I/Os: the rest of the plan must still hold the image.
        run.ios = 100;
        let plan = Plan::new(&specs[0], disk.sectors()).unwrap();
        assert!(matches!(
            verify_image(&disk, std::slice::from_ref(&run), &snapshot),
            Err(DataError::Changed { .. })
        ));
        // Interrupted: whatever the plan's writes did is accepted.
        let interrupted = CompletedRun {
            generation: UNKNOWN,
            ios: plan.ios(),
            ..run
        };
        verify_image(&disk, &[interrupted], &snapshot).unwrap();
    }
}
